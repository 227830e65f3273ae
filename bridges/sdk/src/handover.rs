//! A handover loses nothing (SPEC section 6). Every instance's hub loop reads every hub event; the
//! instance running a bridge records how far it has handed them to the bridge's durable
//! outboxes (its [`Mark`]), and a standby keeps the bridge's recent events so that, when it takes
//! the lease over, it relays those after the mark.
//!
//! Instances have no shared counter of events, so an event is named by what every instance reads
//! the same: its [`EventId`], a digest of the pub/sub channel and the exact payload. Redis sends
//! every subscriber the messages in the order it published them, so the events after the mark in
//! the standby's buffer are the ones the old holder had not handed on.
//!
//! The mark is written every [`MARK_EVERY`] while events are routed (and once more when a graceful
//! stop has moved its queue into the outboxes), so after a crash the standby may replay up to that
//! much that was already handed on: a message already shown in a chat is then recognised by its
//! hub message id in the message map and not shown again, and an edit, reaction or delete done
//! twice changes nothing.

use std::fmt;
use std::time::Duration;

use xxhash_rust::xxh3::Xxh3;

/// How often the instance running a bridge writes its mark while events are routed.
pub const MARK_EVERY: Duration = Duration::from_millis(100);

/// A hub event's name across instances: the xxh3-128 digest of the pub/sub channel it came on and
/// its payload, byte for byte. xxh3 is a fixed algorithm (unlike std's hasher, which may change
/// between Rust releases), so instances of different versions, as in a rolling deploy, agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventId(u128);

impl EventId {
    pub fn of(channel: &str, payload: &[u8]) -> Self {
        let mut hasher = Xxh3::new();
        hasher.update(channel.as_bytes());
        // The channel's end, so that channel "a" with payload "bc" is not channel "ab" with "c".
        hasher.update(&[0]);
        hasher.update(payload);
        Self(hasher.digest128())
    }

    /// Reads the 32 hex digits [`fmt::Display`] writes.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if text.len() != 32 || !text.chars().all(digits) {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(Self)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// How far the instance running a bridge has handed hub events to its durable outboxes: the last
/// event it routed, and when (wall clock, ms), kept in `{prefix}bridge:handed:{bridge}` as
/// `{event}:{at}`. The time places the mark when a standby did not see its event (it started
/// later, or its buffer had moved past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub event: EventId,
    pub at: i64,
}

impl Mark {
    pub fn parse(text: &str) -> Option<Self> {
        let (event, at_text) = text.split_once(':')?;
        let at: i64 = at_text.parse().ok()?;
        // One spelling only (no `+5`, no `05`): what is read is what was written.
        (at.to_string() == at_text).then_some(Self {
            event: EventId::parse(event)?,
            at,
        })
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.event, self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_event_id_is_the_same_for_the_same_channel_and_bytes_only() {
        let id = EventId::of("pubsub:channel:C", br#"{"a":1}"#);
        assert_eq!(id, EventId::of("pubsub:channel:C", br#"{"a":1}"#));
        assert_ne!(id, EventId::of("pubsub:channel:D", br#"{"a":1}"#));
        assert_ne!(id, EventId::of("pubsub:channel:C", br#"{"a":2}"#));
        assert_ne!(EventId::of("a", b"bc"), EventId::of("ab", b"c"));
        // Fixed across builds and versions: instances of a rolling deploy must agree. The value
        // is the reference XXH3-128 of `pubsub:channel:C\0{}` (as Python's `xxhash` gives it).
        assert_eq!(
            EventId::of("pubsub:channel:C", b"{}").to_string(),
            "37e26745530f9f084a4a46108bb99177"
        );
    }

    proptest! {
        #[test]
        fn marks_read_back_as_written(event in any::<u128>(), at in any::<i64>()) {
            let mark = Mark { event: EventId(event), at };
            prop_assert_eq!(Mark::parse(&mark.to_string()), Some(mark));
        }

        #[test]
        fn anything_else_is_no_mark(text in ".{0,80}") {
            if let Some(mark) = Mark::parse(&text) {
                prop_assert_eq!(mark.to_string(), text);
            }
        }
    }
}

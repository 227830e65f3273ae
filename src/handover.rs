//! The standby's half of a handover (SPEC section 6; [`hub_bridge_sdk::handover`]): each bridge's
//! [`Handover`] stands between the hub loop and the bridge's queue. While this instance runs the
//! bridge, events go straight into the queue. While another instance runs it, the events are
//! kept instead, for [`KEEP_FOR`] and up to the queue's size; and when this instance takes the
//! lease over, the kept events after the previous holder's mark go into the queue first, so what
//! that one had not handed to its outboxes (a crash, a pause, the seconds of a rolling restart)
//! is relayed here.
//!
//! The mark names an event; Redis hands every subscriber the same events in the same order, so
//! the events after it among the kept ones are those the previous holder had not handed on. A mark
//! this instance did not see (it started later, or let the event go) is placed by its time, with
//! [`CLOCK_SLACK`] to spare: what is then relayed twice, the message map recognises.
//!
//! An event the previous holder's hub loop refused (an agent over its rate limit) was never its
//! to hand on: the refusal is noted in the store (`{prefix}bridge:refused:{event}`, for
//! [`KEEP_FOR`]), and a takeover skips it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hub_bridge_sdk::event::now_millis;
use hub_bridge_sdk::handover::{EventId, Mark};
use hub_bridge_sdk::metrics::{BridgeLabels, BridgeReason, Metrics};
use hub_bridge_sdk::{Delivery, Keys, Op, Reply, Store};
use tokio::sync::mpsc;

/// How long a standby keeps an event: far longer than a takeover takes (the lease's TTL and a
/// retry), so only a running instance that lagged this far behind could need an older one.
pub const KEEP_FOR: Duration = Duration::from_secs(60);
/// How far apart two instances' clocks and reading of one event may be, when a mark is placed by
/// its time.
pub const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// Between the hub loop and one bridge's queue.
pub struct Handover {
    bridge: &'static str,
    queue: mpsc::Sender<Arc<Delivery>>,
    metrics: Arc<Metrics>,
    // A std mutex: the hub loop and the supervisor hold it only to move events, never across an
    // await. Handing on and switching between running and standing by happen under it, so an
    // event is either in the queue or kept, never both, never neither.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Whether this instance runs the bridge (holds its lease).
    running: bool,
    /// While standing by: the recent events, oldest first.
    kept: VecDeque<Kept>,
}

struct Kept {
    delivery: Arc<Delivery>,
    /// When the hub loop read it (wall clock, ms), to place a mark by its time.
    at: i64,
}

/// What became of an event offered to a bridge.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// In the bridge's queue.
    Queued,
    /// Kept: another instance runs the bridge.
    Kept,
    /// The queue is full: the bridge falls behind, and the event is not relayed by it.
    Full,
    /// The bridge stopped for good.
    Closed,
}

/// How a takeover found the previous holder's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Among the kept events: exactly those after it are relayed.
    Seen,
    /// Not among them: those read after its time (less [`CLOCK_SLACK`]) are relayed.
    NotSeen,
    /// No mark in the store yet: every kept event is relayed.
    None,
}

impl Found {
    fn label(self) -> &'static str {
        match self {
            Found::Seen => "seen",
            Found::NotSeen => "not_seen",
            Found::None => "none",
        }
    }
}

impl Handover {
    pub fn new(
        bridge: &'static str,
        queue: mpsc::Sender<Arc<Delivery>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            bridge,
            queue,
            metrics,
            state: Mutex::new(State::default()),
        }
    }

    pub fn bridge(&self) -> &'static str {
        self.bridge
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this instance runs the bridge now.
    pub fn is_running(&self) -> bool {
        self.state().running
    }

    /// The most events kept: the queue's size, so a replay always fits in it.
    fn capacity(&self) -> usize {
        self.queue.max_capacity()
    }

    /// How many events the bridge's queue holds.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// The hub loop hands an event on: into the queue while this instance runs the bridge, kept
    /// otherwise.
    pub fn offer(&self, delivery: &Arc<Delivery>) -> Offered {
        let mut state = self.state();
        if state.running {
            return match self.queue.try_send(delivery.clone()) {
                Ok(()) => Offered::Queued,
                Err(mpsc::error::TrySendError::Full(_)) => Offered::Full,
                Err(mpsc::error::TrySendError::Closed(_)) => Offered::Closed,
            };
        }
        let now = now_millis();
        self.forget_old(&mut state, now);
        if state.kept.len() >= self.capacity() {
            state.kept.pop_front();
            self.count_dropped("full", 1);
        }
        state.kept.push_back(Kept {
            at: read_at(delivery, now),
            delivery: delivery.clone(),
        });
        // The gauge is set on the hub loop's sweep (every second at most), not per event.
        Offered::Kept
    }

    /// Lets go of the events older than [`KEEP_FOR`]; the hub loop calls it on every sweep, so a
    /// quiet standby does not hold a burst for ever.
    pub fn sweep(&self) {
        let mut state = self.state();
        self.forget_old(&mut state, now_millis());
        self.report_kept(&state);
    }

    fn forget_old(&self, state: &mut State, now: i64) {
        let oldest = now - millis(KEEP_FOR);
        let before = state.kept.len();
        while state.kept.front().is_some_and(|kept| kept.at < oldest) {
            state.kept.pop_front();
        }
        self.count_dropped("age", before - state.kept.len());
    }

    /// This instance took the bridge's lease: the kept events after `mark` (the previous
    /// holder's, read from the store) that were not `refused` go into the queue, ahead of
    /// everything the hub loop hands on from now. Returns how the mark was found and how many
    /// events were relayed.
    pub fn take_over(&self, mark: Option<Mark>, refused: &[EventId]) -> (Found, usize) {
        let mut state = self.state();
        let kept = std::mem::take(&mut state.kept);
        let (found, start) = after(&kept, mark);
        let mut replayed = 0;
        for kept in kept.into_iter().skip(start) {
            if refused.contains(&kept.delivery.id) {
                continue;
            }
            // The queue is as large as the most events kept, and empty while standing by; were
            // it not, what does not fit is counted as let go of.
            match self.queue.try_send(kept.delivery) {
                Ok(()) => replayed += 1,
                Err(_) => self.count_dropped("full", 1),
            }
        }
        state.running = true;
        self.report_kept(&state);
        self.metrics
            .takeovers
            .get_or_create(&BridgeReason {
                bridge: self.bridge,
                reason: found.label(),
            })
            .inc();
        self.metrics
            .replayed
            .get_or_create(&BridgeLabels {
                bridge: self.bridge,
            })
            .inc_by(replayed as u64);
        (found, replayed)
    }

    /// The kept events a takeover after `mark` would relay: those whose refusal to look up.
    pub fn candidates(&self, mark: Option<Mark>) -> Vec<EventId> {
        let state = self.state();
        let (_, start) = after(&state.kept, mark);
        state
            .kept
            .iter()
            .skip(start)
            .map(|kept| kept.delivery.id)
            .collect()
    }

    /// This instance no longer runs the bridge (the lease was lost, or the bridge stopped): what
    /// its queue still holds was not routed here, so it is kept with the events from now on,
    /// for whichever instance runs the bridge next.
    pub fn stand_by(&self, queue: &mut mpsc::Receiver<Arc<Delivery>>) {
        let mut state = self.state();
        state.running = false;
        let now = now_millis();
        while let Ok(delivery) = queue.try_recv() {
            state.kept.push_back(Kept {
                at: read_at(&delivery, now),
                delivery,
            });
        }
        while state.kept.len() > self.capacity() {
            state.kept.pop_front();
            self.count_dropped("full", 1);
        }
        self.report_kept(&state);
    }

    fn report_kept(&self, state: &State) {
        self.metrics
            .standby_events
            .get_or_create(&BridgeLabels {
                bridge: self.bridge,
            })
            .set(i64::try_from(state.kept.len()).unwrap_or(i64::MAX));
    }

    fn count_dropped(&self, reason: &'static str, count: usize) {
        if count == 0 {
            return;
        }
        self.metrics
            .standby_dropped
            .get_or_create(&BridgeReason {
                bridge: self.bridge,
                reason,
            })
            .inc_by(count as u64);
    }
}

/// Where the events after `mark` start among `kept`.
fn after(kept: &VecDeque<Kept>, mark: Option<Mark>) -> (Found, usize) {
    let Some(mark) = mark else {
        return (Found::None, 0);
    };
    // From the newest: the mark is recent, and were an event's exact bytes published twice, the
    // later copy is the one the mark can mean without losing what follows the earlier.
    if let Some(at) = kept.iter().rposition(|kept| kept.delivery.id == mark.event) {
        return (Found::Seen, at + 1);
    }
    let from = mark.at - millis(CLOCK_SLACK);
    let start = kept
        .iter()
        .position(|kept| kept.at >= from)
        .unwrap_or(kept.len());
    (Found::NotSeen, start)
}

/// When the hub loop read `delivery` off the bus, on the wall clock (`now` is the wall clock now).
fn read_at(delivery: &Delivery, now: i64) -> i64 {
    now.saturating_sub(millis(delivery.received_at.elapsed()))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The handover mark of `bridge` in the store; `None` when there is none (or it cannot be read:
/// every kept event is then relayed, and the message map recognises what was shown).
pub async fn read_mark(store: &dyn Store, keys: &Keys, bridge: &str) -> Option<Mark> {
    let reply = store.one(Op::Get {
        key: keys.handed(bridge),
    });
    match reply.await {
        Ok(Reply::Text(text)) => Mark::parse(&text),
        _ => None,
    }
}

/// Which of `events` a hub loop refused (their senders over the rate limit): a takeover does not
/// relay them. Unknown when the store cannot be read: then none.
pub async fn refused(store: &dyn Store, keys: &Keys, events: &[EventId]) -> Vec<EventId> {
    if events.is_empty() {
        return Vec::new();
    }
    let lookups = events
        .iter()
        .map(|event| Op::Exists {
            key: keys.refused(&event.to_string()),
        })
        .collect();
    let Ok(replies) = store.exec(lookups).await else {
        return Vec::new();
    };
    events
        .iter()
        .zip(replies)
        .filter(|(_, reply)| reply.as_int() == Some(1))
        .map(|(event, _)| *event)
        .collect()
}

/// The op that notes a refused event for [`KEEP_FOR`]: a counter with that window, like the rate
/// limit's own, and like it not a durable write: the hub loop does not wait for replicas on it
/// (a note lost in a failover costs at most one over-limit event relayed by the next holder).
pub fn refusal_op(keys: &Keys, event: EventId) -> Op {
    Op::IncrWindow {
        key: keys.refused(&event.to_string()),
        window: KEEP_FOR,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hub_bridge_sdk::event::{parse, Source};

    use super::*;

    /// An agent's message `n` on channel C, read off the bus `age` ago.
    fn event(n: u32, age: Duration) -> Arc<Delivery> {
        let source = Source::Channel("C".to_owned());
        let payload = format!(
            r#"{{"type":"channel.message","channelId":"C","message":{{"id":"m{n}","content":"{n}","senderId":"ada","timestamp":1}}}}"#
        );
        Arc::new(Delivery {
            id: EventId::of(&source.channel_name(), payload.as_bytes()),
            inbound: parse(&source, payload.as_bytes()).expect("a hub event"),
            source,
            received_at: Instant::now()
                .checked_sub(age)
                .expect("the clock has run that long"),
        })
    }

    fn handover(capacity: usize) -> (Handover, mpsc::Receiver<Arc<Delivery>>, Arc<Metrics>) {
        let (queue, queued) = mpsc::channel(capacity);
        let metrics = Arc::new(Metrics::default());
        (
            Handover::new("probe", queue, metrics.clone()),
            queued,
            metrics,
        )
    }

    fn queued(queue: &mut mpsc::Receiver<Arc<Delivery>>) -> Vec<EventId> {
        std::iter::from_fn(|| queue.try_recv().ok())
            .map(|delivery| delivery.id)
            .collect()
    }

    fn ids(events: &[Arc<Delivery>]) -> Vec<EventId> {
        events.iter().map(|event| event.id).collect()
    }

    fn mark_of(event: &Delivery) -> Mark {
        Mark {
            event: event.id,
            at: now_millis(),
        }
    }

    #[test]
    fn a_standby_keeps_events_and_a_takeover_queues_those_after_the_mark() {
        let (handover, mut queue, metrics) = handover(16);
        let events: Vec<_> = (0..5).map(|n| event(n, Duration::ZERO)).collect();
        for event in &events {
            assert_eq!(handover.offer(event), Offered::Kept);
        }
        assert!(
            queued(&mut queue).is_empty(),
            "nothing queued while standing by"
        );
        let standby = |metrics: &Metrics| {
            metrics
                .standby_events
                .get_or_create(&BridgeLabels { bridge: "probe" })
                .get()
        };
        // Set on the hub loop's sweep.
        handover.sweep();
        assert_eq!(standby(&metrics), 5);

        let mark = Some(mark_of(&events[2]));
        assert_eq!(handover.candidates(mark), ids(&events[3..]));
        assert_eq!(handover.take_over(mark, &[]), (Found::Seen, 2));
        assert_eq!(queued(&mut queue), ids(&events[3..]));
        assert_eq!(standby(&metrics), 0);
        // Running: events go straight into the queue, behind the replayed ones.
        let live = event(9, Duration::ZERO);
        assert_eq!(handover.offer(&live), Offered::Queued);
        assert_eq!(queued(&mut queue), vec![live.id]);
        assert_eq!(
            metrics
                .replayed
                .get_or_create(&BridgeLabels { bridge: "probe" })
                .get(),
            2
        );
    }

    #[test]
    fn without_a_mark_every_kept_event_is_queued_and_refused_ones_never() {
        let (handover, mut queue, _) = handover(16);
        let events: Vec<_> = (0..4).map(|n| event(n, Duration::ZERO)).collect();
        for event in &events {
            handover.offer(event);
        }
        assert_eq!(handover.take_over(None, &[events[1].id]), (Found::None, 3));
        assert_eq!(
            queued(&mut queue),
            vec![events[0].id, events[2].id, events[3].id]
        );
    }

    #[test]
    fn a_mark_not_kept_here_is_placed_by_its_time() {
        let (handover, mut queue, _) = handover(16);
        let old = event(0, Duration::from_secs(20));
        let recent: Vec<_> = (1..3).map(|n| event(n, Duration::ZERO)).collect();
        handover.offer(&old);
        for event in &recent {
            handover.offer(event);
        }
        // The previous holder handed on an event this instance never read, 10 s ago.
        let unseen = Mark {
            event: event(7, Duration::ZERO).id,
            at: now_millis() - 10_000,
        };
        assert_eq!(handover.take_over(Some(unseen), &[]), (Found::NotSeen, 2));
        assert_eq!(queued(&mut queue), ids(&recent));
    }

    #[test]
    fn the_kept_events_are_bounded_by_count_and_age_and_counted() {
        let (handover, _queue, metrics) = handover(3);
        let dropped = |reason| {
            metrics
                .standby_dropped
                .get_or_create(&BridgeReason {
                    bridge: "probe",
                    reason,
                })
                .get()
        };
        handover.offer(&event(0, KEEP_FOR + Duration::from_secs(5)));
        for n in 1..5 {
            handover.offer(&event(n, Duration::ZERO));
        }
        assert_eq!(dropped("age"), 1, "the stale one goes first");
        assert_eq!(dropped("full"), 1, "then the oldest, to keep three");
        assert_eq!(handover.candidates(None).len(), 3);
    }

    #[test]
    fn standing_by_keeps_what_the_queue_still_held() {
        let (handover, mut queue, _) = handover(16);
        handover.take_over(None, &[]);
        let events: Vec<_> = (0..3).map(|n| event(n, Duration::ZERO)).collect();
        for event in &events {
            assert_eq!(handover.offer(event), Offered::Queued);
        }
        // The lease was lost before the bridge routed them.
        handover.stand_by(&mut queue);
        assert!(!handover.is_running());
        let later = event(3, Duration::ZERO);
        assert_eq!(handover.offer(&later), Offered::Kept);
        let mut expected = ids(&events);
        expected.push(later.id);
        assert_eq!(handover.candidates(None), expected);
    }
}

//! The hub loop's presence tracker: when each tracked (channel, agent) presence expires unless
//! refreshed, so the loop can announce `offline` when a key expires unrefreshed.
//!
//! Anyone who can PUBLISH can invent ids, so the tracker is bounded: at its maximum it drops the
//! presences refreshed longest ago (an eighth of them at once, so making room costs O(1) per
//! event on average), and says how many it dropped so the caller counts them. A dropped presence
//! still expires in the store; only its `offline` announcement is lost.

use std::collections::HashMap;
use std::time::Instant;

/// A tracked presence: (channel id, agent id).
pub type Who = (String, String);

/// Deadlines of the tracked presences, at most `max` of them.
#[derive(Debug)]
pub struct PresenceTracker {
    deadlines: HashMap<Who, Instant>,
    max: usize,
}

impl PresenceTracker {
    pub fn new(max: usize) -> Self {
        Self {
            deadlines: HashMap::new(),
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    pub fn contains(&self, who: &Who) -> bool {
        self.deadlines.contains_key(who)
    }

    /// Tracks `who` until `deadline`; returns how many other presences were dropped for room.
    pub fn refresh(&mut self, who: Who, deadline: Instant) -> usize {
        let evicted = if !self.deadlines.contains_key(&who) && self.deadlines.len() >= self.max {
            self.make_room()
        } else {
            0
        };
        self.deadlines.insert(who, deadline);
        evicted
    }

    pub fn forget(&mut self, who: &Who) {
        self.deadlines.remove(who);
    }

    /// The presences whose deadline has passed.
    pub fn due(&self, now: Instant) -> Vec<Who> {
        self.deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(who, _)| who.clone())
            .collect()
    }

    /// Drops the eighth of the presences refreshed longest ago (at least one).
    fn make_room(&mut self) -> usize {
        let count = (self.max / 8).max(1).min(self.deadlines.len());
        let mut deadlines: Vec<Instant> = self.deadlines.values().copied().collect();
        let (_, cutoff, _) = deadlines.select_nth_unstable(count - 1);
        let cutoff = *cutoff;
        let mut evicted = 0;
        // Ties at the cutoff may exceed `count`; stop at it so the rest stay.
        self.deadlines.retain(|_, deadline| {
            if *deadline <= cutoff && evicted < count {
                evicted += 1;
                return false;
            }
            true
        });
        evicted
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn who(n: usize) -> Who {
        ("C".to_owned(), format!("agent-{n}"))
    }

    #[test]
    fn the_tracker_never_grows_past_its_maximum_and_drops_the_oldest() {
        let mut tracker = PresenceTracker::new(16);
        let start = Instant::now();
        let mut evicted = 0;
        for n in 0..1_000 {
            evicted += tracker.refresh(who(n), start + Duration::from_millis(n as u64));
            assert!(tracker.len() <= 16, "{} tracked after {n}", tracker.len());
        }
        assert_eq!(evicted, 1_000 - tracker.len());
        // The newest are kept.
        assert!(tracker.contains(&who(999)));
        assert!(tracker.contains(&who(998)));
        assert!(!tracker.contains(&who(0)));
    }

    #[test]
    fn refreshing_a_tracked_presence_never_evicts() {
        let mut tracker = PresenceTracker::new(2);
        let now = Instant::now();
        assert_eq!(tracker.refresh(who(1), now), 0);
        assert_eq!(tracker.refresh(who(2), now), 0);
        assert_eq!(tracker.refresh(who(1), now + Duration::from_secs(1)), 0);
        assert_eq!(tracker.len(), 2);
        assert_eq!(tracker.refresh(who(3), now + Duration::from_secs(2)), 1);
        assert!(
            !tracker.contains(&who(2)),
            "the one refreshed longest ago goes"
        );
        assert!(tracker.contains(&who(1)) && tracker.contains(&who(3)));
    }

    #[test]
    fn due_lists_only_passed_deadlines() {
        let mut tracker = PresenceTracker::new(8);
        let now = Instant::now();
        tracker.refresh(who(1), now);
        tracker.refresh(who(2), now + Duration::from_secs(60));
        assert_eq!(tracker.due(now), vec![who(1)]);
        tracker.forget(&who(1));
        assert!(tracker.due(now).is_empty());
    }
}

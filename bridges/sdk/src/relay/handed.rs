//! The running instance's half of a handover ([`crate::handover`]): how far routing has handed hub
//! events to the durable outboxes, written to the store every [`MARK_EVERY`] while it moves and
//! once more after a graceful stop's drain. The write is fenced, so a run that lost its lease
//! (paused, cut off) cannot move the mark the new holder's successor will read.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::bridge::HubHandle;
use crate::event::now_millis;
use crate::handover::{EventId, Mark, MARK_EVERY};
use crate::store::{Op, Reply};

pub(crate) struct Handed {
    key: String,
    // A std mutex: held only to read or replace two marks, never across an await.
    marks: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    /// The last event routed.
    routed: Option<Mark>,
    /// The last mark the store took.
    written: Option<Mark>,
}

impl Handed {
    pub(crate) fn new(hub: &HubHandle, bridge: &str) -> Self {
        Self {
            key: hub.keys().handed(bridge),
            marks: Mutex::new(Marks::default()),
        }
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `event`, read off the bus at `received_at`, was routed: its jobs stand in the outboxes.
    pub(crate) fn passed(&self, event: EventId, received_at: Instant) {
        // When it was read, as a standby places a mark it did not see by when it read events.
        let age = i64::try_from(received_at.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.marks().routed = Some(Mark {
            event,
            at: now_millis().saturating_sub(age),
        });
    }

    /// Writes the mark if it moved since the last write; `false` once the fence refused it (the
    /// lease is lost: nothing more to write).
    pub(crate) async fn write(&self, hub: &HubHandle) -> bool {
        let mark = {
            let marks = self.marks();
            match marks.routed {
                Some(routed) if marks.written != Some(routed) => routed,
                _ => return true,
            }
        };
        let set = Op::SetFenced {
            fence: hub.fence().cloned(),
            key: self.key.clone(),
            value: mark.to_string(),
        };
        match hub.store().one(set).await {
            Ok(Reply::Int(1)) => {
                self.marks().written = Some(mark);
                true
            }
            Ok(_) => false,
            // Written on the next tick; a standby taking over meanwhile replays a little more,
            // which the message map recognises.
            Err(error) => {
                tracing::debug!(%error, "handover mark not written");
                true
            }
        }
    }

    /// Writes the mark every [`MARK_EVERY`] until `shutdown` or the lease is lost.
    pub(crate) async fn keep_writing(&self, hub: HubHandle, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(MARK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {
                    if !self.write(&hub).await {
                        return;
                    }
                }
            }
        }
    }
}

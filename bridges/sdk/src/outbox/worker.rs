//! A destination's worker: takes its jobs in order and delivers each until it is done,
//! dead-lettered, or the bridge stops.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::queue::Next;
use super::{depth_i64, Entry, Outboxes, SendError, GIVE_UP_AFTER};
use crate::guard::isolate;
use crate::metrics::{retry, BridgeLabels};

/// A destination's worker exits after this long without work (it is re-created on demand).
const IDLE_EXIT: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Worker<J> {
    pub(super) outboxes: Outboxes<J>,
    pub(super) destination: String,
    /// Notified when a job is queued here.
    pub(super) wake: Arc<Notify>,
}

impl<J: Send + 'static> Worker<J> {
    pub(super) async fn run(self) {
        let inner = &self.outboxes.inner;
        loop {
            let wait = match self.next() {
                Next::Deliver(entry) => {
                    self.deliver(entry).await;
                    self.done_with_one();
                    continue;
                }
                Next::WaitUntil(at) => at,
                Next::Idle => Instant::now() + IDLE_EXIT,
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = inner.shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wait) => {
                    let mut queues = inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
                    let idle = queues
                        .get(&self.destination)
                        .is_none_or(|queue| queue.depth() == 0);
                    if idle {
                        queues.remove(&self.destination);
                        return;
                    }
                }
            }
        }
        let undelivered = self.outboxes.depth(&self.destination);
        if undelivered > 0 {
            let kept = if inner.durability.is_some() {
                "kept in the store for the next run"
            } else {
                "lost: this outbox is not durable"
            };
            tracing::warn!(
                bridge = inner.bridge,
                destination = %self.destination,
                undelivered,
                "stopping with relays still queued: {kept}"
            );
        }
    }

    /// Takes the next job that may start now, or says how long to wait.
    fn next(&self) -> Next<J> {
        let deliver = &self.outboxes.inner.deliver;
        let mut queues = self.outboxes.lock_queues();
        let Some(queue) = queues.get_mut(&self.destination) else {
            return Next::Idle;
        };
        queue.next(
            Instant::now(),
            |job| deliver.not_before(&self.destination, job),
            |job| deliver.deferrable(job),
        )
    }

    fn done_with_one(&self) {
        let mut queues = self.outboxes.lock_queues();
        if let Some(queue) = queues.get_mut(&self.destination) {
            queue.in_flight = false;
            self.outboxes
                .gauge(&self.destination)
                .set(depth_i64(queue.depth()));
        }
    }

    /// Delivers one job, retrying until it is delivered, dead-lettered, or the bridge stops.
    async fn deliver(&self, mut entry: Entry<J>) {
        let outboxes = &self.outboxes;
        let inner = &outboxes.inner;
        let destination = self.destination.as_str();
        let metrics_label = BridgeLabels {
            bridge: inner.bridge,
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            // One job's panic must not take the destination's worker with it: it fails that job
            // (dead letter, the agent is told) and the next job is handled.
            let attempt = isolate(inner.deliver.deliver(destination, &mut entry.job))
                .await
                .unwrap_or_else(|panic| {
                    inner
                        .hub
                        .metrics()
                        .count_ignored(inner.bridge, "job_panicked");
                    tracing::error!(
                        bridge = inner.bridge,
                        destination,
                        panic,
                        "a relay job panicked"
                    );
                    Err(SendError::Permanent(format!("internal error: {panic}")))
                });
            let wait = match attempt {
                Ok(()) => return outboxes.finish(destination, entry, None).await,
                Err(SendError::Permanent(reason)) => {
                    tracing::warn!(bridge = inner.bridge, destination, %reason, "relay dead-lettered");
                    return outboxes.finish(destination, entry, Some(reason)).await;
                }
                Err(SendError::RetryAfter(wait)) => {
                    inner
                        .hub
                        .metrics()
                        .platform_429s
                        .get_or_create(&metrics_label)
                        .inc();
                    tracing::info!(
                        bridge = inner.bridge,
                        destination,
                        ?wait,
                        "platform rate limit; waiting"
                    );
                    wait
                }
                Err(SendError::Transient(reason)) => {
                    inner
                        .hub
                        .metrics()
                        .count_retry(inner.bridge, retry::DELIVERY_FAILED);
                    if started.elapsed() >= GIVE_UP_AFTER {
                        let reason = format!("gave up after {:?}: {reason}", started.elapsed());
                        return outboxes.finish(destination, entry, Some(reason)).await;
                    }
                    tracing::warn!(bridge = inner.bridge, destination, %reason, retry_in = ?backoff, "relay failed; retrying");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            outboxes.save_progress(destination, &mut entry).await;
            tokio::select! {
                // A durable job stays in the store and resumes on the next run.
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

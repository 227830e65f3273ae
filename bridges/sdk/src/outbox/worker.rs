//! A destination's worker: takes its jobs in order and delivers each until it is done,
//! dead-lettered, or the bridge stops; before each attempt it checks the run's fence, and stops
//! for good once the run has lost its bridge's lease.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::queue::Next;
use super::{depth_i64, Entry, Outboxes, SendError, GIVE_UP_AFTER};
use crate::guard::isolate;
use crate::metrics::{retry, BridgeLabels};
use crate::store::{Op, Reply};

/// A destination's worker exits after this long without work (it is re-created on demand).
const IDLE_EXIT: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait between two checks of the fence while the store cannot be reached: a short
/// outage must not hold the backlog up for long.
const MAX_FENCE_BACKOFF: Duration = Duration::from_secs(2);

/// Whether a job may be attempted.
enum Take {
    Go,
    /// The run's fence no longer holds its lease.
    FencedOut,
    /// The bridge stopped while the worker waited for the store.
    Stopped,
}

/// How the worker is left after a job.
#[derive(PartialEq, Eq)]
enum Outcome {
    /// Done with the job (delivered, dead-lettered, or left in the store as the bridge stops):
    /// on to the next.
    Finished,
    /// The run lost its lease: the worker stops.
    FencedOut,
}

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
                    if self.deliver(entry).await == Outcome::FencedOut {
                        // The run has lost its lease and is being stopped: this worker sends
                        // nothing more, and its jobs stay in the store for the new holder.
                        break;
                    }
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
            let kept = if inner.durability.is_none() {
                "lost: this outbox is not durable"
            } else if inner.fenced_out.load(Ordering::Relaxed) {
                "kept in the store for the lease's new holder"
            } else {
                "kept in the store for the next run"
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

    /// Whether the job may be attempted now: the run's fence still holds its bridge's lease
    /// ([`Op::CheckFence`], one round trip right before every attempt, retries included). The
    /// take itself is in memory (the job is off the queue); this is what makes it fenced, so an
    /// instance that lost its lease (paused past the TTL, say) sends nothing once it carries on.
    /// While the store cannot say, the worker waits and asks again rather than send unfenced.
    /// A bridge run without a lease has no fence: then the job may always start, at no cost.
    ///
    /// A send that passed the check just before the lease was lost may still reach the platform:
    /// the platform knows no token. The lease's new holder then sends it again (at least once).
    async fn take(&self) -> Take {
        let inner = &self.outboxes.inner;
        let Some(fence) = inner.hub.fence() else {
            return Take::Go;
        };
        let mut backoff = Duration::from_millis(250);
        loop {
            let check = Op::CheckFence {
                fence: fence.clone(),
            };
            let error = match inner.hub.store().one(check).await {
                Ok(Reply::Int(1)) => return Take::Go,
                Ok(_) => {
                    self.outboxes.fenced_out();
                    return Take::FencedOut;
                }
                Err(error) => error,
            };
            inner
                .hub
                .metrics()
                .count_retry(inner.bridge, retry::DELIVERY_FAILED);
            tracing::warn!(bridge = inner.bridge, destination = %self.destination, %error, retry_in = ?backoff, "cannot check the bridge's lease before a relay; waiting");
            tokio::select! {
                _ = inner.shutdown.cancelled() => return Take::Stopped,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_FENCE_BACKOFF);
        }
    }

    /// Delivers one job, retrying until it is delivered, dead-lettered, or the bridge stops.
    async fn deliver(&self, mut entry: Entry<J>) -> Outcome {
        let outboxes = &self.outboxes;
        let inner = &outboxes.inner;
        let destination = self.destination.as_str();
        let metrics_label = BridgeLabels {
            bridge: inner.bridge,
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.take().await {
                Take::Go => {}
                // The job stays in the store: the new holder (or the next run) sends it.
                Take::FencedOut => return Outcome::FencedOut,
                Take::Stopped => return Outcome::Finished,
            }
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
                Ok(()) => {
                    outboxes.finish(destination, entry, None).await;
                    return Outcome::Finished;
                }
                Err(SendError::Permanent(reason)) => {
                    tracing::warn!(bridge = inner.bridge, destination, %reason, "relay dead-lettered");
                    outboxes.finish(destination, entry, Some(reason)).await;
                    return Outcome::Finished;
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
                        outboxes.finish(destination, entry, Some(reason)).await;
                        return Outcome::Finished;
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
                _ = inner.shutdown.cancelled() => return Outcome::Finished,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

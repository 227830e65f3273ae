//! Per-destination ordered outboxes (SPEC section 6): every relay to a platform chat goes through
//! the chat's own queue and worker, so order is kept per chat, a slow or rate-limited chat never
//! delays another, and the hub loop never waits on a platform.
//!
//! A bridge implements [`Deliver`] for its job type. The worker retries a 429 after the wait the
//! platform asked for, retries transient errors (5xx, network) with capped backoff, and hands a
//! permanent error (or a transient one that lasted [`GIVE_UP_AFTER`]) to
//! [`Deliver::dead_letter`] with the reason. Nothing is dropped silently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::HubHandle;
use crate::metrics::{label, labels2};

/// How long transient errors are retried before the job is dead-lettered.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);
/// Jobs waiting per destination before new ones are dead-lettered as a backlog overflow.
pub const MAX_BACKLOG: usize = 10_000;
/// A destination's worker exits after this long without work (it is re-created on demand).
const IDLE_EXIT: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The platform's rate limit: wait this long, then try again.
    RetryAfter(Duration),
    /// Worth retrying with backoff: 5xx, timeouts, connection errors.
    Transient(String),
    /// Retrying will not help (forbidden, chat not found, message too old).
    Permanent(String),
}

/// Delivers one kind of job to a platform.
pub trait Deliver<J>: Send + Sync + 'static {
    /// One attempt. `job` is mutable so that a multi-step job (the parts of a split message) can
    /// remember its progress and a retry resumes where it failed.
    fn deliver<'a>(
        &'a self,
        destination: &'a str,
        job: &'a mut J,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// Keeps a job that will not be delivered, with the reason (and tells whoever sent it).
    fn dead_letter<'a>(&'a self, destination: &'a str, job: J, reason: String)
        -> BoxFuture<'a, ()>;
}

/// The outboxes of one bridge.
pub struct Outboxes<J> {
    inner: Arc<Inner<J>>,
}

impl<J> Clone for Outboxes<J> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<J> {
    bridge: &'static str,
    deliver: Arc<dyn Deliver<J>>,
    hub: HubHandle,
    // A std mutex: held only to look up or insert a queue, never across an await.
    queues: Mutex<HashMap<String, Queue<J>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

struct Queue<J> {
    sender: mpsc::UnboundedSender<J>,
    depth: Arc<std::sync::atomic::AtomicUsize>,
}

impl<J: Send + 'static> Outboxes<J> {
    /// Outboxes whose workers run on `tasks` and stop when `shutdown` is cancelled.
    pub fn new(
        bridge: &'static str,
        deliver: Arc<dyn Deliver<J>>,
        hub: HubHandle,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                bridge,
                deliver,
                hub,
                queues: Mutex::new(HashMap::new()),
                tasks,
                shutdown,
            }),
        }
    }

    /// Queues a job for `destination`, behind everything already queued there.
    pub async fn push(&self, destination: &str, job: J) {
        let overflow = {
            let mut queues = self
                .inner
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let queue = queues
                .entry(destination.to_owned())
                .or_insert_with(|| self.spawn_worker(destination));
            let depth = queue.depth.load(std::sync::atomic::Ordering::Relaxed);
            if depth >= MAX_BACKLOG {
                Some(job)
            } else {
                queue
                    .depth
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.gauge(destination).set(depth_i64(depth + 1));
                // The worker removes its queue under this lock before it exits, so the
                // receiver is alive here.
                queue.sender.send(job).err().map(|error| error.0)
            }
        };
        if let Some(job) = overflow {
            let reason = format!("{MAX_BACKLOG} relays already waiting for this destination");
            tracing::warn!(bridge = self.inner.bridge, destination, %reason, "outbox full");
            self.inner.deliver.dead_letter(destination, job, reason).await;
        }
    }

    /// Jobs waiting (not yet delivered) for `destination`.
    pub fn depth(&self, destination: &str) -> usize {
        self.inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(destination)
            .map_or(0, |queue| {
                queue.depth.load(std::sync::atomic::Ordering::Relaxed)
            })
    }

    fn gauge(
        &self,
        destination: &str,
    ) -> prometheus_client::metrics::gauge::Gauge {
        self.inner
            .hub
            .metrics()
            .destination_queue_depth
            .get_or_create(&labels2(
                ("bridge", self.inner.bridge),
                ("destination", destination),
            ))
            .clone()
    }

    fn spawn_worker(&self, destination: &str) -> Queue<J> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let depth = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let worker = Worker {
            outboxes: self.clone(),
            destination: destination.to_owned(),
            depth: depth.clone(),
        };
        self.inner.tasks.spawn(worker.run(receiver));
        Queue { sender, depth }
    }
}

fn depth_i64(depth: usize) -> i64 {
    i64::try_from(depth).unwrap_or(i64::MAX)
}

struct Worker<J> {
    outboxes: Outboxes<J>,
    destination: String,
    depth: Arc<std::sync::atomic::AtomicUsize>,
}

impl<J: Send + 'static> Worker<J> {
    async fn run(self, mut receiver: mpsc::UnboundedReceiver<J>) {
        let inner = &self.outboxes.inner;
        loop {
            let job = tokio::select! {
                job = receiver.recv() => job,
                _ = inner.shutdown.cancelled() => None,
                _ = tokio::time::sleep(IDLE_EXIT) => {
                    let mut queues = inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
                    if receiver.is_empty() {
                        queues.remove(&self.destination);
                        return;
                    }
                    continue;
                }
            };
            let Some(job) = job else { break };
            self.deliver(job).await;
            let left = self.depth.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) - 1;
            self.outboxes.gauge(&self.destination).set(depth_i64(left));
        }
        let undelivered = receiver.len();
        if undelivered > 0 {
            tracing::warn!(
                bridge = inner.bridge,
                destination = %self.destination,
                undelivered,
                "stopping with relays still queued"
            );
        }
    }

    /// Delivers one job, retrying until it is delivered, dead-lettered, or the bridge stops.
    async fn deliver(&self, mut job: J) {
        let inner = &self.outboxes.inner;
        let metrics_label = label("bridge", inner.bridge);
        let started = Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            let wait = match inner.deliver.deliver(&self.destination, &mut job).await {
                Ok(()) => return,
                Err(SendError::Permanent(reason)) => {
                    tracing::warn!(bridge = inner.bridge, destination = %self.destination, %reason, "relay dead-lettered");
                    inner.deliver.dead_letter(&self.destination, job, reason).await;
                    return;
                }
                Err(SendError::RetryAfter(wait)) => {
                    inner.hub.metrics().platform_429s.get_or_create(&metrics_label).inc();
                    tracing::info!(bridge = inner.bridge, destination = %self.destination, ?wait, "platform rate limit; waiting");
                    wait
                }
                Err(SendError::Transient(reason)) => {
                    inner.hub.metrics().retries.get_or_create(&metrics_label).inc();
                    if started.elapsed() >= GIVE_UP_AFTER {
                        let reason = format!("gave up after {:?}: {reason}", started.elapsed());
                        inner.deliver.dead_letter(&self.destination, job, reason).await;
                        return;
                    }
                    tracing::warn!(bridge = inner.bridge, destination = %self.destination, %reason, retry_in = ?backoff, "relay failed; retrying");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

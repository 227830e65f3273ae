//! Runs each bridge under supervision: one instance at a time holds the bridge's lease in the
//! store, a transient failure restarts the bridge with capped backoff, and a fatal one (bad
//! credentials) stops it instead of looping. A panic inside a bridge is caught, logged and counted
//! like an error, and the bridge restarts; `/readyz` shows why it is down meanwhile.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hub_bridge_sdk::guard::panic_message;
use hub_bridge_sdk::metrics::BridgeKind;
use hub_bridge_sdk::{Bridge, BridgeContext, Keys, Op, Reply, Store};
use tokio_util::sync::CancellationToken;

/// How long a lease lasts without renewal; another instance takes over within this time after
/// the holder dies.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(3);
const LEASE_RETRY_EVERY: Duration = Duration::from_secs(2);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// A run that lasted this long resets the restart backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// A bridge's lease in the store.
pub struct Lease<'a> {
    store: &'a dyn Store,
    key: String,
    owner: String,
}

impl<'a> Lease<'a> {
    pub fn new(store: &'a dyn Store, keys: &Keys, bridge: &str, owner: &str) -> Self {
        Self {
            store,
            key: keys.lease(bridge),
            owner: owner.to_owned(),
        }
    }

    /// Takes the lease if nobody holds it (or we already do).
    async fn try_acquire(&self) -> bool {
        let ops = vec![
            Op::Set {
                key: self.key.clone(),
                value: self.owner.clone(),
                ttl: Some(LEASE_TTL),
                only_if_absent: true,
            },
            Op::RenewLease {
                key: self.key.clone(),
                owner: self.owner.clone(),
                ttl: LEASE_TTL,
            },
        ];
        matches!(
            self.store.exec(ops).await.as_deref(),
            Ok([Reply::Ok, _] | [_, Reply::Int(1)])
        )
    }

    /// Renews until the lease is lost; returns then. A store outage is not a loss until the
    /// lease would have expired.
    async fn keep(&self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(LEASE_RENEW_EVERY).await;
            let renewal = self
                .store
                .one(Op::RenewLease {
                    key: self.key.clone(),
                    owner: self.owner.clone(),
                    ttl: LEASE_TTL,
                })
                .await;
            match renewal {
                Ok(Reply::Int(1)) => last_renewed = Instant::now(),
                Ok(_) => return,
                Err(_) if last_renewed.elapsed() >= LEASE_TTL => return,
                Err(_) => {}
            }
        }
    }

    async fn release(&self) {
        let _ = self
            .store
            .one(Op::ReleaseLease {
                key: self.key.clone(),
                owner: self.owner.clone(),
            })
            .await;
    }
}

/// Runs one bridge until `shutdown`, holding its lease while it runs.
#[tracing::instrument(name = "bridge", skip_all, fields(bridge = bridge.name()))]
///
/// `active` is true while this instance holds the lease, so the hub loop hands events only to
/// bridges that will relay them (a standby instance's queue would otherwise fill up and overflow).
pub async fn supervise(
    bridge: Box<dyn Bridge>,
    mut ctx: BridgeContext,
    instance_id: String,
    shutdown: CancellationToken,
    active: Arc<AtomicBool>,
) {
    let store = ctx.hub.store_arc();
    let lease = Lease::new(store.as_ref(), ctx.hub.keys(), bridge.name(), &instance_id);
    let mut delay = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        if !lease.try_acquire().await {
            active.store(false, Ordering::Relaxed);
            ctx.status
                .not_ready("standby: another instance holds this bridge's lease");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LEASE_RETRY_EVERY) => continue,
            }
        }
        active.store(true, Ordering::Relaxed);
        tracing::info!("bridge starting");
        let run_token = shutdown.child_token();
        ctx.shutdown = run_token.clone();
        let started = Instant::now();
        let status = ctx.status.clone();
        let result = {
            // The run borrows the context the next run reuses, so it is not spawned: the panic is
            // caught where it unwinds. What the context holds (the delivery queue, handles to
            // the store and health) stays usable after a panic; its std mutexes ignore poisoning.
            let run = AssertUnwindSafe(bridge.run(&mut ctx)).catch_unwind();
            tokio::pin!(run);
            tokio::select! {
                result = &mut run => result,
                _ = lease.keep() => {
                    tracing::warn!("lease lost; stopping this bridge here");
                    active.store(false, Ordering::Relaxed);
                    run_token.cancel();
                    let _ = run.await;
                    status.not_ready("standby: lease lost to another instance");
                    continue;
                }
            }
        };
        // Whatever the run left behind (outbox workers, pollers) stops with it, so the next run
        // starts clean and recovers durable work instead of racing the old tasks.
        run_token.cancel();
        let count_failure = |kind: &'static str| {
            ctx.hub
                .metrics()
                .bridge_failures
                .get_or_create(&BridgeKind {
                    bridge: bridge.name(),
                    kind,
                })
                .inc();
        };
        match result {
            Ok(Ok(())) if shutdown.is_cancelled() => break,
            Ok(Ok(())) => {
                tracing::warn!("bridge returned on its own; restarting");
                status.not_ready("restarting: the bridge stopped on its own");
            }
            Ok(Err(error)) if error.is_fatal() => {
                tracing::error!(%error, "bridge stopped for good");
                status.not_ready(&format!("stopped: {error}"));
                active.store(false, Ordering::Relaxed);
                lease.release().await;
                return;
            }
            Ok(Err(error)) => {
                count_failure("error");
                tracing::warn!(%error, retry_in = ?delay, "bridge failed; restarting");
                status.not_ready(&format!("restarting after: {error}"));
            }
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                count_failure("panic");
                tracing::error!(panic = %message, retry_in = ?delay, "bridge panicked; restarting");
                status.not_ready(&format!("restarting after a panic: {message}"));
            }
        }
        if started.elapsed() >= HEALTHY_RUN {
            delay = Duration::from_secs(1);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
    active.store(false, Ordering::Relaxed);
    lease.release().await;
}

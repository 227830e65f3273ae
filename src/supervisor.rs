//! Runs each bridge under supervision: one instance at a time holds the bridge's lease in the
//! store, a transient failure restarts the bridge with capped backoff, and a fatal one (bad
//! credentials) stops it instead of looping. A panic inside a bridge is caught, logged and counted
//! like an error, and the bridge restarts; `/readyz` shows why it is down meanwhile.
//!
//! Each run of a bridge acquires the lease anew and so gets a fencing token of its own
//! ([`hub_bridge_sdk::fence`]), handed to the run through its context: whatever a run left behind
//! (after a lost lease, or a restart here) can take and finish no more jobs. The lease lasts
//! `ha.lease_ttl_secs`, is renewed every third of it, and a standby asks for it every tenth of it
//! (at most every half second), so it relays within the TTL and a second of a crash (SPEC
//! section 6).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hub_bridge_sdk::guard::panic_message;
use hub_bridge_sdk::metrics::BridgeKind;
use hub_bridge_sdk::{Bridge, BridgeContext, Fence, Keys, Op, Reply, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::handover::{self, Found, Handover};

/// The holder renews its lease this many times per TTL: a renewal or two may fail (a slow store)
/// before the lease is at risk.
const RENEWALS_PER_TTL: u32 = 3;
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// A run that lasted this long resets the restart backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// A bridge's lease in the store, with its fencing token (see [`hub_bridge_sdk::fence`]).
pub struct Lease<'a> {
    store: &'a dyn Store,
    key: String,
    fence_key: String,
    owner: String,
    ttl: Duration,
}

impl<'a> Lease<'a> {
    pub fn new(
        store: &'a dyn Store,
        keys: &Keys,
        bridge: &str,
        owner: &str,
        ttl: Duration,
    ) -> Self {
        Self {
            store,
            key: keys.lease(bridge),
            fence_key: keys.lease_fence(bridge),
            owner: owner.to_owned(),
            ttl,
        }
    }

    /// Takes the lease if nobody holds it, or we do (the bridge's next run here), with a new
    /// fencing token; `None` while another instance holds it or the store cannot be reached.
    pub async fn acquire(&self) -> Option<Fence> {
        let acquire = Op::AcquireLease {
            key: self.key.clone(),
            fence_key: self.fence_key.clone(),
            owner: self.owner.clone(),
            ttl: self.ttl,
        };
        let token = self.store.one(acquire).await.ok()?.as_int()?;
        let token = u64::try_from(token).ok().filter(|token| *token > 0)?;
        Some(Fence::new(self.key.clone(), self.owner.clone(), token))
    }

    /// Extends the lease; `Ok(false)` when `fence` no longer holds it.
    pub async fn renew(&self, fence: &Fence) -> Result<bool, StoreError> {
        let renewal = Op::RenewLease {
            fence: fence.clone(),
            ttl: self.ttl,
        };
        Ok(self.store.one(renewal).await? == Reply::Int(1))
    }

    /// Renews until the lease is lost; returns then. A store outage is not a loss until the
    /// lease would have expired: counted from when the last successful renewal was asked for,
    /// which is no later than when the store extended it.
    async fn keep(&self, fence: &Fence) {
        let mut renewed_at = Instant::now();
        loop {
            tokio::time::sleep(self.ttl / RENEWALS_PER_TTL).await;
            let asked_at = Instant::now();
            match self.renew(fence).await {
                Ok(true) => renewed_at = asked_at,
                Ok(false) => return,
                Err(_) if renewed_at.elapsed() >= self.ttl => return,
                Err(_) => {}
            }
        }
    }

    /// Gives the lease up, if `fence` still holds it, so another instance takes over at once.
    pub async fn release(&self, fence: &Fence) {
        let _ = self
            .store
            .one(Op::ReleaseLease {
                fence: fence.clone(),
            })
            .await;
    }

    /// How often a standby asks for the lease: well inside the TTL, so it takes over soon after
    /// the lease expires, with time left within the second SPEC allows to start the bridge.
    pub fn retry_every(&self) -> Duration {
        (self.ttl / 10).min(Duration::from_millis(500))
    }
}

/// Runs one bridge until `shutdown`, holding its lease while it runs.
///
/// `handover` is how the hub loop hands the bridge its events: into its queue while this instance
/// holds the lease, kept while another does; on taking the lease over, the kept events the
/// previous holder had not handed on go into the queue first.
///
/// `lease_ttl` (`ha.lease_ttl_secs`) is how long the lease lasts without renewal: another
/// instance takes over within it (and [`Lease::retry_every`]) after this one dies.
#[tracing::instrument(name = "bridge", skip_all, fields(bridge = bridge.name()))]
pub async fn supervise(
    bridge: Box<dyn Bridge>,
    mut ctx: BridgeContext,
    instance_id: String,
    shutdown: CancellationToken,
    handover: Arc<Handover>,
    lease_ttl: Duration,
) {
    let store = ctx.hub.store_arc();
    let lease = Lease::new(
        store.as_ref(),
        ctx.hub.keys(),
        bridge.name(),
        &instance_id,
        lease_ttl,
    );
    let mut delay = Duration::from_secs(1);
    // The fence of the last acquisition, to release the lease with when the bridge stops here.
    let mut held: Option<Fence> = None;
    while !shutdown.is_cancelled() {
        let Some(fence) = lease.acquire().await else {
            ctx.status
                .not_ready("standby: another instance holds this bridge's lease");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(lease.retry_every()) => continue,
            }
        };
        held = Some(fence.clone());
        if !handover.is_running() {
            take_over(&handover, store.as_ref(), ctx.hub.keys()).await;
        }
        tracing::info!(fence = fence.token(), "bridge starting");
        let run_token = shutdown.child_token();
        ctx.shutdown = run_token.clone();
        // The run's outboxes present this fence with every job, so once the lease is lost (or
        // this is no longer the latest run) whatever the run left behind sends nothing more.
        ctx.hub.set_fence(Some(fence.clone()));
        let started = Instant::now();
        let status = ctx.status.clone();
        let ended = {
            // The run borrows the context the next run reuses, so it is not spawned: the panic is
            // caught where it unwinds. What the context holds (the delivery queue, handles to
            // the store and health) stays usable after a panic; its std mutexes ignore poisoning.
            let run = AssertUnwindSafe(bridge.run(&mut ctx)).catch_unwind();
            tokio::pin!(run);
            tokio::select! {
                result = &mut run => Some(result),
                _ = lease.keep(&fence) => {
                    tracing::warn!("lease lost; stopping this bridge here");
                    run_token.cancel();
                    let _ = run.await;
                    None
                }
            }
        };
        let Some(result) = ended else {
            handover.stand_by(&mut ctx.deliveries);
            status.not_ready("standby: lease lost to another instance");
            continue;
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
                handover.stand_by(&mut ctx.deliveries);
                lease.release(&fence).await;
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
    handover.stand_by(&mut ctx.deliveries);
    if let Some(fence) = held {
        lease.release(&fence).await;
    }
}

/// Takes the bridge over here: the kept events after the previous holder's mark (less those its
/// hub loop refused) go into the bridge's queue, ahead of what the hub loop hands on from now.
async fn take_over(handover: &Handover, store: &dyn Store, keys: &Keys) {
    let mark = handover::read_mark(store, keys, handover.bridge()).await;
    let refused = handover::refused(store, keys, &handover.candidates(mark)).await;
    let (found, replayed) = handover.take_over(mark, &refused);
    match found {
        Found::Seen | Found::None if replayed == 0 => {}
        Found::Seen | Found::None => tracing::info!(
            replayed,
            "relaying the events the previous holder had not handed on"
        ),
        // Also after this instance lost the lease to nobody (a store outage outlasted it): the
        // events it kept start after the last one it routed, which the mark names.
        Found::NotSeen => tracing::info!(
            replayed,
            "the previous holder's mark is not among the kept events; relaying those read since \
             its time (what was shown already is recognised)"
        ),
    }
}

//! Handover (SPEC section 6 and 8, issue 11).
//!
//! Takeover after a crash (`--takeovers N`, 0 skips): two `hub-bridge` processes (the release
//! binary this benchmark was built with) share the benchmark's redis-server and an in-process fake
//! Bot API, with the default `ha.lease_ttl_secs` (5), while an agent publishes ten messages a second
//! into the linked channel. N times, the instance running the Telegram bridge is SIGKILLed (and
//! started again, as the new standby, once the other has taken over). Measured: the kill -> the
//! first `sendMessage` the fake receives after it (the standby relaying), and the kill -> every
//! message published until then shown. The floor is the lease's remaining time at the kill
//! (`PTTL`, read just before it): no instance may run the bridge before the lease expires. Every
//! message is checked to show exactly once (SPEC's one exception, the send on the wire at the
//! kill, is counted apart).
//!
//! Bookkeeping cost on hub throughput (always): what the handover adds per hub event, timed over
//! the throughput phase's own payloads: the event's id (xxh3 of channel and payload) and its way
//! through the bridge's [`Handover`], into the queue (the running instance) and kept (a standby).
//! The ratio is to the hub loop's time per event measured in the throughput phase of the same run.
//! The mark the running instance writes (one fenced SET every 100 ms while events flow) is a
//! round trip on the bridge's task, not the hub loop's, and costs ten round trips a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_bridge::handover::Handover;
use hub_bridge_sdk::event::{parse, Source};
use hub_bridge_sdk::handover::EventId;
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::Delivery;
use hub_bridge_testkit::fake_telegram::FakeTelegram;
use hub_bridge_testkit::numbered::{self, NumberedAgent};
use hub_bridge_testkit::process::ServiceProcess;
use hub_bridge_testkit::redis_server::RedisServer;
use tokio::sync::mpsc;

use super::{hub_event, Result};

const TOKEN: &str = "123456:HANDOVER-bench_token";
const CHANNEL: &str = "5e1f0c2a-7b3d-4e5f-8a9b-0c1d2e3f4a5b";
const GROUP: i64 = -1_004_000_000_000;
const PACE: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(60);

/// The takeover phase's measurements, one entry per takeover.
#[derive(Default)]
pub struct Takeovers {
    /// The lease's remaining time at the kill.
    pub floor: Vec<Duration>,
    /// Kill -> the first send after it.
    pub first_send: Vec<Duration>,
    /// Kill -> every message published until the first send shown.
    pub caught_up: Vec<Duration>,
    pub published: usize,
    pub lost: usize,
    /// Shown more than once, other than the send on the wire at a kill.
    pub doubled: usize,
    /// Sends on the wire at a kill that showed twice.
    pub on_the_wire: usize,
}

/// What the handover adds to each hub event, in nanoseconds: (id, into the queue, kept).
#[derive(Default)]
pub struct Bookkeeping {
    pub events: usize,
    pub id_ns: f64,
    pub queued_ns: f64,
    pub kept_ns: f64,
}

/// Times the handover's per-event work over `events` events of the throughput mix.
pub fn bookkeeping(events: u64) -> Bookkeeping {
    let payloads: Vec<(String, String)> = (0..events).map(|seq| hub_event(seq, 0)).collect();
    let started = Instant::now();
    let ids: Vec<EventId> = payloads
        .iter()
        .map(|(channel, payload)| EventId::of(channel, payload.as_bytes()))
        .collect();
    let id_ns = per_event(started.elapsed(), events);
    let deliveries: Vec<Arc<Delivery>> = payloads
        .iter()
        .zip(&ids)
        .filter_map(|((channel, payload), id)| {
            let source = Source::from_channel(channel)?;
            let inbound = parse(&source, payload.as_bytes()).ok()?;
            Some(Arc::new(Delivery {
                id: *id,
                source,
                inbound,
                received_at: Instant::now(),
            }))
        })
        .collect();
    let metrics = Arc::new(Metrics::default());
    // The running instance's queue, as large as the whole run, drained after.
    let (queue, mut queued) = mpsc::channel(deliveries.len().max(1));
    let running = Handover::new("bench", queue, metrics.clone());
    running.take_over(None, &[]);
    let started = Instant::now();
    for delivery in &deliveries {
        running.offer(delivery);
    }
    let queued_ns = per_event(started.elapsed(), events);
    while queued.try_recv().is_ok() {}
    // A standby with the service's default bridge queue (10,000): past it, the oldest go.
    let (queue, _kept) = mpsc::channel(10_000);
    let standby = Handover::new("bench", queue, metrics);
    let started = Instant::now();
    for delivery in &deliveries {
        standby.offer(delivery);
    }
    let kept_ns = per_event(started.elapsed(), events);
    Bookkeeping {
        events: deliveries.len(),
        id_ns,
        queued_ns,
        kept_ns,
    }
}

fn per_event(elapsed: Duration, events: u64) -> f64 {
    elapsed.as_nanos() as f64 / events.max(1) as f64
}

fn config(redis: &RedisServer, tg: &FakeTelegram) -> String {
    format!(
        "[redis]\nurl = \"{}\"\n[limits]\nmessage = 0\n\
         [telegram]\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\n\
         chat_sends_per_sec = 50\ngroup_sends_per_min = 1000\n\
         [[telegram.links]]\nchannel = \"{CHANNEL}\"\nchat = {GROUP}\n",
        redis.url(),
        tg.api_url()
    )
}

/// `takeovers` crashes of the instance running the bridge, each taken over by the other.
pub async fn takeovers(redis: &RedisServer, takeovers: usize) -> Result<Takeovers> {
    let tg = FakeTelegram::start(TOKEN).await;
    let dir = tempfile::tempdir()?;
    let config = config(redis, &tg);
    let binary = env!("CARGO_BIN_EXE_hub-bridge");
    let start = |name: &str| ServiceProcess::start(binary, name, dir.path(), &config);
    let mut leader = start("first");
    leader.wait_until("telegram", true, WAIT).await;
    let mut standby = start("second");
    standby.wait_until("telegram", false, WAIT).await;

    let agent = NumberedAgent::start(redis, CHANNEL, PACE).await;
    let shown = || numbered::shown(&tg, GROUP);
    let lease = redis::cmd("PTTL")
        .arg("openclaw:bridge:lease:telegram")
        .clone();
    let mut lease_conn = redis.connection().await;
    let mut report = Takeovers::default();
    let mut wire = Vec::new();
    for round in 0..takeovers {
        eprintln!("handover: takeover {}", round + 1);
        // Steady state first: the leader relays, the standby keeps.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let remaining: i64 = lease.query_async(&mut lease_conn).await?;
        leader.kill();
        let killed = Instant::now();
        report
            .floor
            .push(Duration::from_millis(remaining.max(0) as u64));
        wire.extend(numbered::sends(&tg).last().map(|(n, _)| *n));
        let first = loop {
            if let Some((_, at)) = numbered::sends(&tg)
                .into_iter()
                .find(|(_, at)| *at > killed)
            {
                break at;
            }
            if killed.elapsed() > WAIT {
                return Err("no send after the kill".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        report.first_send.push(first - killed);
        let due = agent.count() as usize;
        loop {
            let mut distinct = shown();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() >= due {
                break;
            }
            if killed.elapsed() > WAIT {
                return Err(format!("{} of {due} shown after the kill", distinct.len()).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        report.caught_up.push(killed.elapsed());
        // The killed instance comes back as the standby.
        std::mem::swap(&mut leader, &mut standby);
        leader.wait_until("telegram", true, WAIT).await;
        standby = start(&format!("restart-{round}"));
        standby.wait_until("telegram", false, WAIT).await;
    }
    report.published = agent.finish().await as usize;
    // Whatever was published last is shown within a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = shown();
    for n in 0..report.published as u32 {
        match all.iter().filter(|m| **m == n).count() {
            0 => report.lost += 1,
            1 => {}
            _ if wire.contains(&n) => report.on_the_wire += 1,
            _ => report.doubled += 1,
        }
    }
    Ok(report)
}

/// The handover's rows of the report table; `hub_ns` is the hub loop's time per event.
pub fn rows(
    rows: &mut Vec<String>,
    takeovers: Option<&Takeovers>,
    cost: &Bookkeeping,
    hub_ns: f64,
) {
    if let Some(t) = takeovers {
        let median = |samples: &[Duration]| {
            let mut sorted = samples.to_vec();
            sorted.sort();
            sorted.get(sorted.len() / 2).copied().unwrap_or_default()
        };
        let (floor, first) = (median(&t.floor), median(&t.first_send));
        let worst = t.first_send.iter().max().copied().unwrap_or_default();
        // Per takeover: how long after the lease expired the standby relayed.
        let added: Vec<Duration> = t
            .first_send
            .iter()
            .zip(&t.floor)
            .map(|(first, floor)| first.saturating_sub(*floor))
            .collect();
        let met = super::verdict(worst <= Duration::from_secs(6));
        rows.push(format!(
            "takeover after a crash, kill->first send (median of {}; max)|{:.2} s; {:.2} s|{:.2} s (lease left)|<= ttl 5 s + 1 s|{met} (added {:.2} s, median)",
            t.first_send.len(),
            first.as_secs_f64(),
            worst.as_secs_f64(),
            floor.as_secs_f64(),
            median(&added).as_secs_f64()
        ));
        rows.push(format!(
            "  kill->all published shown (median)|{:.2} s|-|-|-",
            median(&t.caught_up).as_secs_f64()
        ));
        let exact = super::verdict(t.lost == 0 && t.doubled == 0);
        rows.push(format!(
            "  messages through the takeovers|{} lost, {} twice of {}|0|0 lost, 0 twice|{exact} ({} on the wire at a kill twice)",
            t.lost, t.doubled, t.published, t.on_the_wire
        ));
    }
    let busiest = cost.id_ns + cost.queued_ns.max(cost.kept_ns);
    let share = busiest / hub_ns * 100.0;
    rows.push(format!(
        "handover bookkeeping per hub event, {} events (id + queued; kept)|{:.0} ns + {:.0} ns; {:.0} ns|{:.0} ns (hub loop per event)|< 5%|{} ({share:.2}%)",
        cost.events,
        cost.id_ns,
        cost.queued_ns,
        cost.kept_ns,
        hub_ns,
        super::verdict(share < 5.0)
    ));
}

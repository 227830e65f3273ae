//! Handover between two instances (SPEC section 6: "A handover loses nothing"): two `hub-bridge`
//! processes share one `redis-server` and the fake Telegram Bot API, and an agent publishes ten
//! messages a second into a linked channel while the instance running the bridge is
//!
//! - killed (SIGKILL): the standby relays within `ha.lease_ttl_secs` and a second, and every
//!   message shows exactly once (save the one send that may have been on the wire, SPEC's one
//!   exception);
//! - restarted, then the other (SIGTERM and start again, a rolling deploy): every message shows
//!   exactly once;
//! - paused (SIGSTOP) past its lease, then resumed: it sends nothing more, and every message
//!   shows exactly once.
//!
//! The processes are the real binary; which one runs the bridge is read off each one's `/readyz`.

use std::path::Path;
use std::time::{Duration, Instant};

use hub_bridge_testkit::fake_telegram::FakeTelegram;
use hub_bridge_testkit::numbered::{self, NumberedAgent};
use hub_bridge_testkit::process::ServiceProcess;
use hub_bridge_testkit::redis_server::RedisServer;

const TOKEN: &str = "123456:TEST-token_abc";
const CHANNEL: &str = "9f3c2a1d-5e8f-4b6a-9c1e-2a3b4c5d6e7f";
const GROUP: i64 = -1_001_234_567_890;
/// Short, so a takeover after a crash is quick; the service allows 2 at the least.
const LEASE_TTL: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);
/// The agent's pace: ten messages a second.
const PACE: Duration = Duration::from_millis(100);

/// One `hub-bridge` process with the Telegram bridge linked to [`GROUP`].
fn instance(name: &str, dir: &Path, redis: &RedisServer, tg: &FakeTelegram) -> ServiceProcess {
    let config = format!(
        "[redis]\nurl = \"{}\"\n[limits]\nmessage = 0\n[ha]\nlease_ttl_secs = {}\n\
         [telegram]\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\n\
         chat_sends_per_sec = 50\ngroup_sends_per_min = 1000\n\
         [[telegram.links]]\nchannel = \"{CHANNEL}\"\nchat = {GROUP}\n",
        redis.url(),
        LEASE_TTL.as_secs(),
        tg.api_url()
    );
    ServiceProcess::start(env!("CARGO_BIN_EXE_hub-bridge"), name, dir, &config)
}

/// Waits until `instance` runs the Telegram bridge (`running`), or stands by for it.
async fn wait_until(instance: &ServiceProcess, running: bool) {
    instance.wait_until("telegram", running, WAIT).await;
}

fn shown(tg: &FakeTelegram) -> Vec<u32> {
    numbered::shown(tg, GROUP)
}

async fn start_agent(redis: &RedisServer) -> NumberedAgent {
    NumberedAgent::start(redis, CHANNEL, PACE).await
}

async fn wait_shown(tg: &FakeTelegram, count: u32, what: &str) {
    let deadline = Instant::now() + WAIT;
    while shown(tg).len() < count as usize {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {count} shown: {:?}",
            shown(tg).len(),
            shown(tg)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the `published` messages have all been shown, lets a moment pass for duplicates to
/// show, then asserts each shows exactly once (but `may_repeat`, SPEC's one exception).
async fn assert_each_shown_once(tg: &FakeTelegram, published: u32, may_repeat: Option<u32>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut distinct = shown(tg);
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() >= published as usize {
            break;
        }
        let missing: Vec<u32> = (0..published).filter(|n| !distinct.contains(n)).collect();
        assert!(
            Instant::now() < deadline,
            "messages never shown: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = shown(tg);
    let mut repeated: Vec<u32> = (0..published)
        .filter(|n| all.iter().filter(|m| *m == n).count() > 1)
        .collect();
    repeated.retain(|n| Some(*n) != may_repeat);
    assert!(
        repeated.is_empty(),
        "shown more than once: {repeated:?} (allowed: {may_repeat:?})"
    );
    let expected: Vec<u32> = (0..published).collect();
    let mut distinct = all.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, expected, "shown: {all:?}");
}

/// A redis-server, the fake Bot API, a directory for the configs, and two instances: `a` runs
/// the bridge, `b` stands by.
async fn two_instances() -> (
    RedisServer,
    FakeTelegram,
    tempfile::TempDir,
    ServiceProcess,
    ServiceProcess,
) {
    let redis = RedisServer::start();
    let tg = FakeTelegram::start(TOKEN).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let a = instance("a", dir.path(), &redis, &tg);
    wait_until(&a, true).await;
    let b = instance("b", dir.path(), &redis, &tg);
    wait_until(&b, false).await;
    (redis, tg, dir, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_taken_over_within_the_lease_and_every_message_shows_once() {
    let (redis, tg, _dir, mut a, b) = two_instances().await;
    let agent = start_agent(&redis).await;
    wait_shown(&tg, 15, "relayed by the first instance").await;

    a.kill();
    let killed = Instant::now();
    // The send that may have been on the wire: its message may show twice (SPEC section 6).
    let on_the_wire = numbered::sends(&tg).last().map(|(n, _)| *n);
    wait_until(&b, true).await;
    wait_shown(&tg, agent.count(), "relayed after the takeover").await;
    let first_after = numbered::sends(&tg)
        .into_iter()
        .find(|(_, at)| *at > killed)
        .map(|(_, at)| at - killed)
        .expect("a send after the kill");
    // Published at a steady pace, so messages waited for the takeover: the first of them went
    // out within the lease's TTL and a second of the crash.
    eprintln!("the standby relayed {first_after:?} after the crash");
    assert!(
        first_after <= LEASE_TTL + Duration::from_secs(1),
        "the standby relayed {first_after:?} after the crash"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let published = agent.finish().await;
    assert_each_shown_once(&tg, published, on_the_wire).await;
    // The standby relayed what it had kept since the old holder's mark, which it had seen.
    let metrics = b.metrics().await;
    assert!(
        metrics.contains(r#"hub_bridge_takeovers_total{bridge="telegram",reason="seen"} 1"#),
        "{metrics}"
    );
    assert!(b.metric("hub_bridge_replayed_total").await > 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_shows_every_message_exactly_once() {
    let (redis, tg, dir, mut a, b) = two_instances().await;
    let agent = start_agent(&redis).await;
    wait_shown(&tg, 10, "relayed by the first instance").await;

    // Deploy the first instance: stop it, the second takes over, start it again.
    a.stop();
    wait_until(&b, true).await;
    let a = instance("a2", dir.path(), &redis, &tg);
    wait_until(&a, false).await;
    let count = agent.count();
    wait_shown(&tg, count, "relayed after the first restart").await;

    // Then the second.
    let mut b = b;
    b.stop();
    wait_until(&a, true).await;
    let b = instance("b2", dir.path(), &redis, &tg);
    wait_until(&b, false).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let published = agent.finish().await;
    assert_each_shown_once(&tg, published, None).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_that_lost_its_lease_sends_nothing_when_it_resumes() {
    let (redis, tg, _dir, a, b) = two_instances().await;
    let agent = start_agent(&redis).await;
    wait_shown(&tg, 10, "relayed by the first instance").await;

    // Caught with a send on the wire (Telegram shows it, the answer is late) and the next jobs
    // waiting behind it in the paused instance's memory.
    agent.pause().await;
    wait_shown(&tg, agent.count(), "relayed before the pause").await;
    let relayed_before = a.metric("hub_bridge_relayed_total").await;
    let on_the_wire = agent.count();
    tg.delay_next("sendMessage", LEASE_TTL);
    agent.resume();
    wait_until_shown(&tg, on_the_wire).await;
    tokio::time::sleep(PACE * 3).await;
    a.signal("STOP");
    wait_until(&b, true).await;
    let count = agent.count();
    wait_shown(&tg, count, "relayed by the second instance").await;
    // Back after its lease expired, with the late answer waiting for it: it finishes that send,
    // and sends none of the jobs behind it (the second instance relays them).
    a.signal("CONT");
    wait_until(&a, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let relayed_after = a.metric("hub_bridge_relayed_total").await;
    assert!(
        relayed_after <= relayed_before + 1,
        "the paused instance relayed {} after it resumed",
        relayed_after - relayed_before
    );

    let published = agent.finish().await;
    assert_each_shown_once(&tg, published, Some(on_the_wire)).await;
}

/// Waits until message `n` shows.
async fn wait_until_shown(tg: &FakeTelegram, n: u32) {
    let deadline = Instant::now() + WAIT;
    while !shown(tg).contains(&n) {
        assert!(
            Instant::now() < deadline,
            "m-{n} never shown: {:?}",
            shown(tg)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

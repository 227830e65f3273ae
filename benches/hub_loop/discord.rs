//! Discord relay latency, both ways (SPEC section 8; `--discord-secs`, 0 skips), like the Telegram
//! phase: the service with only the Discord bridge against the fake Discord of the end-to-end tests
//! (REST and gateway), in this process. Hub -> platform is agent PUBLISH -> the fake receiving the
//! webhook's POST; platform -> hub is the fake dispatching MESSAGE_CREATE -> the person's
//! `channel.message` on a PSUBSCRIBE subscriber. [`CHANNELS`] channels with a webhook each share
//! the load at [`RATE`] messages/s, under Discord's webhook bucket (5 per 2 s), so no wait for a
//! bucket is in the numbers. The floors: raw PUBLISH -> subscriber plus one leg of a plain reqwest
//! round trip to the same fake (`GET /gateway`).

use std::time::Duration;

use hub_bridge::config::Config;
use hub_bridge_discord::{DiscordConfig, DiscordLink};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::registry::Section;
use hub_bridge_testkit::fake_discord::{FakeDiscord, UserMessage, UserRef};

use super::{nanos, now_ns, ticker, wait_for, warm, Arrivals, Result};

const TOKEN: &str = "fake-discord-latency-token";
const GUILD: u64 = 1_500_000_000_000_000_001;
pub const CHANNELS: u64 = 8;
/// Messages per second each way: 1.25/s per channel.
pub const RATE: u64 = 10;

/// Discord relay latencies (ns) and how many events never arrived.
#[derive(Default)]
pub struct Latency {
    /// Per plain `GET /gateway`: (send -> the fake's handler, the handler -> the response read).
    pub http: Vec<(u64, u64)>,
    pub outbound: Vec<u64>,
    pub inbound: Vec<u64>,
    pub lost: (u64, u64),
}

fn channel_id(i: u64) -> u64 {
    1_500_000_000_000_000_100 + i
}

fn webhook_id(i: u64) -> u64 {
    1_500_000_000_000_000_200 + i
}

/// The HTTP floor: `GET /gateway` at [`RATE`] on one kept-alive reqwest client.
async fn http_floor(fake: &FakeDiscord, count: u64) -> Result<Vec<(u64, u64)>> {
    let (client, mut ticker) = (reqwest::Client::new(), ticker(RATE));
    let url = format!("{}/api/v10/gateway", fake.api_url());
    let mut times = Vec::new();
    for _ in 0..count {
        ticker.tick().await;
        let sent = now_ns();
        client
            .get(&url)
            .header("Authorization", format!("Bot {TOKEN}"))
            .send()
            .await?
            .bytes()
            .await?;
        times.push((sent, now_ns()));
    }
    let requests = fake.requests_matching("GET", "/gateway");
    let legs = times.iter().zip(&requests).map(|(&(sent, read), request)| {
        let at = nanos(request.at);
        (at.saturating_sub(sent), read.saturating_sub(at))
    });
    Ok(warm(legs.collect(), RATE))
}

/// The sequence number of a person's message the bridge published (`bench dc-in {seq}`).
fn inbound_seq(payload: &[u8]) -> Option<u64> {
    let json: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let event = &json["event"];
    if event["type"] != "channel.message" {
        return None;
    }
    let content = event["message"]["content"].as_str()?;
    content.strip_prefix("bench dc-in ")?.parse().ok()
}

pub async fn latency(url: &str, secs: u64) -> Result<Latency> {
    let count = RATE * secs;
    let fake = FakeDiscord::start(TOKEN).await;
    let person = UserRef::new(1_500_000_000_000_000_900, "Person");
    fake.add_user(person.clone());
    let mut links = Vec::new();
    for i in 0..CHANNELS {
        fake.add_text_channel(channel_id(i), GUILD);
        let token = format!("bench-webhook-{i}");
        fake.add_webhook(webhook_id(i), &token, channel_id(i));
        links.push(DiscordLink {
            channel: format!("dc-{i}"),
            discord_channel: channel_id(i).to_string(),
            webhook_url: Some(Secret::new(format!(
                "https://discord.com/api/webhooks/{}/{token}",
                webhook_id(i)
            ))),
        });
    }
    eprintln!("discord: HTTP floor");
    let mut report = Latency {
        http: http_floor(&fake, count).await?,
        ..Latency::default()
    };
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse()?;
    config.redis.url = Some(Secret::new(url));
    config.limits.message = 0;
    config.bridges.push(Section::new(DiscordConfig::new(
        Secret::new(TOKEN),
        fake.api_url(),
        links,
    )));
    let running = hub_bridge::service::start(config).await?;
    if !wait_for(Duration::from_secs(15), || running.health.is_ready()).await {
        return Err(format!("discord: never ready: {:?}", running.health.snapshot()).into());
    }
    let arrivals = Arrivals::subscribe(url, "pubsub:channel:dc-*", inbound_seq).await?;

    eprintln!("discord: hub -> platform");
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut every = ticker(RATE);
    for seq in 0..count {
        every.tick().await;
        let channel = format!("dc-{}", seq % CHANNELS);
        let sent = now_ns();
        let event = serde_json::json!({"type": "channel.message", "channelId": channel,
            "message": {"id": format!("dc-m{seq}"), "content": format!("bench dc-out {seq} at {sent}"),
                        "senderId": "bench-agent", "timestamp": 1}});
        let envelope = serde_json::json!({"event": event, "timestamp": 1,
            "channelId": channel, "senderId": "bench-agent"});
        redis::cmd("PUBLISH")
            .arg(format!("pubsub:channel:{channel}"))
            .arg(envelope.to_string())
            .query_async::<()>(&mut conn)
            .await?;
    }
    let posts = || {
        fake.requests_matching("POST", "/webhooks/")
            .into_iter()
            .filter(|r| r.status == 200)
            .collect::<Vec<_>>()
    };
    wait_for(Duration::from_secs(15), || posts().len() as u64 >= count).await;
    let mut outbound: Vec<(u64, u64)> = posts()
        .iter()
        .filter_map(|r| {
            let content = r.body["content"].as_str()?;
            let mut words = content.split("bench dc-out ").nth(1)?.split_whitespace();
            let seq: u64 = words.next()?.parse().ok()?;
            let sent: u64 = words.nth(1)?.parse().ok()?;
            Some((seq, nanos(r.at).saturating_sub(sent)))
        })
        .collect();
    outbound.sort_unstable();
    outbound.dedup_by_key(|sample| sample.0);
    report.lost.0 = count - outbound.len() as u64;
    report.outbound = warm(outbound.into_iter().map(|s| s.1).collect(), RATE);

    eprintln!("discord: platform -> hub");
    let (mut ticker, mut injected) = (ticker(RATE), Vec::new());
    for seq in 0..count {
        ticker.tick().await;
        let channel = channel_id(seq % CHANNELS);
        let message = UserMessage::new(
            channel,
            Some(GUILD),
            person.clone(),
            &format!("bench dc-in {seq}"),
        );
        injected.push(now_ns());
        fake.post_user_message(message);
    }
    wait_for(Duration::from_secs(15), || arrivals.count() >= count).await;
    let inbound = arrivals.take();
    report.lost.1 = count - inbound.len() as u64;
    let latency = |(seq, at): (u64, u64)| at.saturating_sub(injected[seq as usize]);
    report.inbound = warm(inbound.into_iter().map(latency).collect(), RATE);
    running.stop().await;
    Ok(report)
}

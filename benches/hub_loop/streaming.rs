//! Streamed answers and the flood budget against fakes that enforce the platforms' limits (SPEC
//! section 8, issue 9):
//!
//! - Streaming (`--stream-secs`, 0 skips): an agent streams a 3,000-character answer as 300 edits
//!   evenly over the time given (30 s by default) into a Telegram group, a Telegram private chat
//!   and a Discord channel at once. The fake Bot API enforces Telegram's limits (1/s per chat,
//!   20/min per group, 30/s, edits included); the fake Discord its default buckets. Per
//!   destination: platform calls, 429s, and the lag of the final text: the last edit's PUBLISH ->
//!   the fake receiving the request that shows its last word (target: the cadence + 100 ms).
//! - Backlog (`--backlog`, 0 skips): that many messages PUBLISHed at once to one Telegram chat
//!   whose limit is scaled to 20 per sliding second on both sides. The fastest the limit permits
//!   is 20 at once and then 20 a second, (n - 20) / 20 s from the first send to the last; the
//!   phase reports that over the time it took, as the fake received them (target >= 0.95, no
//!   429).

use std::time::{Duration, Instant};

use hub_bridge::config::Config;
use hub_bridge_discord::{DiscordConfig, DiscordLink};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::registry::Section;
use hub_bridge_telegram::{TelegramConfig, TelegramLink};
use hub_bridge_testkit::fake_discord::FakeDiscord;
use hub_bridge_testkit::fake_telegram::{FakeTelegram, Limits};

use super::{nanos, now_ns, verdict, wait_for, Result};

const TG_TOKEN: &str = "123456:STREAM-token";
const DC_TOKEN: &str = "fake-discord-bench-token";
const GROUP: i64 = -1_002_000_000_001;
const PRIVATE: i64 = 3_001;
const DC_GUILD: u64 = 1_400_000_000_000_000_001;
const DC_CHANNEL: u64 = 1_400_000_000_000_000_002;
const DC_WEBHOOK: u64 = 1_400_000_000_000_000_003;
const DC_WEBHOOK_TOKEN: &str = "bench-webhook-token";
/// 300 edits of 10 characters: the answer grows to 3,000.
const EDITS: usize = 300;
const AGENT: &str = "bench-agent";
/// The scaled per-chat limit of the backlog phase.
const BACKLOG_PER_SEC: u32 = 20;

/// One destination of the streamed answer.
pub struct Stream {
    pub name: &'static str,
    pub cadence: Duration,
    pub calls: usize,
    /// The last edit's PUBLISH -> the request showing its last word; `None`: never shown.
    pub lag: Option<Duration>,
}

pub struct Streaming {
    pub secs: u64,
    pub streams: Vec<Stream>,
    pub telegram_429s: usize,
    pub discord_429s: usize,
}

pub struct Backlog {
    pub messages: u64,
    pub delivered: usize,
    /// First send to last, as the fake received them.
    pub elapsed: Duration,
    pub refused: usize,
}

impl Backlog {
    /// The shortest time the limit permits for the sends after the first window's, over the
    /// time they took.
    fn ratio(&self) -> f64 {
        let limit = f64::from(BACKLOG_PER_SEC);
        let permitted = (self.delivered as f64 - limit).max(0.0) / limit;
        permitted / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The chat a Bot API call went to (teloxide sends the id as a number).
fn chat_of(body: &serde_json::Value) -> i64 {
    match &body["chat_id"] {
        serde_json::Value::Number(n) => n.as_i64().unwrap_or_default(),
        serde_json::Value::String(s) => s.parse().unwrap_or_default(),
        _ => 0,
    }
}

/// The answer after `n` edits: `n + 1` ten-character words.
fn answer(n: usize) -> String {
    (0..=n).map(|word| format!("word{word:05} ")).collect()
}

fn envelope(channel: &str, event: serde_json::Value) -> String {
    serde_json::json!({"event": event, "timestamp": 1, "channelId": channel, "senderId": AGENT})
        .to_string()
}

fn telegram_config(tg: &FakeTelegram, links: Vec<TelegramLink>) -> TelegramConfig {
    // Telegram's own limits, the defaults: what the flood budget must keep to.
    TelegramConfig::new(Secret::new(TG_TOKEN), tg.api_url(), links)
}

fn link(channel: &str, chat: i64) -> TelegramLink {
    TelegramLink {
        channel: channel.to_owned(),
        chat,
    }
}

async fn service(url: &str, bridges: Vec<Section>) -> Result<hub_bridge::service::Running> {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse()?;
    config.redis.url = Some(Secret::new(url));
    config.limits.message = 0;
    config.bridges = bridges;
    let running = hub_bridge::service::start(config).await?;
    if !wait_for(Duration::from_secs(15), || running.health.is_ready()).await {
        return Err(format!("never ready: {:?}", running.health.snapshot()).into());
    }
    Ok(running)
}

pub async fn streaming(url: &str, secs: u64) -> Result<Streaming> {
    let tg = FakeTelegram::start(TG_TOKEN).await;
    tg.enforce_limits(Limits::default());
    let dc = FakeDiscord::start(DC_TOKEN).await;
    dc.add_text_channel(DC_CHANNEL, DC_GUILD);
    dc.add_webhook(DC_WEBHOOK, DC_WEBHOOK_TOKEN, DC_CHANNEL);
    let telegram = telegram_config(
        &tg,
        vec![link("st-group", GROUP), link("st-private", PRIVATE)],
    );
    let discord = DiscordConfig::new(
        Secret::new(DC_TOKEN),
        dc.api_url(),
        vec![DiscordLink {
            channel: "st-discord".to_owned(),
            discord_channel: DC_CHANNEL.to_string(),
            webhook_url: Some(Secret::new(format!(
                "https://discord.com/api/webhooks/{DC_WEBHOOK}/{DC_WEBHOOK_TOKEN}"
            ))),
        }],
    );
    let running = service(url, vec![Section::new(telegram), Section::new(discord)]).await?;
    let channels = ["st-group", "st-private", "st-discord"];
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let every = Duration::from_millis(secs * 1000 / EDITS as u64);
    let mut ticker = super::ticker_every(every);
    let streaming = serde_json::json!({"streaming": true});
    for channel in channels {
        let event = serde_json::json!({"type": "channel.message", "channelId": channel,
            "message": {"id": format!("{channel}-answer"), "content": answer(0),
                        "senderId": AGENT, "timestamp": 1, "metadata": streaming}});
        redis::cmd("PUBLISH")
            .arg(format!("pubsub:channel:{channel}"))
            .arg(envelope(channel, event))
            .query_async::<()>(&mut conn)
            .await?;
    }
    let mut last_edit = 0;
    for n in 1..EDITS {
        ticker.tick().await;
        last_edit = now_ns();
        for channel in channels {
            let mut event = serde_json::json!({"type": "channel.message.edit",
                "channelId": channel, "messageId": format!("{channel}-answer"),
                "content": answer(n)});
            if n + 1 < EDITS {
                event["metadata"] = streaming.clone();
            }
            redis::cmd("PUBLISH")
                .arg(format!("pubsub:channel:{channel}"))
                .arg(envelope(channel, event))
                .query_async::<()>(&mut conn)
                .await?;
        }
    }
    let last_word = format!("word{:05}", EDITS - 1);
    let telegram_shown = |chat: i64| {
        tg.calls()
            .into_iter()
            .filter(|call| call.status == 200 && chat_of(&call.body) == chat)
            .filter(|call| call.method == "sendmessage" || call.method == "editmessagetext")
            .collect::<Vec<_>>()
    };
    let discord_shown = || {
        dc.requests()
            .into_iter()
            .filter(|r| r.status == 200 && r.path.starts_with(&format!("/webhooks/{DC_WEBHOOK}")))
            .filter(|r| r.method == "POST" || r.method == "PATCH")
            .collect::<Vec<_>>()
    };
    let shows_last = |text: Option<&str>| text.is_some_and(|text| text.contains(&last_word));
    wait_for(Duration::from_secs(10), || {
        [GROUP, PRIVATE].iter().all(|chat| {
            telegram_shown(*chat)
                .iter()
                .any(|call| shows_last(call.body["text"].as_str()))
        }) && discord_shown()
            .iter()
            .any(|r| shows_last(r.body["content"].as_str()))
    })
    .await;
    let lag = |at: Option<Instant>| {
        at.map(|at| Duration::from_nanos(nanos(at).saturating_sub(last_edit)))
    };
    let mut streams = Vec::new();
    for (name, chat, cadence) in [
        ("Telegram group", GROUP, 3),
        ("Telegram private chat", PRIVATE, 1),
    ] {
        let calls = telegram_shown(chat);
        let at = (calls.iter())
            .find(|call| shows_last(call.body["text"].as_str()))
            .map(|call| call.at);
        streams.push(Stream {
            name,
            cadence: Duration::from_secs(cadence),
            calls: calls.len(),
            lag: lag(at),
        });
    }
    let requests = discord_shown();
    let at = (requests.iter())
        .find(|r| shows_last(r.body["content"].as_str()))
        .map(|r| r.at);
    streams.push(Stream {
        name: "Discord channel (webhook)",
        cadence: Duration::from_secs(1),
        calls: requests.len(),
        lag: lag(at),
    });
    running.stop().await;
    Ok(Streaming {
        secs,
        streams,
        telegram_429s: tg.count_429(),
        discord_429s: dc.rate_limited_count(),
    })
}

pub async fn backlog(url: &str, messages: u64) -> Result<Backlog> {
    let tg = FakeTelegram::start(TG_TOKEN).await;
    tg.enforce_limits(Limits {
        per_chat_per_sec: BACKLOG_PER_SEC as usize,
        per_group_per_min: 0,
        global_per_sec: 0,
    });
    let mut telegram = telegram_config(&tg, vec![link("backlog", PRIVATE)]);
    telegram.chat_sends_per_sec = BACKLOG_PER_SEC;
    telegram.sends_per_sec = 1_000;
    let running = service(url, vec![Section::new(telegram)]).await?;
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut pipe = redis::pipe();
    for n in 0..messages {
        let event = serde_json::json!({"type": "channel.message", "channelId": "backlog",
            "message": {"id": format!("backlog-{n}"), "content": format!("backlog {n}"),
                        "senderId": AGENT, "timestamp": 1}});
        pipe.cmd("PUBLISH")
            .arg("pubsub:channel:backlog")
            .arg(envelope("backlog", event))
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await?;
    let sends = || {
        tg.calls_of("sendMessage")
            .into_iter()
            .filter(|call| call.status == 200)
            .map(|call| call.at)
            .collect::<Vec<_>>()
    };
    let limit = Duration::from_secs(messages / u64::from(BACKLOG_PER_SEC) * 2 + 10);
    wait_for(limit, || sends().len() as u64 >= messages).await;
    let times = sends();
    let elapsed = match (times.first(), times.last()) {
        (Some(first), Some(last)) => last.duration_since(*first),
        _ => Duration::ZERO,
    };
    running.stop().await;
    Ok(Backlog {
        messages,
        delivered: times.len(),
        elapsed,
        refused: tg.count_429(),
    })
}

/// The phases' rows for the report table.
pub fn rows(rows: &mut Vec<String>, streaming: Option<&Streaming>, backlog: Option<&Backlog>) {
    if let Some(streaming) = streaming {
        for stream in &streaming.streams {
            let target = stream.cadence + Duration::from_millis(100);
            let (lag, ok) = match stream.lag {
                Some(lag) => (
                    format!("{:.3} s", lag.as_secs_f64()),
                    verdict(lag <= target).to_owned(),
                ),
                None => (
                    "never".to_owned(),
                    "missed (final text not shown)".to_owned(),
                ),
            };
            rows.push(format!(
                "stream {EDITS} edits/{} s -> {}: final text lag|{lag}|-|<= {:.1} s|{ok}",
                streaming.secs,
                stream.name,
                target.as_secs_f64()
            ));
            rows.push(format!(
                "  platform calls (sends + edits)|{}|-|-|for {EDITS} hub events",
                stream.calls
            ));
        }
        for (platform, refused) in [
            ("Telegram", streaming.telegram_429s),
            ("Discord", streaming.discord_429s),
        ] {
            rows.push(format!(
                "  stream 429s from {platform}|{refused}|-|0|{}",
                verdict(refused == 0)
            ));
        }
    }
    if let Some(backlog) = backlog {
        let ratio = backlog.ratio();
        rows.push(format!(
            "backlog {} messages, one chat at {BACKLOG_PER_SEC}/s: delivered/permitted rate|\
             {ratio:.3} ({:.2} s)|-|>= 0.95|{} ({} delivered)",
            backlog.messages,
            backlog.elapsed.as_secs_f64(),
            verdict(ratio >= 0.95),
            backlog.delivered
        ));
        rows.push(format!(
            "  backlog 429s|{}|-|0|{}",
            backlog.refused,
            verdict(backlog.refused == 0)
        ));
    }
}

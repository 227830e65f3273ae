//! Telegram <-> Discord through the hub (issue 4, cross-platform): one hub channel linked to a
//! Telegram group (fake Bot API, teloxide unmodified) and a Discord channel (fake REST + gateway,
//! serenity unmodified), the whole service against a private `redis-server`. A message, edit,
//! delete and reaction on one platform shows up on the other with the person's name, and never
//! returns to where it came from.

use std::time::{Duration, Instant};

use hub_bridge::config::{Config, HttpConfig, RedisConfig};
use hub_bridge::service::{self, Running};
use hub_bridge_discord::{DiscordConfig, DiscordLink};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::registry::Section;
use hub_bridge_sdk::AgentProfile;
use hub_bridge_telegram::{TelegramConfig, TelegramLink};
use hub_bridge_testkit::fake_discord::{FakeDiscord, Request, UserMessage, UserRef as DiscordUser};
use hub_bridge_testkit::fake_telegram::{ChatRef, FakeTelegram, UserRef as TelegramUser};
use hub_bridge_testkit::hub::{HubSpy, Seen};
use hub_bridge_testkit::redis_server::RedisServer;
use serde_json::Value;

const HUB: &str = "9f3c2a1d-5e8f-4b6a-9c1e-2a3b4c5d6e7f";
const TG_TOKEN: &str = "123456:CROSS-token_abc";
const GROUP: i64 = -1_001_234_567_890;
const DC_TOKEN: &str = "fake-discord-bot-token";
const GUILD: u64 = 1_300_000_000_000_000_001;
const CHANNEL: u64 = 1_300_000_000_000_000_002;
const WEBHOOK: u64 = 1_300_000_000_000_000_005;
const WEBHOOK_TOKEN: &str = "webhook-secret-token";
const WAIT: Duration = Duration::from_secs(15);

fn alice() -> TelegramUser {
    TelegramUser::new(1001, "Alice")
        .last_name("Liddell")
        .username("alice")
}

fn group() -> ChatRef {
    ChatRef::supergroup(GROUP, "Hub test")
}

fn ada() -> DiscordUser {
    DiscordUser::new(1_400_000_000_000_000_001, "ada")
        .global_name("Ada")
        .nick("Ada L.")
}

struct Harness {
    redis: RedisServer,
    tg: FakeTelegram,
    dc: FakeDiscord,
    spy: HubSpy,
    service: Option<Running>,
}

impl Harness {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let tg = FakeTelegram::start(TG_TOKEN).await;
        let dc = FakeDiscord::start(DC_TOKEN).await;
        dc.add_text_channel(CHANNEL, GUILD);
        dc.add_webhook(WEBHOOK, WEBHOOK_TOKEN, CHANNEL);
        dc.add_user(ada());
        let spy = HubSpy::start(&redis.url()).await;
        // An agent directory, so that people named like an agent can be recognised.
        let agents = [(
            "backend-architect".to_owned(),
            AgentProfile {
                name: Some("Backend Architect".into()),
                avatar: Some("🤖".into()),
                avatar_url: None,
                api_token: None,
            },
        )]
        .into_iter()
        .collect();
        let config = Config {
            agents,
            redis: RedisConfig {
                url: Some(Secret::new(redis.url())),
                ..RedisConfig::default()
            },
            http: HttpConfig {
                listen: "127.0.0.1:0".parse().expect("address"),
                ..HttpConfig::default()
            },
            bridges: vec![
                Section::new(TelegramConfig {
                    poll_timeout_secs: 1,
                    chat_sends_per_sec: 50,
                    group_sends_per_min: 1000,
                    sends_per_sec: 100,
                    ..TelegramConfig::new(
                        Secret::new(TG_TOKEN),
                        tg.api_url(),
                        vec![TelegramLink {
                            channel: HUB.to_owned(),
                            chat: GROUP,
                        }],
                    )
                }),
                Section::new(DiscordConfig::new(
                    Secret::new(DC_TOKEN),
                    dc.api_url(),
                    vec![DiscordLink {
                        channel: HUB.to_owned(),
                        discord_channel: CHANNEL.to_string(),
                        webhook_url: Some(Secret::new(format!(
                            "https://discord.com/api/webhooks/{WEBHOOK}/{WEBHOOK_TOKEN}"
                        ))),
                    }],
                )),
            ],
            ..Config::default()
        };
        let running = service::start(config).await.expect("service starts");
        let deadline = Instant::now() + WAIT;
        while !running.health.is_ready() {
            assert!(
                Instant::now() < deadline,
                "service not ready: {:?}",
                running.health.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            redis,
            tg,
            dc,
            spy,
            service: Some(running),
        }
    }

    async fn hub_message(&self, content: &str) -> Seen {
        self.spy
            .wait_for(&format!("channel.message {content:?}"), WAIT, |s| {
                s.kind() == "channel.message" && s.event()["message"]["content"] == content
            })
            .await
    }

    /// The successful webhook executions whose content contains `needle`.
    fn webhook_posts(&self, needle: &str) -> Vec<Request> {
        self.dc
            .requests_matching("POST", &format!("/webhooks/{WEBHOOK}"))
            .into_iter()
            .filter(|r| r.status == 200)
            .filter(|r| r.body["content"].as_str().unwrap_or("").contains(needle))
            .collect()
    }

    /// The Telegram messages in the group whose visible text contains `needle`.
    fn telegram_shows(&self, needle: &str) -> bool {
        self.tg
            .messages_in(GROUP)
            .iter()
            .any(|m| m.plain.contains(needle))
    }

    async fn stop(mut self) {
        if let Some(running) = self.service.take() {
            running.stop().await;
        }
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat_of(body: &Value) -> i64 {
    match &body["chat_id"] {
        Value::Number(n) => n.as_i64().unwrap_or_default(),
        Value::String(s) => s.parse().unwrap_or_default(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_message_reaches_discord_with_its_edit_and_reaction_and_never_returns() {
    let h = Harness::start().await;
    let update = h.tg.text_message(&group(), &alice(), "hello from telegram");
    let telegram_id = update.message_id();
    h.tg.inject(update.clone());
    h.hub_message("hello from telegram").await;

    eventually("the webhook post", || {
        !h.webhook_posts("hello from telegram").is_empty()
    })
    .await;
    let post = h.webhook_posts("hello from telegram").remove(0);
    assert_eq!(post.body["content"], "hello from telegram");
    let username = post.body["username"].as_str().unwrap_or_default();
    assert!(username.starts_with("Alice Liddell"), "{username}");
    let discord_id =
        h.dc.messages_in(CHANNEL)
            .iter()
            .find(|m| m.content == "hello from telegram")
            .map(|m| m.id)
            .expect("shown on Discord");

    // The edit follows, on the same Discord message.
    h.tg.inject(update.edited("edited on telegram"));
    eventually("the edit on Discord", || {
        h.dc.messages_in(CHANNEL)
            .iter()
            .any(|m| m.id == discord_id && m.content == "edited on telegram")
    })
    .await;

    // A reaction follows too.
    h.tg.inject(h.tg.reaction(&group(), &alice(), telegram_id, &[], &["👍"]));
    h.dc.wait_for(
        "PUT",
        &format!("/channels/{CHANNEL}/messages/{discord_id}/reactions/👍/@me"),
        1,
        WAIT,
    )
    .await;

    // Nothing went back to Telegram, and the Discord echo of the webhook post was ignored.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !h.telegram_shows("hello from telegram") && !h.telegram_shows("edited on telegram"),
        "echoed to its origin: {:?}",
        h.tg.messages_in(GROUP)
    );
    let from_discord = h.spy.matching(|s| {
        s.kind() == "channel.message"
            && s.json["origin"]
                .as_str()
                .is_some_and(|o| o.starts_with("discord:"))
    });
    assert!(from_discord.is_empty(), "{from_discord:#?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discord_person_named_like_an_agent_never_looks_like_one_on_telegram() {
    let h = Harness::start().await;
    let impostor =
        DiscordUser::new(1_400_000_000_000_000_002, "mallory").nick("🤖 Backend Architect");
    h.dc.add_user(impostor.clone());
    h.dc.post_user_message(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        impostor,
        "trust me, I am the agent",
    ));
    eventually("the Telegram message", || h.telegram_shows("trust me")).await;
    let shown =
        h.tg.messages_in(GROUP)
            .into_iter()
            .find(|m| m.plain.contains("trust me"))
            .expect("shown");
    // The agent's own header is `🤖 <b>Backend Architect</b>`; the person's is their whole name
    // in bold, with their platform and the mark.
    assert_eq!(
        shown.text,
        "<b>🤖 Backend Architect (Discord, not an agent)</b>\ntrust me, I am the agent"
    );

    // An ordinary person just carries their platform.
    h.dc.post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), "plain hello"));
    eventually("Ada's message", || h.telegram_shows("plain hello")).await;
    let shown =
        h.tg.messages_in(GROUP)
            .into_iter()
            .find(|m| m.plain.contains("plain hello"))
            .expect("shown");
    assert!(
        shown.text.starts_with("<b>Ada L. (Discord)</b>\n"),
        "{}",
        shown.text
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discord_message_reaches_telegram_with_its_edit_delete_and_reaction_and_never_returns() {
    let h = Harness::start().await;
    let payload = h.dc.post_user_message(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        ada(),
        "hello from discord",
    ));
    let discord_id: u64 = payload["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("id");
    h.hub_message("hello from discord").await;
    eventually("the Telegram message", || {
        h.telegram_shows("hello from discord")
    })
    .await;
    let shown =
        h.tg.messages_in(GROUP)
            .into_iter()
            .find(|m| m.plain.contains("hello from discord"))
            .expect("shown");
    assert!(shown.plain.contains("Ada L."), "{}", shown.plain);

    let update =
        h.dc.message_update(CHANNEL, discord_id, "edited on discord");
    h.dc.dispatch("MESSAGE_UPDATE", update);
    eventually("the edit on Telegram", || {
        h.tg.messages_in(GROUP)
            .iter()
            .any(|m| m.message_id == shown.message_id && m.plain.contains("edited on discord"))
    })
    .await;

    let reaction = h.dc.reaction_add(CHANNEL, discord_id, &ada(), "🔥");
    h.dc.dispatch("MESSAGE_REACTION_ADD", reaction);
    eventually("the reaction on Telegram", || {
        h.tg.reactions_on(GROUP, shown.message_id) == vec!["🔥".to_owned()]
    })
    .await;

    let delete = h.dc.message_delete(CHANNEL, discord_id);
    h.dc.dispatch("MESSAGE_DELETE", delete);
    eventually("the delete on Telegram", || {
        !h.tg
            .messages_in(GROUP)
            .iter()
            .any(|m| m.message_id == shown.message_id)
    })
    .await;

    // Nothing went back to Discord.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        h.webhook_posts("discord").is_empty(),
        "echoed to its origin"
    );
    assert!(h
        .dc
        .requests_matching("POST", &format!("/channels/{CHANNEL}/messages"))
        .is_empty());
    let to_telegram_chat =
        h.tg.calls_of("sendMessage")
            .into_iter()
            .filter(|c| chat_of(&c.body) == GROUP)
            .count();
    assert_eq!(to_telegram_chat, 1, "one relayed message, no duplicates");
    h.stop().await;
}

/// The issue-7 fault test: Redis refuses every write (OOM) for five seconds while a person speaks on
/// each platform. Neither message may be lost or published twice: both wait unacknowledged and
/// are published exactly once after Redis recovers, and each reaches the other platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_both_platforms_wait_out_a_redis_that_refuses_writes() {
    let h = Harness::start().await;
    h.redis.refuse_writes(true).await;
    h.tg.inject(h.tg.text_message(&group(), &alice(), "telegram during the refusal"));
    h.dc.post_user_message(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        ada(),
        "discord during the refusal",
    ));
    // The outage itself: five seconds of OOM answers to every write.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let published = |content: &str| {
        h.spy
            .matching(|s| {
                s.kind() == "channel.message" && s.event()["message"]["content"] == content
            })
            .len()
    };
    assert_eq!(published("telegram during the refusal"), 0);
    assert_eq!(published("discord during the refusal"), 0);
    h.redis.refuse_writes(false).await;

    h.hub_message("telegram during the refusal").await;
    h.hub_message("discord during the refusal").await;
    eventually("the Telegram message on Discord", || {
        !h.webhook_posts("telegram during the refusal").is_empty()
    })
    .await;
    eventually("the Discord message on Telegram", || {
        h.telegram_shows("discord during the refusal")
    })
    .await;
    // Later messages flow as before; by then any duplicate would have been published.
    h.tg.inject(h.tg.text_message(&group(), &alice(), "telegram after"));
    h.hub_message("telegram after").await;
    assert_eq!(published("telegram during the refusal"), 1);
    assert_eq!(published("discord during the refusal"), 1);
    assert_eq!(h.webhook_posts("telegram during the refusal").len(), 1);
    h.stop().await;
}

//! The Discord bridge end to end (issue 4): the whole service (`hub_bridge::service::start`)
//! against a private `redis-server` and the fake Discord (REST + gateway), with serenity
//! unmodified. Each test checks what Discord people and hub agents would see: the events on the
//! hub (through a spy subscribed to `pubsub:*`) and the requests Discord received.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hub_bridge::config::{Config, HttpConfig, RedisConfig};
use hub_bridge::service::{self, Running};
use hub_bridge_discord::{DiscordConfig, DiscordLink};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::registry::Section;
use hub_bridge_sdk::{AgentProfile, Bridge};
use hub_bridge_testkit::fake_discord::{Failure, FakeDiscord, Request, UserMessage, UserRef};
use hub_bridge_testkit::hub::{publish, HubSpy, Seen};
use hub_bridge_testkit::redis_server::RedisServer;
use serde_json::{json, Value};

const TOKEN: &str = "fake-discord-bot-token";
const BAD_TOKEN: &str = "revoked-bot-token-xyz";
const GUILD: u64 = 1_300_000_000_000_000_001;
/// Linked to [`HUB`] with a webhook.
const CHANNEL: u64 = 1_300_000_000_000_000_002;
/// Linked to [`HUB`] without a webhook: the bot posts `**name**: text`.
const PLAIN: u64 = 1_300_000_000_000_000_003;
/// Not linked.
const OTHER: u64 = 1_300_000_000_000_000_004;
const WEBHOOK: u64 = 1_300_000_000_000_000_005;
const WEBHOOK_TOKEN: &str = "webhook-secret-token";
const HUB: &str = "9f3c2a1d-5e8f-4b6a-9c1e-2a3b4c5d6e7f";
const AGENT: &str = "backend-architect";
const AVATAR: &str = "https://example.org/ba.png";
const WAIT: Duration = Duration::from_secs(15);

/// Whom a post's `allowed_mentions` lets it ping, with an absent list read as empty: serenity's
/// builder writes the empty `users` and `roles` lists out, a hand-made body may leave them off.
fn may_ping(body: &Value) -> Value {
    let allowed = &body["allowed_mentions"];
    let list = |key: &str| allowed.get(key).cloned().unwrap_or_else(|| json!([]));
    json!({"parse": list("parse"), "users": list("users"), "roles": list("roles")})
}

/// Pings nobody: nothing parsed from the text, no user, no role.
fn nobody() -> Value {
    json!({"parse": [], "users": [], "roles": []})
}

fn ada() -> UserRef {
    UserRef::new(1_400_000_000_000_000_001, "ada")
        .global_name("Ada")
        .nick("Ada L.")
}

fn bob() -> UserRef {
    UserRef::new(1_400_000_000_000_000_002, "bob").global_name("Bob")
}

fn hub_channel() -> String {
    format!("pubsub:channel:{HUB}")
}

fn external(user: &UserRef) -> String {
    format!("external:discord:{}", user.id)
}

fn id_of(payload: &Value) -> u64 {
    payload["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("payload has an id")
}

/// A running service with its Redis, fake Discord and hub spy.
struct Harness {
    redis: RedisServer,
    fake: FakeDiscord,
    spy: HubSpy,
    config: Config,
    service: Option<Running>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut harness = Self::prepare(tweak).await;
        harness.start_service().await;
        harness
    }

    /// Everything but the service, which [`Harness::start_service`] starts.
    async fn prepare(tweak: impl FnOnce(&mut Config)) -> Self {
        let redis = RedisServer::start();
        let fake = FakeDiscord::start(TOKEN).await;
        fake.add_text_channel(CHANNEL, GUILD);
        fake.add_text_channel(PLAIN, GUILD);
        fake.add_text_channel(OTHER, GUILD);
        fake.add_webhook(WEBHOOK, WEBHOOK_TOKEN, CHANNEL);
        fake.add_user(ada());
        fake.add_user(bob());
        let spy = HubSpy::start(&redis.url()).await;
        let mut config = Config {
            redis: RedisConfig {
                url: Some(Secret::new(redis.url())),
                ..RedisConfig::default()
            },
            http: HttpConfig {
                listen: "127.0.0.1:0".parse().expect("address"),
                ..HttpConfig::default()
            },
            bridges: vec![Section::new(DiscordConfig::new(
                Secret::new(TOKEN),
                fake.api_url(),
                vec![
                    DiscordLink {
                        channel: HUB.to_owned(),
                        discord_channel: CHANNEL.to_string(),
                        webhook_url: Some(Secret::new(format!(
                            "https://discord.com/api/webhooks/{WEBHOOK}/{WEBHOOK_TOKEN}"
                        ))),
                    },
                    DiscordLink {
                        channel: HUB.to_owned(),
                        discord_channel: PLAIN.to_string(),
                        webhook_url: None,
                    },
                ],
            ))],
            agents: BTreeMap::from([(
                AGENT.to_owned(),
                AgentProfile {
                    name: Some("Backend Architect".to_owned()),
                    avatar: Some("🤖".to_owned()),
                    avatar_url: Some(AVATAR.to_owned()),
                    api_token: None,
                },
            )]),
            ..Config::default()
        };
        tweak(&mut config);
        Self {
            redis,
            fake,
            spy,
            config,
            service: None,
        }
    }

    async fn start_service(&mut self) {
        let running = service::start(self.config.clone())
            .await
            .expect("service starts");
        let deadline = Instant::now() + WAIT;
        while !running.health.is_ready() {
            assert!(
                Instant::now() < deadline,
                "service not ready: {:?}",
                running.health.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.service = Some(running);
    }

    async fn stop_service(&mut self) {
        if let Some(running) = self.service.take() {
            running.stop().await;
        }
    }

    /// Publishes an agent's event on the hub channel, in the envelope agents' clients use.
    async fn agent_event(&self, event: Value) {
        let envelope = json!({
            "event": event,
            "timestamp": hub_bridge_sdk::event::now_millis(),
            "channelId": HUB,
            "senderId": AGENT,
        });
        publish(&self.redis.url(), &hub_channel(), &envelope).await;
    }

    /// An agent's `channel.message`; returns its hub id.
    async fn agent_says(&self, content: &str) -> String {
        self.agent_says_with(content, json!({})).await
    }

    async fn agent_says_with(&self, content: &str, extra: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut message = json!({
            "id": id, "content": content, "senderId": AGENT,
            "timestamp": hub_bridge_sdk::event::now_millis(),
        });
        if let (Some(message), Some(extra)) = (message.as_object_mut(), extra.as_object()) {
            message.extend(extra.clone());
        }
        self.agent_event(json!({"type": "channel.message", "channelId": HUB, "message": message}))
            .await;
        id
    }

    /// Waits for the hub message published for a Discord message with `content`.
    async fn hub_message(&self, content: &str) -> Seen {
        self.spy
            .wait_for(&format!("channel.message {content:?}"), WAIT, |s| {
                s.channel == hub_channel()
                    && s.kind() == "channel.message"
                    && s.event()["message"]["content"] == content
            })
            .await
    }

    /// The webhook executions so far whose content contains `needle`.
    fn webhook_posts(&self, needle: &str) -> Vec<Request> {
        self.fake
            .requests_matching("POST", &format!("/webhooks/{WEBHOOK}"))
            .into_iter()
            .filter(|r| r.body["content"].as_str().unwrap_or("").contains(needle))
            .collect()
    }

    async fn wait_webhook_post(&self, needle: &str) -> Request {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(request) = self
                .webhook_posts(needle)
                .into_iter()
                .find(|r| r.status == 200)
            {
                return request;
            }
            assert!(
                Instant::now() < deadline,
                "no webhook post containing {needle:?}; requests: {:#?}",
                self.fake.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_bot_post(&self, channel: u64, needle: &str) -> Request {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .fake
                .requests_matching("POST", &format!("/channels/{channel}/messages"))
                .into_iter()
                .find(|r| {
                    r.status == 200 && r.body["content"].as_str().unwrap_or("").contains(needle)
                });
            if let Some(request) = found {
                return request;
            }
            assert!(
                Instant::now() < deadline,
                "no bot post in {channel} containing {needle:?}; requests: {:#?}",
                self.fake.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A person's message in a channel, dispatched on the gateway; waits until the hub has it.
    async fn person_says(&self, channel: u64, user: UserRef, content: &str) -> (u64, Seen) {
        let payload =
            self.fake
                .post_user_message(UserMessage::new(channel, Some(GUILD), user, content));
        (id_of(&payload), self.hub_message(content).await)
    }
}

/// Asserts that nothing matching `predicate` shows up on the hub for a while.
async fn assert_never(
    spy: &HubSpy,
    what: &str,
    within: Duration,
    predicate: impl Fn(&Seen) -> bool,
) {
    tokio::time::sleep(within).await;
    let found = spy.matching(predicate);
    assert!(found.is_empty(), "{what}: {found:#?}");
}

fn is_person_message(s: &Seen, content: &str) -> bool {
    s.kind() == "channel.message" && s.event()["message"]["content"] == content
}

// ===================== Discord -> hub =====================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discord_message_becomes_a_hub_message_with_the_superset_fields() {
    let h = Harness::start().await;
    let (message_id, seen) = h.person_says(CHANNEL, ada(), "hello hub").await;

    let envelope = &seen.json;
    let message = &seen.event()["message"];
    let sender = external(&ada());
    assert_eq!(envelope["channelId"], HUB);
    assert_eq!(envelope["senderId"], sender);
    assert_eq!(envelope["origin"], format!("discord:{CHANNEL}"));
    assert_eq!(seen.event()["channelId"], HUB);
    assert!(uuid::Uuid::parse_str(message["id"].as_str().unwrap_or("")).is_ok());
    assert_eq!(message["senderId"], sender);
    assert_eq!(message["authorId"], sender);
    assert_eq!(message["authorType"], "external");
    assert_eq!(message["authorName"], "Ada L.", "the member's nickname");
    assert_eq!(message["externalPlatform"], "discord");
    assert_eq!(
        message["externalSourceId"],
        format!("{CHANNEL}:{message_id}")
    );
    assert!(message["timestamp"].as_i64().is_some());
    assert_eq!(message["timestamp"], message["createdAt"]);
    assert!(!seen.raw.contains("null"), "optional fields are omitted");

    // The hub loop, not the bridge, announces the newcomer: exactly once each.
    h.spy
        .wait_for("member join", WAIT, |s| {
            s.kind() == "channel.member.join" && s.event()["member"]["agentId"] == sender
        })
        .await;
    h.spy
        .wait_for("presence online", WAIT, |s| {
            s.kind() == "channel.presence" && s.event()["presence"]["agentId"] == sender
        })
        .await;
    h.person_says(CHANNEL, ada(), "second message").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.spy
            .matching(
                |s| s.kind() == "channel.member.join" && s.event()["member"]["agentId"] == sender
            )
            .len(),
        1
    );

    // The display name falls back to the global name, then the username.
    h.person_says(CHANNEL, bob(), "from bob").await;
    let seen = h.hub_message("from bob").await;
    assert_eq!(seen.event()["message"]["authorName"], "Bob");

    // An unlinked channel is not relayed.
    h.fake
        .post_user_message(UserMessage::new(OTHER, Some(GUILD), ada(), "elsewhere"));
    assert_never(
        &h.spy,
        "unlinked channel relayed",
        Duration::from_millis(500),
        |s| is_person_message(s, "elsewhere"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_mentions_and_attachments_are_mapped() {
    let h = Harness::start().await;
    let (parent_id, parent) = h.person_says(CHANNEL, ada(), "the parent").await;
    let parent_hub = parent.event()["message"]["id"].clone();

    let reply = UserMessage::new(CHANNEL, Some(GUILD), bob(), "a reply").reply_to(parent_id);
    h.fake.post_user_message(reply);
    let seen = h.hub_message("a reply").await;
    assert_eq!(seen.event()["message"]["parentMessageId"], parent_hub);

    let mention = format!("hi <@{}> and <@!{}>, see <#{CHANNEL}>", ada().id, ada().id);
    let message = UserMessage::new(CHANNEL, Some(GUILD), bob(), &mention).mention(ada());
    h.fake.post_user_message(message);
    let expected = format!("hi @Ada and @Ada, see #channel-{CHANNEL}");
    h.hub_message(&expected).await;

    h.fake.add_role(GUILD, 1500000000000000001, "Moderators");
    let role = UserMessage::new(CHANNEL, Some(GUILD), bob(), "ping <@&1500000000000000001>");
    h.fake.post_user_message(role);
    h.hub_message("ping @Moderators").await;

    let file = UserMessage::new(CHANNEL, Some(GUILD), ada(), "look")
        .attachment("cat.png", "image/png", 1234)
        .attachment("notes.txt", "text/plain", 56);
    h.fake.post_user_message(file);
    let seen = h.hub_message("look").await;
    let blocks = seen.event()["message"]["contentBlocks"]
        .as_array()
        .cloned()
        .expect("content blocks");
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0]["type"], "image");
    assert_eq!(blocks[0]["name"], "cat.png");
    assert_eq!(blocks[0]["size"], 1234);
    assert_eq!(blocks[0]["mimeType"], "image/png");
    // A link to the service itself, never Discord's expiring CDN URL.
    assert!(blocks[0]["url"]
        .as_str()
        .is_some_and(|url| url.starts_with("http://127.0.0.1:") && url.contains("/media/")));
    assert_eq!(blocks[1]["type"], "file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_messages_become_thread_events_with_one_thread_create() {
    let h = Harness::start().await;
    let (starter, seen) = h.person_says(CHANNEL, ada(), "start a thread here").await;
    let starter_hub = seen.event()["message"]["id"].clone();
    h.fake
        .thread_create(CHANNEL, "the thread", &ada(), Some(starter));
    let thread = starter; // a thread started on a message has the message's id

    h.fake.post_user_message(UserMessage::new(
        thread,
        Some(GUILD),
        bob(),
        "first in thread",
    ));
    let create = h
        .spy
        .wait_for("thread.create", WAIT, |s| s.kind() == "thread.create")
        .await;
    let hub_thread = create.event()["thread"]["id"].clone();
    assert_eq!(create.event()["channelId"], HUB);
    assert_eq!(create.event()["thread"]["parentMessageId"], starter_hub);
    assert_eq!(create.event()["thread"]["createdBy"], external(&bob()));
    let first = h
        .spy
        .wait_for("thread.message", WAIT, |s| {
            s.kind() == "thread.message" && s.event()["message"]["content"] == "first in thread"
        })
        .await;
    assert_eq!(first.event()["threadId"], hub_thread);
    assert_eq!(first.event()["message"]["threadId"], hub_thread);
    assert_eq!(first.event()["message"]["parentMessageId"], starter_hub);
    assert_eq!(first.json["origin"], format!("discord:{CHANNEL}"));

    h.fake.post_user_message(UserMessage::new(
        thread,
        Some(GUILD),
        ada(),
        "second in thread",
    ));
    h.spy
        .wait_for("second thread.message", WAIT, |s| {
            s.kind() == "thread.message" && s.event()["message"]["content"] == "second in thread"
        })
        .await;
    assert_eq!(h.spy.matching(|s| s.kind() == "thread.create").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_reactions_and_typing_become_hub_events() {
    let h = Harness::start().await;
    let (message_id, seen) = h.person_says(CHANNEL, ada(), "to be edited").await;
    let hub_id = seen.event()["message"]["id"].clone();

    let update = h
        .fake
        .message_update(CHANNEL, message_id, "edited <@1400000000000000002>");
    h.fake.dispatch("MESSAGE_UPDATE", update);
    let edit = h
        .spy
        .wait_for("edit", WAIT, |s| s.kind() == "channel.message.edit")
        .await;
    assert_eq!(edit.event()["messageId"], hub_id);
    assert_eq!(edit.event()["channelId"], HUB);
    assert!(edit.event()["editedAt"].as_i64().is_some());
    assert_eq!(edit.json["origin"], format!("discord:{CHANNEL}"));

    let add = h.fake.reaction_add(CHANNEL, message_id, &bob(), "👍");
    h.fake.dispatch("MESSAGE_REACTION_ADD", add);
    let added = h
        .spy
        .wait_for("reaction add", WAIT, |s| s.kind() == "channel.reaction.add")
        .await;
    assert_eq!(added.event()["messageId"], hub_id);
    assert_eq!(added.event()["emoji"], "👍");
    assert_eq!(added.event()["agentId"], external(&bob()));
    let remove = h.fake.reaction_remove(CHANNEL, message_id, &bob(), "👍");
    h.fake.dispatch("MESSAGE_REACTION_REMOVE", remove);
    let removed = h
        .spy
        .wait_for("reaction remove", WAIT, |s| {
            s.kind() == "channel.reaction.remove"
        })
        .await;
    assert_eq!(removed.event()["messageId"], hub_id);
    assert_eq!(removed.event()["emoji"], "👍");

    let custom = h
        .fake
        .reaction_add(CHANNEL, message_id, &bob(), "party:1600000000000000001");
    h.fake.dispatch("MESSAGE_REACTION_ADD", custom);
    h.spy
        .wait_for("custom emoji", WAIT, |s| {
            s.kind() == "channel.reaction.add" && s.event()["emoji"] == ":party:"
        })
        .await;

    let typing = h.fake.typing_start(CHANNEL, &ada());
    h.fake.dispatch("TYPING_START", typing);
    let typing = h
        .spy
        .wait_for("typing", WAIT, |s| s.kind() == "channel.typing")
        .await;
    assert_eq!(typing.event()["agentId"], external(&ada()));
    assert_eq!(typing.event()["started"], true);

    let delete = h.fake.message_delete(CHANNEL, message_id);
    h.fake.dispatch("MESSAGE_DELETE", delete);
    let deleted = h
        .spy
        .wait_for("delete", WAIT, |s| s.kind() == "channel.message.delete")
        .await;
    assert_eq!(deleted.event()["messageId"], hub_id);
    assert_eq!(deleted.event()["channelId"], HUB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bots_own_messages_and_its_webhooks_messages_are_ignored() {
    let h = Harness::start().await;
    h.agent_says("agent speaking").await;
    h.wait_webhook_post("agent speaking").await;
    h.wait_bot_post(PLAIN, "agent speaking").await;
    // The fake echoes both posts on the gateway, as Discord does; neither comes back.
    assert_never(
        &h.spy,
        "echo of the bridge's own posts",
        Duration::from_millis(800),
        |s| s.kind() == "channel.message" && s.json["origin"].is_string(),
    )
    .await;

    // Another webhook's message (not the bridge's) is relayed under its name.
    h.fake.post_user_message(
        UserMessage::new(
            CHANNEL,
            Some(GUILD),
            UserRef::new(77, "GitHub"),
            "build passed",
        )
        .webhook(1_300_000_000_000_000_099),
    );
    let seen = h.hub_message("build passed").await;
    assert_eq!(seen.event()["message"]["authorName"], "GitHub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_inbound_limit_messages_are_dropped_and_the_person_told_once() {
    let h = Harness::start_with(|config| config.limits.message = 2).await;
    for n in 0..5 {
        h.fake.post_user_message(UserMessage::new(
            CHANNEL,
            Some(GUILD),
            ada(),
            &format!("flood {n}"),
        ));
    }
    // Which two get through depends on the order serenity hands the five over; that two do,
    // and that the person is told once, is what this test is about.
    let notice = h.wait_bot_post(CHANNEL, "too fast").await;
    assert_eq!(
        notice.body["allowed_mentions"]["users"],
        json!([ada().id.to_string()])
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let published = h.spy.matching(|s| {
        s.kind() == "channel.message"
            && s.event()["message"]["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("flood"))
    });
    assert_eq!(published.len(), 2, "{published:#?}");
    let notices: Vec<Request> = h
        .fake
        .requests_matching("POST", &format!("/channels/{CHANNEL}/messages"))
        .into_iter()
        .filter(|r| {
            r.body["content"]
                .as_str()
                .unwrap_or("")
                .contains("too fast")
        })
        .collect();
    assert_eq!(notices.len(), 1, "told once per window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_to_the_bot_goes_to_the_chosen_agent_and_sticks() {
    let h = Harness::start_with(|config| {
        if let Some(discord) = config.bridge_mut::<DiscordConfig>() {
            discord.dm_agent = Some("concierge".to_owned());
        }
    })
    .await;
    let dm = h.fake.dm_channel(&ada());
    h.fake
        .post_user_message(UserMessage::new(dm, None, ada(), "hello concierge"));
    let first = h
        .spy
        .wait_for("dm to the default agent", WAIT, |s| {
            s.channel == "pubsub:agent:concierge" && s.kind() == "agent.direct_message"
        })
        .await;
    assert_eq!(first.json["data"]["fromAgent"], external(&ada()));
    assert_eq!(first.json["data"]["content"], "hello concierge");

    h.fake.post_user_message(UserMessage::new(
        dm,
        None,
        ada(),
        &format!("/dm {AGENT} please review"),
    ));
    let picked = h
        .spy
        .wait_for("dm to the picked agent", WAIT, |s| {
            s.channel == format!("pubsub:agent:{AGENT}") && s.kind() == "agent.direct_message"
        })
        .await;
    assert_eq!(picked.json["data"]["content"], "please review");
    h.fake
        .post_user_message(UserMessage::new(dm, None, ada(), "and this too"));
    h.spy
        .wait_for("sticky dm", WAIT, |s| {
            s.channel == format!("pubsub:agent:{AGENT}")
                && s.json["data"]["content"] == "and this too"
        })
        .await;
    h.fake
        .post_user_message(UserMessage::new(dm, None, ada(), "/agents"));
    let list = h.wait_bot_post(dm, "Agents you can reach").await;
    let list = list.body["content"].as_str().unwrap_or_default();
    assert!(
        list.contains("Backend Architect: /dm backend-architect"),
        "{list}"
    );
    assert!(
        list.contains(&format!("Your messages go to {AGENT}")),
        "{list}"
    );
    h.fake
        .post_user_message(UserMessage::new(dm, None, ada(), "/dm concierge"));
    h.wait_bot_post(dm, "Your messages now go to concierge (concierge).")
        .await;

    // A DM is never a channel message.
    assert!(h
        .spy
        .matching(|s| is_person_message(s, "and this too"))
        .is_empty());
}

// ===================== hub -> Discord =====================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_messages_go_through_the_webhook_as_the_agent_and_never_ping_everyone() {
    let h = Harness::start().await;
    let hub_id = h
        .agent_says("hello @everyone and <@&1500000000000000001>")
        .await;
    let post = h.wait_webhook_post("hello @everyone").await;
    assert_eq!(post.path, format!("/webhooks/{WEBHOOK}/{WEBHOOK_TOKEN}"));
    assert_eq!(post.query_param("wait"), Some("true"));
    assert_eq!(post.body["username"], "Backend Architect");
    assert_eq!(post.body["avatar_url"], AVATAR);
    // Issue 7: an agent's post that replies to nothing pings nobody at all.
    assert_eq!(may_ping(&post.body), nobody());

    // Without a webhook, the bot posts `**name**: text`, with the same mention rules.
    let bot = h.wait_bot_post(PLAIN, "hello @everyone").await;
    assert!(bot.body["content"]
        .as_str()
        .is_some_and(|c| c.starts_with("**Backend Architect**: hello")));
    let parse = &bot.body["allowed_mentions"]["parse"];
    assert_eq!(parse, &json!([]));

    // A name Discord refuses for webhooks is sanitised.
    h.agent_event(
        json!({"type": "channel.message", "channelId": HUB, "message": {
            "id": uuid::Uuid::new_v4().to_string(), "content": "from a helper",
            "senderId": "discord-helper", "authorName": "Discord Helper", "timestamp": 1,
        }}),
    )
    .await;
    let post = h.wait_webhook_post("from a helper").await;
    assert_eq!(post.body["username"], "Disc-ord Helper");
    assert!(post.body.get("avatar_url").is_none());
    let _ = hub_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_reply_quotes_the_parent_with_a_link_and_the_bot_replies_natively() {
    let h = Harness::start().await;
    let (parent, seen) = h.person_says(CHANNEL, ada(), "what is the plan?").await;
    let parent_hub = seen.event()["message"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    h.agent_says_with("here is the plan", json!({"parentMessageId": parent_hub}))
        .await;
    let post = h.wait_webhook_post("here is the plan").await;
    let content = post.body["content"].as_str().unwrap_or_default();
    let link = format!("https://discord.com/channels/{GUILD}/{CHANNEL}/{parent}");
    assert!(content.starts_with("> **Ada**"), "{content}");
    assert!(content.contains(&link), "{content}");
    assert!(content.contains("> what is the plan?"), "{content}");
    assert!(content.ends_with("here is the plan"), "{content}");
    assert!(post.body.get("message_reference").is_none());

    // In the webhook-less channel, the relayed copy of Ada's message is the parent, natively.
    let copy = h.wait_bot_post(PLAIN, "what is the plan?").await;
    let copy_id = h
        .fake
        .messages_in(PLAIN)
        .iter()
        .find(|m| m.content == copy.body["content"])
        .map(|m| m.id)
        .expect("the copy is in the channel");
    let reply = h.wait_bot_post(PLAIN, "here is the plan").await;
    assert_eq!(
        reply.body["message_reference"]["message_id"],
        copy_id.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_is_split_and_every_part_is_edited_and_deleted() {
    let h = Harness::start().await;
    let mut answer = String::from("Here is the implementation.\n\n```rust\n");
    while answer.chars().count() < 4_000 {
        answer.push_str("fn example() { println!(\"a line of code in the block\"); }\n");
    }
    answer.push_str("```\n\nAnd some closing words after the code block.\n");
    while answer.chars().count() < 5_000 {
        answer.push_str("More explanation follows here. ");
    }
    let hub_id = h.agent_says(&answer).await;

    h.fake
        .wait_for("POST", &format!("/webhooks/{WEBHOOK}"), 3, WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let posts: Vec<Request> = h
        .fake
        .requests_matching("POST", &format!("/webhooks/{WEBHOOK}"))
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert!(posts.len() >= 3, "{posts:#?}");
    for post in &posts {
        let content = post.body["content"].as_str().unwrap_or_default();
        assert!(content.chars().count() <= 2000, "part too long");
        assert_eq!(
            content.matches("```").count() % 2,
            0,
            "a part cut inside the code block: {content}"
        );
        assert_eq!(post.body["username"], "Backend Architect");
    }
    let ids: Vec<u64> = h
        .fake
        .messages_in(CHANNEL)
        .iter()
        .filter(|m| m.webhook_id == Some(WEBHOOK))
        .map(|m| m.id)
        .collect();
    assert_eq!(ids.len(), posts.len());

    // An edit that changes every part reaches every part, through the webhook. (Parts an edit
    // leaves as they were are not edited again.)
    let edited = answer
        .replace("Here is the", "Here is the new")
        .replace("closing words", "final words")
        .replace("a line of code", "a line of Rust");
    h.agent_event(
        json!({"type": "channel.message.edit", "channelId": HUB, "messageId": hub_id,
        "content": edited}),
    )
    .await;
    let patches = h
        .fake
        .wait_for(
            "PATCH",
            &format!("/webhooks/{WEBHOOK}/{WEBHOOK_TOKEN}/messages"),
            ids.len(),
            WAIT,
        )
        .await;
    let patched: Vec<String> = patches.iter().map(|r| r.path.clone()).collect();
    for id in &ids {
        assert!(
            patched.iter().any(|p| p.ends_with(&id.to_string())),
            "{id} not edited"
        );
    }
    assert!(h
        .fake
        .messages_in(CHANNEL)
        .iter()
        .any(|m| m.content.contains("final words")));

    // Shorter: the first part is edited, the others deleted; longer again: new parts posted.
    h.agent_event(
        json!({"type": "channel.message.edit", "channelId": HUB, "messageId": hub_id,
        "content": "now it is short"}),
    )
    .await;
    let webhook_messages = |h: &Harness| -> Vec<String> {
        h.fake
            .messages_in(CHANNEL)
            .into_iter()
            .filter(|m| m.webhook_id == Some(WEBHOOK))
            .map(|m| m.content)
            .collect()
    };
    eventually("the edit to one part", || {
        webhook_messages(&h) == vec!["now it is short".to_owned()]
    })
    .await;
    h.agent_event(
        json!({"type": "channel.message.edit", "channelId": HUB, "messageId": hub_id,
        "content": answer}),
    )
    .await;
    eventually("the edit back to all parts", || {
        let shown = webhook_messages(&h);
        shown.len() == ids.len() && shown[0].starts_with("Here is the implementation.")
    })
    .await;

    // A delete removes every part, through the webhook.
    h.agent_event(json!({"type": "channel.message.delete", "channelId": HUB, "messageId": hub_id}))
        .await;
    eventually("every part deleted", || webhook_messages(&h).is_empty()).await;
    // Deleting its own posts is not a delete coming from Discord.
    assert_never(
        &h.spy,
        "echo of the bridge's deletes",
        Duration::from_millis(500),
        |s| s.kind() == "channel.message.delete" && s.json["origin"].is_string(),
    )
    .await;
}

/// Waits until `condition` holds; panics after [`WAIT`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_typing_and_threads_from_the_hub() {
    let h = Harness::start().await;
    let hub_id = h.agent_says("react to me").await;
    h.wait_webhook_post("react to me").await;
    let posted = h
        .fake
        .messages_in(CHANNEL)
        .iter()
        .find(|m| m.content == "react to me")
        .map(|m| m.id)
        .expect("posted");

    h.agent_event(
        json!({"type": "channel.reaction.add", "channelId": HUB, "messageId": hub_id,
        "emoji": "👍", "agentId": AGENT}),
    )
    .await;
    h.fake
        .wait_for(
            "PUT",
            &format!("/channels/{CHANNEL}/messages/{posted}/reactions/👍/@me"),
            1,
            WAIT,
        )
        .await;
    h.agent_event(
        json!({"type": "channel.reaction.remove", "channelId": HUB, "messageId": hub_id,
        "emoji": "👍", "agentId": AGENT}),
    )
    .await;
    h.fake
        .wait_for(
            "DELETE",
            &format!("/channels/{CHANNEL}/messages/{posted}/reactions/👍/@me"),
            1,
            WAIT,
        )
        .await;
    // The bot's own reactions come back on the gateway and are not relayed to the hub.
    assert_never(
        &h.spy,
        "echo of the bot's reactions",
        Duration::from_millis(300),
        |s| s.kind().starts_with("channel.reaction") && s.json["origin"].is_string(),
    )
    .await;

    h.agent_event(
        json!({"type": "channel.typing", "channelId": HUB, "agentId": AGENT, "started": true}),
    )
    .await;
    h.fake
        .wait_for("POST", &format!("/channels/{CHANNEL}/typing"), 1, WAIT)
        .await;

    let thread_id = uuid::Uuid::new_v4().to_string();
    h.agent_event(json!({"type": "thread.create", "channelId": HUB, "thread": {
        "id": thread_id, "parentMessageId": hub_id, "createdBy": AGENT, "createdAt": 1, "replyCount": 0}}))
        .await;
    let created = h
        .fake
        .wait_for(
            "POST",
            &format!("/channels/{CHANNEL}/messages/{posted}/threads"),
            1,
            WAIT,
        )
        .await;
    assert_eq!(created[0].body["name"], "react to me");
    h.agent_event(
        json!({"type": "thread.message", "channelId": HUB, "threadId": thread_id,
        "message": {"id": uuid::Uuid::new_v4().to_string(), "content": "inside the thread",
            "senderId": AGENT, "timestamp": 1, "threadId": thread_id}}),
    )
    .await;
    let post = h.wait_webhook_post("inside the thread").await;
    assert_eq!(
        post.query_param("thread_id"),
        Some(posted.to_string().as_str())
    );
    assert!(h
        .fake
        .messages_in(posted)
        .iter()
        .any(|m| m.content == "inside the thread"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_waited_out_and_the_message_delivered_once_in_order() {
    let h = Harness::start().await;
    h.fake.fail_next(
        "POST",
        &format!("/webhooks/{WEBHOOK}"),
        Failure::RateLimited {
            retry_after_secs: 1.0,
            global: false,
        },
    );
    h.agent_says("first of two").await;
    h.agent_says("second of two").await;
    h.wait_webhook_post("second of two").await;
    let posts: Vec<Request> = h
        .fake
        .requests_matching("POST", &format!("/webhooks/{WEBHOOK}"))
        .into_iter()
        .filter(|r| r.body["content"].as_str().unwrap_or("").ends_with("of two"))
        .collect();
    let summary: Vec<(String, u16)> = posts
        .iter()
        .map(|r| {
            (
                r.body["content"].as_str().unwrap_or("").to_owned(),
                r.status,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("first of two".to_owned(), 429),
            ("first of two".to_owned(), 200),
            ("second of two".to_owned(), 200),
        ]
    );
    let waited = posts[1].at.duration_since(posts[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    let shown: Vec<String> = h
        .fake
        .messages_in(CHANNEL)
        .into_iter()
        .map(|m| m.content)
        .filter(|c| c.ends_with("of two"))
        .collect();
    assert_eq!(shown, vec!["first of two", "second of two"]);
    let metrics = h.service.as_ref().expect("running").metrics.clone();
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.lines()
            .any(|l| l.starts_with("hub_bridge_platform_429s_total{bridge=\"discord\"} 1")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_paced_by_the_rate_limit_headers_with_no_429s() {
    let h = Harness::start().await;
    h.fake.enforce_bucket(
        "POST",
        &format!("/webhooks/{WEBHOOK}"),
        2,
        Duration::from_secs(1),
    );
    for n in 0..6 {
        h.agent_says(&format!("paced {n}")).await;
    }
    h.wait_webhook_post("paced 5").await;
    assert_eq!(h.fake.rate_limited_count(), 0, "{:#?}", h.fake.requests());
    let shown: Vec<String> = h
        .fake
        .messages_in(CHANNEL)
        .into_iter()
        .map(|m| m.content)
        .filter(|c| c.starts_with("paced"))
        .collect();
    let expected: Vec<String> = (0..6).map(|n| format!("paced {n}")).collect();
    assert_eq!(shown, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_dead_lettered_and_the_agent_told() {
    let h = Harness::start().await;
    h.fake.fail_next(
        "POST",
        &format!("/webhooks/{WEBHOOK}"),
        Failure::Status(403, json!({"message": "Missing Access", "code": 50001})),
    );
    h.agent_says("this one is refused").await;
    let notice = h
        .spy
        .wait_for("agent notification", WAIT, |s| {
            s.channel == format!("pubsub:agent:{AGENT}") && s.kind() == "agent.notification"
        })
        .await;
    let text = notice.json["data"]["content"].as_str().unwrap_or_default();
    assert!(text.contains("Missing Access"), "{text}");
    assert!(
        !text.contains(WEBHOOK_TOKEN),
        "the webhook token leaked: {text}"
    );

    let mut redis = h.redis.connection().await;
    let letters: Vec<String> = redis::cmd("LRANGE")
        .arg("openclaw:bridge:deadletter:discord")
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("LRANGE");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Value = serde_json::from_str(&letters[0]).expect("JSON");
    assert_eq!(letter["destination"], format!("discord:{CHANNEL}"));
    assert_eq!(letter["eventType"], "channel.message");
    assert_eq!(letter["agentId"], AGENT);
    assert_eq!(letter["channelId"], HUB);
    assert!(!letters[0].contains(WEBHOOK_TOKEN));

    // The queue goes on.
    h.agent_says("this one goes through").await;
    h.wait_webhook_post("this one goes through").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_archives_and_dms_from_the_hub() {
    let h = Harness::start().await;
    publish(
        &h.redis.url(),
        "pubsub:global",
        &json!({"type": "system.announcement", "data": {"message": "deploy at 5", "severity": "info"}}),
    )
    .await;
    h.wait_bot_post(CHANNEL, "deploy at 5").await;
    h.wait_bot_post(PLAIN, "deploy at 5").await;

    let dm = json!({"type": "agent.direct_message", "data": {"fromAgent": AGENT, "content": "a private word"},
        "timestamp": 1});
    publish(
        &h.redis.url(),
        &format!("pubsub:agent:external:discord:{}", ada().id),
        &dm,
    )
    .await;
    let dm_channel = h.fake.dm_channel(&ada());
    let post = h.wait_bot_post(dm_channel, "a private word").await;
    assert_eq!(
        post.body["content"],
        "**Backend Architect**: a private word"
    );

    h.agent_event(
        json!({"type": "channel.archive", "channelId": HUB, "archivedBy": AGENT, "archivedAt": 1}),
    )
    .await;
    h.wait_bot_post(CHANNEL, "archived").await;
    h.wait_bot_post(PLAIN, "archived").await;
    h.agent_says("after the archive").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(h.webhook_posts("after the archive").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discord_message_reaches_the_other_linked_channel_but_never_its_own() {
    let h = Harness::start().await;
    h.person_says(CHANNEL, ada(), "from the webhook channel")
        .await;
    let copy = h.wait_bot_post(PLAIN, "from the webhook channel").await;
    // Issue 7: a relayed person's name carries their platform.
    assert_eq!(
        copy.body["content"],
        "**Ada L. (Discord)**: from the webhook channel"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        h.webhook_posts("from the webhook channel").is_empty(),
        "echoed to its origin"
    );

    h.person_says(PLAIN, bob(), "from the plain channel").await;
    let copy = h.wait_webhook_post("from the plain channel").await;
    // Discord refuses "discord" in webhook usernames; the SDK's sanitiser breaks the word.
    assert_eq!(copy.body["username"], "Bob (Disc-ord)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let echoed = h
        .fake
        .requests_matching("POST", &format!("/channels/{PLAIN}/messages"))
        .into_iter()
        .any(|r| {
            r.body["content"]
                .as_str()
                .unwrap_or("")
                .contains("from the plain channel")
        });
    assert!(!echoed, "echoed to its origin");
}

// ===================== gateway, gaps and restarts =====================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_closed_with_4000_resumes_and_replays_what_was_missed() {
    let h = Harness::start().await;
    h.person_says(CHANNEL, ada(), "before the close").await;
    h.fake.close_sessions(4000);
    // Dispatched while no socket is attached: kept for RESUME, as Discord does.
    h.fake.post_user_message(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        ada(),
        "during the gap",
    ));
    h.fake.wait_for_resume(1, WAIT).await;
    h.hub_message("during the gap").await;
    h.person_says(CHANNEL, ada(), "after the resume").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.fake.identifies().len(), 1, "resumed, not re-identified");
    assert_eq!(
        h.spy
            .matching(|s| is_person_message(s, "during the gap"))
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_resume_the_catch_up_publishes_the_gap_exactly_once() {
    let h = Harness::start().await;
    h.person_says(CHANNEL, ada(), "seen live").await;
    h.fake.set_resume_ok(false);
    h.fake.close_sessions(4000);
    // Never dispatched: only a fetch of the channel can find it.
    h.fake.post_user_message_silently(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        bob(),
        "missed message",
    ));
    h.fake.wait_for_identify(2, Duration::from_secs(30)).await;
    h.hub_message("missed message").await;
    h.fake.set_resume_ok(true);
    h.person_says(CHANNEL, ada(), "live again").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        h.spy
            .matching(|s| is_person_message(s, "missed message"))
            .len(),
        1
    );
    assert_eq!(
        h.spy.matching(|s| is_person_message(s, "seen live")).len(),
        1
    );
    let fetches = h
        .fake
        .requests_matching("GET", &format!("/channels/{CHANNEL}/messages"));
    assert!(fetches.iter().any(|r| r.query_param("after").is_some()));
}

/// A channel that was empty at the first start has the cursor `0`; a restart must catch up from it
/// (a cursor read as an id, where 0 is invalid, once skipped the catch-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_empty_at_the_first_start_is_caught_up_after_a_restart() {
    let mut h = Harness::start().await;
    let mut redis = h.redis.connection().await;
    let cursor_key = format!("openclaw:bridge:discord:last_seen:{CHANNEL}");
    let deadline = Instant::now() + WAIT;
    loop {
        let cursor: Option<String> = redis::cmd("GET")
            .arg(&cursor_key)
            .query_async(&mut redis)
            .await
            .expect("GET");
        if let Some(cursor) = cursor {
            assert_eq!(cursor, "0", "the channel is empty");
            break;
        }
        assert!(Instant::now() < deadline, "no cursor stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop_service().await;
    h.fake
        .post_user_message_silently(UserMessage::new(CHANNEL, Some(GUILD), ada(), "first words"));
    h.start_service().await;
    h.hub_message("first words").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_catches_up_once_and_spaces_its_identifies() {
    let mut h = Harness::start().await;
    h.person_says(CHANNEL, ada(), "before the restart").await;
    h.stop_service().await;
    h.fake
        .post_user_message_silently(UserMessage::new(CHANNEL, Some(GUILD), ada(), "while down"));
    h.start_service().await;
    h.hub_message("while down").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        h.spy.matching(|s| is_person_message(s, "while down")).len(),
        1
    );
    assert_eq!(
        h.spy
            .matching(|s| is_person_message(s, "before the restart"))
            .len(),
        1
    );
    let identifies = h.fake.identifies();
    assert_eq!(identifies.len(), 2);
    let gap = identifies[1].at.duration_since(identifies[0].at);
    assert!(
        gap >= Duration::from_millis(4_500),
        "IDENTIFY again after {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_redis_is_down_is_published_once_it_is_back() {
    let mut h = Harness::start().await;
    h.person_says(CHANNEL, ada(), "before the outage").await;
    let subscriptions = h.spy.subscriptions();
    h.redis.kill();
    h.fake.post_user_message(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        ada(),
        "while redis is down",
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.redis.restart();
    h.spy
        .wait_resubscribed(subscriptions, Duration::from_secs(10))
        .await;
    h.spy
        .wait_for(
            "the message from the outage",
            Duration::from_secs(30),
            |s| is_person_message(s, "while redis is down"),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.spy
            .matching(|s| is_person_message(s, "while redis is down"))
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_stops_the_bridge_and_check_names_the_bot() {
    let good = FakeDiscord::start(TOKEN).await;
    let config = |token: &str| DiscordConfig::new(Secret::new(token), good.api_url(), Vec::new());
    let bridge = hub_bridge_discord::DiscordBridge::new(config(TOKEN));
    let report = bridge.check().await.expect("check passes");
    assert!(report.contains("hub-bridge"), "{report}");
    assert_eq!(
        good.requests_matching("GET", "/users/@me").len(),
        1,
        "check is GET /users/@me"
    );
    let bad = hub_bridge_discord::DiscordBridge::new(config(BAD_TOKEN));
    let error = bad.check().await.expect_err("a wrong token fails");
    assert!(error.is_fatal(), "{error}");
    assert!(
        !error.to_string().contains(BAD_TOKEN),
        "the token leaked: {error}"
    );

    let redis = RedisServer::start();
    let service_config = Config {
        redis: RedisConfig {
            url: Some(Secret::new(redis.url())),
            ..RedisConfig::default()
        },
        http: HttpConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..HttpConfig::default()
        },
        bridges: vec![Section::new(config(BAD_TOKEN))],
        ..Config::default()
    };
    let running = service::start(service_config).await.expect("starts");
    let deadline = Instant::now() + WAIT;
    loop {
        let snapshot = running.health.snapshot();
        let state = snapshot.get("discord").cloned();
        if state
            .as_ref()
            .is_some_and(|s| s.detail.contains("credentials rejected"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bridge did not stop: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        good.identifies().is_empty(),
        "no IDENTIFY with a rejected token"
    );
    running.stop().await;
}

// ===================== issue 7: trust boundaries and store errors =====================

/// Publishes a message from a person on Telegram on the hub channel, as the Telegram bridge would.
async fn telegram_person_says(h: &Harness, user: u64, name: &str, content: &str) {
    let sender = format!("external:telegram:{user}");
    let message = json!({
        "id": uuid::Uuid::new_v4().to_string(), "content": content, "senderId": sender,
        "authorId": sender, "authorType": "external", "authorName": name,
        "externalPlatform": "telegram", "externalSourceId": format!("-100:{user}"),
        "timestamp": hub_bridge_sdk::event::now_millis(),
    });
    let envelope = json!({
        "event": {"type": "channel.message", "channelId": HUB, "message": message},
        "timestamp": hub_bridge_sdk::event::now_millis(),
        "channelId": HUB,
        "senderId": sender,
        "origin": "telegram:-100",
    });
    publish(&h.redis.url(), &hub_channel(), &envelope).await;
}

/// The `agent.notification`s an agent got whose text contains `needle`.
fn notifications(h: &Harness, agent: &str, needle: &str) -> Vec<Seen> {
    h.spy.matching(|s| {
        s.channel == format!("pubsub:agent:{agent}")
            && s.kind() == "agent.notification"
            && s.json["data"]["content"]
                .as_str()
                .is_some_and(|text| text.contains(needle))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_emoji_holding_a_path_is_refused_and_never_reaches_another_route() {
    let h = Harness::start().await;
    let hub_id = h.agent_says("react to me safely").await;
    h.wait_webhook_post("react to me safely").await;
    h.wait_bot_post(PLAIN, "react to me safely").await;
    let posted = |channel: u64| {
        h.fake
            .messages_in(channel)
            .iter()
            .find(|m| m.content.contains("react to me safely"))
            .map(|m| m.id)
            .expect("posted")
    };
    let targets = [(CHANNEL, posted(CHANNEL)), (PLAIN, posted(PLAIN))];
    let before = h.fake.requests().len();

    let malicious = "👍/../../../../../../channels/222#";
    for kind in ["channel.reaction.remove", "channel.reaction.add"] {
        h.agent_event(json!({"type": kind, "channelId": HUB, "messageId": hub_id,
            "emoji": malicious, "agentId": AGENT}))
            .await;
    }
    // A good reaction after them: once it is on Discord, the bad ones were handled before it.
    h.agent_event(
        json!({"type": "channel.reaction.add", "channelId": HUB, "messageId": hub_id,
        "emoji": "👍", "agentId": AGENT}),
    )
    .await;
    for (channel, message) in targets {
        h.fake
            .wait_for(
                "PUT",
                &format!("/channels/{channel}/messages/{message}/reactions/👍/@me"),
                1,
                WAIT,
            )
            .await;
    }
    let allowed: Vec<String> = targets
        .iter()
        .map(|(channel, message)| {
            format!("/channels/{channel}/messages/{message}/reactions/👍/@me")
        })
        .collect();
    let after: Vec<Request> = h.fake.requests().into_iter().skip(before).collect();
    for request in &after {
        assert!(
            !request.path.contains("/channels/222"),
            "a request left its route: {request:#?}"
        );
        if matches!(request.method.as_str(), "PUT" | "DELETE" | "PATCH") {
            assert!(
                allowed.contains(&request.path),
                "unexpected {} {}",
                request.method,
                request.path
            );
        }
    }
    eventually("the agent is told twice", || {
        notifications(&h, AGENT, "was not relayed to Discord").len() == 2
    })
    .await;
    let told = notifications(&h, AGENT, "was not relayed to Discord");
    assert!(told.iter().any(|s| s.json["data"]["content"]
        .as_str()
        .unwrap_or("")
        .contains("channel.reaction.remove")));
    assert_eq!(told[0].json["data"]["channelId"], HUB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_and_out_of_range_ids_are_text_and_never_stop_inbound_even_after_a_restart() {
    let mut h = Harness::start().await;
    let odd = "see <#0> <@0> <@&0> <#99999999999999999999999>";
    h.fake
        .post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), odd));
    h.hub_message(odd).await;
    h.person_says(CHANNEL, bob(), "the next message").await;

    // Caught up after a restart: the catch-up replays it and goes on.
    h.stop_service().await;
    let while_down = "while down <#0> <@!0>";
    h.fake
        .post_user_message_silently(UserMessage::new(CHANNEL, Some(GUILD), ada(), while_down));
    h.start_service().await;
    h.hub_message(while_down).await;
    h.person_says(CHANNEL, bob(), "after the restart").await;
    assert_eq!(h.spy.matching(|s| is_person_message(s, odd)).len(), 1);
    // No lookup of a channel 0 was ever attempted.
    assert!(h.fake.requests_matching("GET", "/channels/0").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_people_ping_nobody_carry_their_platform_and_agents_ping_only_the_reply_target() {
    let h = Harness::start().await;
    let ada_id = ada().id;
    telegram_person_says(&h, 42, "Alice", &format!("hey <@{ada_id}> @everyone")).await;
    let post = h.wait_webhook_post("hey <@").await;
    assert_eq!(post.body["username"], "Alice (Telegram)");
    assert_eq!(may_ping(&post.body), nobody());
    let bot = h.wait_bot_post(PLAIN, "hey <@").await;
    assert!(
        bot.body["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("**Alice (Telegram)**: hey")),
        "{:?}",
        bot.body
    );
    assert_eq!(bot.body["allowed_mentions"]["parse"], json!([]));
    assert_ne!(bot.body["allowed_mentions"]["replied_user"], json!(true));

    // A person named like an agent (case and spaces aside) is marked.
    telegram_person_says(&h, 43, " backend architect ", "I am the architect").await;
    let post = h.wait_webhook_post("I am the architect").await;
    assert_eq!(
        post.body["username"],
        "backend architect (Telegram, not an agent)"
    );
    let bot = h.wait_bot_post(PLAIN, "I am the architect").await;
    assert!(bot.body["content"]
        .as_str()
        .is_some_and(|c| c.starts_with("**backend architect (Telegram, not an agent)**:")));

    // An agent's reply may ping the author it answers, and nobody else.
    let (_, parent) = h.person_says(CHANNEL, ada(), "ping me back").await;
    let parent_hub = parent.event()["message"]["id"].clone();
    h.agent_says_with(
        &format!("done <@{ada_id}> <@{}>", bob().id),
        json!({"parentMessageId": parent_hub}),
    )
    .await;
    let reply = h.wait_webhook_post("done <@").await;
    assert_eq!(
        may_ping(&reply.body),
        json!({"parse": [], "users": [ada_id.to_string()], "roles": []})
    );
    h.agent_says("no reply here @here").await;
    let plain = h.wait_webhook_post("no reply here").await;
    assert_eq!(may_ping(&plain.body), nobody());
    assert_eq!(plain.body["username"], "Backend Architect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_arrives_while_redis_refuses_writes_is_published_once_afterwards() {
    let h = Harness::start().await;
    h.person_says(CHANNEL, ada(), "before the refusal").await;
    h.redis.refuse_writes(true).await;
    h.fake.post_user_message(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        ada(),
        "while redis refuses writes",
    ));
    // Redis answers OOM to every write for a few seconds: the message must wait, not vanish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h
        .spy
        .matching(|s| is_person_message(s, "while redis refuses writes"))
        .is_empty());
    h.redis.refuse_writes(false).await;
    h.spy
        .wait_for("the refused message", Duration::from_secs(30), |s| {
            is_person_message(s, "while redis refuses writes")
        })
        .await;
    h.person_says(CHANNEL, bob(), "after the refusal").await;
    assert_eq!(
        h.spy
            .matching(|s| is_person_message(s, "while redis refuses writes"))
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_mentions_cost_at_most_five_lookups_and_refusals_are_cached() {
    let h = Harness::start().await;
    let unknown: Vec<u64> = (1..=50).map(|n| 1_600_000_000_000_000_000 + n).collect();
    let content: String = unknown.iter().map(|id| format!("<#{id}> ")).collect();
    let lookups = || {
        h.fake
            .requests()
            .into_iter()
            .filter(|r| {
                r.method == "GET" && unknown.iter().any(|id| r.path == format!("/channels/{id}"))
            })
            .count()
    };
    let expected = "#channel ".repeat(50).trim_end().to_owned();
    h.fake.post_user_message(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        ada(),
        content.trim_end(),
    ));
    h.hub_message(&expected).await;
    let first = lookups();
    assert!((1..=5).contains(&first), "{first} lookups");
    let again: String = unknown[..5].iter().map(|id| format!("<#{id}> ")).collect();
    h.fake.post_user_message(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        bob(),
        &format!("again {}", again.trim_end()),
    ));
    h.hub_message(&format!("again {}", "#channel ".repeat(5).trim_end()))
        .await;
    assert_eq!(lookups(), first, "refused lookups are cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_commands_count_against_the_limit_and_dms_go_only_to_user_ids() {
    let h = Harness::start_with(|config| config.limits.message = 2).await;
    let dm = h.fake.dm_channel(&ada());
    for _ in 0..4 {
        h.fake
            .post_user_message(UserMessage::new(dm, None, ada(), "/agents"));
    }
    h.wait_bot_post(dm, "too fast").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let answers = h
        .fake
        .requests_matching("POST", &format!("/channels/{dm}/messages"))
        .into_iter()
        .filter(|r| {
            r.body["content"]
                .as_str()
                .is_some_and(|c| c.contains("Agents you can reach"))
        })
        .count();
    assert_eq!(answers, 2);

    let opened = h
        .fake
        .requests_matching("POST", "/users/@me/channels")
        .len();
    for recipient in ["external:discord:0", "external:discord:12ab"] {
        let dm = json!({"type": "agent.direct_message", "data": {"fromAgent": AGENT,
            "content": "psst"}, "timestamp": 1});
        publish(&h.redis.url(), &format!("pubsub:agent:{recipient}"), &dm).await;
    }
    eventually("the agent is told twice", || {
        notifications(&h, AGENT, "is not a Discord user id").len() == 2
    })
    .await;
    assert_eq!(
        h.fake
            .requests_matching("POST", "/users/@me/channels")
            .len(),
        opened
    );
}

// ===================== upgrade =====================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_the_previous_release_left_is_relayed_after_the_upgrade() {
    let mut h = Harness::prepare(|_| {}).await;
    // Jobs as the previous release kept them (`{"kind", "event_type", ...}`), waiting in the
    // webhook channel's outbox: a post, its edit, and a typing indicator.
    let link = json!({"hub_channel": HUB, "discord_channel": CHANNEL});
    let job = |kind: Value| {
        json!({"kind": kind, "event_type": "channel.message", "hub_channel": HUB,
               "agent_id": AGENT})
    };
    let jobs = [
        job(
            json!({"Post": {"link": link, "hub_id": "m-old", "person": false,
            "name": "Backend Architect", "avatar_url": AVATAR,
            "text": "queued before the upgrade", "reply_to": null, "hub_thread": null,
            "plan": null, "sent": []}}),
        ),
        job(json!({"Edit": {"link": link, "hub_id": "m-old",
            "text": "edited before the upgrade", "progress": null}})),
        job(json!({"Typing": {"link": link, "hub_thread": null}})),
    ];
    let mut redis = h.redis.connection().await;
    for (n, job) in jobs.iter().enumerate() {
        let entry = json!({"id": format!("old-{n}"), "job": job});
        let _: () = redis::cmd("RPUSH")
            .arg(format!("openclaw:bridge:outbox:discord:{CHANNEL}"))
            .arg(entry.to_string())
            .query_async(&mut redis)
            .await
            .expect("RPUSH");
    }
    let _: () = redis::cmd("SADD")
        .arg("openclaw:bridge:outboxes:discord")
        .arg(CHANNEL.to_string())
        .query_async(&mut redis)
        .await
        .expect("SADD");
    // The previous release stopped the webhook-less link with a key of its own.
    let _: () = redis::cmd("SET")
        .arg(format!("openclaw:bridge:discord:stopped:{HUB}:{PLAIN}"))
        .arg("1")
        .query_async(&mut redis)
        .await
        .expect("SET");
    h.start_service().await;

    let post = h.wait_webhook_post("queued before the upgrade").await;
    assert_eq!(post.body["username"], "Backend Architect");
    assert_eq!(post.body["avatar_url"], AVATAR);
    // The edit found the message the post mapped.
    eventually("the old edit", || {
        h.fake
            .messages_in(CHANNEL)
            .iter()
            .any(|m| m.content == "edited before the upgrade")
    })
    .await;
    let letters: Vec<String> = redis::cmd("LRANGE")
        .arg("openclaw:bridge:deadletter:discord")
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("LRANGE");
    assert!(letters.is_empty(), "nothing was unreadable: {letters:?}");

    // The stopped link stays stopped; the other relays.
    h.agent_says("after the upgrade").await;
    h.wait_webhook_post("after the upgrade").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h
        .fake
        .requests_matching("POST", &format!("/channels/{PLAIN}/messages"))
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_edited_in_place_and_ends_complete_in_both_channels() {
    let mut h = Harness::start().await;
    let streaming = json!({"streaming": true});
    let text = |n: usize| {
        (0..=n)
            .map(|w| format!("w{w}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let hub_id = h
        .agent_says_with(&text(0), json!({"metadata": streaming}))
        .await;
    // 60 edits, 50 ms apart: a 3 s answer; the last one final.
    for n in 1..=60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut edit = json!({"type": "channel.message.edit", "channelId": HUB,
                              "messageId": hub_id, "content": text(n)});
        if n < 60 {
            edit["metadata"] = streaming.clone();
        }
        h.agent_event(edit).await;
    }
    let last = text(60);
    eventually("the final text in both channels", || {
        [CHANNEL, PLAIN].iter().all(|channel| {
            h.fake
                .messages_in(*channel)
                .iter()
                .any(|m| m.content.ends_with(&last))
        })
    })
    .await;
    for channel in [CHANNEL, PLAIN] {
        let shown = h.fake.messages_in(channel);
        assert_eq!(shown.len(), 1, "one message in {channel}, edited in place");
    }
    let webhook_edits = h
        .fake
        .requests_matching("PATCH", &format!("/webhooks/{WEBHOOK}"))
        .len();
    let bot_edits = h
        .fake
        .requests_matching("PATCH", &format!("/channels/{PLAIN}/messages"))
        .len();
    // 3 s at one edit per second (Discord's cadence), the first at once and the last.
    for edits in [webhook_edits, bot_edits] {
        assert!(
            (2..=6).contains(&edits),
            "a handful of edits, not 60: {edits}"
        );
    }
    assert_eq!(h.fake.rate_limited_count(), 0);
    h.stop_service().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_answer_was_lost_is_not_shown_twice() {
    let mut h = Harness::start().await;
    // Discord creates the message, then the connection breaks before the answer: the bridge
    // cannot know the post landed, and retries.
    h.fake
        .fail_next("POST", &format!("/webhooks/{WEBHOOK}"), Failure::AnswerLost);
    h.fake.fail_next(
        "POST",
        &format!("/channels/{PLAIN}/messages"),
        Failure::AnswerLost,
    );
    h.agent_says("said exactly once").await;
    let shown = |channel: u64| {
        h.fake
            .messages_in(channel)
            .iter()
            .filter(|m| m.content.ends_with("said exactly once"))
            .count()
    };
    eventually("both channels show it", || {
        shown(CHANNEL) == 1 && shown(PLAIN) == 1
    })
    .await;
    // The bot post was sent again with the same nonce, which Discord enforces; the webhook
    // post was found among the channel's messages instead of being sent again.
    let bot_posts = || {
        h.fake
            .requests_matching("POST", &format!("/channels/{PLAIN}/messages"))
    };
    eventually("the bot post retried", || bot_posts().len() == 2).await;
    let bot_posts = bot_posts();
    assert_eq!(bot_posts[0].body["nonce"], bot_posts[1].body["nonce"]);
    assert_eq!(bot_posts[1].body["enforce_nonce"], true);
    let webhook_posts = h
        .fake
        .requests_matching("POST", &format!("/webhooks/{WEBHOOK}"));
    assert_eq!(webhook_posts.len(), 1, "found, not posted again");
    // Still once after a while: nothing else was queued.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((shown(CHANNEL), shown(PLAIN)), (1, 1));
    h.stop_service().await;
}

//! End-to-end tests of the Telegram bridge (issue 3): the whole service, started as users start it,
//! against a test-started `redis-server` and the fake Bot API of `hub-bridge-testkit`, with
//! teloxide unmodified. Every inbound mapping is checked on the hub channel with its exact fields,
//! every outbound row of SPEC section 5 on the calls the fake recorded, plus the delivery
//! guarantees: no echo, 429 handling, pacing, splitting, crash and Redis-outage recovery, dead
//! letters and the inbound rate limit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hub_bridge::config::{Config, HttpConfig, RedisConfig};
use hub_bridge::service::{start, Running};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::registry::Section;
use hub_bridge_sdk::{AgentProfile, Bridge};
use hub_bridge_telegram::{TelegramBridge, TelegramConfig, TelegramLink};
use hub_bridge_testkit::fake_telegram::{
    BotMessage, Call, ChatRef, Failure, FakeTelegram, Limits, MemberStatus, UserRef,
};
use hub_bridge_testkit::hub::{publish, HubSpy, Seen};
use hub_bridge_testkit::process::ServiceProcess;
use hub_bridge_testkit::redis_server::RedisServer;
use serde_json::{json, Value};

const TOKEN: &str = "123456:TEST-token_abc";
const CHANNEL: &str = "9f3c2a1d-5e8f-4b6a-9c1e-2a3b4c5d6e7f";
const CHANNEL_B: &str = "c0ffee00-1111-4222-8333-444455556666";
const GROUP: i64 = -1_001_234_567_890;
const OTHER: i64 = -1_009_876_543_210;
const THIRD: i64 = -1_005_555_555_555;
const AGENT: &str = "backend-architect";
const WAIT: Duration = Duration::from_secs(10);

fn alice() -> UserRef {
    UserRef::new(1001, "Alice")
        .last_name("Liddell")
        .username("alice")
}

fn bob() -> UserRef {
    UserRef::new(2002, "Bob")
}

fn group() -> ChatRef {
    ChatRef::supergroup(GROUP, "Hub test")
}

fn link(channel: &str, chat: i64) -> TelegramLink {
    TelegramLink {
        channel: channel.into(),
        chat,
    }
}

fn hub_channel(channel: &str) -> String {
    format!("pubsub:channel:{channel}")
}

/// A service with the Telegram bridge, its redis-server, the fake Bot API and a hub spy.
struct Harness {
    redis: RedisServer,
    tg: FakeTelegram,
    spy: HubSpy,
    service: Option<Running>,
}

impl Harness {
    /// Links CHANNEL to GROUP and OTHER, CHANNEL_B to THIRD; sends fast unless `adjust` says
    /// otherwise (pacing has its own test).
    async fn start(adjust: impl FnOnce(&mut Config)) -> Harness {
        let redis = RedisServer::start();
        let tg = FakeTelegram::start(TOKEN).await;
        Self::start_configured(redis, tg, adjust).await
    }

    /// The service with the default config on a redis-server and a fake the test prepared.
    async fn start_on(redis: RedisServer, tg: FakeTelegram) -> Harness {
        Self::start_configured(redis, tg, |_| {}).await
    }

    async fn start_configured(
        redis: RedisServer,
        tg: FakeTelegram,
        adjust: impl FnOnce(&mut Config),
    ) -> Harness {
        let spy = HubSpy::start(&redis.url()).await;
        let mut config = config(&redis, &tg);
        adjust(&mut config);
        let service = start(config).await.expect("the service starts");
        wait_ready(&service).await;
        Harness {
            redis,
            tg,
            spy,
            service: Some(service),
        }
    }

    fn url(&self) -> String {
        self.redis.url()
    }

    /// Publishes an agent's channel event in the envelope agents' clients use.
    async fn channel_event(&self, channel: &str, event: Value) {
        let sender = event
            .get("message")
            .and_then(|m| m.get("senderId"))
            .or_else(|| event.get("agentId"))
            .cloned();
        let mut envelope = json!({"event": event, "timestamp": now(), "channelId": channel});
        if let Some(sender) = sender {
            envelope["senderId"] = sender;
        }
        publish(&self.url(), &hub_channel(channel), &envelope).await;
    }

    /// An agent's `channel.message`.
    async fn agent_says(&self, channel: &str, agent: &str, id: &str, content: &str) {
        self.channel_event(
            channel,
            json!({"type": "channel.message", "channelId": channel, "message": {
                "id": id, "content": content, "senderId": agent, "timestamp": now()}}),
        )
        .await;
    }

    /// Waits for the person's message from `chat` to be published on CHANNEL; returns the event.
    async fn published_message(&self, chat: i64, message_id: i32) -> Value {
        let source = format!("{chat}:{message_id}");
        self.spy
            .wait_for(&format!("channel.message from {source}"), WAIT, |s| {
                s.kind() == "channel.message"
                    && s.event()["message"]["externalSourceId"] == source.as_str()
            })
            .await
            .event()
            .clone()
    }

    /// Waits for the agent message `text` to show up in `chat` and returns it.
    async fn shown(&self, chat: i64, text: &str) -> BotMessage {
        let tg = self.tg.clone();
        self.tg
            .wait_until(&format!("`{text}` in {chat}"), WAIT, |tg| {
                tg.messages_in(chat).iter().any(|m| m.plain.contains(text))
            })
            .await;
        tg.messages_in(chat)
            .into_iter()
            .find(|m| m.plain.contains(text))
            .expect("shown")
    }

    async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await;
        }
    }
}

fn config(redis: &RedisServer, tg: &FakeTelegram) -> Config {
    let mut agents = BTreeMap::new();
    agents.insert(
        AGENT.to_owned(),
        AgentProfile {
            name: Some("Backend Architect".into()),
            avatar: Some("🤖".into()),
            avatar_url: None,
            api_token: None,
        },
    );
    Config {
        redis: RedisConfig {
            url: Some(Secret::new(redis.url())),
            ..RedisConfig::default()
        },
        http: HttpConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..HttpConfig::default()
        },
        agents,
        bridges: vec![Section::new(TelegramConfig {
            dm_agent: Some("helper".into()),
            poll_timeout_secs: 1,
            chat_sends_per_sec: 50,
            group_sends_per_min: 1000,
            sends_per_sec: 100,
            ..TelegramConfig::new(
                Secret::new(TOKEN),
                tg.api_url(),
                vec![
                    link(CHANNEL, GROUP),
                    link(CHANNEL, OTHER),
                    link(CHANNEL_B, THIRD),
                ],
            )
        })],
        ..Config::default()
    }
}

fn telegram(config: &mut Config) -> &mut TelegramConfig {
    config
        .bridge_mut::<TelegramConfig>()
        .expect("telegram section")
}

async fn wait_ready(service: &Running) {
    let deadline = Instant::now() + WAIT;
    while !service.health.is_ready() {
        assert!(
            Instant::now() < deadline,
            "service not ready: {:?}",
            service.health.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now() -> i64 {
    hub_bridge_sdk::event::now_millis()
}

fn chat_of(call: &Call) -> i64 {
    match &call.body["chat_id"] {
        Value::Number(n) => n.as_i64().unwrap_or_default(),
        Value::String(s) => s.parse().unwrap_or_default(),
        _ => 0,
    }
}

/// Successful calls of `method` to `chat`.
fn calls_to(tg: &FakeTelegram, method: &str, chat: i64) -> Vec<Call> {
    tg.calls_of(method)
        .into_iter()
        .filter(|c| chat_of(c) == chat && c.status == 200)
        .collect()
}

fn is_uuid(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4
}

// ---------------------------------------------------------------------------------------------
// Telegram -> hub
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_message_becomes_a_superset_channel_message_with_join_and_presence() {
    let h = Harness::start(|_| {}).await;
    let update = h.tg.text_message(&group(), &alice(), "hello hub");
    let message_id = update.message_id();
    let sent_date = update.message()["date"].as_i64().unwrap();
    h.tg.inject(update);

    let seen = h
        .spy
        .wait_for("channel.message", WAIT, |s| s.kind() == "channel.message")
        .await;
    assert_eq!(seen.channel, hub_channel(CHANNEL));
    assert_eq!(seen.json["channelId"], CHANNEL);
    assert_eq!(seen.json["senderId"], "external:telegram:1001");
    assert_eq!(seen.json["origin"], format!("telegram:{GROUP}"));
    let event = seen.event();
    assert_eq!(event["channelId"], CHANNEL);
    let message = &event["message"];
    assert!(is_uuid(message["id"].as_str().unwrap()), "{message}");
    assert_eq!(message["content"], "hello hub");
    assert_eq!(message["senderId"], "external:telegram:1001");
    assert_eq!(message["authorId"], "external:telegram:1001");
    assert_eq!(message["authorType"], "external");
    assert_eq!(message["authorName"], "Alice Liddell (@alice)");
    assert_eq!(message["externalPlatform"], "telegram");
    assert_eq!(message["externalSourceId"], format!("{GROUP}:{message_id}"));
    assert_eq!(message["timestamp"], message["createdAt"]);
    let timestamp = message["timestamp"].as_i64().unwrap();
    assert!((sent_date * 1000..sent_date * 1000 + 1000).contains(&timestamp));
    for absent in ["parentMessageId", "threadId", "contentBlocks"] {
        assert!(message.get(absent).is_none(), "{absent} in {message}");
    }

    // The hub loop (not the bridge) makes the first message a join and a presence transition.
    let join = h
        .spy
        .wait_for("member join", WAIT, |s| s.kind() == "channel.member.join")
        .await;
    assert_eq!(join.event()["member"]["agentId"], "external:telegram:1001");
    let presence = h
        .spy
        .wait_for("presence", WAIT, |s| s.kind() == "channel.presence")
        .await;
    assert_eq!(
        presence.event()["presence"]["agentId"],
        "external:telegram:1001"
    );
    assert_eq!(presence.event()["presence"]["status"], "online");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_carries_the_parent_and_its_thread() {
    let h = Harness::start(|_| {}).await;
    h.agent_says(CHANNEL, AGENT, "m-root", "Shall we ship?")
        .await;
    let root = h.shown(GROUP, "Shall we ship?").await;
    h.channel_event(
        CHANNEL,
        json!({"type": "thread.create", "channelId": CHANNEL, "thread": {
            "id": "t-1", "parentMessageId": "m-root", "createdBy": AGENT, "createdAt": now(),
            "replyCount": 0}}),
    )
    .await;

    // A reply to a person's message: the parent is that message's hub id.
    let first = h.tg.text_message(&group(), &bob(), "first");
    let first_id = first.message_id();
    h.tg.inject(first);
    let first_hub_id = h.published_message(GROUP, first_id).await["message"]["id"].clone();
    let reply =
        h.tg.text_message(&group(), &alice(), "agreed")
            .reply_to(first_id, &bob());
    let reply_id = reply.message_id();
    h.tg.inject(reply);
    let event = h.published_message(GROUP, reply_id).await;
    assert_eq!(event["message"]["parentMessageId"], first_hub_id);
    assert!(event["message"].get("threadId").is_none());

    // A reply to the message a thread hangs on continues that thread. The thread is recorded
    // when the hub loop routes thread.create, so give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_thread =
        h.tg.text_message(&group(), &alice(), "yes, ship it")
            .reply_to(root.message_id, &h.tg.bot());
    let in_thread_id = in_thread.message_id();
    h.tg.inject(in_thread);
    let event = h.published_message(GROUP, in_thread_id).await;
    assert_eq!(event["message"]["parentMessageId"], "m-root");
    assert_eq!(event["message"]["threadId"], "t-1");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_becomes_message_edit_on_the_mapped_hub_id() {
    let h = Harness::start(|_| {}).await;
    let original = h.tg.text_message(&group(), &alice(), "teh plan");
    let id = original.message_id();
    h.tg.inject(original.clone());
    let hub_id = h.published_message(GROUP, id).await["message"]["id"].clone();
    h.tg.inject(original.edited("the plan"));
    let edit = h
        .spy
        .wait_for("edit", WAIT, |s| s.kind() == "channel.message.edit")
        .await;
    assert_eq!(edit.channel, hub_channel(CHANNEL));
    assert_eq!(edit.json["origin"], format!("telegram:{GROUP}"));
    let event = edit.event();
    assert_eq!(event["channelId"], CHANNEL);
    assert_eq!(event["messageId"], hub_id);
    assert_eq!(event["content"], "the plan");
    assert!(event["editedAt"].as_i64().unwrap() > 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_become_reaction_add_and_remove() {
    let h = Harness::start(|_| {}).await;
    let message = h.tg.text_message(&group(), &alice(), "react to me");
    let id = message.message_id();
    h.tg.inject(message);
    let hub_id = h.published_message(GROUP, id).await["message"]["id"].clone();

    h.tg.inject(h.tg.reaction(&group(), &bob(), id, &[], &["👍"]));
    let add = h
        .spy
        .wait_for("reaction add", WAIT, |s| s.kind() == "channel.reaction.add")
        .await;
    assert_eq!(
        add.event(),
        &json!({"type": "channel.reaction.add", "channelId": CHANNEL, "messageId": hub_id,
                "emoji": "👍", "agentId": "external:telegram:2002"})
    );
    h.tg.inject(h.tg.reaction(&group(), &bob(), id, &["👍"], &["🔥"]));
    let remove = h
        .spy
        .wait_for("reaction remove", WAIT, |s| {
            s.kind() == "channel.reaction.remove"
        })
        .await;
    assert_eq!(
        remove.event(),
        &json!({"type": "channel.reaction.remove", "channelId": CHANNEL, "messageId": hub_id,
                "emoji": "👍", "agentId": "external:telegram:2002"})
    );
    let adds = h
        .spy
        .wait_count("second reaction add", 2, WAIT, |s| {
            s.kind() == "channel.reaction.add"
        })
        .await;
    assert_eq!(adds[1].event()["emoji"], "🔥");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_become_member_events() {
    let h = Harness::start(|_| {}).await;
    let joined = h.tg.new_chat_members(&group(), &alice(), &[bob()]);
    let join_date = joined.message()["date"].as_i64().unwrap();
    h.tg.inject(joined);
    let join = h
        .spy
        .wait_for("join", WAIT, |s| s.kind() == "channel.member.join")
        .await;
    assert_eq!(join.json["origin"], format!("telegram:{GROUP}"));
    assert_eq!(
        join.event(),
        &json!({"type": "channel.member.join", "channelId": CHANNEL, "member": {
            "agentId": "external:telegram:2002", "joinedAt": join_date * 1000, "role": "member"}})
    );

    let left = h.tg.left_chat_member(&group(), &bob(), &bob());
    let leave_date = left.message()["date"].as_i64().unwrap();
    h.tg.inject(left);
    let leave = h
        .spy
        .wait_for("leave", WAIT, |s| s.kind() == "channel.member.leave")
        .await;
    assert_eq!(
        leave.event(),
        &json!({"type": "channel.member.leave", "channelId": CHANNEL,
                "agentId": "external:telegram:2002", "leftAt": leave_date * 1000})
    );

    // The chat_member update (admin bots get it) for someone else joining.
    let carol = UserRef::new(3003, "Carol");
    h.tg.inject(h.tg.chat_member(
        &group(),
        &carol,
        &carol,
        MemberStatus::Left,
        MemberStatus::Member,
    ));
    let joins = h
        .spy
        .wait_count("second join", 2, WAIT, |s| {
            s.kind() == "channel.member.join"
        })
        .await;
    assert_eq!(
        joins[1].event()["member"]["agentId"],
        "external:telegram:3003"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_chats_and_the_bots_own_messages_are_ignored_and_counted() {
    let h = Harness::start(|_| {}).await;
    let stranger = ChatRef::group(-4242, "Not linked");
    h.tg.inject(h.tg.text_message(&stranger, &alice(), "nobody hears this"));
    h.tg.inject(h.tg.text_message(&group(), &h.tg.bot(), "my own echo"));
    let marker =
        h.tg.text_message(&group(), &alice(), "after the ignored ones");
    let marker_id = marker.message_id();
    h.tg.inject(marker);
    h.published_message(GROUP, marker_id).await;

    let messages = h.spy.matching(|s| s.kind() == "channel.message");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let service = h.service.as_ref().expect("running");
    let metrics = reqwest::get(format!("http://{}/metrics", service.http_addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    for reason in ["unlinked_chat", "own_message"] {
        let line = metrics
            .lines()
            .find(|l| l.contains("hub_bridge_ignored_total") && l.contains(reason))
            .unwrap_or_else(|| panic!("no ignored metric for {reason}:\n{metrics}"));
        assert!(line.ends_with(" 1"), "{line}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_message_in_a_minute_is_not_published_and_the_person_is_told_once() {
    let h = Harness::start(|_| {}).await;
    let mut ids = Vec::new();
    for n in 1..=12 {
        let update =
            h.tg.text_message(&group(), &alice(), &format!("message {n}"));
        ids.push(update.message_id());
        h.tg.inject(update);
    }
    let notice = h.shown(GROUP, "too fast").await;
    assert!(notice.plain.contains("Alice"), "{}", notice.plain);
    assert!(notice.plain.contains("10 per minute"), "{}", notice.plain);
    // Let everything that could be published be published.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let published: Vec<String> = h
        .spy
        .matching(|s| s.kind() == "channel.message")
        .iter()
        .map(|s| s.event()["message"]["content"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=10).map(|n| format!("message {n}")).collect();
    assert_eq!(published, expected);
    let notices =
        h.tg.messages_in(GROUP)
            .into_iter()
            .filter(|m| m.plain.contains("too fast"))
            .count();
    assert_eq!(notices, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_commands_count_against_the_message_limit() {
    let h = Harness::start(|config| config.limits.message = 3).await;
    let updates: Vec<i64> = (0..5)
        .map(|_| {
            let update =
                h.tg.text_message(&ChatRef::private(&bob()), &bob(), "/help");
            h.tg.inject(update)
        })
        .collect();
    h.tg.wait_until("every command acknowledged", WAIT, |tg| {
        let pending = tg.pending_updates();
        updates.iter().all(|id| !pending.contains(id))
    })
    .await;
    // A direct message queued after the answers marks the end of what the commands caused.
    publish(
        &h.url(),
        "pubsub:agent:external:telegram:2002",
        &json!({"type": "agent.direct_message", "data": {"fromAgent": AGENT,
                "content": "end marker"}, "timestamp": now()}),
    )
    .await;
    h.shown(2002, "end marker").await;
    let shown = shown_texts(&h.tg, 2002);
    let too_fast = shown.iter().filter(|t| t.contains("too fast")).count();
    assert_eq!(too_fast, 1, "{shown:#?}");
    // Three answers, the notice, and the marker.
    assert_eq!(shown.len(), 3 + 1 + 1, "{shown:#?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_retried_after_a_store_error_counts_once_against_the_limit() {
    let h = Harness::start(|_| {}).await;
    let parent = h.tg.text_message(&group(), &alice(), "the parent");
    let parent_id = parent.message_id();
    h.tg.inject(parent);
    let published = h.published_message(GROUP, parent_id).await;
    let parent_hub_id = published["message"]["id"].as_str().expect("id").to_owned();
    let counter = "openclaw:ratelimit:message:external:telegram:1001";
    let mut redis = h.redis.connection().await;
    let count = |redis: &mut redis::aio::MultiplexedConnection| {
        let mut redis = redis.clone();
        async move {
            let value: Option<String> = redis::cmd("GET")
                .arg(counter)
                .query_async(&mut redis)
                .await
                .expect("GET");
            value
        }
    };
    assert_eq!(count(&mut redis).await.as_deref(), Some("1"));

    // A key of the wrong type where the reply's thread is looked up: every attempt to handle the
    // reply fails with an error reply (after the limit check) until it is removed.
    let blocker = format!("openclaw:bridge:threadof:{parent_hub_id}");
    let _: () = redis::cmd("HSET")
        .arg(&blocker)
        .arg("f")
        .arg("v")
        .query_async(&mut redis)
        .await
        .expect("HSET");
    let reply =
        h.tg.text_message(&group(), &alice(), "the reply")
            .reply_to(parent_id, &alice());
    let reply_id = reply.message_id();
    let update_id = h.tg.inject(reply);
    h.tg.wait_until("the reply polled", WAIT, |tg| {
        tg.calls_of("getUpdates").iter().any(|c| {
            c.response
                .as_array()
                .is_some_and(|a| a.iter().any(|u| u["update_id"] == update_id))
        })
    })
    .await;
    // Several attempts fail meanwhile (the retries start at 250 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(h.tg.pending_updates().contains(&update_id));
    let _: () = redis::cmd("DEL")
        .arg(&blocker)
        .query_async(&mut redis)
        .await
        .expect("DEL");
    h.published_message(GROUP, reply_id).await;
    assert_eq!(count(&mut redis).await.as_deref(), Some("2"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_go_to_the_default_then_the_chosen_agent() {
    let h = Harness::start(|_| {}).await;
    let chat = ChatRef::private(&bob());
    let dms = |agent: &'static str| {
        move |s: &Seen| {
            s.channel == format!("pubsub:agent:{agent}") && s.kind() == "agent.direct_message"
        }
    };

    h.tg.inject(h.tg.text_message(&chat, &bob(), "hello?"));
    let first = h
        .spy
        .wait_for("dm to the default", WAIT, dms("helper"))
        .await;
    assert_eq!(
        first.json["data"],
        json!({"fromAgent": "external:telegram:2002", "content": "hello?"})
    );
    assert!(first.json["timestamp"].as_i64().unwrap() > 0);

    h.tg.inject(h.tg.text_message(&chat, &bob(), "/dm backend-architect need a review"));
    h.tg.inject(h.tg.text_message(&chat, &bob(), "it is PR 42"));
    let chosen = h
        .spy
        .wait_count("dms to the chosen agent", 2, WAIT, dms(AGENT))
        .await;
    assert_eq!(chosen[0].json["data"]["content"], "need a review");
    assert_eq!(chosen[1].json["data"]["content"], "it is PR 42");
    assert_eq!(
        chosen[1].json["data"]["fromAgent"],
        "external:telegram:2002"
    );
    assert_eq!(h.spy.matching(dms("helper")).len(), 1);

    h.tg.inject(h.tg.text_message(&chat, &bob(), "/agents"));
    let list = h.shown(bob().id, "Agents you can reach").await;
    assert!(
        list.plain
            .contains("🤖 Backend Architect: /dm backend-architect"),
        "{}",
        list.plain
    );
    assert!(
        list.plain.contains("Your messages go to backend-architect"),
        "{}",
        list.plain
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Hub -> Telegram
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_message_is_headed_and_rendered_to_html_in_every_linked_chat() {
    let h = Harness::start(|_| {}).await;
    h.agent_says(
        CHANNEL,
        AGENT,
        "m-1",
        "**Deploy** done: see `main` and _docs_",
    )
    .await;
    for chat in [GROUP, OTHER] {
        let shown = h.shown(chat, "Deploy done").await;
        assert_eq!(
            shown.text,
            "🤖 <b>Backend Architect</b>\n<b>Deploy</b> done: see <code>main</code> and <i>docs</i>"
        );
        assert_eq!(shown.parse_mode.as_deref(), Some("HTML"));
        assert_eq!(
            shown.plain,
            "🤖 Backend Architect\nDeploy done: see main and docs"
        );
    }
    // Without a directory entry: the message's authorName, else the id.
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message", "channelId": CHANNEL, "message": {
            "id": "m-2", "content": "named", "authorId": "qa-bot", "authorName": "QA Bot",
            "createdAt": now()}}),
    )
    .await;
    assert_eq!(h.shown(GROUP, "named").await.text, "<b>QA Bot</b>\nnamed");
    h.agent_says(CHANNEL, "anonymous-agent", "m-3", "plain id")
        .await;
    assert_eq!(
        h.shown(GROUP, "plain id").await.text,
        "<b>anonymous-agent</b>\nplain id"
    );
    // CHANNEL_B's chat is not linked to CHANNEL.
    assert!(calls_to(&h.tg, "sendMessage", THIRD).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reactions_and_deletes_reach_the_relayed_message() {
    let h = Harness::start(|_| {}).await;
    h.agent_says(CHANNEL, AGENT, "m-1", "first draft").await;
    let shown = h.shown(GROUP, "first draft").await;
    h.shown(OTHER, "first draft").await;

    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message.edit", "channelId": CHANNEL, "messageId": "m-1",
               "content": "final **text**", "editedAt": now()}),
    )
    .await;
    let edits = h.tg.wait_for("editMessageText", 2, WAIT).await;
    let edit = edits
        .iter()
        .find(|c| chat_of(c) == GROUP)
        .expect("edit in GROUP");
    assert_eq!(edit.body["message_id"], shown.message_id);
    assert_eq!(
        edit.body["text"],
        "🤖 <b>Backend Architect</b>\nfinal <b>text</b>"
    );
    assert_eq!(edit.body["parse_mode"], "HTML");

    h.channel_event(
        CHANNEL,
        json!({"type": "channel.reaction.add", "channelId": CHANNEL, "messageId": "m-1",
               "emoji": "👍", "agentId": AGENT}),
    )
    .await;
    let reactions = h.tg.wait_for("setMessageReaction", 2, WAIT).await;
    let reaction = reactions
        .iter()
        .find(|c| chat_of(c) == GROUP)
        .expect("in GROUP");
    assert_eq!(reaction.body["message_id"], shown.message_id);
    assert_eq!(
        reaction.body["reaction"],
        json!([{"type": "emoji", "emoji": "👍"}])
    );
    assert_eq!(
        h.tg.reactions_on(GROUP, shown.message_id),
        vec!["👍".to_owned()]
    );

    h.channel_event(
        CHANNEL,
        json!({"type": "channel.reaction.remove", "channelId": CHANNEL, "messageId": "m-1",
               "emoji": "👍", "agentId": AGENT}),
    )
    .await;
    h.tg.wait_for("setMessageReaction", 4, WAIT).await;
    assert!(h.tg.reactions_on(GROUP, shown.message_id).is_empty());

    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message.delete", "channelId": CHANNEL, "messageId": "m-1",
               "deletedAt": now()}),
    )
    .await;
    let deletes = h.tg.wait_for("deleteMessage", 2, WAIT).await;
    let delete = deletes
        .iter()
        .find(|c| chat_of(c) == GROUP)
        .expect("in GROUP");
    assert_eq!(delete.body["message_id"], shown.message_id);
    assert!(h.tg.messages_in(GROUP).is_empty());
    assert!(h.tg.messages_in(OTHER).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_refreshed_until_stopped_or_ten_seconds() {
    let h = Harness::start(|config| telegram(config).links = vec![link(CHANNEL, GROUP)]).await;
    let typing = |started: bool| {
        json!({"type": "channel.typing", "channelId": CHANNEL, "agentId": AGENT,
               "started": started})
    };
    h.channel_event(CHANNEL, typing(true)).await;
    let first = h.tg.wait_for("sendChatAction", 1, WAIT).await;
    assert_eq!(first[0].body["action"], "typing");
    assert_eq!(chat_of(&first[0]), GROUP);
    let refreshed =
        h.tg.wait_for("sendChatAction", 2, Duration::from_secs(6))
            .await;
    let gap = refreshed[1].at - refreshed[0].at;
    assert!(
        gap >= Duration::from_millis(3500) && gap <= Duration::from_millis(5000),
        "{gap:?}"
    );
    h.channel_event(CHANNEL, typing(false)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.tg.calls_of("sendChatAction").len(),
        2,
        "refreshed after stop"
    );

    // Never stopped: refreshed at 0, 4 and 8 s, then it lapses at 10 s.
    let started = Instant::now();
    h.channel_event(CHANNEL, typing(true)).await;
    h.tg.wait_for("sendChatAction", 5, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(14).saturating_sub(started.elapsed())).await;
    assert_eq!(
        h.tg.calls_of("sendChatAction").len(),
        5,
        "typing outlived 10 s"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_messages_reply_to_the_mapped_parent() {
    let h = Harness::start(|_| {}).await;
    h.agent_says(CHANNEL, AGENT, "m-parent", "Root question")
        .await;
    let parent = h.shown(GROUP, "Root question").await;
    let parent_other = h.shown(OTHER, "Root question").await;
    h.channel_event(
        CHANNEL,
        json!({"type": "thread.create", "channelId": CHANNEL, "thread": {
            "id": "t-9", "parentMessageId": "m-parent", "createdBy": AGENT, "createdAt": now(),
            "replyCount": 0}}),
    )
    .await;
    h.channel_event(
        CHANNEL,
        json!({"type": "thread.message", "channelId": CHANNEL, "threadId": "t-9", "message": {
            "id": "m-reply", "content": "Threaded answer", "senderId": AGENT, "timestamp": now(),
            "threadId": "t-9"}}),
    )
    .await;
    let reply = h.shown(GROUP, "Threaded answer").await;
    assert_eq!(reply.reply_to, Some(parent.message_id));
    assert_eq!(
        h.shown(OTHER, "Threaded answer").await.reply_to,
        Some(parent_other.message_id)
    );

    // A plain reply (parentMessageId) works the same way.
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message", "channelId": CHANNEL, "message": {
            "id": "m-reply-2", "content": "Direct reply", "senderId": AGENT, "timestamp": now(),
            "parentMessageId": "m-parent"}}),
    )
    .await;
    assert_eq!(
        h.shown(GROUP, "Direct reply").await.reply_to,
        Some(parent.message_id)
    );
    h.stop().await;
}

/// A supergroup with topics, linked to CHANNEL in the forum test.
const FORUM: i64 = -1_007_777_777_777;

fn forum() -> ChatRef {
    ChatRef::supergroup(FORUM, "Hub forum").forum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_forum_chat_a_thread_becomes_a_topic_elsewhere_replies() {
    let h = Harness::start(|config| telegram(config).links.push(link(CHANNEL, FORUM))).await;
    h.tg.know_chat(&forum());
    let thread_create = |id: &str, parent: &str| {
        json!({"type": "thread.create", "channelId": CHANNEL, "thread": {
            "id": id, "parentMessageId": parent, "createdBy": AGENT, "createdAt": now(),
            "replyCount": 0}})
    };
    let thread_message = |thread: &str, id: &str, content: &str| {
        json!({"type": "thread.message", "channelId": CHANNEL, "threadId": thread, "message": {
            "id": id, "content": content, "senderId": AGENT, "timestamp": now(),
            "threadId": thread}})
    };
    h.agent_says(CHANNEL, AGENT, "m-parent", "Shall we **ship**\nv2?")
        .await;
    let parent = h.shown(GROUP, "Shall we ship").await;
    let parent_forum = h.shown(FORUM, "Shall we ship").await;
    h.channel_event(CHANNEL, thread_create("t-7", "m-parent"))
        .await;
    h.channel_event(CHANNEL, thread_message("t-7", "m-in-7", "Threaded answer"))
        .await;

    // The forum chat gets a topic named after the parent, and the answer goes there.
    let created = h.tg.wait_for("createForumTopic", 1, WAIT).await;
    assert_eq!(created.len(), 1);
    assert_eq!(chat_of(&created[0]), FORUM);
    assert_eq!(created[0].body["name"], "Shall we ship v2?");
    let topic = created[0].response["message_thread_id"].as_i64().unwrap() as i32;
    assert_eq!(
        created[0].response,
        json!({"message_thread_id": topic, "name": "Shall we ship v2?", "icon_color": 7322096})
    );
    let answer = h.shown(FORUM, "Threaded answer").await;
    assert_eq!(answer.thread_id, Some(topic));
    assert_eq!(answer.reply_to, None);
    // The fake shows a message before it records the call that sent it: wait for the record.
    let is_answer = |call: &Call| call.response["message_id"] == answer.message_id;
    h.tg.wait_until("the answer's sendMessage", WAIT, |tg| {
        calls_to(tg, "sendMessage", FORUM).iter().any(is_answer)
    })
    .await;
    let sent = calls_to(&h.tg, "sendMessage", FORUM);
    let sent = sent.iter().find(|call| is_answer(call)).unwrap();
    assert_eq!(sent.body["message_thread_id"], topic);
    assert!(sent.body.get("reply_parameters").is_none(), "{}", sent.body);
    assert_eq!(sent.response["message_thread_id"], topic);

    // The other chats are not forums: they reply to the parent as before.
    for (chat, parent_id) in [
        (GROUP, parent.message_id),
        (OTHER, h.shown(OTHER, "Shall we ship").await.message_id),
    ] {
        let reply = h.shown(chat, "Threaded answer").await;
        assert_eq!(reply.reply_to, Some(parent_id), "in {chat}");
        assert_eq!(reply.thread_id, None, "in {chat}");
        let sent = calls_to(&h.tg, "sendMessage", chat);
        assert!(sent.last().unwrap().body.get("message_thread_id").is_none());
    }

    // A channel.message with the threadId goes to the topic too.
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message", "channelId": CHANNEL, "message": {
            "id": "m-in-7b", "content": "Also in the thread", "senderId": AGENT,
            "timestamp": now(), "threadId": "t-7"}}),
    )
    .await;
    let also = h.shown(FORUM, "Also in the thread").await;
    assert_eq!((also.thread_id, also.reply_to), (Some(topic), None));

    // An edit that grows the answer past one message: the added part goes to the topic too.
    let grown = format!(
        "Threaded answer, grown:\n\n{}",
        "more words here ".repeat(400)
    );
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message.edit", "channelId": CHANNEL, "messageId": "m-in-7",
            "content": grown, "editedAt": now()}),
    )
    .await;
    let grown_parts = |tg: &FakeTelegram| {
        tg.messages_in(FORUM)
            .into_iter()
            .filter(|m| m.plain.contains("more words here"))
            .collect::<Vec<_>>()
    };
    h.tg.wait_until("the grown answer's second part", WAIT, |tg| {
        grown_parts(tg).len() >= 2
    })
    .await;
    for part in grown_parts(&h.tg) {
        assert_eq!(
            (part.thread_id, part.reply_to),
            (Some(topic), None),
            "{}",
            part.plain
        );
    }

    // A person's message in the topic comes back to the hub in the thread.
    let update =
        h.tg.text_message(&forum(), &alice(), "from the topic")
            .thread(topic);
    let update_id = update.message_id();
    h.tg.inject(update);
    let event = h.published_message(FORUM, update_id).await;
    assert_eq!(event["message"]["threadId"], "t-7");
    assert!(event["message"].get("parentMessageId").is_none());

    // Without the right to manage topics the thread falls back to replies, and nothing is lost.
    h.tg.fail_next(
        "createForumTopic",
        Failure::BadRequest("not enough rights to create a topic".into()),
    );
    h.channel_event(CHANNEL, thread_create("t-8", "m-parent"))
        .await;
    h.channel_event(CHANNEL, thread_message("t-8", "m-in-8", "Fallback answer"))
        .await;
    let fallback = h.shown(FORUM, "Fallback answer").await;
    assert_eq!(fallback.reply_to, Some(parent_forum.message_id));
    assert_eq!(fallback.thread_id, None);
    let attempts = h.tg.calls_of("createForumTopic");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1].status, 400);

    // Whether a chat is a forum was asked once per chat.
    for chat in [FORUM, GROUP, OTHER] {
        assert_eq!(
            calls_to(&h.tg, "getChat", chat).len(),
            1,
            "getChat of {chat}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_a_channel_sends_a_notice_and_stops_the_link() {
    let h = Harness::start(|_| {}).await;
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.archive", "channelId": CHANNEL, "archivedBy": AGENT,
               "archivedAt": now()}),
    )
    .await;
    for chat in [GROUP, OTHER] {
        let notice = h.shown(chat, "was archived").await;
        assert!(
            notice.plain.contains("archived by Backend Architect"),
            "{}",
            notice.plain
        );
        assert!(
            notice.plain.contains("no longer relayed"),
            "{}",
            notice.plain
        );
    }
    h.agent_says(CHANNEL, AGENT, "m-after", "after the archive")
        .await;
    let update = h.tg.text_message(&group(), &alice(), "anyone there?");
    h.tg.inject(update);
    // CHANNEL_B still relays, which also shows the agent message was processed by now.
    h.agent_says(CHANNEL_B, AGENT, "m-b", "other channel").await;
    h.shown(THIRD, "other channel").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for chat in [GROUP, OTHER] {
        assert!(h
            .tg
            .messages_in(chat)
            .iter()
            .all(|m| !m.plain.contains("after the archive")));
    }
    assert!(h
        .spy
        .matching(
            |s| s.kind() == "channel.message" && s.event()["message"]["content"] == "anyone there?"
        )
        .is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_reaches_every_linked_chat() {
    let h = Harness::start(|_| {}).await;
    publish(
        &h.url(),
        "pubsub:global",
        &json!({"type": "system.announcement", "data": {"message": "Deploy at 5 <UTC> & later",
                "severity": "info"}}),
    )
    .await;
    for chat in [GROUP, OTHER, THIRD] {
        let notice = h.shown(chat, "Deploy at 5").await;
        assert_eq!(notice.plain, "📢 Deploy at 5 <UTC> & later");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_to_a_person_is_a_private_message() {
    let h = Harness::start(|_| {}).await;
    publish(
        &h.url(),
        "pubsub:agent:external:telegram:1001",
        &json!({"type": "agent.direct_message", "data": {"fromAgent": AGENT,
                "content": "Hi **Alice**"}, "timestamp": now()}),
    )
    .await;
    let shown = h.shown(1001, "Hi Alice").await;
    assert_eq!(shown.text, "🤖 <b>Backend Architect</b>\nHi <b>Alice</b>");
    // A direct message to an agent is not for Telegram.
    publish(
        &h.url(),
        "pubsub:agent:helper",
        &json!({"type": "agent.direct_message", "data": {"fromAgent": AGENT, "content": "x"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.tg.calls_of("sendMessage").len(), 1);

    // A direct message to a group's id (negative) never reaches the group: it is refused, kept
    // as a dead letter, and the agent is told.
    publish(
        &h.url(),
        &format!("pubsub:agent:external:telegram:{GROUP}"),
        &json!({"type": "agent.direct_message", "data": {"fromAgent": AGENT,
                "content": "into the group?"}, "timestamp": now()}),
    )
    .await;
    let notice = h
        .spy
        .wait_for("agent notification", WAIT, |s| {
            s.channel == format!("pubsub:agent:{AGENT}") && s.kind() == "agent.notification"
        })
        .await;
    let content = notice.json["data"]["content"].as_str().unwrap_or_default();
    assert!(content.contains("not a Telegram user"), "{content}");
    assert_eq!(dead_letters(&h).await.len(), 1);
    assert_eq!(h.tg.calls_of("sendMessage").len(), 1);
    assert!(h.tg.messages_in(GROUP).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_echo_to_the_source_chat_while_the_other_chat_gets_it() {
    let h = Harness::start(|_| {}).await;
    let update = h.tg.text_message(&group(), &alice(), "hello both");
    let id = update.message_id();
    h.tg.inject(update.clone());
    h.published_message(GROUP, id).await;
    let relayed = h.shown(OTHER, "hello both").await;
    // A person's name carries their platform (SPEC 9: a person never appears as an agent).
    assert_eq!(
        relayed.text,
        "<b>Alice Liddell (@alice) (Telegram)</b>\nhello both"
    );
    // An edit from the source chat is relayed the same way.
    h.tg.inject(update.edited("hello all"));
    let edited = h.shown(OTHER, "hello all").await;
    assert_eq!(edited.message_id, relayed.message_id);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        calls_to(&h.tg, "sendMessage", GROUP).is_empty(),
        "echoed to the source chat"
    );
    assert!(h
        .tg
        .calls_of("editMessageText")
        .iter()
        .all(|c| chat_of(c) != GROUP));
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Delivery guarantees
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_waited_out_and_each_message_delivered_once_in_order() {
    let h = Harness::start(|config| telegram(config).links = vec![link(CHANNEL, GROUP)]).await;
    h.tg.fail_next("sendMessage", Failure::RetryAfter(2));
    for (n, text) in ["one", "two", "three"].iter().enumerate() {
        h.agent_says(CHANNEL, AGENT, &format!("m-{n}"), text).await;
    }
    h.tg.wait_for("sendMessage", 3, WAIT).await;
    let shown: Vec<String> =
        h.tg.messages_in(GROUP)
            .into_iter()
            .map(|m| m.plain)
            .collect();
    assert_eq!(
        shown,
        ["one", "two", "three"].map(|t| format!("🤖 Backend Architect\n{t}"))
    );
    let calls = h.tg.calls_of("sendMessage");
    assert_eq!(calls.len(), 4, "one 429 and three deliveries");
    assert_eq!(calls[0].status, 429);
    assert!(
        calls[1].at - calls[0].at >= Duration::from_secs(2),
        "did not wait retry_after"
    );
    assert_eq!(h.tg.count_429(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_forty_is_paced_under_the_group_limit_without_a_429() {
    // The fake enforces Telegram's group limit (20 per sliding minute); per-chat pacing is scaled
    // up to 5/s on both sides so the test spends its time on the limit that matters.
    let h = Harness::start(|config| {
        config.limits.message = 0;
        let telegram = telegram(config);
        telegram.links = vec![link(CHANNEL, GROUP)];
        telegram.chat_sends_per_sec = 5;
        telegram.group_sends_per_min = 20;
        telegram.sends_per_sec = 30;
    })
    .await;
    h.tg.enforce_limits(Limits {
        per_chat_per_sec: 5,
        per_group_per_min: 20,
        global_per_sec: 30,
    });
    let started = Instant::now();
    for n in 0..40 {
        h.agent_says(CHANNEL, AGENT, &format!("m-{n}"), &format!("burst {n}"))
            .await;
    }
    h.tg.wait_for("sendMessage", 40, Duration::from_secs(90))
        .await;
    let elapsed = started.elapsed();
    let shown: Vec<String> =
        h.tg.messages_in(GROUP)
            .into_iter()
            .map(|m| m.plain)
            .collect();
    let expected: Vec<String> = (0..40)
        .map(|n| format!("🤖 Backend Architect\nburst {n}"))
        .collect();
    assert_eq!(shown, expected);
    assert_eq!(h.tg.count_429(), 0, "a 429 in steady state");
    assert_eq!(h.tg.calls_of("sendMessage").len(), 40);
    // 20 fit in the first minute; the rest had to wait for the window.
    assert!(elapsed >= Duration::from_secs(60), "{elapsed:?}");
    h.stop().await;
}

fn long_markdown() -> (String, Vec<String>) {
    let prose = "An agent explains the plan in some detail, with **bold** words and _emphasis_. ";
    let code_lines: Vec<String> = (0..160)
        .map(|n| format!("    let value_{n:03} = compute({n}) * 2; // step {n}"))
        .collect();
    let mut text = String::from("## The plan\n\n");
    for _ in 0..5 {
        text.push_str(&prose.repeat(7));
        text.push_str("\n\n");
    }
    text.push_str("```rust\nfn main() {\n");
    text.push_str(&code_lines.join("\n"));
    text.push_str("\n}\n```\n\n");
    for _ in 0..4 {
        text.push_str(&prose.repeat(7));
        text.push_str("\n\n");
    }
    text.push_str("- one\n- two\n");
    (text, code_lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_markdown_answer_is_split_edited_shorter_and_longer_then_deleted() {
    let h = Harness::start(|config| telegram(config).links = vec![link(CHANNEL, GROUP)]).await;
    let (text, code_lines) = long_markdown();
    assert!(text.chars().count() >= 10_000, "{}", text.chars().count());
    h.agent_says(CHANNEL, AGENT, "m-long", &text).await;
    h.tg.wait_until("the long answer", WAIT, |tg| {
        tg.messages_in(GROUP)
            .iter()
            .any(|m| m.plain.contains("- two") || m.plain.contains("• two"))
    })
    .await;
    let parts = h.tg.messages_in(GROUP);
    assert!(parts.len() >= 3, "{} parts", parts.len());
    let sends = h.tg.calls_of("sendMessage");
    assert!(sends
        .iter()
        .all(|c| c.status == 200 && c.body["parse_mode"] == "HTML"));
    assert!(parts[0].text.starts_with("🤖 <b>Backend Architect</b>\n"));
    for part in &parts {
        assert!(part.plain.encode_utf16().count() <= 4096);
        assert_eq!(
            part.text.matches("<pre").count(),
            part.text.matches("</pre>").count()
        );
    }
    // Every code line arrives whole, in order, inside a code block. (Telegram trims a message,
    // so a part that starts inside the block loses its first line's indentation.)
    let all_code: Vec<&str> = parts
        .iter()
        .flat_map(|p| p.plain.lines())
        .filter(|line| line.contains("compute("))
        .map(str::trim)
        .collect();
    let expected: Vec<&str> = code_lines.iter().map(|line| line.trim()).collect();
    assert_eq!(all_code, expected);
    for part in parts.iter().filter(|p| p.plain.contains("compute(")) {
        assert!(
            part.text.contains("<pre>") || part.text.contains("<pre"),
            "{}",
            part.text
        );
    }
    let first_id = parts[0].message_id;

    // Shorter: the first part is edited, the others deleted.
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message.edit", "channelId": CHANNEL, "messageId": "m-long",
               "content": "Short now.", "editedAt": now()}),
    )
    .await;
    h.tg.wait_until("the short edit", WAIT, |tg| {
        tg.messages_in(GROUP).len() == 1
    })
    .await;
    let now_shown = h.tg.messages_in(GROUP);
    assert_eq!(now_shown[0].message_id, first_id);
    assert_eq!(now_shown[0].plain, "🤖 Backend Architect\nShort now.");
    assert_eq!(h.tg.calls_of("deleteMessage").len(), parts.len() - 1);

    // Longer again: the first part is edited, the rest sent anew.
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message.edit", "channelId": CHANNEL, "messageId": "m-long",
               "content": text, "editedAt": now()}),
    )
    .await;
    h.tg.wait_until("the long edit", WAIT, |tg| {
        tg.messages_in(GROUP).len() == parts.len()
    })
    .await;
    let long_again = h.tg.messages_in(GROUP);
    assert_eq!(long_again[0].message_id, first_id);
    assert_eq!(long_again[0].text, parts[0].text);
    for (again, before) in long_again.iter().zip(&parts).skip(1) {
        assert_eq!(again.text, before.text);
    }

    // Deleted: every part goes.
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message.delete", "channelId": CHANNEL, "messageId": "m-long",
               "deletedAt": now()}),
    )
    .await;
    h.tg.wait_until("every part deleted", WAIT, |tg| {
        tg.messages_in(GROUP).is_empty()
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_content_is_delivered_and_never_rejected() {
    let h = Harness::start(|config| telegram(config).links = vec![link(CHANNEL, GROUP)]).await;
    let awkward = [
        "a<b c>d & 5 < 6 > 4 <script>alert(1)</script> &",
        "snake_case_name and __init__ and *unclosed **bold _it 2*3*4",
        "`tick ```fence never closed\n\n~~~\nx",
        "emoji 😀🇫🇷👨‍👩‍👧 and [link](javascript:alert(1)) and <https://example.org?a=1&b=2>",
    ];
    for (n, content) in awkward.iter().enumerate() {
        h.agent_says(CHANNEL, AGENT, &format!("m-{n}"), content)
            .await;
    }
    h.tg.wait_for("sendMessage", awkward.len(), WAIT).await;
    assert!(h.tg.calls_of("sendMessage").iter().all(|c| c.status == 200));
    let shown = h.tg.messages_in(GROUP);
    assert!(
        shown[0]
            .plain
            .contains("a<b c>d & 5 < 6 > 4 <script>alert(1)</script> &"),
        "{}",
        shown[0].plain
    );
    assert!(
        shown[1].plain.contains("snake_case_name"),
        "{}",
        shown[1].plain
    );
    // Balanced markers are Markdown (`__init__` is bold); unbalanced ones stay literal.
    assert!(shown[1].plain.contains("**bold _it"), "{}", shown[1].plain);
    assert!(shown[2].plain.contains("tick"), "{}", shown[2].plain);
    assert!(shown[3].plain.contains("😀🇫🇷👨‍👩‍👧"), "{}", shown[3].plain);

    // If Telegram refuses the HTML anyway, the plain text goes out instead.
    h.tg.fail_next(
        "sendMessage",
        Failure::BadRequest(
            "can't parse entities: Unsupported start tag \"x\" at byte offset 3".into(),
        ),
    );
    h.agent_says(CHANNEL, AGENT, "m-fallback", "fallback *text*")
        .await;
    let fallback = h.shown(GROUP, "fallback").await;
    assert_eq!(fallback.parse_mode, None);
    assert_eq!(fallback.text, "🤖 Backend Architect\nfallback *text*");
    h.stop().await;
}

/// Every message the bot showed in `chat`, in order, as people see them.
fn shown_texts(tg: &FakeTelegram, chat: i64) -> Vec<String> {
    let mut messages = tg.messages_in(chat);
    messages.sort_by_key(|m| m.message_id);
    messages.into_iter().map(|m| m.plain).collect()
}

async fn dead_letters(h: &Harness) -> Vec<String> {
    let mut redis = h.redis.connection().await;
    redis::cmd("LRANGE")
        .arg("openclaw:bridge:deadletter:telegram")
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("LRANGE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_never_refused_for_their_form_and_huge_ones_are_cut() {
    let h = Harness::start(|config| {
        telegram(config).links = vec![link(CHANNEL, GROUP)];
        telegram(config).max_parts = 3;
    })
    .await;
    // Reference links to a URL Telegram cannot link, expanded after each use: about 550 source
    // characters render to over 12,000.
    let url = format!("ftp://files.example.org/{}", "deep/".repeat(57));
    let growing = format!("{}\n\n[ref]: {url}", "[ref] ".repeat(40));
    h.agent_says(CHANNEL, AGENT, "m-growing", &growing).await;
    let uses = |tg: &FakeTelegram| -> usize {
        shown_texts(tg, GROUP)
            .iter()
            .map(|text| text.matches("ref").count())
            .sum()
    };
    h.tg.wait_until("all 40 uses of the reference shown", WAIT, |tg| {
        uses(tg) >= 40
    })
    .await;
    assert_eq!(uses(&h.tg), 40);

    // An answer whose last part is nothing but reference definitions.
    let before = shown_texts(&h.tg, GROUP).len();
    let prose = "Some words that cite a source [1] and another [2].\n\n".repeat(80);
    let trailing = format!(
        "{prose}[1]: https://example.com/one\n[2]: https://example.com/two\n[3]: https://example.com/three"
    );
    h.agent_says(CHANNEL, AGENT, "m-trailing", &trailing).await;
    let cites = |tg: &FakeTelegram| -> usize {
        shown_texts(tg, GROUP)[before..]
            .iter()
            .map(|text| text.matches("cite a source").count())
            .sum()
    };
    h.tg.wait_until("all 80 citing lines shown", WAIT, |tg| cites(tg) >= 80)
        .await;
    assert_eq!(cites(&h.tg), 80);

    // Telegram refusing a part for its length: the plain text goes out instead, and the message
    // is mapped, so its delete reaches it.
    h.tg.fail_next(
        "sendMessage",
        Failure::BadRequest("message is too long".into()),
    );
    h.agent_says(CHANNEL, AGENT, "m-long", "refused *once* for its length")
        .await;
    let shown = h.shown(GROUP, "refused").await;
    assert_eq!(shown.parse_mode, None);
    assert!(
        shown.text.ends_with("refused *once* for its length"),
        "{}",
        shown.text
    );

    // A huge answer is cut at `max_parts` with a note.
    let before = shown_texts(&h.tg, GROUP).len();
    let huge = "A line of an enormous answer.\n".repeat(20_000);
    h.agent_says(CHANNEL, AGENT, "m-huge", &huge).await;
    let note = h.shown(GROUP, "(message cut: ").await;
    assert!(
        note.plain.ends_with("more characters not shown)"),
        "{}",
        note.plain
    );
    h.agent_says(CHANNEL, AGENT, "m-after", "after the huge one")
        .await;
    h.shown(GROUP, "after the huge one").await;
    assert_eq!(shown_texts(&h.tg, GROUP).len(), before + 3 + 1);

    assert!(
        h.tg.calls_of("sendMessage")
            .iter()
            .filter(|c| c.status != 200)
            .count()
            == 1
    );
    assert_eq!(dead_letters(&h).await, Vec::<String>::new());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_shown_before_a_refusal_are_mapped_so_a_delete_reaches_them() {
    let h = Harness::start(|config| telegram(config).links = vec![link(CHANNEL, GROUP)]).await;
    let long = [
        format!("first part {}", "word ".repeat(700)),
        format!("second part {}", "word ".repeat(700)),
    ]
    .join("\n\n");
    h.tg.fail_after(
        "sendMessage",
        1,
        Failure::Forbidden("bot was kicked from the supergroup chat".into()),
    );
    h.agent_says(CHANNEL, AGENT, "m-half", &long).await;
    let first = h.shown(GROUP, "first part").await;
    h.spy
        .wait_for("agent notification", WAIT, |s| {
            s.channel == format!("pubsub:agent:{AGENT}") && s.kind() == "agent.notification"
        })
        .await;
    assert_eq!(dead_letters(&h).await.len(), 1);

    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message.delete", "channelId": CHANNEL, "messageId": "m-half",
               "deletedAt": now()}),
    )
    .await;
    h.tg.wait_until("the shown part deleted", WAIT, |tg| {
        tg.messages_in(GROUP)
            .iter()
            .all(|m| m.message_id != first.message_id)
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_chat_is_dead_lettered_the_agent_told_and_the_queue_moves_on() {
    let h = Harness::start(|config| telegram(config).links = vec![link(CHANNEL, GROUP)]).await;
    h.tg.fail_next(
        "sendMessage",
        Failure::Forbidden("bot was kicked from the supergroup chat".into()),
    );
    h.agent_says(CHANNEL, AGENT, "m-lost", "this one is refused")
        .await;
    h.agent_says(CHANNEL, AGENT, "m-next", "this one gets through")
        .await;
    h.shown(GROUP, "this one gets through").await;

    let notice = h
        .spy
        .wait_for("agent notification", WAIT, |s| {
            s.channel == format!("pubsub:agent:{AGENT}") && s.kind() == "agent.notification"
        })
        .await;
    let content = notice.json["data"]["content"].as_str().unwrap();
    assert!(content.contains("channel.message"), "{content}");
    assert!(content.contains(&format!("telegram:{GROUP}")), "{content}");
    assert!(content.contains("kicked"), "{content}");
    assert_eq!(notice.json["data"]["channelId"], CHANNEL);

    let mut redis = h.redis.connection().await;
    let letters: Vec<String> = redis::cmd("LRANGE")
        .arg("openclaw:bridge:deadletter:telegram")
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("LRANGE");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(letter["destination"], format!("telegram:{GROUP}"));
    assert_eq!(letter["eventType"], "channel.message");
    assert_eq!(letter["agentId"], AGENT);
    assert_eq!(letter["channelId"], CHANNEL);
    assert_eq!(letter["payload"]["message"]["id"], "m-lost");
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("Forbidden: bot was kicked"),
        "{letter}"
    );
    assert!(!letters[0].contains(TOKEN));

    // A chat that forbids everything: each relay is dead-lettered, none blocks the others.
    h.tg.forbid_chat(GROUP);
    h.agent_says(CHANNEL, AGENT, "m-a", "a").await;
    h.agent_says(CHANNEL, AGENT, "m-b", "b").await;
    h.spy
        .wait_count("two more notifications", 3, WAIT, |s| {
            s.channel == format!("pubsub:agent:{AGENT}") && s.kind() == "agent.notification"
        })
        .await;
    h.stop().await;
}

/// The `channel.message` events published on `channel` with `content`.
fn published_on(h: &Harness, channel: &str, content: &str) -> Vec<Value> {
    h.spy
        .matching(|s| {
            s.channel == hub_channel(channel)
                && s.kind() == "channel.message"
                && s.event()["message"]["content"] == content
        })
        .into_iter()
        .map(|s| s.event().clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_linked_to_two_channels_publishes_to_both_exactly_once_across_store_failures() {
    let h = Harness::start(|config| {
        telegram(config).links = vec![link(CHANNEL, GROUP), link(CHANNEL_B, GROUP)];
    })
    .await;
    let mut redis = h.redis.connection().await;

    // Redis refuses writes (OOM) while a message arrives: it waits, then reaches both channels.
    h.redis.refuse_writes(true).await;
    let update =
        h.tg.text_message(&group(), &alice(), "while redis refuses writes");
    let update_id = h.tg.inject(update);
    h.tg.wait_until("the update polled", WAIT, |tg| {
        tg.calls_of("getUpdates").iter().any(|c| {
            c.response
                .as_array()
                .is_some_and(|a| a.iter().any(|u| u["update_id"] == update_id))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        h.tg.pending_updates().contains(&update_id),
        "acknowledged while Redis refused writes"
    );
    h.redis.refuse_writes(false).await;
    h.spy
        .wait_count("the message on both channels", 2, WAIT, |s| {
            s.kind() == "channel.message"
                && s.event()["message"]["content"] == "while redis refuses writes"
        })
        .await;
    h.tg.wait_until("the update acknowledged", Duration::from_secs(20), |tg| {
        !tg.pending_updates().contains(&update_id)
    })
    .await;
    let a = published_on(&h, CHANNEL, "while redis refuses writes");
    let b = published_on(&h, CHANNEL_B, "while redis refuses writes");
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0]["message"]["id"], b[0]["message"]["id"]);

    // The process died after publishing to the first channel (its claim, the message map entry,
    // is there): the redelivered update publishes to the second channel only.
    let update = h.tg.text_message(&group(), &alice(), "after a crash");
    let id = update.message_id();
    let _: () = redis::cmd("SET")
        .arg(format!("openclaw:bridge:msgmap:telegram:{GROUP}:{id}"))
        .arg("hub-published-before-the-crash")
        .query_async(&mut redis)
        .await
        .expect("SET");
    h.tg.inject(update);
    let event = h
        .spy
        .wait_for("the message on the second channel", WAIT, |s| {
            s.channel == hub_channel(CHANNEL_B)
                && s.kind() == "channel.message"
                && s.event()["message"]["content"] == "after a crash"
        })
        .await;
    assert_eq!(
        event.event()["message"]["id"],
        "hub-published-before-the-crash"
    );
    // A later message shows the update was done with; the first channel did not get it again.
    let later = h.tg.text_message(&group(), &alice(), "later");
    let later_id = later.message_id();
    h.tg.inject(later);
    h.published_message(GROUP, later_id).await;
    assert!(published_on(&h, CHANNEL, "after a crash").is_empty());
    assert_eq!(published_on(&h, CHANNEL_B, "after a crash").len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offset_is_kept_per_bot_and_the_old_key_is_taken_over_once() {
    let redis = RedisServer::start();
    let tg = FakeTelegram::start(TOKEN).await;
    // Updates the old version already handled: the new one must not publish them again.
    let old = tg.text_message(&group(), &alice(), "handled before the upgrade");
    let old_update = tg.inject(old);
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("SET")
        .arg("openclaw:bridge:telegram:offset")
        .arg(old_update + 1)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let h = Harness::start_on(redis, tg).await;
    let update = h.tg.text_message(&group(), &alice(), "after the upgrade");
    let message_id = update.message_id();
    h.tg.inject(update);
    h.published_message(GROUP, message_id).await;
    assert!(h
        .spy
        .matching(|s| s.kind() == "channel.message"
            && s.event()["message"]["content"] == "handled before the upgrade")
        .is_empty());
    // The bot id is the token's part before `:`.
    let bot_key = format!(
        "openclaw:bridge:telegram:{}:offset",
        TOKEN.split(':').next().unwrap_or_default()
    );
    let mut conn = h.redis.connection().await;
    let mut stored: Option<i64> = None;
    for _ in 0..100 {
        stored = redis::cmd("GET")
            .arg(&bot_key)
            .query_async(&mut conn)
            .await
            .expect("GET");
        if stored.is_some_and(|offset| offset > old_update + 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stored.is_some_and(|offset| offset > old_update + 1),
        "{stored:?}"
    );
    let legacy: Option<String> = redis::cmd("GET")
        .arg("openclaw:bridge:telegram:offset")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(legacy, None, "the old key is taken over once and deleted");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_while_a_message_arrives_delays_it_until_redis_is_back() {
    let mut h = Harness::start(|_| {}).await;
    // A first message proves the path works and the spy listens.
    let warm = h.tg.text_message(&group(), &alice(), "before the outage");
    let warm_id = warm.message_id();
    h.tg.inject(warm);
    h.published_message(GROUP, warm_id).await;
    let subscriptions = h.spy.subscriptions();

    h.redis.kill();
    let update = h.tg.text_message(&group(), &alice(), "during the outage");
    let id = update.message_id();
    let update_id = h.tg.inject(update);
    // The bridge has the update and cannot publish it; it stays unacknowledged.
    h.tg.wait_until("the update polled", WAIT, |tg| {
        tg.calls_of("getUpdates").iter().any(|c| {
            c.response
                .as_array()
                .is_some_and(|a| a.iter().any(|u| u["update_id"] == update_id))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        h.tg.pending_updates().contains(&update_id),
        "acknowledged while Redis was down"
    );
    let service = h.service.as_ref().expect("running");
    assert!(
        !service.health.is_ready(),
        "{:?}",
        service.health.snapshot()
    );

    h.redis.restart();
    h.spy.wait_resubscribed(subscriptions, WAIT).await;
    let event = h.published_message(GROUP, id).await;
    assert_eq!(event["message"]["content"], "during the outage");
    h.tg.wait_until("the update acknowledged", Duration::from_secs(20), |tg| {
        !tg.pending_updates().contains(&update_id)
    })
    .await;
    let published = h.spy.matching(|s| {
        s.kind() == "channel.message" && s.event()["message"]["content"] == "during the outage"
    });
    assert_eq!(published.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_publishes_each_pending_update_exactly_once_after_restart() {
    let redis = RedisServer::start();
    let tg = FakeTelegram::start(TOKEN).await;
    let spy = HubSpy::start(&redis.url()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[redis]\nurl = \"{}\"\n[limits]\nmessage = 0\n\
         [telegram]\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\n\
         chat_sends_per_sec = 50\ngroup_sends_per_min = 1000\n\
         [[telegram.links]]\nchannel = \"{CHANNEL}\"\nchat = {GROUP}\n",
        redis.url(),
        tg.api_url()
    );
    let start =
        |name| ServiceProcess::start(env!("CARGO_BIN_EXE_hub-bridge"), name, dir.path(), &config);

    let mut first = start("first");
    tg.wait_for("getUpdates", 1, WAIT).await;
    let mut sources = Vec::new();
    for n in 0..40 {
        let update = tg.text_message(&group(), &alice(), &format!("pending {n}"));
        sources.push(format!("{GROUP}:{}", update.message_id()));
        tg.inject(update);
    }
    // Kill it in the middle of the batch.
    spy.wait_for("the first publishes", WAIT, |s| {
        s.kind() == "channel.message"
    })
    .await;
    first.kill();
    let published_before_kill = spy.matching(|s| s.kind() == "channel.message").len();
    let polls_before_kill = tg.calls_of("getUpdates").len();
    for n in 40..50 {
        let update = tg.text_message(&group(), &alice(), &format!("pending {n}"));
        sources.push(format!("{GROUP}:{}", update.message_id()));
        tg.inject(update);
    }
    assert!(!tg.pending_updates().is_empty());

    // The second instance takes over once the dead one's lease expires.
    let _second = start("second");
    spy.wait_count(
        "every update published",
        sources.len(),
        Duration::from_secs(40),
        |s| s.kind() == "channel.message",
    )
    .await;
    tg.wait_until("every update acknowledged", WAIT, |tg| {
        tg.pending_updates().is_empty()
    })
    .await;
    // Anything duplicated would have been published by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all: Vec<String> = spy
        .matching(|s| s.kind() == "channel.message")
        .iter()
        .map(|s| {
            s.event()["message"]["externalSourceId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        all.len(),
        "duplicates after {published_before_kill} published before the kill"
    );
    let mut expected = sources.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    // The crash really left published updates unacknowledged: the new instance got them again.
    let redelivered: usize = tg.calls_of("getUpdates")[polls_before_kill..]
        .iter()
        .filter_map(|call| call.response.as_array())
        .flatten()
        .filter(|update| {
            let text = update["message"]["text"].as_str().unwrap_or_default();
            text.strip_prefix("pending ")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < 40)
        })
        .count();
    assert!(
        redelivered >= published_before_kill,
        "{published_before_kill} published before the kill, {redelivered} delivered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verifies_the_token_with_get_me() {
    let tg = FakeTelegram::start(TOKEN).await;
    let config = |token: &str| TelegramConfig {
        poll_timeout_secs: 1,
        ..TelegramConfig::new(Secret::new(token), tg.api_url(), Vec::new())
    };
    let who = TelegramBridge::new(config(TOKEN))
        .check()
        .await
        .expect("valid token");
    assert_eq!(who, "bot @hub_bridge_test_bot (id 123456)");
    let error = TelegramBridge::new(config("999:wrong"))
        .check()
        .await
        .expect_err("a wrong token");
    assert!(error.is_fatal(), "{error}");
    assert!(!error.to_string().contains("999:wrong"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_the_previous_release_left_is_relayed_after_the_upgrade() {
    let redis = RedisServer::start();
    let tg = FakeTelegram::start(TOKEN).await;
    // Jobs as the previous release kept them (`{"relay", "action"}`), waiting in GROUP's outbox.
    let relay = json!({"event_type": "channel.message", "agent_id": AGENT,
                       "channel_id": CHANNEL, "payload": {}});
    let jobs = [
        json!({"id": "old-1", "job": {"relay": relay, "action": {"Send": {
            "hub_message_id": "m-old", "look": {"author": {"name": "Backend Architect",
            "avatar": "🤖"}}, "content": "queued before the upgrade", "reply_to": null,
            "thread_id": null, "sent": []}}}}),
        json!({"id": "old-2", "job": {"relay": relay, "action": {"Edit": {
            "hub_message_id": "m-old", "content": "edited before the upgrade",
            "progress": null}}}}),
    ];
    let mut conn = redis.connection().await;
    for entry in &jobs {
        let _: () = redis::cmd("RPUSH")
            .arg(format!("openclaw:bridge:outbox:telegram:{GROUP}"))
            .arg(entry.to_string())
            .query_async(&mut conn)
            .await
            .expect("RPUSH");
    }
    let _: () = redis::cmd("SADD")
        .arg("openclaw:bridge:outboxes:telegram")
        .arg(GROUP)
        .query_async(&mut conn)
        .await
        .expect("SADD");
    let h = Harness::start_on(redis, tg).await;
    h.tg.wait_until("the old send", WAIT, |tg| {
        tg.calls_of("sendMessage").iter().any(|call| {
            call.body["text"] == "🤖 <b>Backend Architect</b>\nqueued before the upgrade"
        })
    })
    .await;
    // The edit found the message the send mapped, and kept its header.
    h.tg.wait_until("the old edit", WAIT, |tg| {
        tg.calls_of("editMessageText").iter().any(|call| {
            call.body["text"].as_str().is_some_and(|text| {
                text == "🤖 <b>Backend Architect</b>\nedited before the upgrade"
            })
        })
    })
    .await;
    assert!(dead_letters(&h).await.is_empty(), "nothing was unreadable");
    h.stop().await;
}

/// An agent's streamed answer (SPEC section 5): the message with its first words, then edits
/// carrying the whole text so far, `metadata.streaming` on all but the last.
async fn stream(h: &Harness, channel: &str, id: &str, texts: &[String], every: Duration) {
    let streaming = json!({"streaming": true});
    h.channel_event(
        channel,
        json!({"type": "channel.message", "channelId": channel, "message": {
            "id": id, "content": texts[0], "senderId": AGENT, "timestamp": now(),
            "metadata": streaming}}),
    )
    .await;
    for (n, text) in texts.iter().enumerate().skip(1) {
        tokio::time::sleep(every).await;
        let mut edit = json!({"type": "channel.message.edit", "channelId": channel,
                              "messageId": id, "content": text});
        if n + 1 < texts.len() {
            edit["metadata"] = streaming.clone();
        }
        h.channel_event(channel, edit).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_edited_in_place_under_the_flood_limits_and_ends_complete() {
    let h = Harness::start(|config| {
        config.limits.message = 0;
        let telegram = telegram(config);
        telegram.links = vec![link(CHANNEL, GROUP)];
        // Telegram's own limits, on both sides: edits count as messages.
        telegram.chat_sends_per_sec = 1;
        telegram.group_sends_per_min = 20;
        telegram.sends_per_sec = 30;
    })
    .await;
    h.tg.enforce_limits(Limits::default());
    // 61 texts, 100 ms apart: a 6 s answer.
    let texts: Vec<String> = (0..=60)
        .map(|n| {
            (0..=n)
                .map(|word| format!("w{word}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    stream(&h, CHANNEL, "s-1", &texts, Duration::from_millis(100)).await;
    let last = format!("🤖 Backend Architect\n{}", texts[60]);
    h.tg.wait_until("the final text", WAIT, |tg| {
        tg.messages_in(GROUP).iter().any(|m| m.plain == last)
    })
    .await;
    assert_eq!(
        h.tg.messages_in(GROUP).len(),
        1,
        "one message, edited in place"
    );
    assert_eq!(h.tg.calls_of("sendMessage").len(), 1);
    let edits = h.tg.calls_of("editMessageText").len();
    // 6 s at one edit per 3 s (the group cadence), the first at once and the last.
    assert!(
        (2..=5).contains(&edits),
        "a handful of edits, not 60: {edits}"
    );
    assert_eq!(h.tg.count_429(), 0, "no flood limit tripped");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_telegrams_limit_keeps_its_first_part_and_adds_the_next() {
    const PRIVATE: i64 = 2002;
    let h = Harness::start(|config| {
        config.limits.message = 0;
        telegram(config).links = vec![link(CHANNEL_B, PRIVATE)];
    })
    .await;
    // Up to 6,000 chars in 20 steps, 50 ms apart.
    let texts: Vec<String> = (1..=20).map(|n| "word ".repeat(60 * n)).collect();
    stream(&h, CHANNEL_B, "s-long", &texts, Duration::from_millis(50)).await;
    let total = texts[19].trim_end().len();
    h.tg.wait_until("the whole text in two messages", WAIT, |tg| {
        let shown = tg.messages_in(PRIVATE);
        shown.len() == 2
            && shown
                .iter()
                .map(|m| m.plain.matches("word").count())
                .sum::<usize>()
                == 1200
    })
    .await;
    let shown = h.tg.messages_in(PRIVATE);
    assert!(shown.iter().all(|m| m.plain.chars().count() <= 4096));
    assert!(shown[0].plain.starts_with("🤖 Backend Architect\n"));
    assert!(total > 4096);
    assert_eq!(h.tg.count_429(), 0);

    // Both parts are the hub message's: a delete removes both.
    h.channel_event(
        CHANNEL_B,
        json!({"type": "channel.message.delete", "channelId": CHANNEL_B, "messageId": "s-long"}),
    )
    .await;
    h.tg.wait_until("both parts deleted", WAIT, |tg| {
        tg.messages_in(PRIVATE).is_empty()
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_nothing_reaches_the_chat_until_it_passes_then_all_in_order() {
    let h = Harness::start(|config| {
        telegram(config).links = vec![link(CHANNEL, GROUP)];
    })
    .await;
    h.tg.fail_next("sendMessage", Failure::RetryAfter(3));
    h.agent_says(CHANNEL, AGENT, "r-1", "first").await;
    h.tg.wait_until("the 429", WAIT, |tg| tg.count_429() == 1)
        .await;
    // Once the bridge has the answer, nothing more goes to the chat until the wait is over.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paused = Instant::now();
    // A streamed answer starts meanwhile: its typing must wait too.
    h.channel_event(
        CHANNEL,
        json!({"type": "channel.message", "channelId": CHANNEL, "message": {
            "id": "r-2", "content": "second", "senderId": AGENT, "timestamp": now(),
            "metadata": {"streaming": true}}}),
    )
    .await;
    h.agent_says(CHANNEL, AGENT, "r-3", "third").await;
    h.tg.wait_until("all three shown", WAIT, |tg| {
        tg.messages_in(GROUP).len() == 3
    })
    .await;
    let shown: Vec<String> =
        h.tg.messages_in(GROUP)
            .into_iter()
            .map(|m| m.plain)
            .collect();
    let expected: Vec<String> = ["first", "second", "third"]
        .iter()
        .map(|text| format!("🤖 Backend Architect\n{text}"))
        .collect();
    assert_eq!(shown, expected, "in order");
    let to_group: Vec<Call> =
        h.tg.calls()
            .into_iter()
            .filter(|call| chat_of(call) == GROUP)
            .collect();
    let refused = to_group
        .iter()
        .find(|call| call.status == 429)
        .expect("the 429")
        .at;
    let during: Vec<&str> = to_group
        .iter()
        .filter(|call| call.at > paused && call.at < refused + Duration::from_millis(2900))
        .map(|call| call.method.as_str())
        .collect();
    assert!(during.is_empty(), "calls during the pause: {during:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_text_of_a_streamed_answer_lands_after_a_restart() {
    let h = Harness::start(|config| {
        telegram(config).links = vec![link(CHANNEL, GROUP)];
    })
    .await;
    let edit = |text: &str, streaming: bool| {
        let mut edit = json!({"type": "channel.message.edit", "channelId": CHANNEL,
                              "messageId": "s-r", "content": text});
        if streaming {
            edit["metadata"] = json!({"streaming": true});
        }
        edit
    };
    h.agent_says(CHANNEL, AGENT, "s-r", "v0").await;
    h.shown(GROUP, "v0").await;
    h.channel_event(CHANNEL, edit("v1", true)).await;
    h.shown(GROUP, "v1").await;
    // The group's cadence holds v2 back; v3 is taken into it; then the service stops.
    h.channel_event(CHANNEL, edit("v2", true)).await;
    h.channel_event(CHANNEL, edit("v3", false)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Harness {
        redis,
        tg,
        mut service,
        ..
    } = h;
    service.take().expect("running").stop().await;
    let h = Harness::start_configured(redis, tg, |config| {
        telegram(config).links = vec![link(CHANNEL, GROUP)];
    })
    .await;
    h.shown(GROUP, "v3").await;
    let edits: Vec<String> =
        h.tg.calls_of("editMessageText")
            .iter()
            .filter_map(|call| call.body["text"].as_str().map(str::to_owned))
            .collect();
    assert_eq!(edits.len(), 2, "v1, then v3 after the restart: {edits:?}");
    assert!(edits.iter().all(|text| !text.contains("v2")));
    h.stop().await;
}

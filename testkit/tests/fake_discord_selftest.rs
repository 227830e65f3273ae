//! Selftest of `hub_bridge_testkit::fake_discord`: serenity 0.12.5, unmodified, talks to the fake
//! exactly as the Discord bridge will (REST through `HttpBuilder::proxy` with the ratelimiter off, a
//! gateway `Client` built on that `Http`). Every dispatch template is checked by really receiving it in a
//! serenity `EventHandler`, because serenity silently drops a dispatch it cannot parse. Uploads
//! built by serenity's own builders are checked byte for byte (SHA-256) against what the fake
//! records and what its CDN serves back, with Discord's limits and URL expiry.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hub_bridge_testkit::fake_discord::{
    intents, sha256_hex, AttachmentFile, Failure, FakeDiscord, StickerItem, UserMessage, UserRef,
    MAX_FILES, MAX_FILE_BYTES,
};
use serde_json::json;
use serenity::all::{
    Channel, ChannelId, ChannelType, ClientBuilder, Context, CreateAllowedMentions, CreateMessage,
    CreateThread, EditMessage, EditWebhookMessage, Event, EventHandler, ExecuteWebhook,
    GatewayIntents, GuildChannel, GuildId, Message, MessageId, MessageType, MessageUpdateEvent,
    Nonce, RawEventHandler, Reaction, ReactionType, Ready, ResumedEvent, ShardManager,
    StickerFormatType, TypingStartEvent, UserId, WebhookId,
};
use serenity::builder::{Builder, CreateAttachment};
use serenity::http::{Http, HttpBuilder, HttpError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const TOKEN: &str = "fake-bot-token";
const GUILD: u64 = 1_100_000_000_000_000_001;
const CHANNEL: u64 = 1_100_000_000_000_000_002;
const OTHER_CHANNEL: u64 = 1_100_000_000_000_000_003;
const WEBHOOK: u64 = 1_100_000_000_000_000_004;
const WEBHOOK_TOKEN: &str = "webhook-token";
const WAIT: Duration = Duration::from_secs(5);

/// The intents the bridge asks for (PLATFORMS.md).
fn bridge_intents() -> GatewayIntents {
    GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_MESSAGE_REACTIONS
        | GatewayIntents::GUILD_MESSAGE_TYPING
        | GatewayIntents::DIRECT_MESSAGES
}

fn ada() -> UserRef {
    UserRef::new(1_200_000_000_000_000_001, "ada")
        .global_name("Ada")
        .nick("Ada L.")
}

async fn fake() -> FakeDiscord {
    let fake = FakeDiscord::start(TOKEN).await;
    fake.add_text_channel(CHANNEL, GUILD);
    fake.add_webhook(WEBHOOK, WEBHOOK_TOKEN, CHANNEL);
    fake.add_user(ada());
    fake
}

fn http(fake: &FakeDiscord) -> Http {
    HttpBuilder::new(TOKEN)
        .proxy(fake.api_url())
        .ratelimiter_disabled(true)
        .build()
}

fn id_of(payload: &serde_json::Value) -> u64 {
    payload["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("payload id")
}

/// The status and Discord's JSON error code of a failed serenity call.
fn status_and_code(err: serenity::Error) -> (u16, isize) {
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(resp)) => {
            (resp.status_code.as_u16(), resp.error.code)
        }
        other => panic!("expected an unsuccessful request, got {other:?}"),
    }
}

#[tokio::test]
async fn rest_round_trips_through_serenity() {
    let fake = fake().await;
    let http = http(&fake);
    let channel = ChannelId::new(CHANNEL);

    let me = http.get_current_user().await.expect("current user");
    assert_eq!((me.id.get(), me.bot), (fake.bot().id, true));
    assert_eq!(
        http.get_gateway().await.expect("gateway").url,
        fake.gateway_url()
    );

    // A bot message and a native reply to it.
    let no_pings = CreateAllowedMentions::new()
        .everyone(false)
        .all_roles(false);
    let first = channel
        .send_message(
            &http,
            CreateMessage::new()
                .content("hello")
                .allowed_mentions(no_pings.clone()),
        )
        .await
        .expect("send");
    assert_eq!(
        (first.author.id.get(), first.content.as_str()),
        (fake.bot().id, "hello")
    );
    let reply = channel
        .send_message(
            &http,
            CreateMessage::new()
                .content("again")
                .reference_message((channel, first.id)),
        )
        .await
        .expect("reply");
    assert!(reply.id > first.id, "snowflakes increase");
    assert_eq!(reply.kind, MessageType::InlineReply);
    assert_eq!(
        reply.referenced_message.as_ref().map(|m| m.id),
        Some(first.id)
    );
    let posts = fake
        .wait_for("POST", &format!("/channels/{CHANNEL}/messages"), 2, WAIT)
        .await;
    assert_eq!(posts[0].body["allowed_mentions"]["parse"], json!([]));
    assert_eq!(
        posts[1].body["message_reference"]["message_id"],
        json!(first.id.to_string())
    );

    // A webhook execution, through the id and token (Webhook::from_url only takes discord.com).
    let persona = ExecuteWebhook::new()
        .username("Claude")
        .avatar_url("https://example.org/c.png")
        .content("hi");
    let hooked = http
        .execute_webhook(
            WebhookId::new(WEBHOOK),
            None,
            WEBHOOK_TOKEN,
            true,
            vec![],
            &persona,
        )
        .await
        .expect("execute webhook")
        .expect("wait=true returns the message");
    assert_eq!(
        (hooked.webhook_id, hooked.channel_id),
        (Some(WebhookId::new(WEBHOOK)), channel)
    );
    assert_eq!(hooked.author.name, "Claude");
    let exec = &fake.requests_matching("POST", "/webhooks/")[0];
    assert_eq!(exec.query_param("wait"), Some("true"));
    assert_eq!(
        (
            exec.body["username"].as_str(),
            exec.body["content"].as_str()
        ),
        (Some("Claude"), Some("hi"))
    );
    assert_eq!(exec.body["avatar_url"], json!("https://example.org/c.png"));

    // Edits, reactions, typing and deletes change what the channel shows.
    let edit = EditWebhookMessage::new().content("hi, edited");
    http.edit_webhook_message(
        WebhookId::new(WEBHOOK),
        None,
        WEBHOOK_TOKEN,
        hooked.id,
        &edit,
        vec![],
    )
    .await
    .expect("edit webhook message");
    channel
        .edit_message(&http, first.id, EditMessage::new().content("hello, edited"))
        .await
        .expect("edit");
    channel
        .create_reaction(&http, first.id, ReactionType::Unicode("👍".into()))
        .await
        .expect("react");
    channel.broadcast_typing(&http).await.expect("typing");
    channel
        .delete_message(&http, reply.id)
        .await
        .expect("delete");
    let shown = fake.messages_in(CHANNEL);
    let contents: Vec<&str> = shown.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["hello, edited", "hi, edited"]);
    assert_eq!(shown[0].reactions, ["👍"]);
    assert!(shown[0].edited && shown[1].webhook_id == Some(WEBHOOK));
    let reaction = &fake.requests_matching("PUT", "/channels/")[0];
    assert_eq!(
        reaction.path,
        format!("/channels/{CHANNEL}/messages/{}/reactions/👍/@me", first.id)
    );
    channel
        .delete_reaction(&http, first.id, None, ReactionType::Unicode("👍".into()))
        .await
        .expect("unreact");
    assert!(fake.messages_in(CHANNEL)[0].reactions.is_empty());
    http.delete_webhook_message(WebhookId::new(WEBHOOK), None, WEBHOOK_TOKEN, hooked.id)
        .await
        .expect("delete");

    // Catch-up reads the log newest first, like Discord.
    let later = fake.post_user_message_silently(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        ada(),
        "while away",
    ));
    let latest = fake.post_user_message_silently(UserMessage::new(
        CHANNEL,
        Some(GUILD),
        ada(),
        "still away",
    ));
    let caught = channel
        .messages(
            &http,
            serenity::builder::GetMessages::new()
                .after(first.id)
                .limit(10),
        )
        .await
        .expect("get messages");
    let ids: Vec<u64> = caught.iter().map(|m| m.id.get()).collect();
    assert_eq!(ids, [id_of(&latest), id_of(&later)]);

    // Channels: a thread started from a message (same id), a DM channel.
    let thread = channel
        .create_thread_from_message(&http, first.id, CreateThread::new("topic"))
        .await
        .expect("thread");
    assert_eq!(
        (thread.id.get(), thread.kind, thread.parent_id),
        (first.id.get(), ChannelType::PublicThread, Some(channel))
    );
    match http.get_channel(thread.id).await.expect("get thread") {
        Channel::Guild(t) => assert_eq!(
            (t.kind, t.guild_id),
            (ChannelType::PublicThread, GuildId::new(GUILD))
        ),
        other => panic!("expected a thread, got {other:?}"),
    }
    let into_thread = ExecuteWebhook::new()
        .username("Claude")
        .content("in the thread");
    let hook = WebhookId::new(WEBHOOK);
    let in_thread = http
        .execute_webhook(
            hook,
            Some(thread.id),
            WEBHOOK_TOKEN,
            true,
            vec![],
            &into_thread,
        )
        .await
        .expect("execute webhook into a thread")
        .expect("wait=true returns the message");
    assert_eq!(in_thread.channel_id, thread.id);
    assert_eq!(
        fake.messages_in(thread.id.get())[0].content,
        "in the thread"
    );
    let dm = UserId::new(ada().id)
        .create_dm_channel(&http)
        .await
        .expect("dm");
    assert_eq!(
        (dm.kind, dm.recipient.name.as_str()),
        (ChannelType::Private, "ada")
    );
    assert!(matches!(
        http.get_channel(dm.id).await.expect("get dm"),
        Channel::Private(_)
    ));
    assert_eq!(
        fake.dm_channel(&ada()),
        dm.id.get(),
        "one DM channel per user"
    );

    // Every response carries the rate-limit headers.
    let raw = reqwest::Client::new()
        .get(format!("{}/api/v10/users/@me", fake.api_url()))
        .header("Authorization", format!("Bot {TOKEN}"))
        .send()
        .await
        .expect("raw request");
    for header in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-reset-after",
        "x-ratelimit-bucket",
    ] {
        assert!(raw.headers().contains_key(header), "missing {header}");
    }
}

#[tokio::test]
async fn errors_surface_as_discord_errors() {
    let fake = fake().await;
    let http = http(&fake);
    let channel = ChannelId::new(CHANNEL);

    // With the ratelimiter off, a 429 is an UnsuccessfulRequest; its body has no `code`, so
    // serenity fails to decode it and reports code -1: retry_after is lost.
    fake.fail_next(
        "POST",
        "/channels/",
        Failure::RateLimited {
            retry_after_secs: 0.5,
            global: false,
        },
    );
    let err = channel.say(&http, "x").await.expect_err("429");
    assert_eq!(status_and_code(err), (429, -1));
    assert_eq!(fake.rate_limited_count(), 1);

    // The raw 429 is Discord's: Retry-After header, retry_after and global in the body.
    fake.fail_next(
        "*",
        "/channels/",
        Failure::RateLimited {
            retry_after_secs: 0.5,
            global: true,
        },
    );
    let raw = reqwest::Client::new()
        .post(format!(
            "{}/api/v10/channels/{CHANNEL}/messages",
            fake.api_url()
        ))
        .header("Authorization", format!("Bot {TOKEN}"))
        .json(&json!({"content": "x"}))
        .send()
        .await
        .expect("raw request");
    assert_eq!(raw.status().as_u16(), 429);
    assert_eq!(raw.headers()["retry-after"], "1");
    assert_eq!(raw.headers()["x-ratelimit-global"], "true");
    let body: serde_json::Value = raw.json().await.expect("json body");
    assert_eq!(
        body,
        json!({"message": "You are being rate limited.", "retry_after": 0.5, "global": true})
    );

    // An enforced bucket answers 429 once it is used up, and refills after its window.
    fake.enforce_bucket(
        "POST",
        &format!("/channels/{CHANNEL}/messages"),
        2,
        Duration::from_millis(400),
    );
    channel.say(&http, "1").await.expect("first in bucket");
    channel.say(&http, "2").await.expect("second in bucket");
    assert_eq!(
        status_and_code(channel.say(&http, "3").await.expect_err("over")),
        (429, -1)
    );
    assert_eq!(fake.rate_limited_count(), 3);
    tokio::time::sleep(Duration::from_millis(450)).await;
    channel.say(&http, "4").await.expect("bucket refilled");

    // Injected statuses, Discord's form errors and unknown objects keep their JSON codes.
    fake.fail_next(
        "POST",
        "/channels/",
        Failure::Status(502, json!({"message": "Bad Gateway", "code": 0})),
    );
    assert_eq!(
        status_and_code(channel.say(&http, "x").await.expect_err("502")),
        (502, 0)
    );
    let too_long = json!({"content": "a".repeat(2001)});
    let err = http
        .send_message(channel, vec![], &too_long)
        .await
        .expect_err("2001 chars");
    assert_eq!(status_and_code(err), (400, 50035));
    let err = ChannelId::new(OTHER_CHANNEL)
        .say(&http, "x")
        .await
        .expect_err("unknown channel");
    assert_eq!(status_and_code(err), (404, 10003));
    let err = channel
        .delete_message(&http, MessageId::new(42))
        .await
        .expect_err("unknown message");
    assert_eq!(status_and_code(err), (404, 10008));

    // A wrong token is a 401 and is recorded like everything else.
    let stranger = HttpBuilder::new("wrong")
        .proxy(fake.api_url())
        .ratelimiter_disabled(true)
        .build();
    assert_eq!(
        status_and_code(stranger.get_current_user().await.expect_err("401")),
        (401, 0)
    );
    let statuses: Vec<u16> = fake
        .requests_matching("GET", "/users/@me")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [401]);

    // Once stopped, the port refuses new connections.
    fake.stop();
    let url = format!("{}/api/v10/gateway", fake.api_url());
    let mut refused = false;
    for _ in 0..20 {
        refused = reqwest::Client::new().get(&url).send().await.is_err();
        if refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the fake still answers after stop()");
}

// ----- gateway -----

/// What the handlers saw, in arrival order.
#[derive(Debug)]
enum Seen {
    Ready(Box<Ready>),
    Resumed,
    Message(Box<Message>),
    Update(Box<MessageUpdateEvent>),
    Delete {
        channel: ChannelId,
        message: MessageId,
        guild: Option<GuildId>,
    },
    ReactionAdd(Box<Reaction>),
    ReactionRemove(Box<Reaction>),
    Typing(Box<TypingStartEvent>),
    Thread(Box<GuildChannel>),
    /// A dispatch serenity could not parse into its model (a broken template).
    Unknown(String),
}

struct Recorder(mpsc::UnboundedSender<Seen>);

#[serenity::async_trait]
impl EventHandler for Recorder {
    async fn ready(&self, _: Context, ready: Ready) {
        let _ = self.0.send(Seen::Ready(Box::new(ready)));
    }

    async fn resume(&self, _: Context, _: ResumedEvent) {
        let _ = self.0.send(Seen::Resumed);
    }

    async fn message(&self, _: Context, message: Message) {
        let _ = self.0.send(Seen::Message(Box::new(message)));
    }

    async fn message_update(
        &self,
        _: Context,
        _: Option<Message>,
        _: Option<Message>,
        event: MessageUpdateEvent,
    ) {
        let _ = self.0.send(Seen::Update(Box::new(event)));
    }

    async fn message_delete(
        &self,
        _: Context,
        channel: ChannelId,
        message: MessageId,
        guild: Option<GuildId>,
    ) {
        let _ = self.0.send(Seen::Delete {
            channel,
            message,
            guild,
        });
    }

    async fn reaction_add(&self, _: Context, reaction: Reaction) {
        let _ = self.0.send(Seen::ReactionAdd(Box::new(reaction)));
    }

    async fn reaction_remove(&self, _: Context, reaction: Reaction) {
        let _ = self.0.send(Seen::ReactionRemove(Box::new(reaction)));
    }

    async fn typing_start(&self, _: Context, event: TypingStartEvent) {
        let _ = self.0.send(Seen::Typing(Box::new(event)));
    }

    async fn thread_create(&self, _: Context, thread: GuildChannel) {
        let _ = self.0.send(Seen::Thread(Box::new(thread)));
    }
}

struct UnknownRecorder(mpsc::UnboundedSender<Seen>);

#[serenity::async_trait]
impl RawEventHandler for UnknownRecorder {
    async fn raw_event(&self, _: Context, event: Event) {
        if let Event::Unknown(unknown) = event {
            let _ = self.0.send(Seen::Unknown(unknown.kind));
        }
    }
}

/// A serenity client running against the fake, and what its handlers saw.
struct Bot {
    rx: mpsc::UnboundedReceiver<Seen>,
    /// Events already received but not yet asked for (handlers run concurrently, so the order
    /// between, say, RESUMED and a replayed message is not fixed).
    backlog: VecDeque<Seen>,
    shards: Arc<ShardManager>,
    task: JoinHandle<serenity::Result<()>>,
}

impl Bot {
    async fn start(fake: &FakeDiscord, intents: GatewayIntents) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = ClientBuilder::new_with_http(http(fake), intents)
            .event_handler(Recorder(tx.clone()))
            .raw_event_handler(UnknownRecorder(tx))
            .await
            .expect("build client");
        let shards = Arc::clone(&client.shard_manager);
        let task = tokio::spawn(async move { client.start().await });
        Self {
            rx,
            backlog: VecDeque::new(),
            shards,
            task,
        }
    }

    /// The first event matching `want`, waiting up to `timeout`; panics listing what arrived.
    async fn next_within(
        &mut self,
        timeout: Duration,
        what: &str,
        want: impl Fn(&Seen) -> bool,
    ) -> Seen {
        if let Some(i) = self.backlog.iter().position(&want) {
            return self.backlog.remove(i).expect("position is in range");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Seen::Unknown(kind))) => {
                    panic!("serenity could not parse a {kind} dispatch")
                }
                Ok(Some(seen)) if want(&seen) => return seen,
                Ok(Some(seen)) => self.backlog.push_back(seen),
                Ok(None) | Err(_) => {
                    panic!("no {what} within {timeout:?}; saw {:#?}", self.backlog)
                }
            }
        }
    }

    async fn next(&mut self, what: &str, want: impl Fn(&Seen) -> bool) -> Seen {
        self.next_within(WAIT, what, want).await
    }

    async fn message(&mut self, id: u64) -> Message {
        match self
            .next(
                "message",
                |s| matches!(s, Seen::Message(m) if m.id.get() == id),
            )
            .await
        {
            Seen::Message(m) => *m,
            _ => unreachable!(),
        }
    }

    async fn shutdown(self) {
        self.shards.shutdown_all().await;
        let ended = tokio::time::timeout(WAIT, self.task).await;
        assert!(ended.is_ok(), "serenity client did not stop");
    }
}

#[tokio::test]
async fn gateway_delivers_every_dispatch_kind() {
    let fake = fake().await;
    // THREAD_CREATE needs GUILDS, which the bridge's intents lack (see the MESSAGE_CONTENT test).
    let intents = bridge_intents() | GatewayIntents::GUILDS;
    let mut bot = Bot::start(&fake, intents).await;
    let bot_id = fake.bot().id;

    let Seen::Ready(ready) = bot.next("ready", |s| matches!(s, Seen::Ready(_))).await else {
        unreachable!()
    };
    assert_eq!(
        (ready.user.id.get(), ready.session_id.as_str()),
        (bot_id, "fake-session-1")
    );
    let identify = &fake.identifies()[0];
    assert!(identify.token_ok);
    assert_eq!(identify.intents, intents.bits());

    // A guild message with a member.
    let hello = fake.post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), "hello"));
    let msg = bot.message(id_of(&hello)).await;
    assert_eq!(
        (msg.channel_id.get(), msg.guild_id),
        (CHANNEL, Some(GuildId::new(GUILD)))
    );
    assert_eq!(
        (msg.author.id.get(), msg.author.name.as_str()),
        (ada().id, "ada")
    );
    assert_eq!(msg.author.global_name.as_deref(), Some("Ada"));
    assert_eq!(
        msg.member.as_ref().and_then(|m| m.nick.as_deref()),
        Some("Ada L.")
    );
    assert_eq!(
        (msg.content.as_str(), msg.kind, msg.webhook_id),
        ("hello", MessageType::Regular, None)
    );
    assert!(msg.timestamp.unix_timestamp() > 1_700_000_000);

    // A reply, with an attachment and a mention.
    let reply = UserMessage::new(CHANNEL, Some(GUILD), ada(), "<@7> see this")
        .reply_to(id_of(&hello))
        .attachment("cat.png", "image/png", 1234)
        .mention(UserRef::new(7, "bob"));
    let reply = bot.message(id_of(&fake.post_user_message(reply))).await;
    assert_eq!(reply.kind, MessageType::InlineReply);
    assert_eq!(
        reply.referenced_message.as_ref().map(|m| m.id.get()),
        Some(id_of(&hello))
    );
    assert_eq!(
        reply.message_reference.as_ref().and_then(|r| r.message_id),
        Some(MessageId::new(id_of(&hello)))
    );
    let file = &reply.attachments[0];
    assert_eq!(
        (
            file.filename.as_str(),
            file.size,
            file.content_type.as_deref()
        ),
        ("cat.png", 1234, Some("image/png"))
    );
    let cdn = format!(
        "{}/attachments/{CHANNEL}/{}/cat.png?ex=",
        fake.api_url(),
        file.id
    );
    assert!(
        file.url.starts_with(&cdn),
        "{} is on the fake's CDN",
        file.url
    );
    assert_eq!(
        reply
            .mentions
            .iter()
            .map(|u| u.id.get())
            .collect::<Vec<_>>(),
        [7]
    );

    // A webhook's message (another bridge's persona, or our own echo).
    let hooked = fake.post_user_message(
        UserMessage::new(CHANNEL, Some(GUILD), ada(), "via hook").webhook(WEBHOOK),
    );
    let hooked = bot.message(id_of(&hooked)).await;
    assert_eq!(
        (hooked.webhook_id, hooked.author.bot),
        (Some(WebhookId::new(WEBHOOK)), true)
    );

    // Edit and delete.
    fake.dispatch(
        "MESSAGE_UPDATE",
        fake.message_update(CHANNEL, id_of(&hello), "hello, edited"),
    );
    let Seen::Update(update) = bot.next("update", |s| matches!(s, Seen::Update(_))).await else {
        unreachable!()
    };
    assert_eq!(
        (update.id.get(), update.content.as_deref()),
        (id_of(&hello), Some("hello, edited"))
    );
    assert!(update.edited_timestamp.is_some());
    fake.dispatch(
        "MESSAGE_DELETE",
        fake.message_delete(CHANNEL, reply.id.get()),
    );
    let deleted = bot
        .next("delete", |s| matches!(s, Seen::Delete { .. }))
        .await;
    assert!(matches!(deleted, Seen::Delete { channel, message, guild }
        if channel.get() == CHANNEL && message == reply.id && guild == Some(GuildId::new(GUILD))));
    assert_eq!(
        fake.messages_in(CHANNEL).len(),
        2,
        "the deleted reply is gone from the channel"
    );

    // Reactions, unicode and custom.
    fake.dispatch(
        "MESSAGE_REACTION_ADD",
        fake.reaction_add(CHANNEL, id_of(&hello), &ada(), "👍"),
    );
    let Seen::ReactionAdd(added) = bot
        .next("reaction add", |s| matches!(s, Seen::ReactionAdd(_)))
        .await
    else {
        unreachable!()
    };
    assert_eq!(
        (added.user_id, added.message_id.get()),
        (Some(UserId::new(ada().id)), id_of(&hello))
    );
    assert_eq!(added.emoji, ReactionType::Unicode("👍".into()));
    assert_eq!(
        added.member.as_ref().map(|m| m.user.id.get()),
        Some(ada().id)
    );
    fake.dispatch(
        "MESSAGE_REACTION_REMOVE",
        fake.reaction_remove(CHANNEL, id_of(&hello), &ada(), "party:123"),
    );
    let Seen::ReactionRemove(removed) = bot
        .next("reaction remove", |s| matches!(s, Seen::ReactionRemove(_)))
        .await
    else {
        unreachable!()
    };
    assert!(
        matches!(&removed.emoji, ReactionType::Custom { id, name, .. }
        if id.get() == 123 && name.as_deref() == Some("party"))
    );

    // Typing and a thread.
    fake.dispatch("TYPING_START", fake.typing_start(CHANNEL, &ada()));
    let Seen::Typing(typing) = bot.next("typing", |s| matches!(s, Seen::Typing(_))).await else {
        unreachable!()
    };
    assert_eq!(
        (typing.channel_id.get(), typing.user_id.get()),
        (CHANNEL, ada().id)
    );
    assert_eq!(
        typing.member.as_ref().and_then(|m| m.nick.as_deref()),
        Some("Ada L.")
    );
    fake.dispatch(
        "THREAD_CREATE",
        fake.thread_create(CHANNEL, "topic", &ada(), Some(id_of(&hello))),
    );
    let Seen::Thread(thread) = bot.next("thread", |s| matches!(s, Seen::Thread(_))).await else {
        unreachable!()
    };
    assert_eq!(
        (thread.id.get(), thread.kind),
        (id_of(&hello), ChannelType::PublicThread)
    );
    assert_eq!(
        (thread.parent_id, thread.guild_id),
        (Some(ChannelId::new(CHANNEL)), GuildId::new(GUILD))
    );
    assert!(thread.thread_metadata.is_some_and(|m| !m.archived));
    let in_thread = fake.post_user_message(UserMessage::new(
        thread.id.get(),
        None,
        ada(),
        "in the thread",
    ));
    let in_thread = bot.message(id_of(&in_thread)).await;
    assert_eq!(
        in_thread.guild_id,
        Some(GuildId::new(GUILD)),
        "a thread message belongs to the guild"
    );

    // A DM: no guild, a type 1 channel.
    let dm = fake.dm_channel(&ada());
    let psst = bot
        .message(id_of(&fake.post_user_message(UserMessage::new(
            dm,
            None,
            ada(),
            "psst",
        ))))
        .await;
    assert_eq!(
        (psst.channel_id.get(), psst.guild_id, psst.member.is_none()),
        (dm, None, true)
    );

    // The bot's own REST actions come back on the gateway, as on Discord.
    let own = ChannelId::new(CHANNEL)
        .say(&http(&fake), "from the bot")
        .await
        .expect("say");
    assert_eq!(bot.message(own.id.get()).await.author.id.get(), bot_id);
    assert_eq!(fake.connected_sessions(), 1);
    bot.shutdown().await;
}

#[tokio::test]
async fn gateway_filters_by_intent() {
    let fake = fake().await;
    let mut bot = Bot::start(&fake, bridge_intents() - GatewayIntents::MESSAGE_CONTENT).await;
    bot.next("ready", |s| matches!(s, Seen::Ready(_))).await;

    // Without MESSAGE_CONTENT a guild message arrives empty, unless it mentions the bot.
    let plain = fake.post_user_message(
        UserMessage::new(CHANNEL, Some(GUILD), ada(), "secret").attachment(
            "a.txt",
            "text/plain",
            1,
        ),
    );
    let plain = bot.message(id_of(&plain)).await;
    assert_eq!((plain.content.as_str(), plain.attachments.len()), ("", 0));
    let ping = UserMessage::new(CHANNEL, Some(GUILD), ada(), "hey bot").mention(fake.bot());
    assert_eq!(
        bot.message(id_of(&fake.post_user_message(ping)))
            .await
            .content,
        "hey bot"
    );
    assert_eq!(
        fake.messages_in(CHANNEL)[0].content,
        "secret",
        "the channel itself keeps the text"
    );

    // THREAD_CREATE needs GUILDS, which the bridge's intents do not include.
    let thread = fake.thread_create(CHANNEL, "topic", &ada(), None);
    assert_eq!(fake.dispatch("THREAD_CREATE", thread), 0);
    assert_eq!(fake.identifies()[0].intents & intents::MESSAGE_CONTENT, 0);

    // With echoes off, the bot's own message never comes back; a later marker does. Both go
    // down the same socket in order, so the echo would have arrived first.
    fake.set_echo_own_actions(false);
    let quiet = ChannelId::new(CHANNEL)
        .say(&http(&fake), "quiet")
        .await
        .expect("say");
    let marker = fake.post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), "marker"));
    bot.message(id_of(&marker)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(seen) = bot.rx.try_recv() {
        bot.backlog.push_back(seen);
    }
    let echoed = |s: &Seen| matches!(s, Seen::Message(m) if m.id == quiet.id);
    assert!(!bot.backlog.iter().any(echoed), "echo was switched off");
    bot.shutdown().await;
}

#[tokio::test]
async fn gateway_resumes_after_close_4000_and_reconnect() {
    let fake = fake().await;
    let mut bot = Bot::start(&fake, bridge_intents()).await;
    bot.next("ready", |s| matches!(s, Seen::Ready(_))).await;
    let before = fake.post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), "before"));
    bot.message(id_of(&before)).await;

    // Sent while the socket is down: the session keeps it and RESUME replays it.
    fake.close_sessions(4000);
    let missed = fake.post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), "missed"));
    fake.wait_for_resume(1, WAIT).await;
    bot.next("resumed", |s| matches!(s, Seen::Resumed)).await;
    assert_eq!(bot.message(id_of(&missed)).await.content, "missed");

    fake.wait_for_connected(1, WAIT).await;
    let after = fake.post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), "after"));
    bot.message(id_of(&after)).await;
    assert_eq!((fake.identifies().len(), fake.resume_count()), (1, 1));
    assert!(
        !bot.backlog
            .iter()
            .any(|s| matches!(s, Seen::Message(m) if m.id.get() == id_of(&before))),
        "RESUME replays only what the client missed"
    );

    // Op 7 RECONNECT: serenity opens a new socket and resumes there.
    fake.send_reconnect();
    fake.wait_for_resume(2, WAIT).await;
    bot.next("second resumed", |s| matches!(s, Seen::Resumed))
        .await;
    let last = fake.post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), "last"));
    bot.message(id_of(&last)).await;
    assert_eq!(fake.identifies().len(), 1);
    bot.shutdown().await;
}

#[tokio::test]
async fn gateway_reidentifies_when_resume_is_refused() {
    let fake = fake().await;
    let mut bot = Bot::start(&fake, bridge_intents()).await;
    bot.next("ready", |s| matches!(s, Seen::Ready(_))).await;

    fake.set_resume_ok(false);
    fake.close_sessions(4000);
    fake.wait_for_resume(1, WAIT).await;
    // Serenity restarts the shard after an invalid session; its shard manager waits up to 5 s
    // for the old runner first, so the second IDENTIFY takes a while.
    fake.wait_for_identify(2, Duration::from_secs(20)).await;
    let again = bot
        .next_within(WAIT, "second ready", |s| matches!(s, Seen::Ready(_)))
        .await;
    assert!(matches!(again, Seen::Ready(r) if r.session_id == "fake-session-2"));

    let after = fake.post_user_message(UserMessage::new(CHANNEL, Some(GUILD), ada(), "after"));
    bot.message(id_of(&after)).await;
    bot.shutdown().await;
}

#[tokio::test]
async fn gateway_close_4004_ends_the_client() {
    let fake = fake().await;
    let mut bot = Bot::start(&fake, bridge_intents()).await;
    bot.next("ready", |s| matches!(s, Seen::Ready(_))).await;

    fake.close_sessions(4004);
    let ended = tokio::time::timeout(WAIT, &mut bot.task)
        .await
        .expect("client ends")
        .expect("no panic");
    assert!(matches!(
        ended,
        Err(serenity::Error::Gateway(
            serenity::gateway::GatewayError::InvalidAuthentication
        ))
    ));
    bot.shards.shutdown_all().await;
}

// ----- media -----

/// PNG-shaped bytes: the signature and an IHDR with `width` x `height` (all Discord reads for the
/// dimensions), then `filler` bytes.
fn png(width: u32, height: u32, filler: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bytes.extend(width.to_be_bytes());
    bytes.extend(height.to_be_bytes());
    bytes.extend((0..filler).map(|i| (i % 251) as u8));
    bytes
}

async fn download(url: &str) -> (u16, Option<String>, Option<u64>, Vec<u8>) {
    let response = reqwest::get(url).await.expect("CDN request");
    let status = response.status().as_u16();
    let header = |name: &str| {
        let value = response.headers().get(name);
        value.and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    let content_type = header("content-type");
    let length = header("content-length").and_then(|v| v.parse().ok());
    let body = response.bytes().await.expect("CDN body").to_vec();
    (status, content_type, length, body)
}

#[tokio::test]
async fn serenity_uploads_are_recorded_and_served() {
    let fake = fake().await;
    let http = http(&fake);
    let channel = ChannelId::new(CHANNEL);
    let cat = png(3, 2, 5000);
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "the recorded digest is SHA-256"
    );

    // A webhook execution with two files, built and sent by serenity's own builder.
    let persona = ExecuteWebhook::new()
        .username("Claude")
        .content("a cat")
        .add_file(CreateAttachment::bytes(cat.clone(), "cat.png"))
        .add_file(CreateAttachment::bytes(b"notes".to_vec(), "notes.txt"));
    let hooked = persona
        .execute(&http, (WebhookId::new(WEBHOOK), WEBHOOK_TOKEN, true))
        .await
        .expect("execute webhook with files")
        .expect("wait=true returns the message");
    let exec = &fake.requests_matching("POST", "/webhooks/")[0];
    assert_eq!(
        (&exec.body["username"], &exec.body["content"]),
        (&json!("Claude"), &json!("a cat")),
        "payload_json is recorded as the body"
    );
    assert_eq!(exec.body["attachments"][1]["filename"], json!("notes.txt"));
    let parts: Vec<_> = (exec.files.iter())
        .map(|f| {
            let content_type = f.content_type.as_deref();
            (f.field.as_str(), f.filename.as_str(), content_type, f.len)
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("files[0]", "cat.png", Some("image/png"), cat.len()),
            ("files[1]", "notes.txt", Some("text/plain"), 5)
        ]
    );
    assert_eq!(exec.files[0].sha256, sha256_hex(&cat));
    let shown = &fake.messages_in(CHANNEL)[0];
    assert_eq!(
        (shown.attachments[0].sha256.as_str(), shown.content.as_str()),
        (sha256_hex(&cat).as_str(), "a cat")
    );

    // The created message lists the files with CDN URLs that serve the bytes.
    let image = &hooked.attachments[0];
    assert_eq!(
        (
            image.filename.as_str(),
            image.size,
            image.content_type.as_deref()
        ),
        ("cat.png", cat.len() as u32, Some("image/png"))
    );
    assert_eq!((image.width, image.height), (Some(3), Some(2)));
    assert_eq!(
        (hooked.attachments[1].width, hooked.attachments[1].height),
        (None, None),
        "only images have dimensions"
    );
    let (status, content_type, length, body) = download(&image.url).await;
    assert_eq!(
        (status, content_type.as_deref(), length),
        (200, Some("image/png"), Some(cat.len() as u64))
    );
    assert!(body == cat, "the CDN serves the uploaded bytes");
    assert!(
        download(&image.proxy_url).await.3 == cat,
        "so does the proxy"
    );
    assert!(image.download().await.expect("serenity download") == cat);
    assert_eq!(fake.media_counts().cdn_downloads, 3);

    // A bot message with a file: nonces and injected failures work as for JSON bodies.
    let send = || {
        CreateMessage::new()
            .content("here")
            .nonce(Nonce::String("n-1".into()))
            .enforce_nonce(true)
            .add_file(CreateAttachment::bytes(cat.clone(), "again.png"))
    };
    fake.fail_next(
        "POST",
        "/channels/",
        Failure::RateLimited {
            retry_after_secs: 0.1,
            global: false,
        },
    );
    let err = channel.send_message(&http, send()).await.expect_err("429");
    assert_eq!(status_and_code(err), (429, -1));
    let sent = channel.send_message(&http, send()).await.expect("send");
    let again = channel.send_message(&http, send()).await.expect("resend");
    assert_eq!(
        again.id, sent.id,
        "the nonce is enforced on multipart posts"
    );
    let posts = fake.requests_matching("POST", &format!("/channels/{CHANNEL}/messages"));
    let digests: Vec<&str> = posts.iter().map(|r| r.files[0].sha256.as_str()).collect();
    assert_eq!(digests, [sha256_hex(&cat).as_str(); 3]);
    assert_eq!(posts[1].body["nonce"], json!("n-1"));
    assert_eq!(fake.messages_in(CHANNEL).len(), 2);

    // GET of the message lists the attachment with a working URL, and is counted.
    let before = fake.media_counts();
    let fetched = channel.message(&http, sent.id).await.expect("get message");
    assert_eq!(
        fake.media_counts().message_fetches,
        before.message_fetches + 1
    );
    assert_eq!(fetched.attachments[0].filename, "again.png");
    assert!(download(&fetched.attachments[0].url).await.3 == cat);

    // An edit of the text keeps the files; one that lists a kept file and adds one has both.
    let edited = channel
        .edit_message(&http, sent.id, EditMessage::new().content("edited"))
        .await
        .expect("edit");
    assert_eq!(
        (edited.content.as_str(), edited.attachments.len()),
        ("edited", 1)
    );
    let kept = edited.attachments[0].id;
    let grown = EditMessage::new()
        .keep_existing_attachment(kept)
        .new_attachment(CreateAttachment::bytes(b"more".to_vec(), "more.txt"));
    let grown = channel
        .edit_message(&http, sent.id, grown)
        .await
        .expect("edit with a new file");
    let names: Vec<&str> = grown
        .attachments
        .iter()
        .map(|a| a.filename.as_str())
        .collect();
    assert_eq!(names, ["again.png", "more.txt"]);
    assert_eq!(grown.attachments[0].id, kept);
    assert_eq!(fake.messages_in(CHANNEL)[1].attachments.len(), 2);

    // Once the message is deleted, its files are gone from the CDN.
    let url = grown.attachments[1].url.clone();
    assert_eq!(download(&url).await.0, 200);
    channel
        .delete_message(&http, sent.id)
        .await
        .expect("delete");
    assert_eq!(download(&url).await.0, 404);
    assert_eq!(fake.attachment_url(kept.get()), None);
}

#[tokio::test]
async fn attachment_urls_expire_and_refresh() {
    let fake = fake().await;
    let http = http(&fake);
    let cat = png(3, 2, 100);
    let hooked = ExecuteWebhook::new()
        .content("a cat")
        .add_file(CreateAttachment::bytes(cat.clone(), "cat.png"))
        .execute(&http, (WebhookId::new(WEBHOOK), WEBHOOK_TOKEN, true))
        .await
        .expect("execute webhook")
        .expect("message");
    let old = hooked.attachments[0].url.clone();
    assert_eq!(download(&old).await.0, 200);

    // Past `ex` on the fake's clock, the URL is refused like the real CDN does.
    fake.expire_attachment_urls();
    let before = fake.media_counts();
    let (status, _, _, body) = download(&old).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (404, "This content is no longer available.")
    );
    assert_eq!(fake.media_counts().cdn_refused, before.cdn_refused + 1);

    // refresh-urls hands out a fresh URL for the same file.
    let refresh = reqwest::Client::new()
        .post(format!(
            "{}/api/v10/attachments/refresh-urls",
            fake.api_url()
        ))
        .header("Authorization", format!("Bot {TOKEN}"))
        .json(&json!({"attachment_urls": [old]}))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refresh.status().as_u16(), 200);
    let answer: serde_json::Value = refresh.json().await.expect("json");
    let pair = &answer["refreshed_urls"][0];
    assert_eq!(pair["original"], json!(old));
    let fresh = pair["refreshed"].as_str().expect("refreshed url");
    assert_ne!(fresh, old);
    assert!(download(fresh).await.3 == cat, "the refreshed URL works");
    assert_eq!(fake.media_counts().url_refreshes, 1);

    // A fetched message carries fresh URLs too; a tampered signature is refused.
    let fetched = http
        .get_webhook_message(WebhookId::new(WEBHOOK), None, WEBHOOK_TOKEN, hooked.id)
        .await
        .expect("get webhook message");
    assert_eq!(download(&fetched.attachments[0].url).await.0, 200);
    let tampered = fetched.attachments[0].url.replace("hm=", "hm=0");
    assert_eq!(download(&tampered).await.0, 404);
    let unsigned = fetched.attachments[0].url.split('?').next().expect("path");
    assert_eq!(download(unsigned).await.0, 404);

    // A short lifetime makes URLs lapse on their own (`ex` counts whole seconds, so a 2 s URL
    // lives 2 to 3 s).
    fake.set_attachment_url_lifetime(Duration::from_secs(2));
    let short = fake
        .attachment_url(hooked.attachments[0].id.get())
        .expect("url");
    assert_eq!(download(&short).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(download(&short).await.0, 404);
}

#[tokio::test]
async fn uploads_keep_discords_limits() {
    let fake = fake().await;
    let http = http(&fake);
    let channel = ChannelId::new(CHANNEL);

    // Exactly 10 MiB goes through; one byte more is Discord's 413.
    let at_limit = vec![7u8; MAX_FILE_BYTES];
    let sent = channel
        .send_message(
            &http,
            CreateMessage::new().add_file(CreateAttachment::bytes(at_limit.clone(), "big.bin")),
        )
        .await
        .expect("a 10 MiB file");
    assert_eq!(sent.attachments[0].size as usize, MAX_FILE_BYTES);
    assert!(download(&sent.attachments[0].url).await.3 == at_limit);
    let over = CreateMessage::new()
        .content("too big")
        .add_file(CreateAttachment::bytes(
            vec![7u8; MAX_FILE_BYTES + 1],
            "big.bin",
        ));
    let err = channel.send_message(&http, over).await.expect_err("413");
    assert_eq!(status_and_code(err), (413, 40005));
    let hook = ExecuteWebhook::new().add_file(CreateAttachment::bytes(
        vec![7u8; 12 * 1024 * 1024],
        "huge.bin",
    ));
    let err = hook
        .execute(&http, (WebhookId::new(WEBHOOK), WEBHOOK_TOKEN, true))
        .await
        .expect_err("413 on webhooks");
    assert_eq!(status_and_code(err), (413, 40005));

    // Eleven files: Discord's 400 with code 30015.
    let files = (0..=MAX_FILES).map(|i| CreateAttachment::bytes(vec![1u8], format!("{i}.txt")));
    let err = channel
        .send_message(&http, CreateMessage::new().add_files(files))
        .await
        .expect_err("11 files");
    assert_eq!(status_and_code(err), (400, 30015));
    assert_eq!(fake.messages_in(CHANNEL).len(), 1, "no refused post landed");
    let statuses: Vec<u16> = (fake.requests().iter()).map(|r| r.status).collect();
    assert_eq!(statuses, [200, 413, 413, 400]);

    // The form the bridge sends with its own client; an `attachments` entry without its
    // `files[n]` part is Discord's form error.
    let form = |payload: serde_json::Value| {
        let part = reqwest::multipart::Part::bytes(b"hello".to_vec())
            .file_name("hello.txt")
            .mime_str("text/plain")
            .expect("mime");
        reqwest::multipart::Form::new()
            .text("payload_json", payload.to_string())
            .part("files[0]", part)
    };
    let url = format!(
        "{}/api/v10/webhooks/{WEBHOOK}/{WEBHOOK_TOKEN}?wait=true",
        fake.api_url()
    );
    let client = reqwest::Client::new();
    let payload = json!({"content": "hi", "attachments": [{"id": 0, "filename": "renamed.txt"}]});
    let ok = client
        .post(&url)
        .multipart(form(payload))
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status().as_u16(), 200);
    let message: serde_json::Value = ok.json().await.expect("json");
    assert_eq!(
        (
            &message["attachments"][0]["filename"],
            &message["attachments"][0]["size"]
        ),
        (&json!("renamed.txt"), &json!(5)),
        "the attachments entry names the file"
    );
    let payload = json!({"content": "hi", "attachments": [{"id": 0}, {"id": 1}]});
    let missing = client
        .post(&url)
        .multipart(form(payload))
        .send()
        .await
        .expect("post");
    assert_eq!(missing.status().as_u16(), 400);
    let body: serde_json::Value = missing.json().await.expect("json");
    assert_eq!(body["code"], json!(50035));
    assert_eq!(
        body["errors"]["attachments"]["1"]["_errors"][0]["code"],
        json!("ATTACHMENT_NOT_FOUND")
    );
}

#[tokio::test]
async fn peoples_attachments_arrive_on_the_gateway() {
    let fake = fake().await;
    let mut bot = Bot::start(&fake, bridge_intents()).await;
    bot.next("ready", |s| matches!(s, Seen::Ready(_))).await;
    let photo: Vec<u8> = (0..20_000).map(|i| (i % 253) as u8).collect();

    let posted = fake.post_user_message(
        UserMessage::new(CHANNEL, Some(GUILD), ada(), "look")
            .file(
                AttachmentFile::new("photo.jpg", "image/jpeg", photo.clone()).dimensions(640, 480),
            )
            .file(AttachmentFile::new("a.ogg", "audio/ogg", b"ogg".to_vec()))
            .sticker(StickerItem::new(42, "wave", 1)),
    );
    let msg = bot.message(id_of(&posted)).await;
    let image = &msg.attachments[0];
    assert_eq!(
        (
            image.filename.as_str(),
            image.size,
            image.content_type.as_deref()
        ),
        ("photo.jpg", 20_000, Some("image/jpeg"))
    );
    assert_eq!((image.width, image.height), (Some(640), Some(480)));
    assert_eq!(msg.attachments[1].width, None);
    let sticker = &msg.sticker_items[0];
    assert_eq!(
        (sticker.id.get(), sticker.name.as_str(), sticker.format_type),
        (42, "wave", StickerFormatType::Png)
    );

    // The dispatched URL serves the bytes; nothing else was asked of the platform.
    let before = fake.media_counts();
    let (status, content_type, length, body) = download(&image.url).await;
    assert_eq!(
        (status, content_type.as_deref(), length),
        (200, Some("image/jpeg"), Some(20_000))
    );
    assert!(body == photo);
    let after = fake.media_counts();
    assert_eq!(
        (
            after.message_fetches,
            after.url_refreshes,
            after.cdn_downloads
        ),
        (
            before.message_fetches,
            before.url_refreshes,
            before.cdn_downloads + 1
        )
    );
    let shown = &fake.messages_in(CHANNEL)[0];
    assert_eq!(shown.attachments[0].sha256, sha256_hex(&photo));

    // Once expired, the dispatched URL is refused; GET of the message gives a working one.
    fake.expire_attachment_urls();
    assert_eq!(download(&image.url).await.0, 404);
    let fetched = ChannelId::new(CHANNEL)
        .message(&http(&fake), msg.id)
        .await
        .expect("get message");
    assert_ne!(fetched.attachments[0].url, image.url);
    assert!(download(&fetched.attachments[0].url).await.3 == photo);
    assert_eq!(fetched.sticker_items.len(), 1);
    bot.shutdown().await;
}

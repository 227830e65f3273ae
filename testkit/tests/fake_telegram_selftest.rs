//! Proves that the fake in `src/fake_telegram.rs` speaks the Bot API as teloxide expects: unmodified
//! teloxide parses what the fake answers (getMe, every injected update kind, sent and edited
//! messages) and maps the fake's errors to the same `RequestError`s the real API produces (HTML
//! parse errors, length limits, 429 with retry_after, 403 when kicked, 409 for a second poller);
//! for media: getFile and downloads of held files, multipart uploads recorded byte for byte,
//! albums, caption edits, and the upload limits.

use std::time::{Duration, Instant};

use hub_bridge_testkit::fake_telegram::{
    sha256_hex, ChatRef, Failure, FakeTelegram, FileHandle, Limits, Media, MediaKind, MemberStatus,
    UserRef, DOWNLOAD_LIMIT, PHOTO_LIMIT, UPLOAD_LIMIT,
};
use serde_json::{json, Value};
use teloxide::net::Download;
use teloxide::prelude::*;
use teloxide::types::{
    AllowedUpdate, ChatMemberKind, FileId, InputFile, InputMedia, InputMediaDocument,
    InputMediaPhoto, MessageEntity, MessageId, ParseMode, ReactionType, ReplyParameters, ThreadId,
    UpdateKind,
};
use teloxide::{ApiError, RequestError};

const TOKEN: &str = "123456:TEST-token_abc";
const GROUP: i64 = -1_001_234_567_890;

async fn fake_and_bot() -> (FakeTelegram, Bot) {
    let tg = FakeTelegram::start(TOKEN).await;
    let bot = Bot::new(TOKEN).set_api_url(tg.api_url().parse().expect("api url"));
    (tg, bot)
}

fn alice() -> UserRef {
    UserRef::new(1001, "Alice")
        .last_name("Liddell")
        .username("alice")
}

fn group() -> ChatRef {
    ChatRef::supergroup(GROUP, "Hub test")
}

/// Polls once, asking for every kind the bridge needs, and returns the batch.
async fn poll(bot: &Bot) -> Vec<Update> {
    let kinds = [
        AllowedUpdate::Message,
        AllowedUpdate::EditedMessage,
        AllowedUpdate::MessageReaction,
        AllowedUpdate::ChatMember,
        AllowedUpdate::MyChatMember,
    ];
    bot.get_updates()
        .timeout(1)
        .allowed_updates(kinds)
        .await
        .expect("getUpdates")
}

fn message(update: &Update) -> &Message {
    match &update.kind {
        UpdateKind::Message(m) | UpdateKind::EditedMessage(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn api_error(result: Result<impl std::fmt::Debug, RequestError>) -> ApiError {
    match result {
        Err(RequestError::Api(e)) => e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn get_me_parses_and_a_wrong_token_is_unauthorized() {
    let (tg, bot) = fake_and_bot().await;
    let me = bot.get_me().await.expect("getMe");
    assert_eq!(me.id, UserId(123456));
    assert!(me.is_bot && me.can_join_groups && me.can_read_all_group_messages);
    assert_eq!(me.username(), "hub_bridge_test_bot");

    let stranger = Bot::new("999:other").set_api_url(tg.api_url().parse().unwrap());
    assert!(matches!(
        api_error(stranger.get_me().await),
        ApiError::InvalidToken
    ));
    assert_eq!(
        tg.calls_of("GetMe")
            .iter()
            .map(|c| c.status)
            .collect::<Vec<_>>(),
        [200, 401]
    );
}

/// Parses a built update the way teloxide parses a getUpdates answer.
fn parse(update: impl Into<Value>) -> Update {
    let mut update = update.into();
    update["update_id"] = 1.into();
    // `from_str`, not `from_value`: serde_json misreads teloxide's flattened types from a Value.
    let parsed: Update = serde_json::from_str(&update.to_string()).expect("an Update");
    assert!(
        !matches!(parsed.kind, UpdateKind::Error(_)),
        "did not parse: {update}"
    );
    parsed
}

/// The message of a `message` update; a message whose content fails to parse would come back as
/// `MessageKind::Empty` rather than an error, hence the accessors checked below.
fn msg(update: Update) -> Message {
    match update.kind {
        UpdateKind::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn every_builder_template_parses_as_its_update_kind() {
    let tg = FakeTelegram::start(TOKEN).await;
    let (chat, user, bob) = (group(), alice(), UserRef::new(1002, "Bob"));
    let text = tg.text_message(&chat, &user, "hello");
    assert_eq!(msg(parse(text.clone())).text(), Some("hello"));
    let reply = tg
        .text_message(&chat, &user, "re")
        .reply_to(text.message_id(), &tg.bot());
    let parent = msg(parse(reply))
        .reply_to_message()
        .cloned()
        .expect("parent");
    assert!(parent.from.is_some_and(|u| u.is_bot));
    let topic = tg.text_message(&chat.clone().forum(), &user, "t").thread(7);
    assert!(msg(parse(topic)).is_topic_message);
    let UpdateKind::EditedMessage(edited) = parse(text.edited("again")).kind else {
        panic!()
    };
    assert_eq!(
        (edited.id.0, edited.text()),
        (text.message_id(), Some("again"))
    );
    let private = msg(parse(tg.text_message(
        &ChatRef::private(&user),
        &user,
        "dm",
    )));
    assert!(private.chat.is_private() && private.chat.id == ChatId(1001));
    assert!(msg(parse(tg.text_message(
        &ChatRef::group(-42, "Basic"),
        &user,
        "hi"
    )))
    .chat
    .is_group());

    let photo = msg(parse(
        tg.media_message(&chat, &user, Media::photo("P1", 5000))
            .caption("cap"),
    ));
    assert_eq!(
        (photo.photo().map(<[_]>::len), photo.caption()),
        (Some(2), Some("cap"))
    );
    let doc = Media::document("D1", "a.pdf", "application/pdf", 9);
    assert_eq!(
        msg(parse(tg.media_message(&chat, &user, doc)))
            .document()
            .unwrap()
            .file
            .size,
        9
    );
    let sticker = msg(parse(tg.media_message(
        &chat,
        &user,
        Media::sticker("S1", "🙂"),
    )));
    assert_eq!(
        sticker.sticker().and_then(|s| s.emoji.as_deref()),
        Some("🙂")
    );
    let voice = msg(parse(tg.media_message(
        &chat,
        &user,
        Media::voice("V1", 3, 4000),
    )));
    assert_eq!(voice.voice().map(|v| v.duration.seconds()), Some(3));
    let joined = msg(parse(tg.new_chat_members(
        &chat,
        &user,
        std::slice::from_ref(&bob),
    )));
    assert_eq!(
        joined.new_chat_members().map(|m| m[0].id),
        Some(UserId(1002))
    );
    let left = msg(parse(tg.left_chat_member(&chat, &user, &bob)));
    assert_eq!(left.left_chat_member().map(|u| u.id), Some(UserId(1002)));

    let reaction = parse(tg.reaction(&chat, &user, 5, &[], &["👍"]));
    assert!(
        matches!(reaction.kind, UpdateKind::MessageReaction(r) if r.message_id == MessageId(5))
    );
    for (old, new) in [
        (MemberStatus::Left, MemberStatus::Member),
        (MemberStatus::Member, MemberStatus::Kicked),
    ] {
        let UpdateKind::ChatMember(change) =
            parse(tg.chat_member(&chat, &user, &bob, old, new)).kind
        else {
            panic!()
        };
        assert_eq!(change.new_chat_member.user.id, UserId(1002));
    }
    let promoted = parse(tg.my_chat_member(
        &chat,
        &user,
        MemberStatus::Member,
        MemberStatus::Administrator,
    ));
    let UpdateKind::MyChatMember(change) = promoted.kind else {
        panic!()
    };
    assert!(
        change.new_chat_member.is_administrator()
            && change.new_chat_member.user.id == UserId(123456)
    );
}

#[tokio::test]
async fn injected_updates_arrive_through_get_updates_with_their_fields() {
    let (tg, bot) = fake_and_bot().await;
    let (chat, user) = (group(), alice());
    let first = tg.text_message(&chat, &user, "hello");
    tg.inject(first.clone());
    tg.inject(
        tg.text_message(&chat, &user, "re")
            .reply_to(first.message_id(), &user)
            .thread(first.message_id()),
    );
    tg.inject(first.edited("hello, edited"));
    tg.inject(tg.reaction(&chat, &user, first.message_id(), &["👍"], &["🔥"]));
    tg.inject(
        tg.media_message(&chat, &user, Media::photo("PHOTO", 54321))
            .caption("look"),
    );
    tg.inject(tg.media_message(
        &chat,
        &user,
        Media::document("DOC", "notes.txt", "text/plain", 12),
    ));
    tg.inject(tg.new_chat_members(&chat, &user, &[UserRef::new(1002, "Bob")]));
    tg.inject(tg.chat_member(
        &chat,
        &user,
        &UserRef::new(1002, "Bob"),
        MemberStatus::Member,
        MemberStatus::Left,
    ));

    let updates = poll(&bot).await;
    assert_eq!(updates.len(), 8);
    let ids: Vec<u32> = updates.iter().map(|u| u.id.0).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "update ids increase: {ids:?}"
    );

    let hello = message(&updates[0]);
    assert_eq!(
        (hello.id, hello.chat.id, hello.text()),
        (MessageId(first.message_id()), ChatId(GROUP), Some("hello"))
    );
    let from = hello.from.as_ref().unwrap();
    assert_eq!(
        (from.id, from.username.as_deref(), from.last_name.as_deref()),
        (UserId(1001), Some("alice"), Some("Liddell"))
    );

    let reply = message(&updates[1]);
    assert_eq!(
        reply.reply_to_message().map(|m| m.id),
        Some(MessageId(first.message_id()))
    );
    assert_eq!(
        reply.thread_id,
        Some(ThreadId(MessageId(first.message_id())))
    );
    assert!(reply.id.0 > hello.id.0, "message ids increase per chat");

    assert!(matches!(updates[2].kind, UpdateKind::EditedMessage(_)));
    assert_eq!(message(&updates[2]).text(), Some("hello, edited"));
    assert!(message(&updates[2]).edit_date().is_some());

    let UpdateKind::MessageReaction(reaction) = &updates[3].kind else {
        panic!("{:?}", updates[3])
    };
    assert_eq!(reaction.message_id, MessageId(first.message_id()));
    assert_eq!(reaction.user().map(|u| u.id), Some(UserId(1001)));
    assert_eq!(
        reaction.new_reaction,
        [ReactionType::Emoji {
            emoji: "🔥".into()
        }]
    );

    let photo = message(&updates[4]);
    let largest = photo.photo().and_then(|sizes| sizes.last()).unwrap();
    assert_eq!(
        (
            largest.file.id.0.as_str(),
            largest.file.size,
            photo.caption()
        ),
        ("PHOTO", 54321, Some("look"))
    );
    let document = message(&updates[5]).document().unwrap();
    assert_eq!(
        (
            document.file_name.as_deref(),
            document.mime_type.as_ref().map(|m| m.essence_str())
        ),
        (Some("notes.txt"), Some("text/plain"))
    );
    assert_eq!(
        message(&updates[6]).new_chat_members().map(|m| m[0].id),
        Some(UserId(1002))
    );

    let UpdateKind::ChatMember(member) = &updates[7].kind else {
        panic!("{:?}", updates[7])
    };
    assert_eq!(member.new_chat_member.user.id, UserId(1002));
    assert!(matches!(member.new_chat_member.kind, ChatMemberKind::Left));
    assert_eq!(tg.allowed_updates().unwrap()[2], "message_reaction");
}

#[tokio::test]
async fn an_offset_acknowledges_updates_for_good() {
    let (tg, bot) = fake_and_bot().await;
    let ids: Vec<i64> = (0..3)
        .map(|i| tg.inject(tg.text_message(&group(), &alice(), &format!("m{i}"))))
        .collect();
    assert_eq!(
        poll(&bot).await.len(),
        3,
        "without an offset nothing is acknowledged"
    );

    let rest = bot.get_updates().offset(ids[1] as i32 + 1).await.unwrap();
    assert_eq!(
        rest.iter().map(|u| i64::from(u.id.0)).collect::<Vec<_>>(),
        [ids[2]]
    );
    // Asking again from an older offset does not bring acknowledged updates back.
    let again = bot.get_updates().offset(ids[0] as i32).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(tg.offsets(), [ids[1] + 1, ids[0]]);
    assert_eq!(tg.pending_updates(), [ids[2]]);
}

#[tokio::test]
async fn a_long_poll_wakes_on_inject_and_otherwise_times_out() {
    let (tg, bot) = fake_and_bot().await;
    let started = Instant::now();
    assert!(bot.get_updates().timeout(1).await.unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for its timeout"
    );

    let poller = tokio::spawn({
        let bot = bot.clone();
        async move { bot.get_updates().timeout(8).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let id = tg.inject(tg.text_message(&group(), &alice(), "wake up"));
    let updates = poller.await.unwrap().unwrap();
    assert_eq!(
        updates
            .iter()
            .map(|u| i64::from(u.id.0))
            .collect::<Vec<_>>(),
        [id]
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered as soon as the update arrived"
    );
}

#[tokio::test]
async fn a_second_poller_terminates_the_first_with_409() {
    let (_tg, bot) = fake_and_bot().await;
    let first = tokio::spawn({
        let bot = bot.clone();
        async move { bot.get_updates().timeout(5).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = bot.get_updates().timeout(1).await;
    assert!(matches!(
        api_error(first.await.unwrap()),
        ApiError::TerminatedByOtherGetUpdates
    ));
    assert!(second.unwrap().is_empty());
}

#[tokio::test]
async fn reactions_are_dropped_unless_allowed_updates_asks_for_them() {
    let (tg, bot) = fake_and_bot().await;
    tg.inject(tg.reaction(&group(), &alice(), 1, &[], &["👍"]));
    let text = tg.inject(tg.text_message(&group(), &alice(), "hi"));
    let updates = bot.get_updates().await.unwrap();
    assert_eq!(
        updates
            .iter()
            .map(|u| i64::from(u.id.0))
            .collect::<Vec<_>>(),
        [text]
    );
    assert_eq!(
        tg.pending_updates(),
        [text],
        "the reaction is gone for good"
    );
}

#[tokio::test]
async fn html_is_validated_like_the_bot_api() {
    let (tg, bot) = fake_and_bot().await;
    let chat = ChatId(GROUP);
    let html = r#"<b>bold</b> &amp; <a href="https://x.org/?a=1&amp;b=2">link</a> <span class="tg-spoiler">s</span> <pre><code class="language-rust">1 &lt; 2</code></pre> <blockquote expandable>q</blockquote> &#128512;"#;
    let sent = bot
        .send_message(chat, html)
        .parse_mode(ParseMode::Html)
        .await
        .expect("valid HTML");
    assert_eq!(sent.text(), Some("bold & link s 1 < 2 q 😀"));
    assert_eq!(sent.from.as_ref().map(|u| u.id), Some(UserId(123456)));

    for invalid in [
        "a<b c>d",
        "x < y",
        "<b>open",
        "<i>x</b>",
        "</b>",
        "<br>",
        "<span>x</span>",
        "a & b",
        "&nbsp;",
    ] {
        let result = bot
            .send_message(chat, invalid)
            .parse_mode(ParseMode::Html)
            .await;
        match api_error(result) {
            ApiError::CantParseEntities(desc) => assert!(
                desc.starts_with("Bad Request: can't parse entities: "),
                "{desc}"
            ),
            other => panic!("{invalid:?} gave {other:?}"),
        }
    }
    // The same characters are fine without a parse mode.
    bot.send_message(chat, "a<b c>d & e")
        .await
        .expect("plain text");
    let shown: Vec<String> = tg.messages_in(GROUP).into_iter().map(|m| m.plain).collect();
    assert_eq!(shown, ["bold & link s 1 < 2 q 😀", "a<b c>d & e"]);
}

#[tokio::test]
async fn text_length_is_counted_in_utf16_units_after_entity_parsing() {
    let (_tg, bot) = fake_and_bot().await;
    let chat = ChatId(GROUP);
    // An emoji outside the BMP is two UTF-16 units.
    let fits = format!("<b>{}</b>", "😀".repeat(2048));
    bot.send_message(chat, fits)
        .parse_mode(ParseMode::Html)
        .await
        .expect("4096 units fit");
    let long = bot.send_message(chat, "😀".repeat(2048) + "x").await;
    assert!(matches!(api_error(long), ApiError::MessageIsTooLong));
    let empty = bot
        .send_message(chat, "<b> </b>")
        .parse_mode(ParseMode::Html)
        .await;
    assert!(matches!(api_error(empty), ApiError::MessageTextIsEmpty));
}

#[tokio::test]
async fn replies_and_threads_are_echoed() {
    let (tg, bot) = fake_and_bot().await;
    let parent = tg.text_message(&group(), &alice(), "question");
    tg.inject(parent.clone());
    let reply = bot
        .send_message(ChatId(GROUP), "answer")
        .reply_parameters(ReplyParameters::new(MessageId(parent.message_id())))
        .message_thread_id(ThreadId(MessageId(parent.message_id())))
        .await
        .unwrap();
    let echoed = reply.reply_to_message().expect("reply_to_message");
    assert_eq!(
        (echoed.id.0, echoed.text()),
        (parent.message_id(), Some("question"))
    );
    assert_eq!(
        reply.thread_id,
        Some(ThreadId(MessageId(parent.message_id())))
    );
    assert_eq!(
        reply.id.0,
        parent.message_id() + 1,
        "people and the bot share a chat's message ids"
    );
    assert_eq!(tg.messages_in(GROUP)[0].reply_to, Some(parent.message_id()));

    let orphan = bot
        .send_message(ChatId(GROUP), "x")
        .reply_parameters(ReplyParameters::new(MessageId(999)))
        .await;
    assert!(matches!(
        api_error(orphan),
        ApiError::MessageToReplyNotFound
    ));
    let allowed = ReplyParameters::new(MessageId(999)).allow_sending_without_reply();
    let sent = bot
        .send_message(ChatId(GROUP), "x")
        .reply_parameters(allowed)
        .await
        .unwrap();
    assert!(sent.reply_to_message().is_none());
}

#[tokio::test]
async fn edits_and_deletes_change_what_the_chat_shows() {
    let (tg, bot) = fake_and_bot().await;
    let chat = ChatId(GROUP);
    let one = bot
        .send_message(chat, "<b>one</b>")
        .parse_mode(ParseMode::Html)
        .await
        .unwrap();
    let two = bot.send_message(chat, "two").await.unwrap();

    let edited = bot
        .edit_message_text(chat, one.id, "<i>uno</i>")
        .parse_mode(ParseMode::Html)
        .await
        .unwrap();
    assert_eq!(
        (edited.text(), edited.edit_date().is_some()),
        (Some("uno"), true)
    );
    let same = bot
        .edit_message_text(chat, one.id, "<i>uno</i>")
        .parse_mode(ParseMode::Html)
        .await;
    assert!(matches!(api_error(same), ApiError::MessageNotModified));
    let broken = bot
        .edit_message_text(chat, one.id, "<i>uno")
        .parse_mode(ParseMode::Html)
        .await;
    assert!(matches!(api_error(broken), ApiError::CantParseEntities(_)));

    bot.delete_message(chat, two.id)
        .await
        .expect("deleteMessage");
    let gone = bot.edit_message_text(chat, two.id, "dos").await;
    assert!(matches!(api_error(gone), ApiError::MessageToEditNotFound));
    assert!(matches!(
        api_error(bot.delete_message(chat, two.id).await),
        ApiError::MessageToDeleteNotFound
    ));

    let shown = tg.messages_in(GROUP);
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (
            shown[0].message_id,
            shown[0].text.as_str(),
            shown[0].plain.as_str()
        ),
        (one.id.0, "<i>uno</i>", "uno")
    );
    assert_eq!(shown[0].parse_mode.as_deref(), Some("HTML"));
}

#[tokio::test]
async fn bots_set_one_reaction_from_the_allowed_list() {
    let (tg, bot) = fake_and_bot().await;
    let chat = ChatId(GROUP);
    let target = tg.text_message(&group(), &alice(), "react to me");
    tg.inject(target.clone());
    let id = MessageId(target.message_id());
    let emoji = |e: &str| ReactionType::Emoji { emoji: e.into() };

    bot.set_message_reaction(chat, id)
        .reaction([emoji("👍")])
        .await
        .expect("one reaction");
    assert_eq!(tg.reactions_on(GROUP, id.0), ["👍"]);
    let two = bot
        .set_message_reaction(chat, id)
        .reaction([emoji("👍"), emoji("🔥")])
        .await;
    assert!(
        matches!(api_error(two), ApiError::Unknown(d) if d == "Bad Request: REACTIONS_TOO_MANY")
    );
    let odd = bot
        .set_message_reaction(chat, id)
        .reaction([emoji("✅")])
        .await;
    assert!(matches!(api_error(odd), ApiError::Unknown(d) if d == "Bad Request: REACTION_INVALID"));
    bot.set_message_reaction(chat, id).await.expect("clearing");
    assert!(tg.reactions_on(GROUP, id.0).is_empty());
}

#[tokio::test]
async fn a_failure_after_some_calls_hits_exactly_the_next_one() {
    let (tg, bot) = fake_and_bot().await;
    let chat = ChatId(GROUP);
    tg.fail_after(
        "sendMessage",
        2,
        Failure::Forbidden("bot was kicked".into()),
    );
    for text in ["a", "b", "c", "d"] {
        let _ = bot.send_message(chat, text).await;
    }
    let statuses: Vec<u16> = tg
        .calls_of("sendmessage")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [200, 200, 403, 200]);
}

#[tokio::test]
async fn injected_failures_surface_as_teloxide_errors() {
    let (tg, bot) = fake_and_bot().await;
    let chat = ChatId(GROUP);
    tg.fail_next("sendMessage", Failure::RetryAfter(3));
    tg.fail_next("SENDMESSAGE", Failure::BadRequest("chat not found".into()));
    match bot.send_message(chat, "a").await {
        Err(RequestError::RetryAfter(secs)) => assert_eq!(secs.seconds(), 3),
        other => panic!("expected RetryAfter, got {other:?}"),
    }
    assert!(matches!(
        api_error(bot.send_message(chat, "b").await),
        ApiError::ChatNotFound
    ));
    bot.send_message(chat, "c")
        .await
        .expect("the queue is drained");
    assert_eq!(tg.count_429(), 1);
    let statuses: Vec<u16> = tg
        .calls_of("sendmessage")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [429, 400, 200]);
    assert_eq!(
        tg.calls_of("sendmessage")[0].response["parameters"]["retry_after"],
        3
    );
}

#[tokio::test]
async fn a_forbidden_chat_answers_403_by_chat_kind() {
    let (tg, bot) = fake_and_bot().await;
    tg.forbid_chat(GROUP);
    tg.forbid_chat(-42);
    tg.forbid_chat(1001);
    assert!(matches!(
        api_error(bot.send_message(ChatId(GROUP), "x").await),
        ApiError::BotKickedFromSupergroup
    ));
    assert!(matches!(
        api_error(bot.send_message(ChatId(1001), "x").await),
        ApiError::BotBlocked
    ));
    // teloxide has no variant for basic groups; the real description still comes through.
    let basic = api_error(bot.send_message(ChatId(-42), "x").await);
    assert!(
        matches!(&basic, ApiError::Unknown(d) if d == "Forbidden: bot was kicked from the group chat"),
        "{basic:?}"
    );
    assert!(tg.calls().iter().all(|c| c.status == 403));
}

#[tokio::test]
async fn enforced_limits_answer_429_with_a_realistic_retry_after() {
    let (tg, bot) = fake_and_bot().await;
    tg.enforce_limits(Limits {
        per_chat_per_sec: 0,
        ..Limits::default()
    });
    for i in 0..20 {
        bot.send_message(ChatId(GROUP), format!("m{i}"))
            .await
            .expect("20 per minute fit");
    }
    match bot.send_message(ChatId(GROUP), "m20").await {
        Err(RequestError::RetryAfter(secs)) => {
            assert!((55..=60).contains(&secs.seconds()), "{secs:?}")
        }
        other => panic!("expected RetryAfter, got {other:?}"),
    }
    // Other chats, private ones, and non-send methods are not affected by this group's window.
    bot.send_message(ChatId(-42), "other group").await.unwrap();
    bot.send_message(ChatId(1001), "private").await.unwrap();
    bot.send_chat_action(ChatId(GROUP), teloxide::types::ChatAction::Typing)
        .await
        .unwrap();
    assert_eq!(tg.count_429(), 1);

    tg.enforce_limits(Limits::default());
    bot.send_message(ChatId(1001), "again")
        .await
        .expect_err("a second message within a second");
    assert_eq!(tg.count_429(), 2);
    assert_eq!(
        tg.messages_in(GROUP).len(),
        20,
        "rejected sends are not shown"
    );
}

#[tokio::test]
async fn calls_are_recorded_and_awaitable_and_other_encodings_work() {
    let (tg, bot) = fake_and_bot().await;
    let waiter = tokio::spawn({
        let tg = tg.clone();
        async move {
            tg.wait_for("sendChatAction", 2, Duration::from_secs(5))
                .await
        }
    });
    for _ in 0..2 {
        bot.send_chat_action(ChatId(GROUP), teloxide::types::ChatAction::Typing)
            .await
            .unwrap();
    }
    let calls = waiter.await.unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].body, json!({"chat_id": GROUP, "action": "typing"}));

    // Form-encoded and GET requests, as curl or other clients send them.
    let http = reqwest::Client::new();
    let form: Value = http
        .post(format!("{}/bot{TOKEN}/sendMessage", tg.api_url()))
        .form(&[
            ("chat_id", GROUP.to_string()),
            ("text", "<b>form</b>".into()),
            ("parse_mode", "HTML".into()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(form["result"]["text"], "form");
    let chat: Value = http
        .get(format!(
            "{}/bot{TOKEN}/getChat?chat_id={GROUP}",
            tg.api_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chat["result"]["type"], "supergroup");
    let full = bot.get_chat(ChatId(GROUP)).await.expect("getChat parses");
    assert_eq!(full.id, ChatId(GROUP));
}

#[tokio::test]
async fn stopping_the_fake_releases_a_held_poll() {
    let (tg, bot) = fake_and_bot().await;
    let poller = tokio::spawn({
        let bot = bot.clone();
        async move { bot.get_updates().timeout(8).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    tg.stop();
    let _ = poller.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(bot.get_me().await.is_err(), "nothing answers after stop");
}

// ---------------------------------------------------------------------------------------------
// Files, uploads and downloads (`src/fake_telegram/media.rs`)
// ---------------------------------------------------------------------------------------------

/// `len` bytes that differ from one `seed` to another, so two uploads never hash alike.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        })
        .collect()
}

/// A PNG header of `width` x `height` followed by `len` bytes of noise: the fake reads the size
/// from the header and never decodes the rest.
fn png(width: u32, height: u32, len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bytes.extend(width.to_be_bytes());
    bytes.extend(height.to_be_bytes());
    bytes.extend(noise(len, seed));
    bytes
}

/// The description of an API error teloxide has no variant for.
fn description(e: ApiError) -> String {
    match e {
        ApiError::Unknown(text) => text,
        other => panic!("expected an error teloxide does not know, got {other:?}"),
    }
}

async fn download(bot: &Bot, file_id: &str) -> (teloxide::types::File, Vec<u8>) {
    let file = bot.get_file(FileId(file_id.into())).await.expect("getFile");
    let mut bytes = Vec::new();
    bot.download_file(&file.path, &mut bytes)
        .await
        .expect("download");
    (file, bytes)
}

#[tokio::test]
async fn a_held_file_is_found_by_get_file_and_downloaded_byte_for_byte() {
    let (tg, bot) = fake_and_bot().await;
    let bytes = noise(3 << 20, 1);
    let held = tg.add_file(bytes.clone(), MediaKind::Document);
    assert_eq!(held.size as usize, bytes.len());
    assert!(tg.calls_of("getFile").is_empty() && tg.downloads().is_empty());

    let (file, downloaded) = download(&bot, &held.file_id).await;
    assert_eq!(
        (file.id.0.as_str(), file.unique_id.0.as_str(), file.size),
        (
            held.file_id.as_str(),
            held.file_unique_id.as_str(),
            held.size
        )
    );
    assert_eq!(file.path, held.file_path);
    assert!(
        file.path.starts_with("documents/"),
        "a relative path: {}",
        file.path
    );
    assert!(
        downloaded == bytes,
        "the downloaded bytes are the held ones"
    );
    assert_eq!(tg.calls_of("getFile").len(), 1);
    let downloads = tg.downloads();
    assert_eq!(downloads.len(), 1);
    assert_eq!(
        (
            downloads[0].file_path.as_str(),
            downloads[0].status,
            downloads[0].len
        ),
        (held.file_path.as_str(), 200, bytes.len())
    );

    // The bytes come with their length; a wrong token or path is 404, as on api.telegram.org.
    let http = reqwest::Client::new();
    let url = |token: &str, path: &str| format!("{}/file/bot{token}/{path}", tg.api_url());
    let served = http.get(url(TOKEN, &held.file_path)).send().await.unwrap();
    assert_eq!(
        served.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    for wrong in [
        url("999:other", &held.file_path),
        url(TOKEN, "documents/none.bin"),
    ] {
        let answer = http.get(wrong).send().await.unwrap();
        assert_eq!(answer.status(), 404);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["description"], "Not Found");
    }
    assert_eq!(
        tg.downloads().iter().map(|d| d.status).collect::<Vec<_>>(),
        [200, 200, 404, 404]
    );

    // Unknown ids and files over the public Bot API's 20 MB are refused as the real server does.
    let unknown = bot.get_file(FileId("nope".into())).await;
    assert_eq!(
        description(api_error(unknown)),
        "Bad Request: invalid file_id"
    );
    let big = tg.add_file(vec![7u8; DOWNLOAD_LIMIT + 1], MediaKind::Video);
    let too_big = bot.get_file(FileId(big.file_id)).await;
    assert_eq!(
        description(api_error(too_big)),
        "Bad Request: file is too big"
    );
}

#[tokio::test]
async fn injected_media_of_every_kind_parses_and_its_files_download() {
    let (tg, bot) = fake_and_bot().await;
    let (chat, user) = (group(), alice());
    let sizes = [(90, 67), (320, 240), (1280, 960)];
    let photo_files: Vec<(FileHandle, u32, u32)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| {
            let bytes = png(w, h, 1000 * (i + 1), i as u64);
            (tg.add_file(bytes, MediaKind::Photo), w, h)
        })
        .collect();
    let refs: Vec<(&FileHandle, u32, u32)> =
        photo_files.iter().map(|(f, w, h)| (f, *w, *h)).collect();
    let file = |kind| tg.add_file(noise(4096, 9), kind);
    let updates = [
        tg.media_message(&chat, &user, Media::photo_sizes(&refs))
            .caption("three sizes"),
        tg.media_message(
            &chat,
            &user,
            Media::document_file(&file(MediaKind::Document), "report.pdf", "application/pdf"),
        ),
        tg.media_message(
            &chat,
            &user,
            Media::audio_file(&file(MediaKind::Audio), 200, "song.mp3", "audio/mpeg"),
        ),
        tg.media_message(&chat, &user, Media::voice_file(&file(MediaKind::Voice), 4)),
        tg.media_message(
            &chat,
            &user,
            Media::video_file(&file(MediaKind::Video), 1920, 1080, 12),
        )
        .caption("clip"),
        tg.media_message(
            &chat,
            &user,
            Media::animation_file(&file(MediaKind::Animation), 480, 270, 3),
        ),
        tg.media_message(
            &chat,
            &user,
            Media::video_note_file(&file(MediaKind::VideoNote), 384, 9),
        ),
        tg.media_message(
            &chat,
            &user,
            Media::sticker_file(&file(MediaKind::Sticker), "🙂"),
        ),
    ];
    for update in &updates {
        tg.inject(update.clone());
    }
    let album = tg.album(
        &chat,
        &user,
        vec![
            Media::photo_sizes(&refs[2..]),
            Media::video_file(&file(MediaKind::Video), 640, 360, 5),
        ],
    );
    tg.inject(album[0].clone().caption("album"));
    tg.inject(album[1].clone());

    let got = poll(&bot).await;
    assert_eq!(got.len(), 10);
    let photo = message(&got[0]);
    let shown: Vec<(u32, u32)> = photo
        .photo()
        .unwrap()
        .iter()
        .map(|s| (s.width, s.height))
        .collect();
    assert_eq!(shown, sizes);
    assert_eq!(photo.caption(), Some("three sizes"));
    let document = message(&got[1]).document().unwrap();
    assert_eq!(
        (
            document.file_name.as_deref(),
            document.mime_type.as_ref().map(|m| m.essence_str())
        ),
        (Some("report.pdf"), Some("application/pdf"))
    );
    let audio = message(&got[2]).audio().unwrap();
    assert_eq!(
        (audio.duration.seconds(), audio.file_name.as_deref()),
        (200, Some("song.mp3"))
    );
    assert_eq!(
        message(&got[3]).voice().map(|v| v.duration.seconds()),
        Some(4)
    );
    let video = message(&got[4]);
    assert_eq!(
        video
            .video()
            .map(|v| (v.width, v.height, v.duration.seconds())),
        Some((1920, 1080, 12))
    );
    assert_eq!(video.caption(), Some("clip"));
    assert_eq!(
        message(&got[5]).animation().map(|a| (a.width, a.height)),
        Some((480, 270))
    );
    assert_eq!(message(&got[6]).video_note().map(|v| v.length), Some(384));
    let sticker = message(&got[7]).sticker().unwrap();
    assert_eq!(
        (sticker.emoji.as_deref(), sticker.is_static()),
        (Some("🙂"), true)
    );
    let (first, second) = (message(&got[8]), message(&got[9]));
    assert!(first.media_group_id().is_some());
    assert_eq!(first.media_group_id(), second.media_group_id());
    assert_eq!((first.caption(), second.caption()), (Some("album"), None));
    assert!(second.video().is_some());

    // Each size is a file of its own: the largest downloads as the largest's bytes.
    let largest = photo.photo().unwrap().last().unwrap();
    let (_, bytes) = download(&bot, &largest.file.id.0).await;
    assert!(bytes == tg.file_bytes(&photo_files[2].0.file_id).unwrap());
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() == 3000 + 24);
}

#[tokio::test]
async fn uploaded_photos_and_documents_are_recorded_byte_for_byte() {
    let (tg, bot) = fake_and_bot().await;
    let parent = tg.text_message(&group(), &alice(), "send me the chart");
    tg.inject(parent.clone());
    let picture = png(1280, 960, 200_000, 2);
    let sent = bot
        .send_photo(ChatId(GROUP), InputFile::memory(picture.clone()))
        .caption("<b>the</b> chart")
        .parse_mode(ParseMode::Html)
        .reply_parameters(ReplyParameters::new(MessageId(parent.message_id())))
        .await
        .expect("sendPhoto");
    let size = sent.photo().and_then(|s| s.last()).unwrap();
    assert_eq!((size.width, size.height), (1280, 960));
    assert_eq!(size.file.size as usize, picture.len());
    assert_eq!(sent.caption(), Some("the chart"));
    assert_eq!(
        sent.reply_to_message().map(|m| m.id),
        Some(MessageId(parent.message_id()))
    );

    let call = &tg.calls_of("sendPhoto")[0];
    assert_eq!(call.uploads.len(), 1);
    let upload = &call.uploads[0];
    assert_eq!(
        (upload.len, upload.sha256.as_str()),
        (picture.len(), sha256_hex(&picture).as_str())
    );
    assert_eq!(
        upload.file_name.as_deref(),
        Some(""),
        "teloxide names a memory file \"\""
    );
    // The other parts stay in `body`, as for a JSON request.
    assert_eq!(call.body["caption"], "<b>the</b> chart");
    assert_eq!(call.body["parse_mode"], "HTML");
    assert_eq!(
        call.body["photo"],
        format!("attach://{}", upload.part).as_str()
    );
    assert_eq!(
        call.body["reply_parameters"]["message_id"],
        parent.message_id()
    );

    let shown = &tg.messages_in(GROUP)[0];
    let media = shown.media.as_ref().expect("a media message");
    assert_eq!(
        (media.kind, media.uploaded, media.sha256.as_str()),
        (MediaKind::Photo, true, upload.sha256.as_str())
    );
    assert_eq!(
        (shown.text.as_str(), shown.plain.as_str()),
        ("<b>the</b> chart", "the chart")
    );
    assert_eq!(shown.reply_to, Some(parent.message_id()));
    // The uploaded photo is a file the bot can fetch again.
    let (_, again) = download(&bot, &size.file.id.0).await;
    assert!(again == picture);

    // A 12 MB document goes through (well above axum's default 2 MB body limit).
    let report = noise(12 << 20, 3);
    let entities = vec![MessageEntity::bold(0, 6)];
    let sent = bot
        .send_document(
            ChatId(GROUP),
            InputFile::memory(report.clone()).file_name("report.pdf"),
        )
        .caption("Report for May")
        .caption_entities(entities.clone())
        .await
        .expect("sendDocument");
    let document = sent.document().unwrap();
    assert_eq!(
        (
            document.file_name.as_deref(),
            document.mime_type.as_ref().map(|m| m.essence_str()),
            document.file.size as usize
        ),
        (Some("report.pdf"), Some("application/pdf"), report.len())
    );
    assert_eq!(sent.caption_entities(), Some(&entities[..]));
    let upload = &tg.calls_of("sendDocument")[0].uploads[0];
    assert_eq!(upload.file_name.as_deref(), Some("report.pdf"));
    assert_eq!(upload.sha256, sha256_hex(&report));
    let media = tg.messages_in(GROUP)[1].media.clone().unwrap();
    assert_eq!(
        (media.file_name.as_deref(), media.len, media.sha256),
        (Some("report.pdf"), report.len(), sha256_hex(&report))
    );
    assert_eq!(
        media.caption_entities.unwrap()[0]["type"],
        "bold",
        "the entities are kept as sent"
    );

    // Sending a held file by its id re-sends it without an upload.
    let resent = bot
        .send_document(ChatId(GROUP), InputFile::file_id(document.file.id.clone()))
        .await
        .expect("sendDocument by id");
    assert_eq!(resent.document().unwrap().file.id, document.file.id);
    let media = tg.messages_in(GROUP)[2].media.clone().unwrap();
    assert!(!media.uploaded && media.sha256 == sha256_hex(&report));
    assert!(tg.calls_of("sendDocument")[1].uploads.is_empty());
}

#[tokio::test]
async fn an_album_is_one_message_per_item_sharing_a_media_group_id() {
    let (tg, bot) = fake_and_bot().await;
    let (first, second) = (png(800, 600, 5000, 4), png(600, 800, 6000, 5));
    let photo =
        |bytes: &Vec<u8>| InputMedia::Photo(InputMediaPhoto::new(InputFile::memory(bytes.clone())));
    let caption = InputMedia::Photo(
        InputMediaPhoto::new(InputFile::memory(first.clone())).caption("two views"),
    );
    let sent = bot
        .send_media_group(ChatId(GROUP), vec![caption, photo(&second)])
        .await
        .expect("sendMediaGroup");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].id.0, sent[0].id.0 + 1);
    assert!(sent[0].media_group_id().is_some());
    assert_eq!(sent[0].media_group_id(), sent[1].media_group_id());
    assert_eq!(
        (sent[0].caption(), sent[1].caption()),
        (Some("two views"), None)
    );
    let widths: Vec<u32> = sent
        .iter()
        .map(|m| m.photo().unwrap().last().unwrap().width)
        .collect();
    assert_eq!(widths, [800, 600]);

    let shown = tg.messages_in(GROUP);
    let hashes: Vec<String> = shown
        .iter()
        .map(|m| m.media.as_ref().unwrap().sha256.clone())
        .collect();
    assert_eq!(hashes, [sha256_hex(&first), sha256_hex(&second)]);
    // The uploads are recorded in the order of the album's items.
    let uploaded: Vec<String> = tg.calls_of("sendMediaGroup")[0]
        .uploads
        .iter()
        .map(|u| u.sha256.clone())
        .collect();
    assert_eq!(uploaded, hashes);

    // 2-10 items, and documents only with documents.
    let eleven: Vec<InputMedia> = (0..11).map(|_| photo(&first)).collect();
    let document = InputMedia::Document(InputMediaDocument::new(InputFile::memory(noise(10, 6))));
    for (items, expected) in [
        (
            vec![photo(&first)],
            "Bad Request: media group must include 2-10 items",
        ),
        (eleven, "Bad Request: too many messages to send as an album"),
        (
            vec![photo(&first), document],
            "Bad Request: document can't be mixed with other media types",
        ),
    ] {
        let refused = bot.send_media_group(ChatId(GROUP), items).await;
        assert_eq!(description(api_error(refused)), expected);
    }
    assert_eq!(
        tg.messages_in(GROUP).len(),
        2,
        "a refused album sends nothing"
    );
}

#[tokio::test]
async fn captions_are_edited_on_media_and_texts_on_text_only() {
    let (tg, bot) = fake_and_bot().await;
    let photo = bot
        .send_photo(ChatId(GROUP), InputFile::memory(png(10, 10, 10, 7)))
        .caption("before")
        .await
        .unwrap();
    let edited = bot
        .edit_message_caption(ChatId(GROUP), photo.id)
        .caption("<i>after</i>")
        .parse_mode(ParseMode::Html)
        .await
        .expect("editMessageCaption");
    assert_eq!(edited.caption(), Some("after"));
    assert!(edited.photo().is_some() && edited.edit_date().is_some());
    let shown = &tg.messages_in(GROUP)[0];
    assert_eq!(
        (shown.plain.as_str(), shown.edit_date.is_some()),
        ("after", true)
    );
    assert!(matches!(
        api_error(
            bot.edit_message_caption(ChatId(GROUP), photo.id)
                .caption("<i>after</i>")
                .parse_mode(ParseMode::Html)
                .await
        ),
        ApiError::MessageNotModified
    ));
    let no_text = bot.edit_message_text(ChatId(GROUP), photo.id, "text").await;
    assert_eq!(
        description(api_error(no_text)),
        "Bad Request: there is no text in the message to edit"
    );

    let text = bot.send_message(ChatId(GROUP), "plain").await.unwrap();
    let no_caption = bot
        .edit_message_caption(ChatId(GROUP), text.id)
        .caption("caption")
        .await;
    assert_eq!(
        description(api_error(no_caption)),
        "Bad Request: there is no caption in the message to edit"
    );

    bot.delete_message(ChatId(GROUP), photo.id)
        .await
        .expect("a media message can be deleted");
    assert_eq!(tg.messages_in(GROUP).len(), 1);
}

#[tokio::test]
async fn upload_limits_are_the_real_servers() {
    let (tg, bot) = fake_and_bot().await;
    let huge_photo = png(1000, 1000, PHOTO_LIMIT, 8);
    let refused = bot
        .send_photo(ChatId(GROUP), InputFile::memory(huge_photo.clone()))
        .await;
    assert_eq!(
        description(api_error(refused)),
        format!(
            "Bad Request: file of size {} bytes is too big for a photo; the maximum size is 10485760 bytes",
            huge_photo.len()
        )
    );
    let refused = bot
        .send_photo(ChatId(GROUP), InputFile::memory(png(9000, 2000, 10, 9)))
        .await;
    assert_eq!(
        description(api_error(refused)),
        "Bad Request: PHOTO_INVALID_DIMENSIONS"
    );
    let refused = bot
        .send_document(
            ChatId(GROUP),
            InputFile::memory(vec![1u8; UPLOAD_LIMIT + 1]).file_name("big.bin"),
        )
        .await;
    assert!(matches!(
        api_error(refused),
        ApiError::RequestEntityTooLarge
    ));
    assert_eq!(tg.calls_of("sendDocument")[0].status, 413);

    let long = "x".repeat(1025);
    let refused = bot
        .send_document(ChatId(GROUP), InputFile::memory(noise(10, 10)))
        .caption(long.as_str())
        .await;
    assert_eq!(
        description(api_error(refused)),
        "Bad Request: message caption is too long"
    );
    // The limit counts what people see: markup does not count.
    let fits = format!("<b>{}</b>", "x".repeat(1024));
    bot.send_document(ChatId(GROUP), InputFile::memory(noise(10, 11)))
        .caption(fits)
        .parse_mode(ParseMode::Html)
        .await
        .expect("1024 characters fit");
    assert_eq!(
        tg.messages_in(GROUP).len(),
        1,
        "refused uploads send nothing"
    );
}

#[tokio::test]
async fn uploads_count_in_the_flood_limits() {
    let (tg, bot) = fake_and_bot().await;
    tg.enforce_limits(Limits::default());
    bot.send_photo(ChatId(GROUP), InputFile::memory(png(10, 10, 10, 12)))
        .await
        .unwrap();
    let flooded = bot.send_message(ChatId(GROUP), "at once").await;
    assert!(
        matches!(flooded, Err(RequestError::RetryAfter(_))),
        "one message a second per chat, photos included: {flooded:?}"
    );
    assert_eq!(tg.count_429(), 1);
}

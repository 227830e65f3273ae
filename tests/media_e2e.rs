//! Media both ways (issue 10, SPEC section 5 "Media"), end to end: the whole service on a private
//! `redis-server` against the fake Bot API (teloxide unmodified) and the fake Discord (serenity
//! unmodified), with the files the fakes hold and record byte for byte, and a loopback file server
//! standing in for the web that agents link to. People's files reach the hub as links the service
//! serves itself; agents' files reach the platform as uploads; agents' URLs are fetched only where
//! the policy allows; a person's file crosses to the other platform as a file.
//!
//! Three hub channels keep the cases apart: `HUB` is linked to a Telegram group only, `HUB_DC` to
//! a Discord channel only, `HUB_X` to a second group and a second Discord channel.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;
use hub_bridge::config::{Config, HttpConfig, MediaConfig, RedisConfig};
use hub_bridge::service::{self, Running};
use hub_bridge_discord::{DiscordConfig, DiscordLink};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::registry::Section;
use hub_bridge_sdk::AgentProfile;
use hub_bridge_telegram::{TelegramConfig, TelegramLink};
use hub_bridge_testkit::fake_discord::{
    AttachmentFile, FakeDiscord, Request as DiscordRequest, StickerItem, UserMessage,
    UserRef as DiscordUser,
};
use hub_bridge_testkit::fake_telegram::{
    sha256_hex, BotMessage, ChatRef, Failure, FakeTelegram, Media, MediaKind, UserRef,
};
use hub_bridge_testkit::hub::{publish, HubSpy, Seen};
use hub_bridge_testkit::redis_server::RedisServer;
use serde_json::{json, Value};

const TOKEN: &str = "123456:MEDIA-token_abc";
const HUB: &str = "7b0c4f3e-2d1a-4c5b-8e9f-0a1b2c3d4e5f";
const HUB_DC: &str = "0d1e2f30-4152-4637-8849-5a6b7c8d9e0f";
const HUB_X: &str = "a1b2c3d4-e5f6-4789-8abc-def012345678";
const GROUP: i64 = -1_001_234_567_890;
const GROUP_X: i64 = -1_002_222_333_444;
const DC_TOKEN: &str = "fake-discord-media-token";
const GUILD: u64 = 1_300_000_000_000_000_001;
const CHANNEL: u64 = 1_300_000_000_000_000_002;
const CHANNEL_X: u64 = 1_300_000_000_000_000_003;
const WEBHOOK: u64 = 1_300_000_000_000_000_005;
const WEBHOOK_X: u64 = 1_300_000_000_000_000_006;
const WEBHOOK_TOKEN: &str = "webhook-secret-token";
const AGENT: &str = "illustrator";
const WAIT: Duration = Duration::from_secs(15);

/// A PNG signature and header, so the fake reads its size: 640 x 480.
fn png(filler: usize) -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    bytes.extend_from_slice(&[0, 0, 0, 13, b'I', b'H', b'D', b'R']);
    bytes.extend_from_slice(&640u32.to_be_bytes());
    bytes.extend_from_slice(&480u32.to_be_bytes());
    bytes.extend_from_slice(&[8, 6, 0, 0, 0]);
    bytes.extend((0..filler).map(|i| (i % 251) as u8));
    bytes
}

fn alice() -> UserRef {
    UserRef::new(1001, "Alice").username("alice")
}

fn group() -> ChatRef {
    ChatRef::supergroup(GROUP, "Media test")
}

/// The web agents link to: a few files, a redirect to a host the policy refuses, and a record of
/// every path asked for.
#[derive(Clone)]
struct Web {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Web {
    async fn start() -> Self {
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the file server");
        let port = listener.local_addr().expect("address").port();
        let record = asked.clone();
        let app = Router::new()
            .route(
                "/cat.png",
                get(|| async { ([("content-type", "image/png")], png(3000)) }),
            )
            .route(
                "/dog.png",
                get(|| async { ([("content-type", "image/png")], png(5000)) }),
            )
            .route(
                "/report.pdf",
                get(|| async { ([("content-type", "application/pdf")], vec![7u8; 4000]) }),
            )
            .route("/big.bin", get(|| async { vec![1u8; 50_000] }))
            // Over Discord's 10 MiB, under media.max_bytes.
            .route("/huge.bin", get(|| async { vec![2u8; 11 * 1024 * 1024] }))
            .route("/secret", get(|| async { "internal only" }))
            .route(
                "/to-secret",
                get(move || async move {
                    Redirect::temporary(&format!("http://localhost:{port}/secret")).into_response()
                }),
            )
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let record = record.clone();
                    async move {
                        record.lock().unwrap().push(request.uri().path().to_owned());
                        next.run(request).await
                    }
                },
            ));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, asked }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn ada() -> DiscordUser {
    DiscordUser::new(1_400_000_000_000_000_001, "ada").global_name("Ada")
}

fn webhook_url(id: u64) -> Option<Secret> {
    Some(Secret::new(format!(
        "https://discord.com/api/webhooks/{id}/{WEBHOOK_TOKEN}"
    )))
}

struct Harness {
    redis: RedisServer,
    tg: FakeTelegram,
    dc: FakeDiscord,
    web: Web,
    spy: HubSpy,
    service: Option<Running>,
}

fn config(redis: &RedisServer, tg: &FakeTelegram, dc: &FakeDiscord) -> Config {
    let agents = BTreeMap::from([(
        AGENT.to_owned(),
        AgentProfile {
            name: Some("Illustrator".into()),
            avatar: Some("🎨".into()),
            ..AgentProfile::default()
        },
    )]);
    Config {
        agents,
        redis: RedisConfig {
            url: Some(Secret::new(redis.url())),
            ..RedisConfig::default()
        },
        http: HttpConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..HttpConfig::default()
        },
        media: MediaConfig {
            // The test's web is on loopback: allowed as written, and only so.
            allow_hosts: vec!["127.0.0.1".into()],
            ..MediaConfig::default()
        },
        bridges: vec![
            Section::new(TelegramConfig {
                poll_timeout_secs: 1,
                chat_sends_per_sec: 50,
                group_sends_per_min: 1000,
                sends_per_sec: 100,
                ..TelegramConfig::new(
                    Secret::new(TOKEN),
                    tg.api_url(),
                    vec![
                        TelegramLink {
                            channel: HUB.to_owned(),
                            chat: GROUP,
                        },
                        TelegramLink {
                            channel: HUB_X.to_owned(),
                            chat: GROUP_X,
                        },
                    ],
                )
            }),
            Section::new(DiscordConfig::new(
                Secret::new(DC_TOKEN),
                dc.api_url(),
                vec![
                    DiscordLink {
                        channel: HUB_DC.to_owned(),
                        discord_channel: CHANNEL.to_string(),
                        webhook_url: webhook_url(WEBHOOK),
                    },
                    DiscordLink {
                        channel: HUB_X.to_owned(),
                        discord_channel: CHANNEL_X.to_string(),
                        webhook_url: webhook_url(WEBHOOK_X),
                    },
                ],
            )),
        ],
        ..Config::default()
    }
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Self {
        let redis = RedisServer::start();
        let tg = FakeTelegram::start(TOKEN).await;
        let dc = FakeDiscord::start(DC_TOKEN).await;
        for (channel, webhook) in [(CHANNEL, WEBHOOK), (CHANNEL_X, WEBHOOK_X)] {
            dc.add_text_channel(channel, GUILD);
            dc.add_webhook(webhook, WEBHOOK_TOKEN, channel);
        }
        dc.add_user(ada());
        let web = Web::start().await;
        let spy = HubSpy::start(&redis.url()).await;
        let mut config = config(&redis, &tg, &dc);
        adjust(&mut config);
        let service = start_service(config).await;
        Self {
            redis,
            tg,
            dc,
            web,
            spy,
            service: Some(service),
        }
    }

    /// The hub message published for Telegram message `id`.
    async fn published(&self, id: i32) -> Seen {
        let source = format!("{GROUP}:{id}");
        self.spy
            .wait_for(&format!("the hub message of {source}"), WAIT, |seen| {
                seen.kind() == "channel.message"
                    && seen.event()["message"]["externalSourceId"] == source.as_str()
            })
            .await
    }

    async fn agent_says(&self, id: &str, content: &str, blocks: Value) {
        self.agent_says_in(HUB, id, content, blocks).await;
    }

    async fn agent_says_in(&self, hub: &str, id: &str, content: &str, blocks: Value) {
        let event = json!({"type": "channel.message", "channelId": hub, "message": {
            "id": id, "content": content, "senderId": AGENT, "timestamp": 1,
            "contentBlocks": blocks}});
        publish(&self.redis.url(), &format!("pubsub:channel:{hub}"), &event).await;
    }

    /// The hub message published on `hub` with `content`.
    async fn published_in(&self, hub: &str, content: &str) -> Seen {
        let channel = format!("pubsub:channel:{hub}");
        self.spy
            .wait_for(&format!("{content:?} on {hub}"), WAIT, |seen| {
                seen.channel == channel
                    && seen.kind() == "channel.message"
                    && seen.event()["message"]["content"] == content
            })
            .await
    }

    /// The successful webhook executions of `webhook`, once one carries files.
    async fn uploads_through(&self, webhook: u64) -> Vec<DiscordRequest> {
        let deadline = Instant::now() + WAIT;
        loop {
            let posts: Vec<DiscordRequest> = self
                .dc
                .requests_matching("POST", &format!("/webhooks/{webhook}"))
                .into_iter()
                .filter(|request| request.status == 200 && !request.files.is_empty())
                .collect();
            if !posts.is_empty() {
                return posts;
            }
            assert!(Instant::now() < deadline, "timed out waiting for an upload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn agent_event(&self, event: Value) {
        publish(&self.redis.url(), &format!("pubsub:channel:{HUB}"), &event).await;
    }

    /// The bot's messages in the group once `condition` holds for them.
    async fn shown(
        &self,
        what: &str,
        condition: impl Fn(&[BotMessage]) -> bool,
    ) -> Vec<BotMessage> {
        let deadline = Instant::now() + WAIT;
        loop {
            let messages = self.tg.messages_in(GROUP);
            if condition(&messages) {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {messages:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the agent was told, once something was.
    async fn told(&self, needle: &str) -> Seen {
        self.spy
            .wait_for(&format!("a notification with {needle:?}"), WAIT, |seen| {
                seen.channel == format!("pubsub:agent:{AGENT}") && seen.raw.contains(needle)
            })
            .await
    }

    async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await;
        }
    }
}

async fn start_service(config: Config) -> Running {
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
    running
}

async fn fetch(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("the service answers")
}

fn block_url(message: &Seen, index: usize) -> String {
    message.event()["message"]["contentBlocks"][index]["url"]
        .as_str()
        .expect("a url")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peoples_files_of_every_kind_reach_the_hub_as_links_that_serve_their_bytes() {
    let h = Harness::start(|_| {}).await;
    let thumb = h.tg.add_file(png(10), MediaKind::Photo);
    let photo = h.tg.add_file(png(20_000), MediaKind::Photo);
    let file = |kind, size: usize| h.tg.add_file(vec![kind as u8; size], kind);
    let document = file(MediaKind::Document, 3000);
    let voice = file(MediaKind::Voice, 900);
    let audio = file(MediaKind::Audio, 1200);
    let video = file(MediaKind::Video, 5000);
    let animation = file(MediaKind::Animation, 4000);
    let note = file(MediaKind::VideoNote, 3500);
    let sticker = h.tg.add_file(vec![9u8; 700], MediaKind::Sticker);
    let cases = [
        (
            Media::photo_sizes(&[(&thumb, 90, 68), (&photo, 1280, 960)]),
            &photo,
            json!({"type": "image", "width": 1280, "height": 960, "mimeType": "image/jpeg"}),
        ),
        (
            Media::document_file(&document, "report.pdf", "application/pdf"),
            &document,
            json!({"type": "file", "name": "report.pdf", "mimeType": "application/pdf"}),
        ),
        (
            Media::voice_file(&voice, 3),
            &voice,
            json!({"type": "file", "mimeType": "audio/ogg"}),
        ),
        (
            Media::audio_file(&audio, 60, "song.mp3", "audio/mpeg"),
            &audio,
            json!({"type": "file", "name": "song.mp3", "mimeType": "audio/mpeg"}),
        ),
        (
            Media::video_file(&video, 640, 360, 4),
            &video,
            json!({"type": "file", "mimeType": "video/mp4"}),
        ),
        (
            Media::animation_file(&animation, 320, 240, 2),
            &animation,
            json!({"type": "file", "mimeType": "video/mp4"}),
        ),
        (
            Media::video_note_file(&note, 240, 5),
            &note,
            json!({"type": "file", "mimeType": "video/mp4"}),
        ),
        (
            Media::sticker_file(&sticker, "😀"),
            &sticker,
            json!({"type": "image", "mimeType": "image/webp"}),
        ),
    ];
    for (index, (media, held, expected)) in cases.into_iter().enumerate() {
        // Video notes and stickers carry no caption on Telegram.
        let caption = if index < 6 {
            format!("file number {index}")
        } else {
            String::new()
        };
        let mut update = h.tg.media_message(&group(), &alice(), media);
        if !caption.is_empty() {
            update = update.caption(&caption);
        }
        let id = update.message_id();
        h.tg.inject(update);
        let message = h.published(id).await;
        assert_eq!(message.event()["message"]["content"], caption.as_str());
        let block = &message.event()["message"]["contentBlocks"][0];
        for (key, value) in expected.as_object().expect("fields") {
            assert_eq!(&block[key], value, "{key} of case {index}: {block}");
        }
        assert_eq!(block["size"], held.size, "case {index}");
        // The agent reads the file from the service: Telegram's bytes, streamed.
        let response = fetch(&block_url(&message, 0)).await;
        assert_eq!(response.status(), 200, "case {index}");
        let length = response.content_length();
        let bytes = response.bytes().await.expect("the body");
        assert_eq!(
            bytes.as_ref(),
            h.tg.file_bytes(&held.file_id).expect("held").as_ref(),
            "case {index}"
        );
        assert_eq!(length, Some(bytes.len() as u64));
    }
    for seen in h.spy.all() {
        assert!(!seen.raw.contains(TOKEN), "the token leaked: {}", seen.raw);
        assert!(
            !seen.raw.contains("/file/bot"),
            "a file URL leaked: {}",
            seen.raw
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_becomes_one_hub_message_with_every_picture() {
    let h = Harness::start(|_| {}).await;
    let files: Vec<_> = (0..3)
        .map(|i| h.tg.add_file(png(100 * (i + 1)), MediaKind::Photo))
        .collect();
    let media = files
        .iter()
        .map(|file| Media::photo_sizes(&[(file, 640, 480)]))
        .collect();
    let mut album = h.tg.album(&group(), &alice(), media);
    album[0] = album[0].clone().caption("our trip");
    let first = album[0].message_id();
    for update in album {
        h.tg.inject(update);
    }
    let message = h.published(first).await;
    assert_eq!(message.event()["message"]["content"], "our trip");
    let blocks = message.event()["message"]["contentBlocks"]
        .as_array()
        .expect("blocks")
        .clone();
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    for (index, file) in files.iter().enumerate() {
        let bytes = fetch(&block_url(&message, index))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            bytes.as_ref(),
            h.tg.file_bytes(&file.file_id).unwrap().as_ref()
        );
    }
    // One hub message, not three: a text sent after the album is the next one published.
    let marker = h.tg.text_message(&group(), &alice(), "after the album");
    let marker_id = marker.message_id();
    h.tg.inject(marker);
    h.published(marker_id).await;
    let messages = h.spy.matching(|seen| seen.kind() == "channel.message");
    assert_eq!(messages.len(), 2, "{messages:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_expired_link_is_refused_without_asking_telegram() {
    let h = Harness::start(|config| config.media.link_ttl_secs = 2).await;
    let photo = h.tg.add_file(png(500), MediaKind::Photo);
    let update = h.tg.media_message(
        &group(),
        &alice(),
        Media::photo_sizes(&[(&photo, 640, 480)]),
    );
    let id = update.message_id();
    h.tg.inject(update);
    let url = block_url(&h.published(id).await, 0);
    assert_eq!(fetch(&url).await.status(), 200);
    let asked = h.tg.calls_of("getFile").len();
    let downloads = h.tg.downloads().len();

    // A changed payload, a changed signature, and no token at all.
    let (base, token) = url.rsplit_once('/').expect("a token");
    let (payload, signature) = token.split_once('.').expect("two halves");
    let mut changed = payload.to_owned();
    changed.insert(3, 'A');
    for forged in [
        format!("{base}/{changed}.{signature}"),
        format!(
            "{base}/{payload}.{}",
            signature.replace(&signature[..2], "zz")
        ),
        format!("{base}/not-a-token"),
    ] {
        assert_eq!(fetch(&forged).await.status(), 403, "{forged}");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(fetch(&url).await.status(), 410, "expired");
    assert_eq!(
        h.tg.calls_of("getFile").len(),
        asked,
        "no getFile for refused links"
    );
    assert_eq!(h.tg.downloads().len(), downloads, "no download either");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_outlive_a_restart_and_any_instance_serves_them() {
    let mut h = Harness::start(|_| {}).await;
    let photo = h.tg.add_file(png(800), MediaKind::Photo);
    let update = h.tg.media_message(
        &group(),
        &alice(),
        Media::photo_sizes(&[(&photo, 640, 480)]),
    );
    let id = update.message_id();
    h.tg.inject(update);
    let url = block_url(&h.published(id).await, 0);
    let first = h.service.take().expect("running");
    let path = url
        .split_once("/media/")
        .map(|(_, token)| token.to_owned())
        .expect("a media link");
    first.stop().await;
    // Another instance, on another port, with the same Redis: it signs with the same key.
    let second = start_service(config(&h.redis, &h.tg, &h.dc)).await;
    let moved = format!("http://{}/media/{path}", second.http_addr);
    let response = fetch(&moved).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        h.tg.file_bytes(&photo.file_id).unwrap().as_ref()
    );
    h.service = Some(second);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_picture_is_uploaded_as_a_photo_captioned_edited_and_deleted() {
    let h = Harness::start(|_| {}).await;
    h.agent_says(
        "m1",
        "Here is the **cat**",
        json!([{"type": "image", "url": h.web.url("/cat.png")}]),
    )
    .await;
    let shown = h
        .shown("the photo", |messages| {
            messages.iter().any(|m| m.media.is_some())
        })
        .await;
    assert_eq!(shown.len(), 1, "one message: the photo with its caption");
    let photo = &shown[0];
    let media = photo.media.as_ref().expect("a photo");
    assert_eq!(media.kind, MediaKind::Photo);
    assert_eq!(media.sha256, sha256_hex(&png(3000)), "the same bytes");
    assert!(photo.plain.contains("Illustrator") && photo.plain.contains("Here is the cat"));
    assert!(photo.text.contains("<b>cat</b>"), "{}", photo.text);

    h.agent_event(
        json!({"type": "channel.message.edit", "channelId": HUB, "messageId": "m1",
                          "content": "Here is the cat, asleep"}),
    )
    .await;
    h.shown("the new caption", |messages| {
        messages.iter().any(|m| m.plain.contains("asleep"))
    })
    .await;
    assert!(!h.tg.calls_of("editMessageCaption").is_empty());

    // Telegram refuses the caption's HTML once: the plain text goes as the caption still.
    h.tg.fail_next(
        "editMessageCaption",
        Failure::BadRequest("can't parse entities: unsupported start tag".into()),
    );
    h.agent_event(
        json!({"type": "channel.message.edit", "channelId": HUB, "messageId": "m1",
                          "content": "Here is the cat, awake"}),
    )
    .await;
    h.shown("the caption in plain text", |messages| {
        messages.iter().any(|m| m.plain.contains("awake"))
    })
    .await;
    let last =
        h.tg.calls_of("editMessageCaption")
            .pop()
            .expect("a caption edit");
    assert_eq!(last.status, 200, "{:?}", last.response);
    assert!(last.body.get("parse_mode").is_none(), "{:?}", last.body);

    h.agent_event(json!({"type": "channel.message.delete", "channelId": HUB, "messageId": "m1"}))
        .await;
    h.shown("the photo gone", <[BotMessage]>::is_empty).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_files_go_as_an_album_and_a_long_text_after_them() {
    let h = Harness::start(|_| {}).await;
    let long = "word ".repeat(300);
    h.agent_says(
        "m1",
        &long,
        json!([
            {"type": "image", "url": h.web.url("/cat.png")},
            {"type": "image", "url": h.web.url("/dog.png")},
            {"type": "file", "url": h.web.url("/report.pdf"), "name": "report.pdf"},
        ]),
    )
    .await;
    let shown = h
        .shown("two photos, a document and the text", |messages| {
            messages.len() == 4
        })
        .await;
    let albums = h.tg.calls_of("sendMediaGroup");
    assert_eq!(albums.len(), 1, "the photos as one album");
    let kinds: Vec<Option<MediaKind>> = shown
        .iter()
        .map(|m| m.media.as_ref().map(|media| media.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(MediaKind::Photo),
            Some(MediaKind::Photo),
            Some(MediaKind::Document),
            None
        ]
    );
    assert_eq!(
        shown[2].media.as_ref().unwrap().sha256,
        sha256_hex(&[7u8; 4000])
    );
    // 1500 characters do not fit a caption: the text is a message of its own.
    assert!(shown[..3].iter().all(|m| m.plain.is_empty()), "{shown:#?}");
    assert!(shown[3].plain.contains("word word"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_limit_goes_as_its_link_and_the_agent_is_told() {
    let h = Harness::start(|config| config.media.max_bytes = 10_000).await;
    let big = h.web.url("/big.bin");
    h.agent_says(
        "m1",
        "the dataset",
        json!([{"type": "file", "url": big, "name": "data.bin", "size": 50_000}]),
    )
    .await;
    let shown = h
        .shown("the text and the file's line", |messages| {
            messages.len() == 2
        })
        .await;
    assert!(shown.iter().all(|m| m.media.is_none()), "nothing uploaded");
    assert!(shown[1].plain.contains("📎 data.bin (49 KB)") && shown[1].plain.contains(&big));
    h.told("data.bin was not uploaded").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_urls_to_refused_addresses_are_never_fetched() {
    let h = Harness::start(|_| {}).await;
    let port = h.web.port;
    h.agent_says(
        "m1",
        "have a look",
        json!([
            // Loopback, but not as the allowed host is written.
            {"type": "file", "url": format!("http://localhost:{port}/secret"), "name": "a"},
            // Allowed, but redirecting to the refused one.
            {"type": "file", "url": h.web.url("/to-secret"), "name": "b"},
            {"type": "file", "url": "file:///etc/passwd", "name": "c"},
        ]),
    )
    .await;
    let shown = h
        .shown("the text and three lines", |messages| messages.len() == 4)
        .await;
    assert!(shown.iter().all(|m| m.media.is_none()));
    assert!(shown[1..]
        .iter()
        .all(|m| m.plain.contains("could not be fetched")));
    assert_eq!(
        h.web.asked(),
        vec!["/to-secret"],
        "the secret was never asked for"
    );
    let agent = format!("pubsub:agent:{AGENT}");
    let told: Vec<String> = h
        .spy
        .wait_count("three notifications", 3, WAIT, |seen| seen.channel == agent)
        .await
        .iter()
        .map(|seen| seen.raw.clone())
        .collect();
    assert!(
        told.iter().any(|t| t.contains("localhost is refused")),
        "{told:?}"
    );
    assert!(
        told.iter().filter(|t| t.contains("loopback")).count() >= 2,
        "{told:?}"
    );
    assert!(
        told.iter().any(|t| t.contains("not an http(s) URL")),
        "{told:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discord_attachment_is_served_from_a_fresh_url_after_discords_expired() {
    let h = Harness::start(|_| {}).await;
    let picture = png(7000);
    let message = UserMessage::new(CHANNEL, Some(GUILD), ada(), "my cat")
        .file(AttachmentFile::new("cat.png", "image/png", picture.clone()).dimensions(640, 480));
    h.dc.post_user_message(message);
    let seen = h.published_in(HUB_DC, "my cat").await;
    let block = &seen.event()["message"]["contentBlocks"][0];
    assert_eq!(block["type"], "image");
    assert_eq!(
        (block["width"].clone(), block["height"].clone()),
        (json!(640), json!(480))
    );
    let url = block_url(&seen, 0);
    assert!(
        url.contains("/media/") && !url.starts_with(&h.dc.api_url()),
        "{url}"
    );
    assert_eq!(
        fetch(&url).await.bytes().await.unwrap().as_ref(),
        &picture[..]
    );
    // Discord's CDN URLs expire; the link reads the message again for a fresh one.
    h.dc.expire_attachment_urls();
    let before = h.dc.media_counts();
    let response = fetch(&url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &picture[..]);
    assert!(h.dc.media_counts().message_fetches > before.message_fetches);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_files_are_uploaded_to_discord_under_its_name() {
    let h = Harness::start(|_| {}).await;
    h.agent_says_in(
        HUB_DC,
        "d1",
        "the **charts**",
        json!([
            {"type": "image", "url": h.web.url("/cat.png")},
            {"type": "file", "url": h.web.url("/report.pdf"), "name": "report.pdf"},
        ]),
    )
    .await;
    let posts = h.uploads_through(WEBHOOK).await;
    assert_eq!(posts.len(), 1, "one post with both files and the text");
    let post = &posts[0];
    assert_eq!(post.body["username"], "Illustrator");
    assert!(post.body["content"]
        .as_str()
        .unwrap_or_default()
        .contains("the **charts**"));
    let files: Vec<(&str, &str)> = post
        .files
        .iter()
        .map(|file| (file.filename.as_str(), file.sha256.as_str()))
        .collect();
    assert_eq!(
        files,
        vec![
            ("cat.png", sha256_hex(&png(3000)).as_str()),
            ("report.pdf", sha256_hex(&[7u8; 4000]).as_str()),
        ]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_photo_reaches_discord_as_an_upload_and_a_discord_file_telegram_as_a_photo() {
    let h = Harness::start(|_| {}).await;
    let photo = h.tg.add_file(png(9000), MediaKind::Photo);
    let update =
        h.tg.media_message(
            &ChatRef::supergroup(GROUP_X, "Cross"),
            &alice(),
            Media::photo_sizes(&[(&photo, 640, 480)]),
        )
        .caption("from telegram");
    h.tg.inject(update);
    let posts = h.uploads_through(WEBHOOK_X).await;
    let post = &posts[0];
    assert!(post.body["content"]
        .as_str()
        .unwrap_or_default()
        .contains("from telegram"));
    assert_eq!(post.files.len(), 1);
    assert_eq!(
        post.files[0].sha256,
        sha256_hex(&png(9000)),
        "Telegram's bytes"
    );

    let picture = png(4000);
    let message = UserMessage::new(CHANNEL_X, Some(GUILD), ada(), "from discord")
        .file(AttachmentFile::new("dog.png", "image/png", picture.clone()).dimensions(640, 480));
    h.dc.post_user_message(message);
    let deadline = Instant::now() + WAIT;
    let shown = loop {
        let photos: Vec<BotMessage> =
            h.tg.messages_in(GROUP_X)
                .into_iter()
                .filter(|m| m.media.is_some())
                .collect();
        if let Some(photo) = photos.into_iter().next() {
            break photo;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the photo on Telegram"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let media = shown.media.as_ref().expect("a photo");
    assert_eq!(media.kind, MediaKind::Photo);
    assert_eq!(media.sha256, sha256_hex(&picture), "Discord's bytes");
    assert!(shown.plain.contains("from discord"), "{shown:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_discords_limit_goes_as_its_link_and_a_sticker_as_a_linked_picture() {
    let h = Harness::start(|_| {}).await;
    let huge = h.web.url("/huge.bin");
    h.agent_says_in(
        HUB_DC,
        "d2",
        "the raw data",
        json!([{"type": "file", "url": huge, "name": "huge.bin"}]),
    )
    .await;
    h.told("huge.bin was not uploaded").await;
    let deadline = Instant::now() + WAIT;
    let posts = loop {
        let posts: Vec<DiscordRequest> =
            h.dc.requests_matching("POST", &format!("/webhooks/{WEBHOOK}"))
                .into_iter()
                .filter(|request| request.status == 200)
                .collect();
        if posts.len() >= 2 {
            break posts;
        }
        assert!(Instant::now() < deadline, "timed out: {posts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        posts.iter().all(|post| post.files.is_empty()),
        "nothing uploaded"
    );
    let line = posts[1].body["content"].as_str().unwrap_or_default();
    assert!(
        line.contains("📎 huge.bin (11.0 MB)") && line.contains(&huge),
        "{line}"
    );

    let (sticker_id, image) = (1_500_000_000_000_000_001, png(600));
    h.dc.add_sticker_image(sticker_id, image.clone());
    let sticker = UserMessage::new(CHANNEL, Some(GUILD), ada(), "")
        .sticker(StickerItem::new(sticker_id, "wave", 1));
    h.dc.post_user_message(sticker);
    let seen = h
        .spy
        .wait_for("the sticker", WAIT, |seen| {
            seen.kind() == "channel.message"
                && seen.event()["message"]["contentBlocks"][0]["name"] == "wave"
        })
        .await;
    assert_eq!(seen.event()["message"]["contentBlocks"][0]["type"], "image");
    // A link to the service, which reads the sticker from Discord's media CDN.
    let url = block_url(&seen, 0);
    assert!(url.contains("/media/"), "{url}");
    assert_eq!(
        fetch(&url).await.bytes().await.unwrap().as_ref(),
        &image[..]
    );
    h.stop().await;
}

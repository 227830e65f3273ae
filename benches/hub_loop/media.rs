//! Media (SPEC section 8, issue 10; `--media-mb`, 0 skips): a file of N MB (10) that a person
//! posts on Telegram, relayed to the linked Discord channel as an upload, through the hub: the
//! Telegram bridge publishes a media link, the Discord bridge reads it from Telegram (`getFile` and
//! the download) and uploads it through the webhook. Both fakes and the service run in this
//! process. Time is the inject -> the fake Discord receiving the upload (its handler has the whole
//! multipart body).
//!
//! The floor, measured in the same run on the same fakes: one plain reqwest download of the file
//! from the fake Bot API plus one plain multipart upload of it to the same webhook. Memory: the
//! process's live heap (the counting allocator), sampled every millisecond, peak minus start,
//! for the floor and for the relay. The floor's plain client holds the file once; the rest of its
//! growth is the fakes' own (the fake Discord keeps what it receives), which the relay's includes
//! too and which is taken off to give the service's growth.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_bridge::config::Config;
use hub_bridge_discord::{DiscordConfig, DiscordLink};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::registry::Section;
use hub_bridge_telegram::{TelegramConfig, TelegramLink};
use hub_bridge_testkit::fake_discord::{sha256_hex, FakeDiscord};
use hub_bridge_testkit::fake_telegram::{ChatRef, FakeTelegram, Media, MediaKind, UserRef};

use super::{wait_for, Result, COUNTING, LIVE_BYTES};

const TG_TOKEN: &str = "123456:MEDIA-bench_token";
const DC_TOKEN: &str = "fake-discord-media-bench-token";
const GROUP: i64 = -1_003_000_000_000;
const GUILD: u64 = 1_600_000_000_000_000_001;
const CHANNEL: u64 = 1_600_000_000_000_000_002;
const WEBHOOK: u64 = 1_600_000_000_000_000_003;
const WEBHOOK_TOKEN: &str = "bench-media-webhook";
/// Runs of each, the median reported.
const RUNS: usize = 3;

/// The media phase's measurements.
#[derive(Default)]
pub struct MediaRelay {
    pub bytes: usize,
    /// Plain download + upload, per run.
    pub floor: Vec<Duration>,
    /// Inject -> upload received, per run.
    pub relay: Vec<Duration>,
    /// Peak live heap growth, bytes: floor, relay (medians).
    pub heap: (i64, i64),
}

/// The peak of the live heap while `work` runs, over what it was when it began.
async fn peak_heap<T>(work: impl std::future::Future<Output = T>) -> (T, i64) {
    let start = LIVE_BYTES.load(Ordering::Relaxed);
    let peak = Arc::new(AtomicI64::new(start));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(LIVE_BYTES.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let result = work.await;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    peak.fetch_max(LIVE_BYTES.load(Ordering::Relaxed), Ordering::Relaxed);
    (result, peak.load(Ordering::Relaxed) - start)
}

fn median<T: Ord + Copy>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

impl MediaRelay {
    pub fn floor_median(&self) -> Duration {
        median(&self.floor)
    }

    pub fn relay_median(&self) -> Duration {
        median(&self.relay)
    }
}

/// The successful uploads the webhook received so far.
fn uploads(dc: &FakeDiscord) -> Vec<String> {
    dc.requests_matching("POST", &format!("/webhooks/{WEBHOOK}"))
        .into_iter()
        .filter(|request| request.status == 200)
        .flat_map(|request| request.files.into_iter().map(|file| file.sha256))
        .collect()
}

pub async fn relay(url: &str, megabytes: u64) -> Result<MediaRelay> {
    let bytes: Vec<u8> = (0..megabytes * 1_000_000)
        .map(|i| (i % 251) as u8)
        .collect();
    let digest = sha256_hex(&bytes);
    let tg = FakeTelegram::start(TG_TOKEN).await;
    let dc = FakeDiscord::start(DC_TOKEN).await;
    dc.add_text_channel(CHANNEL, GUILD);
    dc.add_webhook(WEBHOOK, WEBHOOK_TOKEN, CHANNEL);
    let mut report = MediaRelay {
        bytes: bytes.len(),
        ..MediaRelay::default()
    };
    let mut heaps = (Vec::new(), Vec::new());
    COUNTING.store(true, Ordering::Relaxed);

    eprintln!("media: floor (plain download + upload of {megabytes} MB)");
    let client = reqwest::Client::new();
    for _ in 0..RUNS {
        let file = tg.add_file(bytes.clone(), MediaKind::Document);
        let download = format!("{}/file/bot{TG_TOKEN}/{}", tg.api_url(), file.file_path);
        let upload = format!(
            "{}/api/v10/webhooks/{WEBHOOK}/{WEBHOOK_TOKEN}?wait=true",
            dc.api_url()
        );
        let before = uploads(&dc).len();
        let (taken, heap) = peak_heap(async {
            let started = Instant::now();
            let body = client.get(&download).send().await?.bytes().await?;
            let length = body.len() as u64;
            let part =
                reqwest::multipart::Part::stream_with_length(body, length).file_name("data.bin");
            let form = reqwest::multipart::Form::new()
                .text(
                    "payload_json",
                    r#"{"content":"","attachments":[{"id":0,"filename":"data.bin"}]}"#,
                )
                .part("files[0]", part);
            client
                .post(&upload)
                .multipart(form)
                .send()
                .await?
                .bytes()
                .await?;
            Ok::<_, reqwest::Error>(started.elapsed())
        })
        .await;
        report.floor.push(taken?);
        heaps.0.push(heap);
        if uploads(&dc).len() != before + 1 {
            return Err("media: the floor's upload did not land".into());
        }
    }

    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse()?;
    config.redis.url = Some(Secret::new(url));
    config.bridges.push(Section::new(TelegramConfig {
        poll_timeout_secs: 1,
        chat_sends_per_sec: 50,
        group_sends_per_min: 1000,
        sends_per_sec: 100,
        ..TelegramConfig::new(
            Secret::new(TG_TOKEN),
            tg.api_url(),
            vec![TelegramLink {
                channel: "media".to_owned(),
                chat: GROUP,
            }],
        )
    }));
    config.bridges.push(Section::new(DiscordConfig::new(
        Secret::new(DC_TOKEN),
        dc.api_url(),
        vec![DiscordLink {
            channel: "media".to_owned(),
            discord_channel: CHANNEL.to_string(),
            webhook_url: Some(Secret::new(format!(
                "https://discord.com/api/webhooks/{WEBHOOK}/{WEBHOOK_TOKEN}"
            ))),
        }],
    )));
    let running = hub_bridge::service::start(config).await?;
    if !wait_for(Duration::from_secs(15), || running.health.is_ready()).await {
        return Err(format!("media: never ready: {:?}", running.health.snapshot()).into());
    }
    let group = ChatRef::supergroup(GROUP, "Media bench");
    let person = UserRef::new(3003, "Poster");
    eprintln!("media: Telegram -> Discord, {RUNS} x {megabytes} MB");
    for run in 0..RUNS {
        let file = tg.add_file(bytes.clone(), MediaKind::Document);
        let update = tg
            .media_message(
                &group,
                &person,
                Media::document_file(&file, "data.bin", "application/octet-stream"),
            )
            .caption(&format!("run {run}"));
        let before = uploads(&dc).len();
        let (landed, heap) = peak_heap(async {
            let started = Instant::now();
            tg.inject(update);
            let landed = wait_for(Duration::from_secs(60), || uploads(&dc).len() > before).await;
            (landed, started.elapsed())
        })
        .await;
        if !landed.0 {
            return Err(format!("media: run {run} never reached Discord").into());
        }
        if uploads(&dc).last() != Some(&digest) {
            return Err(format!("media: run {run} reached Discord with other bytes").into());
        }
        report.relay.push(landed.1);
        heaps.1.push(heap);
    }
    COUNTING.store(false, Ordering::Relaxed);
    running.stop().await;
    report.heap = (median(&heaps.0), median(&heaps.1));
    Ok(report)
}

/// The table's rows: time against the floor, and the service's memory against the file.
pub fn rows(rows: &mut Vec<String>, media: &MediaRelay) {
    let megabytes = media.bytes as f64 / 1e6;
    let (floor, relay) = (media.floor_median(), media.relay_median());
    let ratio = relay.as_secs_f64() / floor.as_secs_f64();
    rows.push(format!(
        "{megabytes:.0} MB file: plain download + upload (median of {RUNS})|{:.1} ms|-|-|floor",
        floor.as_secs_f64() * 1e3
    ));
    rows.push(format!(
        "{megabytes:.0} MB Telegram file -> Discord upload, through the hub|{:.1} ms|{:.1} ms|<= 1.5x|{} ({ratio:.2}x)",
        relay.as_secs_f64() * 1e3,
        floor.as_secs_f64() * 1e3,
        super::verdict(ratio <= 1.5)
    ));
    // The floor's plain client holds the file once (it reads the body, then uploads it); the
    // rest of the floor's growth is the fakes' (the Bot API's copy it serves, what the fake
    // Discord keeps), which the relay has too.
    let (floor_heap, relay_heap) = media.heap;
    let fakes = floor_heap - media.bytes as i64;
    let service = relay_heap - fakes;
    let of_file = service as f64 / media.bytes as f64;
    rows.push(format!(
        "  peak heap growth of the service (relay {:.1} MB - the fakes' {:.1} MB)|{:.1} MB|{megabytes:.1} MB file|< 2x the file|{} ({of_file:.2}x)",
        relay_heap as f64 / 1e6,
        fakes as f64 / 1e6,
        service as f64 / 1e6,
        super::verdict(of_file < 2.0)
    ));
}

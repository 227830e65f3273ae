//! An agent's files through the engine: uploaded ahead of the text (which rides as the caption
//! when it is one part), file parts left alone by edits and removed by deletes, and a file that
//! cannot go shown as a line of text with its agent told or the failure dead-lettered. The files
//! are read through the media desk from a platform source in memory, by our own media links.

use std::collections::BTreeMap;

use super::*;
use crate::media::{Download, FileRef, Media, MediaSettings, MediaSource, SourceError};
use crate::relay::connector::MediaLimits;
use crate::store::Reply;

/// Files a platform keeps, by Telegram file id.
struct Files(BTreeMap<&'static str, &'static [u8]>);

impl MediaSource for Files {
    fn open<'a>(&'a self, file: &'a FileRef) -> BoxFuture<'a, Result<Download, SourceError>> {
        Box::pin(async move {
            let FileRef::Telegram { file_id } = file else {
                return Err(SourceError::Gone);
            };
            let bytes = *self.0.get(file_id.as_str()).ok_or(SourceError::Gone)?;
            Ok(Download {
                content_type: Some("image/png".to_owned()),
                length: Some(bytes.len() as u64),
                body: Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from_static(
                    bytes,
                ))])),
            })
        })
    }
}

const CAT: &[u8] = b"cat picture";
const DOG: &[u8] = b"dog";
const OWL: &[u8] = b"owl";

struct MediaHarness {
    h: Harness,
    media: Arc<Media>,
}

impl MediaHarness {
    fn new(limits: MediaLimits) -> Self {
        let mut connector = Memory::new(true, 1);
        connector.media_limits = Some(limits);
        let store = Arc::new(MemoryStore::default());
        let dyn_store: Arc<dyn Store> = store.clone();
        let files: Arc<dyn MediaSource> = Arc::new(Files(BTreeMap::from([
            ("cat", CAT),
            ("dog", DOG),
            ("owl", OWL),
        ])));
        let settings = MediaSettings {
            public_url: "http://hub.test".to_owned(),
            max_bytes: 1000,
            link_ttl_secs: 60,
            allow_hosts: Vec::new(),
        };
        let media = Arc::new(
            Media::new(
                settings,
                dyn_store,
                Keys::new("t:"),
                BTreeMap::from([("telegram", files)]),
            )
            .expect("a media desk"),
        );
        let with_media = media.clone();
        let h = Harness::build(connector, store, LimitsConfig::default(), move |hub| {
            hub.with_media(with_media)
        });
        Self { h, media }
    }

    async fn link(&self, file_id: &str) -> String {
        let file = FileRef::Telegram {
            file_id: file_id.to_owned(),
        };
        self.media.link(&file).await.expect("a link")
    }

    /// Ada says `content` in B (chat 1 only) with these files.
    async fn say_with(&self, id: &str, content: &str, blocks: Value) {
        self.h
            .channel(
                "B",
                json!({"type": "channel.message", "channelId": "B", "message": {
                    "id": id, "content": content, "senderId": "ada", "timestamp": 1,
                    "contentBlocks": blocks}}),
            )
            .await;
    }

    /// The dead letters kept so far, oldest first.
    async fn dead_letters(&self) -> Vec<String> {
        let read = Op::LRange {
            key: Keys::new("t:").dead_letters("memory"),
            start: 0,
            stop: -1,
        };
        let replies = self.h.store.exec(vec![read]).await.expect("the store");
        replies
            .into_iter()
            .next()
            .map(Reply::into_list)
            .unwrap_or_default()
    }

    fn uploads(&self) -> Vec<Call> {
        self.h
            .connector
            .calls()
            .into_iter()
            .filter(|call| matches!(call, Call::Upload { .. }))
            .collect()
    }
}

const LIMITS: MediaLimits = MediaLimits {
    max_file_bytes: 100,
    max_image_bytes: 100,
    files_per_message: 2,
};

#[tokio::test]
async fn a_file_goes_as_an_upload_captioned_with_a_short_text_and_edits_change_the_caption() {
    let m = MediaHarness::new(LIMITS);
    let cat = m.link("cat").await;
    m.say_with(
        "m1",
        "look",
        json!([{"type": "image", "url": cat, "name": "cat.png"}]),
    )
    .await;
    assert_eq!(
        m.h.connector.calls(),
        vec![Call::Upload {
            chat: "1".into(),
            files: vec![("cat.png".into(), CAT.to_vec(), true)],
            caption: Some("Ada: look".into()),
            reply_to: None,
            ids: vec!["100".into()],
        }],
        "one upload, the text as its caption, nothing else"
    );
    assert_eq!(m.h.parts("m1", "1/B").await, vec!["100"]);
    m.h.clear();
    m.h.edit("B", "m1", "look!").await;
    assert_eq!(
        m.h.connector.calls(),
        vec![Call::Edit {
            chat: "1".into(),
            id: "100".into(),
            text: "Ada: look!".into()
        }]
    );
    m.h.clear();
    m.h.channel(
        "B",
        json!({"type": "channel.message.delete", "channelId": "B", "messageId": "m1"}),
    )
    .await;
    assert_eq!(
        m.h.connector.calls(),
        vec![Call::Delete {
            chat: "1".into(),
            id: "100".into()
        }]
    );
    m.h.stop().await;
}

#[tokio::test]
async fn files_go_a_message_at_a_time_before_a_long_text_and_edits_leave_them_alone() {
    let m = MediaHarness::new(LIMITS);
    let blocks = json!([
        {"type": "image", "url": m.link("cat").await, "name": "cat.png"},
        {"type": "file", "url": m.link("dog").await, "name": "dog.txt"},
        {"type": "image", "url": m.link("owl").await},
    ]);
    // "Ada: a long text here" is two parts: no caption.
    m.say_with("m1", "a long text here", blocks).await;
    let uploads = m.uploads();
    assert_eq!(uploads.len(), 2, "{uploads:?}");
    assert!(
        matches!(&uploads[0], Call::Upload { files, caption: None, .. }
        if files.len() == 2 && files[1] == ("dog.txt".to_owned(), DOG.to_vec(), false))
    );
    assert!(
        matches!(&uploads[1], Call::Upload { files, caption: None, .. }
        if files.len() == 1 && files[0].1 == OWL)
    );
    let sends = m.h.sends();
    assert_eq!(sends.len(), 2, "the text after the files: {sends:?}");
    let parts = m.h.parts("m1", "1/B").await;
    assert_eq!(parts, vec!["100", "101", "102", "103", "104"]);

    m.h.clear();
    m.h.edit("B", "m1", "short").await;
    assert_eq!(
        m.h.connector.calls(),
        vec![
            Call::Edit {
                chat: "1".into(),
                id: "103".into(),
                text: "Ada: short".into()
            },
            Call::Delete {
                chat: "1".into(),
                id: "104".into()
            },
        ],
        "only the text's parts change"
    );
    assert_eq!(
        m.h.parts("m1", "1/B").await,
        vec!["100", "101", "102", "103"]
    );

    m.h.clear();
    m.h.channel(
        "B",
        json!({"type": "channel.message.delete", "channelId": "B", "messageId": "m1"}),
    )
    .await;
    let deleted: Vec<String> =
        m.h.connector
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Delete { id, .. } => Some(id),
                _ => None,
            })
            .collect();
    assert_eq!(deleted, vec!["100", "101", "102", "103"], "files and text");
    m.h.stop().await;
}

#[tokio::test]
async fn a_file_that_cannot_go_is_shown_by_name_and_its_agent_told() {
    let m = MediaHarness::new(MediaLimits {
        max_file_bytes: 5,
        ..LIMITS
    });
    let blocks = json!([
        // 11 bytes: over the platform's 5.
        {"type": "image", "url": m.link("cat").await, "name": "cat.png"},
        // Not on the platform any more.
        {"type": "image", "url": m.link("gone").await, "name": "gone.png"},
        // An address the fetcher refuses: nothing is requested.
        {"type": "file", "url": "http://127.0.0.1:9/secret", "name": "secret"},
        // Fits.
        {"type": "file", "url": m.link("dog").await, "name": "dog.txt"},
    ]);
    m.say_with("m1", "hi", blocks).await;
    let uploads = m.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert!(
        matches!(&uploads[0], Call::Upload { files, caption: Some(caption), .. }
        if files.len() == 1 && files[0].1 == DOG && caption == "Ada: hi")
    );
    let lines: Vec<String> = m.h.sends().iter().map(|send| send.2.clone()).collect();
    assert_eq!(
        lines,
        vec![
            "📎 cat.png (11 B)".to_owned(),
            "📎 gone.png (could not be fetched)".to_owned(),
            "📎 secret (could not be fetched)".to_owned(),
        ]
    );
    let told = m.h.store.published();
    assert!(
        told.iter()
            .any(|(channel, payload)| channel == "pubsub:agent:ada"
                && payload.contains("cat.png was not uploaded")),
        "{told:?}"
    );
    let letters = m.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters[0].contains("no longer has this file"),
        "{}",
        letters[0]
    );
    assert!(letters[1].contains("loopback"), "{}", letters[1]);
    // Every part is mapped: the upload, then the lines.
    assert_eq!(m.h.parts("m1", "1/B").await.len(), 4);
    m.h.stop().await;
}

#[tokio::test]
async fn a_picture_over_the_picture_limit_goes_as_a_file() {
    let m = MediaHarness::new(MediaLimits {
        max_image_bytes: 5,
        ..LIMITS
    });
    let blocks = json!([
        {"type": "image", "url": m.link("cat").await, "name": "cat.png"},
        {"type": "image", "url": m.link("dog").await, "name": "dog.png"},
    ]);
    m.say_with("m1", "two", blocks).await;
    let uploads = m.uploads();
    let Some(Call::Upload { files, .. }) = uploads.first() else {
        panic!("an upload: {uploads:?}");
    };
    // 11 bytes is over the 5 a picture may have; 3 bytes is not.
    assert_eq!(
        files
            .iter()
            .map(|(name, _, as_image)| (name.as_str(), *as_image))
            .collect::<Vec<_>>(),
        vec![("cat.png", false), ("dog.png", true)]
    );
    m.h.stop().await;
}

#[tokio::test]
async fn files_the_platform_refuses_are_named_and_the_text_still_goes() {
    let m = MediaHarness::new(LIMITS);
    m.h.connector.refuse_uploads.store(true, Ordering::Relaxed);
    let blocks = json!([{"type": "image", "url": m.link("cat").await, "name": "cat.png"}]);
    m.say_with("m1", "look", blocks).await;
    let lines: Vec<String> = m.h.sends().iter().map(|send| send.2.clone()).collect();
    assert_eq!(
        lines,
        vec![
            "Ada: look".to_owned(),
            "📎 cat.png (could not be uploaded)".to_owned()
        ]
    );
    let letters = m.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].contains("IMAGE_PROCESS_FAILED"),
        "{}",
        letters[0]
    );
    m.h.stop().await;
}

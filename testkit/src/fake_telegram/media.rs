//! Files and media in the fake Bot API: the files it holds (registered by a test or uploaded by
//! the bot), `getFile` and the download route `GET /file/bot{token}/{file_path}`, multipart uploads
//! (`sendPhoto`, `sendDocument`, `sendAudio`, `sendVoice`, `sendVideo`, `sendAnimation`,
//! `sendVideoNote`, `sendSticker` and `sendMediaGroup` with `attach://` parts) with the real
//! server's size, caption and album limits, `editMessageCaption`, and the builders of inbound media
//! messages that reference held files. Uploads are recorded with a SHA-256 of their bytes so tests
//! can check them byte for byte.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{
    bad, err, form_value, int_param, merge, now_unix, parse_html, put_opt, str_param, Answer,
    ApiErr, BotMessage, ChatRef, FakeTelegram, Media, MessageUpdate, Shared, State, UserRef,
    NOT_MODIFIED,
};

/// The largest photo the Bot API takes: TDLib's `10 << 20` bytes.
pub const PHOTO_LIMIT: usize = 10 << 20;

/// The largest multipart upload api.telegram.org takes (50 MB, read as binary megabytes like the
/// photo limit); larger requests are refused before the Bot API reads them.
pub const UPLOAD_LIMIT: usize = 50 << 20;

/// The largest file `getFile` hands out without `--local` (the Bot API's MAX_DOWNLOAD_FILE_SIZE).
pub const DOWNLOAD_LIMIT: usize = 20 << 20;

/// The longest caption, in UTF-16 units after entity parsing.
const CAPTION_LIMIT: usize = 1024;

/// The body limit of the fake's HTTP server: above the upload limit, so that an oversized upload
/// reaches the handler and is answered with the Bot API's JSON 413 rather than axum's plain one.
pub(super) const BODY_LIMIT: usize = 4 * UPLOAD_LIMIT;

/// The kinds of file a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Photo,
    Document,
    Audio,
    Voice,
    Video,
    Animation,
    VideoNote,
    Sticker,
}

impl MediaKind {
    /// The message field (and upload parameter) of this kind, such as `"video_note"`.
    pub fn field(self) -> &'static str {
        match self {
            MediaKind::Photo => "photo",
            MediaKind::Document => "document",
            MediaKind::Audio => "audio",
            MediaKind::Voice => "voice",
            MediaKind::Video => "video",
            MediaKind::Animation => "animation",
            MediaKind::VideoNote => "video_note",
            MediaKind::Sticker => "sticker",
        }
    }

    /// The kind a `send*` method (lowercase) uploads.
    fn of_method(method: &str) -> Option<Self> {
        Some(match method {
            "sendphoto" => MediaKind::Photo,
            "senddocument" => MediaKind::Document,
            "sendaudio" => MediaKind::Audio,
            "sendvoice" => MediaKind::Voice,
            "sendvideo" => MediaKind::Video,
            "sendanimation" => MediaKind::Animation,
            "sendvideonote" => MediaKind::VideoNote,
            "sendsticker" => MediaKind::Sticker,
            _ => return None,
        })
    }

    /// The kind an `InputMedia` `type` names.
    fn of_input_media(kind: &str) -> Option<Self> {
        Some(match kind {
            "photo" => MediaKind::Photo,
            "document" => MediaKind::Document,
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            "animation" => MediaKind::Animation,
            _ => return None,
        })
    }

    /// The folder and default extension of the `file_path`s Telegram hands out for this kind.
    fn storage(self) -> (&'static str, &'static str) {
        match self {
            MediaKind::Photo => ("photos", "jpg"),
            MediaKind::Document => ("documents", "bin"),
            MediaKind::Audio => ("music", "mp3"),
            MediaKind::Voice => ("voice", "oga"),
            MediaKind::Video => ("videos", "mp4"),
            MediaKind::Animation => ("animations", "mp4"),
            MediaKind::VideoNote => ("video_notes", "mp4"),
            MediaKind::Sticker => ("stickers", "webp"),
        }
    }

    /// The start of Telegram's file ids for this kind, so ids look like the real ones in logs.
    fn id_prefix(self) -> &'static str {
        match self {
            MediaKind::Photo => "AgACAgIAAxkBAAI",
            MediaKind::Document => "BQACAgIAAxkBAAI",
            MediaKind::Audio => "CQACAgIAAxkBAAI",
            MediaKind::Voice => "AwACAgIAAxkBAAI",
            MediaKind::Video => "BAACAgIAAxkBAAI",
            MediaKind::Animation => "CgACAgIAAxkBAAI",
            MediaKind::VideoNote => "DQACAgIAAxkBAAI",
            MediaKind::Sticker => "CAACAgIAAxkBAAI",
        }
    }
}

/// A file the fake holds, as `getFile` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHandle {
    pub file_id: String,
    pub file_unique_id: String,
    pub size: u32,
    /// Where `GET /file/bot{token}/{file_path}` serves the bytes.
    pub file_path: String,
}

impl FileHandle {
    /// The fields every file object shares: `file_id`, `file_unique_id`, `file_size`.
    fn json(&self) -> Value {
        json!({"file_id": self.file_id, "file_unique_id": self.file_unique_id,
            "file_size": self.size})
    }
}

/// One file part of a request as it crossed the wire (see [`super::Call::uploads`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The multipart part's name: a parameter (`"photo"`) or the name an `attach://` refers to.
    pub part: String,
    /// The part's `filename`; teloxide sends `""` for `InputFile::memory` without a name.
    pub file_name: Option<String>,
    /// The part's own `Content-Type`, if it sent one (teloxide does not).
    pub content_type: Option<String>,
    pub len: usize,
    /// Lowercase hex SHA-256 of the bytes (compare with [`sha256_hex`]).
    pub sha256: String,
}

/// The file of a media message the bot sent, as the chat shows it now.
#[derive(Clone, Debug, PartialEq)]
pub struct SentMedia {
    pub kind: MediaKind,
    /// The file as the fake stored it: a new file for an upload, the same one when re-sent by id.
    pub file: FileHandle,
    /// True when the bytes were uploaded with the message, false when it named a held file_id.
    pub uploaded: bool,
    pub file_name: Option<String>,
    /// The MIME type Telegram reports: guessed from the file name, as Telegram does.
    pub mime_type: Option<String>,
    pub len: usize,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// The `caption_entities` sent with the caption (or with its last edit), as JSON.
    pub caption_entities: Option<Value>,
    pub media_group_id: Option<String>,
    /// The message's media fields as the API shows them (`{"photo": [...]}`, ...).
    fields: Value,
}

/// One request for `GET /file/bot{token}/{file_path}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Download {
    /// The path as asked for, percent-decoded.
    pub file_path: String,
    pub status: u16,
    /// The bytes served (0 unless the status is 200).
    pub len: usize,
    pub at: Instant,
}

/// Lowercase hex SHA-256 of `bytes`, as uploads are recorded.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The files the fake holds and their downloads.
#[derive(Default)]
pub(super) struct Files {
    by_id: HashMap<String, StoredFile>,
    /// `file_path` -> `file_id`.
    by_path: HashMap<String, String>,
    last_file: u64,
    last_media_group: u64,
    downloads: Vec<Download>,
}

struct StoredFile {
    handle: FileHandle,
    kind: MediaKind,
    file_name: Option<String>,
    bytes: Bytes,
    sha256: String,
}

impl Files {
    fn add(&mut self, kind: MediaKind, bytes: Bytes, file_name: Option<&str>) -> FileHandle {
        self.last_file += 1;
        let n = self.last_file;
        let (folder, default_ext) = kind.storage();
        let ext = file_name
            .and_then(|name| name.rsplit_once('.'))
            .map(|(_, ext)| ext)
            .filter(|ext| !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric()))
            .unwrap_or(default_ext);
        let handle = FileHandle {
            file_id: format!("{}{n:05}", kind.id_prefix()),
            file_unique_id: format!("AQAD{n:05}"),
            size: bytes.len() as u32,
            file_path: format!("{folder}/file_{n}.{ext}"),
        };
        self.by_path
            .insert(handle.file_path.clone(), handle.file_id.clone());
        self.by_id.insert(
            handle.file_id.clone(),
            StoredFile {
                handle: handle.clone(),
                kind,
                file_name: file_name.filter(|n| !n.is_empty()).map(String::from),
                sha256: sha256_hex(&bytes),
                bytes,
            },
        );
        handle
    }
}

/// A file part of a multipart request.
pub(super) struct Part {
    file_name: Option<String>,
    content_type: Option<String>,
    bytes: Bytes,
    sha256: String,
}

/// The file parts of a request, in the order they came, so that the uploads of an album are
/// recorded in the order of its items.
#[derive(Default)]
pub(super) struct Parts(Vec<(String, Part)>);

impl Parts {
    fn get(&self, name: &str) -> Option<&Part> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, part)| part)
    }
}

impl FakeTelegram {
    /// Holds `bytes` as a file of `kind` and returns its ids, for building inbound media messages
    /// (see [`Media::photo_sizes`] and friends) and for `getFile` and downloads.
    pub fn add_file(&self, bytes: impl Into<Bytes>, kind: MediaKind) -> FileHandle {
        self.shared.lock().files.add(kind, bytes.into(), None)
    }

    /// The bytes of a held file (registered or uploaded), without counting as a download.
    pub fn file_bytes(&self, file_id: &str) -> Option<Bytes> {
        let st = self.shared.lock();
        st.files.by_id.get(file_id).map(|f| f.bytes.clone())
    }

    /// Every request for a file's bytes, in order, whatever its answer.
    pub fn downloads(&self) -> Vec<Download> {
        self.shared.lock().files.downloads.clone()
    }

    /// The messages of an album: each carries `media` and they share a new `media_group_id`, so
    /// they arrive as separate updates like a real album. Add a caption to the first with
    /// [`MessageUpdate::caption`].
    pub fn album(&self, chat: &ChatRef, from: &UserRef, media: Vec<Media>) -> Vec<MessageUpdate> {
        let group = {
            let mut st = self.shared.lock();
            st.files.last_media_group += 1;
            // Telegram's ids are the decimal text of a large 64-bit number.
            format!("{}", 13_000_000_000_000_000u64 + st.files.last_media_group)
        };
        media
            .into_iter()
            .map(|m| self.media_message(chat, from, m).media_group(&group))
            .collect()
    }
}

impl MessageUpdate {
    /// Puts the message in an album; the messages of one album share the id.
    pub fn media_group(mut self, media_group_id: &str) -> Self {
        self.message["media_group_id"] = media_group_id.into();
        self
    }

    /// The caption's entities (`MessageEntity` objects), as a client that formats captions sends.
    pub fn caption_entities(mut self, entities: Value) -> Self {
        self.message["caption_entities"] = entities;
        self
    }
}

impl Media {
    /// A photo whose sizes are held files, smallest first as Telegram lists them, each with its
    /// width and height.
    pub fn photo_sizes(sizes: &[(&FileHandle, u32, u32)]) -> Self {
        let sizes: Vec<Value> = sizes
            .iter()
            .map(|(file, width, height)| {
                let mut size = file.json();
                size["width"] = (*width).into();
                size["height"] = (*height).into();
                size
            })
            .collect();
        Media(json!({ "photo": sizes }))
    }

    pub fn document_file(file: &FileHandle, file_name: &str, mime_type: &str) -> Self {
        let mut document = file.json();
        document["file_name"] = file_name.into();
        document["mime_type"] = mime_type.into();
        Media(json!({ "document": document }))
    }

    /// A music file; Telegram shows `performer` and `title` when the file's tags have them.
    pub fn audio_file(
        file: &FileHandle,
        duration_secs: u32,
        file_name: &str,
        mime_type: &str,
    ) -> Self {
        let mut audio = file.json();
        audio["duration"] = duration_secs.into();
        audio["file_name"] = file_name.into();
        audio["mime_type"] = mime_type.into();
        Media(json!({ "audio": audio }))
    }

    /// A voice note (OGG/Opus, as Telegram records them).
    pub fn voice_file(file: &FileHandle, duration_secs: u32) -> Self {
        let mut voice = file.json();
        voice["duration"] = duration_secs.into();
        voice["mime_type"] = "audio/ogg".into();
        Media(json!({ "voice": voice }))
    }

    pub fn video_file(file: &FileHandle, width: u32, height: u32, duration_secs: u32) -> Self {
        let mut video = file.json();
        merge_dimensions(&mut video, width, height, duration_secs);
        video["mime_type"] = "video/mp4".into();
        Media(json!({ "video": video }))
    }

    /// A GIF-like silent video. Telegram also sends it as `document`, for older clients.
    pub fn animation_file(file: &FileHandle, width: u32, height: u32, duration_secs: u32) -> Self {
        let mut animation = file.json();
        merge_dimensions(&mut animation, width, height, duration_secs);
        animation["file_name"] = "animation.mp4".into();
        animation["mime_type"] = "video/mp4".into();
        let mut document = file.json();
        document["file_name"] = "animation.mp4".into();
        document["mime_type"] = "video/mp4".into();
        Media(json!({ "animation": animation, "document": document }))
    }

    /// A round video message; `length` is its diameter.
    pub fn video_note_file(file: &FileHandle, length: u32, duration_secs: u32) -> Self {
        let mut note = file.json();
        note["length"] = length.into();
        note["duration"] = duration_secs.into();
        Media(json!({ "video_note": note }))
    }

    /// A static (WebP) sticker.
    pub fn sticker_file(file: &FileHandle, emoji: &str) -> Self {
        let mut sticker = file.json();
        merge(
            &mut sticker,
            json!({"type": "regular", "width": 512, "height": 512, "is_animated": false,
                "is_video": false, "emoji": emoji}),
        );
        Media(json!({ "sticker": sticker }))
    }
}

fn merge_dimensions(file: &mut Value, width: u32, height: u32, duration_secs: u32) {
    merge(
        file,
        json!({"width": width, "height": height, "duration": duration_secs}),
    );
}

// ---------------------------------------------------------------------------------------------
// The wire: multipart bodies and the download route
// ---------------------------------------------------------------------------------------------

/// Reads a `multipart/form-data` body: text parts become parameters (JSON-looking ones parsed,
/// as for form bodies), parts with a `filename` become files.
pub(super) async fn parse_multipart(
    content_type: &str,
    body: Bytes,
    params: &mut Map<String, Value>,
) -> Result<Parts, ApiErr> {
    let malformed = |e: multer::Error| bad(&format!("Bad Request: can't parse multipart: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(malformed)?;
    let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Parts::default();
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(String::from);
        let content_type = field.content_type().map(ToString::to_string);
        let bytes = field.bytes().await.map_err(malformed)?;
        if file_name.is_none() {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                params.insert(name, form_value(text));
                continue;
            }
        }
        let sha256 = sha256_hex(&bytes);
        let part = Part {
            file_name,
            content_type,
            bytes,
            sha256,
        };
        parts.0.push((name, part));
    }
    Ok(parts)
}

/// What a call record keeps of a request's file parts.
pub(super) fn uploads(parts: &Parts) -> Vec<Upload> {
    parts
        .0
        .iter()
        .map(|(name, part)| Upload {
            part: name.clone(),
            file_name: part.file_name.clone(),
            content_type: part.content_type.clone(),
            len: part.bytes.len(),
            sha256: part.sha256.clone(),
        })
        .collect()
}

/// api.telegram.org refuses an upload over 50 MB before the Bot API sees it.
pub(super) fn check_upload_size(parts: &Parts) -> Result<(), ApiErr> {
    if parts.0.iter().any(|(_, p)| p.bytes.len() > UPLOAD_LIMIT) {
        return Err(err(413, "Request Entity Too Large"));
    }
    Ok(())
}

/// `GET /file/bot{token}/{file_path}`: the held file's bytes with their length. A wrong token and
/// an unknown path both answer 404, as api.telegram.org's file server does.
pub(super) fn serve_file(shared: &Shared, rest: &str) -> Response {
    let decoded = percent_encoding::percent_decode_str(rest).decode_utf8_lossy();
    let (token, file_path) = decoded
        .strip_prefix("bot")
        .and_then(|r| r.split_once('/'))
        .unwrap_or_default();
    let mut st = shared.lock();
    let bytes = Some(file_path)
        .filter(|_| token == shared.token)
        .and_then(|path| st.files.by_path.get(path))
        .and_then(|id| st.files.by_id.get(id))
        .map(|f| f.bytes.clone());
    // The record keeps the path only: a token has no place in what a test prints.
    st.files.downloads.push(Download {
        file_path: file_path.to_owned(),
        status: if bytes.is_some() { 200 } else { 404 },
        len: bytes.as_ref().map_or(0, Bytes::len),
        at: Instant::now(),
    });
    drop(st);
    shared.changed();
    match bytes {
        Some(bytes) => {
            let len = HeaderValue::from(bytes.len());
            let mut response = bytes.into_response();
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(CONTENT_LENGTH, len);
            response
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"ok": false, "error_code": 404, "description": "Not Found"})),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------------

/// A file parameter resolved to bytes: an upload, or a held file named by its id.
struct Input {
    bytes: Bytes,
    file_name: Option<String>,
    sha256: String,
    /// The held file when the parameter named one instead of uploading.
    existing: Option<FileHandle>,
}

impl State {
    /// Methods of this module; `None` when `method` is none of them.
    pub(super) fn handle_media(
        &mut self,
        bot: &UserRef,
        method: &str,
        chat: i64,
        p: &Map<String, Value>,
        parts: &Parts,
    ) -> Option<Answer> {
        Some(match method {
            "sendmediagroup" => self.send_media_group(bot, chat, p, parts),
            "editmessagecaption" => self.edit_message_caption(bot, chat, p),
            _ => {
                let kind = MediaKind::of_method(method)?;
                self.send_media(bot, chat, kind, p, parts)
            }
        })
    }

    /// getFile: a held file's path, unless it is too big for the public Bot API to hand out.
    pub(super) fn get_file(&self, p: &Map<String, Value>) -> Answer {
        let id = str_param(p, "file_id").unwrap_or_default();
        let file = self
            .files
            .by_id
            .get(&id)
            .ok_or_else(|| bad("Bad Request: invalid file_id"))?;
        if file.bytes.len() > DOWNLOAD_LIMIT {
            return Err(bad("Bad Request: file is too big"));
        }
        let mut answer = file.handle.json();
        answer["file_path"] = file.handle.file_path.as_str().into();
        Ok(answer)
    }

    fn send_media(
        &mut self,
        bot: &UserRef,
        chat: i64,
        kind: MediaKind,
        p: &Map<String, Value>,
        parts: &Parts,
    ) -> Answer {
        self.check_topic(chat, p)?;
        let caption = Caption::read(p)?;
        let input = self.resolve_input(p.get(kind.field()), kind, kind.field(), parts)?;
        check_input(kind, &input)?;
        let reply_to = self.reply_target(chat, p)?;
        let media = self.store_media(kind, input, p, caption.entities.clone(), None);
        let message = self.push_media(chat, p, reply_to, caption, media);
        Ok(self.message_json(bot, chat, &message, true))
    }

    /// sendMediaGroup: 2-10 items, documents and audio only among their own kind; every item is a
    /// message of its own sharing one `media_group_id`, and all replies go to the same message.
    fn send_media_group(
        &mut self,
        bot: &UserRef,
        chat: i64,
        p: &Map<String, Value>,
        parts: &Parts,
    ) -> Answer {
        self.check_topic(chat, p)?;
        let items = match p.get("media") {
            None => return Err(bad("Bad Request: parameter \"media\" is required")),
            Some(Value::Array(items)) => items.clone(),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map_err(|_| bad("Bad Request: can't parse media JSON object"))?,
            Some(_) => return Err(bad("Bad Request: expected an Array of InputMedia")),
        };
        match items.len() {
            0 => return Err(bad("Bad Request: there are no messages to send")),
            // The Bot API documents 2-10 items; the real server sends a lone item as a plain
            // message instead, which a bridge should not rely on, so the fake refuses it.
            1 => return Err(bad("Bad Request: media group must include 2-10 items")),
            n if n > 10 => return Err(bad("Bad Request: too many messages to send as an album")),
            _ => {}
        }
        let mut prepared = Vec::new();
        for item in &items {
            let type_name = item["type"].as_str().unwrap_or_default();
            let kind = match MediaKind::of_input_media(type_name) {
                Some(MediaKind::Animation) => {
                    return Err(bad(
                        "Bad Request: can't parse InputMedia: type \"animation\" can't be used in sendMediaGroup",
                    ))
                }
                Some(kind) => kind,
                None => {
                    return Err(bad(&format!(
                        "Bad Request: can't parse InputMedia: type \"{type_name}\" is unsupported"
                    )))
                }
            };
            let fields = item.as_object().cloned().unwrap_or_default();
            let caption = Caption::read(&fields)?;
            let input = self
                .resolve_input(item.get("media"), kind, "media", parts)
                .map_err(|e| match e.code {
                    413 => e,
                    _ => bad(&format!(
                        "Bad Request: can't parse InputMedia: {}",
                        e.description.trim_start_matches("Bad Request: ")
                    )),
                })?;
            check_input(kind, &input)?;
            prepared.push((kind, fields, caption, input));
        }
        for lone in [MediaKind::Document, MediaKind::Audio] {
            let count = prepared.iter().filter(|(k, ..)| *k == lone).count();
            if count > 0 && count < prepared.len() {
                return Err(bad(&format!(
                    "Bad Request: {} can't be mixed with other media types",
                    lone.field()
                )));
            }
        }
        let reply_to = self.reply_target(chat, p)?;
        self.files.last_media_group += 1;
        let group = format!(
            "{}",
            14_000_000_000_000_000u64 + self.files.last_media_group
        );
        let mut sent = Vec::new();
        for (kind, fields, caption, input) in prepared {
            let media = self.store_media(
                kind,
                input,
                &fields,
                caption.entities.clone(),
                Some(group.clone()),
            );
            let message = self.push_media(chat, p, reply_to, caption, media);
            sent.push(self.message_json(bot, chat, &message, true));
        }
        Ok(Value::Array(sent))
    }

    /// editMessageCaption: only media messages have a caption; the same checks as a new caption.
    fn edit_message_caption(&mut self, bot: &UserRef, chat: i64, p: &Map<String, Value>) -> Answer {
        let Some(id) = int_param(p, "message_id").map(|id| id as i32) else {
            return if p.contains_key("inline_message_id") {
                Ok(true.into())
            } else {
                Err(bad("Bad Request: message identifier is not specified"))
            };
        };
        let caption = Caption::read(p)?;
        let log = self.chats.entry(chat).or_default();
        let Some(message) = log.sent.get_mut(&id) else {
            return Err(bad(if log.injected.contains_key(&id) {
                "Bad Request: message can't be edited"
            } else {
                "Bad Request: message to edit not found"
            }));
        };
        let Some(media) = message.media.as_mut() else {
            return Err(bad(
                "Bad Request: there is no caption in the message to edit",
            ));
        };
        if message.text == caption.text
            && message.parse_mode == caption.parse_mode
            && media.caption_entities == caption.entities
        {
            return Err(bad(NOT_MODIFIED));
        }
        media.caption_entities = caption.entities;
        message.text = caption.text;
        message.plain = caption.plain;
        message.parse_mode = caption.parse_mode;
        message.edit_date = Some(now_unix());
        let message = message.clone();
        Ok(self.message_json(bot, chat, &message, true))
    }

    /// A file parameter: `attach://<part>`, the part named like the parameter, or a held file_id.
    fn resolve_input(
        &self,
        value: Option<&Value>,
        kind: MediaKind,
        field: &str,
        parts: &Parts,
    ) -> Result<Input, ApiErr> {
        let from_part = |part: &Part| Input {
            bytes: part.bytes.clone(),
            file_name: part.file_name.clone().filter(|n| !n.is_empty()),
            sha256: part.sha256.clone(),
            existing: None,
        };
        let text = value.and_then(Value::as_str);
        if let Some(name) = text.and_then(|t| t.strip_prefix("attach://")) {
            return parts
                .get(name)
                .map(from_part)
                .ok_or_else(|| bad("Bad Request: media not found"));
        }
        if let Some(part) = parts.get(field) {
            return Ok(from_part(part));
        }
        let Some(id) = text.filter(|t| !t.is_empty()) else {
            return Err(bad(&format!(
                "Bad Request: there is no {field} in the request"
            )));
        };
        if id.contains("://") {
            // The fake never reaches the network, so a URL is content it cannot get.
            return Err(bad("Bad Request: failed to get HTTP URL content"));
        }
        let held = self
            .files
            .by_id
            .get(id)
            .ok_or_else(|| bad("Bad Request: wrong file identifier/HTTP URL specified"))?;
        // Telegram converts between the file kinds of documents, videos and audio, but a photo
        // or a sticker is only ever itself.
        let fixed = [MediaKind::Photo, MediaKind::Sticker];
        if held.kind != kind && (fixed.contains(&held.kind) || fixed.contains(&kind)) {
            return Err(bad(&format!(
                "Bad Request: can't use file of type {:?} as {:?}",
                held.kind, kind
            )));
        }
        Ok(Input {
            bytes: held.bytes.clone(),
            file_name: held.file_name.clone(),
            sha256: held.sha256.clone(),
            existing: Some(held.handle.clone()),
        })
    }

    /// Holds an uploaded file (a re-sent file_id keeps its file) and builds the message's fields.
    fn store_media(
        &mut self,
        kind: MediaKind,
        input: Input,
        p: &Map<String, Value>,
        caption_entities: Option<Value>,
        media_group_id: Option<String>,
    ) -> SentMedia {
        let uploaded = input.existing.is_none();
        let len = input.bytes.len();
        let file = match input.existing {
            Some(held) => held,
            None => self
                .files
                .add(kind, input.bytes.clone(), input.file_name.as_deref()),
        };
        let mime_type = match kind {
            MediaKind::Photo | MediaKind::VideoNote => None,
            MediaKind::Voice => Some("audio/ogg".to_owned()),
            MediaKind::Sticker => Some("image/webp".to_owned()),
            MediaKind::Video | MediaKind::Animation => {
                Some(guess_mime(&input.file_name, "video/mp4"))
            }
            MediaKind::Audio => Some(guess_mime(&input.file_name, "audio/mpeg")),
            MediaKind::Document => Some(guess_mime(&input.file_name, "application/octet-stream")),
        };
        let dimension = |key: &str, default: u32| {
            int_param(p, key).map_or(default, |v| v.clamp(0, u32::MAX.into()) as u32)
        };
        let duration = dimension("duration", 0);
        let mut object = file.json();
        put_opt(&mut object, "file_name", &input.file_name);
        put_opt(&mut object, "mime_type", &mime_type);
        let fields = match kind {
            MediaKind::Photo => {
                let (width, height) = image_size(&input.bytes).unwrap_or((1280, 960));
                let mut size = file.json();
                size["width"] = width.into();
                size["height"] = height.into();
                // The fake does not resize, so it answers with the one size it was given.
                json!({ "photo": [size] })
            }
            MediaKind::Document => json!({ "document": object }),
            MediaKind::Audio => {
                object["duration"] = duration.into();
                put_opt(&mut object, "performer", &str_param(p, "performer"));
                put_opt(&mut object, "title", &str_param(p, "title"));
                json!({ "audio": object })
            }
            MediaKind::Voice => {
                object["duration"] = duration.into();
                json!({ "voice": object })
            }
            MediaKind::Video | MediaKind::Animation => {
                merge_dimensions(
                    &mut object,
                    dimension("width", 640),
                    dimension("height", 360),
                    duration,
                );
                if kind == MediaKind::Video {
                    json!({ "video": object })
                } else {
                    json!({ "animation": object.clone(), "document": object })
                }
            }
            MediaKind::VideoNote => {
                object["length"] = dimension("length", 240).into();
                object["duration"] = duration.into();
                json!({ "video_note": object })
            }
            MediaKind::Sticker => {
                merge(
                    &mut object,
                    json!({"type": "regular", "width": 512, "height": 512, "is_animated": false,
                        "is_video": false}),
                );
                put_opt(&mut object, "emoji", &str_param(p, "emoji"));
                json!({ "sticker": object })
            }
        };
        SentMedia {
            kind,
            file,
            uploaded,
            file_name: input.file_name,
            mime_type,
            len,
            sha256: input.sha256,
            caption_entities,
            media_group_id,
            fields,
        }
    }

    fn push_media(
        &mut self,
        chat: i64,
        p: &Map<String, Value>,
        reply_to: Option<i32>,
        caption: Caption,
        media: SentMedia,
    ) -> BotMessage {
        let log = self.chats.entry(chat).or_default();
        log.last_message_id += 1;
        let message = BotMessage {
            message_id: log.last_message_id,
            text: caption.text,
            plain: caption.plain,
            parse_mode: caption.parse_mode,
            thread_id: int_param(p, "message_thread_id").map(|id| id as i32),
            reply_to,
            date: now_unix(),
            edit_date: None,
            media: Some(media),
        };
        log.sent.insert(message.message_id, message.clone());
        message
    }
}

/// A media message's fields in a `Message` object: the file, caption, entities and album.
pub(super) fn media_json(message: &mut Value, m: &BotMessage, media: &SentMedia) {
    merge(message, media.fields.clone());
    if !m.plain.is_empty() {
        message["caption"] = m.plain.as_str().into();
    }
    if let Some(entities) = &media.caption_entities {
        message["caption_entities"] = entities.clone();
    }
    put_opt(message, "media_group_id", &media.media_group_id);
}

/// A caption as sent and as shown.
struct Caption {
    text: String,
    plain: String,
    parse_mode: Option<String>,
    entities: Option<Value>,
}

impl Caption {
    /// Reads `caption`, `parse_mode` and `caption_entities`; checks the markup and the length.
    fn read(p: &Map<String, Value>) -> Result<Self, ApiErr> {
        let text = str_param(p, "caption").unwrap_or_default();
        let parse_mode = str_param(p, "parse_mode");
        let plain = match parse_mode
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("html") => parse_html(&text)
                .map_err(|e| bad(&format!("Bad Request: can't parse entities: {e}")))?,
            _ => text.clone(),
        };
        let plain = plain.trim().to_owned();
        if plain.encode_utf16().count() > CAPTION_LIMIT {
            return Err(bad("Bad Request: message caption is too long"));
        }
        let entities = p.get("caption_entities").map(|e| match e {
            Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| e.clone()),
            other => other.clone(),
        });
        Ok(Caption {
            text,
            plain,
            parse_mode,
            entities,
        })
    }
}

/// The size checks the Bot API makes on a file before it sends it.
fn check_input(kind: MediaKind, input: &Input) -> Result<(), ApiErr> {
    let len = input.bytes.len();
    if len == 0 {
        return Err(bad("Bad Request: file must be non-empty"));
    }
    if kind == MediaKind::Photo && input.existing.is_none() {
        if len > PHOTO_LIMIT {
            return Err(bad(&format!(
                "Bad Request: file of size {len} bytes is too big for a photo; the maximum size is {PHOTO_LIMIT} bytes"
            )));
        }
        if let Some((width, height)) = image_size(&input.bytes) {
            let ratio = width.max(height) as f64 / width.min(height).max(1) as f64;
            if width + height > 10_000 || ratio > 20.0 {
                return Err(bad("Bad Request: PHOTO_INVALID_DIMENSIONS"));
            }
        }
    }
    Ok(())
}

fn guess_mime(file_name: &Option<String>, default: &str) -> String {
    file_name
        .as_deref()
        .and_then(|name| mime_guess::from_path(name).first_raw())
        .unwrap_or(default)
        .to_owned()
}

/// Width and height from a PNG, GIF or JPEG header; `None` for anything else. The fake accepts
/// photos it cannot read (test bytes need not be images), with a made-up size.
fn image_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let be16 = |at: usize| -> Option<u32> {
        Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?).into())
    };
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let be32 = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        return Some((be32(16)?, be32(20)?));
    }
    if bytes.starts_with(b"GIF8") {
        let le16 = |at: usize| -> Option<u32> {
            Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?).into())
        };
        return Some((le16(6)?, le16(8)?));
    }
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    // Walk the JPEG segments to the first start-of-frame marker, which holds the size.
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            return None;
        }
        let marker = bytes[at + 1];
        let len = be16(at + 2)? as usize;
        let is_frame = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_frame {
            return Some((be16(at + 7)?, be16(at + 5)?));
        }
        at += 2 + len;
    }
    None
}

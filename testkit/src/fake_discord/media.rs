//! The fake Discord's media: the attachment CDN and the uploads that fill it. Attachments (a
//! person's, injected by a test, or the bot's and webhooks', uploaded as multipart
//! `payload_json` + `files[n]`) are kept with their bytes and served at Discord-shaped signed URLs
//! on the fake's own address (`/attachments/{channel}/{attachment}/{filename}?ex=&is=&hm=`, and
//! the same under `/proxy` for `proxy_url`), which stop working past `ex` on the fake's clock, as
//! the real CDN's do. It also owns `POST /attachments/refresh-urls`, Discord's upload limits, and
//! the counters tests use to prove that no platform call was made.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, RawQuery, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ring::{digest, hmac, rand};
use serde_json::{json, Value};

use super::{unix_secs, FakeDiscord, Incoming, Reply, Shared, St};

/// Discord's upload limit per file for bots and webhooks on a server without boosts (10 MiB).
pub const MAX_FILE_BYTES: usize = 10 * 1024 * 1024;

/// Discord's limit of files on one message.
pub const MAX_FILES: usize = 10;

/// How long a signed attachment URL stays valid unless a test changes it: about a day, as on
/// Discord.
pub const DEFAULT_URL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The fake server's body limit. axum's default of 2 MB would refuse test files (up to ~12 MB)
/// before the fake could answer with Discord's own 413; this leaves room for ten files of 10 MiB.
pub(super) const BODY_LIMIT: usize = 128 * 1024 * 1024;

/// A file a person attached to a message, for [`super::UserMessage::file`].
#[derive(Clone, Debug)]
pub struct AttachmentFile {
    filename: String,
    content_type: String,
    bytes: Bytes,
    width: Option<u32>,
    height: Option<u32>,
}

impl AttachmentFile {
    /// A file with these bytes; Discord reports width and height only for images, see
    /// [`Self::dimensions`].
    pub fn new(filename: &str, content_type: &str, bytes: impl Into<Bytes>) -> Self {
        Self {
            filename: filename.to_owned(),
            content_type: content_type.to_owned(),
            bytes: bytes.into(),
            width: None,
            height: None,
        }
    }

    /// Sets the image's width and height, as Discord reports them for images and videos.
    pub fn dimensions(mut self, width: u32, height: u32) -> Self {
        (self.width, self.height) = (Some(width), Some(height));
        self
    }
}

/// A sticker on a person's message (`sticker_items`). `format_type`: 1 PNG, 2 APNG, 3 Lottie,
/// 4 GIF.
#[derive(Clone, Debug, PartialEq)]
pub struct StickerItem {
    pub id: u64,
    pub name: String,
    pub format_type: u8,
}

impl StickerItem {
    pub fn new(id: u64, name: &str, format_type: u8) -> Self {
        let name = name.to_owned();
        Self {
            id,
            name,
            format_type,
        }
    }
}

/// One file part of a multipart request, as recorded in [`super::Request::files`].
#[derive(Clone, Debug, PartialEq)]
pub struct UploadedFile {
    /// The form field: `files[0]` as serenity and Discord's docs name them.
    pub field: String,
    /// The part's filename (the `attachments` entry in `payload_json` may rename it).
    pub filename: String,
    /// The part's `Content-Type`, if it had one.
    pub content_type: Option<String>,
    pub len: usize,
    /// SHA-256 of the bytes, lowercase hex (see [`sha256_hex`]).
    pub sha256: String,
}

/// One attachment a message carries, as [`super::ChannelMessage::attachments`] shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    pub id: u64,
    pub filename: String,
    pub content_type: Option<String>,
    pub size: usize,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// What the media side of the fake has answered; compare two snapshots to prove that serving a
/// file made no platform call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaCounts {
    /// CDN requests answered with the bytes.
    pub cdn_downloads: usize,
    /// CDN requests answered 404 (expired, badly signed, or the attachment is gone).
    pub cdn_refused: usize,
    /// `GET` of one message, through a channel or a webhook.
    pub message_fetches: usize,
    /// `POST /attachments/refresh-urls` requests that succeeded.
    pub url_refreshes: usize,
}

/// SHA-256 of `bytes` in lowercase hex, the form the fake records uploads in.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

impl FakeDiscord {
    /// Serves `bytes` as sticker `id`'s image at `/stickers/{id}.png` (or any extension).
    pub fn add_sticker_image(&self, id: u64, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        self.shared.mutate(|st| st.cdn.stickers.insert(id, bytes));
    }

    /// A freshly signed CDN URL for an attachment the fake holds, or None once it is gone.
    pub fn attachment_url(&self, attachment_id: u64) -> Option<String> {
        let st = self.shared.lock();
        let file = st.cdn.files.get(&attachment_id)?;
        Some(st.cdn.signed(&st.base_url(), attachment_id, file).0)
    }

    /// Moves the CDN's clock past the lifetime of every URL handed out so far: they answer 404
    /// from now on, while URLs signed afterwards (refreshed, or in newly fetched messages) work.
    pub fn expire_attachment_urls(&self) {
        self.shared.mutate(|st| {
            st.cdn.offset_secs += st.cdn.lifetime.as_secs() + 1;
        });
    }

    /// How long URLs signed from now on stay valid (default [`DEFAULT_URL_LIFETIME`]); the CDN
    /// counts in whole seconds, as `ex` does.
    pub fn set_attachment_url_lifetime(&self, lifetime: Duration) {
        self.shared.mutate(|st| st.cdn.lifetime = lifetime);
    }

    /// The media counters so far.
    pub fn media_counts(&self) -> MediaCounts {
        self.shared.lock().cdn.counts
    }
}

// ===================== state =====================

/// The CDN: every live attachment with its bytes, the key that signs URLs, and the fake clock.
pub(super) struct Cdn {
    key: hmac::Key,
    /// Added to the real clock, so tests can move URLs past their expiry without waiting.
    offset_secs: u64,
    lifetime: Duration,
    files: HashMap<u64, CdnFile>,
    /// Sticker images by sticker id, served at `/stickers/{id}.{ext}` as Discord's media CDN
    /// serves them (public, unsigned).
    stickers: HashMap<u64, Bytes>,
    pub(super) counts: MediaCounts,
}

impl Default for Cdn {
    fn default() -> Self {
        // A random key per fake: a URL signed by one fake is refused by another.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rand::SystemRandom::new())
            .expect("system randomness");
        Self {
            key,
            offset_secs: 0,
            lifetime: DEFAULT_URL_LIFETIME,
            files: HashMap::new(),
            stickers: HashMap::new(),
            counts: MediaCounts::default(),
        }
    }
}

struct CdnFile {
    channel: u64,
    filename: String,
    content_type: Option<String>,
    description: Option<String>,
    bytes: Bytes,
    sha256: String,
    width: Option<u32>,
    height: Option<u32>,
}

impl Cdn {
    fn now(&self) -> u64 {
        unix_secs() as u64 + self.offset_secs
    }

    /// The `url` and `proxy_url` of an attachment, signed now for the current lifetime.
    fn signed(&self, base: &str, id: u64, file: &CdnFile) -> (String, String) {
        let issued = self.now();
        let expires = issued + self.lifetime.as_secs();
        let hm = self.signature(file.channel, id, &file.filename, expires, issued);
        let path = url_path(file.channel, id, &file.filename);
        let query = format!("?ex={expires:x}&is={issued:x}&hm={hm}&");
        (
            format!("{base}{path}{query}"),
            // Not `/media/`: the hub's own media links contain that, and a leaked fake URL must
            // not pass for one in the end-to-end tests.
            format!("{base}/proxy{path}{query}"),
        )
    }

    fn signature(&self, channel: u64, id: u64, filename: &str, ex: u64, is: u64) -> String {
        let signed = format!("{channel}/{id}/{filename}:{ex:x}:{is:x}");
        hex(hmac::sign(&self.key, signed.as_bytes()).as_ref())
    }

    /// The REST attachment object, with URLs signed now.
    fn attachment_json(&self, base: &str, id: u64) -> Option<Value> {
        let file = self.files.get(&id)?;
        let (url, proxy_url) = self.signed(base, id, file);
        let mut a = json!({
            "id": id.to_string(), "filename": file.filename, "size": file.bytes.len(),
            "url": url, "proxy_url": proxy_url, "content_type": file.content_type,
        });
        if let Some(description) = &file.description {
            a["description"] = json!(description);
        }
        if let (Some(width), Some(height)) = (file.width, file.height) {
            (a["width"], a["height"]) = (json!(width), json!(height));
        }
        Some(a)
    }

    /// Re-signs the URLs of a message's attachments (and of the message it replies to), as
    /// Discord does every time it hands a message out.
    pub(super) fn resign(&self, base: &str, raw: &mut Value) {
        if let Some(files) = raw["attachments"].as_array_mut() {
            for a in files {
                let id = super::id_field(&a["id"]);
                if let Some(fresh) = self.attachment_json(base, id) {
                    *a = fresh;
                }
            }
        }
        if raw["referenced_message"].is_object() {
            self.resign(base, &mut raw["referenced_message"]);
        }
    }

    /// The attachments of a message as a test inspects them.
    pub(super) fn view(&self, raw: &Value) -> Vec<Attachment> {
        let files = raw["attachments"].as_array().map(Vec::as_slice);
        let ids = files
            .unwrap_or_default()
            .iter()
            .map(|a| super::id_field(&a["id"]));
        let known = ids.filter_map(|id| Some((id, self.files.get(&id)?)));
        known
            .map(|(id, f)| Attachment {
                id,
                filename: f.filename.clone(),
                content_type: f.content_type.clone(),
                size: f.bytes.len(),
                sha256: f.sha256.clone(),
                width: f.width,
                height: f.height,
            })
            .collect()
    }

    /// Forgets a message's attachments: their URLs answer 404 from now on.
    pub(super) fn drop_files_of(&mut self, raw: &Value) {
        for a in raw["attachments"].as_array().into_iter().flatten() {
            self.files.remove(&super::id_field(&a["id"]));
        }
    }

    /// A CDN request: the bytes when the URL is well signed and not expired, else a 404 as the
    /// real CDN gives.
    fn serve(&mut self, channel: &str, id: &str, filename: &str, query: &str) -> Response {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let hexnum = |k: &str| params.get(k).and_then(|v| u64::from_str_radix(v, 16).ok());
        let found = channel.parse::<u64>().ok().zip(id.parse::<u64>().ok());
        let file = found.and_then(|(c, id)| {
            let file = self.files.get(&id)?;
            let (ex, is, hm) = (hexnum("ex")?, hexnum("is")?, params.get("hm")?);
            let signed = self.signature(c, id, filename, ex, is);
            let valid = file.channel == c && file.filename == filename && *hm == signed;
            (valid && self.now() <= ex).then_some(file)
        });
        let Some(file) = file else {
            self.counts.cdn_refused += 1;
            let body = "This content is no longer available.";
            return (StatusCode::NOT_FOUND, body).into_response();
        };
        let content_type = file.content_type.as_deref();
        let content_type = content_type.unwrap_or("application/octet-stream");
        let mut response = Body::from(file.bytes.clone()).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(content_type) {
            headers.insert(header::CONTENT_TYPE, value);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.bytes.len()));
        self.counts.cdn_downloads += 1;
        response
    }
}

impl St {
    pub(super) fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A message object as the fake hands it out: attachment URLs signed now.
    pub(super) fn fresh(&self, mut raw: Value) -> Value {
        self.cdn.resign(&self.base_url(), &mut raw);
        raw
    }

    /// Stores a person's file as an attachment in `channel` and returns its REST object.
    pub(super) fn store_person_file(&mut self, channel: u64, file: AttachmentFile) -> Value {
        let id = self.next_id();
        let stored = CdnFile {
            channel,
            sha256: sha256_hex(&file.bytes),
            filename: file.filename,
            content_type: Some(file.content_type),
            description: None,
            bytes: file.bytes,
            width: file.width,
            height: file.height,
        };
        self.cdn.files.insert(id, stored);
        let base = self.base_url();
        self.cdn.attachment_json(&base, id).expect("stored above")
    }

    /// Checks a create or edit request's files against Discord's rules: at most 10 MiB each, at
    /// most 10 on the message (`kept` are the existing attachments an edit keeps), and every new
    /// entry of `attachments` in the payload backed by a `files[n]` part.
    pub(super) fn check_uploads(&self, req: &Incoming, kept: usize) -> Option<Reply> {
        if req.files.iter().any(|f| f.bytes.len() > MAX_FILE_BYTES) {
            return Some(Reply::entity_too_large());
        }
        if req.files.len() + kept > MAX_FILES {
            let message = "Maximum number of attachments in a message reached (10)";
            return Some(Reply::error(400, 30015, message));
        }
        let entries = req.body["attachments"].as_array().map(Vec::as_slice);
        for (i, entry) in entries.unwrap_or_default().iter().enumerate() {
            let id = entry_id(entry);
            let uploaded = req.files.iter().any(|f| f.index.is_some() && f.index == id);
            let existing = id.is_some_and(|id| self.cdn.files.contains_key(&id));
            if !uploaded && !existing {
                let error =
                    json!({"code": "ATTACHMENT_NOT_FOUND", "message": "Attachment data not found"});
                let errors = json!({"attachments": {i.to_string(): {"_errors": [error]}}});
                let body = json!({"message": "Invalid Form Body", "code": 50035, "errors": errors});
                return Some(Reply::json(400, body));
            }
        }
        None
    }

    /// Stores the request's uploaded files as attachments in `channel` (named and described by
    /// their `attachments` entries, as Discord matches `files[n]` to the entry with id `n`), and
    /// returns their REST objects.
    pub(super) fn store_uploads(&mut self, channel: u64, req: &Incoming) -> Vec<Value> {
        let entries = req.body["attachments"].as_array().map(Vec::as_slice);
        let entries = entries.unwrap_or_default();
        let mut objects = Vec::new();
        for part in &req.files {
            let entry = entries
                .iter()
                .find(|e| part.index.is_some() && entry_id(e) == part.index);
            let text = |field: &str| entry.and_then(|e| e[field].as_str()).map(str::to_owned);
            let (width, height) = image_size(&part.bytes).unzip();
            let id = self.next_id();
            let stored = CdnFile {
                channel,
                filename: text("filename").unwrap_or_else(|| part.filename.clone()),
                content_type: part.content_type.clone(),
                description: text("description"),
                bytes: part.bytes.clone(),
                sha256: part.sha256.clone(),
                width,
                height,
            };
            self.cdn.files.insert(id, stored);
            let base = self.base_url();
            objects.extend(self.cdn.attachment_json(&base, id));
        }
        objects
    }

    /// An edit's attachments: with an `attachments` array, the existing ones it lists stay and
    /// the others are deleted, and uploaded files are added; without one, nothing changes (as on
    /// Discord, where `content` alone leaves the files alone).
    pub(super) fn edit_attachments(&mut self, channel: u64, message: u64, req: &Incoming) {
        let Some(current) = self
            .find(channel, message)
            .map(|m| m.raw["attachments"].clone())
        else {
            return;
        };
        if req.body["attachments"].is_null() && req.files.is_empty() {
            return;
        }
        let listed: Vec<u64> = (req.body["attachments"].as_array().into_iter().flatten())
            .filter_map(entry_id)
            .collect();
        let mut kept = Vec::new();
        for a in current.as_array().into_iter().flatten() {
            let id = super::id_field(&a["id"]);
            if req.body["attachments"].is_null() || listed.contains(&id) {
                kept.push(a.clone());
            } else {
                self.cdn.files.remove(&id);
            }
        }
        kept.extend(self.store_uploads(channel, req));
        let log = self.messages.get_mut(&channel);
        if let Some(stored) = log.and_then(|log| log.iter_mut().find(|m| m.id == message)) {
            stored.raw["attachments"] = Value::Array(kept);
        }
    }

    /// How many attachments an edit keeps, for [`Self::check_uploads`].
    pub(super) fn kept_by_edit(&self, channel: u64, message: u64, req: &Incoming) -> usize {
        let current = self.find(channel, message).map(|m| self.cdn.view(&m.raw));
        let current = current.unwrap_or_default();
        match req.body["attachments"].as_array() {
            None => current.len(),
            Some(listed) => {
                let listed: Vec<u64> = listed.iter().filter_map(entry_id).collect();
                current.iter().filter(|a| listed.contains(&a.id)).count()
            }
        }
    }

    /// `POST /attachments/refresh-urls`: a fresh URL for every attachment the fake still holds;
    /// a URL it cannot place comes back unchanged.
    pub(super) fn refresh_urls(&mut self, req: &Incoming) -> Reply {
        let Some(urls) = req.body["attachment_urls"].as_array() else {
            let message = "This field is required";
            return Reply::form_error("attachment_urls", "BASE_TYPE_REQUIRED", message);
        };
        let base = self.base_url();
        let refreshed: Vec<Value> = (urls.iter().filter_map(Value::as_str))
            .map(|original| {
                let fresh = attachment_id_in(original)
                    .and_then(|id| self.cdn.attachment_json(&base, id))
                    .map(|a| a["url"].clone());
                json!({"original": original, "refreshed": fresh.unwrap_or(json!(original))})
            })
            .collect();
        self.cdn.counts.url_refreshes += 1;
        Reply::json(200, json!({ "refreshed_urls": refreshed }))
    }
}

// ===================== HTTP =====================

/// `GET /stickers/{id}.{ext}`: a sticker's image, as Discord's media CDN serves it.
pub(super) async fn sticker(State(sh): State<Arc<Shared>>, uri: Uri) -> Response {
    let name = uri.path().rsplit('/').next().unwrap_or_default();
    let id = name.split('.').next().and_then(|id| id.parse::<u64>().ok());
    sh.mutate(
        |st| match id.and_then(|id| st.cdn.stickers.get(&id).cloned()) {
            Some(bytes) => {
                st.cdn.counts.cdn_downloads += 1;
                ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
            }
            None => {
                st.cdn.counts.cdn_refused += 1;
                StatusCode::NOT_FOUND.into_response()
            }
        },
    )
}

/// `GET /attachments/{channel}/{attachment}/{filename}` (and under `/proxy`, the media proxy).
pub(super) async fn cdn(
    State(sh): State<Arc<Shared>>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    let path = uri.path();
    let path = path.strip_prefix("/proxy").unwrap_or(path);
    let segs: Vec<String> = path.split('/').skip(1).map(super::percent_decode).collect();
    let query = query.unwrap_or_default();
    sh.mutate(|st| match segs.as_slice() {
        [kind, channel, id, filename] if kind == "attachments" => {
            st.cdn.serve(channel, id, filename, &query)
        }
        _ => {
            st.cdn.counts.cdn_refused += 1;
            StatusCode::NOT_FOUND.into_response()
        }
    })
}

/// One file part of a multipart request, with its digest taken once.
pub(super) struct FilePart {
    pub(super) field: String,
    /// `n` of a `files[n]` field: the id of its `attachments` entry.
    pub(super) index: Option<u64>,
    pub(super) filename: String,
    pub(super) content_type: Option<String>,
    pub(super) bytes: Bytes,
    pub(super) sha256: String,
}

impl FilePart {
    pub(super) fn record(&self) -> UploadedFile {
        UploadedFile {
            field: self.field.clone(),
            filename: self.filename.clone(),
            content_type: self.content_type.clone(),
            len: self.bytes.len(),
            sha256: self.sha256.clone(),
        }
    }
}

pub(super) fn is_multipart(headers: &HeaderMap) -> bool {
    let content_type = headers.get(header::CONTENT_TYPE);
    let content_type = content_type
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    content_type.starts_with("multipart/form-data")
}

/// Reads a multipart body as Discord takes it: `payload_json` is the JSON body, any other text
/// field a top-level string field, and every part with a filename an uploaded file.
pub(super) async fn read_multipart(request: HttpRequest) -> Result<(Value, Vec<FilePart>), Reply> {
    let malformed = || Reply::error(400, 50109, "The request body contains invalid JSON.");
    let too_large = |e: &axum::extract::multipart::MultipartError| {
        (e.status() == StatusCode::PAYLOAD_TOO_LARGE).then(Reply::entity_too_large)
    };
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|_| malformed())?;
    let mut body = json!({});
    let mut files = Vec::new();
    loop {
        let field = form.next_field().await;
        let field = field.map_err(|e| too_large(&e).unwrap_or_else(malformed))?;
        let Some(field) = field else {
            break;
        };
        let name = field.name().unwrap_or_default().to_owned();
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let bytes = field.bytes().await;
        let bytes = bytes.map_err(|e| too_large(&e).unwrap_or_else(malformed))?;
        match filename {
            Some(filename) => files.push(FilePart {
                index: files_index(&name),
                field: name,
                filename,
                content_type,
                sha256: sha256_hex(&bytes),
                bytes,
            }),
            None if name == "payload_json" => {
                let payload: Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
                let Value::Object(fields) = payload else {
                    return Err(malformed());
                };
                body.as_object_mut().expect("an object").extend(fields);
            }
            None => body[name] = json!(String::from_utf8_lossy(&bytes)),
        }
    }
    Ok((body, files))
}

// ===================== small helpers =====================

/// `/attachments/{channel}/{id}/{filename}` with the filename percent-encoded as a URL path
/// segment.
fn url_path(channel: u64, id: u64, filename: &str) -> String {
    let mut url = url::Url::parse("http://x/").expect("a valid base");
    url.path_segments_mut().expect("a base URL").extend([
        "attachments",
        &channel.to_string(),
        &id.to_string(),
        filename,
    ]);
    url.path().to_owned()
}

/// The attachment id in a CDN URL of any host (the fake's, or `cdn.discordapp.com`).
fn attachment_id_in(url: &str) -> Option<u64> {
    let path = url::Url::parse(url).ok()?;
    let segs: Vec<&str> = path.path_segments()?.collect();
    let at = segs.iter().position(|s| *s == "attachments")?;
    segs.get(at + 2)?.parse().ok()
}

/// The id of an `attachments` entry, which clients send as a number or a string.
fn entry_id(entry: &Value) -> Option<u64> {
    let id = &entry["id"];
    id.as_u64()
        .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
}

/// `n` of a `files[n]` form field.
fn files_index(field: &str) -> Option<u64> {
    let n = field.strip_prefix("files[")?.strip_suffix(']')?;
    n.parse().ok()
}

/// Width and height of a PNG or GIF from its header, as Discord reports them for images; other
/// formats get none (enough for tests, which upload small PNGs).
fn image_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let le = |at: usize| {
        Some(u32::from(u16::from_le_bytes(
            bytes.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some((be(16)?, be(20)?));
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some((le(6)?, le(8)?));
    }
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

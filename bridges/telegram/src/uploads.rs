//! Telegram's upload primitive for the relay engine (SPEC section 5, "Media"): a message's files
//! as `sendPhoto` / `sendVideo` / `sendAudio` / `sendVoice` / `sendDocument`, several as
//! `sendMediaGroup` (photos and videos together, audio together, documents together, as Telegram
//! groups them), the text as the first file's caption when it fits in 1024 characters; and what
//! Telegram's files may be (its limits), and where a person's file is read from when its media
//! link is opened ([`TelegramFiles`]).

use std::future::Future;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use hub_bridge_sdk::media::{Download, FileRef, MediaSource, SourceError};
use hub_bridge_sdk::outbox::SendError;
use hub_bridge_sdk::relay::{MediaLimits, PartId, Place, Upload};
use teloxide::net::Download as _;
use teloxide::prelude::*;
use teloxide::types::{
    FileId, InputFile, InputMedia, InputMediaAudio, InputMediaDocument, InputMediaPhoto,
    InputMediaVideo, MessageId, ParseMode, ReplyParameters,
};
use teloxide::{ApiError, RequestError};

use crate::connector::{chat_id, message_id, topic, Telegram, TelegramPart};
use crate::errors::is_form_error;
use crate::render;

/// Telegram's limits on bots' uploads (PLATFORMS.md): files of 50 MB, photos of 10 MB, ten files
/// in an album.
pub const LIMITS: MediaLimits = MediaLimits {
    max_file_bytes: 50 * 1000 * 1000,
    max_image_bytes: 10 * 1000 * 1000,
    files_per_message: 10,
};

/// The longest caption, in characters after entity parsing.
pub const CAPTION_LIMIT: usize = 1024;

/// A caption as one request sends it: the part's HTML, or its plain twin.
#[derive(Debug, Clone)]
struct Caption {
    text: String,
    html: bool,
}

impl Caption {
    fn html(part: &render::Part) -> Self {
        Self {
            text: part.html.clone(),
            html: true,
        }
    }

    fn plain(part: &render::Part) -> Self {
        Self {
            text: part.plain.clone(),
            html: false,
        }
    }
}

/// How Telegram shows a file, which decides the method and what it may be grouped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Photo,
    Video,
    Audio,
    Voice,
    Document,
}

impl Shown {
    fn of(upload: &Upload) -> Self {
        let mime = upload.content_type.as_deref().unwrap_or_default();
        if upload.as_image && mime != "image/gif" && mime != "image/webp" {
            Self::Photo
        } else if mime == "video/mp4" {
            Self::Video
        } else if mime == "audio/ogg"
            || upload.name.ends_with(".ogg")
            || upload.name.ends_with(".oga")
        {
            Self::Voice
        } else if mime.starts_with("audio/") {
            Self::Audio
        } else {
            Self::Document
        }
    }

    /// Files of one album: photos and videos mix; audio (voice notes too) and documents only
    /// among their own.
    fn album(self) -> u8 {
        match self {
            Self::Photo | Self::Video => 0,
            Self::Audio | Self::Voice => 1,
            Self::Document => 2,
        }
    }
}

impl Telegram {
    /// Uploads `files` as one message per album (see the module), the first answering
    /// `reply_to` and carrying `caption` when it fits; says whether it did.
    pub(crate) async fn upload_files(
        &self,
        place: &Place,
        files: &[Upload],
        caption: Option<&TelegramPart>,
        reply_to: Option<&PartId>,
        shown: &mut Vec<PartId>,
    ) -> Result<bool, SendError> {
        let chat = chat_id(&place.chat)?;
        let reply_to = reply_to.map(message_id).transpose()?;
        let caption = caption
            .map(|part| &part.part)
            .filter(|part| render::visible_len(&part.html) <= CAPTION_LIMIT);
        let mut albums: Vec<Vec<(&Upload, Shown)>> = Vec::new();
        for upload in files {
            let shown_as = Shown::of(upload);
            match albums
                .iter_mut()
                .find(|album| album[0].1.album() == shown_as.album())
            {
                Some(album) => album.push((upload, shown_as)),
                None => albums.push(vec![(upload, shown_as)]),
            }
        }
        for (index, album) in albums.iter().enumerate() {
            let first = index == 0;
            let caption = caption.filter(|_| first);
            let reply_to = reply_to.filter(|_| first);
            let ids = match album.as_slice() {
                [(upload, shown_as)] => {
                    self.send_one(chat, place, upload, *shown_as, caption, reply_to)
                        .await?
                }
                _ => {
                    self.send_album(chat, place, album, caption, reply_to)
                        .await?
                }
            };
            shown.extend(ids);
        }
        Ok(caption.is_some())
    }

    /// One file, captioned.
    async fn send_one(
        &self,
        chat: i64,
        place: &Place,
        upload: &Upload,
        shown_as: Shown,
        caption: Option<&render::Part>,
        reply_to: Option<MessageId>,
    ) -> Result<Vec<PartId>, SendError> {
        let message = self
            .with_caption(caption, |caption| {
                self.send_file(chat, place, upload, shown_as, caption, reply_to)
            })
            .await?;
        Ok(vec![PartId(message.id.0.to_string())])
    }

    /// Sends with the caption's HTML and, when Telegram refuses that HTML for its form, once more
    /// with its plain twin (as a text part falls back, and counted the same way).
    async fn with_caption<T, Sent>(
        &self,
        caption: Option<&render::Part>,
        send: impl Fn(Option<Caption>) -> Sent,
    ) -> Result<T, SendError>
    where
        Sent: Future<Output = Result<Result<T, RequestError>, SendError>>,
    {
        let first = send(caption.map(Caption::html)).await?;
        let sent = match (first, caption) {
            (Err(error), Some(caption)) if is_form_error(&error) => {
                self.count_plain_fallback(&error);
                send(Some(Caption::plain(caption))).await?
            }
            (other, _) => other,
        };
        sent.map_err(|error| self.classify(&error))
    }

    /// One request for one file; the outer error is the bridge stopping while it waited.
    async fn send_file(
        &self,
        chat: i64,
        place: &Place,
        upload: &Upload,
        shown_as: Shown,
        caption: Option<Caption>,
        reply_to: Option<MessageId>,
    ) -> Result<Result<Message, RequestError>, SendError> {
        let file = input_file(upload);
        let target = ChatId(chat);
        let thread = topic(place);
        let reply = reply_to.map(|id| ReplyParameters::new(id).allow_sending_without_reply());
        // Each method has its own request type; the same settings go on each.
        macro_rules! send {
            ($request:expr) => {{
                let mut request = $request;
                if let Some(caption) = caption.clone() {
                    request = request.caption(caption.text);
                    if caption.html {
                        request = request.parse_mode(ParseMode::Html);
                    }
                }
                if let Some(reply) = reply.clone() {
                    request = request.reply_parameters(reply);
                }
                if let Some(thread) = thread {
                    request = request.message_thread_id(thread);
                }
                self.paced(chat, |_| request).await
            }};
        }
        match shown_as {
            Shown::Photo => send!(self.bot.send_photo(target, file)),
            Shown::Video => send!(self.bot.send_video(target, file)),
            Shown::Audio => send!(self.bot.send_audio(target, file)),
            Shown::Voice => send!(self.bot.send_voice(target, file)),
            Shown::Document => send!(self.bot.send_document(target, file)),
        }
    }

    /// Several files as one album, the caption on the first.
    async fn send_album(
        &self,
        chat: i64,
        place: &Place,
        album: &[(&Upload, Shown)],
        caption: Option<&render::Part>,
        reply_to: Option<MessageId>,
    ) -> Result<Vec<PartId>, SendError> {
        let media = |caption: Option<Caption>| -> Vec<InputMedia> {
            album
                .iter()
                .enumerate()
                .map(|(index, (upload, shown_as))| {
                    input_media(upload, *shown_as, caption.clone().filter(|_| index == 0))
                })
                .collect()
        };
        let send = |media: Vec<InputMedia>| {
            let mut request = self.bot.send_media_group(ChatId(chat), media);
            if let Some(id) = reply_to {
                request = request
                    .reply_parameters(ReplyParameters::new(id).allow_sending_without_reply());
            }
            if let Some(thread) = topic(place) {
                request = request.message_thread_id(thread);
            }
            request
        };
        let messages = self
            .with_caption(caption, |caption| {
                let media = media(caption);
                self.paced(chat, |_| send(media))
            })
            .await?;
        Ok(messages
            .iter()
            .map(|message| PartId(message.id.0.to_string()))
            .collect())
    }
}

fn input_file(upload: &Upload) -> InputFile {
    // Cloning `Bytes` shares the buffer: the file is in memory once however often it is sent.
    InputFile::memory(upload.bytes.clone()).file_name(upload.name.clone())
}

fn input_media(upload: &Upload, shown_as: Shown, caption: Option<Caption>) -> InputMedia {
    let file = input_file(upload);
    macro_rules! captioned {
        ($media:expr) => {{
            let mut media = $media;
            if let Some(caption) = caption {
                media = media.caption(caption.text);
                if caption.html {
                    media = media.parse_mode(ParseMode::Html);
                }
            }
            media
        }};
    }
    match shown_as {
        Shown::Photo => InputMedia::Photo(captioned!(InputMediaPhoto::new(file))),
        Shown::Video => InputMedia::Video(captioned!(InputMediaVideo::new(file))),
        Shown::Audio | Shown::Voice => InputMedia::Audio(captioned!(InputMediaAudio::new(file))),
        Shown::Document => InputMedia::Document(captioned!(InputMediaDocument::new(file))),
    }
}

/// Where Telegram files are read when a media link to one is opened: `getFile`, then the download
/// inside the service (its URL embeds the token, so it is never handed out).
pub struct TelegramFiles {
    pub bot: Bot,
}

impl MediaSource for TelegramFiles {
    fn open<'a>(&'a self, file: &'a FileRef) -> BoxFuture<'a, Result<Download, SourceError>> {
        Box::pin(async move {
            let FileRef::Telegram { file_id } = file else {
                return Err(SourceError::Gone);
            };
            let found = self
                .bot
                .get_file(FileId(file_id.clone()))
                .await
                .map_err(|error| match error {
                    RequestError::Api(ApiError::FileIdInvalid) => SourceError::Gone,
                    RequestError::Api(ApiError::Unknown(text))
                        if text.contains("file is too big") =>
                    {
                        SourceError::Unavailable(
                            "the Bot API serves bots files up to 20 MB".to_owned(),
                        )
                    }
                    // `hide_token` already took the token out of teloxide's errors.
                    other => SourceError::Unavailable(other.to_string()),
                })?;
            let body = self
                .bot
                .download_file_stream(&found.path)
                .map_err(|error| std::io::Error::other(error.without_url().to_string()));
            Ok(Download {
                content_type: content_type(&found.path),
                length: Some(u64::from(found.meta.size))
                    .filter(|size| *size != u64::from(u32::MAX)),
                body: body.map_ok(Bytes::from).boxed(),
            })
        })
    }
}

/// The type of a Telegram file by the extension of its path (`photos/file_3.jpg`): the download
/// server does not say.
fn content_type(path: &str) -> Option<String> {
    mime_guess::from_path(path)
        .first()
        .map(|mime| mime.essence_str().to_owned())
}

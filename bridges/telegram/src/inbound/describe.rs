//! Who a Telegram message is from and what it holds, in the hub's terms: the speaker (a person,
//! or a chat speaking for itself), their name, reaction emoji, and the content of a message with
//! its attachments described.

use hub_bridge_sdk::event::ContentBlock;
use hub_bridge_sdk::media::{human_size, FileRef};
use hub_bridge_sdk::relay::SharedFile;
use hub_bridge_sdk::ExternalId;
use teloxide::types::{FileMeta, Message, ReactionType, User};

/// Telegram's stand-in sender of messages that anonymous group admins write (as the group).
const GROUP_ANONYMOUS_BOT: u64 = 1_087_968_824;

/// Who a group message is from, as the hub sees them.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Speaker {
    pub id: ExternalId,
    /// The name the hub shows.
    pub name: String,
    /// The name the bridge addresses them with.
    pub short_name: String,
}

impl Speaker {
    /// A person, or a chat speaking for itself: an anonymous admin (whom Telegram shows as the
    /// group, `from` being the GroupAnonymousBot) or a channel posting in the group. A chat is
    /// never a person: its id is the chat's (negative) id, so it cannot be merged with a user,
    /// and each admin's signature (`author_signature`, when the group shows them) makes an
    /// identity of its own, stable across messages.
    pub(super) fn of(message: &Message, from: &User) -> Self {
        let sender_chat = message
            .sender_chat
            .as_ref()
            .or((from.id.0 == GROUP_ANONYMOUS_BOT).then_some(&message.chat));
        let Some(chat) = sender_chat else {
            return Self {
                id: ExternalId::new(crate::PLATFORM, from.id.0.to_string()),
                name: display_name(from),
                short_name: from.first_name.clone(),
            };
        };
        let title = chat.title().unwrap_or("anonymous admin").to_owned();
        match message.author_signature().filter(|s| !s.trim().is_empty()) {
            Some(signature) => Self {
                id: ExternalId::new(
                    crate::PLATFORM,
                    format!("{}_{:016x}", chat.id.0, fnv1a(signature)),
                ),
                name: format!("{signature} ({title})"),
                short_name: signature.to_owned(),
            },
            None => Self {
                id: ExternalId::new(crate::PLATFORM, chat.id.0.to_string()),
                name: title.clone(),
                short_name: title,
            },
        }
    }
}

/// FNV-1a, 64 bits: a hash that never changes between builds or versions, so that an admin's
/// signature maps to the same id forever.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `First Last (@username)`: how a person is named in the hub.
pub fn display_name(user: &User) -> String {
    let mut name = user.first_name.clone();
    if let Some(last) = user.last_name.as_deref().filter(|l| !l.is_empty()) {
        name.push(' ');
        name.push_str(last);
    }
    if let Some(username) = user.username.as_deref() {
        name.push_str(&format!(" (@{username})"));
    }
    name
}

pub(super) fn emojis(reactions: &[ReactionType]) -> Vec<String> {
    reactions
        .iter()
        .filter_map(|reaction| match reaction {
            ReactionType::Emoji { emoji } => Some(emoji.clone()),
            ReactionType::CustomEmoji { custom_emoji_id } => {
                Some(format!("custom:{}", custom_emoji_id.0))
            }
            ReactionType::Paid => None,
        })
        .collect()
}

/// What a message says: its text (a media message's caption), and its file with how the hub
/// describes it. The block carries no URL here: the relay engine adds a media link, since a
/// Telegram file URL would embed the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    pub content: String,
    pub files: Vec<SharedFile>,
    /// What the file is, in words (`[photo]`), for where only text goes: a direct message to an
    /// agent.
    pub label: Option<String>,
}

impl Described {
    /// The text with the file named, for text-only destinations.
    pub fn as_text(&self) -> String {
        match (&self.label, self.content.is_empty()) {
            (Some(label), true) => label.clone(),
            (Some(label), false) => format!("{label} {}", self.content),
            (None, _) => self.content.clone(),
        }
    }
}

/// The hub content of a message; `None` for a message with neither text nor a file the hub
/// takes (a poll, a location, a service message).
pub fn describe(message: &Message) -> Option<Described> {
    if let Some(text) = message.text() {
        return Some(Described {
            content: text.to_owned(),
            files: Vec::new(),
            label: None,
        });
    }
    let (label, file) = attachment(message)?;
    Some(Described {
        content: message.caption().unwrap_or_default().to_owned(),
        files: vec![file],
        label: Some(label),
    })
}

/// The label and the file of a message's attachment, by kind: a photo (its largest size) and a
/// still sticker are images, everything else a file with its MIME type.
fn attachment(message: &Message) -> Option<(String, SharedFile)> {
    if let Some(sizes) = message.photo() {
        let largest = sizes.iter().max_by_key(|size| size.width * size.height)?;
        let mut file = file(
            ContentBlock::IMAGE,
            "photo.jpg",
            &largest.file,
            Some("image/jpeg"),
        );
        file.block.width = Some(largest.width);
        file.block.height = Some(largest.height);
        return Some(("[photo]".to_owned(), file));
    }
    if let Some(sticker) = message.sticker() {
        let label = match sticker.emoji.as_deref().unwrap_or_default() {
            "" => "[sticker]".to_owned(),
            emoji => format!("[sticker {emoji}]"),
        };
        let name = sticker.set_name.as_deref().unwrap_or("sticker");
        let file = if sticker.flags.is_animated {
            file(
                ContentBlock::FILE,
                &format!("{name}.tgs"),
                &sticker.file,
                Some("application/x-tgsticker"),
            )
        } else if sticker.flags.is_video {
            file(
                ContentBlock::FILE,
                &format!("{name}.webm"),
                &sticker.file,
                Some("video/webm"),
            )
        } else {
            let mut still = file(
                ContentBlock::IMAGE,
                &format!("{name}.webp"),
                &sticker.file,
                Some("image/webp"),
            );
            still.block.width = Some(u32::from(sticker.width));
            still.block.height = Some(u32::from(sticker.height));
            still
        };
        return Some((label, file));
    }
    if let Some(voice) = message.voice() {
        let mime = voice.mime_type.as_ref().map(ToString::to_string);
        let label = format!("[voice message, {} s]", voice.duration.seconds());
        let mime = mime.as_deref().or(Some("audio/ogg"));
        return Some((
            label,
            file(ContentBlock::FILE, "voice.ogg", &voice.file, mime),
        ));
    }
    if let Some(audio) = message.audio() {
        let name = audio
            .file_name
            .as_deref()
            .or(audio.title.as_deref())
            .unwrap_or("audio");
        let mime = audio.mime_type.as_ref().map(ToString::to_string);
        let label = format!("[audio: {name}]");
        return Some((
            label,
            file(ContentBlock::FILE, name, &audio.file, mime.as_deref()),
        ));
    }
    if let Some(video) = message.video() {
        let name = video.file_name.as_deref().unwrap_or("video.mp4");
        let mime = video.mime_type.as_ref().map(ToString::to_string);
        let mime = mime.as_deref().or(Some("video/mp4"));
        return Some((
            "[video]".to_owned(),
            file(ContentBlock::FILE, name, &video.file, mime),
        ));
    }
    if let Some(animation) = message.animation() {
        let name = animation.file_name.as_deref().unwrap_or("animation.mp4");
        let mime = animation.mime_type.as_ref().map(ToString::to_string);
        let mime = mime.as_deref().or(Some("video/mp4"));
        return Some((
            "[GIF]".to_owned(),
            file(ContentBlock::FILE, name, &animation.file, mime),
        ));
    }
    if let Some(note) = message.video_note() {
        let label = format!("[video message, {} s]", note.duration.seconds());
        let file = file(
            ContentBlock::FILE,
            "video_note.mp4",
            &note.file,
            Some("video/mp4"),
        );
        return Some((label, file));
    }
    let document = message.document()?;
    let name = document.file_name.as_deref().unwrap_or("file");
    let mime = document.mime_type.as_ref().map(ToString::to_string);
    let label = format!(
        "[file: {name}, {}]",
        human_size(u64::from(document.file.size))
    );
    Some((
        label,
        file(ContentBlock::FILE, name, &document.file, mime.as_deref()),
    ))
}

fn file(kind: &str, name: &str, meta: &FileMeta, mime: Option<&str>) -> SharedFile {
    let block = ContentBlock {
        kind: kind.to_owned(),
        name: Some(name.to_owned()),
        // teloxide fills in u32::MAX when Telegram leaves the size out.
        size: (meta.size != u32::MAX).then_some(u64::from(meta.size)),
        mime_type: mime.map(str::to_owned),
        ..ContentBlock::default()
    };
    SharedFile {
        block,
        file: Some(FileRef::Telegram {
            file_id: meta.id.0.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_are_named_with_their_username() {
        let user: User = serde_json::from_str(
            r#"{"id":1,"is_bot":false,"first_name":"Alice","last_name":"Liddell","username":"alice"}"#,
        )
        .unwrap();
        assert_eq!(display_name(&user), "Alice Liddell (@alice)");
        let user: User =
            serde_json::from_str(r#"{"id":1,"is_bot":false,"first_name":"Bob"}"#).unwrap();
        assert_eq!(display_name(&user), "Bob");
    }

    fn group_message(extra: &str) -> (Message, User) {
        let json = format!(
            r#"{{"message_id":7,"date":1700000000,"text":"hi",
                "chat":{{"id":-100123,"type":"supergroup","title":"Ops Room"}},
                "from":{{"id":1087968824,"is_bot":true,"first_name":"Group","username":"GroupAnonymousBot"}}
                {extra}}}"#
        );
        let message: Message = serde_json::from_str(&json).expect("a message");
        let from = message.from.clone().expect("from");
        (message, from)
    }

    #[test]
    fn anonymous_admins_are_the_chat_or_their_signature_never_one_person() {
        let group = r#","sender_chat":{"id":-100123,"type":"supergroup","title":"Ops Room"}"#;
        let (message, from) = group_message(group);
        let plain = Speaker::of(&message, &from);
        assert_eq!(plain.id.to_string(), "external:telegram:-100123");
        assert_eq!(plain.name, "Ops Room");

        let (message, from) = group_message(&format!(r#"{group},"author_signature":"Ann""#));
        let ann = Speaker::of(&message, &from);
        let (message, from) = group_message(&format!(r#"{group},"author_signature":"Bob""#));
        let bob = Speaker::of(&message, &from);
        assert_eq!(ann.name, "Ann (Ops Room)");
        assert_ne!(ann.id, bob.id);
        assert_ne!(ann.id, plain.id);
        // Stable: the same signature is the same identity every time.
        let (message, from) = group_message(&format!(r#"{group},"author_signature":"Ann""#));
        assert_eq!(Speaker::of(&message, &from), ann);
        assert!(ann.id.to_string().starts_with("external:telegram:-100123_"));

        // Without `sender_chat`, the GroupAnonymousBot still speaks for the group, not as a user.
        let (message, from) = group_message("");
        assert_eq!(
            Speaker::of(&message, &from).id.to_string(),
            "external:telegram:-100123"
        );

        // A person is a person.
        let json = r#"{"message_id":8,"date":1700000000,"text":"hi",
            "chat":{"id":-100123,"type":"supergroup","title":"Ops Room"},
            "from":{"id":42,"is_bot":false,"first_name":"Alice"}}"#;
        let message: Message = serde_json::from_str(json).expect("a message");
        let from = message.from.clone().expect("from");
        let alice = Speaker::of(&message, &from);
        assert_eq!(alice.id.to_string(), "external:telegram:42");
        assert_eq!(alice.name, "Alice");
    }
}

//! Who a Telegram message is from and what it holds, in the hub's terms: the speaker (a person,
//! or a chat speaking for itself), their name, reaction emoji, and the content of a message with
//! its attachments described.

use hub_bridge_sdk::event::ContentBlock;
use hub_bridge_sdk::ExternalId;
use teloxide::types::{FileMeta, Message, ReactionType, User};

use crate::render::human_size;

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

/// The hub content of a message and its attachments: the text, or what the media is (with the
/// caption). Attachments carry name, size and type, never a file URL (it would embed the token).
pub fn describe(message: &Message) -> Option<(String, Vec<ContentBlock>)> {
    if let Some(text) = message.text() {
        return Some((text.to_owned(), Vec::new()));
    }
    let (label, block) = attachment(message)?;
    let content = match message.caption() {
        Some(caption) if !caption.is_empty() => format!("{label} {caption}"),
        _ => label,
    };
    Some((content, vec![block]))
}

/// The label and the block of a message's attachment, by kind.
fn attachment(message: &Message) -> Option<(String, ContentBlock)> {
    if let Some(sizes) = message.photo() {
        let largest = sizes.iter().max_by_key(|size| size.width * size.height)?;
        let block = block("image", "photo.jpg", &largest.file, Some("image/jpeg"));
        return Some(("[photo]".to_owned(), block));
    }
    if let Some(sticker) = message.sticker() {
        let mime = if sticker.flags.is_animated {
            "application/x-tgsticker"
        } else if sticker.flags.is_video {
            "video/webm"
        } else {
            "image/webp"
        };
        let label = match sticker.emoji.as_deref().unwrap_or_default() {
            "" => "[sticker]".to_owned(),
            emoji => format!("[sticker {emoji}]"),
        };
        let name = sticker.set_name.as_deref().unwrap_or("sticker");
        return Some((label, block("sticker", name, &sticker.file, Some(mime))));
    }
    if let Some(voice) = message.voice() {
        let mime = voice.mime_type.as_ref().map(ToString::to_string);
        let label = format!("[voice message, {} s]", voice.duration.seconds());
        return Some((
            label,
            block("audio", "voice.ogg", &voice.file, mime.as_deref()),
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
        return Some((label, block("audio", name, &audio.file, mime.as_deref())));
    }
    if let Some(video) = message.video() {
        let name = video.file_name.as_deref().unwrap_or("video.mp4");
        let mime = video.mime_type.as_ref().map(ToString::to_string);
        let block = block("video", name, &video.file, mime.as_deref());
        return Some(("[video]".to_owned(), block));
    }
    if let Some(animation) = message.animation() {
        let name = animation.file_name.as_deref().unwrap_or("animation.mp4");
        let mime = animation.mime_type.as_ref().map(ToString::to_string);
        let block = block("video", name, &animation.file, mime.as_deref());
        return Some(("[GIF]".to_owned(), block));
    }
    if let Some(note) = message.video_note() {
        let label = format!("[video message, {} s]", note.duration.seconds());
        return Some((label, block("video", "video_note.mp4", &note.file, None)));
    }
    let document = message.document()?;
    let name = document.file_name.as_deref().unwrap_or("file");
    let mime = document.mime_type.as_ref().map(ToString::to_string);
    let label = format!(
        "[file: {name}, {}]",
        human_size(u64::from(document.file.size))
    );
    Some((label, block("file", name, &document.file, mime.as_deref())))
}

fn block(kind: &str, name: &str, file: &FileMeta, mime: Option<&str>) -> ContentBlock {
    ContentBlock {
        kind: kind.to_owned(),
        name: Some(name.to_owned()),
        // teloxide fills in u32::MAX when Telegram leaves the size out.
        size: (file.size != u32::MAX).then_some(u64::from(file.size)),
        mime_type: mime.map(str::to_owned),
        url: None,
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

//! Reaction emoji as the hub's untrusted payloads carry them, validated before a bridge puts one
//! into a platform request (SPEC section 9: a reaction "emoji" holding a path is refused).
//!
//! [`Emoji::parse`] accepts exactly two shapes:
//! - one Unicode emoji: a single pictographic character with its modifiers (variation selector
//!   16, skin tones, tag sequences such as the flag of Scotland), a flag (two regional
//!   indicators), a keycap (`0`-`9` or `*` with U+20E3), or several of those joined with
//!   zero-width joiners (👩‍💻, 👨‍👩‍👧‍👦), at most [`MAX_CODE_POINTS`] code points;
//! - a Discord custom emoji `name:id`: name `[A-Za-z0-9_]{2,32}`, id a non-zero `u64`.
//!
//! Everything else is refused: text, whitespace, several emoji in a row, and in particular any
//! `/`, `#`, `?` or `%`, so an accepted value can never change the shape of a URL. (The keycap
//! `#️⃣` is refused for that reason: its base is the ASCII `#`.) Still, callers encode the value
//! as a path segment; validation and encoding are two separate defences.
//!
//! The check is a small hand-written table of code-point ranges (the blocks Unicode's
//! `Extended_Pictographic` property covers) instead of a crate: the table changes rarely, and a
//! too-new emoji being refused is an honest, counted outcome, while the crates that know every
//! emoji by name (`emojis`, `unic-emoji-char`) would add a large data table for no safety gain.

use std::fmt;
use std::num::NonZeroU64;

/// The most code points one accepted Unicode emoji may have (the longest standard sequences,
/// kiss or couple with two skin tones, have 10).
pub const MAX_CODE_POINTS: usize = 16;

/// A validated reaction emoji.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Emoji {
    /// One Unicode emoji, as given.
    Unicode(String),
    /// A Discord custom emoji.
    Custom { name: String, id: NonZeroU64 },
}

/// Why a string is not an [`Emoji`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmojiError {
    #[error("the emoji is empty")]
    Empty,
    #[error("the emoji is longer than {MAX_CODE_POINTS} code points")]
    TooLong,
    #[error("`{0}` is neither one Unicode emoji nor a custom emoji `name:id`")]
    Invalid(String),
}

impl Emoji {
    /// Validates a reaction emoji from an untrusted source; see the module doc for what passes.
    pub fn parse(text: &str) -> Result<Self, EmojiError> {
        if text.is_empty() {
            return Err(EmojiError::Empty);
        }
        if text.chars().count() > MAX_CODE_POINTS.max(CUSTOM_MAX_CHARS) {
            return Err(EmojiError::TooLong);
        }
        if let Some(custom) = parse_custom(text) {
            return Ok(custom);
        }
        if text.chars().count() > MAX_CODE_POINTS {
            return Err(EmojiError::TooLong);
        }
        if is_unicode_emoji(text) {
            return Ok(Self::Unicode(text.to_owned()));
        }
        Err(EmojiError::Invalid(shorten(text)))
    }

    /// Whether it is a Discord custom emoji (other platforms cannot show those).
    pub fn is_custom(&self) -> bool {
        matches!(self, Self::Custom { .. })
    }
}

/// The emoji as platforms name it in requests: the Unicode text, or `name:id`.
impl fmt::Display for Emoji {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unicode(text) => f.write_str(text),
            Self::Custom { name, id } => write!(f, "{name}:{id}"),
        }
    }
}

/// `name` (2-32) + `:` + a u64 (at most 20 digits).
const CUSTOM_MAX_CHARS: usize = 32 + 1 + 20;

fn parse_custom(text: &str) -> Option<Emoji> {
    let (name, id) = text.split_once(':')?;
    let name_ok = (2..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    // `parse` alone would take a leading `+`.
    let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    if !name_ok || !id_ok {
        return None;
    }
    let id = id.parse::<u64>().ok().and_then(NonZeroU64::new)?;
    Some(Emoji::Custom {
        name: name.to_owned(),
        id,
    })
}

/// An error message must not carry a megabyte of attacker text.
fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(40).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

const ZWJ: char = '\u{200D}';
const VS16: char = '\u{FE0F}';
const VS15: char = '\u{FE0E}';
const KEYCAP: char = '\u{20E3}';
const CANCEL_TAG: char = '\u{E007F}';

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

fn is_skin_tone(c: char) -> bool {
    ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
}

fn is_tag(c: char) -> bool {
    ('\u{E0020}'..='\u{E007E}').contains(&c)
}

/// Characters that can start (or follow a joiner in) an emoji: the pictographic blocks, minus
/// the code points that only modify one.
fn is_pictographic(c: char) -> bool {
    if is_regional_indicator(c) || is_skin_tone(c) {
        return false;
    }
    matches!(c,
        '\u{00A9}' | '\u{00AE}' | '\u{203C}' | '\u{2049}' | '\u{2122}' | '\u{2139}'
        | '\u{2194}'..='\u{21FF}'
        | '\u{2300}'..='\u{23FF}'
        | '\u{24C2}'
        | '\u{25A0}'..='\u{25FF}'
        | '\u{2600}'..='\u{27BF}'
        | '\u{2900}'..='\u{297F}'
        | '\u{2B00}'..='\u{2BFF}'
        | '\u{3030}' | '\u{303D}' | '\u{3297}' | '\u{3299}'
        | '\u{1F000}'..='\u{1FAFF}'
    )
}

/// One emoji as the module doc describes it.
fn is_unicode_emoji(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    loop {
        let Some(next) = element(&chars, at) else {
            return false;
        };
        at = next;
        match chars.get(at) {
            None => return true,
            Some(&ZWJ) => at += 1,
            Some(_) => return false,
        }
    }
}

/// Reads one element (a pictograph with modifiers, a flag or a keycap) at `at`; where it ends.
fn element(chars: &[char], at: usize) -> Option<usize> {
    let first = *chars.get(at)?;
    if is_regional_indicator(first) {
        return chars
            .get(at + 1)
            .filter(|c| is_regional_indicator(**c))
            .map(|_| at + 2);
    }
    if first.is_ascii_digit() || first == '*' {
        let mut next = at + 1;
        if chars.get(next) == Some(&VS16) {
            next += 1;
        }
        return (chars.get(next) == Some(&KEYCAP)).then_some(next + 1);
    }
    if !is_pictographic(first) {
        return None;
    }
    let mut next = at + 1;
    if matches!(chars.get(next), Some(&VS16 | &VS15)) {
        next += 1;
    }
    if chars.get(next).copied().is_some_and(is_skin_tone) {
        next += 1;
    }
    // A tag sequence (subdivision flags) ends with CANCEL TAG.
    if chars.get(next).copied().is_some_and(is_tag) {
        while chars.get(next).copied().is_some_and(is_tag) {
            next += 1;
        }
        if chars.get(next) != Some(&CANCEL_TAG) {
            return None;
        }
        next += 1;
    }
    if chars.get(next) == Some(&VS16) {
        next += 1;
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unicode_emoji_pass() {
        for emoji in [
            "👍",
            "❤️",
            "❤",
            "👍🏽",
            "👩‍💻",
            "👨‍👩‍👧‍👦",
            "👩🏻‍🤝‍👨🏿",
            "🇫🇷",
            "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
            "1️⃣",
            "*️⃣",
            "🏳️‍🌈",
            "⭐",
            "☕",
            "🫠",
        ] {
            assert_eq!(
                Emoji::parse(emoji),
                Ok(Emoji::Unicode(emoji.to_owned())),
                "{emoji:?}"
            );
        }
    }

    #[test]
    fn custom_emoji_pass() {
        let emoji = Emoji::parse("party_parrot:1300000000000000001").expect("custom");
        assert!(emoji.is_custom());
        assert_eq!(emoji.to_string(), "party_parrot:1300000000000000001");
    }

    #[test]
    fn everything_else_is_refused() {
        for text in [
            "",
            "👍/../../../../../../channels/222#",
            "👍/",
            "👍#",
            "👍?",
            "%F0%9F%91%8D",
            "👍 ",
            " 👍",
            "👍👍",
            "🇫",
            "🇫🇷🇩",
            "thumbsup",
            ":party:",
            "x:1",
            "name:0",
            "name:",
            "name:+1",
            "name:99999999999999999999999",
            "na me:1",
            "#️⃣",
            "1",
            "👍\u{200D}",
            "\u{200D}👍",
            "🏽",
            "..",
            "a",
        ] {
            assert!(Emoji::parse(text).is_err(), "{text:?} was accepted");
        }
        assert_eq!(
            Emoji::parse(&"👍".repeat(40)),
            Err(EmojiError::TooLong),
            "over-long"
        );
        assert!(Emoji::parse(&format!("{}:1", "a".repeat(33))).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_and_accepted_values_are_url_safe(text in "\\PC{0,24}") {
            if let Ok(emoji) = Emoji::parse(&text) {
                let shown = emoji.to_string();
                prop_assert!(!shown.contains(['/', '#', '?', '%']));
                prop_assert!(!shown.contains(char::is_whitespace));
                prop_assert!(shown.chars().count() <= MAX_CODE_POINTS.max(CUSTOM_MAX_CHARS));
            }
        }

        #[test]
        fn mixes_of_emoji_parts_and_url_characters_never_pass_unsafe_text(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    '👍', '👩', '💻', '\u{200D}', '\u{FE0F}', '🏽', '🇫', '🇷', '1', '*', '#',
                    '\u{20E3}', '/', '?', '%', ' ', '.', ':', 'a', '_', '0',
                    '\u{E0067}', '\u{E007F}', '🏴',
                ]),
                0..12,
            )
        ) {
            let text: String = parts.into_iter().collect();
            if let Ok(emoji) = Emoji::parse(&text) {
                let shown = emoji.to_string();
                prop_assert_eq!(&shown, &text);
                prop_assert!(!shown.contains(['/', '#', '?', '%', '.']));
                prop_assert!(!shown.contains(char::is_whitespace));
            }
        }

        #[test]
        fn emoji_with_anything_appended_from_the_url_alphabet_is_refused(
            suffix in "[/#?% .a-z0-9]{1,12}"
        ) {
            let text = format!("👍{suffix}");
            prop_assert!(Emoji::parse(&text).is_err());
        }
    }
}

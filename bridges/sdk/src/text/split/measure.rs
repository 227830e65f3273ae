//! How a platform measures message length: the [`Unit`] it counts in, a fit check that stops at
//! the limit, and the cheap grapheme-cluster approximation that keeps emoji, flags and combining
//! accents whole when a cut has to fall inside a word.

use crate::text::utf16_len;

/// The unit in which a platform measures message length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// UTF-16 code units, as Telegram counts them (limit 4096).
    Utf16,
    /// Unicode scalar values (Rust `char`s), as Discord counts them (limit 2000).
    Chars,
}

impl Unit {
    /// Returns the length of `text` in this unit.
    pub fn measure(self, text: &str) -> usize {
        match self {
            Self::Utf16 => utf16_len(text),
            Self::Chars => text.chars().count(),
        }
    }

    pub(super) fn char_len(self, c: char) -> usize {
        match self {
            Self::Utf16 => c.len_utf16(),
            Self::Chars => 1,
        }
    }
}

/// Whether `text` is at most `limit` long, looking no further than the limit (the remaining
/// text can be far longer than one part).
pub(super) fn fits(text: &str, limit: usize, unit: Unit) -> bool {
    let mut total = 0;
    text.chars().all(|c| {
        total += unit.char_len(c);
        total <= limit
    })
}

pub(super) fn is_regional_indicator(c: char) -> bool {
    matches!(c, '\u{1F1E6}'..='\u{1F1FF}')
}

/// A cheap approximation of extended grapheme cluster boundaries, enough to keep emoji
/// sequences (zero-width joiner sequences, skin tones, keycaps, tag flags), flags and combining
/// accents whole. `regional_run` is how many regional indicators end just before `next`.
pub(super) fn is_grapheme_break(prev: char, next: char, regional_run: usize) -> bool {
    const ZWJ: char = '\u{200D}';
    let extends = matches!(
        next,
        '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FE20}'..='\u{FE2F}'
            | '\u{1F3FB}'..='\u{1F3FF}'
            | '\u{E0020}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
            | ZWJ
    );
    let flag_half =
        is_regional_indicator(prev) && is_regional_indicator(next) && regional_run % 2 == 1;
    !(extends || prev == ZWJ || flag_half || (prev == '\r' && next == '\n'))
}

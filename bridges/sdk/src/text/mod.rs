//! Text utilities shared by the bridges: measuring message length the way each platform counts
//! it, splitting long Markdown under a platform's limit without breaking code blocks, rendering
//! Markdown to Telegram HTML, and making agent names acceptable as Discord webhook usernames.
//! Everything here is a pure function over strings, so it is tested exhaustively next to the code.

pub mod discord;
pub mod markdown;
pub mod names;
#[cfg(test)]
mod props;
mod split;

pub use split::{cut_note, split, split_capped, split_rendered, Rendered, Unit};

/// Returns the length of `text` in UTF-16 code units, the unit in which Telegram measures
/// message length (a character outside the Basic Multilingual Plane, such as most emoji, counts
/// as two).
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_len_counts_surrogate_pairs_twice() {
        assert_eq!(utf16_len(""), 0);
        assert_eq!(utf16_len("abc"), 3);
        assert_eq!(utf16_len("😀"), 2);
        assert_eq!(utf16_len("日本語"), 3);
        assert_eq!(utf16_len("é"), 1);
        // A family emoji: three people (two units each) joined by two zero-width joiners.
        assert_eq!(utf16_len("👨\u{200d}👩\u{200d}👧"), 8);
        // A flag is two regional indicators, two units each.
        assert_eq!(utf16_len("🇫🇷"), 4);
    }
}

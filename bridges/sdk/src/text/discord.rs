//! Discord-specific text rules: turning an agent's display name into a username Discord
//! accepts for a webhook message. Mentions need no escaping here because every message is sent
//! with `allowed_mentions` that blocks pings.

/// The longest webhook username Discord accepts, in characters.
const MAX_USERNAME_CHARS: usize = 80;

/// The name used when nothing usable is left of the agent's name.
const FALLBACK_USERNAME: &str = "agent";

/// Substrings Discord rejects anywhere in a webhook username (compared case-insensitively), and
/// where to break them: a hyphen after that many characters keeps every letter readable
/// ("Disc-ord Helper", "Cly-de").
const FORBIDDEN_WORDS: [(&str, usize); 2] = [("discord", 4), ("clyde", 3)];

/// Makes `name` acceptable as a Discord webhook username, changing as little as possible.
///
/// Discord rejects names that contain "discord" or "clyde" in any case, `@`, `#`, `:` or
/// ```` ``` ````, that are exactly "everyone" or "here", or that are not 1 to 80 characters
/// long. So: the forbidden words get a hyphen inside ("disc-ord", "cly-de"); `@`, `#` and `:`
/// become their full-width look-alikes (`＠`, `＃`, `：`), which read the same; backticks become
/// apostrophes; control characters (such as line breaks) become spaces; surrounding whitespace
/// is trimmed; the result is cut to 80 characters; "everyone" and "here" get " (agent)"
/// appended; and an empty result becomes "agent".
pub fn sanitize_webhook_username(name: &str) -> String {
    let mut cleaned: String = name
        .chars()
        .map(|c| match c {
            '@' => '＠',
            '#' => '＃',
            ':' => '：',
            '`' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    for (word, break_at) in FORBIDDEN_WORDS {
        // ASCII lowercasing keeps byte offsets, so a match in the lowercase copy is a match at
        // the same offset in `cleaned`. Each round breaks one occurrence; overlapping ones
        // ("discordiscord") are found by the next round.
        while let Some(at) = cleaned.to_ascii_lowercase().find(word) {
            cleaned.insert(at + break_at, '-');
        }
    }
    let trimmed = cleaned.trim();
    let cut = trimmed
        .char_indices()
        .nth(MAX_USERNAME_CHARS)
        .map_or(trimmed, |(i, _)| &trimmed[..i])
        .trim_end();
    if cut.is_empty() {
        FALLBACK_USERNAME.to_owned()
    } else if cut.eq_ignore_ascii_case("everyone") || cut.eq_ignore_ascii_case("here") {
        format!("{cut} ({FALLBACK_USERNAME})")
    } else {
        cut.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_kept() {
        assert_eq!(
            sanitize_webhook_username("Research Bot 🤖"),
            "Research Bot 🤖"
        );
        assert_eq!(sanitize_webhook_username("  padded  "), "padded");
    }

    #[test]
    fn forbidden_words_are_broken_up() {
        assert_eq!(
            sanitize_webhook_username("Discord Helper"),
            "Disc-ord Helper"
        );
        assert_eq!(sanitize_webhook_username("myDISCORDbot"), "myDISC-ORDbot");
        assert_eq!(sanitize_webhook_username("clyde"), "cly-de");
        assert_eq!(
            sanitize_webhook_username("discordiscord"),
            "disc-ordisc-ord"
        );
        for name in ["discord", "ClYdE", "discordiscord", "xdiscordclydex"] {
            let clean = sanitize_webhook_username(name).to_lowercase();
            assert!(
                !clean.contains("discord") && !clean.contains("clyde"),
                "{clean}"
            );
        }
    }

    #[test]
    fn forbidden_characters_are_replaced() {
        assert_eq!(sanitize_webhook_username("bot@host"), "bot＠host");
        assert_eq!(
            sanitize_webhook_username("agent#3: lead"),
            "agent＃3： lead"
        );
        assert_eq!(sanitize_webhook_username("```name```"), "'''name'''");
        assert_eq!(sanitize_webhook_username("two\nlines"), "two lines");
    }

    #[test]
    fn reserved_names_get_a_suffix() {
        assert_eq!(sanitize_webhook_username("everyone"), "everyone (agent)");
        assert_eq!(sanitize_webhook_username(" Here "), "Here (agent)");
        assert_eq!(
            sanitize_webhook_username("here and there"),
            "here and there"
        );
    }

    #[test]
    fn length_is_limited_to_eighty_characters() {
        let long = "é".repeat(100);
        assert_eq!(sanitize_webhook_username(&long), "é".repeat(80));
        let spaced = format!("here{}x", " ".repeat(90));
        assert_eq!(sanitize_webhook_username(&spaced), "here (agent)");
        assert_eq!(sanitize_webhook_username(""), "agent");
        assert_eq!(sanitize_webhook_username(" \n\t "), "agent");
    }
}

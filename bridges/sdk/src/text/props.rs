//! Property tests of the text functions that see untrusted input (agents' Markdown): the
//! splitter and both renderers never panic, every part is within the platform's limit and shows
//! something, and no word of the input is lost (unless the message was cut, which the note says).

use proptest::prelude::*;

use super::markdown::{telegram_parts, to_telegram_html, visible_len, TELEGRAM_LIMIT};
use super::{split, split_capped, Unit};

/// Discord's limit, in characters.
const DISCORD_LIMIT: usize = 2000;

/// Markdown as language models (and attackers) write it: markers of every kind, fences, links,
/// raw HTML, long words, emoji and CJK. No `;` (so no HTML entity eats a word) and no `]:`
/// (a reference definition shows nothing by design).
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[a-z]{1,12}",
        1 => "[a-z]{200,3000}",
        1 => "[日本語中文字]{1,12}",
        1 => prop::sample::select(vec!["😀", "🚀", "👨\u{200d}👩\u{200d}👧", "🇫🇷", "é"]).prop_map(str::to_owned),
        2 => prop::sample::select(vec![
            "`", "```", "```rust", "~~~", "*", "**", "_", "__", "~~", "~", "|", "<", ">", "&",
            "[", "]", "(", ")", "#", "- ", "1. ", "> ", "---", "\\", "<b>", "</b>", "<div>",
            "<!--", "-->", "|---|", "![", "  ", "\t",
        ]).prop_map(str::to_owned),
        1 => "[a-z]{1,8}".prop_map(|w| format!("[{w}](https://e.com/{w})")),
        1 => "[a-z]{1,8}".prop_map(|w| format!("[{w}](ftp://{w} x)")),
        1 => "[a-z]{1,8}".prop_map(|w| format!("<https://{w}.org>")),
    ]
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![" ", " ", " ", "", "\n", "\n\n", "\n```\n", "\n    "])
}

fn markdown() -> impl Strategy<Value = String> {
    prop::collection::vec((token(), separator()), 0..150).prop_map(|pieces| {
        pieces
            .into_iter()
            .flat_map(|(token, sep)| [token, sep.to_owned()])
            .collect()
    })
}

/// The words of `text` that must survive: runs of letters (and CJK) of at most 100 characters;
/// longer ones are cut across parts by design.
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.chars().count() <= 100)
        .collect()
}

fn assert_words_kept(input: &str, output: &str) -> Result<(), TestCaseError> {
    if output.contains("(message cut: ") {
        return Ok(());
    }
    for word in words(input) {
        prop_assert!(output.contains(word), "{word:?} lost");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn splitting_keeps_limits_and_words(md in markdown(), max_parts in 1usize..12) {
        for (limit, unit) in [(TELEGRAM_LIMIT, Unit::Utf16), (DISCORD_LIMIT, Unit::Chars)] {
            let parts = split_capped(&md, limit, unit, max_parts);
            prop_assert!(parts.len() <= max_parts);
            for part in &parts {
                prop_assert!(unit.measure(part) <= limit, "{} > {limit}", unit.measure(part));
                prop_assert!(!part.trim().is_empty());
            }
            assert_words_kept(&md, &parts.concat())?;
            if parts.len() < max_parts {
                prop_assert_eq!(&parts, &split(&md, limit, unit));
            }
        }
    }

    #[test]
    fn telegram_parts_fit_and_keep_words(md in markdown(), max_parts in 1usize..12) {
        let parts = telegram_parts(&md, TELEGRAM_LIMIT, max_parts);
        prop_assert!(parts.len() <= max_parts);
        for part in &parts {
            prop_assert!(visible_len(&part.html) <= TELEGRAM_LIMIT);
            prop_assert!(visible_len(&part.html) > 0);
            prop_assert!(super::utf16_len(&part.plain) <= TELEGRAM_LIMIT);
        }
        // Link targets are in the HTML (as `href`), so the words are looked for there and in the
        // plain twins.
        let shown: String = parts.iter().flat_map(|p| [p.html.as_str(), p.plain.as_str()]).collect();
        assert_words_kept(&md, &shown)?;
    }

    #[test]
    fn renderers_never_panic_on_arbitrary_text(text in any::<String>()) {
        let html = to_telegram_html(&text);
        prop_assert_eq!(html.trim_end(), html.as_str());
        for part in telegram_parts(&text, TELEGRAM_LIMIT, 10) {
            prop_assert!(visible_len(&part.html) <= TELEGRAM_LIMIT);
        }
        for part in split_capped(&text, DISCORD_LIMIT, Unit::Chars, 10) {
            prop_assert!(part.chars().count() <= DISCORD_LIMIT);
        }
    }
}

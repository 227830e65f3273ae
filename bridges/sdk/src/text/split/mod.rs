//! Splitting of Markdown source into parts that each fit under a platform's message limit.
//! Parts break at the most natural boundary that fits (a blank line, then a line break, then
//! whitespace, then a character), and a fenced code block that has to be cut is closed at the
//! end of one part and reopened with the same fence and info string at the start of the next, so
//! every part renders on its own. The splitter only recognises fences and blank lines; it does
//! not parse the rest of the Markdown, which is rendered per part afterwards.
//!
//! This module owns the public entries ([`split`], [`split_rendered`], [`split_capped`],
//! [`cut_note`]) and the assembly of parts from pieces (rendering them, splitting again what
//! renders too long, stopping at the part cap). How a platform counts length is in `measure`,
//! cutting pieces off the front of a text in `splitter`, and choosing where to cut (the levels of
//! preference and the fence bookkeeping) in `cut`.

mod cut;
mod measure;
mod splitter;

pub use self::measure::Unit;

use self::measure::fits;
use self::splitter::{split_pieces, Splitter};

/// Splits Markdown `text` into parts whose length, measured in `unit`, is at most `limit`.
///
/// Text that already fits comes back as a single, unchanged part; empty or whitespace-only text
/// gives no parts at all, and the caller decides what to send then. Otherwise each part ends at
/// the best boundary that fits, in this order of preference: a blank line (or the edge of a
/// fenced code block), a line break, whitespace, a grapheme boundary, and only as a last resort
/// any character boundary; a character is never cut in two. Blank lines and whitespace at the
/// edges of a part are dropped, but the indentation of its first line is kept.
///
/// A fenced code block cut between two parts is closed at the end of the first part and
/// reopened at the start of the next with the same opener line (fence and info string, such as
/// ```` ```rust ````); those added lines count toward the limit. Fences are recognised at any
/// indentation so that code blocks inside list items are handled too. If a fence's opener line
/// is so long that reopening it would leave no room in a part (a limit below about the opener's
/// length plus ten), that block is cut like plain text instead.
///
/// If `limit` is smaller than a single character (0, or 1 for an emoji in UTF-16), that
/// character is emitted alone in an over-long part: making progress beats looping forever.
pub fn split(text: &str, limit: usize, unit: Unit) -> Vec<String> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    if unit.measure(text) <= limit {
        return vec![text.to_owned()];
    }
    split_pieces(text, limit, unit)
        .into_iter()
        .map(|piece| piece.text)
        .collect()
}

/// What rendering one part of a split gave (see [`split_rendered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered<R> {
    /// The rendering, within the platform's limit.
    Fits(R),
    /// The rendering is over the platform's limit: the part is split again.
    TooLong,
    /// The part shows nothing (only reference definitions, an empty code block): it is dropped.
    Empty,
}

/// Splits Markdown `text` under `limit` and renders each part, deciding fit on the rendering:
/// a part whose rendering is too long is split again (in halves, until it fits), and a part that
/// renders to nothing is dropped, so every returned part is within the platform's limit and shows
/// something.
///
/// A piece that still renders too long when it cannot usefully be split any more (a few
/// characters that expand, such as a reference link to a very long URL) is passed to `plain`,
/// which must return a rendering of the source as literal text (within the limit, since the
/// source is).
///
/// At most `max_parts` parts are returned (0 counts as 1). When the text needs more, the last
/// part ends with [`cut_note`], saying how many characters of the source were left out; the
/// splitter stops there, so a huge text costs no more than the parts that are shown plus one
/// count of the rest.
pub fn split_rendered<R>(
    text: &str,
    limit: usize,
    unit: Unit,
    max_parts: usize,
    mut render: impl FnMut(&str) -> Rendered<R>,
    mut plain: impl FnMut(&str) -> R,
) -> Vec<R> {
    let max_parts = max_parts.max(1);
    let mut parts = Vec::new();
    if text.trim().is_empty() {
        return parts;
    }
    let mut splitter = Splitter::new(text, limit, unit);
    // Pieces of a piece that rendered too long, rendered before the splitter's next; the next
    // one is last.
    let mut pending: Vec<String> = Vec::new();
    // The splitter's remaining characters, counted once when the cut is first needed.
    let mut rest_chars: Option<usize> = None;
    loop {
        let piece = match pending.pop() {
            Some(piece) => piece,
            None => match splitter.next_piece() {
                Some(piece) => piece.text,
                None => break,
            },
        };
        let more = !pending.is_empty() || !splitter.is_done();
        if parts.len() + 1 == max_parts && more {
            let rest = *rest_chars.get_or_insert_with(|| splitter.remaining_chars());
            let omitted = rest + pending.iter().map(|p| p.chars().count()).sum::<usize>();
            let with_note = format!("{piece}\n\n{}", cut_note(omitted));
            if unit.measure(&with_note) > limit {
                let room = limit.saturating_sub(unit.measure(&with_note) - unit.measure(&piece));
                match resplit(&piece, room, unit) {
                    Some(pieces) => {
                        pending.extend(pieces.into_iter().rev());
                        continue;
                    }
                    None => {
                        // No room for any of the piece: the last part is the note alone.
                        let rest = omitted + piece.chars().count();
                        parts.push(plain(&cut_note(rest)));
                        break;
                    }
                }
            }
            match render(&with_note) {
                Rendered::Fits(part) => parts.push(part),
                Rendered::TooLong | Rendered::Empty => {
                    match resplit(&piece, unit.measure(&piece) / 2, unit) {
                        Some(pieces) => {
                            pending.extend(pieces.into_iter().rev());
                            continue;
                        }
                        None => parts.push(plain(&with_note)),
                    }
                }
            }
            break;
        }
        match render(&piece) {
            Rendered::Fits(part) => parts.push(part),
            Rendered::Empty => {}
            Rendered::TooLong => match resplit(&piece, unit.measure(&piece) / 2, unit) {
                Some(pieces) => pending.extend(pieces.into_iter().rev()),
                None => parts.push(plain(&piece)),
            },
        }
    }
    parts
}

/// [`split`] with at most `max_parts` parts, the last ending with [`cut_note`] when the text
/// needed more. For platforms that show Markdown as it is sent (Discord).
pub fn split_capped(text: &str, limit: usize, unit: Unit, max_parts: usize) -> Vec<String> {
    if text.trim().is_empty() || fits(text, limit, unit) {
        return split(text, limit, unit);
    }
    split_rendered(
        text,
        limit,
        unit,
        max_parts,
        |part| Rendered::Fits(part.to_owned()),
        str::to_owned,
    )
}

/// The line that ends the last part of a message cut at `max_parts`:
/// `… (message cut: 12,345 more characters not shown)`.
pub fn cut_note(omitted_chars: usize) -> String {
    let digits = omitted_chars.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let noun = if omitted_chars == 1 {
        "character"
    } else {
        "characters"
    };
    format!("… (message cut: {grouped} more {noun} not shown)")
}

/// Pieces below this length are not split again when their rendering is too long: what they
/// expand is a single construct, which the plain-text rendering shows as written.
const MIN_RESPLIT: usize = 16;

/// Splits `piece` again under `limit`, or `None` when that would not make it smaller.
fn resplit(piece: &str, limit: usize, unit: Unit) -> Option<Vec<String>> {
    if limit < MIN_RESPLIT {
        return None;
    }
    let pieces = split(piece, limit, unit);
    (pieces.len() > 1 || pieces.first().is_some_and(|p| unit.measure(p) <= limit)).then_some(pieces)
}

#[cfg(test)]
mod tests {
    use super::splitter::Piece;
    use super::*;

    /// Lines that open or close a backtick fence, counted independently of the splitter.
    fn fence_lines(part: &str) -> usize {
        part.lines()
            .filter(|l| l.trim_start().starts_with("```"))
            .count()
    }

    fn non_whitespace(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    /// Checks every property a split must have, and returns the parts.
    fn check(text: &str, limit: usize, unit: Unit) -> Vec<String> {
        let parts = split(text, limit, unit);
        for part in &parts {
            assert!(
                unit.measure(part) <= limit,
                "part of {} units over the limit {limit}: {part:?}",
                unit.measure(part)
            );
            assert!(!part.trim().is_empty(), "empty part in a split of {text:?}");
        }
        if parts.len() > 1 {
            let pieces = split_pieces(text, limit, unit);
            let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
            assert_eq!(texts, parts);
            let bodies: String = pieces.iter().map(Piece::body).collect();
            assert_eq!(
                non_whitespace(&bodies),
                non_whitespace(text),
                "content lost or reordered at limit {limit}: {parts:#?} from {text:?}"
            );
            for part in &parts {
                assert!(
                    !part.starts_with(['\n', '\r']),
                    "leading blank line: {part:?}"
                );
                assert!(
                    !part.ends_with(char::is_whitespace),
                    "trailing whitespace: {part:?}"
                );
            }
        }
        parts
    }

    /// A deterministic stand-in for the 10,000-character answer an agent might write: prose
    /// with emoji and CJK, a list, a 3,000-character Rust code block and more prose.
    fn long_answer() -> String {
        let mut md =
            String::from("# Findings 😀\n\nHere is what I found about the 東京 deployment.\n\n");
        for i in 0..20 {
            md.push_str(&format!(
                "Paragraph {i}: the service 🚀 handled requests with **bold** claims and \
                 _careful_ caveats, 日本語のテキストも含む, plus `inline code` and a \
                 [link](https://example.com/{i}).\n\n"
            ));
        }
        md.push_str("Steps:\n\n- first\n- second\n  - nested 👨\u{200d}👩\u{200d}👧\n- third\n\n");
        md.push_str("```rust\n");
        let code_start = md.len();
        let mut n = 0;
        while md.len() - code_start < 3000 {
            md.push_str(&format!(
                "    let value_{n} = compute(\"input {n}\", 0x{n:04x}); // ✓ step {n}\n"
            ));
            n += 1;
        }
        md.push_str("```\n\n");
        while md.chars().count() < 10_000 {
            md.push_str(
                "Closing thoughts ✨ go here, one sentence after another, until the answer \
                 is long enough to need several messages on every platform.\n",
            );
        }
        md
    }

    #[test]
    fn empty_and_blank_input_give_no_parts() {
        assert!(split("", 10, Unit::Chars).is_empty());
        assert!(split(" \n\n\t ", 10, Unit::Utf16).is_empty());
    }

    #[test]
    fn text_under_the_limit_is_returned_unchanged() {
        let text = "\n  hello *world*  \n\n";
        assert_eq!(split(text, 100, Unit::Chars), vec![text.to_owned()]);
        assert_eq!(split("😀😀", 4, Unit::Utf16), vec!["😀😀".to_owned()]);
    }

    #[test]
    fn emoji_count_twice_in_utf16_and_once_in_chars() {
        let text = "😀".repeat(10);
        let parts = check(&text, 4, Unit::Utf16);
        assert_eq!(parts, vec!["😀😀"; 5]);
        let parts = check(&text, 4, Unit::Chars);
        assert_eq!(parts, vec!["😀😀😀😀", "😀😀😀😀", "😀😀"]);
        let cjk = "日本語".repeat(4);
        let parts = check(&cjk, 5, Unit::Utf16);
        assert_eq!(parts, vec!["日本語日本", "語日本語日", "本語"]);
    }

    #[test]
    fn prefers_paragraphs_then_lines_then_words() {
        let text = "aaa bbb\nccc\n\nddd eee";
        assert_eq!(
            check(text, 12, Unit::Chars),
            vec!["aaa bbb\nccc", "ddd eee"]
        );
        assert_eq!(
            check(text, 9, Unit::Chars),
            vec!["aaa bbb", "ccc", "ddd eee"]
        );
        assert_eq!(
            check(text, 5, Unit::Chars),
            vec!["aaa", "bbb", "ccc", "ddd", "eee"]
        );
    }

    #[test]
    fn a_word_longer_than_the_limit_is_cut_at_char_boundaries() {
        let word = format!("x{}", "é".repeat(25));
        let text = format!("short {word} end");
        let parts = check(&text, 10, Unit::Chars);
        assert_eq!(parts[0], "short");
        assert_eq!(parts[1], "xééééééééé");
        assert_eq!(parts[2], "éééééééééé");
        assert_eq!(parts[3], "éééééé end");
        // An emoji is never split between its two UTF-16 units.
        let parts = check(&"a😀".repeat(5), 4, Unit::Utf16);
        assert_eq!(parts, vec!["a😀a", "😀a", "😀a", "😀a", "😀"]);
    }

    #[test]
    fn grapheme_clusters_stay_whole_when_possible() {
        let family = "👨\u{200d}👩\u{200d}👧";
        let text = format!("{family}{family}{family}");
        let parts = check(&text, 10, Unit::Utf16);
        assert_eq!(parts, vec![family; 3]);
        let flags = "🇫🇷🇩🇪🇯🇵🇧🇷";
        let parts = check(flags, 6, Unit::Utf16);
        assert_eq!(parts, vec!["🇫🇷", "🇩🇪", "🇯🇵", "🇧🇷"]);
        let accents = "e\u{301}".repeat(6);
        for part in check(&accents, 5, Unit::Chars) {
            assert!(
                part.starts_with('e') && part.ends_with('\u{301}'),
                "{part:?}"
            );
        }
    }

    #[test]
    fn a_code_block_is_closed_and_reopened_with_its_info_string() {
        let code: String = (0..10).map(|i| format!("let x{i} = {i};\n")).collect();
        let text = format!("Intro.\n\n```rust\n{code}```\n\nOutro.");
        let parts = check(&text, 60, Unit::Chars);
        assert_eq!(parts[0], "Intro.");
        assert!(parts.len() > 3);
        for part in &parts[1..] {
            assert!(part.starts_with("```rust\nlet x"), "{part:?}");
        }
        for part in &parts[1..parts.len() - 1] {
            assert!(part.ends_with(";\n```"), "{part:?}");
        }
        // The last piece of the block fits together with what follows it.
        assert!(parts[parts.len() - 1].ends_with(";\n```\n\nOutro."));
    }

    #[test]
    fn code_indentation_and_tilde_fences_survive_a_split() {
        let text = "~~~~python\ndef f():\n    return 1\n\n\n    # still code\n~~~~\nafter";
        let parts = check(text, 32, Unit::Chars);
        assert_eq!(
            parts,
            vec![
                "~~~~python\ndef f():\n~~~~",
                "~~~~python\n    return 1\n~~~~",
                "~~~~python\n    # still code\n~~~~",
                "after"
            ]
        );
    }

    #[test]
    fn fences_inside_list_items_are_reopened_with_their_indentation() {
        let text = "1. Run:\n\n   ```sh\n   make build\n   make test\n   ```\n2. Done.";
        let parts = check(text, 30, Unit::Chars);
        assert_eq!(
            parts,
            vec![
                "1. Run:",
                "   ```sh\n   make build\n   ```",
                "   ```sh\n   make test\n   ```",
                "2. Done."
            ]
        );
    }

    #[test]
    fn a_long_code_line_is_cut_inside_the_fence() {
        let text = format!("```\n{}\n```", "word ".repeat(30).trim_end());
        let parts = check(&text, 40, Unit::Chars);
        for part in &parts {
            assert_eq!(fence_lines(part), 2, "{part:?}");
        }
    }

    #[test]
    fn an_unterminated_fence_is_closed_where_it_is_cut() {
        let text = format!("```js\n{}", "x();\n".repeat(20));
        let parts = check(&text, 30, Unit::Chars);
        assert!(parts.len() > 2);
        for part in &parts {
            assert!(part.starts_with("```js\nx();"), "{part:?}");
        }
        // The last part is left unterminated, like the original.
        for part in &parts[..parts.len() - 1] {
            assert!(part.ends_with("x();\n```"), "{part:?}");
        }
    }

    #[test]
    fn a_ten_thousand_character_answer_splits_for_both_platforms() {
        let md = long_answer();
        assert!(md.chars().count() >= 10_000);
        for (limit, unit) in [(4096, Unit::Utf16), (2000, Unit::Chars)] {
            let parts = check(&md, limit, unit);
            assert!(parts.len() >= 3, "{} parts", parts.len());
            for part in &parts {
                assert_eq!(fence_lines(part) % 2, 0, "unbalanced fences in {part:?}");
                // A part that carries code either opens it itself or reopens it first thing.
                if part.contains("let value_") && !part.contains("```rust") {
                    panic!("code outside a fence in {part:?}");
                }
            }
            // The 3,000-character block does not fit in 2,000 characters, so it must have been
            // closed and reopened.
            if limit == 2000 {
                let reopened = parts.iter().filter(|p| p.starts_with("```rust\n")).count();
                assert!(reopened >= 1);
            }
        }
    }

    #[test]
    fn generated_documents_keep_every_property_at_many_limits() {
        // A small deterministic generator (xorshift) instead of a property-testing dependency.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let pieces = [
            "word",
            "other",
            "😀",
            "日本",
            "é",
            "👨\u{200d}👩\u{200d}👧",
            "🇫🇷",
            " ",
            " ",
            " ",
            "\n",
            "\n\n",
            "supercalifragilisticexpialidocious",
            "- item",
            "  indented",
            "`tick`",
            "\r\n",
            "> quote",
            "1. step",
        ];
        for round in 0..200 {
            let mut doc = String::new();
            let mut in_code = false;
            for _ in 0..next(120) + 1 {
                if next(25) == 0 {
                    let indent = ["", " ", "   "][next(3)];
                    let fence = if in_code { "```" } else { "```rust" };
                    doc.push_str(&format!("\n{indent}{fence}\n"));
                    in_code = !in_code;
                } else {
                    doc.push_str(pieces[next(pieces.len())]);
                }
            }
            if in_code {
                doc.push_str("\n```");
            }
            for limit in [20, 33, 64, 150] {
                for unit in [Unit::Chars, Unit::Utf16] {
                    for part in check(&doc, limit, unit) {
                        assert_eq!(
                            fence_lines(&part) % 2,
                            0,
                            "round {round}, limit {limit}: unbalanced {part:?} from {doc:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn tiny_limits_still_terminate() {
        assert_eq!(split("😀😀", 1, Unit::Utf16), vec!["😀", "😀"]);
        assert_eq!(split("ab", 0, Unit::Chars), vec!["a", "b"]);
        // An opener too long to reopen within the limit is cut like plain text.
        let parts = split("```averyverylonginfostring\ncode\n```", 12, Unit::Chars);
        assert!(!parts.is_empty());
        for part in &parts {
            assert!(part.chars().count() <= 12);
        }
    }

    #[test]
    fn the_cut_note_groups_thousands() {
        assert_eq!(cut_note(1), "… (message cut: 1 more character not shown)");
        assert_eq!(
            cut_note(999),
            "… (message cut: 999 more characters not shown)"
        );
        assert_eq!(
            cut_note(12_345),
            "… (message cut: 12,345 more characters not shown)"
        );
        assert_eq!(
            cut_note(3_000_000),
            "… (message cut: 3,000,000 more characters not shown)"
        );
    }

    #[test]
    fn a_capped_split_ends_with_the_note_and_counts_what_is_left() {
        let text = (0..100)
            .map(|i| format!("paragraph {i:03} {}", "x".repeat(80)))
            .collect::<Vec<_>>()
            .join("\n\n");
        let parts = split_capped(&text, 200, Unit::Chars, 3);
        assert_eq!(parts.len(), 3);
        for part in &parts {
            assert!(part.chars().count() <= 200, "{part:?}");
        }
        let last = &parts[2];
        assert!(last.contains("\n\n… (message cut: "), "{last:?}");
        // What the parts show and what the note counts add up to the source.
        let shown: usize = parts[..2].iter().map(|p| p.chars().count()).sum::<usize>()
            + last
                .split("\n\n… (")
                .next()
                .map_or(0, |p| p.chars().count());
        let note = last.rsplit("message cut: ").next().unwrap_or_default();
        let omitted: usize = note
            .split(' ')
            .next()
            .unwrap_or_default()
            .replace(',', "")
            .parse()
            .expect("a count in the note");
        // Only the blank lines where the text was cut (four places here) are neither shown nor
        // counted.
        let total = text.chars().count();
        assert!(
            shown + omitted <= total && total - (shown + omitted) <= 4 * 2,
            "{shown} + {omitted} of {total}"
        );
        // Under the cap nothing changes.
        assert_eq!(
            split_capped(&text, 200, Unit::Chars, 1000),
            split(&text, 200, Unit::Chars)
        );
        // One part allowed: the note still fits in it.
        let one = split_capped(&text, 200, Unit::Chars, 1);
        assert_eq!(one.len(), 1);
        assert!(one[0].starts_with("paragraph 000") && one[0].ends_with("not shown)"));
    }

    #[test]
    fn parts_that_render_too_long_are_split_again_and_empty_ones_dropped() {
        // A renderer that doubles every `x` and shows nothing for lines starting with `[`.
        let render = |part: &str| {
            let shown: String = part
                .lines()
                .filter(|l| !l.starts_with('['))
                .collect::<Vec<_>>()
                .join("\n")
                .replace('x', "xx");
            if shown.trim().is_empty() {
                Rendered::Empty
            } else if shown.chars().count() > 100 {
                Rendered::TooLong
            } else {
                Rendered::Fits(shown)
            }
        };
        let text = format!(
            "{}\n\n[1]: https://e.com/a\n[2]: https://e.com/b",
            "x ".repeat(120)
        );
        let parts = split_rendered(&text, 100, Unit::Chars, usize::MAX, render, |p: &str| {
            p.to_owned()
        });
        assert!(parts.len() >= 5, "{parts:?}");
        for part in &parts {
            assert!(
                part.chars().count() <= 100 && !part.trim().is_empty(),
                "{part:?}"
            );
        }
        let xs: usize = parts.iter().map(|p| p.matches('x').count()).sum();
        assert_eq!(xs, 240);
        // A piece too small to split again is shown as literal text.
        let parts = split_rendered(
            "tiny",
            100,
            Unit::Chars,
            10,
            |_: &str| Rendered::<String>::TooLong,
            |p: &str| format!("plain:{p}"),
        );
        assert_eq!(parts, vec!["plain:tiny".to_owned()]);
    }

    #[test]
    fn three_megabytes_split_in_one_pass() {
        // One enormous line, the worst case of the old splitter (it copied and rescanned the rest
        // of the text for every part), and ordinary prose. Timing is not asserted; the splitter
        // never copies or scans more than a bounded window per part.
        let line = "word ".repeat(600_000);
        let prose = "A sentence of prose, with some words.\n".repeat(80_000);
        for text in [line, prose] {
            assert!(text.len() >= 3_000_000);
            let parts = split(&text, 4096, Unit::Utf16);
            assert!(parts.len() >= 700, "{}", parts.len());
            let capped = split_capped(&text, 4096, Unit::Utf16, 10);
            assert_eq!(capped.len(), 10);
            assert!(capped[9].ends_with("more characters not shown)"));
        }
    }
}

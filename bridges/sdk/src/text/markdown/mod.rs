//! Rendering of Markdown, as language models write it, into the HTML subset of the Telegram Bot
//! API (`parse_mode=HTML`), plus the plain-text fallback and the HTML escaping callers need for
//! their own markup. The Markdown is parsed with pulldown-cmark; this module only maps its
//! events onto the tags Telegram accepts and guarantees the output is well-formed, so a message
//! never fails with "can't parse entities".
//!
//! This module owns the Telegram side: the parts a text becomes within Telegram's limit, the
//! visible length Telegram checks, the plain-text fallback and the escaping. The walk over the
//! parser's events that writes the HTML is in `renderer`.

mod renderer;

use pulldown_cmark::{Options, Parser};

use self::renderer::Renderer;

use super::{split, split_rendered, utf16_len, Rendered, Unit};

/// Telegram's limit on a message's visible text, in UTF-16 units.
pub const TELEGRAM_LIMIT: usize = 4096;

/// One Telegram message of a rendered text: the HTML, and the plain text sent instead when
/// Telegram refuses the HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramPart {
    pub html: String,
    pub plain: String,
}

impl TelegramPart {
    /// A part showing `text` as it is.
    pub fn plain(text: &str) -> Self {
        Self {
            html: escape_html(text),
            plain: text.to_owned(),
        }
    }
}

/// Renders Markdown into the Telegram messages that show it, each within `budget` UTF-16 units
/// of visible text (Telegram's limit minus whatever the caller adds, such as a header).
///
/// Fit is decided on the rendering: a part that grows past `budget` when rendered (a reference
/// link expanded after every use, a table) is split again, and a part that renders to nothing
/// (only reference definitions) is dropped. A few characters that still expand too much are sent
/// as their source text. At most `max_parts` parts come back; a longer text is cut with
/// [`super::cut_note`] at the end of the last one.
pub fn telegram_parts(md: &str, budget: usize, max_parts: usize) -> Vec<TelegramPart> {
    // Room kept below the budget when splitting the source, for what rendering commonly adds
    // (list bullets, table separators), so that parts rarely need a second split.
    const MARGIN: usize = 64;
    let limit = budget.saturating_sub(MARGIN).max(budget / 2).max(1);
    split_rendered(
        md,
        limit,
        Unit::Utf16,
        max_parts,
        |source| {
            let html = to_telegram_html(source);
            match visible_len(&html) {
                0 => Rendered::Empty,
                len if len > budget => Rendered::TooLong,
                _ => Rendered::Fits(TelegramPart {
                    html,
                    plain: to_plain_text(source),
                }),
            }
        },
        TelegramPart::plain,
    )
}

/// Splits plain text (a notice, a list of files) into Telegram messages within `budget`.
pub fn telegram_plain_parts(text: &str, budget: usize) -> Vec<TelegramPart> {
    split(text, budget, Unit::Utf16)
        .iter()
        .map(|part| TelegramPart::plain(part))
        .collect()
}

/// The length Telegram checks: the text after tags are removed and entities decoded, trimmed,
/// in UTF-16 units.
pub fn visible_len(html: &str) -> usize {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => match rest.find('>') {
                Some(end) => rest = &rest[end + 1..],
                None => {
                    text.push_str(rest);
                    break;
                }
            },
            '&' => {
                let entity_end = rest.bytes().take(12).position(|b| b == b';');
                match entity_end {
                    Some(end) => {
                        // The entities the renderer writes (`&amp;`, `&lt;`, `&gt;`, `&quot;`)
                        // decode to one unit each.
                        text.push('x');
                        rest = &rest[end + 1..];
                    }
                    None => {
                        text.push('&');
                        rest = &rest[1..];
                    }
                }
            }
            _ => {
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    utf16_len(text.trim())
}

/// Renders Markdown into Telegram HTML.
///
/// Only tags Telegram supports are produced (`b`, `i`, `s`, `code`, `pre`, `a`, `blockquote`);
/// every other construct is mapped: headings become bold lines, list items become lines starting
/// with `• ` or `1. ` (nested items indented), tables become one line per row with cells
/// separated by ` | ` (the header row bold), a horizontal rule becomes `———`, and images become
/// links to the image. Raw HTML in the Markdown is shown as literal text, never interpreted, and
/// unbalanced markers (`*bold`, an unterminated fence) come out as text or as a valid rendering.
/// All text is escaped, every tag opened is closed in order, blocks are separated by a blank
/// line, and the result has no trailing whitespace.
///
/// The visible text is about as long as the source (markers are dropped, tables are not padded),
/// so Markdown split under Telegram's limit normally stays under it once rendered.
pub fn to_telegram_html(md: &str) -> String {
    // Subscript is enabled only so that a single `~` pair (as in "~5 to ~10 minutes") is parsed
    // as subscript, which is rendered back as the literal text, while `~~x~~` is strikethrough.
    let options = Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_SUBSCRIPT
        | Options::ENABLE_TABLES
        | Options::ENABLE_TASKLISTS;
    let mut renderer = Renderer::default();
    for event in Parser::new_ext(md, options) {
        renderer.event(event);
    }
    renderer.finish()
}

/// Returns the text to send when Telegram rejects the HTML anyway: the Markdown source itself.
///
/// Stripping markers would be prettier, but any transformation risks losing what the agent wrote
/// (an asterisk in a formula, an underscore in an identifier), and this is the path taken when
/// something already went wrong, so it must be the one that cannot lose content. The source is
/// also exactly what was measured when the message was split, so it fits the limit.
pub fn to_plain_text(md: &str) -> String {
    md.to_owned()
}

/// Escapes `text` for use anywhere in Telegram HTML, text or attribute value: `&`, `<`, `>` and
/// `"` become entities Telegram understands.
pub fn escape_html(text: &str) -> String {
    escape(text, true)
}

pub(super) fn escape(text: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text, quotes);
    out
}

pub(super) fn push_escaped(out: &mut String, text: &str, quotes: bool) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if quotes => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED_TAGS: [&str; 9] = [
        "b",
        "i",
        "u",
        "s",
        "code",
        "pre",
        "a",
        "blockquote",
        "tg-spoiler",
    ];

    /// A small checker of what Telegram requires: only supported tags, every tag closed in
    /// order, only supported entities, no bare `<` or `>`, quoted attributes without raw quotes,
    /// nothing inside `<code>` or `<pre>` but `<pre><code>`, no link in a link, no quote in a
    /// quote, and no trailing whitespace.
    fn assert_well_formed(html: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = html;
        while let Some(c) = rest.chars().next() {
            match c {
                '<' => {
                    let end = rest
                        .find('>')
                        .unwrap_or_else(|| panic!("unterminated tag in {html:?}"));
                    let inner = &rest[1..end];
                    if let Some(name) = inner.strip_prefix('/') {
                        let top = stack.pop();
                        assert_eq!(top, Some(name), "mismatched </{name}> in {html:?}");
                    } else {
                        let name = inner.split(' ').next().unwrap_or_default();
                        assert!(ALLOWED_TAGS.contains(&name), "tag <{name}> in {html:?}");
                        let attributes = &inner[name.len()..];
                        match name {
                            "a" => assert!(attributes.starts_with(" href=\"")),
                            "code" if stack.last() == Some(&"pre") => assert!(
                                attributes.is_empty()
                                    || attributes.starts_with(" class=\"language-")
                            ),
                            _ => assert!(attributes.is_empty(), "attributes on <{name}>"),
                        }
                        if !attributes.is_empty() {
                            assert!(attributes.ends_with('"'));
                            let value = &attributes[attributes.find('"').unwrap_or(0) + 1..];
                            assert!(!value[..value.len() - 1].contains('"'));
                        }
                        let parent = stack.last().copied();
                        assert!(parent != Some("code"), "tag inside <code> in {html:?}");
                        assert!(
                            parent != Some("pre") || name == "code",
                            "tag inside <pre> in {html:?}"
                        );
                        assert!(
                            !(name == "a" && stack.contains(&"a")),
                            "nested link in {html:?}"
                        );
                        assert!(
                            !(name == "blockquote" && stack.contains(&"blockquote")),
                            "nested quote in {html:?}"
                        );
                        stack.push(name);
                    }
                    rest = &rest[end + 1..];
                }
                '>' => panic!("bare > in {html:?}"),
                '&' => {
                    let ok = ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|e| rest.starts_with(e));
                    assert!(ok, "bad entity in {html:?}");
                    rest = &rest[1..];
                }
                _ => rest = &rest[c.len_utf8()..],
            }
        }
        assert!(stack.is_empty(), "unclosed {stack:?} in {html:?}");
        assert_eq!(html, html.trim_end(), "trailing whitespace");
    }

    /// Renders, checks well-formedness and returns the HTML.
    fn render(md: &str) -> String {
        let html = to_telegram_html(md);
        assert_well_formed(&html);
        html
    }

    #[test]
    fn a_code_fence_with_nothing_in_it_shows_its_info_string() {
        // Found by the property test: the language of an empty block was all the text there was.
        let parts = telegram_parts("``` a ", TELEGRAM_LIMIT, 1);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].html, "a");
        assert_eq!(to_telegram_html("```python rust\n```"), "python rust");
        // A block with code shows the code, the language only as its class.
        assert_eq!(
            to_telegram_html("```rust\nlet x = 1;\n```"),
            "<pre><code class=\"language-rust\">let x = 1;</code></pre>"
        );
    }

    #[test]
    fn inline_styles() {
        assert_eq!(
            render("**bold** and *italic* and _also_ and ~~gone~~ and `x < y`"),
            "<b>bold</b> and <i>italic</i> and <i>also</i> and <s>gone</s> and <code>x &lt; y</code>"
        );
        assert_eq!(render("***both***"), "<i><b>both</b></i>");
        assert_eq!(
            render("**outer **inner** outer**"),
            "<b>outer inner outer</b>"
        );
    }

    #[test]
    fn single_tildes_stay_literal() {
        assert_eq!(render("about ~5 to ~10 minutes"), "about ~5 to ~10 minutes");
        assert_eq!(render("~x~ and ~~y~~"), "~x~ and <s>y</s>");
    }

    #[test]
    fn headings_become_bold_lines() {
        assert_eq!(
            render("# Title\n\nBody text.\n\n## Sub *part*\nMore."),
            "<b>Title</b>\n\nBody text.\n\n<b>Sub <i>part</i></b>\n\nMore."
        );
        assert_eq!(render("# **Bold** title"), "<b>Bold title</b>");
    }

    #[test]
    fn paragraphs_and_breaks() {
        assert_eq!(
            render("one\ntwo  \nthree\n\n\n\nfour\n"),
            "one\ntwo\nthree\n\nfour"
        );
    }

    #[test]
    fn lists_with_nesting() {
        assert_eq!(
            render("Items:\n\n- a\n- b\n  - c\n  - d\n    1. e\n- f\n\nAfter."),
            "Items:\n\n• a\n• b\n  • c\n  • d\n    1. e\n• f\n\nAfter."
        );
        assert_eq!(
            render("3. three\n4. four\n   - sub"),
            "3. three\n4. four\n   • sub"
        );
        assert_eq!(
            render("- loose\n\n- items\n\n  second paragraph"),
            "• loose\n• items\n  second paragraph"
        );
        assert_eq!(render("- [ ] todo\n- [x] done"), "• ☐ todo\n• ☑ done");
    }

    #[test]
    fn code_blocks() {
        assert_eq!(
            render("```rust\nfn main() { println!(\"<hi>\"); }\n```"),
            "<pre><code class=\"language-rust\">fn main() { println!(\"&lt;hi&gt;\"); }</code></pre>"
        );
        assert_eq!(
            render("Text\n\n```\n  indented\n\n  kept\n```\nafter"),
            "Text\n\n<pre>  indented\n\n  kept</pre>\n\nafter"
        );
        assert_eq!(render("    indented code"), "<pre>indented code</pre>");
        assert_eq!(
            render("- step\n\n  ```sh\n  make\n  ```"),
            "• step\n<pre><code class=\"language-sh\">make</code></pre>"
        );
        assert_eq!(render("```\n```"), "");
    }

    #[test]
    fn unterminated_fence_becomes_a_code_block() {
        assert_eq!(
            render("``` unterminated\ncode *here*"),
            "<pre><code class=\"language-unterminated\">code *here*</code></pre>"
        );
        assert_eq!(render("```\n<b>"), "<pre>&lt;b&gt;</pre>");
    }

    #[test]
    fn links_and_images() {
        assert_eq!(
            render("[docs](https://example.com/a?b=1&c=2)"),
            "<a href=\"https://example.com/a?b=1&amp;c=2\">docs</a>"
        );
        assert_eq!(
            render("[q](https://example.com/a\"b)"),
            "<a href=\"https://example.com/a&quot;b\">q</a>"
        );
        assert_eq!(
            render("[click](javascript:alert(1))"),
            "click (javascript:alert(1))"
        );
        assert_eq!(render("<javascript:alert(1)>"), "javascript:alert(1)");
        assert_eq!(render("[rel](/path/x)"), "rel (/path/x)");
        assert_eq!(
            render("<https://a.b/c> <me@example.com>"),
            "<a href=\"https://a.b/c\">https://a.b/c</a> <a href=\"mailto:me@example.com\">me@example.com</a>"
        );
        assert_eq!(
            render("[**bold `code`**](tg://user?id=1)"),
            "<a href=\"tg://user?id=1\"><b>bold code</b></a>"
        );
        assert_eq!(
            render("[](https://e.com)"),
            "<a href=\"https://e.com\">https://e.com</a>"
        );
        assert_eq!(
            render("![a cat](https://e.com/cat.png)"),
            "<a href=\"https://e.com/cat.png\">a cat</a>"
        );
        assert_eq!(
            render("![](data:image/png;base64,xx)"),
            "data:image/png;base64,xx"
        );
        assert_eq!(
            render("[![badge](https://e.com/b.svg)](https://e.com)"),
            "<a href=\"https://e.com\">badge</a>"
        );
        assert_eq!(render("[x](<https://e.com/a b>)"), "x (https://e.com/a b)");
    }

    #[test]
    fn raw_html_is_shown_literally() {
        assert_eq!(render("a<b c>d"), "a&lt;b c&gt;d");
        assert_eq!(
            render("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            render("<div>\n*not emphasis*\n</div>\n\nafter"),
            "&lt;div&gt;\n*not emphasis*\n&lt;/div&gt;\n\nafter"
        );
        assert_eq!(render("x <!-- note --> y"), "x &lt;!-- note --&gt; y");
        assert_eq!(render("<b>bold?</b>"), "&lt;b&gt;bold?&lt;/b&gt;");
    }

    #[test]
    fn unbalanced_markers_are_literal() {
        assert_eq!(render("*unbalanced"), "*unbalanced");
        assert_eq!(render("_x"), "_x");
        assert_eq!(render("**a"), "**a");
        assert_eq!(render("`open code"), "`open code");
        assert_eq!(render("[text](unclosed"), "[text](unclosed");
        assert_eq!(render("snake_case_name"), "snake_case_name");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(render("Tom & Jerry <3 > 2"), "Tom &amp; Jerry &lt;3 &gt; 2");
        assert_eq!(render("&amp; &copy; &bogus;"), "&amp; © &amp;bogus;");
        assert_eq!(render("say \"hi\""), "say \"hi\"");
        assert_eq!(
            escape_html("<b>\"A&B\"</b>"),
            "&lt;b&gt;&quot;A&amp;B&quot;&lt;/b&gt;"
        );
    }

    #[test]
    fn quotes_rules_and_tables() {
        assert_eq!(
            render("> quoted **text**\n> more\n\n---\n\nafter"),
            "<blockquote>quoted <b>text</b>\nmore</blockquote>\n\n———\n\nafter"
        );
        assert_eq!(
            render("> outer\n>\n> > inner"),
            "<blockquote>outer\n\ninner</blockquote>"
        );
        assert_eq!(
            render("| Name | **Score** |\n|---|--:|\n| `a` | 1 |\n| b & c | [l](https://e.com) |"),
            "<b>Name | Score</b>\n<code>a</code> | 1\nb &amp; c | <a href=\"https://e.com\">l</a>"
        );
    }

    #[test]
    fn plain_text_fallback_keeps_the_source() {
        let md = "**x** <b>y</b> `z`";
        assert_eq!(to_plain_text(md), md);
    }

    #[test]
    fn every_output_is_well_formed() {
        let inputs = [
            "",
            "   ",
            "*a **b* c**",
            "**a *b** c*",
            "_a __b_ c__",
            "[a *b](https://e.com) c*",
            "***",
            "- a\n> b\n```\nc",
            "> - a\n>   ```py\n>   x\n>   ```",
            "1. a\n   > quote\n2. b",
            "# h <i>\n\n<p>para</p>",
            "<details><summary>x</summary>\n\nbody\n\n</details>",
            "| a |\n|---|\n",
            "| a | b |\n|---|---|\n| <x> | [y](javascript:z) |",
            "![a ![b](https://x.y)](https://z.w)",
            "[a](https://x.y \"title\")",
            "\\*escaped\\* \\<tag\\>",
            "line  \n  \n",
            "&#60;script&#62;",
            "~~~\n~~~~",
            "- \n- ",
            "text[^1]\n\n[^1]: note",
            "a\u{0}b",
        ];
        for input in inputs {
            render(input);
        }
    }

    #[test]
    fn every_part_of_a_split_long_answer_is_well_formed() {
        let mut md = String::new();
        for i in 0..40 {
            md.push_str(&format!(
                "## Section {i}\n\nSome **bold** and *italic* text with a [link](https://e.com/{i}), \
                 `code`, a<b c>d, & more 😀.\n\n- item\n  - nested *item*\n\n> quote {i}\n\n"
            ));
            if i % 10 == 0 {
                md.push_str("```python\n");
                for j in 0..40 {
                    md.push_str(&format!("print(\"<{j}>\" * {j})  # & comment\n"));
                }
                md.push_str("```\n\n");
            }
        }
        assert!(md.chars().count() > 10_000);
        for (limit, unit) in [
            (4096, super::super::Unit::Utf16),
            (2000, super::super::Unit::Chars),
            (300, super::super::Unit::Chars),
        ] {
            let parts = super::super::split(&md, limit, unit);
            assert!(parts.len() > 2);
            for part in parts {
                render(&part);
            }
        }
    }
}

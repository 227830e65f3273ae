//! How hub messages look on Telegram: the sender's header line, agent Markdown rendered to the
//! Bot API's HTML, attachments listed by name, and the split into parts of at most 4096 UTF-16
//! units as Telegram counts them (the visible text, after entity parsing). Every part carries a
//! plain-text twin, sent when Telegram refuses the HTML, so no message is ever lost to formatting.

use hub_bridge_sdk::event::ContentBlock;
use hub_bridge_sdk::media::human_size;
use hub_bridge_sdk::text::markdown::{
    escape_html, telegram_parts, telegram_plain_parts, TelegramPart, TELEGRAM_LIMIT,
};
use hub_bridge_sdk::text::utf16_len;
use serde::{Deserialize, Serialize};

pub use hub_bridge_sdk::text::markdown::visible_len;

/// Telegram's limit on a message's visible text, in UTF-16 units.
pub const TEXT_LIMIT: usize = TELEGRAM_LIMIT;

/// One message to send: the HTML, and the plain text to send instead if Telegram rejects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub html: String,
    pub plain: String,
}

impl Part {
    /// A part made of plain text, escaped for HTML.
    pub fn text(text: &str) -> Self {
        Self {
            html: escape_html(text),
            plain: text.to_owned(),
        }
    }
}

impl From<TelegramPart> for Part {
    fn from(part: TelegramPart) -> Self {
        Self {
            html: part.html,
            plain: part.plain,
        }
    }
}

/// Who a message is from, as the header line shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub name: String,
    /// An emoji shown before the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
}

impl Author {
    fn html(&self) -> String {
        match &self.avatar {
            Some(avatar) => format!("{} <b>{}</b>", escape_html(avatar), escape_html(&self.name)),
            None => format!("<b>{}</b>", escape_html(&self.name)),
        }
    }

    fn plain(&self) -> String {
        match &self.avatar {
            Some(avatar) => format!("{avatar} {}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Renders a hub message into the parts to send, the first headed by `author`: at most
/// `max_parts` parts of text (the last ending with a note when the text was cut), then the list
/// of attachments.
pub fn message(
    author: Option<&Author>,
    content: &str,
    blocks: &[ContentBlock],
    max_parts: usize,
) -> Vec<Part> {
    let header = author.map(|author| (author.html(), author.plain()));
    let header_len = header.as_ref().map_or(0, |(_, plain)| utf16_len(plain) + 1);
    // Every part gets the header's room, so the first one (which carries it) fits too.
    let budget = TEXT_LIMIT.saturating_sub(header_len);
    let mut bodies: Vec<Part> = telegram_parts(content, budget, max_parts)
        .into_iter()
        .map(Part::from)
        .collect();

    let attachments = attachment_lines(blocks);
    if !attachments.is_empty() {
        let lines = join_lines(&attachments);
        let fits = bodies.last().is_some_and(|last| {
            let header = if bodies.len() == 1 { header_len } else { 0 };
            let shown = visible_len(&last.html).max(utf16_len(&last.plain));
            header + shown + 2 + utf16_len(&lines.plain) <= TEXT_LIMIT
        });
        match bodies.last_mut() {
            Some(last) if fits => {
                last.html = format!("{}\n\n{}", last.html, lines.html);
                last.plain = format!("{}\n\n{}", last.plain, lines.plain);
            }
            _ => bodies.extend(attachment_parts(&attachments, budget)),
        }
    }
    if bodies.is_empty() {
        // Nothing to show but the sender: say so rather than send an empty message.
        bodies.push(Part::text("(empty message)"));
    }
    if let (Some((html, plain)), Some(first)) = (header, bodies.first_mut()) {
        first.html = format!("{html}\n{}", first.html);
        first.plain = format!("{plain}\n{}", first.plain);
    }
    bodies
}

/// Plain text (a notice) split under the limit, escaped for HTML.
pub fn notice(text: &str) -> Vec<Part> {
    let parts = telegram_plain_parts(text, TEXT_LIMIT);
    if parts.is_empty() {
        return vec![Part::text("(empty notice)")];
    }
    parts.into_iter().map(Part::from).collect()
}

/// The plain-text fallback of a part Telegram refused for its form: its plain text, split under
/// the limit (no part empty; none at all when the text is blank).
pub fn plain_fallback(part: &Part) -> Vec<String> {
    telegram_plain_parts(&part.plain, TEXT_LIMIT)
        .into_iter()
        .map(|part| part.plain)
        .collect()
}

fn join_lines(lines: &[Part]) -> Part {
    Part {
        html: lines
            .iter()
            .map(|line| line.html.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        plain: lines
            .iter()
            .map(|line| line.plain.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The attachment lines grouped into parts of at most `budget` units (measured on the plain
/// text, which is never shorter than what the HTML shows); a line too long on its own is split
/// as plain text.
fn attachment_parts(lines: &[Part], budget: usize) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut group: Vec<Part> = Vec::new();
    let mut group_len = 0;
    for line in lines {
        let len = utf16_len(&line.plain);
        if len > budget {
            if !group.is_empty() {
                parts.push(join_lines(&std::mem::take(&mut group)));
                group_len = 0;
            }
            parts.extend(
                telegram_plain_parts(&line.plain, budget)
                    .into_iter()
                    .map(Part::from),
            );
            continue;
        }
        if !group.is_empty() && group_len + 1 + len > budget {
            parts.push(join_lines(&std::mem::take(&mut group)));
            group_len = 0;
        }
        group_len += if group.is_empty() { len } else { 1 + len };
        group.push(line.clone());
    }
    if !group.is_empty() {
        parts.push(join_lines(&group));
    }
    parts
}

/// One line per attachment: name, kind and size, and a link when there is a public URL.
fn attachment_lines(blocks: &[ContentBlock]) -> Vec<Part> {
    blocks
        .iter()
        .map(|block| {
            let name = block.name.clone().unwrap_or_else(|| block.kind.clone());
            let mut details = vec![block.kind.clone()];
            if let Some(size) = block.size {
                details.push(human_size(size));
            }
            let details = details.join(", ");
            match &block.url {
                Some(url) if url.starts_with("https://") || url.starts_with("http://") => Part {
                    html: format!(
                        "📎 <a href=\"{}\">{}</a> ({})",
                        escape_html(url),
                        escape_html(&name),
                        escape_html(&details)
                    ),
                    plain: format!("📎 {name} ({details}) {url}"),
                },
                _ => Part::text(&format!("📎 {name} ({details})")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Author {
        Author {
            name: "Ann <QA>".into(),
            avatar: Some("🤖".into()),
        }
    }

    #[test]
    fn the_first_part_carries_the_escaped_header() {
        let parts = message(Some(&ann()), "**hi** & <b>", &[], 10);
        assert_eq!(parts.len(), 1);
        assert_eq!(
            parts[0].html,
            "🤖 <b>Ann &lt;QA&gt;</b>\n<b>hi</b> &amp; &lt;b&gt;"
        );
        assert_eq!(parts[0].plain, "🤖 Ann <QA>\n**hi** & <b>");
    }

    #[test]
    fn long_text_splits_into_parts_that_fit() {
        let paragraph = "word ".repeat(200);
        let text = [paragraph.trim(); 12].join("\n\n");
        let parts = message(Some(&ann()), &text, &[], 10);
        assert!(parts.len() >= 3, "{}", parts.len());
        for part in &parts {
            assert!(visible_len(&part.html) <= TEXT_LIMIT);
            assert!(utf16_len(&part.plain) <= TEXT_LIMIT);
        }
        assert!(parts[0].html.starts_with("🤖 <b>"));
        assert!(!parts[1].html.contains("<b>Ann"));
    }

    #[test]
    fn attachments_are_listed_and_empty_messages_say_so() {
        let block = ContentBlock {
            kind: "image".into(),
            name: Some("cat.png".into()),
            size: Some(2048),
            mime_type: None,
            url: Some("https://cdn.example/cat.png?a=1&b=2".into()),
            ..ContentBlock::default()
        };
        let parts = message(None, "", &[block], 10);
        assert_eq!(
            parts[0].html,
            "📎 <a href=\"https://cdn.example/cat.png?a=1&amp;b=2\">cat.png</a> (image, 2 KB)"
        );
        assert_eq!(message(None, " ", &[], 10)[0].plain, "(empty message)");
    }

    #[test]
    fn visible_length_ignores_tags_and_counts_entities_once() {
        assert_eq!(visible_len("<b>ab</b> &amp; <a href=\"x\">c</a>"), 6);
        assert_eq!(visible_len("😀"), 2);
        assert_eq!(visible_len("a & b"), 5);
    }

    fn assert_fits(parts: &[Part]) {
        for part in parts {
            assert!(
                visible_len(&part.html) <= TEXT_LIMIT,
                "{}",
                visible_len(&part.html)
            );
            assert!(visible_len(&part.html) > 0, "empty part {part:?}");
            assert!(utf16_len(&part.plain) <= TEXT_LIMIT);
        }
    }

    /// A reference link to a URL Telegram cannot link is expanded after every use: about 450
    /// source characters become about 12,000 rendered ones.
    pub(crate) fn growing_reference_links() -> String {
        let url = format!("ftp://files.example.org/{}", "deep/".repeat(57));
        let mut md = "[ref] ".repeat(40);
        md.push_str(&format!("\n\n[ref]: {url}"));
        md
    }

    /// An answer whose last part, once split, holds nothing but reference definitions.
    pub(crate) fn trailing_definitions() -> String {
        let prose = "Some words that cite a source [1] and another [2].\n\n".repeat(80);
        format!(
            "{prose}[1]: https://example.com/one\n[2]: https://example.com/two\n[3]: https://example.com/three"
        )
    }

    #[test]
    fn fit_is_decided_on_the_rendered_text() {
        let md = growing_reference_links();
        assert!(md.len() < 600, "{}", md.len());
        assert!(visible_len(&hub_bridge_sdk::text::markdown::to_telegram_html(&md)) > 12_000);
        let parts = message(Some(&ann()), &md, &[], 10);
        assert!(parts.len() > 1, "{parts:?}");
        assert_fits(&parts);
        let uses: usize = parts.iter().map(|p| p.plain.matches("[ref]").count()).sum();
        assert!(uses >= 40, "{uses}");
    }

    #[test]
    fn parts_that_render_to_nothing_are_dropped() {
        let md = trailing_definitions();
        let parts = message(Some(&ann()), &md, &[], 10);
        assert_fits(&parts);
        let cites: usize = parts
            .iter()
            .map(|p| p.plain.matches("cite a source").count())
            .sum();
        assert_eq!(cites, 80);
    }

    #[test]
    fn a_huge_message_is_cut_at_max_parts_with_a_note() {
        let md = "A line of an enormous answer.\n".repeat(100_000);
        let parts = message(Some(&ann()), &md, &[], 10);
        assert_eq!(parts.len(), 10);
        assert_fits(&parts);
        assert!(
            parts[9].html.contains("(message cut: "),
            "{:?}",
            parts[9].html
        );
        assert!(parts[9].html.ends_with("more characters not shown)"));
        assert_eq!(message(Some(&ann()), &md, &[], 2).len(), 2);
    }

    #[test]
    fn a_long_attachment_list_is_split_under_the_limit() {
        let blocks: Vec<ContentBlock> = (0..300)
            .map(|i| ContentBlock {
                kind: "file".into(),
                name: Some(format!("report-{i:03}-with-a-long-descriptive-name.pdf")),
                size: Some(1_000_000 + i),
                mime_type: None,
                url: Some(format!("https://cdn.example/files/{i}/report.pdf")),
                ..ContentBlock::default()
            })
            .collect();
        let parts = message(Some(&ann()), "Here are the files.", &blocks, 10);
        assert!(parts.len() >= 5, "{}", parts.len());
        assert_fits(&parts);
        let listed: usize = parts.iter().map(|p| p.plain.matches("📎").count()).sum();
        assert_eq!(listed, 300);
        // One line longer than a message on its own is split as plain text.
        let huge = ContentBlock {
            kind: "file".into(),
            name: Some("n".repeat(5000)),
            size: None,
            mime_type: None,
            url: None,
            ..ContentBlock::default()
        };
        let parts = message(None, "", &[huge], 10);
        assert!(parts.len() >= 2, "{parts:?}");
        assert_fits(&parts);
    }
}

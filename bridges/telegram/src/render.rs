//! How hub messages look on Telegram: the sender's header line, agent Markdown rendered to the
//! Bot API's HTML, attachments listed by name, and the split into parts of at most 4096 UTF-16
//! units as Telegram counts them (the visible text, after entity parsing). Every part carries a
//! plain-text twin, sent when Telegram refuses the HTML, so no message is ever lost to formatting.

use hub_bridge_sdk::event::ContentBlock;
use hub_bridge_sdk::text::markdown::{escape_html, to_plain_text, to_telegram_html};
use hub_bridge_sdk::text::{split, utf16_len, Unit};
use serde::{Deserialize, Serialize};

/// Telegram's limit on a message's visible text, in UTF-16 units.
pub const TEXT_LIMIT: usize = 4096;

/// Room kept below the limit when splitting Markdown, for what rendering adds (list bullets,
/// table separators); parts that still do not fit are split again with a smaller limit.
const SPLIT_MARGIN: usize = 64;

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

/// Renders a hub message into the parts to send, the first headed by `author`.
pub fn message(author: Option<&Author>, content: &str, blocks: &[ContentBlock]) -> Vec<Part> {
    let header = author.map(|author| (author.html(), author.plain()));
    let header_len = header.as_ref().map_or(0, |(_, plain)| utf16_len(plain) + 1);
    let mut limit = TEXT_LIMIT.saturating_sub(header_len + SPLIT_MARGIN);
    let mut bodies = render_bodies(content, limit);
    // Rendering normally shortens Markdown, but a list or table can grow a little: split tighter
    // until every part fits (or the limit gets silly, and Telegram's answer decides).
    while bodies
        .iter()
        .enumerate()
        .any(|(i, part)| visible_len(&part.html) + if i == 0 { header_len } else { 0 } > TEXT_LIMIT)
        && limit > 512
    {
        limit = limit * 9 / 10;
        bodies = render_bodies(content, limit);
    }

    let attachments = attachment_lines(blocks);
    if !attachments.is_empty() {
        let lines = Part {
            html: attachments
                .iter()
                .map(|line| line.html.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            plain: attachments
                .iter()
                .map(|line| line.plain.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let fits = bodies.last().is_some_and(|last| {
            let header = if bodies.len() == 1 { header_len } else { 0 };
            header + utf16_len(&last.plain) + 2 + utf16_len(&lines.plain) <= TEXT_LIMIT
        });
        match bodies.last_mut() {
            Some(last) if fits => {
                last.html = format!("{}\n\n{}", last.html, lines.html);
                last.plain = format!("{}\n\n{}", last.plain, lines.plain);
            }
            _ => bodies.push(lines),
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
    let parts = split(text, TEXT_LIMIT - SPLIT_MARGIN, Unit::Utf16);
    if parts.is_empty() {
        return vec![Part::text("(empty notice)")];
    }
    parts.iter().map(|part| Part::text(part)).collect()
}

fn render_bodies(content: &str, limit: usize) -> Vec<Part> {
    split(content, limit, Unit::Utf16)
        .iter()
        .map(|source| Part {
            html: to_telegram_html(source),
            plain: to_plain_text(source),
        })
        .filter(|part| !part.plain.trim().is_empty())
        .collect()
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

/// `1.5 MB`, `12 KB`, `800 B`.
pub fn human_size(bytes: u64) -> String {
    const KB: u64 = 1024;
    const MB: u64 = 1024 * 1024;
    if bytes >= MB {
        format!("{:.1} MB", bytes as f64 / MB as f64)
    } else if bytes >= KB {
        format!("{} KB", bytes.div_ceil(KB))
    } else {
        format!("{bytes} B")
    }
}

/// The length Telegram checks: the text after tags are removed and entities decoded, trimmed.
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
                        // Any entity decodes to one character; at most two UTF-16 units.
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
        let parts = message(Some(&ann()), "**hi** & <b>", &[]);
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
        let parts = message(Some(&ann()), &text, &[]);
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
        };
        let parts = message(None, "", &[block]);
        assert_eq!(
            parts[0].html,
            "📎 <a href=\"https://cdn.example/cat.png?a=1&amp;b=2\">cat.png</a> (image, 2 KB)"
        );
        assert_eq!(message(None, " ", &[])[0].plain, "(empty message)");
    }

    #[test]
    fn visible_length_ignores_tags_and_counts_entities_once() {
        assert_eq!(visible_len("<b>ab</b> &amp; <a href=\"x\">c</a>"), 6);
        assert_eq!(visible_len("😀"), 2);
        assert_eq!(visible_len("a & b"), 5);
    }
}

//! Text between Discord and the hub, as pure functions: mentions rendered as names, attachments as
//! content blocks, reaction emoji, and the parts an agent's message is posted as (split under
//! Discord's 2000 characters, headed by the bot-mode name or a webhook reply's quote).

use std::collections::HashMap;

use hub_bridge_sdk::event::ContentBlock;
use hub_bridge_sdk::text::discord::sanitize_webhook_username;
use hub_bridge_sdk::text::{split_capped, Unit};
use serenity::model::channel::{Attachment, ReactionType};

/// Discord's content limit, in characters.
pub const MAX_CHARS: usize = 2000;
/// How much of the parent a webhook reply quotes.
const QUOTE_CHARS: usize = 120;

/// Names for the ids a message's mentions refer to.
#[derive(Debug, Default)]
pub struct MentionNames<'a> {
    pub users: HashMap<u64, String>,
    pub roles: Option<&'a HashMap<u64, String>>,
    pub channels: HashMap<u64, String>,
}

/// Renders `<@123>`, `<@!123>`, `<@&123>`, `<#123>` and custom emoji `<:name:123>` as readable
/// text (`@Ann`, `@Moderators`, `#general`, `:name:`), so hub readers never see raw ids.
pub fn render_mentions(content: &str, names: &MentionNames<'_>) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let Some(end) = tail.find('>') else {
            out.push_str(tail);
            return out;
        };
        let inner = &tail[1..end];
        match render_token(inner, names) {
            Some(text) => {
                out.push_str(&text);
                rest = &tail[end + 1..];
            }
            None => {
                out.push('<');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn render_token(inner: &str, names: &MentionNames<'_>) -> Option<String> {
    // Ids of 0 or out of range are not mentions: they stay as the text they are.
    let id = crate::ids::parse;
    if let Some(role) = inner.strip_prefix("@&") {
        let role = id(role)?;
        let name = names
            .roles
            .and_then(|roles| roles.get(&role))
            .map_or("role", String::as_str);
        return Some(format!("@{name}"));
    }
    if let Some(user) = inner.strip_prefix('@') {
        let user = id(user.strip_prefix('!').unwrap_or(user))?;
        return Some(match names.users.get(&user) {
            Some(name) => format!("@{name}"),
            None => format!("@user-{user}"),
        });
    }
    if let Some(channel) = inner.strip_prefix('#') {
        let channel = id(channel)?;
        let name = names
            .channels
            .get(&channel)
            .map_or("channel", String::as_str);
        return Some(format!("#{name}"));
    }
    let emoji = inner.strip_prefix('a').unwrap_or(inner);
    if let Some(emoji) = emoji.strip_prefix(':') {
        let (name, emoji_id) = emoji.split_once(':')?;
        id(emoji_id)?;
        if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Some(format!(":{name}:"));
        }
    }
    None
}

/// A person's display name: the guild nickname, else the global display name, else the username.
pub fn display_name(nick: Option<&str>, global_name: Option<&str>, username: &str) -> String {
    [nick, global_name]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|name| !name.is_empty())
        .unwrap_or(username)
        .to_owned()
}

/// Attachments as hub content blocks (kind from the MIME type, with name, size, type and URL).
pub fn content_blocks(attachments: &[Attachment]) -> Option<Vec<ContentBlock>> {
    if attachments.is_empty() {
        return None;
    }
    let blocks = attachments
        .iter()
        .map(|attachment| {
            let mime = attachment.content_type.clone();
            ContentBlock {
                kind: block_kind(mime.as_deref()).to_owned(),
                name: Some(attachment.filename.clone()),
                size: Some(u64::from(attachment.size)),
                mime_type: mime,
                url: Some(attachment.url.clone()),
                width: attachment.width,
                height: attachment.height,
            }
        })
        .collect();
    Some(blocks)
}

/// The hub's two kinds: a picture, or a file (audio and video too, told apart by their type).
fn block_kind(mime: Option<&str>) -> &'static str {
    match mime.and_then(|m| m.split('/').next()) {
        Some("image") => ContentBlock::IMAGE,
        _ => ContentBlock::FILE,
    }
}

/// A reaction's emoji as the hub names it: the character itself, or `:name:` for a custom one.
pub fn hub_emoji(emoji: &ReactionType) -> String {
    match emoji {
        ReactionType::Unicode(text) => text.clone(),
        ReactionType::Custom { name, id, .. } => {
            format!(":{}:", name.clone().unwrap_or_else(|| id.to_string()))
        }
        // A future kind serenity does not know yet.
        _ => "?".to_owned(),
    }
}

/// Discord's longest webhook username, in characters.
const MAX_USERNAME_CHARS: usize = 80;

/// A relayed person's name as a webhook username. The relay engine names a person with their
/// platform (`Ada (Telegram)`, `Backend Architect (Telegram, not an agent)`: SPEC section 9); the
/// name is cut (with `…`) so that the whole, once Discord's username rules are applied
/// (`sanitize_webhook_username` may lengthen it), stays within 80 characters and the mark is never
/// the part that is cut.
pub fn person_username(marked: &str) -> String {
    let (name, suffix) = match marked.rfind(" (") {
        Some(at) if marked.ends_with(')') => marked.split_at(at),
        _ => (marked, ""),
    };
    let name = name.trim();
    let name = if name.is_empty() { "someone" } else { name };
    // `sanitize_webhook_username` cuts at 80 characters: the whole fits when the cut left the
    // (sanitised) mark at the end.
    let mark = sanitize_webhook_username(suffix.trim());
    let fits = |candidate: &str| {
        candidate.chars().count() <= MAX_USERNAME_CHARS
            && sanitize_webhook_username(candidate).ends_with(&mark)
    };
    let mut keep = name.chars().count();
    loop {
        let mut cut: String = name.chars().take(keep).collect();
        if keep < name.chars().count() {
            cut = format!("{}…", cut.trim_end());
        }
        let candidate = format!("{cut}{suffix}");
        if fits(&candidate) || keep == 0 {
            return sanitize_webhook_username(&candidate);
        }
        let excess = candidate.chars().count().saturating_sub(MAX_USERNAME_CHARS);
        keep = keep.saturating_sub(excess.max(1));
    }
}

/// The text of a hub message as posted on Discord: the content, then one line per content block
/// (as a link when it has a URL), so files from other platforms are not lost.
pub fn hub_text(content: &str, blocks: Option<&[ContentBlock]>) -> String {
    let mut text = content.to_owned();
    for block in blocks.unwrap_or_default() {
        let name = block.name.as_deref().unwrap_or(&block.kind);
        let line = match &block.url {
            Some(url) => format!("[{}: {name}](<{url}>)", block.kind),
            None => format!("[{}: {name}]", block.kind),
        };
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&line);
    }
    text
}

/// How the first part of a message is headed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// Webhook posts carry the sender as their username: nothing to add.
    None,
    /// Bot posts without a webhook: `**name**: ` before the text.
    Name(String),
    /// Text put before the first part as it is: a webhook reply's quote of the parent (webhooks
    /// cannot reply natively), or the header an edited message already had.
    Prefix(String),
}

/// What the first part starts with for `header`: nothing, the bot-mode `**name**: ` (on a line of
/// its own before a code fence), or the prefix as it is.
pub fn head(header: &Header, text: &str) -> String {
    match header {
        Header::None => String::new(),
        Header::Name(name) => {
            // A fence must start its own line to open a code block.
            let separator = if text.trim_start().starts_with("```") {
                "\n"
            } else {
                " "
            };
            format!("**{}**:{separator}", escape_markdown(name))
        }
        Header::Prefix(prefix) => prefix.clone(),
    }
}

/// Splits `text` into the parts posted on Discord, each at most [`MAX_CHARS`] characters with the
/// header on the first, never cutting inside a code block (the splitter closes and reopens it);
/// at most `max_parts` parts, the last ending with a note of how much was cut.
pub fn compose(header: &Header, text: &str, max_parts: usize) -> Vec<String> {
    let head = head(header, text);
    let budget = MAX_CHARS.saturating_sub(head.chars().count()).max(1);
    let mut parts = split_capped(text, budget, Unit::Chars, max_parts);
    if parts.is_empty() {
        // Nothing but whitespace (or a message with only a header): Discord rejects empty posts.
        parts.push(if head.is_empty() {
            "\u{200b}".to_owned()
        } else {
            String::new()
        });
    }
    if let Some(first) = parts.first_mut() {
        first.insert_str(0, &head);
    }
    parts
}

/// The quote a webhook reply starts with: who wrote the parent, a link to it, and its first line.
pub fn quote(author: &str, parent_content: &str, link: &str) -> String {
    let body = strip_quote(parent_content);
    let first_line = body.lines().map(str::trim).find(|l| !l.is_empty());
    let mut excerpt: String = first_line
        .unwrap_or("…")
        .chars()
        .take(QUOTE_CHARS)
        .collect();
    if first_line.is_some_and(|line| line.chars().count() > QUOTE_CHARS) || body.lines().count() > 1
    {
        excerpt.push('…');
    }
    format!(
        "> **{}** · [jump](<{link}>)\n> {}\n",
        escape_markdown(author),
        excerpt
    )
}

/// The text after the quote a reply starts with (so quoting a reply does not nest quotes).
pub fn strip_quote(content: &str) -> &str {
    let mut rest = content;
    while let Some(line_end) = rest.find('\n') {
        if !rest.starts_with("> ") {
            break;
        }
        rest = &rest[line_end + 1..];
    }
    rest
}

/// The header the bridge put before a posted first part, kept when the message is edited:
/// with a webhook, the reply quote [`quote`] writes (recognised by its exact shape, so an agent's
/// own leading `> ` quote is not mistaken for it); without one, the bot's `**name**: `.
pub fn posted_header(content: &str, webhook: bool) -> &str {
    if webhook {
        return reply_quote(content);
    }
    let Some(rest) = content.strip_prefix("**") else {
        return "";
    };
    // The name is escaped, so the first `**:` ends it.
    let Some(end) = rest.find("**:") else {
        return "";
    };
    let mut len = 2 + end + 3;
    if content[len..].starts_with([' ', '\n']) {
        len += 1;
    }
    &content[..len]
}

/// The two lines of a reply quote at the start of `content`, or `""`.
fn reply_quote(content: &str) -> &str {
    let Some((first, rest)) = content.split_once('\n') else {
        return "";
    };
    let ours =
        first.starts_with("> **") && first.contains("** · [jump](<") && first.ends_with(">)");
    let Some((second, _)) = rest.split_once('\n') else {
        return "";
    };
    if !ours || !second.starts_with("> ") {
        return "";
    }
    &content[..first.len() + second.len() + 2]
}

/// A link people can open to a Discord message.
pub fn message_link(guild: Option<u64>, channel: u64, message: u64) -> String {
    let guild = guild.map_or_else(|| "@me".to_owned(), |g| g.to_string());
    format!("https://discord.com/channels/{guild}/{channel}/{message}")
}

/// A thread's name from the message it starts on: its first line, at most 100 characters.
pub fn thread_name(parent_content: &str) -> String {
    let line = strip_quote(parent_content)
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default();
    let name: String = line.chars().take(100).collect();
    if name.trim().is_empty() {
        "Thread".to_owned()
    } else {
        name
    }
}

fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '_' | '~' | '`' | '|' | '\\' | '[' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(roles: &HashMap<u64, String>) -> MentionNames<'_> {
        MentionNames {
            users: HashMap::from([(1, "Ann".to_owned()), (2, "Bob".to_owned())]),
            roles: Some(roles),
            channels: HashMap::from([(7, "general".to_owned())]),
        }
    }

    #[test]
    fn mentions_render_as_names() {
        let roles = HashMap::from([(5, "Mods".to_owned())]);
        let names = names(&roles);
        assert_eq!(
            render_mentions("hi <@1> and <@!2>, <@&5> in <#7> <:party:99>", &names),
            "hi @Ann and @Bob, @Mods in #general :party:"
        );
        assert_eq!(render_mentions("<@3> <@&6>", &names), "@user-3 @role");
        assert_eq!(
            render_mentions("a < b > c <@x> <t:1:R> <", &names),
            "a < b > c <@x> <t:1:R> <"
        );
        assert_eq!(render_mentions("<a:dance:12>", &names), ":dance:");
    }

    #[test]
    fn display_name_prefers_nick_then_global_name() {
        assert_eq!(display_name(Some("Nick"), Some("Global"), "user"), "Nick");
        assert_eq!(display_name(None, Some("Global"), "user"), "Global");
        assert_eq!(display_name(Some(" "), None, "user"), "user");
    }

    #[test]
    fn bot_header_keeps_a_leading_fence_on_its_own_line() {
        let parts = compose(
            &Header::Name("A*gent".into()),
            "```rust\nfn x() {}\n```",
            10,
        );
        assert_eq!(parts, vec!["**A\\*gent**:\n```rust\nfn x() {}\n```"]);
        let parts = compose(&Header::Name("Agent".into()), "hello", 10);
        assert_eq!(parts, vec!["**Agent**: hello"]);
    }

    #[test]
    fn a_message_past_max_parts_is_cut_after_the_last_with_a_note() {
        let text = "word ".repeat(2_000);
        let parts = compose(&Header::Name("Agent".into()), &text, 2);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts.iter().all(|part| part.chars().count() <= MAX_CHARS));
        assert!(parts[1].contains("message cut"), "{}", parts[1]);
        assert_eq!(compose(&Header::None, "short", 1), vec!["short"]);
    }

    #[test]
    fn long_text_splits_under_the_limit_with_the_header_counted() {
        let text = "word ".repeat(1000);
        let quote = quote("Ann", "parent", "https://discord.com/channels/1/2/3");
        let parts = compose(&Header::Prefix(quote.clone()), &text, 10);
        assert!(parts.len() >= 3);
        assert!(parts[0].starts_with(&quote));
        for part in &parts {
            assert!(
                part.chars().count() <= MAX_CHARS,
                "{}",
                part.chars().count()
            );
        }
    }

    #[test]
    fn empty_text_still_posts_something() {
        assert_eq!(compose(&Header::None, "  ", 10), vec!["\u{200b}"]);
        assert_eq!(compose(&Header::Name("A".into()), "", 10), vec!["**A**: "]);
    }

    #[test]
    fn quotes_strip_nested_quotes_and_cut_long_lines() {
        let q = quote(
            "Ann",
            "> **Bob** · [jump](<x>)\n> old\nreal text\nmore",
            "L",
        );
        assert_eq!(q, "> **Ann** · [jump](<L>)\n> real text…\n");
        assert_eq!(posted_header(&format!("{q}body"), true), q);
        assert_eq!(strip_quote("no quote"), "no quote");
    }

    #[test]
    fn headers_are_found_for_edits() {
        assert_eq!(posted_header("**Agent**: hello", false), "**Agent**: ");
        assert_eq!(
            posted_header("**Agent**:\n```x\n```", false),
            "**Agent**:\n"
        );
        assert_eq!(posted_header("**Agent**: hello", true), "");
        assert_eq!(
            posted_header("> an agent's own quote\n> more\ntext", true),
            ""
        );
        assert_eq!(
            posted_header("> **A** · [jump](<L>)\n> y\nbody", true),
            "> **A** · [jump](<L>)\n> y\n"
        );
        assert_eq!(posted_header("plain **bold**: text", false), "");
    }

    #[test]
    fn hub_text_lists_content_blocks() {
        let blocks = vec![ContentBlock {
            kind: "image".into(),
            name: Some("cat.png".into()),
            size: Some(3),
            mime_type: None,
            url: Some("https://x/cat.png".into()),
            ..ContentBlock::default()
        }];
        assert_eq!(
            hub_text("look", Some(&blocks)),
            "look\n[image: cat.png](<https://x/cat.png>)"
        );
    }

    #[test]
    fn people_are_named_with_their_platform_and_marked_when_named_like_an_agent() {
        assert_eq!(person_username("Alice (Telegram)"), "Alice (Telegram)");
        assert_eq!(
            person_username("Backend Architect (Telegram, not an agent)"),
            "Backend Architect (Telegram, not an agent)"
        );
        assert_eq!(person_username("  (external)"), "someone (external)");
        let long = "discord ".repeat(20);
        for mark in ["(Discord)", "(Discord, not an agent)"] {
            let shown = person_username(&format!("{long} {mark}"));
            assert!(shown.chars().count() <= 80, "{shown}");
            let expected = if mark.contains("agent") {
                ", not an agent)"
            } else {
                "(Disc-ord)"
            };
            assert!(shown.ends_with(expected), "{shown}");
        }
    }

    #[test]
    fn a_long_content_block_list_is_split_under_the_limit() {
        let block = |n: usize| ContentBlock {
            kind: "file".into(),
            name: Some(format!("report-{n}.pdf")),
            size: Some(3),
            mime_type: None,
            url: Some(format!("https://files.example.org/{}/{n}", "x".repeat(80))),
            ..ContentBlock::default()
        };
        let one_huge = vec![ContentBlock {
            url: Some(format!("https://x/{}", "y".repeat(5000))),
            ..block(0)
        }];
        let many: Vec<ContentBlock> = (0..200).map(block).collect();
        for (content, blocks) in [
            ("see the files", &many),
            ("", &many),
            ("a huge link", &one_huge),
        ] {
            let text = hub_text(content, Some(blocks));
            for header in [Header::None, Header::Name("Backend Architect".into())] {
                let parts = compose(&header, &text, 10);
                assert!(
                    parts.len() > 1,
                    "{} chars in one part",
                    text.chars().count()
                );
                for part in &parts {
                    assert!(!part.trim().is_empty());
                    assert!(
                        part.chars().count() <= MAX_CHARS,
                        "{}",
                        part.chars().count()
                    );
                }
            }
        }
    }

    #[test]
    fn ids_of_0_or_out_of_range_stay_text() {
        let names = MentionNames::default();
        let text = "<#0> <@0> <@!0> <@&0> <#99999999999999999999999> <:x:0>";
        assert_eq!(render_mentions(text, &names), text);
    }
}

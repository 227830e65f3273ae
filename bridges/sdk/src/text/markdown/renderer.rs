//! The Markdown walker: the state of one rendering ([`Renderer`]) and how it maps each
//! pulldown-cmark event onto Telegram's tags: blocks and their separators, list markers and
//! indentation, quotes, code blocks written whole, inline styles without nested duplicates, and
//! links that Telegram would refuse shown as text.

use pulldown_cmark::{CodeBlockKind, Event, LinkType, Tag, TagEnd};

use super::{escape, push_escaped};

/// URL schemes Telegram accepts in `<a href>`; anything else (relative paths, `javascript:`) is
/// shown as text instead of becoming a link.
const LINK_SCHEMES: [&str; 4] = ["http://", "https://", "tg://", "mailto:"];
/// Whether `url` may become an `<a href>`: an allowed scheme, something after it, and no
/// whitespace or control characters Telegram would reject.
fn is_linkable(url: &str) -> bool {
    let scheme_ok = LINK_SCHEMES.iter().any(|scheme| {
        url.len() > scheme.len()
            && url
                .get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    });
    scheme_ok && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An inline element that is open, remembered so its end event undoes exactly what its start
/// event wrote.
enum Inline {
    /// Bold, italic or strikethrough; `opened` is false when an enclosing element already had
    /// the same style, so no nested duplicate tag was written.
    Style { style: Style, opened: bool },
    /// Literal text to write again at the end (the `~` of a single-tilde span).
    Literal(&'static str),
    /// A link or image: an `<a>` when `anchor`, otherwise text followed by the URL.
    Link {
        url: String,
        text_start: usize,
        anchor: bool,
    },
}

#[derive(Clone, Copy)]
enum Style {
    Bold,
    Italic,
    Strike,
}

impl Style {
    fn tags(self) -> (&'static str, &'static str) {
        match self {
            Self::Bold => ("<b>", "</b>"),
            Self::Italic => ("<i>", "</i>"),
            Self::Strike => ("<s>", "</s>"),
        }
    }
}

/// A code block being collected; it is written whole at its end.
struct CodeBlock {
    language: Option<String>,
    /// The fence's whole info string, shown when the block has no code (an agent's "```python"
    /// with nothing after it says something, and nothing is dropped).
    info: String,
    text: String,
}

/// The state of one rendering.
pub(super) struct Renderer {
    out: String,
    /// Closing tags of the elements open in `out`, innermost last.
    open: Vec<&'static str>,
    inline: Vec<Inline>,
    /// How many of each [`Style`] are open, so nested duplicates are not written.
    styles: [usize; 3],
    /// Open links (`<a>` written), inside which nothing may become a link or `<code>`.
    anchors: usize,
    /// Line breaks owed before the next block: 2 between paragraphs, 1 between list items.
    pending: usize,
    /// True when nothing has been written since the current container (the document, a list
    /// item, a quote) began, so its first block needs no separator.
    fresh: bool,
    /// The next number of each open list, `None` for bullet lists.
    lists: Vec<Option<u64>>,
    /// The width of the marker of each open list item, which indents its continuation lines.
    indents: Vec<usize>,
    quote_depth: usize,
    heading_bold: bool,
    code: Option<CodeBlock>,
    html: Option<String>,
    table_head_bold: bool,
    table_row: usize,
    table_cell: usize,
}

impl Default for Renderer {
    fn default() -> Self {
        Self {
            out: String::new(),
            open: Vec::new(),
            inline: Vec::new(),
            styles: [0; 3],
            anchors: 0,
            pending: 0,
            fresh: true,
            lists: Vec::new(),
            indents: Vec::new(),
            quote_depth: 0,
            heading_bold: false,
            code: None,
            html: None,
            table_head_bold: false,
            table_row: 0,
            table_cell: 0,
        }
    }
}

impl Renderer {
    pub(super) fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) => {
                if let Some(code) = &mut self.code {
                    code.text.push_str(&text);
                } else if let Some(html) = &mut self.html {
                    html.push_str(&text);
                } else {
                    self.text(&text);
                }
            }
            Event::Html(html) => match &mut self.html {
                Some(block) => block.push_str(&html),
                None => self.text(&html),
            },
            Event::InlineHtml(html) => self.text(&html),
            Event::Code(code) => {
                if self.anchors > 0 {
                    // Telegram cannot nest code in a link; keep the text.
                    self.text(&code);
                } else {
                    self.tag("<code>");
                    self.text(&code);
                    self.tag("</code>");
                }
            }
            Event::InlineMath(math) => self.text(&format!("${math}$")),
            Event::DisplayMath(math) => self.text(&format!("$${math}$$")),
            Event::FootnoteReference(label) => self.text(&format!("[^{label}]")),
            Event::SoftBreak | Event::HardBreak => self.newline(),
            Event::Rule => {
                self.block_start(true);
                self.text("———");
                self.pending = self.block_gap();
            }
            Event::TaskListMarker(done) => self.text(if done { "☑ " } else { "☐ " }),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph
            | Tag::DefinitionList
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition
            | Tag::MetadataBlock(_) => self.block_start(true),
            Tag::Heading { .. } => {
                self.block_start(true);
                self.heading_bold = self.styles[Style::Bold as usize] == 0;
                if self.heading_bold {
                    self.open_tag("<b>".to_owned(), "</b>");
                }
                self.styles[Style::Bold as usize] += 1;
            }
            Tag::BlockQuote(_) => self.start_quote(),
            Tag::CodeBlock(kind) => self.start_code_block(kind),
            Tag::HtmlBlock => self.html = Some(String::new()),
            Tag::List(first) => self.lists.push(first),
            Tag::Item => self.start_item(),
            Tag::FootnoteDefinition(label) => {
                self.block_start(true);
                self.text(&format!("[^{label}]: "));
            }
            Tag::Table(_) => {
                self.block_start(true);
                self.table_row = 0;
            }
            Tag::TableHead => {
                self.table_cell = 0;
                self.table_head_bold = self.styles[Style::Bold as usize] == 0;
                if self.table_head_bold {
                    self.open_tag("<b>".to_owned(), "</b>");
                }
                self.styles[Style::Bold as usize] += 1;
            }
            Tag::TableRow => {
                if self.table_row > 0 {
                    self.newline();
                }
                self.table_cell = 0;
            }
            Tag::TableCell => {
                if self.table_cell > 0 {
                    self.text(" | ");
                }
                self.table_cell += 1;
            }
            Tag::Emphasis => self.start_style(Style::Italic),
            Tag::Strong => self.start_style(Style::Bold),
            Tag::Strikethrough => self.start_style(Style::Strike),
            Tag::Subscript => self.start_literal("~"),
            Tag::Superscript => self.start_literal("^"),
            Tag::Link {
                link_type,
                dest_url,
                ..
            } => {
                let url = if link_type == LinkType::Email && !dest_url.starts_with("mailto:") {
                    format!("mailto:{dest_url}")
                } else {
                    dest_url.into_string()
                };
                self.start_link(url);
            }
            Tag::Image { dest_url, .. } => self.start_link(dest_url.into_string()),
        }
    }

    fn start_quote(&mut self) {
        self.quote_depth += 1;
        // Telegram cannot nest quotes; inner quotes just continue the outer one, and
        // their first block takes the separator.
        if self.quote_depth == 1 {
            self.block_start(false);
            self.open_tag("<blockquote>".to_owned(), "</blockquote>");
            self.fresh = true;
        }
    }

    /// Starts collecting a code block, whose language is the first word of a fence's info string.
    fn start_code_block(&mut self, kind: CodeBlockKind<'_>) {
        let info = match &kind {
            CodeBlockKind::Fenced(info) => info.trim().to_owned(),
            CodeBlockKind::Indented => String::new(),
        };
        let language = info
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
            .next()
            .filter(|l| !l.is_empty())
            .map(str::to_owned);
        self.code = Some(CodeBlock {
            language,
            info,
            text: String::new(),
        });
    }

    /// Starts a list item with its marker (`• `, or the next number of a numbered list), whose
    /// width indents the item's continuation lines.
    fn start_item(&mut self) {
        self.block_start(true);
        let marker = match self.lists.last_mut() {
            Some(Some(number)) => {
                let marker = format!("{number}. ");
                *number += 1;
                marker
            }
            _ => "• ".to_owned(),
        };
        self.text(&marker);
        self.indents.push(marker.chars().count());
        self.fresh = true;
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph
            | TagEnd::DefinitionList
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition
            | TagEnd::MetadataBlock(_)
            | TagEnd::FootnoteDefinition
            | TagEnd::Table => self.pending = self.block_gap(),
            TagEnd::Heading(_) => {
                self.styles[Style::Bold as usize] -= 1;
                if std::mem::take(&mut self.heading_bold) {
                    self.close_tag();
                }
                self.pending = self.block_gap();
            }
            TagEnd::BlockQuote(_) => {
                if self.quote_depth == 1 {
                    self.close_tag();
                }
                self.quote_depth = self.quote_depth.saturating_sub(1);
                self.pending = self.block_gap();
            }
            TagEnd::CodeBlock => {
                if let Some(code) = self.code.take() {
                    self.code_block(code);
                }
            }
            TagEnd::HtmlBlock => {
                if let Some(html) = self.html.take() {
                    let html = html.trim_end();
                    if !html.is_empty() {
                        self.block_start(true);
                        self.text(html);
                        self.pending = self.block_gap();
                    }
                }
            }
            TagEnd::List(_) => {
                self.lists.pop();
                self.pending = self.block_gap();
            }
            TagEnd::Item => {
                self.indents.pop();
                self.pending = 1;
            }
            TagEnd::TableHead => {
                self.styles[Style::Bold as usize] -= 1;
                if std::mem::take(&mut self.table_head_bold) {
                    self.close_tag();
                }
                self.table_row += 1;
            }
            TagEnd::TableRow => self.table_row += 1,
            TagEnd::TableCell => {}
            TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::Strikethrough
            | TagEnd::Subscript
            | TagEnd::Superscript
            | TagEnd::Link
            | TagEnd::Image => self.end_inline(),
        }
    }

    fn start_style(&mut self, style: Style) {
        let opened = self.styles[style as usize] == 0;
        if opened {
            let (open, close) = style.tags();
            self.open_tag(open.to_owned(), close);
        }
        self.styles[style as usize] += 1;
        self.inline.push(Inline::Style { style, opened });
    }

    fn start_literal(&mut self, marker: &'static str) {
        self.text(marker);
        self.inline.push(Inline::Literal(marker));
    }

    /// Starts a link or an image (whose alt text plays the part of the link text).
    fn start_link(&mut self, url: String) {
        // An image inside a link cannot be a second link; the outer link wins.
        let anchor = self.anchors == 0 && is_linkable(&url);
        if anchor {
            self.open_tag(format!("<a href=\"{}\">", escape(&url, true)), "</a>");
            self.anchors += 1;
        }
        let text_start = self.out.len();
        self.inline.push(Inline::Link {
            url,
            text_start,
            anchor,
        });
    }

    fn end_inline(&mut self) {
        match self.inline.pop() {
            Some(Inline::Style { style, opened }) => {
                self.styles[style as usize] -= 1;
                if opened {
                    self.close_tag();
                }
            }
            Some(Inline::Literal(marker)) => self.text(marker),
            Some(Inline::Link {
                url,
                text_start,
                anchor,
            }) => {
                let shown = &self.out[text_start..];
                let url_text = escape(&url, false);
                if shown.is_empty() {
                    // A link without text (or an image without alt text) shows its URL.
                    self.text(&url);
                } else if !anchor && self.anchors == 0 && shown != url_text {
                    // Not linkable: keep the destination visible after the text.
                    self.text(&format!(" ({url})"));
                }
                if anchor {
                    self.anchors -= 1;
                    self.close_tag();
                }
            }
            // Start and end events are balanced by the parser, so this cannot happen.
            None => {}
        }
    }

    fn code_block(&mut self, code: CodeBlock) {
        let text = code.text.trim_end();
        if text.trim().is_empty() {
            // No code: only the info string says anything, and it shows as text.
            if !code.info.is_empty() {
                self.block_start(true);
                self.text(&code.info);
                self.pending = self.block_gap();
            }
            return;
        }
        self.block_start(false);
        match &code.language {
            Some(language) => {
                let open = format!("<pre><code class=\"language-{}\">", escape(language, true));
                self.tag(&open);
                self.text(text);
                self.tag("</code></pre>");
            }
            None => {
                self.tag("<pre>");
                self.text(text);
                self.tag("</pre>");
            }
        }
        self.pending = self.block_gap();
    }

    /// The separator owed after a block: a blank line, or a single line break inside lists.
    fn block_gap(&self) -> usize {
        if self.lists.is_empty() {
            2
        } else {
            1
        }
    }

    /// Writes the separator a new block needs, indented to the enclosing list items when
    /// `indent` (code blocks and quotes start at the margin).
    fn block_start(&mut self, indent: bool) {
        if !self.fresh {
            for _ in 1..self.pending.max(1) {
                self.out.push('\n');
            }
            if indent {
                self.newline();
            } else {
                self.out.push('\n');
            }
        }
        self.pending = 0;
        self.fresh = false;
    }

    /// Writes a line break and the indentation of the open list items.
    fn newline(&mut self) {
        self.out.push('\n');
        let width: usize = self.indents.iter().sum();
        self.out.extend(std::iter::repeat_n(' ', width));
        self.fresh = false;
    }

    fn text(&mut self, text: &str) {
        push_escaped(&mut self.out, text, false);
        self.fresh = false;
    }

    /// Writes a self-contained piece of markup (an opening and closing pair is written by the
    /// same function, so it needs no entry in `open`).
    fn tag(&mut self, markup: &str) {
        self.out.push_str(markup);
        self.fresh = false;
    }

    fn open_tag(&mut self, markup: String, close: &'static str) {
        self.out.push_str(&markup);
        self.open.push(close);
        self.fresh = false;
    }

    fn close_tag(&mut self) {
        if let Some(close) = self.open.pop() {
            self.out.push_str(close);
        }
    }

    pub(super) fn finish(mut self) -> String {
        // The parser balances its events, so nothing should be left open; closing anyway keeps
        // the output well-formed whatever happens.
        if let Some(code) = self.code.take() {
            self.code_block(code);
        }
        while !self.open.is_empty() {
            self.close_tag();
        }
        // Only text can precede the end (a tag ends in `>`), so this cannot cut markup.
        let len = self.out.trim_end().len();
        self.out.truncate(len);
        self.out
    }
}

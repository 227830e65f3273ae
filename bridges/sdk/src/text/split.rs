//! Splitting of Markdown source into parts that each fit under a platform's message limit.
//! Parts break at the most natural boundary that fits (a blank line, then a line break, then
//! whitespace, then a character), and a fenced code block that has to be cut is closed at the
//! end of one part and reopened with the same fence and info string at the start of the next, so
//! every part renders on its own. The splitter only recognises fences and blank lines; it does
//! not parse the rest of the Markdown, which is rendered per part afterwards.

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
            Self::Utf16 => super::utf16_len(text),
            Self::Chars => text.chars().count(),
        }
    }

    fn char_len(self, c: char) -> usize {
        match self {
            Self::Utf16 => c.len_utf16(),
            Self::Chars => 1,
        }
    }
}

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

/// One part of a split, with the lengths (in bytes) of the fence lines the splitter added at
/// its start and end, so tests can tell the original content from the additions.
#[derive(Debug)]
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "only the tests tell original content from additions"
    )
)]
struct Piece {
    text: String,
    added_prefix: usize,
    added_suffix: usize,
}

impl Piece {
    /// Returns the part of the original text this piece carries.
    #[cfg(test)]
    fn body(&self) -> &str {
        &self.text[self.added_prefix..self.text.len() - self.added_suffix]
    }
}

/// The order of preference for cut positions; a lower level is always preferred.
#[derive(Clone, Copy)]
enum Level {
    Paragraph,
    Line,
    Word,
    Grapheme,
    Char,
    /// Any boundary, even one that would leave a part without content (only reached when a
    /// whitespace run is longer than the limit).
    Any,
}

const LEVELS: usize = Level::Any as usize + 1;

/// A fenced code block seen while scanning for a cut.
struct Fence<'a> {
    /// The opener line as written (without its line break), reused to reopen the block.
    opener: &'a str,
    /// The line that closes the block when a part ends inside it.
    closer: String,
    marker: char,
    count: usize,
    /// Byte offset of the end of the opener line.
    opener_end: usize,
    /// Whether the block can be closed and reopened within the limit.
    splittable: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Blank,
    Text,
    Open(usize),
    Code(usize),
    Close(usize),
}

struct Line {
    start: usize,
    /// Byte offset of the line break ending the line, or the end of the text.
    end: usize,
    kind: LineKind,
}

/// Where to cut: the part is `rest[..pos]` and, when `fence` is set, ends inside that block.
#[derive(Clone, Copy)]
struct Cut {
    pos: usize,
    fence: Option<usize>,
}

/// Splits text that does not fit into pieces; the heart of [`split`].
fn split_pieces(text: &str, limit: usize, unit: Unit) -> Vec<Piece> {
    let mut splitter = Splitter::new(text, limit, unit);
    std::iter::from_fn(|| splitter.next_piece()).collect()
}

/// Cuts pieces off the front of a text one at a time.
///
/// Each round looks only at a bounded window at the front of what is left (the longest prefix
/// that can fit, plus room to classify the lines around its end), and what is left is a slice of
/// the original text, never a copy: splitting costs time proportional to the text, however many
/// parts it makes and however long its lines are.
struct Splitter<'a> {
    /// The original text not yet in a piece.
    tail: &'a str,
    /// A reopening fence line and its line break, put before `tail` when the last piece ended
    /// inside a code block; empty otherwise.
    prefix: String,
    /// Whether that line is the original opener, carried over from a part that was skipped for
    /// holding nothing else (only matters for telling original content from additions).
    prefix_is_original: bool,
    limit: usize,
    unit: Unit,
}

impl<'a> Splitter<'a> {
    fn new(text: &'a str, limit: usize, unit: Unit) -> Self {
        // The first line keeps its indentation (it may be an indented code block); only whole
        // blank lines and trailing whitespace go.
        let trimmed = text.trim_start();
        let first = match text[..text.len() - trimmed.len()].rfind('\n') {
            Some(i) => &text[i + 1..],
            None => text,
        };
        Self {
            tail: first.trim_end(),
            prefix: String::new(),
            prefix_is_original: false,
            limit,
            unit,
        }
    }

    /// Whether nothing but whitespace is left.
    fn is_done(&self) -> bool {
        self.tail.trim_start().is_empty()
    }

    /// How many characters of the original text are not in a piece yet.
    fn remaining_chars(&self) -> usize {
        self.tail.chars().count()
    }

    fn next_piece(&mut self) -> Option<Piece> {
        let (limit, unit) = (self.limit, self.unit);
        loop {
            if self.is_done() {
                return None;
            }
            let added_prefix = self.prefix.len();
            let added = |prefix_is_original: bool| {
                if prefix_is_original {
                    0
                } else {
                    added_prefix
                }
            };
            // The window holds at most `limit` units (at most four bytes each); twice that
            // leaves room for the lines around its end, whose kind decides how good a cut is.
            let mut chunk_end = self.tail.len().min(
                limit
                    .saturating_mul(8)
                    .saturating_add(64)
                    .saturating_add(added_prefix),
            );
            while !self.tail.is_char_boundary(chunk_end) {
                chunk_end -= 1;
            }
            let whole = chunk_end == self.tail.len();
            let mut rest = String::with_capacity(added_prefix + chunk_end);
            rest.push_str(&self.prefix);
            rest.push_str(&self.tail[..chunk_end]);
            if whole && fits(&rest, limit, unit) {
                let piece = Piece {
                    text: rest,
                    added_prefix: added(self.prefix_is_original),
                    added_suffix: 0,
                };
                self.tail = "";
                self.prefix.clear();
                return Some(piece);
            }
            let (cut, fences) = find_cut(&rest, added_prefix, limit, unit);
            let body_end = rest[..cut.pos].trim_end().len();
            let fence = cut.fence.and_then(|i| fences.into_iter().nth(i));
            // A part with nothing but an opener line (or nothing at all) is not worth a message;
            // its opener travels on as the next part's reopening line.
            let content_from = fence.as_ref().map_or(added_prefix, |f| f.opener_end);
            let has_content = rest[content_from.min(body_end)..body_end]
                .chars()
                .any(|c| !c.is_whitespace());
            let piece = has_content.then(|| {
                let mut text = rest[..body_end].to_owned();
                let mut added_suffix = 0;
                if let Some(f) = &fence {
                    text.push('\n');
                    text.push_str(&f.closer);
                    added_suffix = 1 + f.closer.len();
                }
                Piece {
                    text,
                    added_prefix: added(self.prefix_is_original),
                    added_suffix,
                }
            });
            // Every cut lies past the reopening line (see `find_cut`), so it is in `tail`.
            self.tail = skip_blank_lines(&self.tail[cut.pos - added_prefix..]);
            match fence {
                Some(f) => {
                    // The opener is original text when no part showed it and it either comes
                    // from the original text or was already carried over as such.
                    let carried = f.opener_end > added_prefix || self.prefix_is_original;
                    self.prefix_is_original = !has_content && carried;
                    self.prefix = format!("{}\n", f.opener);
                }
                None => {
                    self.prefix.clear();
                    self.prefix_is_original = false;
                }
            }
            if piece.is_some() {
                return piece;
            }
        }
    }
}

/// Whether `text` is at most `limit` long, looking no further than the limit (the remaining
/// text can be far longer than one part).
fn fits(text: &str, limit: usize, unit: Unit) -> bool {
    let mut total = 0;
    text.chars().all(|c| {
        total += unit.char_len(c);
        total <= limit
    })
}

/// Drops the leading whitespace of `s`, except the indentation of its first non-blank line when
/// that line starts after a line break.
fn skip_blank_lines(s: &str) -> &str {
    let trimmed = s.trim_start();
    match s[..s.len() - trimmed.len()].rfind('\n') {
        Some(i) => &s[i + 1..],
        None => trimmed,
    }
}

/// Finds the best cut in `rest`, whose first `added_prefix` bytes are a reopening fence line
/// that must not be the only thing in the part. Also returns the fences seen, which the cut's
/// `fence` indexes.
fn find_cut(rest: &str, added_prefix: usize, limit: usize, unit: Unit) -> (Cut, Vec<Fence<'_>>) {
    // `units[i]` is the length of `rest[..i]`, for every byte offset up to the window end: the
    // largest prefix that fits at all. No cut can lie beyond it.
    let mut units = Vec::with_capacity(rest.len().min(limit.saturating_mul(4)) + 1);
    let mut total = 0;
    let mut window_end = rest.len();
    for (i, c) in rest.char_indices() {
        let width = unit.char_len(c);
        if total + width > limit {
            window_end = i;
            break;
        }
        units.extend(std::iter::repeat_n(total, c.len_utf8()));
        total += width;
    }
    units.push(total);

    let (lines, fences) = scan_lines(rest, window_end, limit, unit);
    let reserve: Vec<usize> = fences.iter().map(|f| 1 + unit.measure(&f.closer)).collect();
    // The code block a cut at the end of a line, or inside it, leaves open; `None` outside code
    // and for blocks that cannot be split.
    let open_after = |kind: LineKind| match kind {
        LineKind::Open(i) | LineKind::Code(i) if fences[i].splittable => Some(i),
        _ => None,
    };

    let mut best: [Option<Cut>; LEVELS] = [None; LEVELS];
    // Byte offset just past the last non-whitespace character before the position examined,
    // which is where the part would end once trimmed.
    let mut content_end = 0;
    // `trimmed_end` never exceeds `pos`, which is checked against the window before indexing.
    let mut consider = |level: Level, pos: usize, fence: Option<usize>, trimmed_end: usize| {
        if pos <= added_prefix || pos > window_end {
            return;
        }
        let cost = units[trimmed_end] + fence.map_or(0, |i| reserve[i]);
        if cost > limit {
            return;
        }
        let content_from = fence.map_or(added_prefix, |i| fences[i].opener_end);
        let cut = Some(Cut { pos, fence });
        if trimmed_end > content_from {
            best[level as usize] = cut;
        }
        best[Level::Any as usize] = cut;
    };

    for (n, line) in lines.iter().enumerate() {
        if line.start > window_end {
            break;
        }
        // Positions inside a fence line of a splittable block are never cut: that would break
        // the fence itself.
        let inside_allowed = match line.kind {
            LineKind::Open(i) | LineKind::Close(i) => !fences[i].splittable,
            _ => true,
        };
        let inside_fence = match line.kind {
            LineKind::Code(i) if fences[i].splittable => Some(i),
            _ => None,
        };
        let mut prev: Option<char> = None;
        let mut regional_run = 0;
        for (offset, c) in rest[line.start..line.end].char_indices() {
            let pos = line.start + offset;
            if pos > window_end {
                break;
            }
            if inside_allowed && offset > 0 {
                if c.is_whitespace() {
                    consider(Level::Word, pos, inside_fence, content_end);
                }
                if prev.is_some_and(|p| is_grapheme_break(p, c, regional_run)) {
                    consider(Level::Grapheme, pos, inside_fence, content_end);
                }
                consider(Level::Char, pos, inside_fence, content_end);
            }
            if !c.is_whitespace() {
                content_end = pos + c.len_utf8();
            }
            regional_run = if is_regional_indicator(c) {
                regional_run + 1
            } else {
                0
            };
            prev = Some(c);
        }
        let fence_after = open_after(line.kind);
        let next_kind = lines.get(n + 1).map(|l| l.kind);
        let block_edge = matches!(line.kind, LineKind::Blank | LineKind::Close(_))
            || matches!(next_kind, Some(LineKind::Blank | LineKind::Open(_)));
        let level = if fence_after.is_none() && block_edge {
            Level::Paragraph
        } else {
            Level::Line
        };
        if line.end < rest.len() {
            consider(level, line.end, fence_after, content_end);
        }
    }

    let cut = best.into_iter().flatten().next().unwrap_or_else(|| {
        // Nothing fits, not even one character after the reopening line: emit one character
        // anyway so that every round consumes input.
        let pos = rest[added_prefix..]
            .chars()
            .next()
            .map_or(rest.len(), |c| added_prefix + c.len_utf8());
        Cut { pos, fence: None }
    });
    (cut, fences)
}

/// Classifies the lines of `rest` that start at or before `window_end`, plus the one after,
/// tracking fenced code blocks.
fn scan_lines(
    rest: &str,
    window_end: usize,
    limit: usize,
    unit: Unit,
) -> (Vec<Line>, Vec<Fence<'_>>) {
    let mut lines = Vec::new();
    let mut fences: Vec<Fence<'_>> = Vec::new();
    let mut open: Option<usize> = None;
    let mut start = 0;
    while start < rest.len() {
        let end = rest[start..].find('\n').map_or(rest.len(), |i| start + i);
        let raw = &rest[start..end];
        let kind = match open {
            Some(i) if is_closer(raw, &fences[i]) => {
                open = None;
                LineKind::Close(i)
            }
            Some(i) => LineKind::Code(i),
            None => match parse_opener(raw, end, limit, unit) {
                Some(fence) => {
                    fences.push(fence);
                    open = Some(fences.len() - 1);
                    LineKind::Open(fences.len() - 1)
                }
                None if raw.trim().is_empty() => LineKind::Blank,
                None => LineKind::Text,
            },
        };
        lines.push(Line { start, end, kind });
        if start > window_end {
            break;
        }
        start = end + 1;
    }
    (lines, fences)
}

/// Recognises a code fence opener: three or more backticks or tildes after any indentation,
/// followed by an info string (which, for backtick fences, contains no backtick).
fn parse_opener(line: &str, line_end: usize, limit: usize, unit: Unit) -> Option<Fence<'_>> {
    let opener = line.trim_end();
    let body = opener.trim_start();
    let indent = &opener[..opener.len() - body.len()];
    let marker = body.chars().next().filter(|&c| c == '`' || c == '~')?;
    let count = body.chars().take_while(|&c| c == marker).count();
    if count < 3 || (marker == '`' && body[count..].contains('`')) {
        return None;
    }
    let closer = format!("{indent}{}", marker.to_string().repeat(count));
    // Closing and reopening costs the opener, the closer and two line breaks; a part must still
    // have room for one character (two UTF-16 units at most) besides them.
    let overhead = unit.measure(opener) + unit.measure(&closer) + 2;
    Some(Fence {
        opener,
        closer,
        marker,
        count,
        opener_end: line_end,
        splittable: overhead + 2 <= limit,
    })
}

/// Whether `line` closes `fence`: the same marker, at least as many times, and nothing else.
fn is_closer(line: &str, fence: &Fence<'_>) -> bool {
    let body = line.trim();
    let count = body.chars().take_while(|&c| c == fence.marker).count();
    count >= fence.count && count == body.chars().count()
}

fn is_regional_indicator(c: char) -> bool {
    matches!(c, '\u{1F1E6}'..='\u{1F1FF}')
}

/// A cheap approximation of extended grapheme cluster boundaries, enough to keep emoji
/// sequences (zero-width joiner sequences, skin tones, keycaps, tag flags), flags and combining
/// accents whole. `regional_run` is how many regional indicators end just before `next`.
fn is_grapheme_break(prev: char, next: char, regional_run: usize) -> bool {
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

#[cfg(test)]
mod tests {
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

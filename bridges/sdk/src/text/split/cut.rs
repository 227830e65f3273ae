//! Choosing where to cut: the levels of preference (paragraph, line, word, grapheme, character),
//! the classification of lines and fenced code blocks around the window's end, and the reserve
//! each cut inside a splittable block keeps for closing it.

use super::measure::{is_grapheme_break, is_regional_indicator, Unit};

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
pub(super) struct Fence<'a> {
    /// The opener line as written (without its line break), reused to reopen the block.
    pub(super) opener: &'a str,
    /// The line that closes the block when a part ends inside it.
    pub(super) closer: String,
    marker: char,
    count: usize,
    /// Byte offset of the end of the opener line.
    pub(super) opener_end: usize,
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
pub(super) struct Cut {
    pub(super) pos: usize,
    pub(super) fence: Option<usize>,
}

/// Finds the best cut in `rest`, whose first `added_prefix` bytes are a reopening fence line
/// that must not be the only thing in the part. Also returns the fences seen, which the cut's
/// `fence` indexes.
pub(super) fn find_cut(
    rest: &str,
    added_prefix: usize,
    limit: usize,
    unit: Unit,
) -> (Cut, Vec<Fence<'_>>) {
    let (units, window_end) = prefix_units(rest, limit, unit);
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
        consider_inside_line(
            rest,
            line,
            &fences,
            window_end,
            &mut content_end,
            &mut consider,
        );
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

/// The length of every prefix of `rest` that fits: `units[i]` is the length of `rest[..i]`, for
/// every byte offset up to the window end, which is returned with them. The window is the
/// largest prefix that fits at all; no cut can lie beyond it.
fn prefix_units(rest: &str, limit: usize, unit: Unit) -> (Vec<usize>, usize) {
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
    (units, window_end)
}

/// Offers `consider` the cuts inside `line` up to `window_end` (whitespace, grapheme and
/// character boundaries, never before the line's first character), and moves `content_end` past
/// every non-whitespace character it passes.
fn consider_inside_line(
    rest: &str,
    line: &Line,
    fences: &[Fence<'_>],
    window_end: usize,
    content_end: &mut usize,
    consider: &mut impl FnMut(Level, usize, Option<usize>, usize),
) {
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
                consider(Level::Word, pos, inside_fence, *content_end);
            }
            if prev.is_some_and(|p| is_grapheme_break(p, c, regional_run)) {
                consider(Level::Grapheme, pos, inside_fence, *content_end);
            }
            consider(Level::Char, pos, inside_fence, *content_end);
        }
        if !c.is_whitespace() {
            *content_end = pos + c.len_utf8();
        }
        regional_run = if is_regional_indicator(c) {
            regional_run + 1
        } else {
            0
        };
        prev = Some(c);
    }
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

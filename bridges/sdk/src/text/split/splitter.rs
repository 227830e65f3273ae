//! Cutting pieces off the front of a text one at a time: the [`Splitter`] and the [`Piece`] it
//! yields, which carries the fence lines it added so tests can tell original content from
//! additions. Where each cut falls is decided in `cut`.

use super::cut::find_cut;
use super::measure::{fits, Unit};

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
pub(super) struct Piece {
    pub(super) text: String,
    added_prefix: usize,
    added_suffix: usize,
}

impl Piece {
    /// Returns the part of the original text this piece carries.
    #[cfg(test)]
    pub(super) fn body(&self) -> &str {
        &self.text[self.added_prefix..self.text.len() - self.added_suffix]
    }
}

/// Splits text that does not fit into pieces; the heart of [`split`].
pub(super) fn split_pieces(text: &str, limit: usize, unit: Unit) -> Vec<Piece> {
    let mut splitter = Splitter::new(text, limit, unit);
    std::iter::from_fn(|| splitter.next_piece()).collect()
}

/// Cuts pieces off the front of a text one at a time.
///
/// Each round looks only at a bounded window at the front of what is left (the longest prefix
/// that can fit, plus room to classify the lines around its end), and what is left is a slice of
/// the original text, never a copy: splitting costs time proportional to the text, however many
/// parts it makes and however long its lines are.
pub(super) struct Splitter<'a> {
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
    pub(super) fn new(text: &'a str, limit: usize, unit: Unit) -> Self {
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
    pub(super) fn is_done(&self) -> bool {
        self.tail.trim_start().is_empty()
    }

    /// How many characters of the original text are not in a piece yet.
    pub(super) fn remaining_chars(&self) -> usize {
        self.tail.chars().count()
    }

    pub(super) fn next_piece(&mut self) -> Option<Piece> {
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

/// Drops the leading whitespace of `s`, except the indentation of its first non-blank line when
/// that line starts after a line break.
fn skip_blank_lines(s: &str) -> &str {
    let trimmed = s.trim_start();
    match s[..s.len() - trimmed.len()].rfind('\n') {
        Some(i) => &s[i + 1..],
        None => trimmed,
    }
}

//! Chunking long documents.

use serde::{Deserialize, Serialize};

/// Splits a document into overlapping chunks by **characters** (Unicode
/// scalar values, not tokens: about 4 characters make a token in English,
/// fewer in Romanian), preferring to cut at a paragraph break, then at the
/// end of a sentence, then between words.
///
/// Each chunk has at most `max_chars` characters; consecutive chunks share
/// about `overlap_chars` characters (rounded to whole words), so a sentence
/// cut in two is still whole in one of them. A text of at most `max_chars`
/// characters is one chunk.
///
/// ```
/// use annals::knowledge::Chunker;
///
/// let chunker = Chunker::new(60, 15);
/// let text = "The clinic opens at 8. It closes at 20 on weekdays.\n\nOn Saturdays it closes at 14. Sundays it is closed.";
/// let chunks = chunker.chunk(text);
/// assert!(chunks.len() >= 2);
/// assert!(chunks.iter().all(|c| c.chars().count() <= 60));
/// assert_eq!(chunks[0], "The clinic opens at 8. It closes at 20 on weekdays.");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunker {
    /// The longest chunk, in characters (at least 16).
    pub max_chars: usize,
    /// Characters shared by consecutive chunks (less than half of
    /// `max_chars`).
    pub overlap_chars: usize,
}

impl Default for Chunker {
    /// 1,000 characters (about 250 English tokens) with 150 of overlap.
    fn default() -> Self {
        Chunker {
            max_chars: 1_000,
            overlap_chars: 150,
        }
    }
}

impl Chunker {
    /// A chunker of at most `max_chars` characters per chunk (taken as at
    /// least 16) and `overlap_chars` of overlap (capped below half a chunk).
    pub fn new(max_chars: usize, overlap_chars: usize) -> Self {
        Chunker {
            max_chars,
            overlap_chars,
        }
    }

    fn limits(&self) -> (usize, usize) {
        let max = self.max_chars.max(16);
        (max, self.overlap_chars.min(max / 2 - 1))
    }

    /// The chunks of `text`, trimmed, none empty (an empty or blank text
    /// has none).
    pub fn chunk(&self, text: &str) -> Vec<String> {
        let (max, overlap) = self.limits();
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut start = skip_space(&chars, 0);
        while start < chars.len() {
            let hard_end = (start + max).min(chars.len());
            let end = if hard_end == chars.len() {
                hard_end
            } else {
                cut_point(&chars, start, hard_end)
            };
            let piece: String = chars[start..end].iter().collect();
            let piece = piece.trim();
            if !piece.is_empty() {
                out.push(piece.to_owned());
            }
            if end >= chars.len() {
                break;
            }
            // step back by the overlap, to the start of a word, but always
            // move forward
            let mut next = end.saturating_sub(overlap).max(start + 1);
            if overlap > 0 {
                while next > start + 1 && next < end && !chars[next - 1].is_whitespace() {
                    next += 1;
                }
            } else {
                next = end;
            }
            start = skip_space(&chars, next);
        }
        out
    }
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Where to end a chunk that starts at `start` and may run to `hard_end`
/// (exclusive): the last paragraph break, else sentence end, else space, in
/// the second half of the window; else `hard_end`.
fn cut_point(chars: &[char], start: usize, hard_end: usize) -> usize {
    let floor = start + (hard_end - start) / 2;
    let window = floor..hard_end;
    let paragraph = window
        .clone()
        .rev()
        .find(|&i| chars[i] == '\n' && (chars[i - 1] == '\n' || chars.get(i + 1) == Some(&'\n')));
    if let Some(i) = paragraph {
        return i;
    }
    let sentence = window
        .clone()
        .rev()
        .find(|&i| matches!(chars[i - 1], '.' | '!' | '?' | ';' | '…') && chars[i].is_whitespace());
    if let Some(i) = sentence {
        return i;
    }
    if let Some(i) = window.rev().find(|&i| chars[i].is_whitespace()) {
        return i;
    }
    hard_end
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_chunk_and_blank_is_none() {
        let c = Chunker::default();
        assert_eq!(c.chunk("  hello  "), vec!["hello"]);
        assert!(c.chunk(" \n ").is_empty());
    }

    #[test]
    fn chunks_respect_the_limit_overlap_and_cover_everything() {
        let words: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
        let text = words.join(" ");
        let c = Chunker::new(100, 30);
        let chunks = c.chunk(&text);
        assert!(chunks.len() > 10);
        for ch in &chunks {
            assert!(ch.chars().count() <= 100, "{ch}");
        }
        // every word appears, in order, and consecutive chunks overlap
        let mut seen = std::collections::BTreeSet::new();
        for ch in &chunks {
            for w in ch.split_whitespace() {
                seen.insert(w.to_owned());
            }
        }
        assert_eq!(seen.len(), 400);
        for pair in chunks.windows(2) {
            let last = pair[0].split_whitespace().last().unwrap();
            assert!(pair[1].split_whitespace().any(|w| w == last), "{pair:?}");
        }
    }

    #[test]
    fn no_word_is_cut_and_multibyte_is_safe() {
        let text = "ședință ".repeat(100);
        for ch in Chunker::new(50, 10).chunk(&text) {
            assert!(ch.split_whitespace().all(|w| w == "ședință"), "{ch}");
        }
        // one huge word: hard cuts, still progress
        let word = "x".repeat(100);
        let chunks = Chunker::new(40, 10).chunk(&word);
        assert!(chunks.len() >= 3);
        assert!(chunks.iter().all(|c| c.len() <= 40));
    }

    #[test]
    fn prefers_paragraphs_then_sentences() {
        let text = "First paragraph sentence one. Sentence two.\n\nSecond paragraph here.";
        let chunks = Chunker::new(50, 0).chunk(text);
        assert_eq!(chunks[0], "First paragraph sentence one. Sentence two.");
        let text = "Alpha beta gamma delta epsilon. Zeta eta theta iota kappa lambda mu";
        let chunks = Chunker::new(40, 0).chunk(text);
        assert_eq!(chunks[0], "Alpha beta gamma delta epsilon.");
        assert_eq!(chunks[1], "Zeta eta theta iota kappa lambda mu");
    }
}

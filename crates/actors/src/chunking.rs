//! Splitting a document into chunks: by paragraph first, then by size with
//! overlap, never inside a UTF-8 character and preferably at whitespace.

/// Chunk sizes, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkConfig {
    /// Largest chunk.
    pub max_chars: usize,
    /// Characters a size-split chunk repeats from the end of the previous one.
    pub overlap_chars: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            max_chars: 1000,
            overlap_chars: 150,
        }
    }
}

impl ChunkConfig {
    /// A configuration from optional settings, clamped to sane bounds (a chunk
    /// must fit in Vectorize's 10 KiB of metadata with room to spare).
    pub fn from_settings(max_chars: Option<usize>, overlap_chars: Option<usize>) -> Self {
        let d = Self::default();
        let max_chars = max_chars.unwrap_or(d.max_chars).clamp(100, 2000);
        let overlap_chars = overlap_chars.unwrap_or(d.overlap_chars).min(max_chars / 2);
        Self {
            max_chars,
            overlap_chars,
        }
    }
}

/// Splits `text` into chunks of at most `config.max_chars` characters.
///
/// Paragraphs (separated by blank lines) are packed together while they fit;
/// a paragraph longer than a chunk is cut by size, each piece starting
/// `overlap_chars` before the end of the previous one, so a sentence cut in
/// two is whole in at least one piece. Whitespace-only input gives no chunks.
pub fn chunk(text: &str, config: ChunkConfig) -> Vec<String> {
    let max = config.max_chars.max(1);
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for paragraph in paragraphs(text) {
        let chars = paragraph.chars().count();
        if chars > max {
            flush(&mut chunks, &mut current, &mut current_chars);
            chunks.extend(split_by_size(paragraph, max, config.overlap_chars));
            continue;
        }
        let joined = if current.is_empty() {
            chars
        } else {
            current_chars + 2 + chars
        };
        if joined > max {
            flush(&mut chunks, &mut current, &mut current_chars);
        }
        if !current.is_empty() {
            current.push_str("\n\n");
            current_chars += 2;
        }
        current.push_str(paragraph);
        current_chars += chars;
    }
    flush(&mut chunks, &mut current, &mut current_chars);
    chunks
}

fn flush(chunks: &mut Vec<String>, current: &mut String, chars: &mut usize) {
    if !current.is_empty() {
        chunks.push(std::mem::take(current));
        *chars = 0;
    }
}

/// Paragraphs: runs of lines separated by blank lines, trimmed.
fn paragraphs(text: &str) -> impl Iterator<Item = &str> {
    text.split("\n\n")
        .flat_map(|p| p.split("\r\n\r\n"))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Cuts `text` (longer than `max` characters) into overlapping pieces.
fn split_by_size(text: &str, max: usize, overlap: usize) -> Vec<String> {
    // Byte offsets of every character, plus the end, so cuts fall on boundaries.
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let total = bounds.len() - 1;
    let overlap = overlap.min(max / 2);
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < total {
        let mut end = (start + max).min(total);
        if end < total {
            // Prefer to cut after whitespace in the last fifth of the piece.
            let floor = start + max * 4 / 5;
            if let Some(ws) = (floor..end).rev().find(|&c| {
                text.get(bounds[c]..bounds[c + 1])
                    .is_some_and(|s| s.chars().all(char::is_whitespace))
            }) {
                end = ws + 1;
            }
        }
        let piece = text
            .get(bounds[start]..bounds[end])
            .unwrap_or_default()
            .trim();
        if !piece.is_empty() {
            pieces.push(piece.to_owned());
        }
        if end >= total {
            break;
        }
        start = end.saturating_sub(overlap).max(start + 1);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, overlap: usize) -> ChunkConfig {
        ChunkConfig {
            max_chars: max,
            overlap_chars: overlap,
        }
    }

    #[test]
    fn packs_paragraphs_that_fit() {
        let text = "one\n\ntwo\n\nthree";
        assert_eq!(chunk(text, cfg(100, 10)), vec!["one\n\ntwo\n\nthree"]);
        assert_eq!(chunk(text, cfg(8, 0)), vec!["one\n\ntwo", "three"]);
    }

    #[test]
    fn empty_and_whitespace_give_nothing() {
        assert!(chunk("", cfg(10, 2)).is_empty());
        assert!(chunk(" \n\n \t\n\n", cfg(10, 2)).is_empty());
    }

    #[test]
    fn long_paragraphs_split_with_overlap() {
        let text: String = (0..50).map(|i| format!("w{i:02} ")).collect(); // 200 chars
        let chunks = chunk(&text, cfg(60, 12));
        assert!(chunks.len() >= 4, "{chunks:?}");
        for c in &chunks {
            assert!(c.chars().count() <= 60, "{c:?}");
        }
        // Every word appears, and consecutive pieces share text.
        for i in 0..50 {
            let w = format!("w{i:02}");
            assert!(chunks.iter().any(|c| c.contains(&w)), "{w} lost");
        }
        for pair in chunks.windows(2) {
            let tail: String = pair[0]
                .chars()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            assert!(pair[1].contains(tail.trim()), "no overlap between {pair:?}");
        }
    }

    #[test]
    fn never_cuts_inside_a_character() {
        let text = "é".repeat(250) + "日本語".repeat(40).as_str() + &"🦀".repeat(90);
        let chunks = chunk(&text, cfg(100, 30));
        assert!(chunks.len() > 3);
        for c in &chunks {
            assert!(c.chars().count() <= 100);
        }
        assert!(chunks.last().is_some_and(|c| c.ends_with('🦀')));
    }

    #[test]
    fn settings_are_clamped() {
        assert_eq!(
            ChunkConfig::from_settings(Some(10), Some(500)),
            cfg(100, 50)
        );
        assert_eq!(
            ChunkConfig::from_settings(None, None),
            ChunkConfig::default()
        );
        assert_eq!(
            ChunkConfig::from_settings(Some(99_999), Some(10)),
            cfg(2000, 10)
        );
    }
}

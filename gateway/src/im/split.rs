//! Where a long answer is cut when it rolls over from one AI card to the next.
//!
//! A card holds at most `card_max_bytes` of text (the platform renders long cards blank or refuses them,
//! `shared/protocols/dingtalk.md` §6.4). [`cut_point`] picks the end of the first part: after the last
//! line break near the limit, else after the last space or CJK sentence mark there, else at the last
//! character boundary that does not split an emoji sequence. It depends only on the text up to the limit,
//! so a cut chosen while the answer is still streaming is the cut the whole answer gets.
//!
//! A platform may also refuse a card with more than so many markdown tables (Feishu: `11310`): a card then
//! also ends before the header line of its first table past the limit ([`table_cut`]), so every table
//! still renders, in the next card.
//!
//! A cut inside a fenced code block would leave one card's block unclosed and show the next card's code as
//! prose. So [`card_end`] and [`card_text`] close the block at the end of the card it is cut in and open it
//! again, with its fence line, at the top of the next; a markdown fallback that carries the rest of an
//! answer reopens it too.

/// A fence line longer than this reopens a block with its bare marker (its info string left out).
const MAX_FENCE_LINE: usize = 32;

/// Line and word breaks are looked for in the last `1 / BREAK_SEARCH_DIVISOR` of the window; further
/// back, a break would waste too much of the card.
const BREAK_SEARCH_DIVISOR: usize = 4;

/// The length in bytes of the first part of `text` when a part holds at most `max_bytes`: `text.len()`
/// when it all fits. Otherwise the cut is on a character boundary in `1..=max_bytes`, preferring, in the
/// last quarter of the window, the end of a line, then the end of a word or CJK clause. A `max_bytes`
/// smaller than the first character still cuts after that character, so callers always make progress.
fn cut_point(text: &str, max_bytes: usize) -> usize {
    if text.len() <= max_bytes {
        return text.len();
    }
    let limit = floor_char_boundary(text, max_bytes);
    if limit == 0 {
        return text.chars().next().map_or(0, char::len_utf8);
    }
    let search_from = limit - limit / BREAK_SEARCH_DIVISOR;
    let mut soft_break = None;
    for (at, c) in text[..limit].char_indices().rev() {
        if at < search_from {
            break;
        }
        let end = at + c.len_utf8();
        if c == '\n' {
            return end;
        }
        if soft_break.is_none() && (c.is_whitespace() || is_cjk_break(c)) {
            soft_break = Some(end);
        }
    }
    soft_break.unwrap_or_else(|| keep_sequences_whole(text, limit))
}

/// Where the card that shows `text` from byte `start` ends when the rest does not fit in `max_bytes`, or
/// holds more than `max_tables` markdown tables: `None` when it fits. The card's share is cut by
/// [`cut_point`], with room left for the fence line that reopens a code block open at `start`, and, when
/// the cut falls inside a code block, for the line that closes it (see [`card_text`]); or earlier, by
/// [`table_cut`]. Like `cut_point`, it depends only on the text up to `start + max_bytes`.
pub(crate) fn card_end(text: &str, start: usize, max_bytes: usize, max_tables: Option<usize>) -> Option<usize> {
    let part = text.get(start..)?;
    let room = max_bytes.saturating_sub(head(text, start, max_bytes).len());
    let tables = max_tables.and_then(|max| table_cut(text, start, start + room, max));
    if part.len() <= room {
        return tables;
    }
    let cut = cut_point(part, room);
    let cut = match fence_at(text, start + cut).and_then(|fence| fence.decoration(max_bytes)) {
        Some((_, closing)) => cut_point(part, room.saturating_sub(closing.len() + 1)),
        None => cut,
    };
    Some(tables.map_or(start + cut, |at| at.min(start + cut)))
}

/// Where the table after the first `max` of those that begin at or after byte `start` of `text` begins
/// (the start of its header line), counting only tables whose delimiter row ends, with its newline, by
/// byte `window`: `None` when there are no more than `max`. A table is a header line with a `|`, then a
/// delimiter row of as many cells, each hyphens with optional colons (`| --- | :-: |`), outside code
/// blocks. Only whole lines count, so a cut chosen while a row is still streaming in stays the cut.
/// `max` is at least 1, so the cut is always past `start`.
pub(crate) fn table_cut(text: &str, start: usize, window: usize, max: usize) -> Option<usize> {
    let window = floor_char_boundary(text, window);
    let mut fence: Option<Fence<'_>> = None;
    let mut header: Option<(usize, usize)> = None;
    let mut tables = 0;
    let mut at = 0;
    for line in text[..window].split_inclusive('\n') {
        let line_start = at;
        at += line.len();
        let Some(line) = line.strip_suffix('\n') else { break };
        if let Some(open) = &fence {
            if open.closed_by(line) {
                fence = None;
            }
            header = None;
            continue;
        }
        if let Some(opening) = Fence::parse(line) {
            fence = Some(opening);
            header = None;
            continue;
        }
        match (header, delimiter_cells(line)) {
            (Some((header_start, cells)), Some(n)) if n == cells && header_start >= start => {
                tables += 1;
                if tables > max.max(1) {
                    return Some(header_start);
                }
                header = None;
            }
            _ => header = line.contains('|').then(|| (line_start, row_cells(line))),
        }
    }
    None
}

/// The cells of a table row: split on `|`, less one leading and one trailing `|`.
fn row_cells(line: &str) -> usize {
    let line = line.trim();
    let line = line.strip_prefix('|').unwrap_or(line);
    let line = line.strip_suffix('|').unwrap_or(line);
    line.split('|').count()
}

/// How many cells `line` has if it is a table's delimiter row (`|---|:--:|`).
fn delimiter_cells(line: &str) -> Option<usize> {
    let trimmed = line.trim();
    if !trimmed.contains('-') || !(trimmed.contains('|') || trimmed.starts_with('-') || trimmed.starts_with(':')) {
        return None;
    }
    let inner = trimmed.strip_prefix('|').unwrap_or(trimmed);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let cell_ok = |cell: &str| {
        let cell = cell.trim();
        let cell = cell.strip_prefix(':').unwrap_or(cell);
        let cell = cell.strip_suffix(':').unwrap_or(cell);
        !cell.is_empty() && cell.bytes().all(|b| b == b'-')
    };
    inner.split('|').all(cell_ok).then(|| row_cells(trimmed))
}

/// What the card that shows `text` from byte `start` displays: its share (up to `end`, else to the end),
/// with the fence line of a code block open at `start` first, and, when `end` falls inside a code block,
/// a closing fence last, so that every card's markdown opens and closes its own blocks. Without them a
/// cut inside a block would leave one card's block unclosed and show the next card's code as prose.
pub(crate) fn card_text(text: &str, start: usize, end: Option<usize>, max_bytes: usize) -> String {
    let share = match end {
        Some(end) => text.get(start..end),
        None => text.get(start..),
    };
    // A `start` off the text's character boundaries (an answer that changed) shows all of it.
    let Some(share) = share else { return text.to_owned() };
    let mut shown = head(text, start, max_bytes);
    shown.push_str(share);
    if let Some((_, closing)) = end
        .and_then(|end| fence_at(text, end))
        .and_then(|fence| fence.decoration(max_bytes))
    {
        if !shown.ends_with('\n') {
            shown.push('\n');
        }
        shown.push_str(&closing);
    }
    shown
}

/// What closes a code block left open at the end of `text` (a newline and the fence), so that text added
/// after it (an apology for an answer cut short) is not shown as code; empty if none is open.
pub(crate) fn closing(text: &str) -> String {
    match fence_at(text, text.len()) {
        Some(fence) => format!("\n{}", fence.marker.to_string().repeat(fence.len)),
        None => String::new(),
    }
}

/// The line that reopens a code block open at `start`, with its newline; empty if none is open.
fn head(text: &str, start: usize, max_bytes: usize) -> String {
    match fence_at(text, start).and_then(|fence| fence.decoration(max_bytes)) {
        Some((opening, _)) => opening + "\n",
        None => String::new(),
    }
}

/// A fenced code block's opening line, as CommonMark reads one: at most three spaces, then three or more
/// backticks or tildes (backticks: no backtick in the info string after them).
#[derive(Debug, PartialEq)]
struct Fence<'a> {
    /// The opening line, without its indentation and trailing whitespace.
    line: &'a str,
    /// '`' or '~'.
    marker: char,
    /// How many markers open the block; it closes on a line of at least as many.
    len: usize,
}

impl<'a> Fence<'a> {
    /// `line` as a fence line, if it is one.
    fn parse(line: &'a str) -> Option<Self> {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let line = line[indent..].trim_end();
        let marker = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let len = line.len() - line.trim_start_matches(marker).len();
        let info = &line[len..];
        (indent <= 3 && len >= 3 && !(marker == '`' && info.contains('`'))).then_some(Self { line, marker, len })
    }

    /// Whether `line` closes this block.
    fn closed_by(&self, line: &str) -> bool {
        Fence::parse(line).is_some_and(|f| f.marker == self.marker && f.len >= self.len && f.line.len() == f.len)
    }

    /// The lines that reopen and close the block at a cut, if they take no more than a quarter of a card
    /// of `max_bytes` (a long info string is left out).
    fn decoration(&self, max_bytes: usize) -> Option<(String, String)> {
        let bare = self.marker.to_string().repeat(self.len);
        let opening = if self.line.len() <= MAX_FENCE_LINE {
            self.line.to_owned()
        } else {
            bare.clone()
        };
        (opening.len() + bare.len() + 2 <= max_bytes / 4).then_some((opening, bare))
    }
}

/// The code block open at byte `at` of `text`, reading its lines from the start (the line `at` falls in
/// counts as far as it goes).
fn fence_at(text: &str, at: usize) -> Option<Fence<'_>> {
    let mut open: Option<Fence<'_>> = None;
    for line in text.get(..at)?.split('\n') {
        match &open {
            Some(fence) if fence.closed_by(line) => open = None,
            Some(_) => {}
            None => open = Fence::parse(line),
        }
    }
    open
}

/// The largest character boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// CJK punctuation after which a line may break.
fn is_cjk_break(c: char) -> bool {
    matches!(
        c,
        '。' | '，' | '、' | '；' | '：' | '！' | '？' | '）' | '」' | '』' | '】' | '》'
    )
}

/// `at` moved back so it does not fall inside an emoji sequence (before a joiner, a variation selector,
/// a skin tone, a combining mark or keycap, after a zero-width joiner, or between the two halves of a
/// flag). Stays at `at` if the whole window is one sequence.
fn keep_sequences_whole(text: &str, at: usize) -> usize {
    let mut cut = at;
    while cut > 0 && splits_sequence(text, cut) {
        cut = floor_char_boundary(text, cut - 1);
    }
    if cut == 0 {
        at
    } else {
        cut
    }
}

/// Whether a cut at boundary `at` would split a multi-character symbol.
fn splits_sequence(text: &str, at: usize) -> bool {
    let (before, after) = text.split_at(at);
    let (Some(prev), Some(next)) = (before.chars().next_back(), after.chars().next()) else {
        return false;
    };
    if prev == '\u{200D}' || extends_previous(next) {
        return true;
    }
    // Regional indicators pair up into flags: a cut after an odd number of them splits a flag.
    is_regional_indicator(prev)
        && is_regional_indicator(next)
        && before.chars().rev().take_while(|c| is_regional_indicator(*c)).count() % 2 == 1
}

/// Characters that attach to the one before them.
fn extends_previous(c: char) -> bool {
    matches!(c,
        '\u{200D}'                      // zero-width joiner
        | '\u{FE00}'..='\u{FE0F}'       // variation selectors
        | '\u{1F3FB}'..='\u{1F3FF}'     // skin tones
        | '\u{0300}'..='\u{036F}'       // combining diacritics
        | '\u{20E3}'                    // combining keycap
        | '\u{E0020}'..='\u{E007F}'     // tag characters (subdivision flags)
    )
}

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cut `text` into parts of at most `max` bytes, as the connector does over a whole answer.
    fn parts(text: &str, max: usize) -> Vec<&str> {
        let mut rest = text;
        let mut parts = Vec::new();
        while !rest.is_empty() {
            let cut = cut_point(rest, max);
            assert!(cut > 0 && rest.is_char_boundary(cut));
            parts.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        parts
    }

    #[test]
    fn text_that_fits_is_one_part() {
        assert_eq!(cut_point("short answer", 100), 12);
        assert_eq!(cut_point("", 100), 0);
        assert_eq!(parts("exactly ten", 11), ["exactly ten"]);
    }

    #[test]
    fn prefers_a_line_break_then_a_space_near_the_end() {
        let text = "first line here\nsecond line with words";
        // A window of 24 bytes is searched from byte 18: the newline (byte 15) is too far back, so the
        // last space wins.
        assert_eq!(&text[..cut_point(text, 24)], "first line here\nsecond ");
        // Window of 18: the newline at byte 15 is within the last quarter (from byte 14).
        assert_eq!(&text[..cut_point(text, 18)], "first line here\n");
        assert_eq!(parts(text, 18).concat(), text);
    }

    #[test]
    fn without_a_break_it_cuts_at_the_limit() {
        let text = "a".repeat(30);
        assert_eq!(parts(&text, 8), ["aaaaaaaa", "aaaaaaaa", "aaaaaaaa", "aaaaaa"]);
    }

    #[test]
    fn chinese_text_is_cut_on_character_boundaries_and_after_clauses() {
        // 3 bytes per character and no spaces.
        let text = "今天天气很好我们去公园散步吧然后回家吃饭";
        for max in 3..=text.len() {
            let parts = parts(text, max);
            assert_eq!(parts.concat(), text);
            assert!(parts.iter().all(|p| p.len() <= max.max(3)), "{max}: {parts:?}");
        }
        assert_eq!(cut_point(text, 10), 9, "three characters fit in 10 bytes");
        let clauses = "今天天气很好，我们去公园散步。然后回家";
        assert_eq!(&clauses[..cut_point(clauses, 45)], "今天天气很好，我们去公园散步。");
    }

    #[test]
    fn emoji_sequences_stay_whole() {
        // A family: man ZWJ woman ZWJ girl (4 + 3 + 4 + 3 + 4 bytes).
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        let text = format!("ab{family}{family}");
        for max in 4..text.len() {
            let parts = parts(&text, max);
            assert_eq!(parts.concat(), text);
            if max >= 2 + family.len() {
                assert!(parts.iter().all(|p| p.len() <= max), "{max}: {parts:?}");
                assert!(
                    parts
                        .iter()
                        .all(|p| !p.starts_with('\u{200D}') && !p.ends_with('\u{200D}')),
                    "{max}: {parts:?}"
                );
            }
        }
        let thumbs = "ok\u{1F44D}\u{1F3FD}";
        assert_eq!(
            &thumbs[..cut_point(thumbs, 9)],
            "ok",
            "the skin tone stays with its thumb"
        );
        let flags = "x\u{1F1E8}\u{1F1F3}\u{1F1EF}\u{1F1F5}";
        assert_eq!(&flags[..cut_point(flags, 13)], "x\u{1F1E8}\u{1F1F3}", "flags are pairs");
        let keycap = "ab1\u{FE0F}\u{20E3}z";
        assert_eq!(cut_point(keycap, 7), 2, "the keycap stays with its digit");
    }

    #[test]
    fn fences_are_read_as_commonmark_reads_them() {
        let code = "intro\n```rust\nfn main() {}\n```\nafter";
        assert_eq!(fence_at(code, 6), None, "before the block");
        assert_eq!(fence_at(code, 14).map(|f| f.line), Some("```rust"));
        assert_eq!(fence_at(code, 27).map(|f| f.line), Some("```rust"), "inside");
        assert_eq!(fence_at(code, 31), None, "after the closing line");
        let nested = "````md\n```\ninner\n```\n````\nout";
        assert_eq!(
            fence_at(nested, 20).map(|f| f.len),
            Some(4),
            "a shorter fence does not close a longer one"
        );
        assert_eq!(fence_at(nested, nested.len()), None);
        assert_eq!(
            fence_at("~~~\nx\n```\ny", 11).map(|f| f.marker),
            Some('~'),
            "backticks do not close tildes"
        );
        assert_eq!(
            fence_at("    ```\ncode", 12),
            None,
            "four spaces make an indented code line, not a fence"
        );
        assert_eq!(fence_at("``inline``\nx", 12), None);
        assert_eq!(
            fence_at("```a`b\nx", 8),
            None,
            "a backtick fence's info string has no backtick"
        );
        assert_eq!(fence_at("```\ncode\n``` not a close\nmore", 28).map(|f| f.len), Some(3));
    }

    #[test]
    fn a_code_block_cut_between_cards_is_closed_and_reopened() {
        let code: String = (0..12).map(|i| format!("    let x{i} = compute({i});\n")).collect();
        let text = format!("Here is the code:\n```rust\nfn main() {{\n{code}}}\n```\nThat is all.");
        for max in [64, 80, 100, 128, 200] {
            let (mut start, mut cards, mut reopened) = (0, 0, 0);
            loop {
                let end = card_end(&text, start, max, None);
                let card = card_text(&text, start, end, max);
                let stop = end.unwrap_or(text.len());
                assert!(card.len() <= max, "{max}: {} bytes in {card:?}", card.len());
                let fences = card.lines().filter(|l| Fence::parse(l).is_some()).count();
                assert_eq!(fences % 2, 0, "{max}: the card closes the blocks it opens: {card:?}");
                // Without the fence lines added around it, the card holds its share of the answer.
                let mut share = card.as_str();
                if fence_at(&text, start).is_some() {
                    share = share
                        .strip_prefix("```rust\n")
                        .expect("a continuation reopens the block");
                    reopened += 1;
                }
                if end.is_some() && fence_at(&text, stop).is_some() {
                    share = share
                        .strip_suffix("```")
                        .expect("a card that ends in a block closes it");
                    if !text[start..stop].ends_with('\n') {
                        share = share.strip_suffix('\n').unwrap();
                    }
                }
                assert_eq!(share, &text[start..stop], "{max}");
                cards += 1;
                match end {
                    Some(end) => start = end,
                    None => break,
                }
            }
            assert!(cards >= 2 && reopened >= 1, "{max}: {cards} cards, {reopened} reopened");
        }
        assert_eq!(card_end("no code here", 0, 100, None), None);
        assert_eq!(card_text("no code here", 3, None, 100), "code here");
        assert_eq!(
            card_text("```\nx\u{4E2D}", 6, None, 100),
            "```\nx\u{4E2D}",
            "a start off the text shows it all"
        );
        assert_eq!(
            card_text("```\ncode", 4, None, 12),
            "code",
            "no room for fence lines in so small a card"
        );
        assert_eq!(closing("text\n~~~~ sh\necho"), "\n~~~~");
        assert_eq!(closing("```\nx\n```"), "");
    }

    #[test]
    fn a_card_ends_before_its_first_table_past_the_limit() {
        let table = |n: usize| format!("Table {n}:\n| a | b |\n|---|:-:|\n| {n} | x |\n");
        let text: String = (1..=5).map(table).collect::<Vec<_>>().join("\n");
        let third = text.find("Table 3").unwrap();
        // Two tables a card: the third table's header line (after its caption) begins the next card.
        let cut = card_end(&text, 0, 10_000, Some(2)).unwrap();
        assert_eq!(cut, third + "Table 3:\n".len());
        let next = card_end(&text, cut, 10_000, Some(2)).unwrap();
        assert_eq!(&text[next..next + 9], "| a | b |");
        assert_eq!(card_end(&text, next, 10_000, Some(2)), None);
        assert_eq!(card_end(&text, 0, 10_000, None), None);
        // The byte limit still cuts when it comes first.
        assert!(card_end(&text, 0, 40, Some(2)).unwrap() <= 40);
        // Tables in code blocks, rows without a delimiter row, and mismatched cell counts are not tables.
        let not_tables = "```\n| a | b |\n|---|---|\n```\n| a | b |\nno delimiter\n| a | b |\n|---|\n";
        assert_eq!(table_cut(not_tables, 0, not_tables.len(), 1), None);
        // A delimiter row past the window, or still streaming in, does not count yet.
        let streaming = format!("{}{}| c | d |\n|---|--", table(1), table(2));
        let second = streaming.find("Table 2").unwrap() + "Table 2:\n".len();
        let third_header = streaming.rfind("| c | d |").unwrap();
        assert_eq!(table_cut(&streaming, 0, streaming.len(), 1), Some(second));
        assert_eq!(table_cut(&streaming, 0, streaming.len(), 2), None);
        let whole = format!("{streaming}\n");
        assert_eq!(table_cut(&whole, 0, whole.len() - 1, 2), None);
        assert_eq!(table_cut(&whole, 0, whole.len(), 2), Some(third_header));
    }

    #[test]
    fn a_limit_below_one_character_still_makes_progress() {
        assert_eq!(cut_point("中文", 2), 3);
        assert_eq!(cut_point("\u{1F600}x", 1), 4);
    }
}

//! Where a long answer is cut when it rolls over from one AI card to the next.
//!
//! A card holds at most `card_max_bytes` of text (the platform renders long cards blank or refuses them,
//! `shared/protocols/dingtalk.md` §6.4). [`cut_point`] picks the end of the first part: after the last
//! line break near the limit, else after the last space or CJK sentence mark there, else at the last
//! character boundary that does not split an emoji sequence. It depends only on the text up to the limit,
//! so a cut chosen while the answer is still streaming is the cut the whole answer gets.

/// Line and word breaks are looked for in the last `1 / BREAK_SEARCH_DIVISOR` of the window; further
/// back, a break would waste too much of the card.
const BREAK_SEARCH_DIVISOR: usize = 4;

/// The length in bytes of the first part of `text` when a part holds at most `max_bytes`: `text.len()`
/// when it all fits. Otherwise the cut is on a character boundary in `1..=max_bytes`, preferring, in the
/// last quarter of the window, the end of a line, then the end of a word or CJK clause. A `max_bytes`
/// smaller than the first character still cuts after that character, so callers always make progress.
pub(crate) fn cut_point(text: &str, max_bytes: usize) -> usize {
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
    matches!(c, '。' | '，' | '、' | '；' | '：' | '！' | '？' | '）' | '」' | '』' | '】' | '》')
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
    let (Some(prev), Some(next)) = (before.chars().next_back(), after.chars().next()) else { return false };
    if prev == '\u{200D}' || extends_previous(next) {
        return true;
    }
    // Regional indicators pair up into flags: a cut after an odd number of them splits a flag.
    is_regional_indicator(prev) && is_regional_indicator(next) && before.chars().rev().take_while(|c| is_regional_indicator(*c)).count() % 2 == 1
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
                assert!(parts.iter().all(|p| !p.starts_with('\u{200D}') && !p.ends_with('\u{200D}')), "{max}: {parts:?}");
            }
        }
        let thumbs = "ok\u{1F44D}\u{1F3FD}";
        assert_eq!(&thumbs[..cut_point(thumbs, 9)], "ok", "the skin tone stays with its thumb");
        let flags = "x\u{1F1E8}\u{1F1F3}\u{1F1EF}\u{1F1F5}";
        assert_eq!(&flags[..cut_point(flags, 13)], "x\u{1F1E8}\u{1F1F3}", "flags are pairs");
        let keycap = "ab1\u{FE0F}\u{20E3}z";
        assert_eq!(cut_point(keycap, 7), 2, "the keycap stays with its digit");
    }

    #[test]
    fn a_limit_below_one_character_still_makes_progress() {
        assert_eq!(cut_point("中文", 2), 3);
        assert_eq!(cut_point("\u{1F600}x", 1), 4);
    }
}

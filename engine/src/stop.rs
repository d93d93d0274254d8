//! [`StopChecker`]: ends a stream on EOS, stop tokens, stop strings or `max_tokens`, and holds back text that
//! could be the start of a stop string so it is never streamed and then taken back.

use crate::{FinishReason, StopParams};

/// What to do after a token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// Keep generating; stream `text` now.
    Continue { text: String },
    /// Finish with `reason`; stream `text` as the last piece.
    Stop { text: String, reason: FinishReason },
}

/// Per-request stop state.
#[derive(Debug)]
pub(crate) struct StopChecker {
    params: StopParams,
    eos: Vec<u32>,
    /// Text received but not yet streamed (may be the start of a stop string).
    held: String,
    /// Longest stop string in bytes.
    longest: usize,
    generated: usize,
}

impl StopChecker {
    pub(crate) fn new(params: StopParams, eos: &[u32]) -> Self {
        let longest = params.stop_strings.iter().map(String::len).max().unwrap_or(0);
        Self {
            params,
            eos: eos.to_vec(),
            held: String::new(),
            longest,
            generated: 0,
        }
    }

    /// Whether `token` ends generation by itself (its text is then not streamed).
    pub(crate) fn is_stop_token(&self, token: u32) -> bool {
        (!self.params.ignore_eos && self.eos.contains(&token)) || self.params.stop_token_ids.contains(&token)
    }

    /// Account for a generated `token` whose decoded text is `text`.
    pub(crate) fn push(&mut self, token: u32, text: &str) -> StopOutcome {
        self.generated += 1;
        if self.is_stop_token(token) {
            return StopOutcome::Stop {
                text: std::mem::take(&mut self.held),
                reason: FinishReason::Stop,
            };
        }
        self.held.push_str(text);
        if let Some(at) = self
            .params
            .stop_strings
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(at);
            return StopOutcome::Stop {
                text: std::mem::take(&mut self.held),
                reason: FinishReason::Stop,
            };
        }
        if self.generated >= self.params.max_tokens {
            return StopOutcome::Stop {
                text: std::mem::take(&mut self.held),
                reason: FinishReason::Length,
            };
        }
        // Stream all but the tail that could still become a stop string.
        let mut keep_from = self.held.len().saturating_sub(self.longest.saturating_sub(1));
        while !self.held.is_char_boundary(keep_from) {
            keep_from -= 1;
        }
        let text = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopOutcome::Continue { text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(stops: &[&str], max_tokens: usize) -> StopChecker {
        let params = StopParams {
            max_tokens,
            stop_strings: stops.iter().map(|s| s.to_string()).collect(),
            ..StopParams::default()
        };
        StopChecker::new(params, &[99])
    }

    fn text(o: &StopOutcome) -> &str {
        match o {
            StopOutcome::Continue { text } | StopOutcome::Stop { text, .. } => text,
        }
    }

    #[test]
    fn a_stop_string_split_over_tokens_is_never_streamed() {
        let mut c = checker(&["END"], 100);
        let outs: Vec<StopOutcome> = ["Hello E", "N", "D more"]
            .iter()
            .enumerate()
            .map(|(i, t)| c.push(i as u32, t))
            .collect();
        let streamed: String = outs.iter().map(text).collect();
        assert_eq!(streamed, "Hello ");
        assert_eq!(
            outs[2],
            StopOutcome::Stop {
                text: String::new(),
                reason: FinishReason::Stop
            }
        );
    }

    #[test]
    fn eos_max_tokens_and_ignore_eos() {
        let mut c = checker(&[], 100);
        assert_eq!(
            c.push(99, "</s>"),
            StopOutcome::Stop {
                text: String::new(),
                reason: FinishReason::Stop
            }
        );
        let mut c = checker(&[], 2);
        assert_eq!(c.push(1, "a"), StopOutcome::Continue { text: "a".into() });
        assert_eq!(
            c.push(2, "b"),
            StopOutcome::Stop {
                text: "b".into(),
                reason: FinishReason::Length
            }
        );
        let mut c = StopChecker::new(
            StopParams {
                ignore_eos: true,
                ..StopParams::default()
            },
            &[99],
        );
        assert!(matches!(c.push(99, "x"), StopOutcome::Continue { .. }));
    }

    #[test]
    fn held_text_respects_utf8_boundaries() {
        let mut c = checker(&["停止吧"], 3);
        // 9 bytes held: the 8-byte tail that could start "停止吧" is kept, and "你" alone is not whole bytes.
        assert_eq!(text(&c.push(1, "你好停")), "");
        assert_eq!(text(&c.push(2, "了")), "你");
        assert_eq!(
            c.push(3, "!"),
            StopOutcome::Stop {
                text: "好停了!".into(),
                reason: FinishReason::Length
            }
        );
    }
}

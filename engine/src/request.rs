//! What goes into the engine (a [`GenerateRequest`]) and what comes out of it (a stream of [`Event`]s).
//!
//! These are engine-owned types: no candle, no HTTP, no serde. The gateway converts its wire DTOs into them
//! at the edge and back.

use std::time::Duration;

use crate::{EngineError, Grammar};

/// One generation request: prompt token ids plus how to sample and when to stop.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids, already tokenized (and chat-templated) by the caller, off the engine thread.
    pub prompt: Vec<u32>,
    /// How to pick each next token.
    pub sampling: SamplingParams,
    /// When to stop.
    pub stop: StopParams,
    /// Return the log-probability of each sampled token and of this many top alternatives (at most 20).
    pub logprobs: Option<usize>,
    /// Constrain the output to this grammar ([`crate::EngineHandle::compile_grammar`]): each step, tokens it
    /// does not allow are masked out before sampling. The output is then always a prefix of a valid document,
    /// a whole one unless `max_tokens` (finish reason `Length`) or a stop string cut it.
    pub grammar: Option<Grammar>,
}

impl GenerateRequest {
    /// A greedy request for `max_tokens` tokens, stopping on EOS.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            sampling: SamplingParams::greedy(),
            stop: StopParams {
                max_tokens,
                ..StopParams::default()
            },
            logprobs: None,
            grammar: None,
        }
    }
}

/// Sampling settings, with the meaning OpenAI, vLLM and llama.cpp give them.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax). Valid range 0..=100.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set whose probability reaches `top_p`. 1.0 disables. Range (0, 1].
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` × the top probability. 0 disables. Range [0, 1].
    pub min_p: f32,
    /// Multiplicative penalty on logits of tokens seen in prompt or output (llama.cpp/HF style). 1.0 disables.
    /// Range (0, 10].
    pub repetition_penalty: f32,
    /// Additive penalty (OpenAI style) on tokens already generated. Range [-2, 2].
    pub presence_penalty: f32,
    /// Additive penalty (OpenAI style) proportional to how often a token was generated. Range [-2, 2].
    pub frequency_penalty: f32,
    /// Seed for the per-request RNG; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl SamplingParams {
    /// Argmax decoding with no penalties: deterministic, used by tests and benchmarks.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl Default for SamplingParams {
    /// OpenAI's defaults: temperature 1, no truncation, no penalties.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            ..Self::greedy()
        }
    }
}

/// When a generation ends (besides cancellation).
#[derive(Debug, Clone, PartialEq)]
pub struct StopParams {
    /// Generate at most this many tokens. Must be at least 1.
    pub max_tokens: usize,
    /// Stop when the output text contains any of these; the stop string itself is not returned.
    pub stop_strings: Vec<String>,
    /// Extra token ids that end generation like EOS.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past EOS (benchmarks use this, as with vLLM and llama.cpp).
    pub ignore_eos: bool,
}

impl Default for StopParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// One item of a request's output stream. A stream always ends with exactly one `Finished` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    /// New output: the text delta (never half a UTF-8 character; may be empty while a character is
    /// incomplete or a possible stop string is held back) and the token(s) it came from.
    Token(TokenChunk),
    /// Generation ended normally.
    Finished(Completion),
    /// Generation failed; nothing more follows.
    Error(EngineError),
}

/// A piece of streamed output.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenChunk {
    /// Text to append to what was already streamed.
    pub text: String,
    /// The sampled token id.
    pub token_id: u32,
    /// Log-probability details, when the request asked for them.
    pub logprob: Option<TokenLogprob>,
}

/// Log-probability of a sampled token and its top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The sampled token's id.
    pub token_id: u32,
    /// Its log-probability under the model's (unpenalised, temperature-1) distribution.
    pub logprob: f32,
    /// The most likely alternatives, best first: (token id, log-probability).
    pub top: Vec<(u32, f32)>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string/token was produced.
    Stop,
    /// `max_tokens` was reached, or the context window is full.
    Length,
}

/// The end of a request: reason, token counts and timings.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Why it ended.
    pub reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings measured by the engine.
    pub timings: Timings,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Of those, how many were served from the prefix cache instead of computed.
    pub cached_prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// Per-request timings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Time spent waiting in the queue before the first step that included the request.
    pub queue: Duration,
    /// Time from submission to the first generated token.
    pub time_to_first_token: Duration,
    /// Time from the first to the last generated token.
    pub decode: Duration,
}

impl Timings {
    /// Decode speed after the first token, in tokens per second (0 when fewer than two tokens).
    pub fn decode_tokens_per_second(&self, completion_tokens: usize) -> f64 {
        let secs = self.decode.as_secs_f64();
        if completion_tokens < 2 || secs == 0.0 {
            0.0
        } else {
            (completion_tokens - 1) as f64 / secs
        }
    }
}

/// Check sampling and stop settings; the error names the parameter, the value and the allowed range.
pub fn validate(sampling: &SamplingParams, stop: &StopParams) -> Result<(), EngineError> {
    fn check(ok: bool, name: &'static str, value: String, expected: &'static str) -> Result<(), EngineError> {
        if ok {
            Ok(())
        } else {
            Err(EngineError::InvalidParameter { name, value, expected })
        }
    }
    let s = sampling;
    check(
        s.temperature.is_finite() && (0.0..=100.0).contains(&s.temperature),
        "temperature",
        s.temperature.to_string(),
        "a number in [0, 100]",
    )?;
    check(
        s.top_p.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0,
        "top_p",
        s.top_p.to_string(),
        "a number in (0, 1]",
    )?;
    check(
        s.min_p.is_finite() && (0.0..=1.0).contains(&s.min_p),
        "min_p",
        s.min_p.to_string(),
        "a number in [0, 1]",
    )?;
    check(s.top_k != Some(0), "top_k", "0".into(), "at least 1, or absent")?;
    check(
        s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0 && s.repetition_penalty <= 10.0,
        "repetition_penalty",
        s.repetition_penalty.to_string(),
        "a number in (0, 10]",
    )?;
    check(
        s.presence_penalty.is_finite() && (-2.0..=2.0).contains(&s.presence_penalty),
        "presence_penalty",
        s.presence_penalty.to_string(),
        "a number in [-2, 2]",
    )?;
    check(
        s.frequency_penalty.is_finite() && (-2.0..=2.0).contains(&s.frequency_penalty),
        "frequency_penalty",
        s.frequency_penalty.to_string(),
        "a number in [-2, 2]",
    )?;
    check(
        stop.max_tokens >= 1,
        "max_tokens",
        stop.max_tokens.to_string(),
        "at least 1",
    )?;
    check(
        stop.stop_strings.len() <= 16,
        "stop",
        format!("{} strings", stop.stop_strings.len()),
        "at most 16 strings",
    )?;
    check(
        stop.stop_strings.iter().all(|s| !s.is_empty() && s.len() <= 256),
        "stop",
        "an empty or over-long string".into(),
        "non-empty strings of at most 256 bytes",
    )?;
    Ok(())
}

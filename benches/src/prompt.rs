//! Deterministic benchmark prompts of an exact token count.
//!
//! Every prompt is a fixed English paragraph repeated until it is long enough, tokenized with the model's own
//! tokenizer and cut to exactly `n` tokens. Each prompt starts with "Request {salt}." so that no two requests
//! of a run share their first tokens: neither engine can serve one request's prompt from another's cache.
//! Both engines receive the same token ids (llama.cpp's `/completion` accepts a token array as the prompt and
//! adds no BOS to it), so they process identical inputs.

use anyhow::{bail, Context, Result};

/// The opening of "Alice's Adventures in Wonderland" (Lewis Carroll, 1865; public domain).
const PARAGRAPH: &str = "Alice was beginning to get very tired of sitting by her sister on the bank, and of \
having nothing to do: once or twice she had peeped into the book her sister was reading, but it had no \
pictures or conversations in it, and what is the use of a book, thought Alice, without pictures or \
conversations? So she was considering in her own mind (as well as she could, for the hot day made her feel \
very sleepy and stupid), whether the pleasure of making a daisy-chain would be worth the trouble of getting up \
and picking the daisies, when suddenly a White Rabbit with pink eyes ran close by her. ";

/// A prompt of exactly `n` token ids, different for each `salt`.
pub fn prompt_tokens(tokenizer: &engine::Tokenizer, n: usize, salt: usize) -> Result<Vec<u32>> {
    if n == 0 {
        bail!("the prompt must have at least one token");
    }
    // English prose is about 1.3 tokens per word; start with enough repetitions and double if short.
    let mut repeats = n / 80 + 1;
    loop {
        let text = format!("Request {salt}. {}", PARAGRAPH.repeat(repeats));
        let mut ids = tokenizer
            .encode(&text, true)
            .with_context(|| format!("tokenizing a benchmark prompt of {} characters", text.len()))?;
        if ids.len() >= n {
            ids.truncate(n);
            return Ok(ids);
        }
        repeats *= 2;
    }
}

/// All prompts of one benchmark run, made up front so that both engines get the same ones.
pub struct Workload {
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens to generate in decode and aggregate runs.
    pub gen_tokens: usize,
    /// A short prompt that warms caches and thread pools before anything is measured.
    pub warmup: Vec<u32>,
    /// One prompt per repetition of the single-stream prefill measurement.
    pub prefill: Vec<Vec<u32>>,
    /// One prompt per repetition of the single-stream decode measurement.
    pub decode: Vec<Vec<u32>>,
    /// Per concurrency level: per repetition, one prompt per stream.
    pub aggregate: Vec<(usize, Vec<Vec<Vec<u32>>>)>,
}

/// What a [`Workload`] is made of.
pub struct WorkloadConfig {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub repeat: usize,
    pub concurrency: Vec<usize>,
}

impl Workload {
    /// Tokenize every prompt of the run; salts are unique across the whole run.
    pub fn new(tokenizer: &engine::Tokenizer, config: &WorkloadConfig) -> Result<Self> {
        let n = config.prompt_tokens;
        let mut salt = 0;
        let mut next = || -> Result<Vec<u32>> {
            salt += 1;
            prompt_tokens(tokenizer, n, salt)
        };
        let warmup = next()?.into_iter().take(16).collect();
        let prefill = (0..config.repeat).map(|_| next()).collect::<Result<_>>()?;
        let decode = (0..config.repeat).map(|_| next()).collect::<Result<_>>()?;
        let mut aggregate = Vec::new();
        for &c in &config.concurrency {
            let runs = (0..config.repeat)
                .map(|_| (0..c).map(|_| next()).collect::<Result<Vec<_>>>())
                .collect::<Result<_>>()?;
            aggregate.push((c, runs));
        }
        Ok(Self {
            prompt_tokens: n,
            gen_tokens: config.gen_tokens,
            warmup,
            prefill,
            decode,
            aggregate,
        })
    }
}

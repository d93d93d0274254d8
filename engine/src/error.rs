//! The engine's error type. Expected conditions (overload, context too long, bad parameters) are variants
//! the gateway maps to HTTP statuses; internal failures carry their cause for the log, not for clients.

/// Everything that can go wrong when submitting to or running the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The waiting queue is full; try again later (HTTP 429).
    #[error("the server is overloaded: {waiting} requests are already waiting (limit {limit})")]
    Overloaded { waiting: usize, limit: usize },
    /// Prompt plus at least one generated token does not fit the context window (HTTP 400).
    #[error("the prompt has {prompt_tokens} tokens, but the context window is {context_length} tokens")]
    ContextTooLong {
        prompt_tokens: usize,
        context_length: usize,
    },
    /// The sequence needs more KV-cache positions than the whole pool holds, so it can never run, even alone
    /// (HTTP 400). `Engine::load` caps the context at the pool's size, so this reports a broken invariant
    /// rather than a request a client could shorten; the numbers say which.
    #[error("the sequence needs {needed_tokens} tokens of KV cache, but the whole pool holds {pool_tokens} tokens")]
    KvCacheTooSmall { needed_tokens: usize, pool_tokens: usize },
    /// The configured KV cache would not fit in this machine's memory (checked before it is allocated, which
    /// would abort the process).
    #[error(
        "a KV cache of {tokens} tokens (kv_cache_tokens) would take {:.1} GiB, more than this machine's {:.1} GiB \
         of memory",
        *needed_bytes as f64 / (1u64 << 30) as f64,
        *memory_bytes as f64 / (1u64 << 30) as f64
    )]
    KvCacheTooLarge {
        tokens: usize,
        needed_bytes: u64,
        memory_bytes: u64,
    },
    /// The prompt is empty.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A prompt token id is outside the vocabulary.
    #[error("token id {token_id} is outside the vocabulary of {vocab_size} tokens")]
    InvalidToken { token_id: u32, vocab_size: usize },
    /// A sampling or stop parameter is out of range (HTTP 400).
    #[error("invalid `{name}`: got {value}, expected {expected}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The engine thread has stopped (shutdown or crash).
    #[error("the engine is shut down")]
    ShutDown,
    /// The model failed during a forward pass; the request was dropped.
    #[error("model execution failed: {0}")]
    Model(String),
    /// Loading the model, tokenizer or chat template failed.
    #[error("cannot load {path}: {reason}")]
    Load { path: String, reason: String },
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The requested output format cannot be enforced: the schema is malformed, unsatisfiable, uses what the
    /// grammar compiler does not support, or exceeds its size and effort limits (HTTP 400 naming
    /// `response_format`).
    #[error("`response_format` cannot be enforced: {0}")]
    ResponseFormat(String),
    /// Rendering the chat template failed (for example the template rejects the message roles).
    #[error("chat template: {0}")]
    Template(String),
}

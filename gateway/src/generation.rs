//! The one generation path, shared by the OpenAI handlers (`completions`) and the IM answers (`im`):
//! bound a prompt by its bytes before tokenizing it ([`check_prompt_bytes`]), tokenize on the blocking pool
//! at most one prompt per CPU at once ([`on_blocking_pool`], [`chat_prompt`], [`fitted_chat_prompt`] for a
//! conversation trimmed to the context), submit ([`submit`]: the engine admits or answers `Overloaded` at
//! once), and read the events to the end ([`collect`]), each finished generation logged and counted.

use std::sync::Arc;

use engine::{
    ChatMessage, Completion, EngineError, EngineHandle, Event, GenerateRequest, Grammar, RequestStream, ResponseFormat,
    TokenChunk,
};
use tokio::sync::Semaphore;
use tracing::Span;

use crate::metrics;
use crate::openai;
use crate::routing::Loaded;

/// Bytes of prompt text per token of context that `[server] max_prompt_bytes` allows by default.
/// Real text runs 1 to 6 bytes per token (Chinese about 1.5 to 3, English about 4, code up to 8): a prompt
/// longer than 16 bytes per context token cannot fit, and is refused without tokenizing it.
pub const PROMPT_BYTES_PER_TOKEN: usize = 16;

/// What bounds the work done on a prompt before the engine admits it.
#[derive(Debug)]
pub struct PromptLimits {
    /// Prompts over this many bytes get a 400 before tokenizing; `None`: [`PROMPT_BYTES_PER_TOKEN`] times
    /// the context length of the model that takes the request.
    pub max_prompt_bytes: Option<usize>,
    /// `max_tokens` of a chat request without one.
    pub default_max_tokens: usize,
    /// Tokenizing (template rendering and encoding) runs on the blocking pool, at most this many at once
    /// (one per CPU): more concurrent prompts wait here, so the memory tokenizing takes stays bounded.
    pub tokenizers: Arc<Semaphore>,
}

impl PromptLimits {
    /// Limits of `max_prompt_bytes` (see the field) and `default_max_tokens`, with one tokenizer per CPU.
    pub fn new(max_prompt_bytes: Option<usize>, default_max_tokens: usize) -> Self {
        Self {
            max_prompt_bytes,
            default_max_tokens,
            tokenizers: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        }
    }

    /// The byte bound for a model with `context_length` tokens of context.
    pub fn max_bytes(&self, context_length: usize) -> usize {
        self.max_prompt_bytes
            .unwrap_or_else(|| context_length.saturating_mul(PROMPT_BYTES_PER_TOKEN))
    }
}

/// Why a generation could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "`{param}` is {bytes} bytes long, more than the {limit} bytes a prompt may have for this model's \
         context of {context_length} tokens (server.max_prompt_bytes)."
    )]
    PromptTooLong {
        param: &'static str,
        bytes: usize,
        limit: usize,
        context_length: usize,
    },
    #[error("the tokenizer pool is closed")]
    PoolClosed,
    #[error("a tokenizer task failed: {0}")]
    Worker(String),
}

/// A prompt of `bytes` bytes (text of `param`) longer than the model's bound is refused before any
/// tokenizing: it cannot fit the context window, and tokenizing megabytes would cost memory and CPU for
/// nothing.
pub fn check_prompt_bytes(
    limits: &PromptLimits,
    model: &Loaded,
    param: &'static str,
    bytes: usize,
) -> Result<(), GenerateError> {
    let context_length = model.engine.info().context_length;
    let limit = limits.max_bytes(context_length);
    if bytes > limit {
        return Err(GenerateError::PromptTooLong {
            param,
            bytes,
            limit,
            context_length,
        });
    }
    Ok(())
}

/// Run tokenizer work on tokio's blocking pool, never on the async executor, and at most
/// [`PromptLimits::tokenizers`] prompts at once.
pub async fn on_blocking_pool<T: Send + 'static>(
    limits: &PromptLimits,
    engine: EngineHandle,
    work: impl FnOnce(&EngineHandle) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, GenerateError> {
    // The permit moves into the blocking task, so a caller that goes away does not free it early.
    let permit = limits
        .tokenizers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| GenerateError::PoolClosed)?;
    let span = Span::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        span.in_scope(|| work(&engine))
    })
    .await
    .map_err(|join_err| GenerateError::Worker(join_err.to_string()))?
    .map_err(GenerateError::from)
}

/// Compile the request's `response_format` (if any) on the blocking pool: the first one builds the
/// vocabulary's trie, each takes milliseconds. A schema the engine cannot enforce is a 400 naming
/// `response_format`.
pub async fn grammar(
    limits: &PromptLimits,
    engine: EngineHandle,
    format: Option<ResponseFormat>,
) -> Result<Option<Grammar>, GenerateError> {
    let Some(format) = format else { return Ok(None) };
    let grammar = on_blocking_pool(limits, engine, move |engine| engine.compile_grammar(&format)).await?;
    tracing::debug!(
        compile_ms = grammar.compile_time().as_secs_f64() * 1e3,
        "response_format compiled"
    );
    Ok(Some(grammar))
}

/// Render the chat template (with the assistant generation prompt) and encode it. Control tokens written by
/// the template are recognised, so no extra BOS is added; the same text typed in a message stays text.
pub async fn chat_prompt(
    limits: &PromptLimits,
    engine: EngineHandle,
    messages: Vec<ChatMessage>,
) -> Result<Vec<u32>, GenerateError> {
    on_blocking_pool(limits, engine, move |engine| {
        engine.tokenizer().encode_chat(&messages, true)
    })
    .await
}

/// [`chat_prompt`] with tools: the offered tools and the messages' tool parts rendered by the template, then
/// `prefill` (text that opens the assistant's turn, e.g. `<tool_call>` for a forced call) encoded after the
/// generation prompt.
pub async fn chat_prompt_with_tools(
    limits: &PromptLimits,
    engine: EngineHandle,
    messages: Vec<ChatMessage>,
    tools: engine::ChatTools,
    prefill: String,
) -> Result<Vec<u32>, GenerateError> {
    on_blocking_pool(limits, engine, move |engine| {
        let tokenizer = engine.tokenizer();
        let mut ids = tokenizer.encode_chat_with_tools(&messages, &tools, true)?;
        if !prefill.is_empty() {
            ids.extend(tokenizer.encode(&prefill, false)?);
        }
        Ok(ids)
    })
    .await
}

/// [`chat_prompt`] for `question` after a conversation's `history`, the oldest turns dropped until the
/// prompt plus `reserve` answer tokens fits the model's context. Returns the tokens and how many history
/// turns were kept.
pub async fn fitted_chat_prompt(
    limits: &PromptLimits,
    engine: EngineHandle,
    history: Vec<ChatMessage>,
    question: String,
    reserve: usize,
) -> Result<(Vec<u32>, usize), GenerateError> {
    fitted_chat_prompt_with_tools(limits, engine, history, question, reserve, engine::ChatTools::default()).await
}

/// [`fitted_chat_prompt`] with `tools` offered to the model (rendered by the chat template).
pub async fn fitted_chat_prompt_with_tools(
    limits: &PromptLimits,
    engine: EngineHandle,
    history: Vec<ChatMessage>,
    question: String,
    reserve: usize,
    tools: engine::ChatTools,
) -> Result<(Vec<u32>, usize), GenerateError> {
    on_blocking_pool(limits, engine, move |engine| {
        let context_length = engine.info().context_length;
        fit_history(engine.tokenizer(), history, question, &tools, context_length, reserve)
    })
    .await
}

/// The prompt for `question` after `history`, with the oldest turns dropped until the prompt plus
/// `reserve` answer tokens fits `context_length`. Returns the tokens and how many history turns were kept.
fn fit_history(
    tokenizer: &engine::Tokenizer,
    mut history: Vec<ChatMessage>,
    question: String,
    tools: &engine::ChatTools,
    context_length: usize,
    reserve: usize,
) -> Result<(Vec<u32>, usize), EngineError> {
    let question = ChatMessage {
        role: "user".to_owned(),
        content: question,
    };
    loop {
        let mut messages = history.clone();
        messages.push(question.clone());
        let prompt = if tools.is_empty() {
            tokenizer.encode_chat(&messages, true)?
        } else {
            tokenizer.encode_chat_with_tools(&messages, tools, true)?
        };
        if prompt.len() + reserve <= context_length || history.is_empty() {
            return Ok((prompt, history.len()));
        }
        // Drop the oldest question and its answer together.
        let oldest = if history.len() >= 2 && history[1].role == "assistant" {
            2
        } else {
            1
        };
        history.drain(..oldest);
    }
}

/// Submit `request` to `model`'s engine: its events, or `Overloaded` at once when its queue is full.
pub fn submit(model: &Loaded, request: GenerateRequest) -> Result<RequestStream, EngineError> {
    tracing::debug!(
        prompt_tokens = request.prompt.len(),
        max_tokens = request.stop.max_tokens,
        "submitting"
    );
    model.engine.submit(request)
}

/// Read `events` to the end: the whole text and the engine's completion. `on_token` sees each chunk with
/// the text so far (this chunk's included). A failed or dropped generation is counted and returned as its
/// error.
pub async fn collect(
    events: &mut RequestStream,
    mut on_token: impl FnMut(TokenChunk, &str),
) -> Result<(String, Completion), EngineError> {
    let mut text = String::new();
    loop {
        match events.next().await {
            Some(Event::Token(chunk)) => {
                text.push_str(&chunk.text);
                on_token(chunk, &text);
            }
            Some(Event::Finished(done)) => {
                log_finished(&done);
                return Ok((text, done));
            }
            Some(Event::Error(err)) => {
                metrics::generation_ended("error");
                return Err(err);
            }
            // The engine dropped the request without a final event: it is gone.
            None => {
                metrics::generation_ended("error");
                return Err(EngineError::ShutDown);
            }
        }
    }
}

/// Log a finished generation and record its metrics.
pub fn log_finished(done: &Completion) {
    metrics::generation_finished(done, openai::finish_reason(done.reason));
    tracing::info!(
        finish_reason = openai::finish_reason(done.reason),
        prompt_tokens = done.usage.prompt_tokens,
        cached_prompt_tokens = done.usage.cached_prompt_tokens,
        completion_tokens = done.usage.completion_tokens,
        queue_ms = done.timings.queue.as_millis() as u64,
        ttft_ms = done.timings.time_to_first_token.as_millis() as u64,
        decode_tokens_per_second = done.timings.decode_tokens_per_second(done.usage.completion_tokens),
        "generation finished"
    );
}

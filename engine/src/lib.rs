//! The hearth engine: continuous batching of generation requests over a paged KV cache.
//!
//! [`Engine::load`] reads a GGUF file (weights, tokenizer, chat template) and starts the step loop on its own
//! OS thread; the returned [`EngineHandle`] is cheap to clone and is all callers need. A caller tokenizes
//! (with [`Tokenizer`], off any async executor), submits a [`GenerateRequest`] and reads [`Event`]s from the
//! returned [`RequestStream`]; dropping the stream cancels the request and frees its KV blocks on the next step.
//!
//! The public API has no candle types: token ids are `u32`, text is `String`, logits never leave the crate.
#![forbid(unsafe_code)]

mod chat_prompt;
mod detokenizer;
mod device;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod grammar;
mod handle;
mod inspect;
mod kv_cache;
mod perplexity;
mod request;
mod sampler;
mod scheduler;
mod step;
mod stop;

pub mod chat_template;
pub mod tokenizer;
pub mod tool_calls;

pub use chat_template::{ChatMessage, ChatTemplate, ChatTools};
pub use detokenizer::Detokenizer;
pub use device::{AttentionPath, Device, ParseDeviceError};
pub use error::EngineError;
pub use grammar::{Grammar, ResponseFormat, MAX_SCHEMA_BYTES};
pub use handle::{Engine, EngineConfig, EngineHandle, EngineStats, ModelInfo, RequestStream};
pub use inspect::{check_model, inspect_model, ModelSummary};
pub use perplexity::{perplexity, PerplexityConfig, PerplexityReport};
pub use request::{
    validate, Completion, Event, FinishReason, GenerateRequest, SamplingParams, StopParams, Timings, TokenChunk,
    TokenLogprob, Usage,
};
pub use tokenizer::Tokenizer;

//! What generation hands delivery: the [`Draft`] as it grows, how it ended ([`Failure`]), and the
//! finished [`Generated`] answer.

use std::sync::Arc;

use crate::generation::GenerateError;

/// The answer a rate-limited user gets.
pub const SLOW_DOWN: &str = "You are sending messages too quickly; please wait a moment and try again.";
/// The answer when the engine's queue is full.
pub const BUSY: &str = "The assistant is busy right now; please try again in a moment.";

/// Why generation ended without an answer.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The engine's queue was full (`EngineError::Overloaded`): the user is asked to try again.
    Busy,
    /// Generation failed; the user is told why.
    Failed(Arc<GenerateError>),
}

/// The generated text so far, and whether generation ended (and how).
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub text: String,
    pub end: Option<Result<(), Failure>>,
}

/// A finished generation.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Earlier session turns that fit the context and were sent.
    pub context_turns: usize,
    /// The HTTP skill the model called instead of answering, whose answer is `text`.
    pub tool: Option<crate::skills::ToolUse>,
}

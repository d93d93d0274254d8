//! OpenAI wire types: what `/v1/chat/completions`, `/v1/completions` and `/v1/models` accept and return.
//!
//! Request types mirror OpenAI's field names and accept what the official clients send; unknown fields are
//! ignored. They are plain data: [`crate::validation`] turns them into `Valid*` types, and nothing past the
//! handlers sees them. Response types serialize to exactly OpenAI's shapes.
//!
//! The settings both endpoints share are one [`SamplingFields`], `#[serde(flatten)]`-ed into each.

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------------------

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    /// Accepted and echoed nowhere: this server serves one model, whatever name the client uses.
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// The settings this endpoint shares with `/v1/completions`.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// OpenAI's newer name for `max_tokens`; both are accepted, this one wins.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    /// Functions the model may call (checked by [`crate::tools::validate`]); the model's template must take
    /// tools.
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name": …}}`.
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    /// The deprecated form of `tools`; not supported either.
    #[serde(default)]
    pub functions: Option<serde_json::Value>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {…}}`, enforced
    /// by constrained decoding (see `validation::response_format`).
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Accepted and echoed nowhere: this server serves one model, whatever name the client uses.
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: PromptSpec,
    /// The settings this endpoint shares with `/v1/chat/completions`.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub best_of: Option<u64>,
    /// Not supported: `true` is rejected rather than silently ignored.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Not supported: a non-empty suffix is rejected rather than silently ignored.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Number of top alternatives to return per token (the legacy API's integer form).
    #[serde(default)]
    pub logprobs: Option<u64>,
    /// Not in OpenAI's legacy API; taken as on the chat endpoint (as vLLM does).
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
}

/// The sampling, stop and streaming settings both request types accept, under the same names.
///
/// Flattened into each request. serde buffers a flattened struct's fields and deserializes them after the
/// whole object, so a malformed one fails at the top level; [`crate::error::parse_json`] then reads this
/// struct alone to name the field in the 400's `param`, as for any other field.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Extension (vLLM): `-1` or absent disables.
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Extension (vLLM, llama.cpp).
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Extension (vLLM, llama.cpp).
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// Deprecated by OpenAI for chat in favour of `max_completion_tokens`. The legacy completions
    /// endpoint defaults to 16; chat to the rest of the context window.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
    /// Extension (vLLM).
    #[serde(default)]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Extension (vLLM, llama.cpp): keep generating past end-of-sequence.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

/// One chat message. `content` may be a string, a list of parts, or null (an assistant turn that only
/// called tools).
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// An assistant turn's calls (`[{"id", "type": "function", "function": {"name", "arguments"}}]`).
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool result's call id.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// A tool result's function name (or a participant's name).
    #[serde(default)]
    pub name: Option<String>,
}

/// A message's content as OpenAI allows it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part message; only text is supported, others are named in a 400.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum ContentPart {
    #[serde(rename = "text")]
    Text { text: String },
    #[serde(other)]
    Unsupported,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

/// `prompt` of the legacy completions API: a string, a list of one string, or a list of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send one extra chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

// ---------------------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------------------

/// A non-streaming chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `"chat.completion"`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageDto,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    /// Always `"assistant"`.
    pub role: &'static str,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDto>,
}

/// One call of the model's answer.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDto {
    /// `call_` and 24 random characters.
    pub id: String,
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallDto,
}

/// The function a call names and its arguments as a JSON string.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionCallDto {
    pub name: String,
    pub arguments: String,
}

/// A call in a streamed answer: sent whole, in one chunk, with its position among the answer's calls.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDeltaDto {
    pub index: usize,
    #[serde(flatten)]
    pub call: ToolCallDto,
}

impl ToolCallDto {
    /// The wire form of `call`, with a fresh id.
    pub fn new(call: engine::tool_calls::ToolCall) -> Self {
        use rand::Rng;
        let id: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        Self {
            id: format!("call_{id}"),
            kind: "function",
            function: FunctionCallDto {
                name: call.name,
                arguments: serde_json::Value::Object(call.arguments).to_string(),
            },
        }
    }
}

/// One chunk of a streamed chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `"chat.completion.chunk"`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Present only in the final usage chunk, when `stream_options.include_usage` asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageDto>,
}

#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds: the role once at the start, then content.
#[derive(Debug, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDeltaDto>>,
}

/// Chat log-probabilities: one entry per generated token.
#[derive(Debug, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// A non-streaming legacy completion; streamed chunks have the same shape.
#[derive(Debug, Serialize)]
pub struct Completion {
    pub id: String,
    /// Always `"text_completion"`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Always present when not streaming; in a stream only in the final usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageDto>,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// The legacy API's column-wise log-probabilities.
#[derive(Debug, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f32>>,
    /// Byte offset of each token's text in the completion.
    pub text_offset: Vec<usize>,
}

/// Token counts.
#[derive(Debug, Clone, Serialize)]
pub struct UsageDto {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl From<engine::Usage> for UsageDto {
    fn from(usage: engine::Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: usage.cached_prompt_tokens,
            },
        }
    }
}

/// OpenAI's `finish_reason` string.
pub fn finish_reason(reason: engine::FinishReason) -> &'static str {
    match reason {
        engine::FinishReason::Stop => "stop",
        engine::FinishReason::Length => "length",
    }
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    /// Always `"list"`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    /// Always `"model"`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Extension (vLLM): the context window in tokens.
    pub max_model_len: usize,
}

/// The body of every error response: `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

//! The two generating endpoints, `POST /v1/chat/completions` and `POST /v1/completions`.
//!
//! Both run the same pipeline: validate the DTO into a `Valid*` request, refuse a prompt longer than
//! `PromptLimits::max_bytes` by its byte length alone, build the prompt token ids off the async executor
//! (chat template + encode, on `spawn_blocking`, at most one prompt per CPU at once), submit to the engine (which admits or
//! answers `Overloaded` at once, so a 429 comes before any byte of the response), then either collect the
//! event stream into one JSON body or turn it into server-sent events. `Shape` holds what differs
//! between the endpoints once tokens flow: ids, object names and chunk layouts.
//!
//! Cancellation: the [`RequestStream`] is owned by the handler future (non-streaming) or by the SSE body
//! (streaming). When the client goes away, hyper drops that owner, the stream is dropped, and the engine
//! frees the request's KV blocks on its next step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use engine::{Completion as EngineCompletion, EngineError, Event, Grammar, RequestStream, TokenLogprob};
use futures::Stream;
use serde::Serialize;
use tracing::{Instrument, Span};

use crate::error::{ApiError, ApiJson};
use crate::generation;
use crate::metrics;
use crate::openai::{
    self, AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChatDelta, ChatLogprobs, ChatTokenLogprob, CompletionChoice, CompletionLogprobs, CompletionRequest,
    ToolCallDeltaDto, ToolCallDto, TopLogprob, UsageDto,
};
use crate::routing::Loaded;
use crate::state::{AppState, RequestId};
use crate::tools::{CallReader, Output as CallOutput, ValidTools};
use crate::validation::{ValidChatRequest, ValidCompletionRequest, ValidParams, ValidPrompt};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let ValidChatRequest {
        messages,
        extras,
        tools,
        mut params,
    } = ValidChatRequest::try_from(body)?;
    params.default_max_tokens = Some(state.prompts.default_max_tokens);
    let model = state.models.route();
    let tool_bytes: usize = tools.offered.iter().map(|t| t.to_string().len()).sum::<usize>()
        + extras
            .iter()
            .flatten()
            .map(|e| serde_json::Value::Object(e.clone()).to_string().len())
            .sum::<usize>();
    let bytes = messages.iter().map(|m| m.content.len() + m.role.len()).sum::<usize>() + tool_bytes;
    generation::check_prompt_bytes(&state.prompts, &model, "messages", bytes)?;
    let takes_tools = model
        .engine
        .tokenizer()
        .chat_template()
        .is_some_and(|t| t.takes_hermes_tools());
    if tools.active() && !takes_tools {
        return Err(ApiError::invalid_param(
            "tools",
            "`tools` needs a model whose chat template takes tools in the Hermes format (Qwen2.5, Hermes); this \
             model's does not.",
        )
        .with_code("unsupported_parameter"));
    }
    let prompt = if tools.active() || extras.iter().any(Option::is_some) {
        let (chat_tools, prefill) = (tools.chat_tools(extras), tools.prefill());
        generation::chat_prompt_with_tools(&state.prompts, model.engine.clone(), messages, chat_tools, prefill).await?
    } else {
        generation::chat_prompt(&state.prompts, model.engine.clone(), messages).await?
    };
    let grammar = generation::grammar(&state.prompts, model.engine.clone(), params.response_format.take()).await?;
    let shape = Shape::new(Api::Chat, &request_id, &model);
    generate(model, shape, prompt, params, grammar, tools.reader()).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let ValidCompletionRequest { prompt, mut params } = ValidCompletionRequest::try_from(body)?;
    let model = state.models.route();
    let prompt = match prompt {
        ValidPrompt::Tokens(ids) => ids,
        ValidPrompt::Text(text) => {
            generation::check_prompt_bytes(&state.prompts, &model, "prompt", text.len())?;
            generation::on_blocking_pool(&state.prompts, model.engine.clone(), move |engine| {
                engine.tokenizer().encode(&text, true)
            })
            .await?
        }
    };
    let grammar = generation::grammar(&state.prompts, model.engine.clone(), params.response_format.take()).await?;
    let shape = Shape::new(Api::Completion, &request_id, &model);
    generate(model, shape, prompt, params, grammar, ValidTools::none().reader()).await
}

/// Submit and answer, as one JSON body or as an SSE stream. `model` is held until the response ends, so a
/// model switch never stops its engine under it.
async fn generate(
    model: Arc<Loaded>,
    shape: Shape,
    prompt: Vec<u32>,
    params: ValidParams,
    grammar: Option<Grammar>,
    calls: CallReader,
) -> Result<Response, ApiError> {
    let engine = &model.engine;
    let stream = params.stream;
    let include_usage = params.include_usage;
    let want_logprobs = params.logprobs.is_some();
    let prompt_tokens = prompt.len();
    let request = params.into_request(prompt, engine.info().context_length, grammar);
    tracing::debug!(prompt_tokens, stream, "answering");
    let events = generation::submit(&model, request)?;
    let output = Output {
        model,
        shape,
        want_logprobs,
        calls,
    };
    if stream {
        Ok(sse_response(events, output, include_usage).into_response())
    } else {
        output.collect(events).await
    }
}

/// Which endpoint a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
}

/// Identity shared by every chunk of one response.
struct Shape {
    api: Api,
    /// `chatcmpl-…` or `cmpl-…`, built from the request id so logs and responses match.
    id: String,
    /// Unix seconds at which the request arrived.
    created: u64,
    model: String,
}

impl Shape {
    fn new(api: Api, request_id: &RequestId, model: &Loaded) -> Self {
        let prefix = match api {
            Api::Chat => "chatcmpl",
            Api::Completion => "cmpl",
        };
        Self {
            api,
            id: format!("{prefix}-{}", request_id.0),
            created: unix_now(),
            model: model.name.to_string(),
        }
    }
}

/// Formats engine output as this endpoint's DTOs.
struct Output {
    /// The model answering: its tokenizer turns log-probability token ids into text, and holding it keeps
    /// its engine running until this response ends.
    model: Arc<Loaded>,
    shape: Shape,
    want_logprobs: bool,
    /// Reads the model's tool calls out of a chat answer (everything is text without tools).
    calls: CallReader,
}

impl Output {
    /// Read events until the end and answer with one JSON body. Dropping this future (client gone) drops
    /// `events`, which cancels the request.
    async fn collect(mut self, mut events: RequestStream) -> Result<Response, ApiError> {
        let mut logprobs = Vec::new();
        let (text, done) = generation::collect(&mut events, |chunk, text| {
            logprobs.extend(chunk.logprob.map(|lp| (text.len() - chunk.text.len(), lp)));
        })
        .await?;
        Ok(self.full_response(text, logprobs, &done))
    }

    fn full_response(
        &mut self,
        text: String,
        logprobs: Vec<(usize, TokenLogprob)>,
        done: &EngineCompletion,
    ) -> Response {
        let usage = UsageDto::from(done.usage);
        let mut finish_reason = openai::finish_reason(done.reason);
        match self.shape.api {
            Api::Chat => {
                let mut outputs = self.calls.push(&text);
                outputs.extend(self.calls.finish());
                let mut content = String::new();
                let mut tool_calls = Vec::new();
                for output in outputs {
                    match output {
                        CallOutput::Text(text) => content.push_str(&text),
                        CallOutput::Call { call, .. } => tool_calls.push(ToolCallDto::new(call)),
                    }
                }
                if !tool_calls.is_empty() {
                    finish_reason = "tool_calls";
                }
                let content = (tool_calls.is_empty() || !content.trim().is_empty()).then_some(content);
                self.chat_response(content, tool_calls, &logprobs, finish_reason, usage)
            }
            Api::Completion => self.completion_response(text, &logprobs, finish_reason, usage),
        }
    }

    fn chat_response(
        &self,
        content: Option<String>,
        tool_calls: Vec<ToolCallDto>,
        logprobs: &[(usize, TokenLogprob)],
        finish_reason: &'static str,
        usage: UsageDto,
    ) -> Response {
        let s = &self.shape;
        Json(ChatCompletion {
            id: s.id.clone(),
            object: "chat.completion",
            created: s.created,
            model: s.model.clone(),
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    tool_calls,
                },
                logprobs: self.chat_logprobs(logprobs),
                finish_reason,
            }],
            usage,
        })
        .into_response()
    }

    fn completion_response(
        &self,
        text: String,
        logprobs: &[(usize, TokenLogprob)],
        finish_reason: &'static str,
        usage: UsageDto,
    ) -> Response {
        let s = &self.shape;
        Json(openai::Completion {
            id: s.id.clone(),
            object: "text_completion",
            created: s.created,
            model: s.model.clone(),
            choices: vec![CompletionChoice {
                index: 0,
                text,
                logprobs: self.completion_logprobs(logprobs),
                finish_reason: Some(finish_reason),
            }],
            usage: Some(usage),
        })
        .into_response()
    }

    /// The chunk that opens a chat stream (`delta: {role: "assistant"}`); completions have none.
    fn opening_chunk(&self) -> Option<SseEvent> {
        (self.shape.api == Api::Chat).then(|| {
            self.chat_chunk(
                ChatDelta {
                    role: Some("assistant"),
                    ..ChatDelta::default()
                },
                None,
                None,
            )
        })
    }

    /// A chunk carrying new text (possibly empty, only on the final chunk) and the log-probabilities of the
    /// tokens since the previous chunk.
    fn delta_chunk(&self, text: String, logprobs: &[(usize, TokenLogprob)], finish: Option<&'static str>) -> SseEvent {
        match self.shape.api {
            Api::Chat => {
                let content = (!text.is_empty()).then_some(text);
                let delta = ChatDelta {
                    content,
                    ..ChatDelta::default()
                };
                self.chat_chunk(delta, self.chat_logprobs(logprobs), finish)
            }
            Api::Completion => self.completion_chunk(
                vec![CompletionChoice {
                    index: 0,
                    text,
                    logprobs: self.completion_logprobs(logprobs),
                    finish_reason: finish,
                }],
                None,
            ),
        }
    }

    /// The chunks for new text of the answer: for a chat with tools, what the call reader gives out of it
    /// (text held while it may open a call, a call whole once read); `logprobs` ride on the first. `None`
    /// when nothing can be sent yet (the log-probabilities then wait for the next chunk).
    fn text_chunks(&mut self, text: String, logprobs: &[(usize, TokenLogprob)]) -> Option<Vec<SseEvent>> {
        if self.shape.api == Api::Completion {
            return Some(vec![self.delta_chunk(text, logprobs, None)]);
        }
        let outputs = self.calls.push(&text);
        self.output_chunks(outputs, logprobs)
    }

    /// The last chunks of an answer: what the call reader still held, then the chunk with `finish_reason`
    /// ("tool_calls" when the model called tools).
    fn final_chunks(&mut self, logprobs: &[(usize, TokenLogprob)], reason: engine::FinishReason) -> Vec<SseEvent> {
        let mut chunks = Vec::new();
        let mut logprobs = logprobs;
        if self.shape.api == Api::Chat {
            let outputs = self.calls.finish();
            if let Some(sent) = self.output_chunks(outputs, logprobs) {
                chunks.extend(sent);
                logprobs = &[];
            }
        }
        let finish = match self.calls.calls() {
            0 => openai::finish_reason(reason),
            _ => "tool_calls",
        };
        chunks.push(self.delta_chunk(String::new(), logprobs, Some(finish)));
        chunks
    }

    fn output_chunks(&self, outputs: Vec<CallOutput>, logprobs: &[(usize, TokenLogprob)]) -> Option<Vec<SseEvent>> {
        let mut logprobs = Some(logprobs);
        let chunks: Vec<SseEvent> = outputs
            .into_iter()
            .map(|output| match output {
                CallOutput::Text(text) => self.delta_chunk(text, logprobs.take().unwrap_or_default(), None),
                CallOutput::Call { index, call } => {
                    let delta = ChatDelta {
                        tool_calls: Some(vec![ToolCallDeltaDto {
                            index,
                            call: ToolCallDto::new(call),
                        }]),
                        ..ChatDelta::default()
                    };
                    self.chat_chunk(delta, self.chat_logprobs(logprobs.take().unwrap_or_default()), None)
                }
            })
            .collect();
        (!chunks.is_empty()).then_some(chunks)
    }

    /// The extra chunk `stream_options.include_usage` asks for: usage and no choices.
    fn usage_chunk(&self, usage: UsageDto) -> SseEvent {
        match self.shape.api {
            Api::Chat => sse_json(&ChatCompletionChunk {
                id: self.shape.id.clone(),
                object: "chat.completion.chunk",
                created: self.shape.created,
                model: self.shape.model.clone(),
                choices: Vec::new(),
                usage: Some(usage),
            }),
            Api::Completion => self.completion_chunk(Vec::new(), Some(usage)),
        }
    }

    fn chat_chunk(&self, delta: ChatDelta, logprobs: Option<ChatLogprobs>, finish: Option<&'static str>) -> SseEvent {
        sse_json(&ChatCompletionChunk {
            id: self.shape.id.clone(),
            object: "chat.completion.chunk",
            created: self.shape.created,
            model: self.shape.model.clone(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            usage: None,
        })
    }

    fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<UsageDto>) -> SseEvent {
        sse_json(&openai::Completion {
            id: self.shape.id.clone(),
            object: "text_completion",
            created: self.shape.created,
            model: self.shape.model.clone(),
            choices,
            usage,
        })
    }

    fn chat_logprobs(&self, logprobs: &[(usize, TokenLogprob)]) -> Option<ChatLogprobs> {
        self.want_logprobs.then(|| ChatLogprobs {
            content: logprobs
                .iter()
                .map(|(_, lp)| {
                    let token = self.token_text(lp.token_id);
                    ChatTokenLogprob {
                        bytes: token.as_bytes().to_vec(),
                        token,
                        logprob: lp.logprob,
                        top_logprobs: lp
                            .top
                            .iter()
                            .map(|&(id, logprob)| {
                                let token = self.token_text(id);
                                TopLogprob {
                                    bytes: token.as_bytes().to_vec(),
                                    token,
                                    logprob,
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
    }

    fn completion_logprobs(&self, logprobs: &[(usize, TokenLogprob)]) -> Option<CompletionLogprobs> {
        self.want_logprobs.then(|| {
            let mut out = CompletionLogprobs::default();
            for (offset, lp) in logprobs {
                out.tokens.push(self.token_text(lp.token_id));
                out.token_logprobs.push(lp.logprob);
                out.top_logprobs.push(
                    lp.top
                        .iter()
                        .map(|&(id, logprob)| (self.token_text(id), logprob))
                        .collect(),
                );
                out.text_offset.push(*offset);
            }
            out
        })
    }

    /// One token's text. Decoding a single id is a table lookup, cheap enough for the async executor.
    /// A token that is part of a multi-byte character decodes to U+FFFD, as in other servers.
    fn token_text(&self, id: u32) -> String {
        self.model
            .engine
            .tokenizer()
            .decode(&[id], false)
            .unwrap_or_else(|err| {
                tracing::warn!(token_id = id, cause = %err, "cannot decode a log-probability token");
                String::new()
            })
    }
}

/// The SSE response: the body owns the engine's [`RequestStream`], so a client disconnect drops it.
fn sse_response(
    events: RequestStream,
    output: Output,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let queue: VecDeque<SseEvent> = output.opening_chunk().into_iter().collect();
    let state = SseState {
        events,
        output,
        include_usage,
        text_len: 0,
        pending_logprobs: Vec::new(),
        queue,
        ended: false,
        span: Span::current(),
    };
    let body = futures::stream::unfold(state, |mut state| {
        let span = state.span.clone();
        async move { state.next_event().await.map(|event| (Ok(event), state)) }.instrument(span)
    });
    Sse::new(body).keep_alive(KeepAlive::default())
}

/// The state of one SSE response between polls.
struct SseState {
    events: RequestStream,
    output: Output,
    include_usage: bool,
    /// Bytes of text sent so far (completion log-probabilities report offsets).
    text_len: usize,
    /// Log-probabilities of tokens whose text has not been sent yet (held back by the detokenizer or a
    /// possible stop string); they ride on the next chunk with text, or on the final one.
    pending_logprobs: Vec<(usize, TokenLogprob)>,
    /// Events ready to send, oldest first.
    queue: VecDeque<SseEvent>,
    /// The engine sent its last event (or the stream failed); only `queue` remains.
    ended: bool,
    /// The request's span, entered while polling and on drop.
    span: Span,
}

impl SseState {
    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match self.events.next().await {
                Some(Event::Token(chunk)) => {
                    self.pending_logprobs
                        .extend(chunk.logprob.map(|lp| (self.text_len, lp)));
                    // Empty deltas (half a character, a held-back stop string or tool call) are not sent.
                    if !chunk.text.is_empty() {
                        self.text_len += chunk.text.len();
                        if let Some(chunks) = self.output.text_chunks(chunk.text, &self.pending_logprobs) {
                            self.pending_logprobs.clear();
                            self.queue.extend(chunks);
                        }
                    }
                }
                Some(Event::Finished(done)) => {
                    generation::log_finished(&done);
                    let logprobs = std::mem::take(&mut self.pending_logprobs);
                    let chunks = self.output.final_chunks(&logprobs, done.reason);
                    self.queue.extend(chunks);
                    if self.include_usage {
                        self.queue.push_back(self.output.usage_chunk(done.usage.into()));
                    }
                    self.end();
                }
                Some(Event::Error(err)) => self.fail(err),
                None => self.fail(EngineError::ShutDown),
            }
        }
    }

    /// Headers are already sent, so a failure mid-stream is an `{"error": ...}` event, then `[DONE]`.
    fn fail(&mut self, err: EngineError) {
        metrics::generation_ended("error");
        let api_error = ApiError::from(err);
        tracing::warn!(reason = %api_error.message, "stream failed");
        self.queue.push_back(sse_json(&api_error.body()));
        self.end();
    }

    fn end(&mut self) {
        self.queue.push_back(SseEvent::default().data("[DONE]"));
        self.ended = true;
    }
}

impl Drop for SseState {
    fn drop(&mut self) {
        if !self.ended {
            let _entered = self.span.enter();
            tracing::info!("client disconnected mid-stream; cancelling the request");
            metrics::generation_ended("cancelled");
        }
    }
}

fn sse_json<T: Serialize>(value: &T) -> SseEvent {
    SseEvent::default()
        .json_data(value)
        .expect("wire DTOs always serialize: plain structs with string keys and no custom serializers")
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

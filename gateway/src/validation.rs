//! Wire requests in, `Valid*` requests out: the only way from [`crate::openai`] DTOs to the engine's types.
//!
//! Every check that needs no tokenizer happens here, and each failure is a 400 naming the parameter, the
//! value received and what is allowed. Range checks on sampling and stop settings are the engine's own
//! [`engine::validate`], so the limits live in one place. Handlers take a `Valid*` value, tokenize its prompt
//! and call [`ValidParams::into_request`].

use engine::{ChatMessage, GenerateRequest, Grammar, ResponseFormat, SamplingParams, StopParams};

use crate::error::ApiError;
use crate::openai::{
    ChatCompletionRequest, CompletionRequest, ContentPart, MessageContent, PromptSpec, SamplingFields, StopSpec,
};
use crate::tools::ValidTools;

/// The most top alternatives per token the engine returns.
const MAX_TOP_LOGPROBS: u64 = 20;

/// OpenAI's default `max_tokens` for the legacy completions endpoint.
const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// A chat request that passed validation: messages ready for the chat template, and settings.
#[derive(Debug, Clone)]
pub struct ValidChatRequest {
    pub messages: Vec<ChatMessage>,
    /// The messages' tool parts (an assistant's calls, a tool result's id), by message index.
    pub extras: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    /// The offered tools and what the model may do with them.
    pub tools: ValidTools,
    pub params: ValidParams,
}

/// A legacy completion request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidCompletionRequest {
    pub prompt: ValidPrompt,
    pub params: ValidParams,
}

/// A completion prompt: text to encode (with special tokens), or token ids as given.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidPrompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// Settings common to both endpoints, already checked against the engine's ranges.
#[derive(Debug, Clone)]
pub struct ValidParams {
    pub sampling: SamplingParams,
    /// `max_tokens` here is a placeholder; the real limit is set by [`ValidParams::into_request`].
    pub stop: StopParams,
    /// What the client asked for; `None` means the endpoint's default.
    pub max_tokens: Option<usize>,
    /// Default `max_tokens` when the client gave none; `None` means "the rest of the context window".
    pub default_max_tokens: Option<usize>,
    /// Return log-probabilities with this many top alternatives per token.
    pub logprobs: Option<usize>,
    pub stream: bool,
    /// Send a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// What the output must be (`response_format`); the handler compiles it with
    /// [`engine::EngineHandle::compile_grammar`] off the async executor.
    pub response_format: Option<ResponseFormat>,
}

impl ValidParams {
    /// The engine request for a tokenized prompt. `max_tokens` is capped to what fits in the context
    /// window, so a generous client limit ends with `finish_reason: "length"` instead of an error; a prompt
    /// that leaves no room at all is left for the engine to reject (`ContextTooLong`).
    pub fn into_request(self, prompt: Vec<u32>, context_length: usize, grammar: Option<Grammar>) -> GenerateRequest {
        let room = context_length.saturating_sub(prompt.len()).max(1);
        let wanted = self.max_tokens.or(self.default_max_tokens).unwrap_or(room);
        let stop = StopParams {
            max_tokens: wanted.min(room),
            ..self.stop
        };
        GenerateRequest {
            prompt,
            sampling: self.sampling,
            stop,
            logprobs: self.logprobs,
            grammar,
        }
    }
}

impl TryFrom<ChatCompletionRequest> for ValidChatRequest {
    type Error = ApiError;

    fn try_from(req: ChatCompletionRequest) -> Result<Self, ApiError> {
        if req.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must contain at least one message.",
            ));
        }
        check_unsupported_chat_features(&req)?;
        let tools = crate::tools::validate(req.tools.as_ref(), req.tool_choice.as_ref())?;
        let mut extras = Vec::with_capacity(req.messages.len());
        let messages = req
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match m.content {
                    None => String::new(),
                    Some(MessageContent::Text(text)) => text,
                    Some(MessageContent::Parts(parts)) => join_text_parts(i, parts)?,
                };
                let role = normalize_role(i, m.role)?;
                extras.push(crate::tools::message_extras(
                    i,
                    &role,
                    m.tool_calls.as_ref(),
                    m.tool_call_id.as_deref(),
                    m.name.as_deref(),
                )?);
                Ok(ChatMessage { role, content })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;

        let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "`top_logprobs` requires `logprobs: true`.",
                ))
            }
            (true, top) => Some(check_top_logprobs("top_logprobs", top.unwrap_or(0))?),
        };
        let mut sampling = req.sampling;
        // OpenAI's newer name wins over the deprecated one.
        sampling.max_tokens = req.max_completion_tokens.or(sampling.max_tokens);
        let mut params = validate_sampling(sampling, logprobs, None)?;
        params.response_format = response_format(req.response_format.as_ref())?;
        if params.response_format.is_some() && tools.active() {
            return Err(ApiError::invalid_param(
                "response_format",
                "`response_format` with `tools` is not supported: the format would leave the model no way to call \
                 a tool. Send one or the other.",
            )
            .with_code("unsupported_parameter"));
        }
        Ok(ValidChatRequest {
            messages,
            extras,
            tools,
            params,
        })
    }
}

impl TryFrom<CompletionRequest> for ValidCompletionRequest {
    type Error = ApiError;

    fn try_from(req: CompletionRequest) -> Result<Self, ApiError> {
        let prompt = match req.prompt {
            PromptSpec::Text(text) => ValidPrompt::Text(text),
            PromptSpec::Texts(mut texts) if texts.len() == 1 => ValidPrompt::Text(texts.remove(0)),
            PromptSpec::Texts(texts) => {
                return Err(ApiError::invalid_param(
                    "prompt",
                    format!(
                        "`prompt` must be one string (got a list of {}); send one prompt per request.",
                        texts.len()
                    ),
                ))
            }
            PromptSpec::Tokens(ids) => ValidPrompt::Tokens(ids),
        };
        if matches!(&prompt, ValidPrompt::Text(t) if t.is_empty())
            || matches!(&prompt, ValidPrompt::Tokens(t) if t.is_empty())
        {
            return Err(ApiError::invalid_param("prompt", "`prompt` is empty."));
        }
        if let Some(best_of) = req.best_of.filter(|&b| b != 1) {
            return Err(ApiError::invalid_param(
                "best_of",
                format!("`best_of` must be 1 (got {best_of})."),
            ));
        }
        if req.echo == Some(true) {
            return Err(ApiError::invalid_param("echo", "`echo` is not supported."));
        }
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param("suffix", "`suffix` is not supported."));
        }
        let logprobs = req
            .logprobs
            .map(|top| check_top_logprobs("logprobs", top))
            .transpose()?;
        let mut params = validate_sampling(req.sampling, logprobs, Some(DEFAULT_COMPLETION_MAX_TOKENS))?;
        params.response_format = response_format(req.response_format.as_ref())?;
        Ok(ValidCompletionRequest { prompt, params })
    }
}

/// The one check of the settings both endpoints share.
fn validate_sampling(
    fields: SamplingFields,
    logprobs: Option<usize>,
    default_max_tokens: Option<usize>,
) -> Result<ValidParams, ApiError> {
    if let Some(n) = fields.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid_param(
            "n",
            format!("`n` must be 1 (got {n}); this server returns one choice per request."),
        ));
    }
    let defaults = SamplingParams::default();
    let top_k = match fields.top_k {
        None | Some(-1) => None,
        Some(k) if k >= 1 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        Some(k) => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("invalid `top_k`: got {k}, expected at least 1, or -1 to disable"),
            ))
        }
    };
    // f64 → f32 saturates to ±inf for absurd values, which the engine's range check rejects.
    let f = |v: Option<f64>, default: f32| v.map_or(default, |v| v as f32);
    let sampling = SamplingParams {
        temperature: f(fields.temperature, defaults.temperature),
        top_k,
        top_p: f(fields.top_p, defaults.top_p),
        min_p: f(fields.min_p, defaults.min_p),
        repetition_penalty: f(fields.repetition_penalty, defaults.repetition_penalty),
        presence_penalty: f(fields.presence_penalty, defaults.presence_penalty),
        frequency_penalty: f(fields.frequency_penalty, defaults.frequency_penalty),
        // OpenAI seeds are signed 64-bit integers; the engine's RNG takes the same 64 bits.
        seed: fields.seed.map(|s| s as u64),
    };
    let max_tokens = fields.max_tokens.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
    let stop = StopParams {
        max_tokens: max_tokens.unwrap_or(1),
        stop_strings: match fields.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s],
            Some(StopSpec::Many(v)) => v,
        },
        stop_token_ids: fields.stop_token_ids.unwrap_or_default(),
        ignore_eos: fields.ignore_eos.unwrap_or(false),
    };
    engine::validate(&sampling, &stop)?;
    let stream = fields.stream.unwrap_or(false);
    Ok(ValidParams {
        sampling,
        stop,
        max_tokens,
        default_max_tokens,
        logprobs,
        stream,
        include_usage: stream && fields.stream_options.is_some_and(|o| o.include_usage),
        response_format: None,
    })
}

fn check_top_logprobs(param: &'static str, top: u64) -> Result<usize, ApiError> {
    if top > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid_param(
            param,
            format!("invalid `{param}`: got {top}, expected at most {MAX_TOP_LOGPROBS}"),
        ));
    }
    Ok(top as usize)
}

/// Text parts are joined with newlines (as vLLM does); any other part type is a 400 naming it.
fn join_text_parts(message: usize, parts: Vec<ContentPart>) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        match part {
            ContentPart::Text { text } => texts.push(text),
            ContentPart::Unsupported => {
                return Err(ApiError::invalid_param(
                    format!("messages[{message}].content[{j}].type"),
                    "Only `text` content parts are supported.",
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

/// The roles a chat template knows; OpenAI's `developer` role (newer clients send it instead of `system`)
/// means `system` to them. Any other role (`tool`, `function`, a typo) is a 400 naming the message, not a
/// turn the template would drop or mislabel.
fn normalize_role(message: usize, role: String) -> Result<String, ApiError> {
    match role.as_str() {
        "system" | "user" | "assistant" | "tool" => Ok(role),
        "developer" => Ok("system".to_owned()),
        _ => Err(ApiError::invalid_param(
            format!("messages[{message}].role"),
            format!(
                "`messages[{message}].role` is {role:?}; expected \"system\", \"developer\", \"user\", \"assistant\" \
                 or \"tool\"."
            ),
        )),
    }
}

/// Features this server does not have are refused by name, so a client never takes an answer that
/// ignored them for one that honoured them.
fn check_unsupported_chat_features(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    let given = |v: &Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    };
    if given(&req.functions) {
        return Err(ApiError::invalid_param(
            "functions",
            "`functions` (deprecated by OpenAI) is not supported; send them as `tools`.",
        )
        .with_code("unsupported_parameter"));
    }
    Ok(())
}

/// OpenAI's `response_format`: `{"type": "text"}` (or none) is free text; `{"type": "json_object"}` any JSON
/// object; `{"type": "json_schema", "json_schema": {"name": …, "schema": {…}, "strict": …}}` a value valid
/// against `schema`. Whether the engine can enforce the schema is found when it is compiled.
fn response_format(format: Option<&serde_json::Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let bad = |message: String| Err(ApiError::invalid_param("response_format", message));
    match format.get("type").and_then(|t| t.as_str()) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let Some(spec) = format.get("json_schema").filter(|s| s.is_object()) else {
                return bad(
                    "`response_format` of type \"json_schema\" needs a `json_schema` object: {\"name\": …, \
                     \"schema\": {…}}."
                        .into(),
                );
            };
            match spec.get("schema") {
                Some(schema @ (serde_json::Value::Object(_) | serde_json::Value::Bool(_))) => {
                    Ok(Some(ResponseFormat::JsonSchema(schema.clone())))
                }
                Some(other) => bad(format!(
                    "`response_format.json_schema.schema` must be a JSON schema (an object), not {other}."
                )),
                None => bad("`response_format.json_schema.schema` is missing.".into()),
            }
        }
        kind => bad(format!(
            "`response_format` of type {} is not supported; expected \"text\", \"json_object\" or \
             \"json_schema\".",
            kind.map_or_else(|| "(none)".to_owned(), |k| format!("{k:?}"))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::parse_json;

    fn chat(body: &str) -> Result<ValidChatRequest, ApiError> {
        ValidChatRequest::try_from(parse_json::<ChatCompletionRequest>(body.as_bytes())?)
    }

    fn check_rejected(extra: &str, param: &str) {
        let body = format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}], {extra}}}"#);
        let err = chat(&body).expect_err(&body);
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
        assert!(
            err.message.contains(param),
            "{body}: message should name `{param}`: {}",
            err.message
        );
    }

    #[test]
    fn absurd_params_are_rejected_by_name() {
        check_rejected(r#""temperature": 1e9"#, "temperature");
        check_rejected(r#""temperature": "hot""#, "temperature");
        check_rejected(r#""top_p": 0"#, "top_p");
        check_rejected(r#""top_k": 0"#, "top_k");
        check_rejected(r#""min_p": 2"#, "min_p");
        check_rejected(r#""presence_penalty": 3"#, "presence_penalty");
        check_rejected(r#""frequency_penalty": -3"#, "frequency_penalty");
        check_rejected(r#""repetition_penalty": 0"#, "repetition_penalty");
        check_rejected(r#""max_tokens": 0"#, "max_tokens");
        check_rejected(r#""max_tokens": -5"#, "max_tokens");
        check_rejected(r#""n": 2"#, "n");
        check_rejected(r#""top_logprobs": 3"#, "top_logprobs");
        check_rejected(r#""logprobs": true, "top_logprobs": 50"#, "top_logprobs");
        check_rejected(r#""stop": [""]"#, "stop");
    }

    #[test]
    fn malformed_shared_fields_are_named_in_both_requests() {
        // The shared fields are flattened into each request; a malformed one is still named by its path.
        for (body, param) in [
            (r#"{"prompt": "a", "temperature": "hot"}"#, "temperature"),
            (r#"{"prompt": "a", "stop": 3}"#, "stop"),
            (
                r#"{"prompt": "a", "stream_options": {"include_usage": 1}}"#,
                "stream_options.include_usage",
            ),
        ] {
            let err = parse_json::<CompletionRequest>(body.as_bytes()).expect_err(body);
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
            assert!(err.message.contains(param), "{body}: {}", err.message);
        }
        // A missing required field is still reported at the top level.
        let err = parse_json::<ChatCompletionRequest>(br#"{"temperature": 0}"#).expect_err("no messages");
        assert_eq!(err.param, None);
        assert!(err.message.contains("messages"), "{}", err.message);
    }

    #[test]
    fn chat_request_maps_to_engine_types() {
        let req = chat(
            r#"{"model": "x", "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}],
              "temperature": 0.5, "top_k": -1, "seed": -1, "max_completion_tokens": 7, "max_tokens": 99,
              "stop": "x", "stream": true, "stream_options": {"include_usage": true},
              "logprobs": true, "top_logprobs": 2, "unknown_field": {"a": 1}}"#,
        )
        .expect("valid request");
        let roles: Vec<_> = req
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(roles, [("system", "be brief"), ("user", "a\nb"), ("assistant", "")]);
        let p = &req.params;
        assert_eq!(p.sampling.temperature, 0.5);
        assert_eq!(p.sampling.top_k, None);
        assert_eq!(p.sampling.seed, Some(u64::MAX));
        assert_eq!(p.max_tokens, Some(7));
        assert_eq!(p.stop.stop_strings, ["x"]);
        assert_eq!(p.logprobs, Some(2));
        assert!(p.stream && p.include_usage);
    }

    #[test]
    fn unknown_roles_and_unsupported_features_are_400s_naming_them() {
        for role in ["function", "robot", "User"] {
            let body = format!(
                r#"{{"messages": [{{"role": "user", "content": "a"}}, {{"role": "{role}", "content": "b"}}]}}"#
            );
            let err = chat(&body).expect_err(&body);
            assert_eq!(err.param.as_deref(), Some("messages[1].role"), "{body}");
            assert!(err.message.contains(role), "{}", err.message);
        }
        check_rejected(r#""tools": [{"type": "function"}]"#, "tools[0].function");
        check_rejected(r#""functions": [{"name": "f"}]"#, "functions");
        check_rejected(r#""tool_choice": "required""#, "tool_choice");
        check_rejected(r#""response_format": {"type": "yaml"}"#, "response_format");
        check_rejected(
            r#""response_format": {"type": "json_schema", "json_schema": {}}"#,
            "response_format",
        );
        check_rejected(
            r#""response_format": {"type": "json_schema", "json_schema": {"schema": "object"}}"#,
            "response_format",
        );
        // What means "nothing" to OpenAI passes.
        for extra in [
            r#""tools": []"#,
            r#""tools": null"#,
            r#""tool_choice": "none""#,
            r#""response_format": {"type": "text"}"#,
        ] {
            let body = format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}], {extra}}}"#);
            assert!(chat(&body).is_ok(), "{body}");
        }
    }

    #[test]
    fn response_formats_become_engine_formats() {
        let format = |extra: &str| {
            chat(&format!(
                r#"{{"messages": [{{"role": "user", "content": "hi"}}], {extra}}}"#
            ))
            .expect(extra)
            .params
            .response_format
        };
        assert_eq!(format(r#""response_format": {"type": "text"}"#), None);
        assert_eq!(format(r#""response_format": null"#), None);
        assert_eq!(
            format(r#""response_format": {"type": "json_object"}"#),
            Some(ResponseFormat::JsonObject)
        );
        assert_eq!(
            format(
                r#""response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": true,
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}"#
            ),
            Some(ResponseFormat::JsonSchema(
                serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}})
            ))
        );
    }

    #[test]
    fn image_parts_are_rejected() {
        let err =
            chat(r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#)
                .expect_err("image parts are not supported");
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0].type"));
    }

    #[test]
    fn max_tokens_is_capped_by_the_context_window() {
        let p = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}"#)
            .unwrap()
            .params;
        assert_eq!(p.clone().into_request(vec![1; 10], 100, None).stop.max_tokens, 90);
        assert_eq!(p.into_request(vec![1; 10], 2000, None).stop.max_tokens, 1000);
        let p = chat(r#"{"messages": [{"role": "user", "content": "hi"}]}"#)
            .unwrap()
            .params;
        assert_eq!(p.into_request(vec![1; 10], 100, None).stop.max_tokens, 90);
    }

    #[test]
    fn completion_prompts() {
        let parse = |body: &str| ValidCompletionRequest::try_from(parse_json::<CompletionRequest>(body.as_bytes())?);
        assert_eq!(
            parse(r#"{"prompt": "hi"}"#).unwrap().prompt,
            ValidPrompt::Text("hi".into())
        );
        assert_eq!(
            parse(r#"{"prompt": ["hi"]}"#).unwrap().prompt,
            ValidPrompt::Text("hi".into())
        );
        assert_eq!(
            parse(r#"{"prompt": [1, 2]}"#).unwrap().prompt,
            ValidPrompt::Tokens(vec![1, 2])
        );
        assert_eq!(
            parse(r#"{"prompt": ["a", "b"]}"#).unwrap_err().param.as_deref(),
            Some("prompt")
        );
        assert_eq!(parse(r#"{"prompt": ""}"#).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(
            parse(r#"{"prompt": "a", "echo": true}"#).unwrap_err().param.as_deref(),
            Some("echo")
        );
        let p = parse(r#"{"prompt": "a"}"#).unwrap().params;
        assert_eq!(
            p.into_request(vec![1], 100, None).stop.max_tokens,
            DEFAULT_COMPLETION_MAX_TOKENS
        );
    }
}

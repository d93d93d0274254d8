//! OpenAI tool calling: `tools`, `tool_choice` and the tool parts of messages checked into what the engine
//! renders ([`engine::ChatTools`]), and the model's calls read back into `tool_calls`.
//!
//! - `tool_choice: "none"` renders no tools (the conversation's earlier calls and results stay), so the
//!   model answers in words; `"auto"` (the default with tools) offers them; `"required"` offers them and
//!   opens the assistant's turn with `<tool_call>` and the start of a name, and a named function opens it
//!   with that function's name, so the model can only call (that one).
//! - Calls are read back in the Hermes format of the model's template ([`engine::tool_calls`]); a block
//!   that is not a valid call of an offered tool stays in the content, as text, and is logged: it is never
//!   passed on as a call.

use engine::tool_calls::{HermesStream, MalformedCall, Piece, ToolCall};
use engine::ChatTools;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The most tools one request may offer.
pub const MAX_TOOLS: usize = 128;

/// What the client allows the model to do with the offered tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Answer in words (the default without tools).
    None,
    /// Call tools or answer (the default with tools).
    Auto,
    /// Call at least one tool.
    Required,
    /// Call this function.
    Function(String),
}

/// The tools of a valid chat request.
#[derive(Debug, Clone)]
pub struct ValidTools {
    /// The offered tools, as the template gets them.
    pub offered: Vec<Value>,
    /// Their names.
    pub names: Vec<String>,
    pub choice: ToolChoice,
}

impl ValidTools {
    /// No tools: a plain chat.
    pub fn none() -> Self {
        Self {
            offered: Vec::new(),
            names: Vec::new(),
            choice: ToolChoice::None,
        }
    }

    /// Whether the model is offered tools (and its output is read for calls).
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// What the template renders: the tools when they are offered, and `extras` (the messages' tool parts).
    pub fn chat_tools(&self, extras: Vec<Option<Map<String, Value>>>) -> ChatTools {
        ChatTools {
            tools: if self.active() {
                self.offered.clone()
            } else {
                Vec::new()
            },
            extras,
        }
    }

    /// The text that opens the assistant's turn after the template's generation prompt, for a choice
    /// that forces a call ("" otherwise).
    pub fn prefill(&self) -> String {
        match &self.choice {
            // The call and the start of its name: a model may otherwise close an empty block at once.
            ToolChoice::Required => format!("{}\n{{\"name\": \"", engine::tool_calls::OPEN),
            ToolChoice::Function(name) => {
                format!(
                    "{}\n{{\"name\": {}, \"arguments\": ",
                    engine::tool_calls::OPEN,
                    Value::from(name.as_str())
                )
            }
            ToolChoice::None | ToolChoice::Auto => String::new(),
        }
    }

    /// A reader of the model's output (which follows [`Self::prefill`]).
    pub fn reader(&self) -> CallReader {
        let stream = match &self.choice {
            ToolChoice::None => None,
            ToolChoice::Auto => Some(HermesStream::lenient(self.names.clone())),
            ToolChoice::Required | ToolChoice::Function(_) => {
                let mut stream = HermesStream::in_call();
                let prefill = self.prefill();
                let body = prefill.strip_prefix(engine::tool_calls::OPEN).unwrap_or(&prefill);
                let nothing = stream.push(body);
                debug_assert!(nothing.is_empty());
                Some(stream)
            }
        };
        CallReader {
            stream,
            names: self.names.clone(),
            calls: 0,
        }
    }
}

/// Check `tools` and `tool_choice` of a request.
pub fn validate(tools: Option<&Value>, choice: Option<&Value>) -> Result<ValidTools, ApiError> {
    let items = match tools {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => return Err(ApiError::invalid_param("tools", "`tools` must be a list of tools.")),
    };
    if items.len() > MAX_TOOLS {
        return Err(ApiError::invalid_param(
            "tools",
            format!("`tools` has {} tools; at most {MAX_TOOLS} are allowed.", items.len()),
        ));
    }
    let mut valid = ValidTools::none();
    for (i, tool) in items.iter().enumerate() {
        let name = check_tool(i, tool)?;
        if valid.names.contains(&name) {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].function.name"),
                format!("`tools[{i}].function.name` repeats the name {name:?}."),
            ));
        }
        valid.names.push(name);
        valid.offered.push(tool.clone());
    }
    valid.choice = match choice {
        None | Some(Value::Null) if valid.names.is_empty() => ToolChoice::None,
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(choice @ Value::Object(_)) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| choice.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "tool_choice",
                        "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \
                         \"function\": {\"name\": …}}.",
                    )
                })?;
            ToolChoice::Function(name.to_owned())
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": \
                 {\"name\": …}}.",
            ))
        }
    };
    match &valid.choice {
        ToolChoice::Required | ToolChoice::Auto if valid.names.is_empty() => Err(ApiError::invalid_param(
            "tool_choice",
            "`tool_choice` asks for tool calls, but `tools` offers none.",
        )),
        ToolChoice::Function(name) if !valid.names.contains(name) => Err(ApiError::invalid_param(
            "tool_choice",
            format!("`tool_choice` names the function {name:?}, which `tools` does not offer."),
        )),
        _ => Ok(valid),
    }
}

/// Check one tool; returns its name.
fn check_tool(i: usize, tool: &Value) -> Result<String, ApiError> {
    let field = |path: &str, message: String| ApiError::invalid_param(format!("tools[{i}]{path}"), message);
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(field(".type", format!("`tools[{i}].type` must be \"function\".")));
    }
    let Some(function) = tool.get("function").filter(|f| f.is_object()) else {
        return Err(field(".function", format!("`tools[{i}].function` must be an object.")));
    };
    let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
    let valid_name =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(field(
            ".function.name",
            format!("`tools[{i}].function.name` must be 1 to 64 letters, digits, `_` or `-`; got {name:?}."),
        ));
    }
    if let Some(parameters) = function.get("parameters").filter(|p| !p.is_null()) {
        if !parameters.is_object() {
            return Err(field(
                ".function.parameters",
                format!("`tools[{i}].function.parameters` must be a JSON Schema object."),
            ));
        }
    }
    Ok(name.to_owned())
}

/// The tool parts of message `i`: an assistant's `tool_calls` (their `arguments` strings parsed, as
/// templates take them) and a tool result's `tool_call_id` and `name`; `None` when it has none.
pub fn message_extras(
    i: usize,
    role: &str,
    tool_calls: Option<&Value>,
    tool_call_id: Option<&str>,
    name: Option<&str>,
) -> Result<Option<Map<String, Value>>, ApiError> {
    let mut extras = Map::new();
    match tool_calls {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) if role == "assistant" => {
            let calls = calls
                .iter()
                .enumerate()
                .map(|(j, call)| template_call(i, j, call))
                .collect::<Result<Vec<_>, _>>()?;
            if !calls.is_empty() {
                extras.insert("tool_calls".to_owned(), Value::Array(calls));
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                format!("messages[{i}].tool_calls"),
                format!("`messages[{i}].tool_calls` must be a list, on an assistant message."),
            ))
        }
    }
    if let Some(id) = tool_call_id {
        extras.insert("tool_call_id".to_owned(), Value::from(id));
    }
    if let Some(name) = name {
        extras.insert("name".to_owned(), Value::from(name));
    }
    Ok((!extras.is_empty()).then_some(extras))
}

/// One call of an assistant message as templates take it: `arguments` an object, not a string.
fn template_call(i: usize, j: usize, call: &Value) -> Result<Value, ApiError> {
    let param = |path: &str| format!("messages[{i}].tool_calls[{j}]{path}");
    let function = call.get("function").filter(|f| f.is_object()).ok_or_else(|| {
        ApiError::invalid_param(
            param(".function"),
            format!("`{}` must be an object.", param(".function")),
        )
    })?;
    let name = function.get("name").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_param(
            param(".function.name"),
            format!("`{}` must be a string.", param(".function.name")),
        )
    })?;
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
            ApiError::invalid_param(
                param(".function.arguments"),
                format!("`{}` is not valid JSON: {e}.", param(".function.arguments")),
            )
        })?,
        Some(object @ Value::Object(_)) => object.clone(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                param(".function.arguments"),
                format!("`{}` must be a JSON string.", param(".function.arguments")),
            ))
        }
    };
    let mut out = Map::new();
    if let Some(id) = call.get("id").and_then(Value::as_str) {
        out.insert("id".to_owned(), Value::from(id));
    }
    out.insert("type".to_owned(), Value::from("function"));
    out.insert(
        "function".to_owned(),
        serde_json::json!({"name": name, "arguments": arguments}),
    );
    Ok(Value::Object(out))
}

/// What the model wrote, as far as it is known: text, or a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Text(String),
    /// A call of an offered tool, numbered from 0 in the answer.
    Call {
        index: usize,
        call: ToolCall,
    },
}

/// Reads the model's output for calls as it streams (see the module doc).
#[derive(Debug)]
pub struct CallReader {
    /// `None`: no tools, everything is text.
    stream: Option<HermesStream>,
    names: Vec<String>,
    calls: usize,
}

impl CallReader {
    /// Take the next piece of output.
    pub fn push(&mut self, delta: &str) -> Vec<Output> {
        match &mut self.stream {
            None => vec![Output::Text(delta.to_owned())],
            Some(stream) => {
                let pieces = stream.push(delta);
                self.outputs(pieces)
            }
        }
    }

    /// The output ended.
    pub fn finish(&mut self) -> Vec<Output> {
        match self.stream.take() {
            None => Vec::new(),
            Some(stream) => {
                let pieces = stream.finish();
                self.outputs(pieces)
            }
        }
    }

    /// How many calls were read.
    pub fn calls(&self) -> usize {
        self.calls
    }

    fn outputs(&mut self, pieces: Vec<Piece>) -> Vec<Output> {
        pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(text) => Output::Text(text),
                Piece::Call(Ok(call)) if self.names.contains(&call.name) => {
                    self.calls += 1;
                    Output::Call {
                        index: self.calls - 1,
                        call,
                    }
                }
                Piece::Call(Ok(call)) => malformed(MalformedCall {
                    raw: serde_json::json!({"name": call.name, "arguments": call.arguments}).to_string(),
                    reason: format!("the model called {:?}, which the request does not offer", call.name),
                }),
                Piece::Call(Err(err)) => malformed(err),
            })
            .filter(|output| !matches!(output, Output::Text(text) if text.is_empty()))
            .collect()
    }
}

/// A block that is not a valid call goes back into the text, tags and all, and is logged.
fn malformed(err: MalformedCall) -> Output {
    tracing::warn!(reason = %err.reason, "the model wrote a malformed tool call; it is returned as text");
    crate::metrics::tool_call_malformed();
    Output::Text(format!(
        "{}{}{}",
        engine::tool_calls::OPEN,
        err.raw,
        engine::tool_calls::CLOSE
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}})
    }

    fn param_of(err: ApiError) -> String {
        err.param.unwrap_or_default()
    }

    #[test]
    fn tools_and_choices_are_checked_naming_the_field() {
        let tools = json!([weather()]);
        assert_eq!(validate(Some(&tools), None).unwrap().choice, ToolChoice::Auto);
        assert_eq!(validate(None, None).unwrap().choice, ToolChoice::None);
        assert_eq!(
            validate(Some(&json!([])), Some(&json!("none"))).unwrap().choice,
            ToolChoice::None
        );
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(
            validate(Some(&tools), Some(&named)).unwrap().choice,
            ToolChoice::Function("get_weather".to_owned())
        );
        for (tools, choice, param) in [
            (json!("x"), None, "tools"),
            (json!([{"type": "retrieval"}]), None, "tools[0].type"),
            (json!([{"type": "function"}]), None, "tools[0].function"),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                None,
                "tools[0].function.name",
            ),
            (json!([weather(), weather()]), None, "tools[1].function.name"),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]),
                None,
                "tools[0].function.parameters",
            ),
            (json!([]), Some(json!("required")), "tool_choice"),
            (json!([weather()]), Some(json!("sometimes")), "tool_choice"),
            (
                json!([weather()]),
                Some(json!({"type": "function", "function": {"name": "other"}})),
                "tool_choice",
            ),
        ] {
            let err = validate(Some(&tools), choice.as_ref()).unwrap_err();
            assert_eq!(param_of(err), param, "{tools} {choice:?}");
        }
    }

    #[test]
    fn message_tool_parts_are_what_templates_take() {
        let calls = json!([{"id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\": \"杭州\"}"}}]);
        let extras = message_extras(1, "assistant", Some(&calls), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            Value::Object(extras),
            json!({"tool_calls": [{"id": "call_1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": {"city": "杭州"}}}]})
        );
        let extras = message_extras(2, "tool", None, Some("call_1"), None).unwrap().unwrap();
        assert_eq!(Value::Object(extras), json!({"tool_call_id": "call_1"}));
        assert!(message_extras(0, "user", None, None, None).unwrap().is_none());
        let bad = json!([{"function": {"name": "f", "arguments": "{not json"}}]);
        let err = message_extras(3, "assistant", Some(&bad), None, None).unwrap_err();
        assert_eq!(param_of(err), "messages[3].tool_calls[0].function.arguments");
        let err = message_extras(0, "user", Some(&calls), None, None).unwrap_err();
        assert_eq!(param_of(err), "messages[0].tool_calls");
    }

    #[test]
    fn forced_choices_prefill_the_call_and_read_it_back() {
        let tools = json!([weather()]);
        let required = validate(Some(&tools), Some(&json!("required"))).unwrap();
        assert_eq!(required.prefill(), "<tool_call>\n{\"name\": \"");
        let mut reader = required.reader();
        let mut out = reader.push("get_weather\", \"arguments\": {}}\n</tool_call>");
        out.extend(reader.finish());
        assert!(
            matches!(&out[..], [Output::Call { index: 0, call }] if call.name == "get_weather"),
            "{out:?}"
        );
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let valid = validate(Some(&tools), Some(&named)).unwrap();
        assert_eq!(
            valid.prefill(),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
        );
        let mut reader = valid.reader();
        let mut out = reader.push("{\"city\": \"Paris\"}}\n</tool_call>");
        out.extend(reader.finish());
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(&out[0], Output::Call { index: 0, call } if call.arguments["city"] == "Paris"));

        // An offered-tools answer in words is text; a call of a tool not offered is text too.
        let valid = validate(Some(&tools), None).unwrap();
        let mut reader = valid.reader();
        let mut out = reader.push("Sunny.");
        out.extend(reader.push("<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>"));
        out.extend(reader.finish());
        assert_eq!(out[0], Output::Text("Sunny.".to_owned()));
        assert!(matches!(&out[1], Output::Text(t) if t.contains("\"rm\"") && t.starts_with("<tool_call>")));
        assert_eq!(reader.calls(), 0);
        // Without tools nothing is read.
        let mut reader = ValidTools::none().reader();
        assert_eq!(reader.push("<tool_call>"), vec![Output::Text("<tool_call>".to_owned())]);
    }
}

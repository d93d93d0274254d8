//! Tool calls read back from a model's output, in the Hermes format Qwen2.5's (and Hermes') chat templates
//! teach: each call is a JSON object `{"name": …, "arguments": {…}}` between `<tool_call>` and
//! `</tool_call>` lines, and any other text is the answer's content.
//!
//! [`HermesStream`] reads the output as it is generated: text outside calls comes out at once (except a
//! tail that may be the start of a `<tool_call>` tag), a call comes out whole once its closing tag (or the
//! end of the output) arrives. [`parse_hermes`] reads a finished output the same way. A block that is not a
//! valid call is a [`MalformedCall`] with its raw text, never a call.
//!
//! Small models often answer a tool request with the bare JSON object, or with it in a ```` ```json ````
//! fence, instead of the tags. Given the offered tools' names ([`HermesStream::lenient`]), an output that
//! is only such an object naming an offered tool is read as that call (the output is held back until it
//! ends once it starts like one); anything else stays text.

/// The tag that opens a call.
pub const OPEN: &str = "<tool_call>";
/// The tag that closes a call.
pub const CLOSE: &str = "</tool_call>";

/// A call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments: always a JSON object.
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// A `<tool_call>` block that is not a valid call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed tool call ({reason}): {raw}")]
pub struct MalformedCall {
    /// The block's text, as the model wrote it (without the tags).
    pub raw: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A piece of the output: text, or a call block.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Call(Result<ToolCall, MalformedCall>),
}

/// A finished output, read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// The text outside call blocks.
    pub content: String,
    /// The call blocks in order, each a call or why it is not one.
    pub calls: Vec<Result<ToolCall, MalformedCall>>,
}

/// Read a finished output (tags only; see [`parse_hermes_lenient`]).
pub fn parse_hermes(text: &str) -> Parsed {
    read_all(HermesStream::default(), text)
}

/// Read a finished output, also taking a bare JSON call of one of `tools` (see the module doc).
pub fn parse_hermes_lenient(text: &str, tools: &[String]) -> Parsed {
    read_all(HermesStream::lenient(tools.to_vec()), text)
}

fn read_all(mut stream: HermesStream, text: &str) -> Parsed {
    let mut pieces = stream.push(text);
    pieces.extend(stream.finish());
    let mut parsed = Parsed::default();
    for piece in pieces {
        match piece {
            Piece::Text(text) => parsed.content.push_str(&text),
            Piece::Call(call) => parsed.calls.push(call),
        }
    }
    parsed
}

/// Reads an output as it is generated.
#[derive(Debug, Default)]
pub struct HermesStream {
    /// Text not yet given out: a tail that may open a tag, or the body of an open call.
    pending: String,
    /// Inside a `<tool_call>` block.
    in_call: bool,
    /// The offered tools' names, when a bare JSON call is read too.
    tools: Option<Vec<String>>,
    /// Whether the output's start was looked at (for a bare call).
    started: bool,
    /// The output starts like a bare JSON call: it is held until it ends.
    bare: bool,
}

impl HermesStream {
    /// A stream whose output already began inside a call (the prompt ended with `<tool_call>`).
    pub fn in_call() -> Self {
        Self {
            in_call: true,
            started: true,
            ..Self::default()
        }
    }

    /// A stream that also reads an output that is only a bare JSON call of one of `tools`.
    pub fn lenient(tools: Vec<String>) -> Self {
        Self {
            tools: Some(tools),
            ..Self::default()
        }
    }

    /// Take `delta`; returns what can be given out now.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.pending.push_str(delta);
        if self.tools.is_some() && !self.started {
            let start = self.pending.trim_start();
            if start.is_empty() || (start.len() < 3 && "```".starts_with(start)) {
                return Vec::new();
            }
            self.started = true;
            self.bare = start.starts_with('{') || start.starts_with("```");
        }
        if self.bare {
            return Vec::new();
        }
        let mut pieces = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.pending.find(CLOSE) else { break };
                let body = self.pending[..end].to_owned();
                self.pending.drain(..end + CLOSE.len());
                self.in_call = false;
                pieces.push(Piece::Call(parse_call(&body)));
            } else if let Some(start) = self.pending.find(OPEN) {
                if start > 0 {
                    pieces.push(Piece::Text(self.pending[..start].to_owned()));
                }
                self.pending.drain(..start + OPEN.len());
                self.in_call = true;
            } else {
                // Give out all but a tail that may be the start of `<tool_call>`.
                let keep = (1..OPEN.len())
                    .rev()
                    .find(|&n| self.pending.ends_with(&OPEN[..n]))
                    .unwrap_or(0);
                let cut = self.pending.len() - keep;
                if cut > 0 {
                    pieces.push(Piece::Text(self.pending[..cut].to_owned()));
                    self.pending.drain(..cut);
                }
                break;
            }
        }
        pieces
    }

    /// The output ended: give out the rest. A call left open is read as far as it went (a model may stop
    /// before its closing tag).
    pub fn finish(mut self) -> Vec<Piece> {
        if self.bare {
            let tools = self.tools.take().unwrap_or_default();
            let text = std::mem::take(&mut self.pending);
            if let Some(call) = bare_call(&text).filter(|call| tools.contains(&call.name)) {
                return vec![Piece::Call(Ok(call))];
            }
            // Not a call after all: read it as tagged output.
            let mut tagged = HermesStream::default();
            let mut pieces = tagged.push(&text);
            pieces.extend(tagged.finish());
            return pieces;
        }
        match (self.in_call, self.pending.is_empty()) {
            (true, _) => vec![Piece::Call(parse_call(&self.pending))],
            (false, true) => Vec::new(),
            (false, false) => vec![Piece::Text(self.pending)],
        }
    }
}

/// `text` as one bare call: a JSON object, alone or in a ```` ``` ```` / ```` ```json ```` fence.
fn bare_call(text: &str) -> Option<ToolCall> {
    let mut body = text.trim();
    if let Some(fenced) = body.strip_prefix("```") {
        let fenced = fenced.strip_prefix("json").unwrap_or(fenced);
        body = fenced.trim().strip_suffix("```")?.trim();
    }
    parse_call(body).ok()
}

/// Read one call block's body.
fn parse_call(body: &str) -> Result<ToolCall, MalformedCall> {
    let malformed = |reason: &str| MalformedCall {
        raw: body.to_owned(),
        reason: reason.to_owned(),
    };
    let value: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| malformed(&format!("not JSON: {e}")))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(malformed("not a JSON object"));
    };
    let name = match object.remove("name") {
        Some(serde_json::Value::String(name)) if !name.trim().is_empty() => name,
        _ => return Err(malformed("no function name")),
    };
    let arguments = match object.remove("arguments").or_else(|| object.remove("parameters")) {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(arguments)) => arguments,
        // Some models write the arguments as a JSON string.
        Some(serde_json::Value::String(text)) => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(arguments)) => arguments,
            _ => return Err(malformed("the arguments are not a JSON object")),
        },
        Some(_) => return Err(malformed("the arguments are not a JSON object")),
    };
    Ok(ToolCall { name, arguments })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: serde_json::Value) -> Result<ToolCall, MalformedCall> {
        let serde_json::Value::Object(arguments) = arguments else {
            panic!()
        };
        Ok(ToolCall {
            name: name.to_owned(),
            arguments,
        })
    }

    #[test]
    fn calls_and_text_are_read_apart() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"杭州\"}}\n\
                    </tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": \"{}\"}\n</tool_call>";
        let parsed = parse_hermes(text);
        assert_eq!(parsed.content, "Let me check.\n\n");
        assert_eq!(
            parsed.calls,
            vec![
                call("get_weather", serde_json::json!({"city": "杭州"})),
                call("now", serde_json::json!({}))
            ]
        );
        assert_eq!(parse_hermes("no calls < here").content, "no calls < here");
    }

    #[test]
    fn a_stream_cut_anywhere_reads_the_same() {
        let text = "A<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>B<tool_c";
        let whole = parse_hermes(text);
        for cut in 0..text.len() {
            let mut stream = HermesStream::default();
            let mut pieces = stream.push(&text[..cut]);
            pieces.extend(stream.push(&text[cut..]));
            pieces.extend(stream.finish());
            let mut content = String::new();
            let mut calls = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => content.push_str(&t),
                    Piece::Call(c) => calls.push(c),
                }
            }
            assert_eq!(
                (content, calls),
                (whole.content.clone(), whole.calls.clone()),
                "cut at {cut}"
            );
        }
        // A tail that only began like a tag is text once the output ends.
        assert_eq!(whole.content, "AB<tool_c");
        assert_eq!(whole.calls, vec![call("f", serde_json::json!({"x": 1}))]);
    }

    #[test]
    fn text_is_held_back_only_while_it_may_open_a_tag() {
        let mut stream = HermesStream::default();
        assert_eq!(stream.push("Hello <"), vec![Piece::Text("Hello ".to_owned())]);
        assert_eq!(stream.push("b>"), vec![Piece::Text("<b>".to_owned())]);
    }

    #[test]
    fn malformed_blocks_are_reported_with_their_text() {
        for (body, reason) in [
            ("{\"name\": \"f\", \"arguments\": {\"x\": ", "not JSON"),
            ("[1, 2]", "not a JSON object"),
            ("{\"arguments\": {}}", "no function name"),
            (
                "{\"name\": \"f\", \"arguments\": [1]}",
                "the arguments are not a JSON object",
            ),
        ] {
            let parsed = parse_hermes(&format!("<tool_call>{body}</tool_call>"));
            let err = parsed.calls[0].clone().unwrap_err();
            assert!(err.reason.starts_with(reason), "{body}: {err}");
            assert_eq!(err.raw, body);
        }
        // A call the model did not close is still read.
        let mut stream = HermesStream::in_call();
        assert!(stream.push("{\"name\": \"f\"}").is_empty());
        assert_eq!(stream.finish(), vec![Piece::Call(call("f", serde_json::json!({})))]);
    }

    #[test]
    fn a_bare_json_call_of_an_offered_tool_is_read_when_lenient() {
        let tools = vec!["get_weather".to_owned()];
        let fenced = "```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\"city\": \"Hangzhou\"}\n}\n```";
        for text in [
            fenced,
            "  {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Hangzhou\"}}",
        ] {
            let parsed = parse_hermes_lenient(text, &tools);
            assert_eq!(
                parsed.calls,
                vec![call("get_weather", serde_json::json!({"city": "Hangzhou"}))]
            );
            assert_eq!(parsed.content, "");
            // Without the offered names it is text.
            assert_eq!(parse_hermes(text).content, text);
        }
        // An object naming no offered tool, code, or prose stays text.
        for text in [
            "{\"name\": \"rm\", \"arguments\": {}}",
            "```python\nprint(1)\n```",
            "It is sunny.",
        ] {
            let parsed = parse_hermes_lenient(text, &tools);
            assert!(parsed.calls.is_empty(), "{text}");
            assert_eq!(parsed.content, text);
        }
        // Streamed: prose flows at once, a bare call is held to the end.
        let mut stream = HermesStream::lenient(tools.clone());
        assert!(stream.push(" ").is_empty());
        assert_eq!(stream.push("It is"), vec![Piece::Text(" It is".to_owned())]);
        let mut stream = HermesStream::lenient(tools);
        assert!(stream.push("`").is_empty());
        assert!(stream.push("``json\n{\"name\": \"get_weather\"}").is_empty());
        assert_eq!(stream.push("\n```"), Vec::new());
        assert_eq!(
            stream.finish(),
            vec![Piece::Call(call("get_weather", serde_json::json!({})))]
        );
    }
}

//! Request handling: chat, cancellation, prefix reuse, and clear errors for bad input.

use engine::{ChatMessage, EngineError, Event, FinishReason, GenerateRequest, SamplingParams};

use crate::{chat_tokens, collect, engine, QWEN_0_5B, SMOLLM2};

#[test]
fn a_chat_answer_streams_text_and_finishes_with_figures() {
    let engine = engine(SMOLLM2, |_| {});
    let prompt = chat_tokens(&engine, "What is the capital of France? Answer in one word.");
    let mut stream = engine.submit(GenerateRequest::greedy(prompt.clone(), 32)).unwrap();
    let mut text = String::new();
    let completion = loop {
        match stream.blocking_next().unwrap() {
            Event::Token(t) => text.push_str(&t.text),
            Event::Finished(c) => break c,
            Event::Error(e) => panic!("{e}"),
        }
    };
    assert!(text.contains("Paris"), "answer was {text:?}");
    assert_eq!(completion.reason, FinishReason::Stop, "the model ends its turn");
    assert_eq!(completion.usage.prompt_tokens, prompt.len());
    assert!(completion.timings.time_to_first_token > std::time::Duration::ZERO);
    // The same system prompt and question again: the full prompt blocks come from the prefix cache.
    let (_, end) = collect(&engine, GenerateRequest::greedy(prompt.clone(), 4));
    let Event::Finished(again) = end else { panic!("{end:?}") };
    assert_eq!(
        again.usage.cached_prompt_tokens,
        prompt.len() / 32 * 32 - if prompt.len().is_multiple_of(32) { 32 } else { 0 }
    );
    assert!(engine.stats().prefix_cache_hit_tokens > 0);
}

#[test]
fn qwen2_5_coder_0_5b_loads_and_chats() {
    let engine = engine(QWEN_0_5B, |_| {});
    let tok = engine.tokenizer();
    let text = tok
        .apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: "Write a Python function add(a, b) that returns a + b.".into(),
            }],
            true,
        )
        .unwrap();
    let prompt = tok.encode(&text, false).unwrap();
    let mut stream = engine.submit(GenerateRequest::greedy(prompt, 48)).unwrap();
    let mut answer = String::new();
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Token(t) => answer.push_str(&t.text),
            Event::Finished(_) => break,
            Event::Error(e) => panic!("{e}"),
        }
    }
    assert!(answer.contains("def add"), "answer was {answer:?}");
}

#[test]
fn dropping_the_stream_cancels_and_frees_blocks() {
    let engine = engine(SMOLLM2, |_| {});
    let mut req = GenerateRequest::greedy(engine.tokenizer().encode("Once upon a time", true).unwrap(), 4000);
    req.stop.ignore_eos = true;
    let mut stream = engine.submit(req).unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.blocking_next(), Some(Event::Token(_))));
    }
    assert!(engine.stats().kv_blocks_used > 0);
    drop(stream);
    // The engine notices on its next step; wait for that with a bounded number of polls of its counters.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = engine.stats();
        if s.requests_cancelled == 1 && s.running == 0 && s.kv_blocks_used == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "cancellation not seen: {s:?}");
        std::thread::yield_now();
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    let engine = engine(SMOLLM2, |c| c.context_length = Some(64));
    let ok = || GenerateRequest::greedy(vec![1, 2, 3], 4);
    let err = |req: GenerateRequest| engine.submit(req).map(|_| ()).unwrap_err();
    assert!(matches!(
        err(GenerateRequest::greedy(vec![], 4)),
        EngineError::EmptyPrompt
    ));
    assert!(matches!(
        err(GenerateRequest::greedy(vec![7; 64], 4)),
        EngineError::ContextTooLong {
            prompt_tokens: 64,
            context_length: 64
        }
    ));
    assert!(matches!(
        err(GenerateRequest::greedy(vec![10_000_000], 4)),
        EngineError::InvalidToken { .. }
    ));
    let absurd = [
        SamplingParams {
            temperature: 1e9,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            top_k: Some(0),
            ..SamplingParams::default()
        },
        SamplingParams {
            repetition_penalty: -1.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            frequency_penalty: 5.0,
            ..SamplingParams::default()
        },
    ];
    for sampling in absurd {
        let e = err(GenerateRequest {
            sampling: sampling.clone(),
            ..ok()
        });
        assert!(
            matches!(e, EngineError::InvalidParameter { .. }),
            "{sampling:?} gave {e:?}"
        );
        assert!(
            e.to_string().starts_with("invalid `"),
            "message names the parameter: {e}"
        );
    }
    let mut zero = ok();
    zero.stop.max_tokens = 0;
    assert!(matches!(
        err(zero),
        EngineError::InvalidParameter { name: "max_tokens", .. }
    ));
    // A request near the context end stops with `length` when the context is full.
    let (ids, end) = collect(
        &engine,
        GenerateRequest {
            stop: engine::StopParams {
                max_tokens: 1000,
                ignore_eos: true,
                ..Default::default()
            },
            ..GenerateRequest::greedy(vec![1; 60], 1)
        },
    );
    assert_eq!(ids.len(), 4);
    assert!(matches!(end, Event::Finished(c) if c.reason == FinishReason::Length));
}

#[test]
fn a_full_queue_is_refused_at_once() {
    let engine = engine(SMOLLM2, |c| {
        c.max_waiting = 1;
        c.max_running = 1;
    });
    let long = || {
        let mut r = GenerateRequest::greedy(vec![1, 2, 3], 2000);
        r.stop.ignore_eos = true;
        r
    };
    let mut first = engine.submit(long()).unwrap();
    // Once the first request runs, one more may wait and the next is refused.
    assert!(matches!(first.blocking_next(), Some(Event::Token(_))));
    let _second = engine.submit(long()).unwrap();
    assert!(matches!(
        engine.submit(long()).map(|_| ()),
        Err(EngineError::Overloaded { limit: 1, .. })
    ));
}

#[test]
fn a_missing_or_broken_model_file_is_a_load_error() {
    let dir = std::env::temp_dir().join(format!("hearth-engine-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = engine::Engine::load(engine::EngineConfig::new(dir.join("nope.gguf"))).unwrap_err();
    assert!(missing.to_string().contains("nope.gguf"), "{missing}");
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"definitely not a gguf file").unwrap();
    let e = engine::Engine::load(engine::EngineConfig::new(&junk)).unwrap_err();
    assert!(e.to_string().contains("junk.gguf"), "{e}");
}

/// Greedy text of `prompt` (at most `max_tokens`).
fn greedy_text(engine: &engine::EngineHandle, prompt: Vec<u32>, max_tokens: usize) -> String {
    let mut stream = engine.submit(GenerateRequest::greedy(prompt, max_tokens)).unwrap();
    let mut text = String::new();
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Token(t) => text.push_str(&t.text),
            Event::Finished(_) => break,
            Event::Error(e) => panic!("{e}"),
        }
    }
    text
}

#[test]
fn qwen2_5_coder_1_5b_calls_a_tool_through_its_template_and_answers_from_the_result() {
    use engine::tool_calls::{parse_hermes, parse_hermes_lenient};
    use engine::ChatTools;
    let engine = engine(crate::QWEN_1_5B, |_| {});
    let tok = engine.tokenizer();
    assert!(tok.chat_template().unwrap().takes_hermes_tools());
    let weather = serde_json::json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city, e.g. Hangzhou"}},
                "required": ["city"],
            },
        },
    });
    let mut tools = ChatTools {
        tools: vec![weather],
        extras: Vec::new(),
    };
    let mut messages = vec![
        ChatMessage {
            role: "system".into(),
            content: "You are a helpful assistant.".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "What is the weather like in Hangzhou right now?".into(),
        },
    ];
    let prompt = tok.encode_chat_with_tools(&messages, &tools, true).unwrap();
    let rendered = tok
        .chat_template()
        .unwrap()
        .render_with_tools(&messages, &tools, true)
        .unwrap();
    // The tool as Python's json.dumps writes it (keys in order, ", " and ": ").
    assert!(rendered.contains("<tools>\n{\"function\": {\"description\": \"Get the current weather in a city.\", \"name\": \"get_weather\""), "{rendered}");
    let output = greedy_text(&engine, prompt, 64);
    // The 1.5B coder model answers with the call as a fenced JSON object rather than in tags.
    let parsed = parse_hermes_lenient(&output, &["get_weather".to_owned()]);
    assert_eq!(parsed.calls.len(), 1, "{output:?}");
    let call = parsed.calls[0].clone().unwrap();
    assert_eq!(call.name, "get_weather", "{output:?}");
    assert!(
        call.arguments["city"].as_str().unwrap_or_default().contains("Hangzhou"),
        "{output:?}"
    );

    // The call and its result go back; the model answers from the result.
    messages.push(ChatMessage {
        role: "assistant".into(),
        content: String::new(),
    });
    messages.push(ChatMessage {
        role: "tool".into(),
        content: "{\"city\": \"Hangzhou\", \"temperature_c\": 31, \"sky\": \"sunny\"}".into(),
    });
    let call_json = serde_json::json!([{
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Hangzhou"}},
    }]);
    let serde_json::Value::Object(extras) = serde_json::json!({"tool_calls": call_json}) else {
        unreachable!()
    };
    // With the tools still offered this model calls the tool again; as `tool_choice: "none"` renders it
    // (no tools, the call and its result kept) it answers from the result.
    tools.tools.clear();
    tools.extras = vec![None, None, Some(extras)];
    let rendered = tok
        .chat_template()
        .unwrap()
        .render_with_tools(&messages, &tools, true)
        .unwrap();
    assert!(
        rendered.contains(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Hangzhou\"}}\n</tool_call>"
        ) && rendered.contains("<tool_response>\n{\"city\": \"Hangzhou\""),
        "{rendered}"
    );
    let prompt = tok.encode_chat_with_tools(&messages, &tools, true).unwrap();
    let answer = greedy_text(&engine, prompt, 48);
    assert!(parse_hermes(&answer).calls.is_empty(), "{answer:?}");
    assert!(answer.contains("31"), "{answer:?}");
}

//! Structured output: a request with a grammar (`response_format`) always produces JSON that parses and fits
//! its schema, a schema that cannot be enforced is refused, and masking keeps batch invariance.

use std::time::Instant;

use engine::{EngineError, EngineHandle, Event, FinishReason, GenerateRequest, ResponseFormat};
use serde_json::{json, Value};

use crate::batching::concurrent;
use crate::{chat_tokens, collect, engine, SMOLLM2};

/// A greedy chat request for `user` under `format`.
fn constrained(engine: &EngineHandle, user: &str, format: &ResponseFormat, max_tokens: usize) -> GenerateRequest {
    let mut req = GenerateRequest::greedy(chat_tokens(engine, user), max_tokens);
    req.grammar = Some(engine.compile_grammar(format).expect("the format compiles"));
    req
}

/// The text of `ids`, as the client sees it.
fn text(engine: &EngineHandle, ids: &[u32]) -> String {
    engine.tokenizer().decode(ids, true).unwrap()
}

#[test]
fn outputs_parse_and_fit_their_schemas() {
    let engine = engine(SMOLLM2, |_| {});
    let person = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    // Schemas bound their strings and arrays: a 135M model left free (`json_object`) can fill `max_tokens`
    // with one endless string (`a_cut_output_ends_with_length` covers that case).
    type Fits = Box<dyn Fn(&Value) -> bool>;
    let cases: Vec<(&str, ResponseFormat, Fits)> = vec![
        (
            "Give me a person with a name and an age.",
            ResponseFormat::JsonSchema(person),
            Box::new(|v| {
                v["name"].as_str().is_some_and(|n| n.chars().count() <= 16)
                    && v["age"].as_u64().is_some_and(|a| a <= 120)
                    && v.as_object().unwrap().len() == 2
            }),
        ),
        (
            "What colour is the sky?",
            ResponseFormat::JsonSchema(json!({"type": "string", "enum": ["red", "green", "blue"]})),
            Box::new(|v| ["red", "green", "blue"].contains(&v.as_str().unwrap_or(""))),
        ),
        (
            "List three small numbers.",
            ResponseFormat::JsonSchema(json!({
                "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                "minItems": 1, "maxItems": 3,
            })),
            Box::new(|v| {
                v.as_array().is_some_and(|a| {
                    (1..=3).contains(&a.len()) && a.iter().all(|x| x.as_u64().is_some_and(|x| x <= 99))
                })
            }),
        ),
        (
            "Where is Paris?",
            ResponseFormat::JsonSchema(json!({
                "type": "object",
                "properties": {"city": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 12}, "country": {"type": "string", "maxLength": 12}},
                    "required": ["name", "country"],
                }},
                "required": ["city"],
            })),
            Box::new(|v| v["city"]["name"].is_string() && v["city"]["country"].is_string()),
        ),
        (
            "Is water wet?",
            ResponseFormat::JsonSchema(json!({"type": "boolean"})),
            Box::new(|v| v.is_boolean()),
        ),
    ];
    for (user, format, fits) in &cases {
        let start = Instant::now();
        let req = constrained(&engine, user, format, 96);
        let compile = start.elapsed();
        assert!(compile.as_secs_f64() < 2.0, "{user}: compiling took {compile:?}");
        let (ids, end) = collect(&engine, req);
        let out = text(&engine, &ids);
        match end {
            Event::Finished(done) => assert_eq!(done.reason, FinishReason::Stop, "{user}: {out:?}"),
            other => panic!("{user}: {other:?}"),
        }
        let value: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{user}: {out:?} does not parse: {e}"));
        assert!(fits(&value), "{user}: {value} does not fit {format:?}");
    }
    // The same prompt without a format does not answer in JSON: the grammar made the difference.
    let (ids, _) = collect(&engine, GenerateRequest::greedy(chat_tokens(&engine, cases[0].0), 96));
    assert!(
        serde_json::from_str::<Value>(&text(&engine, &ids)).is_err(),
        "{:?}",
        text(&engine, &ids)
    );
    engine.shutdown();
}

#[test]
fn a_cut_output_ends_with_length() {
    let engine = engine(SMOLLM2, |_| {});
    let req = constrained(&engine, "Describe a cat in JSON.", &ResponseFormat::JsonObject, 3);
    let (ids, end) = collect(&engine, req);
    assert_eq!(ids.len(), 3);
    match end {
        Event::Finished(done) => assert_eq!(done.reason, FinishReason::Length),
        other => panic!("{other:?}"),
    }
    assert!(text(&engine, &ids).starts_with('{'));
    engine.shutdown();
}

#[test]
fn schemas_that_cannot_be_enforced_are_refused() {
    let engine = engine(SMOLLM2, |_| {});
    let big: serde_json::Map<String, Value> = (0..3000)
        .map(|i| {
            (
                format!("property_{i}"),
                json!({"type": "string", "description": "x".repeat(20)}),
            )
        })
        .collect();
    for schema in [
        json!({"$ref": "https://example.com/schema.json"}),
        json!({"type": "integer", "minimum": 5, "maximum": 2}),
        json!("object"),
        json!({"type": "object", "properties": big}),
    ] {
        let err = engine
            .compile_grammar(&ResponseFormat::JsonSchema(schema.clone()))
            .expect_err("refused");
        assert!(matches!(err, EngineError::ResponseFormat(_)), "{err:?}");
        assert!(err.to_string().contains("`response_format`"), "{err}");
    }
    engine.shutdown();
}

#[test]
fn constrained_requests_keep_batch_invariance_also_under_preemption() {
    let solo_engine = engine(SMOLLM2, |c| c.prefix_caching = false);
    let formats = [
        ResponseFormat::JsonObject,
        ResponseFormat::JsonSchema(json!({
            "type": "object",
            "properties": {"title": {"type": "string", "maxLength": 24}, "year": {"type": "integer"}},
            "required": ["title", "year"],
        })),
    ];
    let reqs: Vec<GenerateRequest> = crate::chat_prompts()
        .iter()
        .enumerate()
        .map(|(i, user)| {
            if i % 2 == 0 {
                constrained(&solo_engine, user, &formats[i / 2 % 2], 40)
            } else {
                let mut req = GenerateRequest::greedy(chat_tokens(&solo_engine, user), 40);
                req.stop.ignore_eos = true;
                req
            }
        })
        .collect();
    let solo: Vec<Vec<u32>> = reqs.iter().map(|r| collect(&solo_engine, r.clone()).0).collect();
    solo_engine.shutdown();

    let roomy = engine(SMOLLM2, |c| c.max_batch_tokens = 64);
    assert_eq!(
        concurrent(&roomy, &reqs),
        solo,
        "batched output differs from solo output"
    );
    roomy.shutdown();

    // Eight sequences of up to ~130 positions in a pool of 384: some are preempted and recomputed, and a
    // recomputed sequence's grammar resumes where it was.
    let tight = engine(SMOLLM2, |c| {
        c.kv_cache_tokens = 384;
        c.max_batch_tokens = 64;
    });
    assert_eq!(
        concurrent(&tight, &reqs),
        solo,
        "output under preemption differs from solo output"
    );
    assert!(tight.stats().preemptions_total > 0, "{:?}", tight.stats());
    tight.shutdown();
}

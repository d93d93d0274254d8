//! `POST /v1/completions` (the legacy text API), streaming and not, on the real model.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::support::{body_text, post_json, send, shared_app, sse_data, MODEL_NAME};

const PROMPT: &str = "The capital of France is";

#[tokio::test]
async fn non_streaming_completion_has_openai_shape() {
    let request = json!({"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 12, "temperature": 0});
    let (status, body) = post_json(shared_app(), "/v1/completions", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], MODEL_NAME);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert!(!choice["text"].as_str().unwrap().is_empty(), "{body}");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &body["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn prompt_forms_agree() {
    // A string, a list of one string, and the same prompt as token ids give the same greedy text.
    let ask = |prompt: Value| json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
    let (_, text) = post_json(shared_app(), "/v1/completions", &ask(json!(PROMPT))).await;
    let (_, list) = post_json(shared_app(), "/v1/completions", &ask(json!([PROMPT]))).await;
    assert_eq!(text["choices"][0]["text"], list["choices"][0]["text"]);

    let ids = crate::support::shared_engine()
        .tokenizer()
        .encode(PROMPT, true)
        .unwrap();
    let (status, tokens) = post_json(shared_app(), "/v1/completions", &ask(json!(ids))).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(text["choices"][0]["text"], tokens["choices"][0]["text"]);
    assert_eq!(tokens["usage"]["prompt_tokens"].as_u64().unwrap() as usize, ids.len());
}

#[tokio::test]
async fn streaming_completion_matches_non_streaming() {
    let request = json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": true});
    let response = send(
        shared_app(),
        "POST",
        "/v1/completions",
        Some("application/json"),
        request.to_string(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = sse_data(&body_text(response).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (last, deltas) = chunks.split_last().unwrap();
    assert!(["stop", "length"].contains(&last["choices"][0]["finish_reason"].as_str().unwrap()));
    assert!(last.get("usage").is_none(), "no usage chunk unless asked");
    let mut streamed: String = deltas
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    streamed.push_str(last["choices"][0]["text"].as_str().unwrap());
    assert!(deltas
        .iter()
        .all(|c| c["object"] == "text_completion" && c["choices"][0]["text"] != ""));

    let (_, whole) = post_json(
        shared_app(),
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(streamed, whole["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test]
async fn stop_string_ends_the_completion() {
    let request = json!({"prompt": "1, 2, 3, 4,", "max_tokens": 40, "temperature": 0, "stop": ["7"]});
    let (status, body) = post_json(shared_app(), "/v1/completions", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert!(!text.contains('7'), "the stop string is not returned: {text:?}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
}

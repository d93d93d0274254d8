//! `POST /v1/chat/completions`, streaming and not, on the real model.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::support::{body_text, chat_body, post_json, send, shared_app, sse_data, MODEL_NAME};

const QUESTION: &str = "What is the capital of France?";

fn greedy(extra: Value) -> Value {
    let mut body = chat_body(QUESTION, json!({"temperature": 0, "max_tokens": 24}));
    crate::support::merge(&mut body, extra);
    body
}

#[tokio::test]
async fn non_streaming_chat_has_openai_shape() {
    let (status, body) = post_json(shared_app(), "/v1/chat/completions", &greedy(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"), "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], MODEL_NAME);
    let choice = &body["choices"][0];
    assert_eq!(body["choices"].as_array().unwrap().len(), 1);
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(!content.trim().is_empty(), "{body}");
    assert!(choice["logprobs"].is_null());
    assert!(
        ["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()),
        "{body}"
    );
    let usage = &body["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 5 && (1..=24).contains(&completion), "{body}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
}

#[tokio::test]
async fn greedy_chat_is_deterministic() {
    let (_, first) = post_json(shared_app(), "/v1/chat/completions", &greedy(json!({}))).await;
    let (_, second) = post_json(shared_app(), "/v1/chat/completions", &greedy(json!({}))).await;
    assert_eq!(first["choices"][0]["message"], second["choices"][0]["message"]);
}

#[tokio::test]
async fn streaming_chat_sends_role_deltas_finish_usage_and_done() {
    let request = greedy(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let response = send(
        shared_app(),
        "POST",
        "/v1/chat/completions",
        Some("application/json"),
        request.to_string(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_data(&body_text(response).await);

    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for chunk in &chunks {
        assert!(chunk["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(chunk["id"], chunks[0]["id"], "one id per stream");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], MODEL_NAME);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant"}));

    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]), "the usage chunk has no choices");
    let (final_chunk, deltas) = rest.split_last().unwrap();
    assert!(["stop", "length"].contains(&final_chunk["choices"][0]["finish_reason"].as_str().unwrap()));
    let mut streamed = String::new();
    for chunk in &deltas[1..] {
        let choice = &chunk["choices"][0];
        assert!(choice["finish_reason"].is_null());
        let text = choice["delta"]["content"].as_str().expect("content delta");
        assert!(!text.is_empty(), "empty deltas are not sent");
        streamed.push_str(text);
    }
    streamed.push_str(final_chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));

    // The stream carries the same text and counts as the non-streaming answer.
    let (_, whole) = post_json(shared_app(), "/v1/chat/completions", &greedy(json!({}))).await;
    assert_eq!(streamed, whole["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], whole["usage"]["prompt_tokens"]);
}

#[tokio::test]
async fn content_parts_and_system_messages_are_accepted() {
    let request = json!({
        "model": "any-name-works",
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        ],
        "temperature": 0,
        "max_completion_tokens": 8,
        "some_future_field": true,
    });
    let (status, body) = post_json(shared_app(), "/v1/chat/completions", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 8);
}

#[tokio::test]
async fn chat_logprobs_cover_every_token() {
    let (status, body) = post_json(
        shared_app(),
        "/v1/chat/completions",
        &greedy(json!({"logprobs": true, "top_logprobs": 2, "max_tokens": 6})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content");
    assert_eq!(
        content.len() as u64,
        body["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for entry in content {
        assert!(entry["token"].is_string() && entry["bytes"].is_array());
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        // Greedy: the sampled token is the most likely one.
        assert_eq!(top[0]["token"], entry["token"]);
    }
}

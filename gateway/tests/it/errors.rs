//! Bad requests get OpenAI-shaped errors with the right status and `param`, never axum's plain text.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_openai_error, body_json, chat_body, post_json, send, shared_app, SHARED_CONTEXT};

/// Post `extra` merged into a valid chat request; expect a 400 naming `param`.
async fn check_rejected(extra: Value, param: &str) {
    let body = chat_body("hi", extra);
    let (status, error) = post_json(shared_app(), "/v1/chat/completions", &body).await;
    assert_openai_error(status, &error, StatusCode::BAD_REQUEST, Some(param));
}

#[tokio::test]
async fn absurd_parameters_are_400_naming_the_parameter() {
    check_rejected(json!({"temperature": 1e9}), "temperature").await;
    check_rejected(json!({"temperature": -1}), "temperature").await;
    check_rejected(json!({"top_p": 0}), "top_p").await;
    check_rejected(json!({"top_p": 1.5}), "top_p").await;
    check_rejected(json!({"top_k": 0}), "top_k").await;
    check_rejected(json!({"min_p": 2}), "min_p").await;
    check_rejected(json!({"presence_penalty": 5}), "presence_penalty").await;
    check_rejected(json!({"frequency_penalty": -5}), "frequency_penalty").await;
    check_rejected(json!({"repetition_penalty": 0}), "repetition_penalty").await;
    check_rejected(json!({"max_tokens": 0}), "max_tokens").await;
    check_rejected(json!({"n": 2}), "n").await;
    check_rejected(json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs").await;
}

#[tokio::test]
async fn wrong_types_are_400_naming_the_field() {
    check_rejected(json!({"temperature": "hot"}), "temperature").await;
    check_rejected(json!({"max_tokens": -1}), "max_tokens").await;
    check_rejected(json!({"stream": "yes"}), "stream").await;
    check_rejected(
        json!({"messages": [{"role": "user", "content": 42}]}),
        "messages[0].content",
    )
    .await;
    check_rejected(json!({"messages": "hi"}), "messages").await;
    check_rejected(json!({"messages": []}), "messages").await;
}

#[tokio::test]
async fn malformed_json_is_400_in_openai_shape() {
    for body in ["{\"messages\": [", "not json", "", "{\"messages\": []} trailing"] {
        let response = send(
            shared_app(),
            "POST",
            "/v1/chat/completions",
            Some("application/json"),
            body,
        )
        .await;
        let status = response.status();
        let error = body_json(response).await;
        assert_openai_error(status, &error, StatusCode::BAD_REQUEST, None);
    }
    let (status, error) = post_json(shared_app(), "/v1/chat/completions", &json!({"temperature": 0})).await;
    assert_openai_error(status, &error, StatusCode::BAD_REQUEST, None);
    assert!(
        error["error"]["message"].as_str().unwrap().contains("messages"),
        "{error}"
    );
}

#[tokio::test]
async fn wrong_content_type_is_415_in_openai_shape() {
    let body = chat_body("hi", json!({})).to_string();
    for content_type in [Some("text/plain"), None] {
        let response = send(shared_app(), "POST", "/v1/chat/completions", content_type, body.clone()).await;
        let status = response.status();
        assert_openai_error(
            status,
            &body_json(response).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        );
    }
}

#[tokio::test]
async fn oversized_body_is_413_in_openai_shape() {
    let huge = "a".repeat(5 * 1024 * 1024);
    let (status, error) = post_json(shared_app(), "/v1/chat/completions", &chat_body(&huge, json!({}))).await;
    assert_openai_error(status, &error, StatusCode::PAYLOAD_TOO_LARGE, None);
}

#[tokio::test]
async fn prompt_longer_than_the_context_is_400() {
    // Each " word" is at least one token, so this is well past the shared engine's window.
    let long = " word".repeat(SHARED_CONTEXT * 2);
    let (status, error) = post_json(shared_app(), "/v1/chat/completions", &chat_body(&long, json!({}))).await;
    assert_openai_error(status, &error, StatusCode::BAD_REQUEST, None);
    assert_eq!(error["error"]["code"], "context_length_exceeded", "{error}");

    let (status, error) = post_json(shared_app(), "/v1/completions", &json!({"prompt": long})).await;
    assert_openai_error(status, &error, StatusCode::BAD_REQUEST, None);
}

#[tokio::test]
async fn completion_specific_rejections() {
    let cases = [
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "a", "echo": true}), "echo"),
        (json!({"prompt": "a", "best_of": 3}), "best_of"),
        (json!({"prompt": "a", "logprobs": 99}), "logprobs"),
        (json!({"prompt": [4_000_000_000u32]}), "prompt"),
        (json!({"prompt": 12.5}), "prompt"),
    ];
    for (body, param) in cases {
        let (status, error) = post_json(shared_app(), "/v1/completions", &body).await;
        assert_openai_error(status, &error, StatusCode::BAD_REQUEST, Some(param));
    }
}

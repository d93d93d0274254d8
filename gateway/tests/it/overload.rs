//! A full engine answers 429 at once, in OpenAI's error shape.

use std::time::Duration;

use axum::body::BodyDataStream;
use axum::http::StatusCode;
use axum::Router;
use gateway::{AppState, GatewayConfig};
use serde_json::json;

use crate::support::{
    assert_openai_error, body_json, chat_body, first_frame, load_engine, post_json, send, wait_for, Limits,
};

/// Start a long streaming chat and return its body once the role chunk has arrived.
async fn start_long_stream(app: &Router) -> BodyDataStream {
    let long = chat_body(
        "Tell me a very long story.",
        json!({"stream": true, "ignore_eos": true, "max_tokens": 400}),
    );
    let response = send(
        app.clone(),
        "POST",
        "/v1/chat/completions",
        Some("application/json"),
        long.to_string(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let opening = first_frame(&mut body).await;
    assert!(opening.contains("\"role\":\"assistant\""), "{opening}");
    body
}

#[tokio::test]
async fn full_engine_answers_429() {
    // One running slot and one waiting slot: the third request at once must be refused.
    let engine = load_engine(Limits {
        max_running: 1,
        max_waiting: 1,
        kv_cache_tokens: 1024,
        context_length: 512,
    });
    let app = gateway::app(AppState::new(engine.clone(), &GatewayConfig::default()));

    let mut running = start_long_stream(&app).await;
    // A content chunk means the first request left the queue and is generating.
    let content = first_frame(&mut running).await;
    assert!(content.contains("\"content\""), "{content}");
    let waiting = start_long_stream(&app).await;
    assert_eq!(engine.stats().waiting, 1);

    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = if path.ends_with("chat/completions") {
            chat_body("hi", json!({}))
        } else {
            json!({"prompt": "hi"})
        };
        let response = send(app.clone(), "POST", path, Some("application/json"), body.to_string()).await;
        let status = response.status();
        let error = body_json(response).await;
        assert_openai_error(status, &error, StatusCode::TOO_MANY_REQUESTS, None);
        assert_eq!(error["error"]["code"], "overloaded");
    }

    // Dropping the streams cancels both requests, and the engine takes work again.
    drop(waiting);
    drop(running);
    let stats_engine = engine.clone();
    wait_for(
        "both cancelled requests to leave the engine",
        Duration::from_secs(60),
        || {
            let stats = stats_engine.stats();
            std::future::ready(
                (stats.running == 0 && stats.waiting == 0 && stats.requests_cancelled == 2).then_some(()),
            )
        },
    )
    .await;
    let (status, body) = post_json(app, "/v1/chat/completions", &chat_body("hi", json!({"max_tokens": 2}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    engine.shutdown();
}

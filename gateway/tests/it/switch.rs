//! Model routing: switching the active model through the admin API while requests stream loses none of
//! them, and a fallback model takes requests while the active model's queue is slow.

use std::sync::Arc;
use std::time::Duration;

use axum::body::BodyDataStream;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use engine::EngineConfig;
use futures::StreamExt;
use gateway::config::{Secret, ServerSection};
use gateway::routing::{CatalogEntry, Fallback, Loaded, ModelRouter};
use gateway::{AppState, GatewayConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::{chat_body, first_frame, load_engine, model_path, send, sse_data, wait_for, Limits};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123";

fn limits() -> Limits {
    Limits {
        max_running: 8,
        max_waiting: 64,
        kv_cache_tokens: 4096,
        context_length: 1024,
    }
}

/// Start a streaming chat; returns its body once the role chunk arrived (the request is admitted).
async fn start_stream(app: &Router, max_tokens: u32) -> BodyDataStream {
    let body = chat_body(
        "Count from one to one hundred.",
        json!({"stream": true, "ignore_eos": true, "max_tokens": max_tokens}),
    );
    let response = send(
        app.clone(),
        "POST",
        "/v1/chat/completions",
        Some("application/json"),
        body.to_string(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body().into_data_stream();
    assert!(first_frame(&mut stream).await.contains("\"role\":\"assistant\""));
    stream
}

/// Read a stream to its end; returns (model of every chunk, finish reason, completion text).
async fn finish_stream(mut stream: BodyDataStream) -> (Vec<String>, Option<String>, String) {
    let mut text = String::new();
    while let Some(frame) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&frame.expect("readable frame")));
    }
    let (mut models, mut finish, mut content) = (Vec::new(), None, String::new());
    for data in sse_data(&text).into_iter().filter(|d| d != "[DONE]") {
        let chunk: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
        assert!(chunk.get("error").is_none(), "the stream failed: {data}");
        models.push(chunk["model"].as_str().unwrap().to_owned());
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(reason.to_owned());
        }
        content.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    (models, finish, content)
}

async fn switch_to(app: &Router, model: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method("POST")
        .uri("/admin/models/active")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(
            request
                .body(axum::body::Body::from(json!({"model": model}).to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_under_load_loses_no_request() {
    let first = load_engine(limits());
    let path = model_path();
    let mut template = EngineConfig::new(&path);
    (template.max_running, template.kv_cache_tokens, template.context_length) = (8, 4096, Some(1024));
    let catalog = vec![
        CatalogEntry {
            name: "a".into(),
            path: path.clone(),
        },
        CatalogEntry { name: "b".into(), path },
    ];
    let router = ModelRouter::new(
        Arc::new(Loaded {
            name: "a".into(),
            engine: first.clone(),
        }),
        None,
        catalog,
        Some(template),
    );
    let config = GatewayConfig {
        server: ServerSection {
            admin_token: Some(Secret(ADMIN_TOKEN.into())),
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    };
    let audit = tempfile::tempdir().unwrap();
    let log = gateway::admin_log::AdminLog::open(&audit.path().join("hearth.sqlite3")).unwrap();
    let app = gateway::app(AppState::with_router(router, &config).with_admin_log(log));

    let (status, _) = switch_to(&app, "b", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the admin API needs its token");
    let (status, body) = switch_to(&app, "nope", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["param"], "model");

    // Six answers streaming on "a" while the switch loads "b".
    let mut before = Vec::new();
    for _ in 0..6 {
        before.push(start_stream(&app, 64).await);
    }
    let (status, body) = switch_to(&app, "b", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"active": "b", "previous": "a"}));
    assert!(
        first.is_running(),
        "the previous engine runs until its requests are done"
    );
    let mut after = Vec::new();
    for _ in 0..6 {
        after.push(start_stream(&app, 16).await);
    }

    for (streams, model, tokens) in [(before, "a", 64), (after, "b", 16)] {
        for stream in streams {
            let (models, finish, content) = finish_stream(stream).await;
            assert!(
                models.iter().all(|m| m == model),
                "every chunk names {model}: {models:?}"
            );
            assert_eq!(finish.as_deref(), Some("length"), "the answer ran to max_tokens");
            assert!(!content.is_empty());
            assert!(models.len() >= 2 && models.len() <= tokens + 2);
        }
    }
    let (status, models) = crate::support::get_json(app.clone(), "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["data"][0]["id"], "b");
    // With its last request done, the previous engine stops.
    let retired = first.clone();
    wait_for("the previous engine to stop", Duration::from_secs(30), || {
        std::future::ready((!retired.is_running()).then_some(()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_queue_sends_requests_to_the_fallback() {
    // The active model runs one request at a time; the fallback takes over once one has queued 200 ms.
    let active = load_engine(Limits {
        max_running: 1,
        max_waiting: 8,
        kv_cache_tokens: 1024,
        context_length: 512,
    });
    let fallback = Arc::new(Loaded {
        name: "small".into(),
        engine: load_engine(limits()),
    });
    let router = ModelRouter::new(
        Arc::new(Loaded {
            name: "big".into(),
            engine: active.clone(),
        }),
        Some(Fallback {
            model: fallback.clone(),
            after: Duration::from_millis(200),
        }),
        Vec::new(),
        None,
    );
    let app = gateway::app(AppState::with_router(router, &GatewayConfig::default()));

    let running = start_stream(&app, 400).await;
    let queued = start_stream(&app, 4).await;
    let stats = active.clone();
    wait_for(
        "a request queued for 200 ms on the active model",
        Duration::from_secs(30),
        || std::future::ready((stats.stats().queue_wait() >= Duration::from_millis(200)).then_some(())),
    )
    .await;
    let (models, finish, _) = finish_stream(start_stream(&app, 4).await).await;
    assert!(models.iter().all(|m| m == "small"), "{models:?}");
    assert_eq!(finish.as_deref(), Some("length"));

    drop(running);
    let (models, _, _) = finish_stream(queued).await;
    assert!(
        models.iter().all(|m| m == "big"),
        "the queued request stays on the active model: {models:?}"
    );
    active.shutdown();
    fallback.engine.shutdown();
}

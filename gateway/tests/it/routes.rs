//! `/v1/models`, `/health`, unknown routes and the API key.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use gateway::config::{Secret, ServerSection};
use gateway::{AppState, GatewayConfig};
use serde_json::json;
use tower::ServiceExt;

use crate::support::{
    assert_openai_error, body_json, chat_body, get_json, post_json, send, shared_app, shared_engine, MODEL_NAME,
};

#[tokio::test]
async fn models_lists_the_served_model() {
    let (status, body) = get_json(shared_app(), "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    let models = body["data"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["id"], MODEL_NAME);
    assert_eq!(models[0]["object"], "model");
    assert_eq!(models[0]["owned_by"], "hearth");
    assert!(models[0]["created"].is_u64());
}

#[tokio::test]
async fn served_model_name_is_used_everywhere() {
    let config = GatewayConfig {
        server: ServerSection {
            served_model_name: Some("smol".into()),
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    };
    let app = gateway::app(AppState::new(shared_engine(), &config));
    let (_, models) = get_json(app.clone(), "/v1/models").await;
    assert_eq!(models["data"][0]["id"], "smol");
    let (_, chat) = post_json(
        app.clone(),
        "/v1/chat/completions",
        &chat_body("hi", json!({"max_tokens": 1})),
    )
    .await;
    assert_eq!(chat["model"], "smol");
    let (_, health) = get_json(app, "/health").await;
    assert_eq!(health["model"], "smol");
}

#[tokio::test]
async fn health_reports_engine_load() {
    let (status, body) = get_json(shared_app(), "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["model"], MODEL_NAME);
    for field in [
        "running",
        "waiting",
        "kv_blocks_used",
        "kv_blocks_total",
        "requests_total",
        "requests_finished",
        "requests_cancelled",
        "generated_tokens_total",
    ] {
        assert!(body[field].is_u64(), "{field} in {body}");
    }
    assert!(body["kv_blocks_total"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    for (method, path) in [
        ("GET", "/v1/nope"),
        ("POST", "/v1/engines/x/completions"),
        ("GET", "/nope"),
    ] {
        let response = send(shared_app(), method, path, None, Body::empty()).await;
        let status = response.status();
        let body = body_json(response).await;
        assert_openai_error(status, &body, StatusCode::NOT_FOUND, None);
        assert!(body["error"]["message"].as_str().unwrap().contains(path), "{body}");
    }
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let response = send(shared_app(), "GET", "/v1/chat/completions", None, Body::empty()).await;
    let status = response.status();
    assert_openai_error(status, &body_json(response).await, StatusCode::METHOD_NOT_ALLOWED, None);
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let response = send(shared_app(), "GET", "/health", None, Body::empty()).await;
    assert_eq!(response.headers()["x-request-id"].len(), 24);
}

#[tokio::test]
async fn api_key_guards_v1_but_not_health() {
    let config = GatewayConfig {
        server: ServerSection {
            api_keys: vec![Secret("sesame".into()), Secret("open".into())],
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    };
    let app = gateway::app(AppState::new(shared_engine(), &config));
    let models = |auth: Option<&str>| {
        let mut request = Request::builder().uri("/v1/models");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        app.clone().oneshot(request.body(Body::empty()).unwrap())
    };
    for auth in [None, Some("Bearer wrong"), Some("sesame")] {
        let response = models(auth).await.unwrap();
        let status = response.status();
        let body = body_json(response).await;
        assert_openai_error(status, &body, StatusCode::UNAUTHORIZED, None);
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    assert_eq!(models(Some("Bearer sesame")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        models(Some("Bearer open")).await.unwrap().status(),
        StatusCode::OK,
        "every configured key is accepted"
    );
    let (status, _) = get_json(app.clone(), "/health").await;
    assert_eq!(status, StatusCode::OK);
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let response = app
            .clone()
            .oneshot(Request::builder().uri(probe).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{probe} is open without a key");
    }
}

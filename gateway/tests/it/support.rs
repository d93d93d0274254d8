//! Shared fixtures: the real model, engines with small limits, and helpers to call the router or a real
//! server and to read OpenAI-shaped answers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use engine::{Engine, EngineConfig, EngineHandle};
use futures::StreamExt;
use gateway::{AppState, GatewayConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// The served model name: the GGUF file stem.
pub const MODEL_NAME: &str = "SmolLM2-135M-Instruct.Q4_1";

/// The real SmolLM2-135M Q4_1 file (the `smollm2-135m` preset: small and fast); tests need it on disk.
pub fn model_path() -> PathBuf {
    let preset = gateway::presets::Preset::find("smollm2-135m").expect("the smollm2-135m preset exists");
    let path = gateway::model_path::preset_path(preset).expect("HEARTH_MODELS_DIR or HOME must be set");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

/// Engine limits a test needs.
pub struct Limits {
    pub max_running: usize,
    pub max_waiting: usize,
    pub kv_cache_tokens: usize,
    pub context_length: usize,
}

pub fn load_engine(limits: Limits) -> EngineHandle {
    let mut config = EngineConfig::new(model_path());
    config.max_running = limits.max_running;
    config.max_waiting = limits.max_waiting;
    config.kv_cache_tokens = limits.kv_cache_tokens;
    config.context_length = Some(limits.context_length);
    Engine::load(config).expect("the real model loads")
}

/// The context window of the shared engine.
pub const SHARED_CONTEXT: usize = 1024;

/// One engine for all tests that neither change limits nor stop it, loaded on first use.
pub fn shared_engine() -> EngineHandle {
    static ENGINE: OnceLock<EngineHandle> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            load_engine(Limits {
                max_running: 8,
                max_waiting: 64,
                kv_cache_tokens: 4096,
                context_length: SHARED_CONTEXT,
            })
        })
        .clone()
}

/// The router over the shared engine with default settings.
pub fn shared_app() -> Router {
    gateway::app(AppState::new(shared_engine(), &GatewayConfig::default()))
}

/// A one-message chat request body; `extra` fields are merged in.
pub fn chat_body(content: &str, extra: Value) -> Value {
    let mut body = serde_json::json!({
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
    });
    merge(&mut body, extra);
    body
}

pub fn merge(body: &mut Value, extra: Value) {
    let (Value::Object(body), Value::Object(extra)) = (body, extra) else {
        panic!("request bodies and extras are JSON objects");
    };
    body.extend(extra);
}

/// Send one request through the router without a socket.
pub async fn send(
    app: Router,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> axum::response::Response {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    app.oneshot(request.body(body.into()).expect("valid request"))
        .await
        .expect("the router is infallible")
}

pub async fn post_json(app: Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = send(app, "POST", path, Some("application/json"), body.to_string()).await;
    let status = response.status();
    (status, body_json(response).await)
}

pub async fn get_json(app: Router, path: &str) -> (StatusCode, Value) {
    let response = send(app, "GET", path, None, Body::empty()).await;
    let status = response.status();
    (status, body_json(response).await)
}

pub async fn body_text(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("readable body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8 body")
}

pub async fn body_json(response: axum::response::Response) -> Value {
    let text = body_text(response).await;
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("body is not JSON ({err}): {text}"))
}

/// The `data:` payloads of an SSE body, in order (`[DONE]` included as is).
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// Assert OpenAI's error shape with this status, and (if given) this `param`.
pub fn assert_openai_error(status: StatusCode, body: &Value, expected: StatusCode, param: Option<&str>) {
    assert_eq!(status, expected, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {body}"
    );
    assert!(error["type"].is_string(), "error.type: {body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "error.param and error.code present: {body}"
    );
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
        assert!(
            error["message"].as_str().unwrap().contains(param),
            "the message names `{param}`: {body}"
        );
    }
}

/// Poll `probe` until it returns `Some`, for at most `limit`; panics naming `what` otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A real server (`gateway::serve`, with its connection limits) on `127.0.0.1:0` running until the test's
/// runtime ends.
pub async fn spawn_server(state: AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(gateway::serve(listener, state, std::future::pending(), Duration::ZERO));
    addr
}

/// `GET path` over a fresh connection; returns the JSON body.
pub async fn http_get_json(addr: SocketAddr, path: &str) -> Value {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|err| panic!("not JSON ({err}): {body}"))
}

/// Open a connection and send a JSON `POST`; the response is left unread.
pub async fn http_post(addr: SocketAddr, path: &str, body: &Value) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send request");
    stream
}

/// Read from `stream` until `count` SSE `data:` events have arrived (or the stream ends); returns all
/// bytes read as text.
pub async fn read_data_events(stream: &mut TcpStream, count: usize) -> String {
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while text.matches("data: ").count() < count {
        let n = stream.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

/// Read the rest of a response until the server closes the connection.
pub async fn read_to_end(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.expect("read");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The first `data:` frame of a streaming response body read through the router.
pub async fn first_frame(body: &mut axum::body::BodyDataStream) -> String {
    let frame = body
        .next()
        .await
        .expect("the stream sends at least one frame")
        .expect("readable frame");
    String::from_utf8(frame.to_vec()).expect("UTF-8 frame")
}

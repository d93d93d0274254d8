//! Pieces of the control surface (`/_emulator/…`) every emulator shares: the page's answer and the change
//! feed that the page, scripts and tests long-poll instead of polling.

use std::time::Duration;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::watched::Watched;
use crate::EmulatorError;

/// Longest wait one change-feed call may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Query of `GET /_emulator/api/wait`.
#[derive(Debug, Deserialize)]
pub(crate) struct WaitQuery {
    /// Answer once the version passes this one.
    #[serde(default)]
    after: u64,
    /// Answer after this long anyway (default 10 000, at most 60 000).
    #[serde(default = "default_wait_ms")]
    timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    10_000
}

/// `GET /_emulator/api/wait?after=V&timeout_ms=T`: `{"version"}` once the version passes V, or T ms pass.
pub(crate) async fn wait<W>(state: &Watched<W>, query: WaitQuery) -> Json<Value> {
    let timeout = Duration::from_millis(query.timeout_ms).min(MAX_WAIT);
    let version = state.wait_change(query.after, timeout).await;
    Json(json!({ "version": version }))
}

/// `GET /_emulator`: a page embedded in the binary, never cached (it follows the change feed).
pub(crate) fn page(html: &'static str) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

/// `GET /_emulator/page.js`: the script every emulator's page shares (`el`, `follow`, `postMessage`).
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("page.js"))
}

/// `GET /_emulator/page.css`: the style every emulator's page shares (each page adds its colours).
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("page.css"))
}

/// A file embedded in the binary, never cached (it changes with the binary).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A read-back answer: `found` as JSON, or [`EmulatorError::NotFound`] naming `what` (a 404).
pub(crate) fn found<T>(found: Option<T>, what: impl FnOnce() -> String) -> Result<Json<T>, EmulatorError> {
    found.map(Json).ok_or_else(|| EmulatorError::NotFound(what()))
}

/// The answer of `POST /_emulator/api/faults`: how many connections (or switches) a fault touched.
pub(crate) fn affected(count: usize) -> Json<Value> {
    Json(json!({ "affected": count }))
}

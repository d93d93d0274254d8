//! [`EmulatorError`]: what can go wrong running or driving an emulator, and how the control API answers it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// What can go wrong running or driving an emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The configuration cannot work (for example WeCom's malformed EncodingAESKey).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The HTTP server stopped with an error.
    #[error("the emulator's server failed: {0}")]
    Serve(std::io::Error),
    /// A control request was malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A control request named something that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A callback URL did not pass the verification GET (WeCom's URL mode).
    #[error("the callback URL {url} failed verification: {cause}")]
    Verification { url: String, cause: String },
    /// A condition awaited with an emulator's `wait_for` did not come true in time.
    #[error("timed out after {0:?} waiting for the emulator")]
    Timeout(Duration),
}

/// The control API's answer: 404 for [`EmulatorError::NotFound`], 502 for [`EmulatorError::Verification`]
/// (the robot's callback URL failed, not the request), 400 otherwise, `{"error": …}`.
impl IntoResponse for EmulatorError {
    fn into_response(self) -> Response {
        let status = match self {
            EmulatorError::NotFound(_) => StatusCode::NOT_FOUND,
            EmulatorError::Verification { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

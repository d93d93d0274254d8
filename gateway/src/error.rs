//! [`ApiError`]: every error the HTTP API returns, in OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`, and [`ApiJson`], the JSON extractor whose rejections
//! use that shape too.
//!
//! The HTTP status of an engine failure is chosen in one place, `From<EngineError> for ApiError`.
//! Internal failures are logged (inside the request span) with their cause; the client gets a generic message.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::EngineError;
use serde::de::DeserializeOwned;

use crate::generation::GenerateError;
use crate::openai::{ErrorBody, ErrorDetail, SamplingFields};

/// The kinds of failure a client can see; each has one HTTP status and one OpenAI `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or a parameter is out of range (400).
    InvalidRequest,
    /// Missing or wrong API key (401).
    Authentication,
    /// The request is not allowed from where it came (403): another `Host`, another origin, no credential
    /// configured for data that needs one.
    PermissionDenied,
    /// No such route (404).
    NotFound,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The body is larger than the limit (413).
    PayloadTooLarge,
    /// The body is not declared as JSON (415).
    UnsupportedMediaType,
    /// The engine's queue is full (429).
    Overloaded,
    /// The engine is shutting down (503).
    Unavailable,
    /// A bug or a model failure (500); details are in the server log only.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn type_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::Overloaded => "rate_limit_error",
            ErrorKind::Unavailable | ErrorKind::Internal => "server_error",
        }
    }
}

/// An error response. Build it with the constructors or from an [`EngineError`]; it renders as OpenAI's
/// error JSON with the kind's status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// Safe to show to the client.
    pub message: String,
    /// The request field at fault, as a JSON path (`temperature`, `messages[0].content`).
    pub param: Option<String>,
    /// A stable machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 naming the parameter at fault.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            code: Some("invalid_value"),
            ..Self::new(ErrorKind::InvalidRequest, message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// A 500 whose cause is logged here, in the current span, and never shown to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "internal error");
        Self::new(
            ErrorKind::Internal,
            "The server had an error while processing your request.",
        )
        .with_code("internal_error")
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The `{"error": {...}}` body, also sent as an SSE event when a stream fails after it started.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.type_name(),
                param: self.param.clone(),
                code: self.code,
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.status())
    }
}

impl std::error::Error for ApiError {}

/// A failed generation: an engine failure as below, a prompt too long as a 400.
impl From<GenerateError> for ApiError {
    fn from(err: GenerateError) -> Self {
        match err {
            GenerateError::Engine(err) => err.into(),
            GenerateError::PromptTooLong { param, .. } => {
                ApiError::invalid_param(param, err.to_string()).with_code("context_length_exceeded")
            }
            GenerateError::PoolClosed | GenerateError::Worker(_) => ApiError::internal(&err),
        }
    }
}

/// The one place that maps engine failures to HTTP statuses.
impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match &err {
            EngineError::Overloaded { .. } => {
                ApiError::new(ErrorKind::Overloaded, err.to_string()).with_code("overloaded")
            }
            EngineError::ContextTooLong { .. } | EngineError::KvCacheTooSmall { .. } => {
                ApiError::new(ErrorKind::InvalidRequest, err.to_string()).with_code("context_length_exceeded")
            }
            EngineError::InvalidParameter { name, .. } => ApiError::invalid_param(*name, err.to_string()),
            EngineError::EmptyPrompt => {
                ApiError::new(ErrorKind::InvalidRequest, err.to_string()).with_code("empty_prompt")
            }
            EngineError::InvalidToken { .. } => ApiError::invalid_param("prompt", format!("invalid `prompt`: {err}")),
            // The template's own message (for example "roles must alternate") is about the client's input.
            EngineError::Template(_) => ApiError::invalid_param("messages", err.to_string()),
            EngineError::ResponseFormat(_) => ApiError::invalid_param("response_format", err.to_string()),
            EngineError::ShutDown => {
                ApiError::new(ErrorKind::Unavailable, "The server is shutting down.").with_code("shutting_down")
            }
            EngineError::Model(_)
            | EngineError::Load { .. }
            | EngineError::KvCacheTooLarge { .. }
            | EngineError::Tokenizer(_) => ApiError::internal(&err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), reason = %self.message, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), reason = %self.message, "request rejected");
        }
        (status, Json(self.body())).into_response()
    }
}

/// A JSON request body of type `T`. Unlike `axum::Json`, every rejection (wrong content type, body over the
/// limit, malformed JSON, a field of the wrong type) is an [`ApiError`] whose `param` names the field.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                "Expected a request body with `Content-Type: application/json`.",
            )
            .with_code("unsupported_media_type"));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorKind::PayloadTooLarge, "The request body is too large.")
                    .with_code("request_too_large")
            } else {
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("Could not read the request body: {}", rejection.body_text()),
                )
            }
        })?;
        parse_json(&body).map(ApiJson)
    }
}

/// Parse `body` as `T`, naming the JSON path of the first bad field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let error = json_error(err);
        // A malformed field of a `#[serde(flatten)]`-ed struct fails at the top level, nameless: serde
        // deserializes it from a buffer after the whole object. Reading that struct alone names it.
        if error.param.is_none() && error.code == Some("invalid_value") {
            flattened_field_error(body).unwrap_or(error)
        } else {
            error
        }
    })?;
    de.end().map_err(|err| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("The request body is not valid JSON: {err}"),
        )
        .with_code("invalid_json")
    })?;
    Ok(value)
}

/// The error naming a malformed field of [`SamplingFields`] in `body`, the one struct the request types
/// flatten; `None` when those fields are well formed.
fn flattened_field_error(body: &[u8]) -> Option<ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let err = serde_path_to_error::deserialize::<_, SamplingFields>(&mut de).err()?;
    (err.path().to_string() != ".").then(|| json_error(err))
}

/// A deserialization error as a 400: the JSON path of the bad field is its `param`.
fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => {
            // Missing fields are reported at the parent path (`.` for the top level).
            let param = (path != ".").then_some(path);
            let message = match &param {
                Some(p) => format!("Invalid value for `{p}`: {inner}"),
                None => format!("Invalid request body: {inner}"),
            };
            ApiError {
                param,
                ..ApiError::new(ErrorKind::InvalidRequest, message).with_code("invalid_value")
            }
        }
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof | serde_json::error::Category::Io => {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("The request body is not valid JSON: {inner}"),
            )
            .with_code("invalid_json")
        }
    }
}

/// `application/json` or any `application/*+json`, with or without parameters (same rule as `axum::Json`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let Some(subtype) = essence.strip_prefix("application/") else {
        return false;
    };
    subtype == "json" || subtype.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        temperature: Option<f64>,
        messages: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        role: String,
    }

    fn check(body: &str, param: Option<&str>, code: &str) {
        let err = parse_json::<Body>(body.as_bytes()).expect_err("body should be rejected");
        assert_eq!(err.kind, ErrorKind::InvalidRequest, "{body}");
        assert_eq!(err.param.as_deref(), param, "{body}: {}", err.message);
        assert_eq!(err.code, Some(code), "{body}");
    }

    #[test]
    fn json_errors_name_the_field() {
        check(
            r#"{"messages": [], "temperature": "hot"}"#,
            Some("temperature"),
            "invalid_value",
        );
        check(
            r#"{"messages": [{"role": 1}]}"#,
            Some("messages[0].role"),
            "invalid_value",
        );
        check(r#"{"temperature": 1}"#, None, "invalid_value");
        check(r#"{"messages": [}"#, None, "invalid_json");
        check(r#"{"messages": []} x"#, None, "invalid_json");
        check("", None, "invalid_json");
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("application/vnd.api+json"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}

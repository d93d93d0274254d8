//! The web console, served at `/`: a chat page, an IM preview of the DingTalk or Feishu emulator, a status
//! page with live charts, and admin actions. Every asset is compiled into the binary (`include_str!`), so the
//! console works air-gapped; the pages are plain ES modules with no build step and no third-party code.
//!
//! The page and its assets hold no data and are open, like `/health`. The data under `/console/api/` (audit
//! records, the IM proxy) needs a credential ([`crate::guards::require_console_credential`]): the admin
//! token or an API key when either is configured, which the page sends as `Authorization: Bearer` (the
//! user types it on the Admin page or in the chat settings); with neither configured it is served only on
//! a loopback listener.
//!
//! | Route | What |
//! |---|---|
//! | `GET /` | the single-page console (`assets/index.html`) |
//! | `GET /console/assets/{file}` | its scripts, stylesheet and icon, from [`ASSETS`] |
//! | `GET /console/api/status` | [`StatusView`]: model, engine load, IM health, deliveries and audit, for the status page |
//! | `GET`/`POST /console/api/im/{*path}` | proxied to the emulator's `/_emulator/api/{path}` (`--emulator-url`) |
//!
//! The IM proxy is server-side, so the browser only ever talks to hearth: the emulator may listen on a
//! port the browser cannot reach, and the page needs no CORS. Its `POST`s must be same-origin JSON
//! ([`crate::access::check_same_origin_json`], against CSRF), and its paths stay under `/_emulator/api/`
//! (no `.`/`..` segments, no encoded `/`, `\` or `.`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::audit::AuditRecord;
use crate::error::{ApiError, ErrorKind};
use crate::im::link::ImLink;
use crate::metrics;
use crate::metrics::EngineLoad;
use crate::platform::HealthView;
use crate::state::AppState;
use crate::{access, guards};

/// One embedded file: its name under `/console/assets/`, its content type and its bytes.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page shell, served at `/`.
pub const INDEX_HTML: &str = include_str!("assets/index.html");

/// Every file under `/console/assets/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/favicon.svg"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "auth.js",
        content_type: JS,
        body: include_str!("assets/auth.js"),
    },
    Asset {
        name: "markdown.js",
        content_type: JS,
        body: include_str!("assets/markdown.js"),
    },
    Asset {
        name: "chat.js",
        content_type: JS,
        body: include_str!("assets/chat.js"),
    },
    Asset {
        name: "im.js",
        content_type: JS,
        body: include_str!("assets/im.js"),
    },
    Asset {
        name: "status.js",
        content_type: JS,
        body: include_str!("assets/status.js"),
    },
    Asset {
        name: "admin.js",
        content_type: JS,
        body: include_str!("assets/admin.js"),
    },
    Asset {
        name: "charts.js",
        content_type: JS,
        body: include_str!("assets/charts.js"),
    },
];

/// The console's routes: the page and assets open, the data behind the console credential.
pub fn routes(state: &AppState) -> Router<AppState> {
    let data = Router::new()
        .route("/console/api/status", get(status))
        .route("/console/api/im/{*path}", get(im_proxy).post(im_proxy))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guards::require_console_credential,
        ));
    Router::new()
        .route("/", get(index))
        .route("/console/assets/{file}", get(asset))
        .merge(data)
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => ApiError::new(ErrorKind::NotFound, format!("No console asset named {file:?}."))
            .with_code("unknown_url")
            .into_response(),
    }
}

/// `GET /console/api/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Server clock, Unix milliseconds: the page computes rates between two polls with it.
    pub now_ms: u64,
    pub model: ModelView,
    /// Where the model runs: `cpu` or `cuda:N`.
    pub device: String,
    #[serde(flatten)]
    pub load: EngineLoad,
    /// The IM connectors' health.
    pub platforms: Vec<HealthView>,
    /// IM delivery outcomes so far, from the metrics recorder.
    pub im_deliveries: Vec<DeliveryCount>,
    /// The newest audit records of every connector, newest first, questions and answers masked and
    /// shortened to [`AUDIT_TEXT_CHARS`].
    pub audit: Vec<AuditRecord>,
    pub emulator: bool,
    pub admin_api: bool,
}

/// The active model.
#[derive(Debug, Serialize)]
pub struct ModelView {
    pub name: String,
    pub architecture: String,
    pub quantization: String,
    pub context_length: usize,
    pub file: String,
}

/// One `hearth_im_deliveries_total{platform,outcome}` series.
#[derive(Debug, Serialize, PartialEq)]
pub struct DeliveryCount {
    pub platform: String,
    pub outcome: String,
    pub count: u64,
}

async fn status(State(state): State<AppState>) -> Json<StatusView> {
    let active = state.models.active();
    let info = active.engine.info();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let im_deliveries = metrics::handle()
        .map(|h| parse_deliveries(&h.render()))
        .unwrap_or_default();
    Json(StatusView {
        now_ms,
        model: ModelView {
            name: active.name.to_string(),
            architecture: info.architecture.clone(),
            quantization: info.quantization.clone(),
            context_length: info.context_length,
            file: info
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        },
        device: info.device.to_string(),
        load: EngineLoad::from(&active.engine.stats()),
        platforms: state.console.platforms.iter().map(|p| p.health.view()).collect(),
        im_deliveries,
        audit: recent_audit(&state.console.platforms).await,
        emulator: state.console.emulator_url.is_some(),
        admin_api: state.credentials.guards(crate::access::Scope::Admin),
    })
}

/// Audit records on the status page.
pub const AUDIT_ROWS: usize = 10;
/// Longest question or answer shown on the status page, in characters.
pub const AUDIT_TEXT_CHARS: usize = 160;

/// The [`AUDIT_ROWS`] newest records across `platforms`, newest first, texts shortened.
async fn recent_audit(platforms: &[ImLink]) -> Vec<AuditRecord> {
    let mut records = Vec::new();
    for link in platforms {
        match link.audit.recent(AUDIT_ROWS).await {
            Ok(mut more) => records.append(&mut more),
            Err(err) => tracing::warn!(cause = %err, "cannot read the audit log for the status page"),
        }
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
    records.truncate(AUDIT_ROWS);
    for record in &mut records {
        shorten(&mut record.question);
        shorten(&mut record.answer);
    }
    records
}

fn shorten(text: &mut String) {
    if let Some((cut, _)) = text.char_indices().nth(AUDIT_TEXT_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
}

/// The `hearth_im_deliveries_total` lines of a Prometheus text page.
fn parse_deliveries(page: &str) -> Vec<DeliveryCount> {
    page.lines()
        .filter_map(|line| line.strip_prefix("hearth_im_deliveries_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    kv.strip_prefix(name)?
                        .strip_prefix("=\"")?
                        .strip_suffix('"')
                        .map(str::to_owned)
                })
            };
            Some(DeliveryCount {
                platform: label("platform")?,
                outcome: label("outcome")?,
                count: value.trim().parse::<f64>().ok()? as u64,
            })
        })
        .collect()
}

/// `GET`/`POST /console/api/im/{*path}` → the emulator's `/_emulator/api/{path}`, status and JSON body as is.
async fn im_proxy(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::POST {
        if let Err(err) = access::check_same_origin_json(&headers) {
            return err.into_response();
        }
    }
    // The raw (still percent-encoded) path: its segments are checked, then forwarded as they came.
    let Some(path) = uri
        .path()
        .strip_prefix("/console/api/im/")
        .filter(|path| is_contained(path))
    else {
        return ApiError::invalid_param(
            "path",
            "The IM path must not contain `.` or `..` segments or encoded separators.",
        )
        .with_code("invalid_path")
        .into_response();
    };
    let Some(base) = state.console.emulator_url.as_deref() else {
        return ApiError::new(
            ErrorKind::NotFound,
            "No emulator is attached: start `hearth serve` with --emulator-url http://HOST:PORT.",
        )
        .with_code("emulator_off")
        .into_response();
    };
    let mut url = format!("{base}/_emulator/api/{path}");
    if let Some(query) = uri.query() {
        url.push('?');
        url.push_str(query);
    }
    let request = match method {
        Method::POST => state
            .console
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body),
        _ => state.console.http.get(&url),
    };
    match request.send().await {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match answer.bytes().await {
                Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
                Err(err) => bad_gateway(&url, &err),
            }
        }
        Err(err) => bad_gateway(&url, &err),
    }
}

/// Whether a raw URL path stays below where it is appended: no `.` or `..` segment, and no percent-encoded
/// byte that would change that once decoded (`/`, `\\`, `.`) or is not valid encoding.
fn is_contained(raw_path: &str) -> bool {
    raw_path.split('/').all(|segment| {
        if segment == "." || segment == ".." || segment.contains('\\') {
            return false;
        }
        let mut escapes = segment.split('%').skip(1);
        escapes.all(|escape| {
            let byte = escape.get(..2).and_then(|hex| u8::from_str_radix(hex, 16).ok());
            matches!(byte, Some(b) if b != b'/' && b != b'\\' && b != b'.')
        })
    })
}

fn bad_gateway(url: &str, err: &reqwest::Error) -> Response {
    tracing::warn!(%url, cause = %err, "the emulator did not answer");
    (
        StatusCode::BAD_GATEWAY,
        Json(serde_json::json!({"error": format!("the emulator at {url} did not answer: {err}")})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn im_paths_stay_under_the_control_api() {
        for path in ["state", "conversations/cid%2Babc", "cards/a-b_c", "wait"] {
            assert!(is_contained(path), "{path}");
        }
        for path in [
            "../state",
            "a/../../x",
            "..%2F..%2Fv1.0",
            "%2e%2e/x",
            "a%5Cb",
            "a\\b",
            ".",
            "a/./b",
            "%zz",
            "%2",
        ] {
            assert!(!is_contained(path), "{path}");
        }
    }

    #[test]
    fn deliveries_are_read_from_the_metrics_page() {
        let page = "# TYPE hearth_im_deliveries_total counter\n\
                    hearth_im_deliveries_total{platform=\"dingtalk\",outcome=\"finalized\"} 3\n\
                    hearth_im_card_update_failures_total{platform=\"dingtalk\"} 1\n";
        assert_eq!(
            parse_deliveries(page),
            vec![DeliveryCount {
                platform: "dingtalk".into(),
                outcome: "finalized".into(),
                count: 3
            }]
        );
    }
}

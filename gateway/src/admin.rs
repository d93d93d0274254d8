//! The admin API, behind `Authorization: Bearer <server.admin_token or a key with the admin scope>` (off when
//! none is configured): `GET /admin/models` lists the configured models; `POST /admin/models/active
//! {"model": NAME}` switches the active model without dropping a connection (see [`crate::routing`]);
//! `POST /admin/skills/reload` re-reads the `[skills]` section of the config file for every IM connector;
//! `GET /admin/audit?limit=N` reads the admin audit log back, newest first.
//!
//! Every action that changes state writes one [`AdminRecord`] naming the credential that asked, the action,
//! its target and outcome ([`crate::admin_log`]); without an admin audit log ([`AppState::admin_log`]) such
//! an action is refused (503 `admin_audit_off`) rather than done unrecorded.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::access::{Caller, Scope};
use crate::admin_log::{AdminAction, AdminLog, AdminOutcome, AdminRecord};
use crate::error::{ApiError, ApiJson, ErrorKind};
use crate::guards;
use crate::routing::SwitchError;
use crate::state::AppState;

/// `Authorization: Bearer <admin token>`; without a credential of the admin scope the admin routes do not
/// exist.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.credentials.guards(Scope::Admin) {
        return ApiError::new(
            ErrorKind::NotFound,
            "The admin API is off: set server.admin_token in the config to turn it on.",
        )
        .with_code("admin_api_off")
        .into_response();
    }
    let unknown = ApiError::new(
        ErrorKind::Authentication,
        "Missing or incorrect admin token: send `Authorization: Bearer <admin_token>`.",
    )
    .with_code("invalid_admin_token");
    guards::grant(&state, req, next, &[Scope::Admin], unknown).await
}

/// The admin audit log, or the refusal an action that would go unrecorded gets.
fn admin_log(state: &AppState) -> Result<&AdminLog, ApiError> {
    state.admin_log.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unavailable,
            "The admin audit log is not open, so admin actions that change state are refused \
             (`hearth serve` keeps it in the data directory).",
        )
        .with_code("admin_audit_off")
    })
}

/// Record that `caller` asked for `action` on `target` and how it ended. A record that cannot be written is
/// logged with everything it held: the action has happened by then.
async fn record(
    log: &AdminLog,
    caller: &Caller,
    action: AdminAction,
    target: &str,
    outcome: AdminOutcome,
    detail: String,
) {
    let record = AdminRecord {
        at_ms: crate::db::now_ms(),
        caller: caller.0.clone(),
        action,
        target: target.to_owned(),
        outcome,
        detail,
    };
    tracing::info!(caller = %record.caller, %action, acted_on = target, %outcome, detail = %record.detail, "admin action");
    if let Err(err) = log.record(record).await {
        tracing::error!(cause = %err, caller = %caller.0, %action, acted_on = target, %outcome, "cannot write the admin audit record");
    }
}

/// One model in `GET /admin/models`.
#[derive(Debug, Serialize)]
pub struct AdminModel {
    pub name: String,
    pub path: String,
    pub active: bool,
    pub fallback: bool,
}

/// `GET /admin/models`.
pub async fn list_models(State(state): State<AppState>) -> Json<Vec<AdminModel>> {
    let active = state.models.active();
    let fallback = state.models.fallback().map(|f| f.model.name.clone());
    let mut list: Vec<AdminModel> = state
        .models
        .catalog()
        .iter()
        .map(|entry| AdminModel {
            name: entry.name.clone(),
            path: entry.path.display().to_string(),
            active: *active.name == *entry.name,
            fallback: fallback.as_deref() == Some(entry.name.as_str()),
        })
        .collect();
    if !list.iter().any(|m| m.active) {
        list.insert(
            0,
            AdminModel {
                name: active.name.to_string(),
                path: active.engine.info().path.display().to_string(),
                active: true,
                fallback: false,
            },
        );
    }
    Json(list)
}

/// `POST /admin/models/active` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    pub model: String,
}

/// `POST /admin/models/active` answer.
#[derive(Debug, Serialize)]
pub struct SwitchResponse {
    pub active: String,
    pub previous: String,
}

/// `POST /admin/models/active`: load the model, make it active, let the previous one drain; audited.
pub async fn switch_model(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<SwitchRequest>,
) -> Result<Json<SwitchResponse>, ApiError> {
    let log = admin_log(&state)?;
    let (answer, outcome, detail) = match state.models.switch(&body.model).await {
        Ok(previous) => {
            let detail = format!("previous: {previous}");
            let answer = SwitchResponse {
                active: body.model.clone(),
                previous: previous.to_string(),
            };
            (Ok(Json(answer)), AdminOutcome::Done, detail)
        }
        Err(err @ SwitchError::Unknown { .. }) => {
            let detail = err.to_string();
            let error = ApiError {
                param: Some("model".to_owned()),
                ..ApiError::new(ErrorKind::NotFound, err.to_string()).with_code("model_not_found")
            };
            (Err(error), AdminOutcome::Refused, detail)
        }
        // The admin may see why a load failed (a missing or damaged file); the active model stays.
        Err(err @ SwitchError::Load { .. }) => {
            tracing::error!(cause = %err, "model switch failed; the active model stays");
            let detail = err.to_string();
            let error = ApiError::new(ErrorKind::Internal, err.to_string()).with_code("model_load_failed");
            (Err(error), AdminOutcome::Failed, detail)
        }
    };
    record(log, &caller, AdminAction::SwitchModel, &body.model, outcome, detail).await;
    answer
}

/// `POST /admin/skills/reload` answer.
#[derive(Debug, Serialize)]
pub struct ReloadResponse {
    /// The skills now live, by connector platform.
    pub platforms: Vec<ReloadedSkills>,
}

/// The skills of one connector after a reload.
#[derive(Debug, Serialize)]
pub struct ReloadedSkills {
    pub platform: String,
    pub skills: Vec<String>,
}

/// `POST /admin/skills/reload`: re-read `[skills]` from the config file. A section that does not parse
/// or validate is refused with its error, and the skills in use stay. Audited.
pub async fn reload_skills(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ReloadResponse>, ApiError> {
    let log = admin_log(&state)?;
    let answer = reload_every_connector(&state);
    let (outcome, detail) = match &answer {
        Ok(reloaded) => {
            let live = reloaded
                .platforms
                .iter()
                .map(|p| format!("{}: {}", p.platform, p.skills.join(", ")));
            (AdminOutcome::Done, live.collect::<Vec<_>>().join("; "))
        }
        Err(err) => (AdminOutcome::Refused, err.message.clone()),
    };
    record(log, &caller, AdminAction::ReloadSkills, "", outcome, detail).await;
    answer.map(Json)
}

fn reload_every_connector(state: &AppState) -> Result<ReloadResponse, ApiError> {
    if state.console.platforms.is_empty() {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "No IM connector runs in this process, so there are no skills to reload.",
        )
        .with_code("no_skills"));
    }
    let mut platforms = Vec::new();
    for link in &state.console.platforms {
        let platform = link.health.view().name;
        if let Err(err) = link.skills.reload() {
            tracing::warn!(platform, cause = %err, "skills reload refused; the skills in use stay");
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("The skills were not reloaded: {err}"),
            )
            .with_code("invalid_skills"));
        }
        platforms.push(ReloadedSkills {
            platform,
            skills: link.skills.registry().names(),
        });
    }
    Ok(ReloadResponse { platforms })
}

/// `GET /admin/audit` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// How many records, newest first (default 100, at most 1,000).
    pub limit: Option<usize>,
}

/// `GET /admin/audit` answer.
#[derive(Debug, Serialize)]
pub struct AuditResponse {
    pub records: Vec<AdminRecord>,
}

/// `GET /admin/audit`: the newest admin audit records.
pub async fn audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditResponse>, ApiError> {
    let Query(query) = query.map_err(|err| ApiError {
        param: Some("limit".to_owned()),
        ..ApiError::new(ErrorKind::InvalidRequest, format!("Bad query: {}", err.body_text()))
    })?;
    let log = admin_log(&state)?;
    let limit = query.limit.unwrap_or(100).min(1_000);
    let records = log.recent(limit).await.map_err(|err| {
        tracing::error!(cause = %err, "cannot read the admin audit log");
        ApiError::new(ErrorKind::Internal, "The admin audit log cannot be read.")
    })?;
    Ok(Json(AuditResponse { records }))
}

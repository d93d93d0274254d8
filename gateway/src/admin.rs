//! The admin API, behind `Authorization: Bearer <server.admin_token or a key with the admin scope>` (off when
//! none is configured); each change is logged with the name of the credential that made it:
//! `GET /admin/models` lists the configured models; `POST /admin/models/active {"model": NAME}` switches
//! the active model without dropping a connection (see [`crate::routing`]); `POST /admin/skills/reload`
//! re-reads the `[skills]` section of the config file for every IM connector.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::access::{Caller, Scope};
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

/// `POST /admin/models/active`: load the model, make it active, let the previous one drain.
pub async fn switch_model(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<SwitchRequest>,
) -> Result<Json<SwitchResponse>, ApiError> {
    tracing::info!(caller = %caller.0, model = %body.model, "admin: switching the active model");
    match state.models.switch(&body.model).await {
        Ok(previous) => Ok(Json(SwitchResponse {
            active: body.model,
            previous: previous.to_string(),
        })),
        Err(err @ SwitchError::Unknown { .. }) => Err(ApiError {
            param: Some("model".to_owned()),
            ..ApiError::new(ErrorKind::NotFound, err.to_string()).with_code("model_not_found")
        }),
        // The admin may see why a load failed (a missing or damaged file); the active model stays.
        Err(err @ SwitchError::Load { .. }) => {
            tracing::error!(cause = %err, "model switch failed; the active model stays");
            Err(ApiError::new(ErrorKind::Internal, err.to_string()).with_code("model_load_failed"))
        }
    }
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
/// or validate is refused with its error, and the skills in use stay.
pub async fn reload_skills(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ReloadResponse>, ApiError> {
    tracing::info!(caller = %caller.0, "admin: reloading the skills");
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
    Ok(Json(ReloadResponse { platforms }))
}

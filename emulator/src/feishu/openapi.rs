//! The HTTP side of the platform: endpoint discovery (§1.1), tenant tokens (§5), IM send and reply (§7),
//! with the error envelope (§0, §6), per-API quotas and injected faults. CardKit is in `cardkit.rs`.
//!
//! Every bot call passes [`Shared::gate`] in the platform's order: the injected delay, the tenant token, the
//! scope, the per-API quota, then the injected rate-limit storm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::wire::{EndpointRequest, MessageRequest, TokenRequest, WireClientConfig};
use super::world::{ChatEntry, Shared, World};
use crate::ids::{digits, hex, now_ms};

/// Scope of the IM send and reply APIs.
pub const SCOPE_IM_SEND: &str = "im:message:send_as_bot";
/// Scope of every CardKit mutation.
pub const SCOPE_CARDKIT: &str = "cardkit:card:write";
/// Scope under which 1:1 messages are pushed to the bot.
pub const SCOPE_P2P_EVENTS: &str = "im:message.p2p_msg:readonly";
/// Scope under which group messages that @-mention the bot are pushed.
pub const SCOPE_GROUP_AT_EVENTS: &str = "im:message.group_at_msg:readonly";
/// The scopes an app holds by default.
pub const ALL_SCOPES: &[&str] = &[SCOPE_IM_SEND, SCOPE_CARDKIT, SCOPE_P2P_EVENTS, SCOPE_GROUP_AT_EVENTS];

/// Common code: request trigger frequency limit (§6).
pub const CODE_RATE_LIMITED: i64 = 99_991_400;
/// Common code: the app lacks the API's scope.
pub const CODE_MISSING_SCOPE: i64 = 99_991_672;
/// Common code: tenant token invalid or expired.
pub const CODE_TOKEN_INVALID: i64 = 99_991_663;
/// Common code: no access token.
pub const CODE_TOKEN_MISSING: i64 = 99_991_661;
/// Common code: the token does not start with `t-` or `u-`.
pub const CODE_TOKEN_MALFORMED: i64 = 99_991_671;

/// An OpenAPI error in the platform's envelope: `{"code","msg","error":{"log_id",…}}` plus the
/// `X-Tt-Logid` header, and the `x-ogw-ratelimit-*` headers on rate limits.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: i64,
    pub msg: String,
    /// `(limit, seconds until reset)` of a 99991400.
    pub rate_limit: Option<(u32, u64)>,
    /// The scope a 99991672 lacks.
    pub missing_scope: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: i64, msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            msg: msg.into(),
            rate_limit: None,
            missing_scope: None,
        }
    }

    /// HTTP 400 with `code`.
    pub fn bad(code: i64, msg: impl Into<String>) -> Self {
        Self::new(400, code, msg)
    }

    /// 429 / 99991400 with the rate-limit headers.
    pub fn rate_limited(limit: u32, reset_secs: u64) -> Self {
        Self {
            rate_limit: Some((limit, reset_secs)),
            ..Self::new(429, CODE_RATE_LIMITED, "request trigger frequency limit")
        }
    }

    /// 400 / 99991672 naming the missing scope.
    pub fn missing_scope(scope: &str) -> Self {
        Self {
            missing_scope: Some(scope.to_owned()),
            ..Self::bad(
                CODE_MISSING_SCOPE,
                format!("Access denied. One of the following scopes is required: [{scope}]."),
            )
        }
    }
}

fn log_id() -> String {
    format!("{}{}", now_ms(), hex(18).to_uppercase())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let log_id = log_id();
        let mut error = json!({"log_id": log_id});
        if let Some(scope) = &self.missing_scope {
            error["permission_violations"] =
                json!([{"type": "action_scope_required", "subject": scope, "description": "the app lacks this scope"}]);
        }
        let body = json!({"code": self.code, "msg": self.msg, "error": error});
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        insert(headers, "x-tt-logid", &log_id);
        if let Some((limit, reset)) = self.rate_limit {
            insert(headers, "x-ogw-ratelimit-limit", &limit.to_string());
            insert(headers, "x-ogw-ratelimit-reset", &reset.to_string());
        }
        response
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// A success: `{"code": 0, "msg": "success", "data": data}` with a log id.
pub(crate) fn ok(data: Value) -> Response {
    with_log_id(Json(json!({"code": 0, "msg": "success", "data": data})).into_response())
}

fn with_log_id(mut response: Response) -> Response {
    insert(response.headers_mut(), "x-tt-logid", &log_id());
    response
}

/// Parse a JSON body; anything else is HTTP 400 with `bad_code`.
pub(crate) fn parse<T: DeserializeOwned + Default>(body: &Bytes, bad_code: i64) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|err| ApiError::bad(bad_code, format!("the body is not valid JSON: {err}")))
}

/// Count a refusal in the stats and pass it on.
pub(crate) fn refused(world: &mut World, err: ApiError) -> ApiError {
    world.stats.openapi_rejections += 1;
    if err.code == CODE_RATE_LIMITED {
        world.stats.rate_limited += 1;
    }
    err
}

impl Shared {
    /// The checks every bot call passes, in order: injected delay, tenant token, scope, the API's quota,
    /// the injected rate-limit storm.
    pub(crate) async fn gate(&self, headers: &HeaderMap, api: &'static str, scope: &str) -> Result<(), ApiError> {
        self.delay().await;
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.with(|world, config| {
            let now = Instant::now();
            let status = config.token_error_status;
            let token = auth.strip_prefix("Bearer ").unwrap_or_default().trim();
            if token.is_empty() {
                return Err(refused(
                    world,
                    ApiError::new(status, CODE_TOKEN_MISSING, "Missing access token for authorization."),
                ));
            }
            if !token.starts_with("t-") && !token.starts_with("u-") {
                return Err(refused(
                    world,
                    ApiError::new(status, CODE_TOKEN_MALFORMED, "Invalid token: must start with t- or u-."),
                ));
            }
            if world.tokens.get(token).is_none_or(|expiry| *expiry <= now) {
                return Err(refused(
                    world,
                    ApiError::new(status, CODE_TOKEN_INVALID, "Invalid access token for authorization."),
                ));
            }
            if !world.scopes.iter().any(|s| s == scope) {
                return Err(refused(world, ApiError::missing_scope(scope)));
            }
            let quota = world.quotas.entry(api).or_default();
            let short = World::window_full(&mut quota.short, config.api_calls_per_window, config.quota_window, now)
                .map(|reset| (config.api_calls_per_window, reset));
            let minute = World::window_full(
                &mut quota.minute,
                config.api_calls_per_minute,
                Duration::from_secs(60),
                now,
            )
            .map(|reset| (config.api_calls_per_minute, reset));
            if let Some((limit, reset)) = short.or(minute) {
                return Err(refused(world, ApiError::rate_limited(limit, reset)));
            }
            quota.short.push_back(now);
            quota.minute.push_back(now);
            if world.faults.rate_limit_storm.as_mut().is_some_and(|f| f.hit()) {
                return Err(refused(world, ApiError::rate_limited(config.api_calls_per_window, 1)));
            }
            Ok(())
        })
    }

    /// The injected delay, if any.
    pub(crate) async fn delay(&self) {
        let slow = self.read(|world| world.faults.slow_ms);
        if slow > 0 {
            tokio::time::sleep(Duration::from_millis(slow)).await;
        }
    }

    fn check_app(&self, id: &str, secret: &str) -> bool {
        id == self.config.app_id && secret == self.config.app_secret
    }
}

/// `POST /callback/ws/endpoint`: a one-time WebSocket URL and the `ClientConfig` (§1.1). Errors keep
/// `data: {}`, which the Node SDK reads before it looks at `code`.
pub async fn endpoint(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.delay().await;
    let answer =
        |code: i64, msg: &str, data: Value| Json(json!({"code": code, "msg": msg, "data": data})).into_response();
    let request: EndpointRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            shared.with(|world, _| world.stats.discoveries_refused += 1);
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"code": 10002, "msg": format!("the body is not valid JSON: {err}"), "data": {}})),
            )
                .into_response();
        }
    };
    let injected = shared.with(|world, _| {
        world.stats.discoveries += 1;
        let fault = world.faults.discovery_error.as_mut()?;
        fault.remaining = fault.remaining.saturating_sub(1);
        let code = fault.code;
        if fault.remaining == 0 {
            world.faults.discovery_error = None;
        }
        world.stats.discoveries_refused += 1;
        Some(code)
    });
    if let Some(code) = injected {
        tracing::info!(code, "refusing a discovery call (injected)");
        return answer(code, "system busy", json!({}));
    }
    if !shared.check_app(&request.app_id, &request.app_secret) {
        tracing::info!(app_id = %request.app_id, "refusing discovery for unknown credentials");
        shared.with(|world, _| world.stats.discoveries_refused += 1);
        return answer(
            shared.config.discovery_refusal_code,
            "app id or app secret is invalid",
            json!({}),
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| shared.addr.to_string());
    let ticket = hex(32);
    let device_id = digits(19);
    let service_id: i32 = rand::Rng::random_range(&mut rand::rng(), 1..i32::MAX);
    shared.with(|world, config| {
        let now = Instant::now();
        world.tickets.retain(|_, (expiry, _, _)| *expiry > now);
        world
            .tickets
            .insert(ticket.clone(), (now + config.ticket_ttl, device_id.clone(), service_id));
    });
    // `device_id` and `service_id` are never first: the Node SDK parses the whole URL as a query string.
    let url = format!(
        "ws://{host}/ws/v2?fpid=493&aid=552564&device_id={device_id}&access_key={}&service_id={service_id}&ticket={ticket}",
        hex(32)
    );
    answer(
        0,
        "ok",
        json!({"URL": url, "ClientConfig": WireClientConfig::from(shared.config.client_config)}),
    )
}

/// `POST /open-apis/auth/v3/tenant_access_token/internal` (§5): fields at the top level, not under `data`.
pub async fn tenant_access_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    shared.delay().await;
    let request: TokenRequest = parse(&body, 10_003)?;
    if request.app_id.is_empty() || request.app_secret.is_empty() {
        return Err(ApiError::bad(10_003, "app_id and app_secret are required"));
    }
    if !shared.check_app(&request.app_id, &request.app_secret) {
        return Err(ApiError::bad(10_014, "app secret invalid"));
    }
    let (token, expire) = shared.with(|world, config| world.issue_token(config, Instant::now()));
    Ok(with_log_id(
        Json(json!({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire})).into_response(),
    ))
}

/// Query of the send API.
#[derive(Debug, Deserialize)]
pub struct SendQuery {
    #[serde(default)]
    receive_id_type: Option<String>,
}

/// `POST /open-apis/im/v1/messages?receive_id_type=…` (§7.1).
pub async fn send_message(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<SendQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared.gate(&headers, "im.message.create", SCOPE_IM_SEND).await?;
    let request: MessageRequest = parse(&body, 230_001)?;
    shared.with(|world, config| {
        let id_type = query.receive_id_type.as_deref().unwrap_or_default();
        let receive_id = request.receive_id.as_deref().unwrap_or_default();
        if receive_id.is_empty() {
            return Err(refused(world, ApiError::bad(230_001, "receive_id is required")));
        }
        let chat_id = match id_type {
            "chat_id" => world.chat(receive_id).map(|c| c.chat_id.clone()),
            "open_id" | "union_id" | "user_id" => world
                .find_user(id_type, receive_id)
                .cloned()
                .map(|user| world.p2p_chat(&user).chat_id.clone()),
            "" => return Err(refused(world, ApiError::bad(230_001, "receive_id_type is required"))),
            other => {
                return Err(refused(
                    world,
                    ApiError::bad(
                        230_001,
                        format!("receive_id_type {other:?} is not supported by the emulator"),
                    ),
                ))
            }
        };
        let Some(chat_id) = chat_id else {
            return Err(refused(
                world,
                ApiError::bad(230_034, format!("receive_id {receive_id} is invalid for {id_type}")),
            ));
        };
        post_bot_message(world, config, &chat_id, &request, None).map(ok)
    })
}

/// `POST /open-apis/im/v1/messages/:message_id/reply` (§7.2).
pub async fn reply_message(
    State(shared): State<Arc<Shared>>,
    Path(message_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared.gate(&headers, "im.message.reply", SCOPE_IM_SEND).await?;
    let request: MessageRequest = parse(&body, 230_001)?;
    shared.with(|world, config| {
        let Some(chat_id) = world.message_chats.get(&message_id).cloned() else {
            return Err(refused(
                world,
                ApiError::bad(230_001, format!("message_id {message_id} does not exist")),
            ));
        };
        post_bot_message(world, config, &chat_id, &request, Some(&message_id)).map(ok)
    })
}

/// Check and record one bot message into `chat_id`; returns the response `data`.
fn post_bot_message(
    world: &mut World,
    config: &super::EmulatorConfig,
    chat_id: &str,
    request: &MessageRequest,
    reply_to: Option<&str>,
) -> Result<Value, ApiError> {
    let now = Instant::now();
    if let Some(uuid) = request.uuid.as_deref().filter(|u| !u.is_empty()) {
        if uuid.chars().count() > 50 {
            return Err(refused(
                world,
                ApiError::bad(230_001, "uuid is longer than 50 characters"),
            ));
        }
        world
            .message_uuids
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < Duration::from_secs(3600));
        if let Some((_, message_id)) = world.message_uuids.get(uuid) {
            let message_id = message_id.clone();
            if let Some(data) = message_data(world, config, &message_id) {
                return Ok(data);
            }
        }
    }
    let msg_type = request.msg_type.clone().unwrap_or_default();
    let content = request.content.clone().unwrap_or_default();
    let parsed: Value = serde_json::from_str(&content).map_err(|_| {
        refused(
            world,
            ApiError::bad(230_001, "content must be a JSON object serialized into a string"),
        )
    })?;
    let (text, card_id) = match msg_type.as_str() {
        "text" => {
            if content.len() > config.max_text_bytes {
                return Err(refused(world, ApiError::bad(230_025, "the text message is too long")));
            }
            let text = parsed
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| refused(world, ApiError::bad(230_001, "a text message's content needs \"text\"")))?;
            (text.to_owned(), None)
        }
        "post" | "interactive" => {
            if content.len() > config.max_card_bytes {
                return Err(refused(
                    world,
                    ApiError::bad(230_025, "the message content is over 30 KB"),
                ));
            }
            let card_id = if msg_type == "interactive" && parsed.get("type").and_then(Value::as_str) == Some("card") {
                let card_id = parsed
                    .pointer("/data/card_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match world.cards.get(card_id) {
                    None => {
                        return Err(refused(
                            world,
                            ApiError::bad(
                                230_099,
                                format!("Failed to create card content, ext=ErrCode: 200740; ErrMsg: card {card_id} does not exist"),
                            ),
                        ))
                    }
                    Some(card) if card.message_id.is_some() => {
                        return Err(refused(
                            world,
                            ApiError::bad(
                                230_099,
                                format!("Failed to create card content, ext=card entity {card_id} was already sent; a card entity is sent once"),
                            ),
                        ))
                    }
                    Some(_) => Some(card_id.to_owned()),
                }
            } else {
                None
            };
            (String::new(), card_id)
        }
        "" => return Err(refused(world, ApiError::bad(230_001, "msg_type is required"))),
        other => {
            return Err(refused(
                world,
                ApiError::bad(230_001, format!("msg_type {other:?} is not supported by the emulator")),
            ))
        }
    };
    let message_id = format!("om_{}", hex(32));
    if let Some(card_id) = &card_id {
        let card = world.cards.get_mut(card_id).expect("checked above");
        card.message_id = Some(message_id.clone());
        card.chat_id = Some(chat_id.to_owned());
        card.record("send", None, None, None, None);
    }
    let chat = world.chat_mut(chat_id).expect("the caller found the chat");
    chat.messages.push(ChatEntry::Bot {
        message_id: message_id.clone(),
        msg_type,
        content,
        text,
        reply_to: reply_to.map(str::to_owned),
        card_id,
        at_ms: now_ms(),
    });
    world.message_chats.insert(message_id.clone(), chat_id.to_owned());
    if let Some(uuid) = request.uuid.as_deref().filter(|u| !u.is_empty()) {
        world.message_uuids.insert(uuid.to_owned(), (now, message_id.clone()));
    }
    world.stats.messages_sent += 1;
    Ok(message_data(world, config, &message_id).expect("just recorded"))
}

/// The `data` of a send or reply answer for a bot message.
fn message_data(world: &World, config: &super::EmulatorConfig, message_id: &str) -> Option<Value> {
    let chat_id = world.message_chats.get(message_id)?;
    let chat = world.chat(chat_id)?;
    chat.messages.iter().find_map(|m| match m {
        ChatEntry::Bot {
            message_id: id,
            msg_type,
            content,
            reply_to,
            at_ms,
            ..
        } if id == message_id => Some(json!({
            "message_id": id,
            "root_id": reply_to,
            "parent_id": reply_to,
            "msg_type": msg_type,
            "create_time": at_ms.to_string(),
            "update_time": at_ms.to_string(),
            "deleted": false,
            "updated": false,
            "chat_id": chat_id,
            "sender": {"id": config.app_id, "id_type": "app_id", "sender_type": "app", "tenant_key": config.tenant_key},
            "body": {"content": content},
        })),
        _ => None,
    })
}

//! The HTTP side of the platform: connection open (§1.1), access tokens (§4), cards (§6), robot sends and
//! the sessionWebhook (§7), with the OpenAPI error envelope (§5.1), QPS limits (§5.2) and injected faults.
//!
//! Every new-style call passes [`Shared::gate`]-like checks in the platform's order: the injected delay,
//! the access token, the permission scope, the per-API QPS window, then any injected failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::wire::{
    AccessTokenRequest, CardRequest, CardUpdateRequest, GroupSendRequest, OpenConnectionRequest, OtoSendRequest,
    StreamingRequest, MSG_KEYS,
};
use super::world::{hex, now_ms, uuid_like, Card, CardStatus, CardUpdate, ChatEntry, ConversationKind, Shared, World};

/// Header carrying the access token on new-style calls.
pub const TOKEN_HEADER: &str = "x-acs-dingtalk-access-token";

/// Permission scope of the card create/deliver/update APIs.
pub const PERM_CARD_INSTANCE: &str = "Card.Instance.Write";
/// Permission scope of `PUT /v1.0/card/streaming`.
pub const PERM_CARD_STREAMING: &str = "Card.Streaming.Write";
/// Permission scope of the robot send APIs.
pub const PERM_ROBOT_SEND: &str = "qyapi_robot_sendmsg";

/// An OpenAPI error in the platform's envelope: `{"requestid","code","message"}` (§5.1).
#[derive(Debug)]
pub struct PlatformError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// `accessdenieddetail`, on permission refusals.
    pub detail: Option<Box<Value>>,
}

impl PlatformError {
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code: code.to_owned(),
            message: message.to_owned(),
            detail: None,
        }
    }

    fn bad(code: &str, message: &str) -> Self {
        Self::new(400, code, message)
    }
}

/// Marks a response that refused a call for its parameters, so [`count_bad_requests`] can count it.
#[derive(Debug, Clone, Copy)]
struct BadRequest;

impl IntoResponse for PlatformError {
    fn into_response(self) -> Response {
        let request_id = uuid_like().to_uppercase();
        let bad_parameter = self.status == StatusCode::BAD_REQUEST
            && (self.code.starts_with("param.") || self.code.starts_with("invalidParameter."));
        let mut body = json!({"requestid": request_id, "code": self.code, "message": self.message});
        if let Some(detail) = self.detail {
            body["accessdenieddetail"] = *detail;
        }
        let mut response = (self.status, Json(body)).into_response();
        with_acs_headers(response.headers_mut(), &request_id);
        if bad_parameter {
            response.extensions_mut().insert(BadRequest);
        }
        response
    }
}

/// Count the answers that refused a call for its parameters (`Stats::bad_requests`).
pub async fn count_bad_requests(State(shared): State<Arc<Shared>>, response: Response) -> Response {
    if response.extensions().get::<BadRequest>().is_some() {
        shared.with(|world, _| world.stats.bad_requests += 1);
    }
    response
}

/// A success body with the platform's `x-acs-*` headers.
fn ok(body: Value) -> Response {
    let mut response = Json(body).into_response();
    with_acs_headers(response.headers_mut(), &uuid_like().to_uppercase());
    response
}

fn with_acs_headers(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-acs-request-id", value);
    }
    if let Ok(value) = HeaderValue::from_str(&hex(32)) {
        headers.insert("x-acs-trace-id", value);
    }
}

/// Parse a JSON body; an empty or non-JSON body is the platform's `Missingbody`.
fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, PlatformError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if body.is_empty() || !is_json {
        return Err(PlatformError::bad("Missingbody", "body is mandatory"));
    }
    serde_json::from_slice(body)
        .map_err(|err| PlatformError::bad("InvalidParameter", &format!("invalid JSON body: {err}")))
}

impl Shared {
    /// The checks every new-style call passes, in order: injected delay, token, permission, QPS.
    async fn gate(
        &self,
        headers: &HeaderMap,
        api: &'static str,
        permission: Option<&str>,
    ) -> Result<(), PlatformError> {
        self.delay().await;
        let token = headers
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.with(|world, config| {
            let now = Instant::now();
            let valid = world.tokens.get(&token).is_some_and(|expiry| *expiry > now);
            if !valid {
                world.stats.openapi_rejections += 1;
                return Err(PlatformError::bad("InvalidAuthentication", "不合法的access_token"));
            }
            if let Some(permission) = permission {
                if world.faults.revoked_permissions.iter().any(|p| p == permission) {
                    world.stats.openapi_rejections += 1;
                    let mut err = PlatformError::new(
                        403,
                        "Forbidden.AccessDenied.AccessTokenPermissionDenied",
                        &format!("没有调用该接口的权限，接口权限申请参考：{permission}"),
                    );
                    err.detail = Some(Box::new(json!({"requiredScopes": [permission]})));
                    return Err(err);
                }
            }
            if config.qps_per_api > 0 {
                let second = now_ms() / 1000;
                let window = world.qps.entry(api).or_insert((second, 0));
                if window.0 != second {
                    *window = (second, 0);
                }
                window.1 += 1;
                if window.1 > config.qps_per_api {
                    world.stats.openapi_rejections += 1;
                    return Err(PlatformError::new(
                        403,
                        "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
                        "请求被拒绝，当前应用调用该接口的QPS超出限制",
                    ));
                }
            }
            Ok(())
        })
    }

    async fn delay(&self) {
        let slow = self.read(|world| world.faults.slow_ms);
        if slow > 0 {
            tokio::time::sleep(Duration::from_millis(slow)).await;
        }
    }

    fn check_app(&self, id: &str, secret: &str) -> bool {
        id == self.config.client_id && secret == self.config.client_secret
    }

    /// The app's access token: the same one while it is valid (its life extended), a new one after.
    fn issue_token(&self) -> String {
        self.with(|world, config| {
            let now = Instant::now();
            world.tokens.retain(|_, expiry| *expiry > now);
            let token = world.tokens.keys().next().cloned().unwrap_or_else(|| {
                world.stats.tokens_issued += 1;
                hex(32)
            });
            world.tokens.insert(token.clone(), now + config.token_ttl);
            token
        })
    }
}

/// `POST /v1.0/gateway/connections/open`.
pub async fn open_connection(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared.delay().await;
    let request: OpenConnectionRequest = parse(&headers, &body)?;
    // Exact comparison: a whitespace-polluted id is refused, as on the platform (§9).
    if !shared.check_app(&request.client_id, &request.client_secret) {
        tracing::info!(client_id = %request.client_id, "refusing a connection for unknown credentials");
        return Err(PlatformError::new(401, "authFailed", "鉴权失败"));
    }
    if request.subscriptions.is_empty() {
        return Err(PlatformError::bad("InvalidParameter", "subscriptions is mandatory"));
    }
    let ticket = uuid_like();
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| shared.addr.to_string());
    shared.with(|world, config| {
        let now = Instant::now();
        world.tickets.retain(|_, (expiry, _, _)| *expiry > now);
        world.tickets.insert(
            ticket.clone(),
            (
                now + config.ticket_ttl,
                request.subscriptions.clone(),
                request.ua.clone(),
            ),
        );
    });
    tracing::debug!(ua = ?request.ua, local_ip = ?request.local_ip, "connection registered");
    Ok(ok(
        json!({"endpoint": format!("ws://{host}/connect"), "ticket": ticket}),
    ))
}

/// `POST /v1.0/oauth2/accessToken`: the same token while valid (and its life extended), a new one after.
pub async fn access_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared.delay().await;
    let request: AccessTokenRequest = parse(&headers, &body)?;
    if !shared.check_app(&request.app_key, &request.app_secret) {
        return Err(PlatformError::bad(
            "invalidClientIdOrSecret",
            "无效的clientId或者clientSecret",
        ));
    }
    let token = shared.issue_token();
    Ok(ok(
        json!({"accessToken": token, "expireIn": shared.config.token_ttl.as_secs()}),
    ))
}

/// Query of the legacy token call.
#[derive(Debug, Deserialize)]
pub struct LegacyTokenQuery {
    #[serde(default)]
    appkey: String,
    #[serde(default)]
    appsecret: String,
}

/// `GET /gettoken?appkey=…&appsecret=…` (legacy host `oapi.dingtalk.com`, used by the Node SDK's
/// `getAccessToken()`): the same token as the new-style call, in the legacy `errcode` envelope. A wrong key
/// or secret gets errcode 40089 (`不合法的corpid或corpsecret`) with HTTP 200 **[UNCONFIRMED]**.
pub async fn legacy_token(State(shared): State<Arc<Shared>>, Query(query): Query<LegacyTokenQuery>) -> Response {
    shared.delay().await;
    if !shared.check_app(&query.appkey, &query.appsecret) {
        return Json(json!({"errcode": 40089, "errmsg": "不合法的corpid或corpsecret"})).into_response();
    }
    let token = shared.issue_token();
    Json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "access_token": token,
        "expires_in": shared.config.token_ttl.as_secs(),
    }))
    .into_response()
}

/// One parsed space of an `openSpaceId` (`dtv1.card//IM_GROUP.cid…;IM_ROBOT.user`).
pub(super) struct Space {
    kind: String,
    id: String,
}

pub(super) fn parse_spaces(open_space_id: &str) -> Result<Vec<Space>, PlatformError> {
    let rest = open_space_id
        .strip_prefix("dtv1.card//")
        .ok_or_else(|| PlatformError::bad("param.openSpaceIdInvalid", "openSpaceId is invalid"))?;
    rest.split(';')
        .filter(|s| !s.is_empty())
        .map(|part| {
            let (kind, id) = part
                .split_once('.')
                .ok_or_else(|| PlatformError::bad("param.openSpaceIdInvalid", "openSpaceId is invalid"))?;
            let kind = kind.to_ascii_uppercase();
            if !["IM_GROUP", "IM_ROBOT", "IM_SINGLE", "ONE_BOX"].contains(&kind.as_str()) || id.is_empty() {
                return Err(PlatformError::bad("param.openSpaceIdInvalid", "openSpaceId is invalid"));
            }
            Ok(Space {
                kind,
                id: id.to_owned(),
            })
        })
        .collect()
}

fn required<'a>(value: &'a Option<String>, code: &str, message: &str) -> Result<&'a str, PlatformError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| PlatformError::bad(code, message))
}

/// Create the card `request` describes (shared by create and createAndDeliver).
fn create_card(world: &mut World, request: &CardRequest, api: &str) -> Result<String, PlatformError> {
    let template = required(
        &request.card_template_id,
        "param.cardTemplateIdEmpty",
        "cardTemplateId is empty",
    )?;
    let out_track_id = required(&request.out_track_id, "param.outTrackIdEmpty", "outTrackId is empty")?;
    let card_data = request
        .card_data
        .as_ref()
        .ok_or_else(|| PlatformError::bad("param.cardPublicDataEmpty", "cardData is empty"))?;
    if world.cards.contains_key(out_track_id) {
        return Err(PlatformError::bad("param.cardAlreadyExist", "card already exist"));
    }
    let mut card = Card {
        out_track_id: out_track_id.to_owned(),
        card_template_id: template.to_owned(),
        conversation_ids: Vec::new(),
        status: CardStatus::Created,
        card_param_map: card_data.card_param_map.clone(),
        flow_status: None,
        stream_key: None,
        text: String::new(),
        updates: Vec::new(),
        rejected_calls: 0,
        guids: Default::default(),
    };
    card.refresh_text();
    card.updates.push(CardUpdate {
        at_ms: now_ms(),
        api: api.to_owned(),
        guid: None,
        key: None,
        content: Some(card.text.clone()),
        is_full: None,
        is_finalize: None,
        is_error: None,
        status_after: card.status,
    });
    world.cards.insert(out_track_id.to_owned(), card);
    Ok(out_track_id.to_owned())
}

/// Deliver card `out_track_id` to the spaces of `request`; one result object per space.
fn deliver_card(
    world: &mut World,
    request: &CardRequest,
    out_track_id: &str,
    robot_code: &str,
) -> Result<Vec<Value>, PlatformError> {
    let open_space_id = required(&request.open_space_id, "param.openSpaceIdEmpty", "openSpaceId is empty")?;
    let spaces = parse_spaces(open_space_id)?;
    if !world.cards.contains_key(out_track_id) {
        return Err(PlatformError::bad("param.cardNotExist", "card is not exist"));
    }
    let mut results = Vec::new();
    for space in spaces {
        let injected = world.faults.delivery_failures.as_mut().is_some_and(|f| f.hit());
        let outcome: Result<String, String> = if injected {
            Err("system busy, deliver failed".to_owned())
        } else {
            match space.kind.as_str() {
                "IM_GROUP" => {
                    let model = request.im_group_open_deliver_model.as_ref();
                    match model.and_then(|m| m.robot_code.clone()) {
                        None => Err("imGroupOpenDeliverModel.robotCode is required".to_owned()),
                        Some(code) if code != robot_code => Err("robot is not exist".to_owned()),
                        Some(_) => match world.conversation(&space.id) {
                            Some(c) if c.kind == ConversationKind::Group => Ok(space.id.clone()),
                            _ => Err("robot is not in the group".to_owned()),
                        },
                    }
                }
                "IM_ROBOT" => {
                    if request.im_robot_open_deliver_model.is_none() {
                        Err("imRobotOpenDeliverModel is required".to_owned())
                    } else if request.user_id_type == Some(2) {
                        // `userIdType` 2: the space id is a unionId, known from the user's messages.
                        world
                            .union_conversation(&space.id)
                            .ok_or_else(|| "user is not exist".to_owned())
                    } else {
                        Ok(world.single_conversation(&space.id, &space.id).conversation_id.clone())
                    }
                }
                _ => Err(format!("spaceType {} is not supported by the emulator", space.kind)),
            }
        };
        match outcome {
            Ok(conversation_id) => {
                let at_ms = now_ms();
                if let Some(conversation) = world.conversation_mut(&conversation_id) {
                    conversation.messages.push(ChatEntry::Card { out_track_id: out_track_id.to_owned(), at_ms });
                }
                let card = world.cards.get_mut(out_track_id).expect("checked above");
                card.conversation_ids.push(conversation_id);
                if card.status == CardStatus::Created {
                    card.status = CardStatus::Processing;
                }
                results.push(json!({"spaceType": space.kind, "spaceId": space.id, "success": true, "carrierId": hex(24), "errorMsg": ""}));
            }
            Err(error) => {
                results.push(json!({"spaceType": space.kind, "spaceId": space.id, "success": false, "carrierId": "", "errorMsg": error}))
            }
        }
    }
    Ok(results)
}

/// `POST /v1.0/card/instances/createAndDeliver`.
pub async fn create_and_deliver(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared
        .gate(&headers, "createAndDeliver", Some(PERM_CARD_INSTANCE))
        .await?;
    let request: CardRequest = parse(&headers, &body)?;
    let robot_code = shared.config.client_id.clone();
    shared.with(|world, _| {
        required(&request.open_space_id, "param.openSpaceIdEmpty", "openSpaceId is empty")?;
        parse_spaces(request.open_space_id.as_deref().unwrap_or_default())?;
        if request.im_group_open_deliver_model.is_none() && request.im_robot_open_deliver_model.is_none() {
            return Err(PlatformError::bad(
                "param.openDeliverModelEmpty",
                "openDeliverModel is empty",
            ));
        }
        let out_track_id = create_card(world, &request, "createAndDeliver")?;
        let deliver_results = deliver_card(world, &request, &out_track_id, &robot_code)?;
        Ok(ok(
            json!({"success": true, "result": {"outTrackId": out_track_id, "deliverResults": deliver_results}}),
        ))
    })
}

/// `POST /v1.0/card/instances` (create only).
pub async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared.gate(&headers, "createCard", Some(PERM_CARD_INSTANCE)).await?;
    let request: CardRequest = parse(&headers, &body)?;
    shared.with(|world, _| {
        let out_track_id = create_card(world, &request, "create")?;
        Ok(ok(json!({"success": true, "result": out_track_id})))
    })
}

/// `POST /v1.0/card/instances/deliver`.
pub async fn deliver(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared.gate(&headers, "deliverCard", Some(PERM_CARD_INSTANCE)).await?;
    let request: CardRequest = parse(&headers, &body)?;
    let robot_code = shared.config.client_id.clone();
    shared.with(|world, _| {
        let out_track_id = required(&request.out_track_id, "param.outTrackIdEmpty", "outTrackId is empty")?.to_owned();
        if request.im_group_open_deliver_model.is_none() && request.im_robot_open_deliver_model.is_none() {
            return Err(PlatformError::bad(
                "param.openDeliverModelEmpty",
                "openDeliverModel is empty",
            ));
        }
        let results = deliver_card(world, &request, &out_track_id, &robot_code)?;
        if let Some(card) = world.cards.get_mut(&out_track_id) {
            let status_after = card.status;
            card.updates.push(CardUpdate {
                at_ms: now_ms(),
                api: "deliver".to_owned(),
                guid: None,
                key: None,
                content: None,
                is_full: None,
                is_finalize: None,
                is_error: None,
                status_after,
            });
        }
        Ok(ok(json!({"success": true, "result": results})))
    })
}

/// Count a refused call on a card, if the card exists.
fn reject(world: &mut World, out_track_id: Option<&str>, err: PlatformError) -> PlatformError {
    world.stats.openapi_rejections += 1;
    if let Some(card) = out_track_id.and_then(|id| world.cards.get_mut(id)) {
        card.rejected_calls += 1;
    }
    err
}

/// The injected card-update failure, if this call is one of the failing fraction.
fn injected_update_failure(world: &mut World) -> Option<PlatformError> {
    let fault = world.faults.card_update_failures.as_mut()?;
    if !fault.hit() {
        return None;
    }
    Some(throttle_error(fault.status))
}

/// The injected card-data-update failure (`PUT /v1.0/card/instances` only), if this call is one of the
/// failing fraction; the faults of every card update come first.
fn injected_data_update_failure(world: &mut World) -> Option<PlatformError> {
    if let Some(err) = injected_update_failure(world) {
        return Some(err);
    }
    let fault = world.faults.card_data_update_failures.as_mut()?;
    if !fault.hit() {
        return None;
    }
    Some(throttle_error(fault.status))
}

/// The platform's answer to a throttled call: 403 `QpsLimitForAppkeyAndApi` or 429 `system.busy`.
fn throttle_error(status: u16) -> PlatformError {
    if status == 403 {
        PlatformError::new(
            403,
            "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
            "请求被拒绝，当前应用调用该接口的QPS超出限制",
        )
    } else {
        PlatformError::new(429, "system.busy", "system busy, request too frequest")
    }
}

/// `PUT /v1.0/card/instances`: replace the card data, or merge it by key.
pub async fn update_instance(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared.gate(&headers, "updateCard", Some(PERM_CARD_INSTANCE)).await?;
    let request: CardUpdateRequest = parse(&headers, &body)?;
    shared.with(|world, _| {
        let out_track_id = required(&request.out_track_id, "param.outTrackIdEmpty", "outTrackId is empty")?.to_owned();
        if request.card_data.is_none() && request.private_data.is_none() {
            return Err(PlatformError::bad(
                "param.cardDataAndPrivateDataBothEmpty",
                "cardData and privateData are both empty",
            ));
        }
        if !world.cards.contains_key(&out_track_id) {
            return Err(PlatformError::bad("param.cardNotExist", "card is not exist"));
        }
        if let Some(err) = injected_data_update_failure(world) {
            return Err(reject(world, Some(&out_track_id), err));
        }
        let card = world.cards.get_mut(&out_track_id).expect("checked above");
        if let Some(data) = &request.card_data {
            let by_key = request
                .card_update_options
                .as_ref()
                .is_some_and(|o| o.update_card_data_by_key);
            if by_key {
                card.card_param_map.extend(data.card_param_map.clone());
            } else {
                card.card_param_map = data.card_param_map.clone();
                card.stream_key = card.stream_key.take().filter(|k| card.card_param_map.contains_key(k));
            }
        }
        card.refresh_text();
        let status_after = card.status;
        let content = Some(card.text.clone());
        card.updates.push(CardUpdate {
            at_ms: now_ms(),
            api: "update".to_owned(),
            guid: None,
            key: None,
            content,
            is_full: None,
            is_finalize: None,
            is_error: None,
            status_after,
        });
        Ok(ok(json!({"success": true, "result": true})))
    })
}

/// `PUT /v1.0/card/streaming`: append or replace one variable; finalize or fail the card. A repeated
/// `guid` is acknowledged without being applied again.
pub async fn streaming(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared.gate(&headers, "streaming", Some(PERM_CARD_STREAMING)).await?;
    let request: StreamingRequest = parse(&headers, &body)?;
    shared.with(|world, config| {
        let out_track_id = request.out_track_id.clone().unwrap_or_default();
        let key = required(&request.key, "param.stream.keyEmpty", "key is empty")?.to_owned();
        let guid = required(&request.guid, "param.stream.guidEmpty", "guid is empty")?.to_owned();
        let content = request.content.clone().unwrap_or_default();
        if content.is_empty() && !config.accept_empty_stream_content {
            return Err(PlatformError::bad("param.stream.contentEmpty", "content is empty"));
        }
        if content.len() > config.max_stream_content_bytes {
            return Err(reject(
                world,
                Some(&out_track_id),
                PlatformError::bad("param.stream.content", "content is too large"),
            ));
        }
        let is_full = request.is_full.unwrap_or(false);
        if !is_full && config.markdown_keys.contains(&key) {
            return Err(PlatformError::bad("param.stream.isFull", "isFull is null"));
        }
        if !world.cards.contains_key(&out_track_id) {
            return Err(PlatformError::bad("param.stream.outTrackId", "card is not exist"));
        }
        if world.cards[&out_track_id].guids.contains(&guid) {
            return Ok(ok(json!({"success": true, "result": true})));
        }
        if let Some(err) = injected_update_failure(world) {
            return Err(reject(world, Some(&out_track_id), err));
        }
        let card = world.cards.get_mut(&out_track_id).expect("checked above");
        card.guids.insert(guid.clone());
        let value = card.card_param_map.entry(key.clone()).or_default();
        if is_full {
            *value = content.clone();
        } else {
            value.push_str(&content);
        }
        card.stream_key = Some(key.clone());
        let (is_finalize, is_error) = (request.is_finalize.unwrap_or(false), request.is_error.unwrap_or(false));
        card.status = if is_error {
            CardStatus::Failed
        } else if is_finalize {
            CardStatus::Finished
        } else if matches!(card.status, CardStatus::Created | CardStatus::Processing) {
            CardStatus::Inputting
        } else {
            card.status
        };
        let status = card.status;
        card.refresh_text();
        card.status = status;
        card.updates.push(CardUpdate {
            at_ms: now_ms(),
            api: "streaming".to_owned(),
            guid: Some(guid),
            key: Some(key),
            content: Some(content),
            is_full: Some(is_full),
            is_finalize: Some(is_finalize),
            is_error: Some(is_error),
            status_after: status,
        });
        Ok(ok(json!({"success": true, "result": true})))
    })
}

/// Check a robot send's `robotCode`, `msgKey` and `msgParam`; returns the parsed `msgParam`.
pub(super) fn check_robot_send(
    config: &super::EmulatorConfig,
    robot_code: &Option<String>,
    msg_key: &Option<String>,
    msg_param: &Option<String>,
) -> Result<(String, Value), PlatformError> {
    let code = required(robot_code, "invalidParameter.robotCode.empty", "robotCode is empty")?;
    if code != config.client_id {
        return Err(PlatformError::bad(
            "invalidParameter.robotCode.notExsit",
            "robotCode does not exist",
        ));
    }
    let key = required(msg_key, "invalidParameter.msgKey.empty", "msgKey is empty")?;
    if !MSG_KEYS.contains(&key) {
        return Err(PlatformError::bad(
            "invalidParameter.msgKey.invalid",
            "msgKey is invalid",
        ));
    }
    let param = msg_param.as_deref().unwrap_or_default();
    if param.len() > config.max_msg_param_bytes {
        return Err(PlatformError::bad(
            "invalidParameter.msgParam.tooLong",
            "msgParam is too long",
        ));
    }
    let value: Value = serde_json::from_str(param)
        .map_err(|_| PlatformError::bad("invalidParameter.msgParam.invalid", "msgParam is invalid"))?;
    if !value.is_object() {
        return Err(PlatformError::bad(
            "invalidParameter.msgParam.invalid",
            "msgParam is invalid",
        ));
    }
    Ok((key.to_owned(), value))
}

/// A robot message as the conversation shows it.
fn robot_entry(via: &str, msgtype: &str, param: &Value) -> ChatEntry {
    let text = ["text", "content"]
        .iter()
        .find_map(|k| param.get(*k).and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let title = param.get("title").and_then(Value::as_str).map(str::to_owned);
    ChatEntry::Robot {
        via: via.to_owned(),
        msgtype: msgtype.to_owned(),
        title,
        text,
        at_ms: now_ms(),
    }
}

/// `POST /v1.0/robot/oToMessages/batchSend`.
pub async fn oto_send(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared
        .gate(&headers, "oToMessagesBatchSend", Some(PERM_ROBOT_SEND))
        .await?;
    let request: OtoSendRequest = parse(&headers, &body)?;
    shared.with(|world, config| {
        let (key, param) = check_robot_send(config, &request.robot_code, &request.msg_key, &request.msg_param)?;
        let user_ids = request.user_ids.clone().unwrap_or_default();
        if user_ids.is_empty() || user_ids.iter().any(|u| u.trim().is_empty()) {
            return Err(PlatformError::bad("invalidParameter.userIds.empty", "userIds is empty"));
        }
        if user_ids.len() > config.max_oto_user_ids {
            return Err(PlatformError::bad(
                "invalidParameter.userIds.overMax",
                "userIds is over max",
            ));
        }
        for user in &user_ids {
            let entry = robot_entry("robotApi", &key, &param);
            world.single_conversation(user, user).messages.push(entry);
        }
        Ok(ok(
            json!({"processQueryKey": hex(32), "invalidStaffIdList": [], "flowControlledStaffIdList": []}),
        ))
    })
}

/// `POST /v1.0/robot/groupMessages/send`.
pub async fn group_send(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PlatformError> {
    shared
        .gate(&headers, "groupMessagesSend", Some(PERM_ROBOT_SEND))
        .await?;
    let request: GroupSendRequest = parse(&headers, &body)?;
    shared.with(|world, config| {
        let (key, param) = check_robot_send(config, &request.robot_code, &request.msg_key, &request.msg_param)?;
        let cid = required(
            &request.open_conversation_id,
            "invalidParameter.openConversationId.empty",
            "openConversationId is empty",
        )?;
        let entry = robot_entry("robotApi", &key, &param);
        match world.conversation_mut(cid) {
            Some(conversation) if conversation.kind == ConversationKind::Group => conversation.messages.push(entry),
            _ => return Err(PlatformError::bad("robot.group.notExist", "robot is not in the group")),
        }
        Ok(ok(json!({"processQueryKey": hex(32)})))
    })
}

/// Query of the sessionWebhook URL.
#[derive(Debug, Deserialize)]
pub struct SessionQuery {
    #[serde(default)]
    session: String,
}

/// `POST /robot/sendBySession?session=…`: no token, legacy `errcode`/`errmsg` envelope; a robot over its
/// per-minute message limit gets errcode 130101 until its throttle ends.
pub async fn session_webhook(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.delay().await;
    let legacy = |status: u16, errcode: i64, errmsg: &str| {
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            Json(json!({"errcode": errcode, "errmsg": errmsg})),
        )
            .into_response()
    };
    let Ok(message) = parse::<Value>(&headers, &body) else {
        return legacy(200, 400_001, "body is not valid JSON");
    };
    let error_status = shared.config.session_webhook_error_status;
    shared.with(|world, config| {
        let conversation_id = match world.webhooks.get(&query.session) {
            Some(hook) if hook.expires_ms > now_ms() => hook.conversation_id.clone(),
            _ => return legacy(error_status, 300_001, "session 不存在"),
        };
        let msgtype = message
            .get("msgtype")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let entry = match msgtype.as_str() {
            "text" => robot_entry("sessionWebhook", "text", message.get("text").unwrap_or(&Value::Null)),
            "markdown" => robot_entry(
                "sessionWebhook",
                "markdown",
                message.get("markdown").unwrap_or(&Value::Null),
            ),
            "link" | "actionCard" | "feedCard" => robot_entry(
                "sessionWebhook",
                &msgtype,
                message.get(&msgtype).unwrap_or(&Value::Null),
            ),
            _ => return legacy(200, 40_035, "不合法的参数: msgtype"),
        };
        if !world.admit_webhook_message(config, Instant::now()) {
            let limit = config.webhook_messages_per_minute;
            return legacy(200, 130_101, &format!("send too fast, exceed {limit} times per minute"));
        }
        if let Some(conversation) = world.conversation_mut(&conversation_id) {
            conversation.messages.push(entry);
        }
        legacy(200, 0, "ok")
    })
}

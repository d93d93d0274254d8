//! [`OpenApi`]: the HTTP calls the connector makes (connection open, access token, AI cards, robot sends,
//! sessionWebhook), each answer classified into [`DingTalkError`] so callers can tell throttling, missing
//! permissions and bad tokens from other failures.
//!
//! The access token is cached and refreshed `token_refresh_margin_secs` before it expires; a call answered
//! with 400 `InvalidAuthentication` or 401 drops the cache and is retried once with a fresh token.

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::config::DingTalkConfig;
use super::message::{Addressee, BotMessage, ConversationType};
use super::wire;
use crate::im::token::{exchange, ApiClient};

/// Permission scope needed by the card create/deliver calls.
pub const PERM_CARD_INSTANCE: &str = "Card.Instance.Write";
/// Permission scope needed by card streaming.
pub const PERM_CARD_STREAMING: &str = "Card.Streaming.Write";
/// Permission scope needed by the robot send APIs.
pub const PERM_ROBOT_SEND: &str = "qyapi_robot_sendmsg";
/// Every permission scope the connector needs.
pub const PERMISSIONS: [&str; 3] = [PERM_CARD_INSTANCE, PERM_CARD_STREAMING, PERM_ROBOT_SEND];

/// The sessionWebhook's errcode for a robot over its message rate ("send too fast, exceed 20 times per
/// minute"; the robot then stays throttled for minutes).
const WEBHOOK_TOO_FAST: i64 = 130_101;

/// A failed platform call.
#[derive(Debug, thiserror::Error)]
pub enum DingTalkError {
    #[error("{api}: HTTP request failed: {source}")]
    Http { api: &'static str, source: reqwest::Error },
    #[error("{api}: throttled by the platform (HTTP {status} {code})")]
    Throttled {
        api: &'static str,
        status: u16,
        code: String,
    },
    #[error("{api}: the app lacks the `{permission}` permission ({code}); grant it in the DingTalk developer console")]
    PermissionDenied {
        api: &'static str,
        permission: String,
        code: String,
    },
    #[error("{api}: access token rejected ({code})")]
    InvalidToken { api: &'static str, code: String },
    #[error("{api}: HTTP {status} {code}: {message}")]
    Platform {
        api: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("card {out_track_id} was not delivered: {reason}")]
    Delivery { out_track_id: String, reason: String },
    #[error("sessionWebhook answered errcode {errcode}: {errmsg}")]
    Webhook { errcode: i64, errmsg: String },
    #[error("{api}: unexpected answer: {detail}")]
    Unexpected { api: &'static str, detail: String },
    #[error("{api}: refused by the platform for {after_secs} s; given up")]
    GaveUp { api: &'static str, after_secs: u64 },
    #[error(
        "{api}: the sender has no staff id or unionId to address (an external member, or the robot is unpublished)"
    )]
    NoAddressee { api: &'static str },
}

impl DingTalkError {
    /// A 403/429 throttle: safe to retry after backing off.
    pub fn is_throttle(&self) -> bool {
        matches!(self, Self::Throttled { .. })
    }

    /// A refusal that may pass later: throttles, server errors, a failed request, a bound that ran out, a
    /// token or permission the platform may take again. Anything else (a card that does not exist, a
    /// malformed call) would be refused again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Http { .. }
                | Self::Throttled { .. }
                | Self::GaveUp { .. }
                | Self::InvalidToken { .. }
                | Self::PermissionDenied { .. }
                | Self::Platform { status: 500..=599, .. }
        )
    }

    /// The platform code, for errors that carry one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Throttled { code, .. }
            | Self::PermissionDenied { code, .. }
            | Self::InvalidToken { code, .. }
            | Self::Platform { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What `createAndDeliver` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardCreation {
    /// The card is new and delivered.
    Created,
    /// A card with this `outTrackId` already existed: an earlier run created it.
    AlreadyExisted,
}

/// The platform's answer to the connection-open call.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub endpoint: String,
    pub ticket: String,
}

/// The connector's OpenAPI client: an [`ApiClient`] over the section; its calls are below.
pub type OpenApi = ApiClient<DingTalkConfig>;

impl OpenApi {
    /// A client for `config`'s app and base URL.
    pub fn new(config: DingTalkConfig) -> Result<Self, DingTalkError> {
        let limits = (config.http_timeout_secs, config.token_refresh_margin_secs);
        let base = config.api_base_url.clone();
        Self::with("dingtalk", &base, limits, config).map_err(|source| DingTalkError::Http { api: "client", source })
    }

    /// `POST /v1.0/gateway/connections/open`, subscribed to robot messages.
    pub async fn open_connection(&self) -> Result<Endpoint, DingTalkError> {
        const API: &str = "gateway/connections/open";
        let body = wire::OpenConnection {
            client_id: &self.config.app_key,
            client_secret: self.config.app_secret.expose(),
            subscriptions: vec![wire::Subscription {
                kind: "CALLBACK",
                topic: super::message::TOPIC_BOT_MESSAGE,
            }],
            ua: concat!("hearth/", env!("CARGO_PKG_VERSION")),
        };
        let url = format!("{}/v1.0/gateway/connections/open", self.config.base());
        let answer = self.send(API, Method::POST, &url, &body, None, None).await?;
        let field = |name: &str| {
            answer
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        match (field("endpoint"), field("ticket")) {
            (Some(endpoint), Some(ticket)) => Ok(Endpoint { endpoint, ticket }),
            _ => Err(DingTalkError::Unexpected {
                api: API,
                detail: "endpoint or ticket missing".to_owned(),
            }),
        }
    }

    /// Ask the platform for an access token: `Ok` means it accepts the app's key and secret.
    pub async fn check_credentials(&self) -> Result<(), DingTalkError> {
        self.token().await.map(drop)
    }

    /// Ask for each permission scope the connector needs ([`PERMISSIONS`]) with a call that changes
    /// nothing: it names a card or a user list that does not exist, so the platform answers a granted scope
    /// with a parameter error and a missing one with 403 `AccessTokenPermissionDenied`. **\[UNCONFIRMED\]**:
    /// this relies on the platform checking the scope before the parameters, as its gateway does for the
    /// token (and as the emulator does). `Ok(true)`: granted; `Ok(false)`: refused; `Err`: no verdict.
    pub async fn probe_permissions(&self) -> Vec<(&'static str, Result<bool, DingTalkError>)> {
        let probe_id = format!("hearth-permission-probe-{}", std::process::id());
        let instance = wire::UpdateCard {
            out_track_id: &probe_id,
            card_data: wire::CardData {
                card_param_map: wire::ProbeCardParams { probe: "1" },
            },
            card_update_options: None,
        };
        let streaming = wire::CardStreaming {
            out_track_id: &probe_id,
            guid: &probe_id,
            key: &self.config.card_content_key,
            content: "probe",
            is_full: true,
            is_finalize: false,
            is_error: false,
        };
        let robot = wire::RobotBatchSend {
            robot_code: self.config.robot(),
            user_ids: vec![],
            msg_key: "sampleText",
            msg_param: wire::Text { content: "probe" },
        };
        vec![
            (
                PERM_CARD_INSTANCE,
                self.probe(
                    PERM_CARD_INSTANCE,
                    "card/instances",
                    Method::PUT,
                    "/v1.0/card/instances",
                    &instance,
                )
                .await,
            ),
            (
                PERM_CARD_STREAMING,
                self.probe(
                    PERM_CARD_STREAMING,
                    "card/streaming",
                    Method::PUT,
                    "/v1.0/card/streaming",
                    &streaming,
                )
                .await,
            ),
            (
                PERM_ROBOT_SEND,
                self.probe(
                    PERM_ROBOT_SEND,
                    "robot/oToMessages/batchSend",
                    Method::POST,
                    "/v1.0/robot/oToMessages/batchSend",
                    &robot,
                )
                .await,
            ),
        ]
    }

    /// One permission probe: a parameter error means the scope was granted.
    async fn probe(
        &self,
        permission: &'static str,
        api: &'static str,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<bool, DingTalkError> {
        match self.call(api, method, path, body, permission).await {
            Ok(_) | Err(DingTalkError::Platform { status: 400..=404, .. }) => Ok(true),
            Err(DingTalkError::PermissionDenied { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The cached access token, renewed when it is within the margin of expiring.
    async fn token(&self) -> Result<String, DingTalkError> {
        self.token.get(|| self.fetch_token()).await
    }

    /// A new access token and its lifetime in seconds.
    async fn fetch_token(&self) -> Result<(String, u64), DingTalkError> {
        const API: &str = "oauth2/accessToken";
        let url = format!("{}/v1.0/oauth2/accessToken", self.config.base());
        let body = wire::AccessToken {
            app_key: &self.config.app_key,
            app_secret: self.config.app_secret.expose(),
        };
        let answer = self.send(API, Method::POST, &url, &body, None, None).await?;
        let token = answer
            .get("accessToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        let expire_in = answer.get("expireIn").and_then(Value::as_u64);
        let (Some(token), Some(expire_in)) = (token, expire_in) else {
            return Err(DingTalkError::Unexpected {
                api: API,
                detail: "accessToken or expireIn missing".to_owned(),
            });
        };
        Ok((token.to_owned(), expire_in))
    }

    /// A new-style call with the token header; a rejected token is refreshed and the call retried once.
    async fn call(
        &self,
        api: &'static str,
        method: Method,
        path: &str,
        body: &impl Serialize,
        permission: &'static str,
    ) -> Result<Value, DingTalkError> {
        let url = format!("{}{path}", self.config.base());
        let (method, url) = (&method, url.as_str());
        let result = self
            .authorized(
                api,
                || self.fetch_token(),
                |err| matches!(err, DingTalkError::InvalidToken { .. }),
                |token| async move {
                    self.send(api, method.clone(), url, body, Some(&token), Some(permission))
                        .await
                },
            )
            .await;
        match result {
            Ok(value) => {
                self.health.permission_granted(permission);
                Ok(value)
            }
            Err(err) => {
                if let DingTalkError::PermissionDenied { permission, .. } = &err {
                    tracing::error!(
                        api,
                        permission,
                        "DingTalk refused a call: grant the `{permission}` permission to the app"
                    );
                    self.health.permission_refused(permission, api, err.to_string());
                }
                Err(err)
            }
        }
    }

    async fn send(
        &self,
        api: &'static str,
        method: Method,
        url: &str,
        body: &impl Serialize,
        token: Option<&str>,
        permission: Option<&'static str>,
    ) -> Result<Value, DingTalkError> {
        let body = serde_json::to_vec(body).map_err(|err| DingTalkError::Unexpected {
            api,
            detail: format!("cannot serialise the request: {err}"),
        })?;
        let mut request = self
            .http
            .request(method, url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.header("x-acs-dingtalk-access-token", token);
        }
        let (status, text) = exchange(request)
            .await
            .map_err(|source| DingTalkError::Http { api, source })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        Err(classify(api, status, &value, permission))
    }

    /// Create an AI card with empty content and deliver it where `message` came from. A card that already
    /// exists (`param.cardAlreadyExist`: a retry after a restart) counts as created, and says so.
    pub async fn create_and_deliver(
        &self,
        out_track_id: &str,
        message: &BotMessage,
    ) -> Result<CardCreation, DingTalkError> {
        const API: &str = "card/instances/createAndDeliver";
        let mut body = wire::CreateAndDeliver {
            card_template_id: &self.config.card_template_id,
            out_track_id,
            card_data: wire::CardData {
                card_param_map: wire::InitialCardParams {
                    content_key: &self.config.card_content_key,
                },
            },
            callback_type: "STREAM",
            im_group_open_space_model: wire::OpenSpaceModel { support_forward: true },
            im_robot_open_space_model: wire::OpenSpaceModel { support_forward: true },
            user_id_type: 1,
            open_space_id: String::new(),
            im_group_open_deliver_model: None,
            im_robot_open_deliver_model: None,
        };
        match message.conversation_type {
            ConversationType::Group => {
                body.open_space_id = format!("dtv1.card//IM_GROUP.{}", message.conversation_id);
                body.im_group_open_deliver_model = Some(wire::GroupDeliverModel {
                    robot_code: self.config.robot(),
                });
            }
            ConversationType::Single => {
                let (user, user_id_type) = match message.addressee() {
                    Addressee::StaffId(staff) => (staff, 1),
                    Addressee::UnionId(union) => (union, 2),
                    Addressee::Unknown => return Err(DingTalkError::NoAddressee { api: API }),
                };
                body.open_space_id = format!("dtv1.card//IM_ROBOT.{user}");
                body.user_id_type = user_id_type;
                body.im_robot_open_deliver_model = Some(wire::RobotDeliverModel {
                    space_type: "IM_ROBOT",
                    robot_code: self.config.robot(),
                });
            }
        }
        let answer = match self
            .call(
                API,
                Method::POST,
                "/v1.0/card/instances/createAndDeliver",
                &body,
                PERM_CARD_INSTANCE,
            )
            .await
        {
            Err(err) if err.code() == Some("param.cardAlreadyExist") => return Ok(CardCreation::AlreadyExisted),
            other => other?,
        };
        let results = answer
            .pointer("/result/deliverResults")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match results
            .iter()
            .find(|r| r.get("success").and_then(Value::as_bool) != Some(true))
        {
            Some(failed) => Err(DingTalkError::Delivery {
                out_track_id: out_track_id.to_owned(),
                reason: failed
                    .get("errorMsg")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .to_owned(),
            }),
            None if results.is_empty() => Err(DingTalkError::Delivery {
                out_track_id: out_track_id.to_owned(),
                reason: "no deliverResults".to_owned(),
            }),
            None => Ok(CardCreation::Created),
        }
    }

    /// `PUT /v1.0/card/streaming` with a full snapshot of the content.
    pub async fn stream(
        &self,
        out_track_id: &str,
        guid: &str,
        content: &str,
        finalize: bool,
        error: bool,
    ) -> Result<(), DingTalkError> {
        let body = wire::CardStreaming {
            out_track_id,
            guid,
            key: &self.config.card_content_key,
            content,
            is_full: true,
            is_finalize: finalize,
            is_error: error,
        };
        self.call(
            "card/streaming",
            Method::PUT,
            "/v1.0/card/streaming",
            &body,
            PERM_CARD_STREAMING,
        )
        .await
        .map(drop)
    }

    /// `PUT /v1.0/card/instances` merging `flowStatus` (the AI card's state variable: "3" finished, "5"
    /// failed, as the official SDK's AI card sets it) into the card's data.
    pub async fn set_flow_status(
        &self,
        out_track_id: &str,
        flow_status: wire::FlowStatus,
    ) -> Result<(), DingTalkError> {
        let body = wire::UpdateCard {
            out_track_id,
            card_data: wire::CardData {
                card_param_map: wire::FlowStatusParams { flow_status },
            },
            card_update_options: Some(wire::CardUpdateOptions {
                update_card_data_by_key: true,
            }),
        };
        self.call(
            "card/instances",
            Method::PUT,
            "/v1.0/card/instances",
            &body,
            PERM_CARD_INSTANCE,
        )
        .await
        .map(drop)
    }

    /// Markdown through the message's sessionWebhook (no token). Errcode 130101 (the robot sends too fast)
    /// is a [`DingTalkError::Throttled`].
    pub async fn webhook_markdown(
        &self,
        webhook: &str,
        title: &str,
        text: &str,
        at_user: &str,
    ) -> Result<(), DingTalkError> {
        const API: &str = "sessionWebhook";
        // An empty staff id (an external member) is left out rather than sent as `[""]`.
        let at_users: Vec<&str> = Some(at_user).filter(|u| !u.is_empty()).into_iter().collect();
        let body = wire::WebhookMarkdown {
            msgtype: "markdown",
            markdown: wire::Markdown { text, title },
            at: wire::At {
                at_user_ids: at_users,
                is_at_all: false,
            },
        };
        let answer = self.send(API, Method::POST, webhook, &body, None, None).await?;
        match answer.get("errcode").and_then(Value::as_i64) {
            Some(0) | None => Ok(()),
            Some(WEBHOOK_TOO_FAST) => Err(DingTalkError::Throttled {
                api: API,
                status: 200,
                code: WEBHOOK_TOO_FAST.to_string(),
            }),
            Some(errcode) => Err(DingTalkError::Webhook {
                errcode,
                errmsg: answer
                    .get("errmsg")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }),
        }
    }

    /// Markdown to one person through the robot's 1:1 batchSend (escalations).
    pub async fn robot_markdown_to(&self, user_id: &str, title: &str, text: &str) -> Result<(), DingTalkError> {
        let body = wire::RobotBatchSend {
            robot_code: self.config.robot(),
            user_ids: vec![user_id],
            msg_key: "sampleMarkdown",
            msg_param: wire::Markdown { text, title },
        };
        self.call(
            "robot/oToMessages/batchSend",
            Method::POST,
            "/v1.0/robot/oToMessages/batchSend",
            &body,
            PERM_ROBOT_SEND,
        )
        .await
        .map(drop)
    }

    /// Markdown through the robot send API (1:1 batchSend or group send).
    pub async fn robot_markdown(&self, message: &BotMessage, title: &str, text: &str) -> Result<(), DingTalkError> {
        let msg_param = wire::Markdown { text, title };
        match message.conversation_type {
            ConversationType::Single => {
                // The robot send API takes staff ids only.
                let Addressee::StaffId(staff) = message.addressee() else {
                    return Err(DingTalkError::NoAddressee {
                        api: "robot/oToMessages/batchSend",
                    });
                };
                let body = wire::RobotBatchSend {
                    robot_code: self.config.robot(),
                    user_ids: vec![staff],
                    msg_key: "sampleMarkdown",
                    msg_param,
                };
                self.call(
                    "robot/oToMessages/batchSend",
                    Method::POST,
                    "/v1.0/robot/oToMessages/batchSend",
                    &body,
                    PERM_ROBOT_SEND,
                )
                .await
                .map(drop)
            }
            ConversationType::Group => {
                let body = wire::RobotGroupSend {
                    robot_code: self.config.robot(),
                    open_conversation_id: &message.conversation_id,
                    msg_key: "sampleMarkdown",
                    msg_param,
                };
                self.call(
                    "robot/groupMessages/send",
                    Method::POST,
                    "/v1.0/robot/groupMessages/send",
                    &body,
                    PERM_ROBOT_SEND,
                )
                .await
                .map(drop)
            }
        }
    }
}

/// Turn a non-2xx answer into a typed error.
fn classify(api: &'static str, status: StatusCode, body: &Value, permission: Option<&'static str>) -> DingTalkError {
    let code = body.get("code").and_then(Value::as_str).unwrap_or_default().to_owned();
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let status = status.as_u16();
    // Robot send APIs refuse a robot that sends too fast with 400 `send.too.fast` or `send.byToken.tooFast`.
    let too_fast = status == 400 && (code == "send.too.fast" || code == "send.byToken.tooFast");
    if status == 429 || (status == 403 && code.contains("Limit")) || too_fast {
        return DingTalkError::Throttled { api, status, code };
    }
    if status == 401 || code == "InvalidAuthentication" {
        return DingTalkError::InvalidToken { api, code };
    }
    if status == 403 && code.contains("PermissionDenied") {
        let required = body
            .pointer("/accessdenieddetail/requiredScopes/0")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let permission = required
            .or(permission.map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        return DingTalkError::PermissionDenied { api, permission, code };
    }
    DingTalkError::Platform {
        api,
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn throttles_are_recognised_in_every_shape_the_platform_sends() {
        let error = |status: u16, code: &str| {
            classify(
                "api",
                StatusCode::from_u16(status).unwrap(),
                &json!({"code": code}),
                None,
            )
        };
        assert!(error(429, "system.busy").is_throttle());
        assert!(error(403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi").is_throttle());
        assert!(error(400, "send.too.fast").is_throttle());
        assert!(error(400, "send.byToken.tooFast").is_throttle());
        assert!(!error(400, "invalidParameter.msgKey.invalid").is_throttle());
        assert!(matches!(
            error(403, "Forbidden.AccessDenied.AccessTokenPermissionDenied"),
            DingTalkError::PermissionDenied { .. }
        ));
    }
}

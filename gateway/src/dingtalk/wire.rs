//! The request bodies the connector sends to DingTalk, one struct per body, each naming its endpoint and the
//! section of the protocol notes (`shared/protocols/dingtalk.md`) that describes it. Field names are the
//! platform's (camelCase); a field the platform must not see is left out, never sent as `null`.

use serde::ser::{Error as _, SerializeMap};
use serde::{Serialize, Serializer};

/// `POST /v1.0/gateway/connections/open`: register a Stream connection (protocol notes §1.1).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenConnection<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub subscriptions: Vec<Subscription<'a>>,
    /// The client's user agent.
    pub ua: &'a str,
}

/// One subscription of [`OpenConnection`]: a frame type and a topic.
#[derive(Debug, Serialize)]
pub struct Subscription<'a> {
    /// `CALLBACK`, `EVENT` or `SYSTEM`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub topic: &'a str,
}

/// `POST /v1.0/oauth2/accessToken`: an access token for the app (protocol notes §4).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessToken<'a> {
    pub app_key: &'a str,
    pub app_secret: &'a str,
}

/// The AI card's `flowStatus` variable (the official SDK's AI-card convention, protocol notes §6.5): a string
/// on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FlowStatus {
    /// `"1"`: the card was delivered and waits for text.
    #[serde(rename = "1")]
    Processing,
    /// `"3"`: the answer is complete.
    #[serde(rename = "3")]
    Finished,
    /// `"5"`: the answer failed.
    #[serde(rename = "5")]
    Failed,
}

impl FlowStatus {
    /// The wire value.
    pub fn wire(self) -> &'static str {
        match self {
            Self::Processing => "1",
            Self::Finished => "3",
            Self::Failed => "5",
        }
    }

    /// The status a wire value names, if any.
    pub fn from_wire(value: &str) -> Option<Self> {
        [Self::Processing, Self::Finished, Self::Failed]
            .into_iter()
            .find(|status| status.wire() == value)
    }
}

/// `cardData` of a card body: `{"cardParamMap": …}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardData<P> {
    pub card_param_map: P,
}

/// The card parameters a new AI card starts with: its content variable (named by the configuration) empty,
/// and `flowStatus` processing.
#[derive(Debug)]
pub struct InitialCardParams<'a> {
    /// The template variable the answer streams into.
    pub content_key: &'a str,
}

impl Serialize for InitialCardParams<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry(self.content_key, "")?;
        map.serialize_entry("flowStatus", &FlowStatus::Processing)?;
        map.end()
    }
}

/// Card parameters that set only `flowStatus`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowStatusParams {
    pub flow_status: FlowStatus,
}

/// The card parameters of a permission probe (a card that does not exist).
#[derive(Debug, Serialize)]
pub struct ProbeCardParams<'a> {
    pub probe: &'a str,
}

/// `{"supportForward": …}`: the `imGroupOpenSpaceModel` and `imRobotOpenSpaceModel` of
/// [`CreateAndDeliver`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenSpaceModel {
    pub support_forward: bool,
}

/// `imGroupOpenDeliverModel` of [`CreateAndDeliver`]: delivery into a group.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDeliverModel<'a> {
    pub robot_code: &'a str,
}

/// `imRobotOpenDeliverModel` of [`CreateAndDeliver`]: delivery into the robot's 1:1 chat.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotDeliverModel<'a> {
    /// Always `IM_ROBOT`.
    pub space_type: &'a str,
    pub robot_code: &'a str,
}

/// `POST /v1.0/card/instances/createAndDeliver`: create an AI card and deliver it (protocol notes §6.2).
/// Exactly one of the two deliver models is present, matching `openSpaceId`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateAndDeliver<'a> {
    pub card_template_id: &'a str,
    pub out_track_id: &'a str,
    pub card_data: CardData<InitialCardParams<'a>>,
    /// `STREAM`: card actions arrive on the Stream connection.
    pub callback_type: &'a str,
    pub im_group_open_space_model: OpenSpaceModel,
    pub im_robot_open_space_model: OpenSpaceModel,
    /// 1: staff id (also sent for groups), 2: unionId.
    pub user_id_type: u8,
    /// `dtv1.card//IM_GROUP.<conversationId>` or `dtv1.card//IM_ROBOT.<user>`.
    pub open_space_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub im_group_open_deliver_model: Option<GroupDeliverModel<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub im_robot_open_deliver_model: Option<RobotDeliverModel<'a>>,
}

/// `cardUpdateOptions` of [`UpdateCard`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardUpdateOptions {
    /// `true`: merge the parameters into the card's data rather than replace it.
    pub update_card_data_by_key: bool,
}

/// `PUT /v1.0/card/instances`: change a card's data (protocol notes §6.5).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateCard<'a, P> {
    pub out_track_id: &'a str,
    pub card_data: CardData<P>,
    /// Absent: the platform replaces the whole card data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_update_options: Option<CardUpdateOptions>,
}

/// `PUT /v1.0/card/streaming`: a snapshot of a card's content (protocol notes §6.4).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardStreaming<'a> {
    pub out_track_id: &'a str,
    /// Unique per update; the platform deduplicates retries by it.
    pub guid: &'a str,
    /// The template variable bound to the streaming component.
    pub key: &'a str,
    pub content: &'a str,
    /// `true`: `content` replaces the value (always, for markdown).
    pub is_full: bool,
    pub is_finalize: bool,
    pub is_error: bool,
}

/// A markdown message: the `markdown` of [`WebhookMarkdown`], and the `msgParam` of a robot send with
/// `msgKey` `sampleMarkdown`. Fields in the order the platform's examples (and this connector) always sent.
#[derive(Debug, Serialize)]
pub struct Markdown<'a> {
    pub text: &'a str,
    pub title: &'a str,
}

/// A text message: the `msgParam` of a robot send with `msgKey` `sampleText`.
#[derive(Debug, Serialize)]
pub struct Text<'a> {
    pub content: &'a str,
}

/// `at` of [`WebhookMarkdown`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct At<'a> {
    /// Staff ids to mention; empty rather than `[""]` for a sender without one.
    pub at_user_ids: Vec<&'a str>,
    pub is_at_all: bool,
}

/// `POST <sessionWebhook>` with a markdown message (protocol notes §7.1).
#[derive(Debug, Serialize)]
pub struct WebhookMarkdown<'a> {
    /// Always `markdown`.
    pub msgtype: &'a str,
    pub markdown: Markdown<'a>,
    pub at: At<'a>,
}

/// `POST /v1.0/robot/oToMessages/batchSend`: a robot message to people in 1:1 chats (protocol notes §7.2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotBatchSend<'a, P: Serialize> {
    pub robot_code: &'a str,
    /// Staff ids.
    pub user_ids: Vec<&'a str>,
    /// `sampleMarkdown` or `sampleText`.
    pub msg_key: &'a str,
    /// The message, sent as a JSON string.
    #[serde(serialize_with = "json_string")]
    pub msg_param: P,
}

/// `POST /v1.0/robot/groupMessages/send`: a robot message into a group (protocol notes §7.2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotGroupSend<'a, P: Serialize> {
    pub robot_code: &'a str,
    pub open_conversation_id: &'a str,
    /// `sampleMarkdown` or `sampleText`.
    pub msg_key: &'a str,
    /// The message, sent as a JSON string.
    #[serde(serialize_with = "json_string")]
    pub msg_param: P,
}

/// Serialise `value` as a string holding its JSON (the robot APIs' `msgParam`).
fn json_string<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&serde_json::to_string(value).map_err(S::Error::custom)?)
}

#[cfg(test)]
mod tests {
    //! Each body against the `json!` literal the connector sent before these types existed.

    use serde_json::{json, to_value};

    use super::*;

    #[test]
    fn open_connection() {
        let body = OpenConnection {
            client_id: "key",
            client_secret: "secret",
            subscriptions: vec![Subscription {
                kind: "CALLBACK",
                topic: "/v1.0/im/bot/messages/get",
            }],
            ua: "hearth/1.2.3",
        };
        let old = json!({
            "clientId": "key",
            "clientSecret": "secret",
            "subscriptions": [
                {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"},
            ],
            "ua": "hearth/1.2.3",
        });
        assert_eq!(to_value(&body).unwrap(), old);
    }

    #[test]
    fn access_token() {
        let body = AccessToken {
            app_key: "key",
            app_secret: "secret",
        };
        assert_eq!(
            to_value(&body).unwrap(),
            json!({"appKey": "key", "appSecret": "secret"})
        );
    }

    fn create(group: bool) -> CreateAndDeliver<'static> {
        CreateAndDeliver {
            card_template_id: "tpl.schema",
            out_track_id: "track",
            card_data: CardData {
                card_param_map: InitialCardParams { content_key: "content" },
            },
            callback_type: "STREAM",
            im_group_open_space_model: OpenSpaceModel { support_forward: true },
            im_robot_open_space_model: OpenSpaceModel { support_forward: true },
            user_id_type: if group { 1 } else { 2 },
            open_space_id: if group {
                "dtv1.card//IM_GROUP.cid".to_owned()
            } else {
                "dtv1.card//IM_ROBOT.union".to_owned()
            },
            im_group_open_deliver_model: group.then_some(GroupDeliverModel { robot_code: "robot" }),
            im_robot_open_deliver_model: (!group).then_some(RobotDeliverModel {
                space_type: "IM_ROBOT",
                robot_code: "robot",
            }),
        }
    }

    #[test]
    fn create_and_deliver_to_a_group_and_a_person() {
        let key = "content";
        let old = || {
            json!({
                "cardTemplateId": "tpl.schema",
                "outTrackId": "track",
                "cardData": {"cardParamMap": {key: "", "flowStatus": "1"}},
                "callbackType": "STREAM",
                "imGroupOpenSpaceModel": {"supportForward": true},
                "imRobotOpenSpaceModel": {"supportForward": true},
                "userIdType": 1,
            })
        };
        let mut group = old();
        group["openSpaceId"] = json!(format!("dtv1.card//IM_GROUP.{}", "cid"));
        group["imGroupOpenDeliverModel"] = json!({"robotCode": "robot"});
        assert_eq!(to_value(create(true)).unwrap(), group);
        let mut single = old();
        single["openSpaceId"] = json!(format!("dtv1.card//IM_ROBOT.{}", "union"));
        single["userIdType"] = json!(2);
        single["imRobotOpenDeliverModel"] = json!({"spaceType": "IM_ROBOT", "robotCode": "robot"});
        assert_eq!(to_value(create(false)).unwrap(), single);
    }

    #[test]
    fn card_streaming() {
        let body = CardStreaming {
            out_track_id: "track",
            guid: "g1",
            key: "content",
            content: "Hello",
            is_full: true,
            is_finalize: true,
            is_error: false,
        };
        let old = json!({
            "outTrackId": "track",
            "guid": "g1",
            "key": "content",
            "content": "Hello",
            "isFull": true,
            "isFinalize": true,
            "isError": false,
        });
        assert_eq!(to_value(&body).unwrap(), old);
    }

    #[test]
    fn flow_status_update() {
        for (status, wire) in [(FlowStatus::Finished, "3"), (FlowStatus::Failed, "5")] {
            let body = UpdateCard {
                out_track_id: "track",
                card_data: CardData {
                    card_param_map: FlowStatusParams { flow_status: status },
                },
                card_update_options: Some(CardUpdateOptions {
                    update_card_data_by_key: true,
                }),
            };
            let old = json!({
                "outTrackId": "track",
                "cardData": {"cardParamMap": {"flowStatus": wire}},
                "cardUpdateOptions": {"updateCardDataByKey": true},
            });
            assert_eq!(to_value(&body).unwrap(), old);
            assert_eq!(to_value(status).unwrap(), json!(status.wire()));
            assert_eq!(FlowStatus::from_wire(wire), Some(status));
        }
        assert_eq!(FlowStatus::from_wire("9"), None);
    }

    #[test]
    fn webhook_markdown_with_and_without_a_mention() {
        for (at_user, at_users) in [("staff", vec!["staff"]), ("", vec![])] {
            let body = WebhookMarkdown {
                msgtype: "markdown",
                markdown: Markdown {
                    text: "**hi**",
                    title: "T",
                },
                at: At {
                    at_user_ids: Some(at_user).filter(|u| !u.is_empty()).into_iter().collect(),
                    is_at_all: false,
                },
            };
            let old = json!({"msgtype": "markdown", "markdown": {"title": "T", "text": "**hi**"}, "at": {"atUserIds": at_users, "isAtAll": false}});
            assert_eq!(to_value(&body).unwrap(), old);
        }
    }

    #[test]
    fn robot_markdown_one_to_one_and_group() {
        let (title, text) = ("T", "a \"quoted\"\nline");
        // Keys in the struct's field order: serde_json keeps insertion order (`preserve_order`, which llguidance
        // turns on).
        let msg_param = json!({"text": text, "title": title}).to_string();
        let one = RobotBatchSend {
            robot_code: "robot",
            user_ids: vec!["staff"],
            msg_key: "sampleMarkdown",
            msg_param: Markdown { text, title },
        };
        let old =
            json!({"robotCode": "robot", "userIds": ["staff"], "msgKey": "sampleMarkdown", "msgParam": msg_param});
        assert_eq!(to_value(&one).unwrap(), old);
        let group = RobotGroupSend {
            robot_code: "robot",
            open_conversation_id: "cid",
            msg_key: "sampleMarkdown",
            msg_param: Markdown { text, title },
        };
        let old = json!({"robotCode": "robot", "openConversationId": "cid", "msgKey": "sampleMarkdown", "msgParam": msg_param});
        assert_eq!(to_value(&group).unwrap(), old);
    }

    #[test]
    fn permission_probes() {
        let probe_id = "hearth-permission-probe-7";
        let instance = UpdateCard {
            out_track_id: probe_id,
            card_data: CardData {
                card_param_map: ProbeCardParams { probe: "1" },
            },
            card_update_options: None,
        };
        let old = json!({"outTrackId": probe_id, "cardData": {"cardParamMap": {"probe": "1"}}});
        assert_eq!(to_value(&instance).unwrap(), old);
        let streaming = CardStreaming {
            out_track_id: probe_id,
            guid: probe_id,
            key: "content",
            content: "probe",
            is_full: true,
            is_finalize: false,
            is_error: false,
        };
        let old = json!({"outTrackId": probe_id, "guid": probe_id, "key": "content", "content": "probe", "isFull": true, "isFinalize": false, "isError": false});
        assert_eq!(to_value(&streaming).unwrap(), old);
        let robot = RobotBatchSend {
            robot_code: "robot",
            user_ids: vec![],
            msg_key: "sampleText",
            msg_param: Text { content: "probe" },
        };
        let old =
            json!({"robotCode": "robot", "userIds": [], "msgKey": "sampleText", "msgParam": "{\"content\":\"probe\"}"});
        assert_eq!(to_value(&robot).unwrap(), old);
    }
}

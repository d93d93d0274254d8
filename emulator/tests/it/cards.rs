//! Tokens, AI cards (create and deliver, streaming, update), robot sends, the sessionWebhook, QPS limits
//! and injected card failures.

use emulator::dingtalk::{CardStatus, FaultCommand, DEFAULT_CLIENT_ID, PERM_CARD_STREAMING};
use serde_json::{json, Value};

use crate::{group, post, put, single, start, token};

fn card_body(out_track_id: &str, open_space_id: &str) -> Value {
    json!({
        "cardTemplateId": "382e4302-551d-4880-bf29-a30acfab2e71.schema",
        "outTrackId": out_track_id,
        "cardData": {"cardParamMap": {"content": "", "flowStatus": "1"}},
        "callbackType": "STREAM",
        "openSpaceId": open_space_id,
        "imGroupOpenSpaceModel": {"supportForward": true},
        "imRobotOpenSpaceModel": {"supportForward": true},
        "imGroupOpenDeliverModel": {"robotCode": DEFAULT_CLIENT_ID},
        "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT"},
    })
}

fn stream(out_track_id: &str, guid: &str, content: &str, is_full: bool, is_finalize: bool) -> Value {
    json!({"outTrackId": out_track_id, "guid": guid, "key": "content", "content": content,
           "isFull": is_full, "isFinalize": is_finalize, "isError": false})
}

#[tokio::test]
async fn tokens_are_reissued_while_valid_and_checked_on_every_call() {
    let dingtalk = start(|_| {}).await;
    let base = dingtalk.base_url();
    let first = token(&dingtalk).await;
    assert_eq!(token(&dingtalk).await, first, "a valid token is handed out again");
    let (status, body) = post(
        &format!("{base}/v1.0/oauth2/accessToken"),
        json!({"appKey": DEFAULT_CLIENT_ID, "appSecret": "nope"}),
        None,
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalidClientIdOrSecret")));
    let url = format!("{base}/v1.0/card/streaming");
    for bad in [None, Some("not-a-token")] {
        let (status, body) = put(&url, stream("x", "g", "hi", true, false), bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("InvalidAuthentication")),
            "{body}"
        );
    }
    dingtalk.fault(FaultCommand::ExpireTokens).unwrap();
    let (status, body) = put(&url, stream("x", "g", "hi", true, false), Some(&first)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("InvalidAuthentication")));
    assert_ne!(token(&dingtalk).await, first, "after expiry a new token is issued");
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_ai_card_streams_into_a_group_with_full_history() {
    let dingtalk = start(|c| c.markdown_keys = vec!["markdown".to_owned()]).await;
    let base = dingtalk.base_url();
    let token = token(&dingtalk).await;
    group(&dingtalk, "cidGroup1", "erin", "tell me a story", true);
    let (status, body) = post(
        &format!("{base}/v1.0/card/instances/createAndDeliver"),
        card_body("card-1", "dtv1.card//IM_GROUP.cidGroup1"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["result"]["outTrackId"], "card-1");
    let delivered = &body["result"]["deliverResults"][0];
    assert_eq!(
        (
            delivered["spaceType"].as_str(),
            delivered["spaceId"].as_str(),
            delivered["success"].as_bool()
        ),
        (Some("IM_GROUP"), Some("cidGroup1"), Some(true))
    );

    let url = format!("{base}/v1.0/card/streaming");
    let ok = |(status, body): (u16, Value)| assert_eq!((status, body), (200, json!({"success": true, "result": true})));
    ok(put(&url, stream("card-1", "g1", "Once", true, false), Some(&token)).await);
    assert_eq!(
        dingtalk.inspect(|w| w.card("card-1").unwrap().status),
        CardStatus::Inputting
    );
    ok(put(&url, stream("card-1", "g2", " upon", false, false), Some(&token)).await);
    // A retry with the same guid is acknowledged and not applied twice.
    ok(put(&url, stream("card-1", "g2", " upon", false, false), Some(&token)).await);
    ok(put(
        &url,
        stream("card-1", "g3", "Once upon a time.", true, true),
        Some(&token),
    )
    .await);

    let conversation = dingtalk.inspect(|w| w.conversation_view("cidGroup1")).unwrap();
    assert_eq!(conversation.cards.len(), 1);
    let card = &conversation.cards[0];
    assert_eq!(card.status, CardStatus::Finished);
    assert_eq!(card.text, "Once upon a time.");
    let streamed: Vec<&str> = card
        .updates
        .iter()
        .filter(|u| u.api == "streaming")
        .map(|u| u.content.as_deref().unwrap())
        .collect();
    assert_eq!(streamed, ["Once", " upon", "Once upon a time."]);
    assert_eq!(card.updates[0].api, "createAndDeliver");

    // The documented parameter errors.
    let cases = [
        (
            json!({"outTrackId": "card-1", "guid": "g9", "key": "content", "content": "", "isFull": true}),
            "param.stream.contentEmpty",
        ),
        (
            json!({"outTrackId": "card-1", "guid": "g9", "content": "x", "isFull": true}),
            "param.stream.keyEmpty",
        ),
        (
            json!({"outTrackId": "card-1", "key": "content", "content": "x", "isFull": true}),
            "param.stream.guidEmpty",
        ),
        (
            json!({"outTrackId": "nope", "guid": "g9", "key": "content", "content": "x", "isFull": true}),
            "param.stream.outTrackId",
        ),
        (
            json!({"outTrackId": "card-1", "guid": "g9", "key": "markdown", "content": "x", "isFull": false}),
            "param.stream.isFull",
        ),
        (
            json!({"outTrackId": "card-1", "guid": "g9", "key": "content", "content": "x".repeat(20_000), "isFull": true}),
            "param.stream.content",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = put(&url, body, Some(&token)).await;
        assert_eq!((status, answer["code"].as_str()), (400, Some(code)));
    }
    // A second card with the same outTrackId is refused; a group the robot is not in fails per space.
    let (status, body) = post(
        &format!("{base}/v1.0/card/instances/createAndDeliver"),
        card_body("card-1", "dtv1.card//IM_GROUP.cidGroup1"),
        Some(&token),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("param.cardAlreadyExist")));
    let (status, body) = post(
        &format!("{base}/v1.0/card/instances/createAndDeliver"),
        card_body("card-2", "dtv1.card//IM_GROUP.cidElsewhere"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["deliverResults"][0]["success"], false);
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn card_updates_merge_or_replace_and_the_two_step_path_works() {
    let dingtalk = start(|_| {}).await;
    let base = dingtalk.base_url();
    let token = token(&dingtalk).await;
    let posted = single(&dingtalk, "frank", "hi");
    let mut create = card_body("card-a", "");
    create.as_object_mut().unwrap().remove("openSpaceId");
    let (status, body) = post(&format!("{base}/v1.0/card/instances"), create, Some(&token)).await;
    assert_eq!((status, body), (200, json!({"success": true, "result": "card-a"})));
    let (status, body) = post(
        &format!("{base}/v1.0/card/instances/deliver"),
        json!({"outTrackId": "card-a", "userIdType": 1, "openSpaceId": "dtv1.card//IM_ROBOT.frank", "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT"}}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"][0]["success"], true);
    let url = format!("{base}/v1.0/card/instances");
    let (status, _) = put(
        &url,
        json!({"outTrackId": "card-a", "cardData": {"cardParamMap": {"content": "done", "flowStatus": "3"}}}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = put(
        &url,
        json!({"outTrackId": "card-a", "cardData": {"cardParamMap": {"extra": "1"}}, "cardUpdateOptions": {"updateCardDataByKey": true}}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    let card = dingtalk
        .inspect(|w| w.cards_in(&posted.conversation_id))
        .pop()
        .expect("the card is in alice's 1:1 chat");
    assert_eq!(card.status, CardStatus::Finished);
    assert_eq!(card.text, "done");
    assert_eq!(card.card_param_map.get("extra").map(String::as_str), Some("1"));
    // Without updateCardDataByKey the whole cardData is replaced.
    put(
        &url,
        json!({"outTrackId": "card-a", "cardData": {"cardParamMap": {"content": "replaced"}}}),
        Some(&token),
    )
    .await;
    let card = dingtalk.inspect(|w| w.card("card-a").cloned()).unwrap();
    assert_eq!(card.card_param_map.len(), 1);
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn injected_failures_qps_limits_and_permissions() {
    let dingtalk = start(|c| c.qps_per_api = 1000).await;
    let base = dingtalk.base_url();
    let token = token(&dingtalk).await;
    group(&dingtalk, "cidBusy", "gina", "hello", true);
    post(
        &format!("{base}/v1.0/card/instances/createAndDeliver"),
        card_body("busy", "dtv1.card//IM_GROUP.cidBusy"),
        Some(&token),
    )
    .await;
    dingtalk
        .fault(FaultCommand::CardUpdateFailures {
            fraction: 0.2,
            status: 429,
        })
        .unwrap();
    let url = format!("{base}/v1.0/card/streaming");
    let mut statuses = Vec::new();
    for i in 0..10 {
        let (status, body) = put(
            &url,
            stream("busy", &format!("g{i}"), &format!("{i}"), true, false),
            Some(&token),
        )
        .await;
        if status == 429 {
            assert_eq!(body["code"], "system.busy");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "a fifth of the calls fail: {statuses:?}"
    );
    let card = dingtalk.inspect(|w| w.card("busy").cloned()).unwrap();
    assert_eq!(card.rejected_calls, 2);
    dingtalk.fault(FaultCommand::Clear).unwrap();

    dingtalk
        .fault(FaultCommand::RevokePermission {
            permission: PERM_CARD_STREAMING.to_owned(),
        })
        .unwrap();
    let (status, body) = put(&url, stream("busy", "gp", "x", true, false), Some(&token)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("Forbidden.AccessDenied.AccessTokenPermissionDenied"))
    );
    assert_eq!(
        body["accessdenieddetail"]["requiredScopes"],
        json!([PERM_CARD_STREAMING])
    );
    dingtalk.shutdown().await.unwrap();

    // A tight QPS limit: calls past it in the same second get the platform's 403.
    let dingtalk = start(|c| c.qps_per_api = 2).await;
    let token = crate::token(&dingtalk).await;
    let url = format!("{}/v1.0/card/streaming", dingtalk.base_url());
    let mut codes = Vec::new();
    for i in 0..6 {
        let (_, body) = put(&url, stream("none", &format!("q{i}"), "x", true, false), Some(&token)).await;
        codes.push(body["code"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        codes
            .iter()
            .any(|c| c == "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"),
        "{codes:?}"
    );
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn session_webhook_and_robot_send_apis() {
    let dingtalk = start(|_| {}).await;
    let base = dingtalk.base_url();
    let token = token(&dingtalk).await;
    let posted = group(&dingtalk, "cidHooks", "hank", "ping", true);
    assert!(posted.pushed);
    // The sessionWebhook URL comes with the callback; read it from a Stream push.
    let mut ws = crate::connect(&dingtalk).await;
    let frame = crate::next_frame(&mut ws).await;
    let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    let hook = data["sessionWebhook"].as_str().unwrap().to_owned();
    let (status, body) = post(
        &hook,
        json!({"msgtype": "markdown", "markdown": {"title": "t", "text": "# answer"}, "at": {"atUserIds": ["hank"]}}),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"errcode": 0, "errmsg": "ok"})));
    dingtalk.fault(FaultCommand::ExpireWebhooks).unwrap();
    let (status, body) = post(&hook, json!({"msgtype": "text", "text": {"content": "late"}}), None).await;
    assert_eq!((status, body["errcode"].as_i64()), (200, Some(300_001)));

    let (status, body) = post(
        &format!("{base}/v1.0/robot/groupMessages/send"),
        json!({"robotCode": DEFAULT_CLIENT_ID, "openConversationId": "cidHooks", "msgKey": "sampleMarkdown", "msgParam": "{\"title\":\"t\",\"text\":\"fallback\"}"}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["processQueryKey"].is_string());
    let (status, body) = post(
        &format!("{base}/v1.0/robot/oToMessages/batchSend"),
        json!({"robotCode": DEFAULT_CLIENT_ID, "userIds": ["hank"], "msgKey": "sampleText", "msgParam": "{\"content\":\"direct\"}"}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &format!("{base}/v1.0/robot/oToMessages/batchSend"),
        json!({"robotCode": DEFAULT_CLIENT_ID, "userIds": ["hank"], "msgKey": "noSuchKey", "msgParam": "{}"}),
        Some(&token),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalidParameter.msgKey.invalid"))
    );
    let texts: Vec<String> = dingtalk.inspect(|w| {
        w.conversation("cidHooks")
            .unwrap()
            .messages
            .iter()
            .filter_map(|m| match m {
                emulator::dingtalk::ChatEntry::Robot { via, text, .. } => Some(format!("{via}:{text}")),
                _ => None,
            })
            .collect()
    });
    assert_eq!(texts, ["sessionWebhook:# answer", "robotApi:fallback"]);
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_robot_over_its_webhook_limit_is_throttled_with_130101() {
    let dingtalk = start(|c| c.webhook_messages_per_minute = 2).await;
    let mut ws = crate::connect(&dingtalk).await;
    let mut hooks = Vec::new();
    for user in ["ivy", "jon"] {
        crate::single(&dingtalk, user, "hi");
        let frame = crate::next_frame(&mut ws).await;
        let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        hooks.push(data["sessionWebhook"].as_str().unwrap().to_owned());
    }
    let text = |content: &str| json!({"msgtype": "text", "text": {"content": content}});
    // The limit is per robot, across sessions: two messages pass, the third is refused and so is every
    // message during the throttle, whichever session it uses.
    for (hook, content) in [(&hooks[0], "one"), (&hooks[1], "two")] {
        assert_eq!(
            post(hook, text(content), None).await,
            (200, json!({"errcode": 0, "errmsg": "ok"}))
        );
    }
    for hook in [&hooks[0], &hooks[1]] {
        let (status, body) = post(hook, text("too many"), None).await;
        assert_eq!((status, body["errcode"].as_i64()), (200, Some(130_101)), "{body}");
        assert_eq!(body["errmsg"], "send too fast, exceed 2 times per minute");
    }
    let (sent, throttled) = dingtalk.inspect(|w| {
        let sent = w
            .conversation_ids()
            .iter()
            .flat_map(|id| w.conversation(id).unwrap().messages.clone())
            .filter(|m| matches!(m, emulator::dingtalk::ChatEntry::Robot { .. }))
            .count();
        (sent, w.stats().webhooks_throttled)
    });
    assert_eq!((sent, throttled), (2, 2), "refused messages are not shown");
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_legacy_gettoken_hands_out_the_new_style_token() {
    let dingtalk = start(|_| {}).await;
    let base = dingtalk.base_url();
    let url = |secret: &str| format!("{base}/gettoken?appkey={DEFAULT_CLIENT_ID}&appsecret={secret}");
    let legacy: Value = reqwest::get(url(crate::DEFAULT_CLIENT_SECRET))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (legacy["errcode"].as_i64(), legacy["expires_in"].as_u64()),
        (Some(0), Some(7200))
    );
    let access_token = legacy["access_token"].as_str().expect("a token").to_owned();
    assert_eq!(token(&dingtalk).await, access_token, "one token for both hosts");
    let refused: Value = reqwest::get(url("wrong")).await.unwrap().json().await.unwrap();
    assert_eq!(refused["errcode"], 40089);
    assert!(refused.get("access_token").is_none());
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_external_sender_has_no_staff_id_and_a_card_finds_them_by_union_id() {
    let dingtalk = start(|_| {}).await;
    let base = dingtalk.base_url();
    let token = token(&dingtalk).await;
    let posted = dingtalk
        .post_message(emulator::dingtalk::UserMessage {
            external: true,
            union_id: Some("union-guest".to_owned()),
            ..emulator::dingtalk::UserMessage::single("guest", "hi")
        })
        .unwrap();
    // An empty staff id cannot address a 1:1 card; the unionId can, with userIdType 2.
    let (status, body) = post(
        &format!("{base}/v1.0/card/instances/createAndDeliver"),
        card_body("card-x", "dtv1.card//IM_ROBOT."),
        Some(&token),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("param.openSpaceIdInvalid")));
    let mut by_union = card_body("card-u", "dtv1.card//IM_ROBOT.union-guest");
    by_union["userIdType"] = json!(2);
    let (status, body) = post(
        &format!("{base}/v1.0/card/instances/createAndDeliver"),
        by_union,
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["deliverResults"][0]["success"], true, "{body}");
    let mut unknown = card_body("card-v", "dtv1.card//IM_ROBOT.union-nobody");
    unknown["userIdType"] = json!(2);
    let (_, body) = post(
        &format!("{base}/v1.0/card/instances/createAndDeliver"),
        unknown,
        Some(&token),
    )
    .await;
    assert_eq!(body["result"]["deliverResults"][0]["success"], false, "{body}");
    // flowStatus is recorded as the card's state variable.
    let (status, _) = put(
        &format!("{base}/v1.0/card/instances"),
        json!({"outTrackId": "card-u", "cardData": {"cardParamMap": {"flowStatus": "5"}}, "cardUpdateOptions": {"updateCardDataByKey": true}}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    let (cards, stats) = dingtalk.inspect(|w| (w.cards_in(&posted.conversation_id), w.stats()));
    assert_eq!(cards.len(), 1, "the card went to the guest's chat");
    assert_eq!(cards[0].flow_status.as_deref(), Some("5"));
    assert_eq!(cards[0].status, CardStatus::Failed);
    assert_eq!(
        stats.bad_requests, 1,
        "the empty space id was refused for its parameters"
    );
    // No robot message can be addressed to an empty staff id either.
    let (status, body) = post(
        &format!("{base}/v1.0/robot/oToMessages/batchSend"),
        json!({"robotCode": DEFAULT_CLIENT_ID, "userIds": [""], "msgKey": "sampleText", "msgParam": "{\"content\":\"x\"}"}),
        Some(&token),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalidParameter.userIds.empty"))
    );
    dingtalk.shutdown().await.unwrap();
}

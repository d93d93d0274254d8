//! Stream mode: connection open, tickets, CALLBACK frames, ACKs, redelivery, pings, disconnect, zombies.

use std::time::Duration;

use emulator::dingtalk::{FaultCommand, DEFAULT_CLIENT_ID};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{ack, connect, group, next_frame, open, post, single, start, PATIENCE};

#[tokio::test]
async fn open_refuses_unknown_credentials_with_the_platform_envelope() {
    let dingtalk = start(|_| {}).await;
    let url = format!("{}/v1.0/gateway/connections/open", dingtalk.base_url());
    for (id, secret) in [
        (DEFAULT_CLIENT_ID, "wrong"),
        ("other-app", "emulator-app-secret"),
        (" dingemulatorappkey", "emulator-app-secret"),
    ] {
        let (status, body) = post(
            &url,
            json!({"clientId": id, "clientSecret": secret, "subscriptions": [{"type": "EVENT", "topic": "*"}]}),
            None,
        )
        .await;
        assert_eq!(status, 401, "{id}/{secret}");
        assert_eq!(body["code"], "authFailed");
        assert!(body["requestid"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
    }
    // A form-encoded body is refused as the platform does.
    let response = reqwest::Client::new()
        .post(&url)
        .body("clientId=x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "Missingbody");
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn tickets_are_single_use() {
    let dingtalk = start(|_| {}).await;
    let opened = open(&dingtalk).await;
    let endpoint = opened["endpoint"].as_str().unwrap();
    assert!(
        endpoint.starts_with("ws://") && endpoint.ends_with("/connect"),
        "{endpoint}"
    );
    let url = format!("{endpoint}?ticket={}", opened["ticket"].as_str().unwrap());
    let _first = tokio_tungstenite::connect_async(&url)
        .await
        .expect("a fresh ticket is accepted");
    let second = tokio_tungstenite::connect_async(&url).await;
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("a reused ticket must be refused, got {other:?}"),
    }
    assert_eq!(dingtalk.inspect(|w| w.stats().tickets_refused), 1);
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn callbacks_carry_the_documented_fields_and_are_redelivered_until_acked() {
    let dingtalk = start(|c| c.redelivery_after = Duration::from_millis(300)).await;
    let mut ws = connect(&dingtalk).await;
    let posted = single(&dingtalk, "alice", "hello robot");
    let frame = next_frame(&mut ws).await;
    assert_eq!(frame["specVersion"], "1.0");
    assert_eq!(frame["type"], "CALLBACK");
    assert_eq!(frame["headers"]["topic"], "/v1.0/im/bot/messages/get");
    assert_eq!(frame["headers"]["messageId"], posted.message_id.as_str());
    assert!(frame["headers"]["time"].is_string(), "header values are strings");
    let data: Value = serde_json::from_str(frame["data"].as_str().expect("data is a JSON string")).unwrap();
    assert_eq!(data["conversationType"], "1");
    assert_eq!(data["conversationId"], posted.conversation_id.as_str());
    assert_eq!(data["msgId"], posted.msg_id.as_str());
    assert_eq!(data["msgtype"], "text");
    assert_eq!(data["text"]["content"], "hello robot");
    assert_eq!(data["senderStaffId"], "alice");
    assert_eq!(data["robotCode"], DEFAULT_CLIENT_ID);
    assert!(data["createAt"].is_u64() && data["sessionWebhookExpiredTime"].is_u64());
    assert!(data["sessionWebhook"]
        .as_str()
        .unwrap()
        .contains("/robot/sendBySession?session="));

    // No ACK: the same push comes again after the window, same messageId and data.
    let again = next_frame(&mut ws).await;
    assert_eq!(again["headers"]["messageId"], frame["headers"]["messageId"]);
    assert_eq!(again["data"], frame["data"]);
    ack(&mut ws, &again, json!(r#"{"response": null}"#)).await;
    dingtalk
        .wait_for(PATIENCE, |w| {
            (w.stats().callbacks_acked == 1 && w.stats().unacked == 0).then_some(())
        })
        .await
        .unwrap();
    assert_eq!(dingtalk.inspect(|w| w.stats().redeliveries), 1);
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn groups_push_only_mentions_with_the_mention_stripped() {
    let dingtalk = start(|_| {}).await;
    let mut ws = connect(&dingtalk).await;
    let quiet = group(&dingtalk, "cidTeam", "bob", "just chatting", false);
    assert!(!quiet.pushed);
    let asked = group(&dingtalk, "cidTeam", "bob", "what time is it?", true);
    assert!(asked.pushed);
    let frame = next_frame(&mut ws).await;
    assert_eq!(
        frame["headers"]["messageId"],
        asked.message_id.as_str(),
        "the unmentioned message is not pushed"
    );
    let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["conversationType"], "2");
    assert_eq!(data["conversationId"], "cidTeam");
    assert_eq!(data["conversationTitle"], "Group cidTeam");
    assert_eq!(data["isInAtList"], true);
    assert_eq!(data["text"]["content"], " what time is it?");
    ack(&mut ws, &frame, json!("")).await;
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn pings_must_echo_their_data() {
    let dingtalk = start(|c| c.ping_interval = Some(Duration::from_millis(50))).await;
    let mut ws = connect(&dingtalk).await;
    let ping = next_frame(&mut ws).await;
    assert_eq!(ping["type"], "SYSTEM");
    assert_eq!(ping["headers"]["topic"], "ping");
    let data: Value = serde_json::from_str(ping["data"].as_str().unwrap()).unwrap();
    assert!(data["opaque"].is_string());
    ack(&mut ws, &ping, ping["data"].clone()).await;
    let wrong = next_frame(&mut ws).await;
    ack(&mut ws, &wrong, json!("{}")).await;
    dingtalk
        .wait_for(PATIENCE, |w| {
            (w.stats().pings_acked == 1 && w.stats().bad_ping_acks == 1).then_some(())
        })
        .await
        .unwrap();
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn disconnect_notice_stops_delivery_and_drops_the_socket() {
    let dingtalk = start(|c| {
        c.disconnect_grace = Duration::from_millis(200);
        c.redelivery_after = Duration::from_millis(200);
    })
    .await;
    let mut old = connect(&dingtalk).await;
    assert_eq!(
        dingtalk
            .fault(FaultCommand::Disconnect {
                connection: None,
                reason: None
            })
            .unwrap(),
        1
    );
    let notice = next_frame(&mut old).await;
    assert_eq!(notice["type"], "SYSTEM");
    assert_eq!(notice["headers"]["topic"], "disconnect");
    assert_eq!(notice["data"], r#"{"reason":"connection is expired"}"#);
    ack(&mut old, &notice, notice["data"].clone()).await;
    // Nothing more is delivered on the old socket; a new connection gets the message.
    let posted = single(&dingtalk, "carol", "are you there?");
    let mut new = connect(&dingtalk).await;
    let frame = next_frame(&mut new).await;
    assert_eq!(frame["headers"]["messageId"], posted.message_id.as_str());
    ack(&mut new, &frame, json!("")).await;
    // The old socket is closed by the server after the grace period, with no frame before the close.
    loop {
        match tokio::time::timeout(PATIENCE, old.next())
            .await
            .expect("the server closes the old socket")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(Message::Text(text))) => panic!("delivered on a disconnected socket: {text}"),
            Some(Ok(_)) => {}
        }
    }
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn zombie_sockets_answer_pings_but_deliver_nothing() {
    let dingtalk = start(|c| {
        c.redelivery_after = Duration::from_millis(200);
        // Redelivery picks a random live connection, the zombie included: allow plenty of attempts.
        c.max_redeliveries = 64;
    })
    .await;
    let mut zombie = connect(&dingtalk).await;
    assert_eq!(dingtalk.fault(FaultCommand::Zombie { connection: None }).unwrap(), 1);
    let posted = single(&dingtalk, "dave", "hello?");
    // The push went to the only connection, the zombie: it never arrives, so it is redelivered to a healthy one.
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().callbacks_pushed == 1).then_some(()))
        .await
        .unwrap();
    let mut healthy = connect(&dingtalk).await;
    let frame = next_frame(&mut healthy).await;
    assert_eq!(frame["headers"]["messageId"], posted.message_id.as_str());
    ack(&mut healthy, &frame, json!("")).await;
    // The zombie still answers a WebSocket ping, and the pong is the first thing on it: no frame came.
    zombie.send(Message::Ping(b"alive?".to_vec().into())).await.unwrap();
    match tokio::time::timeout(PATIENCE, zombie.next()).await.unwrap() {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"alive?"),
        other => panic!("expected a pong on the zombie, got {other:?}"),
    }
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn duplicate_pushes_repeat_the_frame_on_another_connection_and_one_ack_settles_both() {
    let dingtalk = start(|_| {}).await;
    let mut first = connect(&dingtalk).await;
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    assert!(
        dingtalk.fault(FaultCommand::DuplicatePushes { fraction: 1.5 }).is_err(),
        "a fraction above 1 is refused"
    );
    assert_eq!(
        dingtalk.fault(FaultCommand::DuplicatePushes { fraction: 1.0 }).unwrap(),
        1
    );

    // One connection: both copies arrive on it, identical.
    let posted = single(&dingtalk, "erin", "twice?");
    let (a, b) = (next_frame(&mut first).await, next_frame(&mut first).await);
    assert_eq!(a, b, "the copy is the same frame");
    assert_eq!(a["headers"]["messageId"], posted.message_id.as_str());
    ack(&mut first, &a, json!("")).await;
    ack(&mut first, &b, json!("")).await;

    // Two connections: one copy on each.
    let mut second = connect(&dingtalk).await;
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 2).then_some(()))
        .await
        .unwrap();
    let posted = single(&dingtalk, "erin", "twice again?");
    let (a, b) = (next_frame(&mut first).await, next_frame(&mut second).await);
    assert_eq!(a, b);
    let data: Value = serde_json::from_str(a["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["msgId"], posted.msg_id.as_str());
    ack(&mut second, &b, json!("")).await;
    ack(&mut first, &a, json!("")).await;
    let stats = dingtalk
        .wait_for(PATIENCE, |w| (w.stats().callbacks_acked == 2).then(|| w.stats()))
        .await
        .unwrap();
    assert_eq!(
        (
            stats.callbacks_pushed,
            stats.duplicate_pushes,
            stats.redeliveries,
            stats.unacked
        ),
        (4, 2, 0, 0)
    );

    // Switched off: one push per message.
    dingtalk.fault(FaultCommand::DuplicatePushes { fraction: 0.0 }).unwrap();
    single(&dingtalk, "erin", "once");
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().callbacks_pushed == 5).then_some(()))
        .await
        .unwrap();
    assert_eq!(dingtalk.inspect(|w| w.stats().duplicate_pushes), 2);
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_sockets_answer_nothing_not_even_pings() {
    let dingtalk = start(|c| {
        c.redelivery_after = Duration::from_millis(200);
        // Redelivery goes to the silent socket while it is alone: allow plenty of attempts.
        c.max_redeliveries = 64;
    })
    .await;
    let mut silent = connect(&dingtalk).await;
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    assert_eq!(dingtalk.fault(FaultCommand::Silence { connection: None }).unwrap(), 1);
    assert_eq!(
        dingtalk.inspect(|w| w.stats().live_connections),
        0,
        "a silent socket is not live"
    );
    let posted = single(&dingtalk, "erin", "anyone?");
    // The only connection is the silent one: the push goes there and vanishes.
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().callbacks_pushed == 1).then_some(()))
        .await
        .unwrap();
    silent.send(Message::Ping(b"alive?".to_vec().into())).await.unwrap();
    // A healthy socket answers a ping within milliseconds; a silent one never does.
    let answer = tokio::time::timeout(Duration::from_secs(1), silent.next()).await;
    assert!(answer.is_err(), "no pong, no frame on a silent socket: {answer:?}");
    // Once a healthy connection is open, redelivery goes there, never to the silent one.
    let mut healthy = connect(&dingtalk).await;
    let frame = next_frame(&mut healthy).await;
    assert_eq!(frame["headers"]["messageId"], posted.message_id.as_str());
    ack(&mut healthy, &frame, json!("")).await;
    dingtalk.shutdown().await.unwrap();
}

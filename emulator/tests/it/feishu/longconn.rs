//! The long connection: discovery, tickets and handshake refusals, ping/pong, event frames, responses,
//! redelivery, cluster mode, fragments and the connection faults.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use emulator::feishu::wire::METHOD_CONTROL;
use emulator::feishu::{FaultCommand, UserMessage, DEFAULT_APP_ID, DEFAULT_APP_SECRET};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{connect, discover, next_event, next_frame, p2p, ping, post, query_param, respond, start, Conn};
use crate::PATIENCE;

/// The HTTP answer refusing a WebSocket upgrade.
async fn refused_upgrade(url: &str) -> tungstenite::http::Response<Option<Vec<u8>>> {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => *response,
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the upgrade succeeded"),
    }
}

fn header(response: &tungstenite::http::Response<Option<Vec<u8>>>, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn discovery_hands_out_a_one_time_url_and_the_client_config() {
    let feishu = start(|_| {}).await;
    let answer = discover(&feishu).await;
    assert_eq!((answer.status, answer.code()), (200, 0), "{}", answer.body);
    let data = &answer.body["data"];
    let url = data["URL"].as_str().unwrap();
    assert!(url.starts_with(&format!("ws://{}/ws/v2?", feishu.addr())), "{url}");
    let first = url.split_once('?').unwrap().1.split('=').next().unwrap();
    assert!(
        first != "device_id" && first != "service_id",
        "the Node SDK parses the whole URL: {url}"
    );
    for key in ["device_id", "service_id", "ticket"] {
        assert!(query_param(url, key).is_some_and(|v| !v.is_empty()), "{key} in {url}");
    }
    assert!(query_param(url, "service_id").unwrap().parse::<i32>().is_ok());
    assert_eq!(
        data["ClientConfig"],
        json!({"ReconnectCount": -1, "ReconnectInterval": 120, "ReconnectNonce": 30, "PingInterval": 120})
    );

    // Wrong credentials: a non-zero code the SDKs treat as fatal, with `data: {}` (Node reads it first).
    let url = format!("{}/callback/ws/endpoint", feishu.base_url());
    for (id, secret) in [(DEFAULT_APP_ID, "wrong"), ("cli_0000000000000000", DEFAULT_APP_SECRET)] {
        let refused = post(&url, json!({"AppID": id, "AppSecret": secret}), None).await;
        assert_eq!(refused.status, 200);
        assert_eq!(refused.code(), 10_014, "{}", refused.body);
        assert_eq!(refused.body["data"], json!({}));
    }
    let garbage = reqwest::Client::new().post(&url).body("AppID=x").send().await.unwrap();
    assert_eq!(garbage.status(), 400);

    // Injected discovery errors answer the next calls with their code, then stop.
    feishu
        .fault(FaultCommand::DiscoveryErrors { code: 1, count: 2 })
        .unwrap();
    for _ in 0..2 {
        let busy = discover(&feishu).await;
        assert_eq!((busy.status, busy.code()), (200, 1));
        assert_eq!(busy.body["data"], json!({}));
    }
    assert_eq!(discover(&feishu).await.code(), 0);
    // Two wrong credentials, the form body and the two injected errors.
    assert_eq!(feishu.inspect(|w| w.stats().discoveries_refused), 5);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn tickets_are_single_use_and_refusals_carry_the_handshake_headers() {
    let feishu = start(|c| c.max_connections = 1).await;
    let answer = discover(&feishu).await;
    let url = answer.body["data"]["URL"].as_str().unwrap().to_owned();
    let _first = tokio_tungstenite::connect_async(&url)
        .await
        .expect("a fresh ticket is accepted");

    // A reused ticket: 514 with an auth code other than the connection limit (retryable).
    let reused = refused_upgrade(&url).await;
    assert_eq!(reused.status().as_u16(), 514);
    assert_eq!(header(&reused, "handshake-status").as_deref(), Some("514"));
    assert!(header(&reused, "handshake-msg").is_some());
    assert_eq!(header(&reused, "handshake-autherrcode").as_deref(), Some("1000040351"));

    // The app's connection limit: 514 + 1000040350 (fatal to the SDKs).
    let answer = discover(&feishu).await;
    let full = refused_upgrade(answer.body["data"]["URL"].as_str().unwrap()).await;
    assert_eq!(header(&full, "handshake-status").as_deref(), Some("514"));
    assert_eq!(header(&full, "handshake-autherrcode").as_deref(), Some("1000040350"));

    // An injected 403 refusal has no auth code.
    feishu
        .fault(FaultCommand::RefuseHandshakes {
            status: 403,
            auth_code: None,
            count: 1,
        })
        .unwrap();
    let answer = discover(&feishu).await;
    let forbidden = refused_upgrade(answer.body["data"]["URL"].as_str().unwrap()).await;
    assert_eq!(forbidden.status().as_u16(), 403);
    assert_eq!(header(&forbidden, "handshake-status").as_deref(), Some("403"));
    assert_eq!(header(&forbidden, "handshake-autherrcode"), None);
    assert_eq!(feishu.inspect(|w| w.stats().handshakes_refused), 3);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn pings_get_pongs_carrying_the_client_config() {
    let feishu = start(|c| c.client_config.ping_interval = 7).await;
    let mut conn = connect(&feishu).await;
    ping(&mut conn.ws, conn.service_id).await;
    let pong = next_frame(&mut conn.ws).await;
    assert_eq!(pong.method, METHOD_CONTROL);
    assert_eq!(pong.header("type"), Some("pong"));
    assert_eq!(pong.service, conn.service_id);
    let config: Value = serde_json::from_slice(pong.payload.as_deref().unwrap()).unwrap();
    assert_eq!(
        config,
        json!({"ReconnectCount": -1, "ReconnectInterval": 120, "ReconnectNonce": 30, "PingInterval": 7}),
        "all four fields: Python copies every one"
    );
    // A frame with another service id is still answered, and counted.
    ping(&mut conn.ws, conn.service_id.wrapping_add(1)).await;
    assert_eq!(next_frame(&mut conn.ws).await.header("type"), Some("pong"));
    let stats = feishu.inspect(|w| w.stats());
    assert_eq!((stats.pings, stats.pongs, stats.bad_service_frames), (2, 2, 1));
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_carry_the_documented_fields_and_are_pushed_again_until_answered() {
    let feishu = start(|c| {
        // Long enough for this test to answer the second push in time on a loaded machine.
        c.response_timeout = Duration::from_millis(1000);
        c.retry_intervals = vec![Duration::from_millis(50); 3];
    })
    .await;
    let mut conn = connect(&feishu).await;
    let posted = p2p(&feishu, "alice", "hello bot");
    let (frame, event) = next_event(&mut conn).await;
    assert_eq!(frame.service, conn.service_id);
    assert!(frame.seq_id > 0 && frame.log_id > 0 && frame.log_id < 1 << 53);
    assert_eq!(frame.header("type"), Some("event"));
    assert_eq!(frame.header("sum"), Some("1"));
    assert_eq!(frame.header("seq"), Some("0"));
    assert!(frame.header("message_id").is_some_and(|m| !m.is_empty()));
    assert!(frame.header("trace_id").is_some_and(|t| !t.is_empty()));
    assert_eq!(event["schema"], "2.0");
    assert_eq!(event["header"]["event_type"], "im.message.receive_v1");
    assert_eq!(event["header"]["event_id"], posted.event_id.as_str());
    assert_eq!(event["header"]["app_id"], DEFAULT_APP_ID);
    assert!(event["header"]["create_time"].is_string());
    let message = &event["event"]["message"];
    assert_eq!(message["message_id"], posted.message_id.as_str());
    assert_eq!(message["chat_id"], posted.chat_id.as_str());
    assert_eq!(message["chat_type"], "p2p");
    assert_eq!(message["message_type"], "text");
    assert_eq!(
        message["content"], r#"{"text":"hello bot"}"#,
        "content is a JSON string"
    );
    let sender = &event["event"]["sender"];
    assert_eq!(sender["sender_type"], "user");
    assert_eq!(sender["sender_id"]["user_id"], "alice");
    assert_eq!(sender["sender_id"]["open_id"], posted.open_id.as_str());
    assert!(sender["sender_id"]["union_id"].as_str().unwrap().starts_with("on_"));

    // No response: the same event again after the response timeout and the first retry interval.
    let (again, event_again) = next_event(&mut conn).await;
    assert_eq!(event_again, event);
    assert_ne!(again.header("message_id"), frame.header("message_id"));
    // A late answer to the first push changes nothing; the answer to the current one settles it.
    respond(&mut conn, &frame, 200).await;
    respond(&mut conn, &again, 200).await;
    feishu
        .wait_for(PATIENCE, |w| (w.stats().events_acked == 1).then_some(()))
        .await
        .unwrap();
    let stats = feishu.inspect(|w| w.stats());
    assert_eq!((stats.unacked, stats.redeliveries, stats.push_timeouts), (0, 1, 1));
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn failed_answers_are_retried_then_the_event_is_abandoned() {
    let feishu = start(|c| c.retry_intervals = vec![Duration::from_millis(20)]).await;
    let mut conn = connect(&feishu).await;
    p2p(&feishu, "bob", "will fail");
    let (first, _) = next_event(&mut conn).await;
    respond(&mut conn, &first, 500).await;
    let (second, _) = next_event(&mut conn).await;
    respond(&mut conn, &second, 500).await;
    feishu
        .wait_for(PATIENCE, |w| (w.stats().events_abandoned == 1).then_some(()))
        .await
        .unwrap();
    let stats = feishu.inspect(|w| w.stats());
    assert_eq!((stats.push_failures, stats.events_pushed, stats.unacked), (2, 2, 0));
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn cluster_mode_pushes_each_event_to_exactly_one_connection() {
    let feishu = start(|_| {}).await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    for index in 0..3 {
        let mut conn = connect(&feishu).await;
        let seen = seen_tx.clone();
        tokio::spawn(async move {
            loop {
                let (frame, event) = next_event(&mut conn).await;
                let id = event["header"]["event_id"].as_str().unwrap().to_owned();
                if seen.send((index, id)).is_err() {
                    return;
                }
                respond(&mut conn, &frame, 200).await;
            }
        });
    }
    feishu
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 3).then_some(()))
        .await
        .unwrap();
    let posted: HashSet<String> = (0..30)
        .map(|i| p2p(&feishu, &format!("user{i}"), "hi").event_id)
        .collect();
    feishu
        .wait_for(PATIENCE, |w| (w.stats().events_acked == 30).then_some(()))
        .await
        .unwrap();
    let mut received = Vec::new();
    while let Ok(seen) = seen_rx.try_recv() {
        received.push(seen);
    }
    assert_eq!(received.len(), 30, "every event exactly once: {received:?}");
    let ids: HashSet<String> = received.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, posted);
    let per_connection: HashMap<i32, usize> = received.iter().fold(HashMap::new(), |mut m, (c, _)| {
        *m.entry(*c).or_default() += 1;
        m
    });
    // Random choice: all 30 on one of three connections has probability 3^-29.
    assert!(per_connection.len() > 1, "{per_connection:?}");
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn group_messages_are_pushed_only_when_they_mention_the_bot() {
    let feishu = start(|_| {}).await;
    let mut conn = connect(&feishu).await;
    let quiet = feishu
        .post_message(UserMessage::group("oc_team", "carol", "just chatting", false))
        .unwrap();
    assert!(!quiet.pushed);
    let asked = feishu
        .post_message(UserMessage {
            chat_name: Some("Team".to_owned()),
            name: Some("Carol".to_owned()),
            ..UserMessage::group("oc_team", "carol", "what time is it?", true)
        })
        .unwrap();
    assert!(asked.pushed);
    let (frame, event) = next_event(&mut conn).await;
    let message = &event["event"]["message"];
    assert_eq!(
        message["message_id"],
        asked.message_id.as_str(),
        "the unmentioned one is not pushed"
    );
    assert_eq!(message["chat_type"], "group");
    assert_eq!(message["chat_id"], "oc_team");
    assert_eq!(message["content"], r#"{"text":"@_user_1 what time is it?"}"#);
    assert_eq!(message["mentions"][0]["key"], "@_user_1");
    assert_eq!(message["mentions"][0]["mentioned_type"], "bot");
    assert!(message["mentions"][0]["id"]["open_id"]
        .as_str()
        .unwrap()
        .starts_with("ou_"));
    respond(&mut conn, &frame, 200).await;
    let chat = feishu.inspect(|w| w.chat("oc_team").cloned()).unwrap();
    assert_eq!(chat.name, "Team");
    assert_eq!(chat.messages.len(), 2);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn large_events_arrive_in_fragments_sharing_one_message_id() {
    let feishu = start(|c| c.fragment_bytes = Some(100)).await;
    let mut conn = connect(&feishu).await;
    let posted = p2p(&feishu, "dave", &"long text ".repeat(30));
    let first = next_frame(&mut conn.ws).await;
    let sum: usize = first.header("sum").unwrap().parse().unwrap();
    assert!(sum > 1);
    let mut frames = vec![first];
    for _ in 1..sum {
        frames.push(next_frame(&mut conn.ws).await);
    }
    let mut payload = Vec::new();
    for (seq, frame) in frames.iter().enumerate() {
        assert_eq!(frame.header("seq"), Some(seq.to_string().as_str()));
        assert_eq!(frame.header("message_id"), frames[0].header("message_id"));
        payload.extend_from_slice(frame.payload.as_deref().unwrap());
    }
    let event: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(event["header"]["event_id"], posted.event_id.as_str());
    respond(&mut conn, frames.last().unwrap(), 200).await;
    feishu
        .wait_for(PATIENCE, |w| (w.stats().events_acked == 1).then_some(()))
        .await
        .unwrap();
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn zombies_answer_pings_but_their_events_vanish_until_a_healthy_connection_takes_them() {
    let feishu = start(|c| {
        c.response_timeout = Duration::from_millis(300);
        c.retry_intervals = vec![Duration::from_millis(20); 100];
    })
    .await;
    let mut zombie = connect(&feishu).await;
    assert_eq!(feishu.fault(FaultCommand::Zombie { connection: None }).unwrap(), 1);
    p2p(&feishu, "erin", "anyone?");
    feishu
        .wait_for(PATIENCE, |w| (w.stats().push_timeouts >= 1).then_some(()))
        .await
        .unwrap();
    // The zombie still answers pings, and nothing but the pong arrives there.
    ping(&mut zombie.ws, zombie.service_id).await;
    assert_eq!(next_frame(&mut zombie.ws).await.header("type"), Some("pong"));
    let mut healthy = connect(&feishu).await;
    let (frame, event) = next_event(&mut healthy).await;
    assert_eq!(event["event"]["sender"]["sender_id"]["user_id"], "erin");
    respond(&mut healthy, &frame, 200).await;
    feishu
        .wait_for(PATIENCE, |w| (w.stats().events_acked == 1).then_some(()))
        .await
        .unwrap();
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_connection_gets_pushes_only_while_it_is_the_only_one() {
    let feishu = start(|_| {}).await;
    let _silent = connect(&feishu).await;
    assert_eq!(feishu.fault(FaultCommand::Silence { connection: None }).unwrap(), 1);
    let mut healthy = connect(&feishu).await;
    for i in 0..5 {
        p2p(&feishu, &format!("u{i}"), "hello");
        let (frame, _) = next_event(&mut healthy).await;
        respond(&mut healthy, &frame, 200).await;
    }
    feishu
        .wait_for(PATIENCE, |w| (w.stats().events_acked == 5).then_some(()))
        .await
        .unwrap();
    assert_eq!(feishu.inspect(|w| w.stats().live_connections), 1);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn close_fault_closes_the_socket_and_duplicate_pushes_repeat_an_event() {
    let feishu = start(|_| {}).await;
    let mut conn: Conn = connect(&feishu).await;
    feishu.fault(FaultCommand::DuplicatePushes { fraction: 1.0 }).unwrap();
    let posted = p2p(&feishu, "frank", "twice");
    let (first, one) = next_event(&mut conn).await;
    let (second, two) = next_event(&mut conn).await;
    assert_eq!(one, two);
    assert_eq!(one["header"]["event_id"], posted.event_id.as_str());
    respond(&mut conn, &first, 200).await;
    respond(&mut conn, &second, 200).await;
    feishu
        .wait_for(PATIENCE, |w| (w.stats().events_acked == 1).then_some(()))
        .await
        .unwrap();
    assert_eq!(feishu.inspect(|w| w.stats().duplicate_pushes), 1);

    assert_eq!(feishu.fault(FaultCommand::Close { connection: None }).unwrap(), 1);
    loop {
        match tokio::time::timeout(PATIENCE, conn.ws.next())
            .await
            .expect("the server closes")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    feishu
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 0).then_some(()))
        .await
        .unwrap();
    feishu.shutdown().await.unwrap();
}

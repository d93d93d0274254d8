//! Tenant tokens, IM send and reply, the error envelope, scopes and per-API quotas.

use std::time::Duration;

use emulator::feishu::{
    ChatEntry, FaultCommand, UserMessage, DEFAULT_APP_ID, DEFAULT_APP_SECRET, SCOPE_IM_SEND, SCOPE_P2P_EVENTS,
};
use serde_json::json;

use super::{header, p2p, post, start, token};

fn token_url(base: &str) -> String {
    format!("{base}/open-apis/auth/v3/tenant_access_token/internal")
}

fn send_url(base: &str, id_type: &str) -> String {
    format!("{base}/open-apis/im/v1/messages?receive_id_type={id_type}")
}

fn text(body: &str) -> String {
    json!({ "text": body }).to_string()
}

#[tokio::test]
async fn tokens_are_reused_until_the_refresh_window_then_renewed_and_expire() {
    let feishu = start(|_| {}).await;
    let url = token_url(&feishu.base_url());
    let body = json!({"app_id": DEFAULT_APP_ID, "app_secret": DEFAULT_APP_SECRET});
    let first = post(&url, body.clone(), None).await;
    assert_eq!((first.status, first.code()), (200, 0), "{}", first.body);
    let token = first.body["tenant_access_token"].as_str().unwrap();
    assert!(token.starts_with("t-"));
    assert!((7199..=7200).contains(&first.body["expire"].as_u64().unwrap()));
    assert!(first.body.get("data").is_none(), "token fields are at the top level");
    let second = post(&url, body.clone(), None).await;
    assert_eq!(
        second.body["tenant_access_token"], token,
        "reused while more than 30 min are left"
    );
    let wrong = post(&url, json!({"app_id": DEFAULT_APP_ID, "app_secret": "nope"}), None).await;
    assert_eq!((wrong.status, wrong.code()), (400, 10_014));

    // Expired tokens are refused with 99991663 until a new one is fetched.
    let send = send_url(&feishu.base_url(), "chat_id");
    assert_eq!(feishu.fault(FaultCommand::ExpireTokens).unwrap(), 1);
    let refused = post(&send, json!({}), Some(token)).await;
    assert_eq!((refused.status, refused.code()), (400, 99_991_663), "{}", refused.body);
    assert!(header(&refused, "x-tt-logid").is_some());
    assert!(refused.body["error"]["log_id"].is_string());
    let fresh = post(&url, body, None).await;
    assert_ne!(fresh.body["tenant_access_token"], token);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn inside_the_refresh_window_a_new_token_is_issued_and_the_old_stays_valid_until_it_expires() {
    let feishu = start(|c| {
        c.token_ttl = Duration::from_millis(400);
        c.token_refresh_window = Duration::from_secs(3600);
        c.token_error_status = 401;
    })
    .await;
    let old = token(&feishu).await;
    let new = token(&feishu).await;
    assert_ne!(old, new);
    let user = p2p(&feishu, "alice", "hi");
    let send = send_url(&feishu.base_url(), "chat_id");
    let message = json!({"receive_id": user.chat_id, "msg_type": "text", "content": text("hello")});
    for token in [&old, &new] {
        assert_eq!(post(&send, message.clone(), Some(token)).await.code(), 0);
    }
    // The lifetime is the thing under test: let it pass.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let expired = post(&send, message, Some(&new)).await;
    assert_eq!((expired.status, expired.code()), (401, 99_991_663));
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_and_malformed_tokens_have_their_own_codes() {
    let feishu = start(|_| {}).await;
    let send = send_url(&feishu.base_url(), "chat_id");
    assert_eq!(post(&send, json!({}), None).await.code(), 99_991_661);
    assert_eq!(post(&send, json!({}), Some("abc")).await.code(), 99_991_671);
    assert_eq!(post(&send, json!({}), Some("t-unknown")).await.code(), 99_991_663);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_bot_sends_and_replies_and_a_uuid_sends_once() {
    let feishu = start(|_| {}).await;
    let token = token(&feishu).await;
    let asked = p2p(&feishu, "alice", "question");
    let base = feishu.base_url();

    let by_open_id = post(
        &send_url(&base, "open_id"),
        json!({"receive_id": asked.open_id, "msg_type": "text", "content": text("hello alice"), "uuid": "u-1"}),
        Some(&token),
    )
    .await;
    assert_eq!(by_open_id.code(), 0, "{}", by_open_id.body);
    let data = &by_open_id.body["data"];
    assert!(data["message_id"].as_str().unwrap().starts_with("om_"));
    assert_eq!(data["chat_id"], asked.chat_id.as_str());
    assert_eq!(data["msg_type"], "text");
    assert_eq!(data["body"]["content"], text("hello alice"));
    assert_eq!(data["sender"]["sender_type"], "app");
    assert_eq!(data["sender"]["id"], DEFAULT_APP_ID);
    assert!(data["create_time"].is_string());
    let again = post(
        &send_url(&base, "open_id"),
        json!({"receive_id": asked.open_id, "msg_type": "text", "content": text("hello alice"), "uuid": "u-1"}),
        Some(&token),
    )
    .await;
    assert_eq!(
        again.body["data"]["message_id"], data["message_id"],
        "same uuid: sent once"
    );

    let reply = post(
        &format!("{base}/open-apis/im/v1/messages/{}/reply", asked.message_id),
        json!({"msg_type": "text", "content": text("my answer")}),
        Some(&token),
    )
    .await;
    assert_eq!(reply.code(), 0, "{}", reply.body);
    assert_eq!(reply.body["data"]["parent_id"], asked.message_id.as_str());

    let chat = feishu.inspect(|w| w.chat(&asked.chat_id).cloned()).unwrap();
    let bot: Vec<(String, Option<String>)> = chat
        .messages
        .iter()
        .filter_map(|m| match m {
            ChatEntry::Bot { text, reply_to, .. } => Some((text.clone(), reply_to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        bot,
        [
            ("hello alice".to_owned(), None),
            ("my answer".to_owned(), Some(asked.message_id.clone()))
        ]
    );

    // Bad input gets the IM codes.
    let cases = [
        (
            send_url(&base, "chat_id"),
            json!({"receive_id": "oc_nope", "msg_type": "text", "content": text("x")}),
            230_034,
        ),
        (
            send_url(&base, "chat_id"),
            json!({"receive_id": asked.chat_id, "msg_type": "text", "content": "not json"}),
            230_001,
        ),
        (
            send_url(&base, "chat_id"),
            json!({"receive_id": asked.chat_id, "msg_type": "text", "content": text(&"x".repeat(160 * 1024))}),
            230_025,
        ),
        (
            send_url(&base, "email"),
            json!({"receive_id": "a@b.c", "msg_type": "text", "content": text("x")}),
            230_001,
        ),
        (
            format!("{base}/open-apis/im/v1/messages/om_nope/reply"),
            json!({"msg_type": "text", "content": text("x")}),
            230_001,
        ),
        (
            send_url(&base, "chat_id"),
            json!({"receive_id": asked.chat_id, "msg_type": "interactive",
            "content": json!({"type": "card", "data": {"card_id": "123"}}).to_string()}),
            230_099,
        ),
    ];
    for (url, body, code) in cases {
        let answer = post(&url, body, Some(&token)).await;
        assert_eq!((answer.status, answer.code()), (400, code), "{url}: {}", answer.body);
        assert!(answer.body["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revoked_scope_refuses_its_calls_with_99991672_and_stops_its_events() {
    let feishu = start(|_| {}).await;
    let token = token(&feishu).await;
    let asked = p2p(&feishu, "alice", "hi");
    let send = send_url(&feishu.base_url(), "chat_id");
    let message = json!({"receive_id": asked.chat_id, "msg_type": "text", "content": text("hello")});
    feishu
        .fault(FaultCommand::RevokeScope {
            scope: SCOPE_IM_SEND.to_owned(),
        })
        .unwrap();
    let refused = post(&send, message.clone(), Some(&token)).await;
    assert_eq!((refused.status, refused.code()), (400, 99_991_672));
    assert!(refused.body["msg"].as_str().unwrap().contains(SCOPE_IM_SEND));
    assert_eq!(
        refused.body["error"]["permission_violations"][0]["subject"],
        SCOPE_IM_SEND
    );
    feishu
        .fault(FaultCommand::GrantScope {
            scope: SCOPE_IM_SEND.to_owned(),
        })
        .unwrap();
    assert_eq!(post(&send, message, Some(&token)).await.code(), 0);

    feishu
        .fault(FaultCommand::RevokeScope {
            scope: SCOPE_P2P_EVENTS.to_owned(),
        })
        .unwrap();
    let unheard = feishu.post_message(UserMessage::p2p("alice", "hello?")).unwrap();
    assert!(!unheard.pushed);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_api_has_its_quota_with_429_and_the_rate_limit_headers() {
    let feishu = start(|c| {
        c.api_calls_per_window = 3;
        // Long enough that the burst below cannot straddle two windows on a slow machine.
        c.quota_window = Duration::from_secs(60);
    })
    .await;
    let token = token(&feishu).await;
    let asked = p2p(&feishu, "alice", "hi");
    let base = feishu.base_url();
    let send = send_url(&base, "chat_id");
    let message = json!({"receive_id": asked.chat_id, "msg_type": "text", "content": text("hello")});
    for _ in 0..3 {
        assert_eq!(post(&send, message.clone(), Some(&token)).await.code(), 0);
    }
    let limited = post(&send, message.clone(), Some(&token)).await;
    assert_eq!((limited.status, limited.code()), (429, 99_991_400), "{}", limited.body);
    assert_eq!(header(&limited, "x-ogw-ratelimit-limit"), Some("3"));
    let reset: u64 = header(&limited, "x-ogw-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
    // Another API has its own quota.
    let reply = post(
        &format!("{base}/open-apis/im/v1/messages/{}/reply", asked.message_id),
        json!({"msg_type": "text", "content": text("ok")}),
        Some(&token),
    )
    .await;
    assert_eq!(reply.code(), 0);
    assert_eq!(feishu.inspect(|w| w.stats().rate_limited), 1);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rate_limit_storm_refuses_its_fraction_of_calls() {
    let feishu = start(|_| {}).await;
    let token = token(&feishu).await;
    let asked = p2p(&feishu, "alice", "hi");
    let send = send_url(&feishu.base_url(), "chat_id");
    let message = json!({"receive_id": asked.chat_id, "msg_type": "text", "content": text("hello")});
    feishu.fault(FaultCommand::RateLimitStorm { fraction: 0.5 }).unwrap();
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(post(&send, message.clone(), Some(&token)).await.code());
    }
    assert_eq!(codes, [0, 99_991_400, 0, 99_991_400]);
    feishu.fault(FaultCommand::Clear).unwrap();
    assert_eq!(post(&send, message, Some(&token)).await.code(), 0);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_answers_are_delayed() {
    let feishu = start(|_| {}).await;
    feishu.fault(FaultCommand::Slow { millis: 300 }).unwrap();
    let started = std::time::Instant::now();
    token(&feishu).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    feishu.shutdown().await.unwrap();
}

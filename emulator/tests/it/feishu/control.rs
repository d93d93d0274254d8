//! The control surface over HTTP: the page, simulated users, faults, read-back and the change feed, with
//! clear errors for bad input.

use serde_json::{json, Value};

use super::{post, start};

#[tokio::test]
async fn the_control_api_posts_messages_injects_faults_and_feeds_changes() {
    let feishu = start(|_| {}).await;
    let base = feishu.base_url();

    let page = reqwest::get(format!("{base}/_emulator")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("Feishu emulator") && html.contains(r#"<script src="/_emulator/page.js">"#));
    assert!(html.contains(r#"<link rel="stylesheet" href="/_emulator/page.css">"#));
    let script = reqwest::get(format!("{base}/_emulator/page.js")).await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(script.text().await.unwrap().contains("async function follow(render)"));
    let css = reqwest::get(format!("{base}/_emulator/page.css")).await.unwrap();
    assert!(css.headers()["content-type"].to_str().unwrap().starts_with("text/css"));
    assert!(css.text().await.unwrap().contains(".msgs"));

    let state: Value = reqwest::get(format!("{base}/_emulator/api/state"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let version = state["version"].as_u64().unwrap();
    assert_eq!(state["appId"], feishu.config().app_id.as_str());
    // The change feed answers once something changes: here, the message posted beside the wait.
    let wait = reqwest::get(format!("{base}/_emulator/api/wait?after={version}&timeout_ms=30000"));
    let messages = format!("{base}/_emulator/api/messages");
    let posting = post(
        &messages,
        json!({"chatType": "group", "chatId": "oc_ops", "chatName": "Ops", "userId": "ivy", "text": "@bot hi", "mentionBot": true}),
        None,
    );
    let (waited, posted) = tokio::join!(wait, posting);
    let waited: Value = waited.unwrap().json().await.unwrap();
    assert!(waited["version"].as_u64().unwrap() > version);
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_eq!(posted.body["chatId"], "oc_ops");
    assert_eq!(posted.body["pushed"], true);
    assert!(posted.body["messageId"].as_str().unwrap().starts_with("om_"));

    let chat: Value = reqwest::get(format!("{base}/_emulator/api/chats/oc_ops"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chat["name"], "Ops");
    assert_eq!(chat["messages"][0]["kind"], "user");
    assert_eq!(chat["messages"][0]["mentionsBot"], true);

    let fault = post(
        &format!("{base}/_emulator/api/faults"),
        json!({"kind": "revoke_scope", "scope": "cardkit:card:write"}),
        None,
    )
    .await;
    assert_eq!((fault.status, fault.body["affected"].as_u64()), (200, Some(1)));

    // Bad input: a clear error, never a panic.
    for (path, body, status) in [
        (
            "messages",
            json!({"chatType": "group", "userId": "ivy", "text": "x"}),
            400,
        ),
        ("messages", json!({"chatType": "p2p", "userId": "ivy", "text": ""}), 400),
        (
            "messages",
            json!({"chatType": "channel", "userId": "ivy", "text": "x"}),
            422,
        ),
        ("faults", json!({"kind": "rate_limit_storm", "fraction": 2.0}), 400),
        (
            "faults",
            json!({"kind": "refuse_handshakes", "status": 500, "count": 1}),
            400,
        ),
        (
            "faults",
            json!({"kind": "discovery_errors", "code": 0, "count": 1}),
            400,
        ),
        ("faults", json!({"kind": "flood"}), 422),
    ] {
        let answer = post(&format!("{base}/_emulator/api/{path}"), body.clone(), None).await;
        assert_eq!(answer.status, status, "{path} {body}: {}", answer.body);
        if status == 400 {
            assert!(
                answer.body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{}",
                answer.body
            );
        }
    }
    for path in ["chats/oc_nowhere", "cards/123"] {
        let missing = reqwest::get(format!("{base}/_emulator/api/{path}")).await.unwrap();
        assert_eq!(missing.status(), 404, "{path}");
    }
    feishu.shutdown().await.unwrap();
}

//! CardKit card entities: create, send once, stream element content under the sequence rule and uuid
//! idempotency, settings, the per-card quota, streaming auto-close, and read-back with history.

use std::time::Duration;

use emulator::feishu::{FaultCommand, FeishuEmulator, UuidReplay, SCOPE_CARDKIT};
use reqwest::Method;
use serde_json::{json, Value};

use super::{call, header, p2p, post, start, token, Reply};
use crate::PATIENCE;

/// A streaming card with one markdown element `answer` and one button.
fn streaming_card() -> String {
    json!({
        "schema": "2.0",
        "config": {"update_multi": true, "streaming_mode": true, "summary": {"content": "thinking"}},
        "body": {"elements": [
            {"tag": "markdown", "content": "…", "element_id": "answer"},
            {"tag": "button", "text": {"tag": "plain_text", "content": "Stop"}, "element_id": "stop"},
        ]},
    })
    .to_string()
}

async fn create(feishu: &FeishuEmulator, token: &str, data: &str) -> Reply {
    post(
        &format!("{}/open-apis/cardkit/v1/cards", feishu.base_url()),
        json!({"type": "card_json", "data": data}),
        Some(token),
    )
    .await
}

async fn new_card(feishu: &FeishuEmulator, token: &str) -> String {
    let created = create(feishu, token, &streaming_card()).await;
    assert_eq!(created.code(), 0, "{}", created.body);
    created.body["data"]["card_id"].as_str().unwrap().to_owned()
}

async fn content(feishu: &FeishuEmulator, token: &str, card: &str, element: &str, body: Value) -> Reply {
    call(
        Method::PUT,
        &format!(
            "{}/open-apis/cardkit/v1/cards/{card}/elements/{element}/content",
            feishu.base_url()
        ),
        body,
        Some(token),
    )
    .await
}

async fn settings(feishu: &FeishuEmulator, token: &str, card: &str, streaming: bool, sequence: i64) -> Reply {
    call(
        Method::PATCH,
        &format!("{}/open-apis/cardkit/v1/cards/{card}/settings", feishu.base_url()),
        json!({
            "settings": json!({"config": {"streaming_mode": streaming, "summary": {"content": "done"}}}).to_string(),
            "sequence": sequence,
        }),
        Some(token),
    )
    .await
}

#[tokio::test]
async fn a_card_is_created_sent_once_streamed_and_settled_with_its_history() {
    let feishu = start(|_| {}).await;
    let token = token(&feishu).await;
    let asked = p2p(&feishu, "alice", "explain");
    let card_id = new_card(&feishu, &token).await;
    assert_eq!(card_id.len(), 19);
    let reply_url = format!(
        "{}/open-apis/im/v1/messages/{}/reply",
        feishu.base_url(),
        asked.message_id
    );
    let card_message = json!({"msg_type": "interactive",
        "content": json!({"type": "card", "data": {"card_id": card_id}}).to_string()});
    let sent = post(&reply_url, card_message.clone(), Some(&token)).await;
    assert_eq!(sent.code(), 0, "{}", sent.body);
    let again = post(&reply_url, card_message, Some(&token)).await;
    assert_eq!(again.code(), 230_099, "a card entity is sent once: {}", again.body);

    for (sequence, text) in [(1, "Rust"), (2, "Rust is"), (3, "Rust is fast."), (4, "Totally new")] {
        let answer = content(
            &feishu,
            &token,
            &card_id,
            "answer",
            json!({"content": text, "sequence": sequence, "uuid": format!("c-{sequence}")}),
        )
        .await;
        assert_eq!((answer.status, answer.code()), (200, 0), "{}", answer.body);
        assert_eq!(answer.body["data"], json!({}));
    }
    assert_eq!(settings(&feishu, &token, &card_id, false, 5).await.code(), 0);

    let card = feishu.inspect(|w| w.card(&card_id).cloned()).unwrap();
    assert_eq!(card.text, "Totally new");
    assert!(!card.streaming_mode);
    assert_eq!(card.summary.as_deref(), Some("done"));
    assert_eq!(card.sequence, 5);
    assert_eq!(card.message_id.as_deref(), sent.body["data"]["message_id"].as_str());
    assert_eq!(card.chat_id.as_deref(), Some(asked.chat_id.as_str()));
    assert_eq!(
        card.content_history("answer"),
        ["Rust", "Rust is", "Rust is fast.", "Totally new"]
    );
    let apis: Vec<&str> = card.history.iter().map(|op| op.api.as_str()).collect();
    assert_eq!(
        apis,
        ["create", "send", "content", "content", "content", "content", "settings"]
    );
    let appended: Vec<Option<bool>> = card
        .history
        .iter()
        .filter(|o| o.api == "content")
        .map(|o| o.appended)
        .collect();
    assert_eq!(appended, [Some(false), Some(true), Some(true), Some(false)]);
    // The chat shows the card, and the control API reads it back.
    let cards = feishu.inspect(|w| w.cards_in(&asked.chat_id));
    assert_eq!(cards.len(), 1);
    let read_back: Value = reqwest::get(format!("{}/_emulator/api/cards/{card_id}", feishu.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read_back["text"], "Totally new");
    assert_eq!(read_back["history"].as_array().unwrap().len(), 7);
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn sequence_must_strictly_increase_across_every_card_api() {
    let feishu = start(|_| {}).await;
    let token = token(&feishu).await;
    let card_id = new_card(&feishu, &token).await;
    let code = |reply: Reply| reply.code();
    assert_eq!(
        code(
            content(
                &feishu,
                &token,
                &card_id,
                "answer",
                json!({"content": "a", "sequence": 1})
            )
            .await
        ),
        0
    );
    let repeated = content(
        &feishu,
        &token,
        &card_id,
        "answer",
        json!({"content": "ab", "sequence": 1}),
    )
    .await;
    assert_eq!((repeated.status, repeated.code()), (400, 300_317), "{}", repeated.body);
    assert_eq!(
        code(
            content(
                &feishu,
                &token,
                &card_id,
                "answer",
                json!({"content": "ab", "sequence": 0})
            )
            .await
        ),
        10_002
    );
    assert_eq!(
        code(content(&feishu, &token, &card_id, "answer", json!({"content": "ab"})).await),
        10_002
    );
    assert_eq!(
        code(
            content(
                &feishu,
                &token,
                &card_id,
                "answer",
                json!({"content": "ab", "sequence": 5})
            )
            .await
        ),
        0
    );
    // The counter is shared by all the card's APIs.
    assert_eq!(code(settings(&feishu, &token, &card_id, true, 4).await), 300_317);
    assert_eq!(code(settings(&feishu, &token, &card_id, true, 6).await), 0);
    let card = feishu.inspect(|w| w.card(&card_id).cloned()).unwrap();
    assert_eq!((card.sequence, card.text.as_str(), card.rejected_calls), (6, "ab", 4));
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_uuid_applies_its_operation_once() {
    let feishu = start(|_| {}).await;
    let token = token(&feishu).await;
    let card_id = new_card(&feishu, &token).await;
    let first = json!({"content": "hello", "sequence": 1, "uuid": "op-1"});
    assert_eq!(
        content(&feishu, &token, &card_id, "answer", first.clone()).await.code(),
        0
    );
    // The identical retry (same sequence) succeeds and is not applied again.
    assert_eq!(content(&feishu, &token, &card_id, "answer", first).await.code(), 0);
    assert_eq!(
        feishu.inspect(|w| w.card(&card_id).unwrap().content_history("answer").len()),
        1
    );
    // The same uuid on another request is a conflict.
    let conflict = content(
        &feishu,
        &token,
        &card_id,
        "answer",
        json!({"content": "hello world", "sequence": 2, "uuid": "op-1"}),
    )
    .await;
    assert_eq!(conflict.code(), 200_770, "{}", conflict.body);
    feishu.shutdown().await.unwrap();

    // The other reading of the reference: any reuse is a conflict.
    let strict = start(|c| c.uuid_replay = UuidReplay::Conflict).await;
    let token = super::token(&strict).await;
    let card_id = new_card(&strict, &token).await;
    let body = json!({"content": "hello", "sequence": 1, "uuid": "op-1"});
    assert_eq!(
        content(&strict, &token, &card_id, "answer", body.clone()).await.code(),
        0
    );
    assert_eq!(content(&strict, &token, &card_id, "answer", body).await.code(), 200_770);
    strict.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_card_takes_ten_operations_per_window() {
    let feishu = start(|c| {
        // Long enough that the burst below cannot straddle two windows on a slow machine.
        c.quota_window = Duration::from_secs(60);
        c.api_calls_per_window = 0;
    })
    .await;
    let token = token(&feishu).await;
    let busy = new_card(&feishu, &token).await;
    let other = new_card(&feishu, &token).await;
    for sequence in 1..=10 {
        let body = json!({"content": format!("step {sequence}"), "sequence": sequence});
        assert_eq!(content(&feishu, &token, &busy, "answer", body).await.code(), 0);
    }
    let limited = content(
        &feishu,
        &token,
        &busy,
        "answer",
        json!({"content": "step 11", "sequence": 11}),
    )
    .await;
    assert_eq!((limited.status, limited.code()), (429, 99_991_400), "{}", limited.body);
    assert_eq!(header(&limited, "x-ogw-ratelimit-limit"), Some("10"));
    assert!(header(&limited, "x-ogw-ratelimit-reset").is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    // The quota is per card: another card is unaffected.
    let body = json!({"content": "fine", "sequence": 1});
    assert_eq!(content(&feishu, &token, &other, "answer", body).await.code(), 0);
    let card = feishu.inspect(|w| w.card(&busy).cloned()).unwrap();
    assert_eq!((card.sequence, card.rejected_calls), (10, 1));
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn streaming_mode_closes_after_its_window_and_can_be_turned_on_again() {
    let feishu = start(|c| c.streaming_window = Duration::from_millis(300)).await;
    let token = token(&feishu).await;
    let card_id = new_card(&feishu, &token).await;
    assert_eq!(
        content(
            &feishu,
            &token,
            &card_id,
            "answer",
            json!({"content": "early", "sequence": 1})
        )
        .await
        .code(),
        0
    );
    // The platform's clock closes streaming mode; await that change instead of sleeping.
    feishu
        .wait_for(PATIENCE, |w| w.card(&card_id).filter(|c| !c.streaming_mode).map(|_| ()))
        .await
        .unwrap();
    let card = feishu.inspect(|w| w.card(&card_id).cloned()).unwrap();
    assert_eq!(card.history.last().unwrap().api, "auto_close");
    let late = content(
        &feishu,
        &token,
        &card_id,
        "answer",
        json!({"content": "late", "sequence": 2}),
    )
    .await;
    assert_eq!((late.status, late.code()), (400, 300_309), "{}", late.body);
    assert_eq!(settings(&feishu, &token, &card_id, true, 3).await.code(), 0);
    assert_eq!(
        content(
            &feishu,
            &token,
            &card_id,
            "answer",
            json!({"content": "late", "sequence": 4})
        )
        .await
        .code(),
        0
    );
    feishu.shutdown().await.unwrap();

    let other = start(|c| {
        c.streaming_window = Duration::from_millis(100);
        c.streaming_closed_code = 200_850;
    })
    .await;
    let token = super::token(&other).await;
    let card_id = new_card(&other, &token).await;
    other
        .wait_for(PATIENCE, |w| w.card(&card_id).filter(|c| !c.streaming_mode).map(|_| ()))
        .await
        .unwrap();
    let late = content(
        &other,
        &token,
        &card_id,
        "answer",
        json!({"content": "late", "sequence": 1}),
    )
    .await;
    assert_eq!(late.code(), 200_850);
    other.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_cards_and_bad_operations_get_their_codes() {
    let feishu = start(|_| {}).await;
    let token = token(&feishu).await;
    let v1 = json!({"config": {}, "elements": []}).to_string();
    let duplicate = json!({"schema": "2.0", "body": {"elements": [
        {"tag": "markdown", "content": "a", "element_id": "x"},
        {"tag": "markdown", "content": "b", "element_id": "x"},
    ]}})
    .to_string();
    let bad_id =
        json!({"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": "a", "element_id": "1x"}]}})
            .to_string();
    let many: Vec<Value> = (0..201).map(|_| json!({"tag": "markdown", "content": "a"})).collect();
    let too_many = json!({"schema": "2.0", "body": {"elements": many}}).to_string();
    for (data, code) in [
        ("", 300_307),
        ("{not json", 200_220),
        (v1.as_str(), 300_303),
        (duplicate.as_str(), 300_301),
        (bad_id.as_str(), 10_002),
        (too_many.as_str(), 300_305),
    ] {
        let answer = create(&feishu, &token, data).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, code),
            "{data:.60}: {}",
            answer.body
        );
    }
    let card_id = new_card(&feishu, &token).await;
    let cases = [
        ("answer", json!({"content": "", "sequence": 1}), 10_002),
        ("stop", json!({"content": "x", "sequence": 1}), 300_310),
        ("nowhere", json!({"content": "x", "sequence": 1}), 10_002),
    ];
    for (element, body, code) in cases {
        assert_eq!(
            content(&feishu, &token, &card_id, element, body).await.code(),
            code,
            "{element}"
        );
    }
    let missing = content(
        &feishu,
        &token,
        "7000000000000000000",
        "answer",
        json!({"content": "x", "sequence": 1}),
    )
    .await;
    assert_eq!(missing.code(), 200_740);
    // A card created without streaming mode cannot be streamed until settings turn it on.
    let calm = json!({"schema": "2.0", "config": {"update_multi": true},
        "body": {"elements": [{"tag": "markdown", "content": "a", "element_id": "md"}]}})
    .to_string();
    let calm_id = create(&feishu, &token, &calm).await.body["data"]["card_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        content(&feishu, &token, &calm_id, "md", json!({"content": "x", "sequence": 1}))
            .await
            .code(),
        300_309
    );

    feishu
        .fault(FaultCommand::RevokeScope {
            scope: SCOPE_CARDKIT.to_owned(),
        })
        .unwrap();
    let refused = create(&feishu, &token, &streaming_card()).await;
    assert_eq!((refused.status, refused.code()), (400, 99_991_672));
    feishu.shutdown().await.unwrap();
}

#[tokio::test]
async fn full_update_and_element_delete_follow_the_same_rules() {
    let feishu = start(|_| {}).await;
    let token = token(&feishu).await;
    let card_id = new_card(&feishu, &token).await;
    let url = format!("{}/open-apis/cardkit/v1/cards/{card_id}", feishu.base_url());
    let replacement = json!({"schema": "2.0", "config": {"streaming_mode": false},
        "body": {"elements": [{"tag": "markdown", "content": "final", "element_id": "answer"},
                              {"tag": "markdown", "content": "note", "element_id": "note"}]}})
    .to_string();
    let updated = call(
        Method::PUT,
        &url,
        json!({"card": {"type": "card_json", "data": replacement}, "sequence": 1, "uuid": "full-1"}),
        Some(&token),
    )
    .await;
    assert_eq!(updated.code(), 0, "{}", updated.body);
    let deleted = call(
        Method::DELETE,
        &format!("{url}/elements/note"),
        json!({"sequence": 1}),
        Some(&token),
    )
    .await;
    assert_eq!(deleted.code(), 300_317);
    let deleted = call(
        Method::DELETE,
        &format!("{url}/elements/note"),
        json!({"sequence": 2}),
        Some(&token),
    )
    .await;
    assert_eq!(deleted.code(), 0, "{}", deleted.body);
    let card = feishu.inspect(|w| w.card(&card_id).cloned()).unwrap();
    assert_eq!(card.text, "final");
    assert!(!card.streaming_mode);
    assert!(card.element("note").is_none());
    feishu.shutdown().await.unwrap();
}

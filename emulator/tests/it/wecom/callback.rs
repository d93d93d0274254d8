//! URL mode: the verification GET, encrypted and signed pushes, verified passive replies, stream refresh
//! callbacks until finish, redelivery with the same msgid, and `response_url`s.

use emulator::wecom::crypto::MsgCrypt;
use emulator::wecom::{EmulatorError, MessageState, StreamStatus, Via};
use serde_json::{json, Value};

use super::{next_callback, robot, seal, single, start, stream_body, until, Answer};

#[tokio::test]
async fn the_callback_url_must_echo_the_decrypted_echostr() {
    let wecom = start(|_| {}).await;
    let (url, mut calls) = robot(wecom.config()).await;
    // A robot that answers with the plaintext in quotes fails; the exact plaintext passes.
    for quoted in [true, false] {
        let set = tokio::spawn({
            let url = url.clone();
            let wecom_url = wecom.base_url();
            async move {
                reqwest::Client::new()
                    .post(format!("{wecom_url}/_emulator/api/callback"))
                    .json(&json!({ "url": url }))
                    .send()
                    .await
                    .unwrap()
            }
        });
        let call = next_callback(&mut calls).await;
        assert_eq!(call.method, "GET");
        let plain = call.body.as_str().unwrap().to_owned();
        assert!(!plain.is_empty());
        let answer = if quoted { format!("\"{plain}\"") } else { plain };
        let _ = call.answer.send(Answer::Raw(answer));
        let response = set.await.unwrap();
        assert_eq!(response.status().is_success(), !quoted, "{:?}", response.text().await);
    }
    assert_eq!(wecom.inspect(|w| w.callback_url().map(str::to_owned)), Some(url));
    let stats = wecom.inspect(|w| w.stats());
    assert_eq!((stats.verifications_failed, stats.verifications_ok), (1, 1));
    // An unreachable URL fails verification with a clear error.
    match wecom.set_callback_url(Some("http://127.0.0.1:9/hook".to_owned())).await {
        Err(EmulatorError::Verification { .. }) => {}
        other => panic!("expected a verification error, got {other:?}"),
    }
    wecom.shutdown().await.unwrap();
}

/// An emulator in URL mode at a robot of this test.
async fn url_mode(
    tweak: impl FnOnce(&mut emulator::wecom::EmulatorConfig),
) -> (
    emulator::wecom::WeComEmulator,
    tokio::sync::mpsc::Receiver<super::Callback>,
) {
    let mut probe = emulator::wecom::EmulatorConfig::default();
    tweak(&mut probe);
    let (url, calls) = robot(&probe).await;
    let wecom = start(move |c| {
        *c = probe;
        c.callback_url = Some(url);
    })
    .await;
    (wecom, calls)
}

#[tokio::test]
async fn pushes_are_encrypted_and_streams_are_refreshed_until_finish() {
    let (wecom, mut calls) = url_mode(|c| c.refresh_interval = std::time::Duration::from_millis(20)).await;
    let posted = single(&wecom, "alice", "hello over http");
    let push = next_callback(&mut calls).await;
    assert_eq!(push.method, "POST");
    assert_eq!(push.body["msgid"], posted.msgid.as_str());
    assert_eq!(push.body["msgtype"], "text");
    assert_eq!(push.body["text"]["content"], "hello over http");
    assert_eq!(push.body["from"]["userid"], "alice");
    assert_eq!(push.body["response_url"], posted.response_url.as_str());
    let _ = push
        .answer
        .send(Answer::Reply(stream_body("url-stream", "<think></think>", false)));
    // The platform drives refreshes by stream.id; each answer is the full snapshot.
    let snapshots = ["Hel", "Hello", "Hello, alice"];
    for (n, content) in snapshots.iter().enumerate() {
        let refresh = next_callback(&mut calls).await;
        assert_eq!(refresh.body["msgtype"], "stream", "{}", refresh.body);
        assert_eq!(refresh.body["stream"]["id"], "url-stream");
        assert_eq!(refresh.body["from"]["userid"], "alice");
        assert_ne!(
            refresh.body["msgid"],
            posted.msgid.as_str(),
            "a refresh is a callback of its own"
        );
        let finish = n == snapshots.len() - 1;
        let _ = refresh
            .answer
            .send(Answer::Reply(stream_body("url-stream", content, finish)));
    }
    let stream = until(&wecom, |w| w.stream("url-stream").filter(|s| s.finish).cloned()).await;
    assert_eq!(stream.content, "Hello, alice");
    assert_eq!(stream.status, StreamStatus::Finished);
    assert_eq!(stream.refreshes, 3);
    let vias: Vec<Via> = stream.updates.iter().map(|u| u.via).collect();
    assert_eq!(
        vias,
        [
            Via::PassiveReply,
            Via::RefreshReply,
            Via::RefreshReply,
            Via::RefreshReply
        ]
    );
    assert_eq!(
        wecom.inspect(|w| w.message(&posted.msgid).unwrap().state),
        MessageState::Answered
    );
    // No refresh after finish: the next callback the robot sees is the next message.
    let next = single(&wecom, "alice", "second");
    let push = next_callback(&mut calls).await;
    assert_eq!(push.body["msgid"], next.msgid.as_str());
    let _ = push.answer.send(Answer::Empty);
    until(&wecom, |w| {
        (w.message(&next.msgid)?.state == MessageState::NoReply).then_some(())
    })
    .await;
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn passive_replies_are_verified() {
    let (wecom, mut calls) = url_mode(|_| {}).await;
    let crypt = MsgCrypt::new(&wecom.config().token, &wecom.config().encoding_aes_key).unwrap();
    let wrong_token = MsgCrypt::new("not-the-token", &wecom.config().encoding_aes_key).unwrap();
    let reply = stream_body("s", "hi", true);
    let cases: Vec<(String, i64)> = vec![
        (seal(&wrong_token, &reply, "n1"), -40001),
        (seal_for(&crypt, &reply, "n1", "wwcorp"), -40005),
        ("{\"encrypt\": 1}".to_owned(), -40002),
        ("not json at all".to_owned(), -40002),
    ];
    for (answer, code) in cases {
        let posted = single(&wecom, "alice", "check me");
        let push = next_callback(&mut calls).await;
        let _ = push.answer.send(Answer::Raw(answer));
        let errors = until(&wecom, |w| {
            let m = w.message(&posted.msgid)?;
            (!m.errors.is_empty()).then(|| m.errors.clone())
        })
        .await;
        assert_eq!(errors[0].errcode, code, "{errors:?}");
        assert_eq!(errors[0].via, Via::PassiveReply);
        // Redelivered, then answered correctly, so the user's in-flight slots stay free.
        wecom.redeliver(&posted.msgid).unwrap();
        let again = next_callback(&mut calls).await;
        assert_eq!(
            again.body["msgid"],
            posted.msgid.as_str(),
            "redelivered with the same msgid"
        );
        let _ = again
            .answer
            .send(Answer::Raw(seal(&crypt, &reply_for(&posted.msgid), "n2")));
        until(&wecom, |w| {
            (w.message(&posted.msgid)?.state == MessageState::Answered).then_some(())
        })
        .await;
    }
    wecom.shutdown().await.unwrap();
}

/// A passive reply sealed with another receiveid than the robot's `""`.
fn seal_for(crypt: &MsgCrypt, reply: &Value, nonce: &str, receive_id: &str) -> String {
    let encrypt = crypt.encrypt(&reply.to_string(), receive_id).unwrap();
    json!({
        "encrypt": encrypt,
        "msgsignature": crypt.signature("1713000000", nonce, &encrypt),
        "timestamp": 1713000000,
        "nonce": nonce,
    })
    .to_string()
}

fn reply_for(msgid: &str) -> Value {
    stream_body(&format!("s-{msgid}"), "done", true)
}

#[tokio::test]
async fn a_response_url_takes_one_markdown_reply() {
    let wecom = start(|_| {}).await;
    let posted = single(&wecom, "alice", "answer me later");
    let markdown = |content: &str| json!({"msgtype": "markdown", "markdown": {"content": content}});
    let first = post_json(&posted.response_url, markdown("late **answer**")).await;
    assert_eq!(first, json!({"errcode": 0, "errmsg": "ok"}));
    let second = post_json(&posted.response_url, markdown("again")).await;
    assert_eq!(second["errcode"], 40058, "one use: {second}");
    let unknown = format!("{}/cgi-bin/aibot/response?response_code=nope", wecom.base_url());
    assert_eq!(post_json(&unknown, markdown("x")).await["errcode"], 40058);
    let (message, last) = wecom.inspect(|w| {
        (
            w.message(&posted.msgid).cloned().unwrap(),
            w.conversation("alice").unwrap().entries.last().cloned().unwrap(),
        )
    });
    assert_eq!(message.state, MessageState::Answered);
    let last = serde_json::to_value(last).unwrap();
    assert_eq!(last["via"], "response_url");
    assert_eq!(last["content"], "late **answer**");
    // An expired one is refused too.
    let other = single(&wecom, "bob", "and me");
    wecom.fault(emulator::wecom::FaultCommand::ExpireResponseUrls).unwrap();
    assert_eq!(post_json(&other.response_url, markdown("x")).await["errcode"], 40058);
    assert_eq!(wecom.inspect(|w| w.stats().response_urls_refused), 3);
    wecom.shutdown().await.unwrap();
}

/// POST JSON; the JSON answer.
async fn post_json(url: &str, body: Value) -> Value {
    let response = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    response.json().await.unwrap()
}

//! The long connection: subscribe, req_id echo, ping, takeover, pushes, streamed replies, expiry, limits,
//! proactive sends, redelivery, events and faults.

use std::time::Duration;

use emulator::wecom::{
    FaultCommand, InFlightOverflow, MessageState, StreamExpiry, StreamStatus, UserEvent, UserMessage, Via,
    DEFAULT_BOT_ID, DEFAULT_SECRET,
};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{ask, call, connect, next_push, open, respond, single, start, until, SHORT};
use crate::{next_frame, PATIENCE};

#[tokio::test]
async fn subscribe_checks_credentials_and_every_request_is_acked_with_its_req_id() {
    let wecom = start(|_| {}).await;
    let mut ws = open(&wecom).await;
    // Nothing but aibot_subscribe before it succeeded.
    let early = call(&mut ws, "ping", "ping_1713000000000_aaaaaaaa", Value::Null).await;
    assert_eq!(early["errcode"], 853000, "{early}");
    for (bot_id, secret) in [(DEFAULT_BOT_ID, "wrong"), ("other-bot", DEFAULT_SECRET), ("", "")] {
        let refused = call(
            &mut ws,
            "aibot_subscribe",
            "aibot_subscribe_1713000000000_bbbbbbbb",
            json!({"bot_id": bot_id, "secret": secret}),
        )
        .await;
        assert_eq!(refused["errcode"], 853000, "{bot_id}/{secret}: {refused}");
        assert!(refused["errmsg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let ok = call(
        &mut ws,
        "aibot_subscribe",
        "aibot_subscribe_1713000000000_cccccccc",
        json!({"bot_id": DEFAULT_BOT_ID, "secret": DEFAULT_SECRET, "scene": 1, "plug_version": "x"}),
    )
    .await;
    assert_eq!((ok["errcode"].clone(), ok["errmsg"].clone()), (json!(0), json!("ok")));
    for n in 0..3 {
        let req_id = format!("ping_1713000000{n:03}_dddddddd");
        let pong = call(&mut ws, "ping", &req_id, Value::Null).await;
        assert_eq!(pong["errcode"], 0);
    }
    // A request without a cmd or with an unknown one is refused, not ignored.
    let unknown = call(&mut ws, "aibot_fly", "fly_1", json!({})).await;
    assert_eq!(unknown["errcode"], 40058);
    ws.send(Message::Text("not json".into())).await.unwrap();
    let garbage = next_frame(&mut ws).await;
    assert_eq!(garbage["errcode"], 40058, "{garbage}");
    let stats = wecom.inspect(|w| w.stats());
    assert_eq!(
        (stats.subscribes_refused, stats.subscribes_ok, stats.pings_acked),
        (3, 1, 3)
    );
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_newer_connection_takes_the_robot_over_with_a_disconnected_event() {
    let wecom = start(|_| {}).await;
    let mut old = connect(&wecom).await;
    let mut new = connect(&wecom).await;
    let event = next_push(&mut old, "aibot_event_callback").await;
    assert_eq!(event["body"]["msgtype"], "event");
    assert_eq!(event["body"]["event"]["eventtype"], "disconnected_event");
    assert_eq!(event["body"]["aibotid"], DEFAULT_BOT_ID);
    // Then the server closes the old socket, with nothing after the event.
    loop {
        match tokio::time::timeout(PATIENCE, old.next())
            .await
            .expect("the old socket closes")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(Message::Text(text))) => panic!("a frame after the takeover: {text}"),
            Some(Ok(_)) => {}
        }
    }
    // Messages go to the newer connection.
    let posted = single(&wecom, "alice", "who is there?");
    let push = next_push(&mut new, "aibot_msg_callback").await;
    assert_eq!(push["body"]["msgid"], posted.msgid.as_str());
    until(&wecom, |w| (w.stats().live_connections == 1).then_some(())).await;
    assert_eq!(wecom.inspect(|w| w.stats().takeovers), 1);
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_is_pushed_and_a_streamed_reply_is_read_back_to_finish() {
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    let posted = single(&wecom, "alice", "hello robot");
    assert_eq!(posted.state, "queued");
    let push = next_push(&mut ws, "aibot_msg_callback").await;
    let body = &push["body"];
    assert_eq!(body["msgid"], posted.msgid.as_str());
    assert_eq!(body["aibotid"], DEFAULT_BOT_ID);
    assert_eq!(body["chattype"], "single");
    assert!(body.get("chatid").is_none(), "1:1 bodies carry no chatid: {body}");
    assert_eq!(body["from"]["userid"], "alice");
    assert_eq!(body["msgtype"], "text");
    assert_eq!(body["text"]["content"], "hello robot");
    assert!(body["create_time"].is_u64());
    assert_eq!(body["response_url"], posted.response_url.as_str());
    let req_id = push["headers"]["req_id"].as_str().unwrap().to_owned();

    let snapshots = ["<think></think>", "Hello", "Hello, alice!"];
    for (n, content) in snapshots.iter().enumerate() {
        let finish = n == snapshots.len() - 1;
        let ack = respond(&mut ws, &req_id, "stream-1", content, finish).await;
        assert_eq!(ack["errcode"], 0, "{ack}");
    }
    let (stream, message, conversation) = wecom.inspect(|w| {
        (
            w.stream("stream-1").cloned().unwrap(),
            w.message(&posted.msgid).cloned().unwrap(),
            w.conversation("alice").cloned().unwrap(),
        )
    });
    assert_eq!(stream.content, "Hello, alice!");
    assert!(stream.finish);
    assert_eq!(stream.status, StreamStatus::Finished);
    assert_eq!(stream.msgid, posted.msgid);
    let history: Vec<&str> = stream.updates.iter().map(|u| u.content.as_str()).collect();
    assert_eq!(history, snapshots);
    assert!(stream
        .updates
        .iter()
        .all(|u| u.errcode == 0 && u.via == Via::RespondMsg));
    assert_eq!(message.state, MessageState::Answered);
    assert_eq!(message.stream_ids, ["stream-1"]);
    let kinds: Vec<Value> = conversation
        .entries
        .iter()
        .map(|e| serde_json::to_value(e).unwrap()["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("user"), json!("stream")]);
    // The same read-back over the control API.
    let read: Value = reqwest::get(format!("{}/_emulator/api/streams/stream-1", wecom.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["content"], "Hello, alice!");
    assert_eq!(read["updates"].as_array().unwrap().len(), 3);
    // A finished stream takes no more updates.
    let late = respond(&mut ws, &req_id, "stream-1", "again", true).await;
    assert_eq!(late["errcode"], 846608);
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn group_messages_carry_the_chatid_and_the_mention_and_only_mentions_are_pushed() {
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    let quiet = wecom
        .post_message(UserMessage {
            at_bot: false,
            ..UserMessage::group("wrTeam", "bob", "just chatting")
        })
        .unwrap();
    assert_eq!(quiet.state, "not_for_robot");
    let asked = wecom
        .post_message(UserMessage::group("wrTeam", "bob", "what time is it?"))
        .unwrap();
    let push = next_push(&mut ws, "aibot_msg_callback").await;
    assert_eq!(
        push["body"]["msgid"],
        asked.msgid.as_str(),
        "the unmentioned message is not pushed"
    );
    assert_eq!(push["body"]["chattype"], "group");
    assert_eq!(push["body"]["chatid"], "wrTeam");
    assert_eq!(push["body"]["text"]["content"], "@hearth what time is it?");
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn replies_to_an_unknown_req_id_get_846605() {
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    let ack = respond(&mut ws, "aibot_msg_callback_never_sent", "s", "hi", true).await;
    assert_eq!(ack["errcode"], 846605, "{ack}");
    assert_eq!(wecom.inspect(|w| w.stats().unknown_req_ids), 1);
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_expired_stream_refuses_updates_with_846608_in_both_readings() {
    // Absolute: the stream dies with its message's lifetime. A second message posted at the same time and
    // never answered is the clock: once it has expired, so has the first one's stream.
    let wecom = start(|c| c.stream_ttl = SHORT).await;
    let mut ws = connect(&wecom).await;
    let (_, req_id) = ask(&wecom, &mut ws, "alice", "first").await;
    let (clock, _) = ask(&wecom, &mut ws, "bob", "clock").await;
    assert_eq!(respond(&mut ws, &req_id, "s-abs", "partial", false).await["errcode"], 0);
    until(&wecom, |w| {
        (w.message(&clock.msgid)?.state == MessageState::Expired).then_some(())
    })
    .await;
    assert_eq!(
        wecom.inspect(|w| w.stream("s-abs").unwrap().status),
        StreamStatus::Expired
    );
    let ack = respond(&mut ws, &req_id, "s-abs", "partial and more", true).await;
    assert_eq!(ack["errcode"], 846608, "{ack}");
    let stream = wecom.inspect(|w| w.stream("s-abs").cloned().unwrap());
    assert_eq!(stream.content, "partial", "the refused snapshot is not shown");
    assert_eq!(stream.updates.back().unwrap().errcode, 846608);
    wecom.shutdown().await.unwrap();

    // Inactivity: updates more often than the lifetime keep the stream open past it; silence ends it.
    let ttl = Duration::from_millis(1500);
    let wecom = start(|c| {
        c.stream_ttl = ttl;
        c.stream_expiry = StreamExpiry::Inactivity;
    })
    .await;
    let mut ws = connect(&wecom).await;
    let (_, req_id) = ask(&wecom, &mut ws, "alice", "first").await;
    let (clock, _) = ask(&wecom, &mut ws, "bob", "clock").await;
    let mut keep_alive = tokio::time::interval(ttl / 10);
    let mut n = 0;
    loop {
        keep_alive.tick().await;
        n += 1;
        let ack = respond(&mut ws, &req_id, "s-idle", &format!("snapshot {n}"), false).await;
        assert_eq!(ack["errcode"], 0, "update {n} of a live stream: {ack}");
        if wecom.inspect(|w| w.message(&clock.msgid).unwrap().state == MessageState::Expired) {
            break;
        }
    }
    assert_eq!(
        wecom.inspect(|w| w.stream("s-idle").unwrap().status),
        StreamStatus::Open
    );
    until(&wecom, |w| {
        (w.stream("s-idle")?.status == StreamStatus::Expired).then_some(())
    })
    .await;
    let ack = respond(&mut ws, &req_id, "s-idle", "too late", true).await;
    assert_eq!(ack["errcode"], 846608, "{ack}");
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_updates_may_be_acknowledged_and_dropped_instead() {
    let wecom = start(|c| {
        c.stream_ttl = SHORT;
        c.refuse_expired_updates = false;
    })
    .await;
    let mut ws = connect(&wecom).await;
    let (_, req_id) = ask(&wecom, &mut ws, "alice", "first").await;
    assert_eq!(respond(&mut ws, &req_id, "s", "partial", false).await["errcode"], 0);
    until(&wecom, |w| {
        (w.stream("s")?.status == StreamStatus::Expired).then_some(())
    })
    .await;
    assert_eq!(respond(&mut ws, &req_id, "s", "final", true).await["errcode"], 0);
    let stream = wecom.inspect(|w| w.stream("s").cloned().unwrap());
    assert_eq!(stream.content, "partial", "acknowledged but dropped");
    assert!(!stream.finish);
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn snapshots_over_20480_bytes_are_refused() {
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    let (_, req_id) = ask(&wecom, &mut ws, "alice", "write a lot").await;
    // Bytes, not characters: 6 827 three-byte characters are 20 481 bytes.
    let over = "你".repeat(6827);
    assert_eq!(over.len(), 20_481);
    let ack = respond(&mut ws, &req_id, "big", &over, false).await;
    assert_eq!(ack["errcode"], 40058, "{ack}");
    let at_limit = format!("{}ab", "你".repeat(6826));
    assert_eq!(at_limit.len(), 20_480);
    assert_eq!(respond(&mut ws, &req_id, "big", &at_limit, false).await["errcode"], 0);
    let ack = respond(&mut ws, &req_id, "big", &format!("{at_limit}!"), true).await;
    assert_eq!(ack["errcode"], 40058);
    let stream = wecom.inspect(|w| w.stream("big").cloned().unwrap());
    assert_eq!(stream.content, at_limit);
    assert_eq!(
        stream.updates.iter().map(|u| u.errcode).collect::<Vec<_>>(),
        [0, 40058],
        "the refused first snapshot opened no stream"
    );
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_user_has_at_most_three_messages_in_flight() {
    // Refuse (the default): the fourth is never pushed.
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    let states: Vec<String> = (0..4)
        .map(|n| single(&wecom, "alice", &format!("q{n}")).state)
        .collect();
    assert_eq!(states, ["queued", "queued", "queued", "refused"]);
    assert_eq!(single(&wecom, "bob", "other user").state, "queued");
    let mut req_ids = Vec::new();
    for _ in 0..4 {
        let push = next_push(&mut ws, "aibot_msg_callback").await;
        req_ids.push((
            push["headers"]["req_id"].as_str().unwrap().to_owned(),
            push["body"]["from"]["userid"].clone(),
        ));
    }
    assert_eq!(req_ids.iter().filter(|(_, user)| *user == "alice").count(), 3);
    // Once one is answered, the next one goes through.
    let (first, _) = req_ids.iter().find(|(_, user)| *user == "alice").unwrap().clone();
    assert_eq!(respond(&mut ws, &first, "s1", "done", true).await["errcode"], 0);
    assert_eq!(single(&wecom, "alice", "q4").state, "queued");
    assert_eq!(wecom.inspect(|w| w.stats().in_flight_refused), 1);
    wecom.shutdown().await.unwrap();

    // Hold: the fourth waits and is pushed when a slot frees.
    let wecom = start(|c| c.in_flight_overflow = InFlightOverflow::Hold).await;
    let mut ws = connect(&wecom).await;
    let posted: Vec<_> = (0..4).map(|n| single(&wecom, "alice", &format!("q{n}"))).collect();
    assert_eq!(posted[3].state, "held");
    let mut first = None;
    for _ in 0..3 {
        let push = next_push(&mut ws, "aibot_msg_callback").await;
        first.get_or_insert(push["headers"]["req_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        respond(&mut ws, first.as_deref().unwrap(), "s1", "done", true).await["errcode"],
        0
    );
    let push = next_push(&mut ws, "aibot_msg_callback").await;
    assert_eq!(push["body"]["msgid"], posted[3].msgid.as_str());
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn send_msg_reaches_known_chats_only() {
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    single(&wecom, "alice", "hi");
    next_push(&mut ws, "aibot_msg_callback").await;
    let ack = call(
        &mut ws,
        "aibot_send_msg",
        "aibot_send_msg_1713000000000_eeeeeeee",
        json!({"chatid": "alice", "msgtype": "markdown", "markdown": {"content": "**later** answer"}}),
    )
    .await;
    assert_eq!(ack["errcode"], 0, "{ack}");
    let unknown = call(
        &mut ws,
        "aibot_send_msg",
        "aibot_send_msg_1713000000001_ffffffff",
        json!({"chatid": "nobody", "msgtype": "markdown", "markdown": {"content": "x"}}),
    )
    .await;
    assert_eq!(unknown["errcode"], 40058);
    let stream_send = call(
        &mut ws,
        "aibot_send_msg",
        "aibot_send_msg_1713000000002_00000000",
        json!({"chatid": "alice", "msgtype": "stream", "stream": {"id": "x", "content": "x"}}),
    )
    .await;
    assert_eq!(stream_send["errcode"], 40058, "streams are replies, not sends");
    let last = wecom.inspect(|w| w.conversation("alice").unwrap().entries.last().cloned().unwrap());
    let last = serde_json::to_value(last).unwrap();
    assert_eq!(
        (last["via"].clone(), last["content"].clone()),
        (json!("send_msg"), json!("**later** answer"))
    );
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn redelivery_pushes_the_same_msgid_again() {
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    let posted = single(&wecom, "alice", "hello twice");
    let first = next_push(&mut ws, "aibot_msg_callback").await;
    wecom.redeliver(&posted.msgid).unwrap();
    let second = next_push(&mut ws, "aibot_msg_callback").await;
    assert_eq!(second["body"], first["body"], "same msgid, same body");
    assert_ne!(second["headers"]["req_id"], first["headers"]["req_id"]);
    // Either req_id answers the one message; a duplicate-aware robot answers with its stream's state.
    let req_id = second["headers"]["req_id"].as_str().unwrap();
    assert_eq!(respond(&mut ws, req_id, "s", "once", true).await["errcode"], 0);
    let message = wecom.inspect(|w| w.message(&posted.msgid).cloned().unwrap());
    assert_eq!((message.pushes, message.state), (2, MessageState::Answered));
    assert!(wecom.redeliver("no-such-msgid").is_err());
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn messages_posted_while_offline_wait_for_a_subscription() {
    let wecom = start(|_| {}).await;
    let posted = single(&wecom, "alice", "anyone?");
    let mut ws = connect(&wecom).await;
    let push = next_push(&mut ws, "aibot_msg_callback").await;
    assert_eq!(push["body"]["msgid"], posted.msgid.as_str());
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_are_pushed_and_welcome_replies_answer_enter_chat() {
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    let posted = wecom
        .post_event(UserEvent {
            eventtype: "enter_chat".to_owned(),
            userid: "alice".to_owned(),
            chattype: None,
            chatid: None,
            fields: Default::default(),
        })
        .unwrap();
    let push = next_push(&mut ws, "aibot_event_callback").await;
    assert_eq!(push["body"]["msgtype"], "event");
    assert_eq!(push["body"]["event"]["eventtype"], "enter_chat");
    assert_eq!(push["body"]["msgid"], posted.msgid.as_str());
    let req_id = push["headers"]["req_id"].as_str().unwrap();
    let ack = call(
        &mut ws,
        "aibot_respond_welcome_msg",
        req_id,
        json!({"msgtype": "text", "text": {"content": "Welcome!"}}),
    )
    .await;
    assert_eq!(ack["errcode"], 0, "{ack}");
    // The welcome command answers enter_chat only; a message's req_id is not an event's.
    single(&wecom, "alice", "hi");
    let message = next_push(&mut ws, "aibot_msg_callback").await;
    let wrong = call(
        &mut ws,
        "aibot_respond_welcome_msg",
        message["headers"]["req_id"].as_str().unwrap(),
        json!({"msgtype": "text", "text": {"content": "Welcome!"}}),
    )
    .await;
    assert_eq!(wrong["errcode"], 846605);
    assert_eq!(
        wecom.inspect(|w| w.message(&posted.msgid).unwrap().state),
        MessageState::Answered
    );
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn faults_fail_replies_and_drop_ping_acks() {
    let wecom = start(|_| {}).await;
    let mut ws = connect(&wecom).await;
    let (_, req_id) = ask(&wecom, &mut ws, "alice", "hi").await;
    wecom
        .fault(FaultCommand::ReplyFailures {
            fraction: 0.5,
            errcode: 6000,
        })
        .unwrap();
    let codes: Vec<Value> = {
        let mut codes = Vec::new();
        for n in 0..4 {
            codes.push(respond(&mut ws, &req_id, "s", &format!("v{n}"), false).await["errcode"].clone());
        }
        codes
    };
    assert_eq!(codes, [json!(0), json!(6000), json!(0), json!(6000)]);
    wecom.fault(FaultCommand::Clear).unwrap();
    wecom.fault(FaultCommand::DropPingAcks { drop: true }).unwrap();
    request_ping_and_expect_silence(&mut ws).await;
    wecom.shutdown().await.unwrap();
}

/// A dropped ping ack: the next frame is the ack of a later request, not of the ping.
async fn request_ping_and_expect_silence(ws: &mut crate::Ws) {
    super::request(ws, "ping", "ping_dropped", Value::Null).await;
    let ack = call(ws, "aibot_send_msg", "aibot_send_msg_after_ping", json!({})).await;
    assert_eq!(ack["errcode"], 40058);
}

#[tokio::test]
async fn zombie_and_disconnect_faults_cut_the_long_connection() {
    let wecom = start(|_| {}).await;
    let mut zombie = connect(&wecom).await;
    assert_eq!(wecom.fault(FaultCommand::Zombie { connection: None }).unwrap(), 1);
    // Frames to a zombie vanish: the push and the ping's ack never arrive.
    let posted = single(&wecom, "alice", "into the void");
    until(&wecom, |w| (w.message(&posted.msgid)?.pushes == 1).then_some(())).await;
    super::request(&mut zombie, "ping", "ping_into_the_void", Value::Null).await;
    // A fresh connection takes the robot over; redelivery reaches it.
    let mut fresh = connect(&wecom).await;
    wecom.redeliver(&posted.msgid).unwrap();
    let push = next_push(&mut fresh, "aibot_msg_callback").await;
    assert_eq!(push["body"]["msgid"], posted.msgid.as_str());
    // The zombie got nothing but the close.
    loop {
        match tokio::time::timeout(PATIENCE, zombie.next())
            .await
            .expect("the zombie is closed")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(Message::Text(text))) => panic!("a frame reached a zombie: {text}"),
            Some(Ok(_)) => {}
        }
    }
    until(&wecom, |w| (w.stats().live_connections == 1).then_some(())).await;
    // Disconnect closes the socket without a notice.
    assert_eq!(wecom.fault(FaultCommand::Disconnect { connection: None }).unwrap(), 1);
    match tokio::time::timeout(PATIENCE, fresh.next())
        .await
        .expect("the socket closes")
    {
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {}
        Some(Ok(other)) => panic!("expected the close, got {other:?}"),
    }
    until(&wecom, |w| {
        (w.stats().live_connections == 0 && !w.subscribed()).then_some(())
    })
    .await;
    wecom.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_page_and_the_state_api_are_served() {
    let wecom = start(|_| {}).await;
    single(&wecom, "alice", "hello page");
    let page = reqwest::get(format!("{}/_emulator", wecom.base_url())).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("WeCom emulator"));
    let state: Value = reqwest::get(format!("{}/_emulator/api/state", wecom.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["mode"], "long_connection");
    assert_eq!(state["conversations"][0]["chatid"], "alice");
    assert_eq!(state["messages"][0]["state"], "queued");
    let missing = reqwest::get(format!("{}/_emulator/api/streams/nope", wecom.base_url()))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = reqwest::Client::new()
        .post(format!("{}/_emulator/api/messages", wecom.base_url()))
        .json(&json!({"chattype": "group", "userid": "bob", "text": "no chatid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("chatid"));
    wecom.shutdown().await.unwrap();
}

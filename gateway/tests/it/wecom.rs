//! The WeCom connector end to end: the real engine and SmolLM2 model answer simulated users of the real
//! emulator (`emulator::wecom`) over a real WebSocket (long connection) or real encrypted HTTP callbacks
//! (URL mode), with the outbox in a real SQLite file. Every message must end with exactly one finished
//! answer: its stream finished by exactly one accepted final frame, or one message sent instead.

use std::path::Path;
use std::time::Duration;

use emulator::wecom::{
    ChatEntry, EmulatorConfig, InFlightOverflow, MessageState, StreamStatus, UserMessage, Via, WeComEmulator, World,
    DEFAULT_BOT_ID, DEFAULT_ENCODING_AES_KEY, DEFAULT_SECRET, DEFAULT_TOKEN,
};
use gateway::config::Secret;
use gateway::wecom::{Mode, WeComConfig, WeComConnector};

use crate::dingtalk::shared_models;

/// Upper bound on awaited events (answers run on a CPU model shared with other tests).
pub(crate) const PATIENCE: Duration = Duration::from_secs(600);

pub(crate) async fn emulator(tweak: impl FnOnce(&mut EmulatorConfig)) -> WeComEmulator {
    // Messages over a user's in-flight limit (3) wait for a slot instead of being refused.
    let mut config = EmulatorConfig {
        in_flight_overflow: InFlightOverflow::Hold,
        refresh_interval: Duration::from_millis(100),
        ..EmulatorConfig::default()
    };
    tweak(&mut config);
    WeComEmulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub(crate) fn connector_config(wecom: &WeComEmulator, db: &Path, mode: Mode) -> WeComConfig {
    WeComConfig {
        mode,
        bot_id: DEFAULT_BOT_ID.to_owned(),
        secret: Secret(DEFAULT_SECRET.to_owned()),
        token: Secret(DEFAULT_TOKEN.to_owned()),
        encoding_aes_key: Secret(DEFAULT_ENCODING_AES_KEY.to_owned()),
        ws_url: wecom.ws_url(),
        database: db.to_owned(),
        max_answer_tokens: 24,
        stream_update_interval_ms: 30,
        backoff_initial_ms: 50,
        backoff_max_ms: 1_000,
        throttle_backoff_ms: 50,
        heartbeat_secs: 1,
        ack_timeout_ms: 2_000,
        user_requests_per_second: 0,
        ..WeComConfig::default()
    }
}

/// 20 users × 5 messages, each user alternating between their 1:1 chat and one of four groups.
pub(crate) fn post_traffic(wecom: &WeComEmulator, users: usize, per_user: usize) -> Vec<String> {
    post_questions(wecom, users, per_user, "name a color.")
}

/// [`post_traffic`] asking `ask` (a long story keeps each stream open for seconds).
pub(crate) fn post_questions(wecom: &WeComEmulator, users: usize, per_user: usize, ask: &str) -> Vec<String> {
    let mut posted = Vec::new();
    for round in 0..per_user {
        for user in 0..users {
            let userid = format!("user{user:02}");
            let text = format!("Question {round} from {userid}: {ask}");
            let message = if (user + round) % 2 == 0 {
                UserMessage::single(&userid, &text)
            } else {
                UserMessage::group(&format!("group{}", (user + round) % 4), &userid, &text)
            };
            posted.push(wecom.post_message(message).unwrap().msgid);
        }
    }
    posted
}

/// How each message ended, once every one has exactly one finished answer: `Some((by stream, by message))`;
/// `None` while any is still open. An answer is its streams (the first and any continuation), all finished,
/// each by exactly one accepted final frame, or one message (`aibot_send_msg`, `response_url`) in its
/// conversation in place of a stream. Panics on a doubled answer or a refused message.
pub(crate) fn settled(world: &World) -> Option<(usize, usize)> {
    let (mut by_stream, mut by_message) = (0, 0);
    let mut open_in: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for m in world.messages().iter().filter(|m| m.eventtype.is_none()) {
        assert_ne!(m.state, MessageState::Refused, "message {} was refused", m.msgid);
        let streams: Vec<_> = m.stream_ids.iter().filter_map(|id| world.stream(id)).collect();
        for stream in &streams {
            let finals = stream.updates.iter().filter(|u| u.finish && u.errcode == 0).count();
            assert!(finals <= 1, "stream {} finished {finals} times", stream.id);
            if stream.status == StreamStatus::Finished {
                assert!(
                    !stream.content.trim().is_empty() && stream.content != "<think></think>",
                    "stream {} finished empty",
                    stream.id
                );
            }
        }
        if !streams.is_empty() && streams.iter().all(|s| s.status == StreamStatus::Finished) {
            by_stream += 1;
        } else {
            *open_in.entry(m.chatid.as_str()).or_default() += 1;
        }
    }
    // Messages sent in place of a stream answer the messages without a finished stream, one each.
    for conversation in world
        .messages()
        .iter()
        .map(|m| m.chatid.as_str())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let sent = world.conversation(conversation).map_or(0, |c| {
            c.entries
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        ChatEntry::Robot {
                            via: Via::SendMsg | Via::ResponseUrl,
                            ..
                        }
                    )
                })
                .count()
        });
        let open = open_in.get(conversation).copied().unwrap_or(0);
        assert!(
            sent <= open,
            "{sent} messages sent in {conversation} for {open} unfinished answers"
        );
        if sent < open {
            return None;
        }
        by_message += sent;
    }
    Some((by_stream, by_message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_20_users_gets_exactly_one_finished_stream_over_the_long_connection() {
    let wecom = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let config = connector_config(&wecom, &dir.path().join("outbox.sqlite3"), Mode::LongConnection);
    let connector = WeComConnector::start(config, shared_models()).await.unwrap();
    wecom
        .wait_for(PATIENCE, |w| w.subscribed().then_some(()))
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let posted = post_traffic(&wecom, 20, 5);
    let (by_stream, by_message) = wecom
        .wait_for(PATIENCE, |w| settled(w).filter(|(s, m)| s + m == posted.len()))
        .await
        .unwrap();
    eprintln!(
        "long connection: {} messages answered in {:.1} s",
        posted.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (by_stream, by_message),
        (posted.len(), 0),
        "every answer is a finished stream"
    );
    // The platform shows every stream finished; the outbox settles each message just after (its audit
    // record is written with the settlement).
    connector.audit().wait_for_records(posted.len() as u64).await.unwrap();
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    for msgid in &posted {
        assert_eq!(
            outbox.state(msgid).await.unwrap().as_deref(),
            Some("answered"),
            "{msgid}"
        );
    }
    let stats = wecom.inspect(World::stats);
    assert_eq!(stats.unknown_req_ids, 0);
    assert_eq!(stats.sends, 0);
    wecom.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_20_users_gets_exactly_one_finished_stream_in_url_mode() {
    let wecom = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let config = connector_config(&wecom, &dir.path().join("outbox.sqlite3"), Mode::Callback);
    let connector = WeComConnector::start(config, shared_models()).await.unwrap();
    // hearth's own router, with the callback route mounted as `hearth serve` mounts it.
    let mut state = gateway::AppState::with_shared_router(shared_models(), &gateway::GatewayConfig::default());
    state.wecom_callback = connector.adapter().callback();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/im/wecom/callback", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, gateway::app(state)).await });
    // Saving the URL verifies it (the decrypted echostr comes back), then switches the robot to URL mode.
    wecom.set_callback_url(Some(url)).await.unwrap();

    let started = std::time::Instant::now();
    let posted = post_traffic(&wecom, 20, 5);
    let (by_stream, by_message) = wecom
        .wait_for(PATIENCE, |w| settled(w).filter(|(s, m)| s + m == posted.len()))
        .await
        .unwrap();
    eprintln!(
        "URL mode: {} messages answered in {:.1} s",
        posted.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (by_stream, by_message),
        (posted.len(), 0),
        "every answer is a finished stream"
    );
    // The platform shows every stream finished; the outbox settles each message just after (its audit
    // record is written with the settlement).
    connector.audit().wait_for_records(posted.len() as u64).await.unwrap();
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    for msgid in &posted {
        assert_eq!(
            outbox.state(msgid).await.unwrap().as_deref(),
            Some("answered"),
            "{msgid}"
        );
    }
    let stats = wecom.inspect(World::stats);
    assert_eq!(stats.verifications_ok, 1);
    assert_eq!(stats.response_urls_used, 0);
    assert!(stats.refreshes > 0, "the streams were collected by refresh callbacks");
    server.abort();
    wecom.shutdown().await.unwrap();
}

//! DingTalk as a real tenant meets it (issue 22): a card throttled throughout ends failed within the retry
//! bound, cards say they are done (`flowStatus`), a refused `flowStatus` is owed and set later (after a
//! restart too), a silent socket is found by hearth's own pings, external senders without a staff id, audit
//! and history written once in one transaction, and an answer resumed after `kill -9` streaming on from what
//! its card showed.

use std::process::Command;
use std::time::{Duration, Instant};

use emulator::dingtalk::{CardStatus, ConversationKind, FaultCommand, UserMessage, World};
use gateway::dingtalk::{DingTalkConfig, DingTalkConnector, Outbox};

use crate::dingtalk::{
    all_answered, connector_config, emulator, log_tail, robot_messages, say, shared_models, spawn_hearth_configured,
    PATIENCE,
};

/// Wait until the emulator holds one live connection.
async fn connected(dingtalk: &emulator::dingtalk::DingTalkEmulator) {
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_throttled_throughout_ends_failed_and_its_answer_arrives_within_the_retry_bound() {
    let dingtalk = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let retry = Duration::from_secs(3);
    let config = DingTalkConfig {
        card_retry_secs: retry.as_secs(),
        throttle_backoff_ms: 500,
        ..connector_config(&dingtalk, &dir.path().join("outbox.sqlite3"))
    };
    let connector = DingTalkConnector::start(config, shared_models()).await.unwrap();
    connected(&dingtalk).await;

    // Every card update is refused with 429 from here on (creating the card still works).
    dingtalk
        .fault(FaultCommand::CardUpdateFailures {
            fraction: 1.0,
            status: 429,
        })
        .unwrap();
    let asked = Instant::now();
    let posted = say(&dingtalk, ConversationKind::Single, None, "tia", "Name a color.", false);
    let conversation = posted.conversation_id.clone();
    let sent = dingtalk
        .wait_for(PATIENCE, |w| {
            Some(robot_messages(w, &conversation, "sessionWebhook")).filter(|m| !m.is_empty())
        })
        .await
        .unwrap();
    let waited = asked.elapsed();
    eprintln!("throttled card: the answer arrived as markdown {waited:?} after the question");
    assert!(
        waited < retry + Duration::from_secs(7),
        "the markdown came {waited:?} after the question, past the {retry:?} bound plus generation"
    );
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].trim().is_empty());

    // Marking the card failed is refused too, and retried: once the platform lets card calls through again,
    // the card is marked failed, never left typing.
    let refused = |w: &World| w.cards_in(&conversation).first().map_or(0, |c| c.rejected_calls);
    let before = dingtalk.inspect(refused);
    dingtalk
        .wait_for(PATIENCE, |w| (refused(w) > before).then_some(()))
        .await
        .unwrap();
    dingtalk.fault(FaultCommand::Clear).unwrap();
    let card = dingtalk
        .wait_for(PATIENCE, |w| {
            w.cards_in(&conversation)
                .pop()
                .filter(|c| c.status == CardStatus::Failed && c.flow_status.as_deref() == Some("5"))
        })
        .await
        .unwrap();
    assert!(card.rejected_calls >= 2, "the card calls were refused: {card:#?}");
    let outbox = connector.outbox().clone();
    let audit = connector.audit().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(
        outbox.state(&posted.msg_id).await.unwrap().as_deref(),
        Some("answered_markdown")
    );
    let records = audit.records(0).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].msg_id, posted.msg_id,
        "the audit record names the platform's message"
    );
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_replaced_after_the_pong_deadline_while_slow_platform_pings_are_fine() {
    // The platform pings far less often than hearth's pong deadline.
    let dingtalk = emulator(|c| {
        c.ping_interval = Some(Duration::from_secs(30));
        c.redelivery_after = Duration::from_millis(500);
        c.max_redeliveries = 100;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = DingTalkConfig {
        ping_interval_secs: 1,
        pong_timeout_secs: 2,
        ..connector_config(&dingtalk, &dir.path().join("outbox.sqlite3"))
    };
    let connector = DingTalkConnector::start(config, shared_models()).await.unwrap();
    connected(&dingtalk).await;
    // hearth's pings get pongs: several pong deadlines pass with no frame and no reconnect.
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().ws_pings_received >= 5).then_some(()))
        .await
        .unwrap();
    let stats = dingtalk.inspect(|w| w.stats());
    assert_eq!(
        (stats.connections_opened, stats.pings_sent),
        (1, 0),
        "no needless reconnect while the platform is quiet"
    );

    // The network path dies silently: no frame, no pong. The first unanswered ping gives it away.
    assert_eq!(dingtalk.fault(FaultCommand::Silence { connection: None }).unwrap(), 1);
    let asked = Instant::now();
    let posted = say(&dingtalk, ConversationKind::Single, None, "sol", "Say hello.", false);
    dingtalk
        .wait_for(PATIENCE, |w| {
            w.cards_in(&posted.conversation_id)
                .first()
                .and_then(|c| c.updates.iter().find(|u| u.api == "streaming").map(|_| ()))
        })
        .await
        .unwrap();
    let latency = asked.elapsed();
    eprintln!("silent socket: first text {latency:?} after the question (ping 1 s, pong deadline 2 s)");
    assert!(
        latency < Duration::from_secs(8),
        "the silent socket was found too late: {latency:?}"
    );
    assert_eq!(dingtalk.inspect(|w| w.stats().connections_opened), 2);
    dingtalk.wait_for(PATIENCE, all_answered).await.unwrap();
    connector.shutdown(Duration::from_secs(30)).await;
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_senders_get_a_card_by_union_id_or_the_webhook_answer_at_once() {
    let dingtalk = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let connector = DingTalkConnector::start(
        connector_config(&dingtalk, &dir.path().join("outbox.sqlite3")),
        shared_models(),
    )
    .await
    .unwrap();
    connected(&dingtalk).await;
    let external = |user: &str, union_id: Option<&str>, text: &str| UserMessage {
        external: true,
        union_id: union_id.map(str::to_owned),
        ..UserMessage::single(user, text)
    };
    // No staff id, but a unionId: the 1:1 card addresses it.
    let by_union = dingtalk
        .post_message(external("guest1", Some("union-guest1"), "Name a color."))
        .unwrap();
    // Neither: no card can reach the sender, so the answer goes through the sessionWebhook at once.
    let unaddressable = dingtalk
        .post_message(external("guest2", None, "Name a fruit."))
        .unwrap();
    // In a group the card goes to the group, whoever asked.
    let in_group = dingtalk
        .post_message(UserMessage {
            external: true,
            ..UserMessage::group("cidGuests", "guest3", "Name a city.", true)
        })
        .unwrap();
    let webhook = dingtalk
        .wait_for(PATIENCE, |w| {
            Some(robot_messages(w, &unaddressable.conversation_id, "sessionWebhook")).filter(|m| !m.is_empty())
        })
        .await
        .unwrap();
    assert_eq!(webhook.len(), 1);
    let done = |w: &World| {
        let finished = |id: &str| {
            w.cards_in(id)
                .first()
                .is_some_and(|c| c.status == CardStatus::Finished && c.flow_status.as_deref() == Some("3"))
        };
        (finished(&by_union.conversation_id) && finished(&in_group.conversation_id)).then_some(())
    };
    dingtalk.wait_for(PATIENCE, done).await.unwrap();
    let stats = dingtalk.inspect(|w| w.stats());
    assert!(dingtalk.inspect(|w| w.cards_in(&unaddressable.conversation_id).is_empty()));
    assert_eq!(stats.bad_requests, 0, "no call went out with an empty user id");
    let audit = connector.audit().clone();
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(
        outbox.state(&unaddressable.msg_id).await.unwrap().as_deref(),
        Some("answered_markdown")
    );
    let records = audit.records(0).await.unwrap();
    assert_eq!(records.len(), 3);
    assert!(
        records.iter().all(|r| r.sender_id.starts_with("$:LWCP_v1:$")),
        "external senders are known by their senderId: {records:#?}"
    );
    dingtalk.shutdown().await.unwrap();
}

/// Fails every attempt to close a message in `db`, as a crash between the writes would leave it.
fn break_closing(db: &std::path::Path) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER fail_close BEFORE UPDATE OF state ON inbound WHEN NEW.state != 'accepted'
             BEGIN SELECT RAISE(ABORT, 'injected: the message cannot be closed'); END;",
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_the_message_is_closed_leaves_no_audit_record_or_turn_to_double() {
    let dingtalk = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite3");
    let config = connector_config(&dingtalk, &db);
    let connector = DingTalkConnector::start(config.clone(), shared_models()).await.unwrap();
    connected(&dingtalk).await;
    break_closing(&db);
    let posted = say(&dingtalk, ConversationKind::Single, None, "tex", "Name a color.", false);
    dingtalk.wait_for(PATIENCE, all_answered).await.unwrap();
    let session = format!(
        "dingtalk:{}:{}",
        emulator::dingtalk::DEFAULT_CLIENT_ID,
        posted.conversation_id
    );
    let (audit, sessions) = (connector.audit().clone(), connector.sessions().clone());
    connector.shutdown(Duration::from_secs(30)).await;
    // The answer was shown, but its transaction did not commit: nothing of it is stored.
    assert_eq!(
        audit.records(0).await.unwrap().len(),
        0,
        "no audit record without the close"
    );
    assert!(sessions.history(&session).await.unwrap().is_empty(), "no turn either");
    let outbox = Outbox::open(&db, config.robot()).unwrap();
    assert_eq!(outbox.state(&posted.msg_id).await.unwrap().as_deref(), Some("accepted"));

    // Fixed and restarted: the message is answered again (its card found again) and recorded once.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TRIGGER fail_close")
        .unwrap();
    let connector = DingTalkConnector::start(config, shared_models()).await.unwrap();
    let records = tokio::time::timeout(PATIENCE, connector.audit().wait_for_records(1))
        .await
        .unwrap()
        .unwrap();
    let history = connector.sessions().history(&session).await.unwrap();
    let outbox = connector.outbox().clone();
    let audit = connector.audit().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].msg_id, posted.msg_id);
    assert_eq!(history.len(), 2, "one question and one answer: {history:#?}");
    assert_eq!(audit.records(0).await.unwrap().len(), 1, "still one record");
    assert_eq!(outbox.state(&posted.msg_id).await.unwrap().as_deref(), Some("answered"));
    assert_eq!(dingtalk.inspect(all_answered), Some(1), "one card, finalized once");
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_status_refused_past_the_retry_bound_is_owed_and_set_once_the_platform_takes_it_after_a_restart_too() {
    let dingtalk = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let config = DingTalkConfig {
        card_retry_secs: 1,
        ..connector_config(&dingtalk, &dir.path().join("outbox.sqlite3"))
    };
    let connector = DingTalkConnector::start(config.clone(), shared_models()).await.unwrap();
    connected(&dingtalk).await;

    // Card data updates (the flowStatus) are refused from here on; creating and streaming cards still works.
    dingtalk
        .fault(FaultCommand::CardDataUpdateFailures {
            fraction: 1.0,
            status: 429,
        })
        .unwrap();
    let posted = say(&dingtalk, ConversationKind::Single, None, "fay", "Name a color.", false);
    let conversation = posted.conversation_id.clone();
    let card = dingtalk
        .wait_for(PATIENCE, |w| {
            w.cards_in(&conversation)
                .pop()
                .filter(|c| c.status == CardStatus::Finished && c.rejected_calls > 0)
        })
        .await
        .unwrap();
    // The answer is settled once its flowStatus was refused for the retry bound: the mark is owed, not lost.
    let records = tokio::time::timeout(PATIENCE, connector.audit().wait_for_records(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(records[0].msg_id, posted.msg_id);
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(outbox.state(&posted.msg_id).await.unwrap().as_deref(), Some("answered"));
    assert_eq!(
        outbox.pending_marks().await.unwrap(),
        vec![(card.out_track_id.clone(), "3".to_owned())]
    );
    let shown = dingtalk.inspect(|w| w.cards_in(&conversation).pop().unwrap());
    assert_eq!(
        shown.flow_status.as_deref(),
        Some("1"),
        "still typing while the platform refuses"
    );

    // Restarted, with the platform taking card updates again: the owed mark is set, and only it.
    dingtalk.fault(FaultCommand::Clear).unwrap();
    let connector = DingTalkConnector::start(config, shared_models()).await.unwrap();
    let done = dingtalk
        .wait_for(PATIENCE, |w| {
            w.cards_in(&conversation)
                .pop()
                .filter(|c| c.flow_status.as_deref() == Some("3"))
        })
        .await
        .unwrap();
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(done.status, CardStatus::Finished);
    assert_eq!(
        done.updates.iter().filter(|u| u.is_finalize == Some(true)).count(),
        1,
        "finalized once: {done:#?}"
    );
    assert!(
        outbox.pending_marks().await.unwrap().is_empty(),
        "the mark is no longer owed"
    );
    assert_eq!(dingtalk.inspect(all_answered), Some(1), "one card, no second answer");
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_resumed_after_kill_9_streams_on_from_what_its_card_showed() {
    let dingtalk = emulator(|c| c.redelivery_after = Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    // A long answer (an essay runs to the token limit), so it is still growing when the process dies.
    let config = DingTalkConfig {
        max_answer_tokens: 200,
        ..connector_config(&dingtalk, &dir.path().join("outbox.sqlite3"))
    };
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut hearth = spawn_hearth_configured(&config, dir.path(), &first_log);
    connected(&dingtalk).await;
    // Slow card calls keep the answer in flight; kill -9 once its card shows some text.
    dingtalk.fault(FaultCommand::Slow { millis: 300 }).unwrap();
    let posted = say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "rae",
        "Write a long essay about the history of ships, with many details.",
        false,
    );
    let conversation = posted.conversation_id.clone();
    let showing = |w: &World| {
        w.cards_in(&conversation).first().and_then(|c| match c.status {
            CardStatus::Inputting if !c.text.trim().is_empty() => Some(c.status),
            CardStatus::Finished | CardStatus::Failed => Some(c.status),
            _ => None,
        })
    };
    let status = dingtalk
        .wait_for(PATIENCE, showing)
        .await
        .unwrap_or_else(|e| panic!("{e}; first log:\n{}", log_tail(&first_log)));
    hearth.kill().expect("SIGKILL");
    hearth.wait().unwrap();
    assert_eq!(
        status,
        CardStatus::Inputting,
        "the answer was still growing at the kill"
    );
    let shown = dingtalk.inspect(|w| w.cards_in(&conversation)[0].text.clone());

    dingtalk.fault(FaultCommand::Clear).unwrap();
    let mut hearth = spawn_hearth_configured(&config, dir.path(), &second_log);
    let answered = dingtalk.wait_for(PATIENCE, all_answered).await;
    let _ = Command::new("kill").args(["-TERM", &hearth.id().to_string()]).status();
    hearth.wait().unwrap();
    answered.unwrap_or_else(|e| panic!("{e}; second log:\n{}", log_tail(&second_log)));
    let card = dingtalk.inspect(|w| w.cards_in(&conversation)[0].clone());
    // Updates of the second run carry its attempt (2) in their guids.
    let resumed: Vec<_> = card
        .updates
        .iter()
        .filter(|u| {
            u.api == "streaming"
                && u.guid
                    .as_deref()
                    .is_some_and(|g| g.ends_with("-final") || g.contains("-2-"))
        })
        .collect();
    let growing = resumed.iter().filter(|u| u.is_finalize == Some(false)).count();
    eprintln!(
        "resumed answer: the card showed {} bytes at the kill; {growing} snapshots after the restart, then the final {} bytes",
        shown.len(),
        card.text.len()
    );
    assert!(
        growing >= 1,
        "the resumed answer streamed on instead of jumping to its end: {:#?}",
        card.updates
    );
    for update in &resumed {
        let content = update.content.as_deref().unwrap_or_default();
        assert!(
            content.starts_with(shown.trim_end()),
            "after the restart the card never showed less than before: {content:?} vs {shown:?}"
        );
    }
    assert_eq!(resumed.last().and_then(|u| u.is_finalize), Some(true));
    dingtalk.shutdown().await.unwrap();
}

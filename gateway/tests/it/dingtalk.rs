//! The DingTalk connector end to end: the real engine and SmolLM2 model answer simulated users of the real
//! emulator (`emulator::dingtalk`) over real HTTP and WebSocket, with the outbox in a real SQLite file.
//! Every pushed message must end with exactly one finalized card, through disconnect notices, zombie
//! sockets, 429 storms and a `kill -9` of the whole process.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use emulator::dingtalk::{
    Card, CardStatus, ChatEntry, Conversation, ConversationKind, DingTalkEmulator, EmulatorConfig, FaultCommand,
    PostedMessage, UserMessage, World, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
};
use gateway::dingtalk::{DingTalkConfig, DingTalkConnector};

use crate::support::{model_path, shared_engine};

pub(crate) const TEMPLATE: &str = "hearth-test-ai-card.schema";
/// Upper bound on awaited events (answers run on a CPU model).
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);

pub(crate) async fn emulator(tweak: impl FnOnce(&mut EmulatorConfig)) -> DingTalkEmulator {
    let mut config = EmulatorConfig {
        ping_interval: Some(Duration::from_millis(200)),
        ..EmulatorConfig::default()
    };
    tweak(&mut config);
    DingTalkEmulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub(crate) fn connector_config(dingtalk: &DingTalkEmulator, db: &Path) -> DingTalkConfig {
    DingTalkConfig {
        app_key: DEFAULT_CLIENT_ID.to_owned(),
        app_secret: gateway::config::Secret(DEFAULT_CLIENT_SECRET.to_owned()),
        card_template_id: TEMPLATE.to_owned(),
        api_base_url: dingtalk.base_url(),
        database: crate::store_support::database(db),
        max_answer_tokens: 24,
        card_update_interval_ms: 30,
        backoff_initial_ms: 50,
        backoff_max_ms: 1_000,
        throttle_backoff_ms: 50,
        ..DingTalkConfig::default()
    }
}

pub(crate) fn say(
    dingtalk: &DingTalkEmulator,
    kind: ConversationKind,
    conversation: Option<&str>,
    user: &str,
    text: &str,
    at_bot: bool,
) -> PostedMessage {
    dingtalk
        .post_message(UserMessage {
            conversation_type: kind,
            conversation_id: conversation.map(str::to_owned),
            at_bot,
            ..UserMessage::single(user, text)
        })
        .unwrap()
}

/// The cards of each answered message, in delivery order: a first card, then its continuation cards
/// (`{outTrackId}-p2`, `-p3`, …) when the answer was long.
pub(crate) fn answers(cards: &[Card]) -> Vec<Vec<Card>> {
    let mut answers: Vec<Vec<Card>> = Vec::new();
    for card in cards {
        let first = match card.out_track_id.rsplit_once("-p") {
            Some((first, part)) if part.parse::<u32>().is_ok() => first,
            _ => card.out_track_id.as_str(),
        };
        match answers.iter_mut().find(|a| a[0].out_track_id == first) {
            Some(answer) => answer.push(card.clone()),
            None => answers.push(vec![card.clone()]),
        }
    }
    answers
}

/// Messages the robot must answer in `conversation`: pushed, and in a group only when they mention it.
fn to_answer(conversation: &Conversation) -> usize {
    let single = conversation.kind == ConversationKind::Single;
    conversation
        .messages
        .iter()
        .filter(|m| matches!(m, ChatEntry::User { pushed: true, at_bot, .. } if *at_bot || single))
        .count()
}

/// `Some(answered messages)` once every conversation holds exactly one answer (a finished card and any
/// continuation cards) per pushed user message, each card finalized by exactly one accepted update and
/// saying so in its `flowStatus` ("3"); `None` while any is missing.
/// Panics on a duplicate answer. An answer whose next continuation card is not created yet looks complete:
/// tests of long answers await the audit record instead.
pub(crate) fn all_answered(world: &World) -> Option<usize> {
    let mut answered = 0;
    for conversation in &world.conversation_views() {
        let pushed = to_answer(&conversation.conversation);
        let cards = &conversation.cards;
        let answers = answers(cards).len();
        assert!(
            answers <= pushed,
            "more answers than messages in {}: {cards:#?}",
            conversation.conversation.conversation_id
        );
        if answers < pushed
            || cards
                .iter()
                .any(|c| c.status != CardStatus::Finished || c.flow_status.as_deref() != Some("3"))
        {
            return None;
        }
        for card in cards {
            let finals = card.updates.iter().filter(|u| u.is_finalize == Some(true)).count();
            assert_eq!(finals, 1, "card {} finalized {finals} times", card.out_track_id);
            assert!(!card.text.trim().is_empty(), "card {} is empty", card.out_track_id);
        }
        answered += answers;
    }
    Some(answered)
}

/// `Some(settled messages)` once every message the robot must answer has exactly one outcome: an answer
/// whose cards are all finished (each finalized once), or one plain reply sent after its card failed (or
/// could not be created); `None` while a card is still open or a message has no outcome. Panics when a
/// conversation holds more outcomes than messages. A card is done when it is finished with flowStatus "3"
/// or failed with "5".
fn settled_cards(world: &World) -> Option<usize> {
    let mut settled = 0;
    for conversation in &world.conversation_views() {
        let pushed = to_answer(&conversation.conversation);
        let cards = &conversation.cards;
        let finished = answers(cards)
            .iter()
            .filter(|a| a.iter().all(|c| c.status == CardStatus::Finished))
            .count();
        let replies = conversation
            .conversation
            .messages
            .iter()
            .filter(|m| matches!(m, ChatEntry::Robot { .. }))
            .count();
        let id = &conversation.conversation.conversation_id;
        assert!(
            finished + replies <= pushed,
            "{finished} finished answers and {replies} replies to {pushed} messages in {id}: {cards:#?}"
        );
        // A card is done once its state and its flowStatus agree: finished "3", failed "5".
        let open = cards.iter().any(|c| {
            !matches!(
                (c.status, c.flow_status.as_deref()),
                (CardStatus::Finished, Some("3")) | (CardStatus::Failed, Some("5"))
            )
        });
        if open || finished + replies < pushed {
            return None;
        }
        for card in cards.iter().filter(|c| c.status == CardStatus::Finished) {
            let finals = card.updates.iter().filter(|u| u.is_finalize == Some(true)).count();
            assert_eq!(finals, 1, "card {} finalized {finals} times", card.out_track_id);
        }
        settled += pushed;
    }
    Some(settled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_in_groups_and_chats_gets_exactly_one_finalized_card() {
    // Unmentioned group messages are pushed too, so the connector's own mention rule is what is tested.
    let dingtalk = emulator(|c| c.deliver_unmentioned_group_messages = true).await;
    let dir = tempfile::tempdir().unwrap();
    let connector = DingTalkConnector::start(
        connector_config(&dingtalk, &dir.path().join("outbox.sqlite3")),
        shared_models(),
    )
    .await
    .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();

    let mut posted = vec![
        say(
            &dingtalk,
            ConversationKind::Single,
            None,
            "alice",
            "What is the capital of France?",
            false,
        ),
        say(&dingtalk, ConversationKind::Single, None, "bob", "Say hello.", false),
        say(
            &dingtalk,
            ConversationKind::Group,
            Some("cidTeamA"),
            "carol",
            "Name a color.",
            true,
        ),
        say(
            &dingtalk,
            ConversationKind::Group,
            Some("cidTeamA"),
            "dave",
            "Name a fruit.",
            true,
        ),
        say(
            &dingtalk,
            ConversationKind::Group,
            Some("cidTeamB"),
            "erin",
            "Count to three.",
            true,
        ),
        say(
            &dingtalk,
            ConversationKind::Single,
            None,
            "alice",
            "And of Italy?",
            false,
        ),
    ];
    let quiet = say(
        &dingtalk,
        ConversationKind::Group,
        Some("cidTeamA"),
        "frank",
        "no mention here",
        false,
    );
    assert!(quiet.pushed);
    let cards = dingtalk.wait_for(PATIENCE, all_answered).await.unwrap();
    assert_eq!(cards, posted.len());
    // Shutdown waits for the answer tasks, which record the outcome right after the final card frame.
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    for message in posted.drain(..) {
        assert_eq!(
            outbox.state(&message.msg_id).await.unwrap().as_deref(),
            Some("answered")
        );
    }
    assert_eq!(outbox.state(&quiet.msg_id).await.unwrap().as_deref(), Some("ignored"));
    assert_eq!(dingtalk.inspect(|w| w.stats().unacked), 0, "every push was ACKed");
    dingtalk.shutdown().await.unwrap();
}

/// An emulator for the fault tests: quick redelivery (often), a short grace after a disconnect notice.
async fn faulty_emulator() -> DingTalkEmulator {
    emulator(|c| {
        c.redelivery_after = Duration::from_millis(800);
        c.max_redeliveries = 50;
        c.disconnect_grace = Duration::from_millis(500);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_survive_disconnect_notices_zombie_sockets_and_429_storms() {
    let dingtalk = faulty_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = DingTalkConfig {
        idle_timeout_secs: 1,
        ..connector_config(&dingtalk, &dir.path().join("outbox.sqlite3"))
    };
    let connector = DingTalkConnector::start(config, shared_models()).await.unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();

    // A fifth of card updates fail with 429.
    dingtalk
        .fault(FaultCommand::CardUpdateFailures {
            fraction: 0.2,
            status: 429,
        })
        .unwrap();
    let mut expected = 0;
    for (i, user) in ["u1", "u2", "u3", "u4"].iter().enumerate() {
        let group = format!("cidStorm{}", i % 2);
        say(
            &dingtalk,
            ConversationKind::Group,
            Some(&group),
            user,
            "Tell me a short fact.",
            true,
        );
        expected += 1;
    }
    assert_eq!(dingtalk.wait_for(PATIENCE, all_answered).await.unwrap(), expected);
    let rejected: u32 = dingtalk.inspect(|w| {
        w.conversation_ids()
            .iter()
            .flat_map(|id| w.cards_in(id))
            .map(|c| c.rejected_calls)
            .sum()
    });
    assert!(rejected > 0, "the 429 storm hit some card calls");

    // A disconnect notice: the connector opens a new connection and keeps answering.
    assert_eq!(
        dingtalk
            .fault(FaultCommand::Disconnect {
                connection: None,
                reason: None
            })
            .unwrap(),
        1
    );
    dingtalk
        .wait_for(PATIENCE, |w| {
            (w.stats().connections_opened >= 2 && w.stats().live_connections == 1).then_some(())
        })
        .await
        .unwrap();
    say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "after-disconnect",
        "Hello again.",
        false,
    );
    expected += 1;
    assert_eq!(dingtalk.wait_for(PATIENCE, all_answered).await.unwrap(), expected);

    // A zombie socket: pushes vanish; the connector notices the silence, reconnects, and the platform
    // redelivers the un-ACKed push.
    let opened = dingtalk.inspect(|w| w.stats().connections_opened);
    assert_eq!(dingtalk.fault(FaultCommand::Zombie { connection: None }).unwrap(), 1);
    say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "during-zombie",
        "Are you there?",
        false,
    );
    say(
        &dingtalk,
        ConversationKind::Group,
        Some("cidZombie"),
        "z2",
        "Still there?",
        true,
    );
    expected += 2;
    assert_eq!(dingtalk.wait_for(PATIENCE, all_answered).await.unwrap(), expected);
    assert!(
        dingtalk.inspect(|w| w.stats().connections_opened) > opened,
        "the zombie was replaced"
    );
    assert!(
        dingtalk.inspect(|w| w.stats().redeliveries) >= 1,
        "the lost pushes were redelivered"
    );

    connector.shutdown(Duration::from_secs(5)).await;
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_delivered_twice_is_answered_once_on_one_or_two_connections() {
    let dingtalk = emulator(|c| c.qps_per_api = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = connector_config(&dingtalk, &dir.path().join("outbox.sqlite3"));
    // Two connectors on one outbox, as two processes of one app would run: each push and its copy land
    // on different connections, and the outbox's dedupe decides which answers.
    let first = DingTalkConnector::start(config.clone(), shared_models()).await.unwrap();
    let second = DingTalkConnector::start(config, shared_models()).await.unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 2).then_some(()))
        .await
        .unwrap();
    dingtalk.fault(FaultCommand::DuplicatePushes { fraction: 1.0 }).unwrap();
    let mut posted = vec![
        say(
            &dingtalk,
            ConversationKind::Single,
            None,
            "dup1",
            "Say one word.",
            false,
        ),
        say(
            &dingtalk,
            ConversationKind::Group,
            Some("cidDup"),
            "dup2",
            "Name a color.",
            true,
        ),
        say(
            &dingtalk,
            ConversationKind::Group,
            Some("cidDup"),
            "dup3",
            "Name a fruit.",
            true,
        ),
    ];
    assert_eq!(dingtalk.wait_for(PATIENCE, all_answered).await.unwrap(), 3);
    second.shutdown(Duration::from_secs(30)).await;

    // One connection: both copies arrive on it.
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    posted.push(say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "dup1",
        "Say another word.",
        false,
    ));
    posted.push(say(
        &dingtalk,
        ConversationKind::Group,
        Some("cidDup"),
        "dup4",
        "Name a city.",
        true,
    ));
    assert_eq!(dingtalk.wait_for(PATIENCE, all_answered).await.unwrap(), 5);
    let outbox = first.outbox().clone();
    let audit = first.audit().clone();
    first.shutdown(Duration::from_secs(30)).await;

    assert_eq!(dingtalk.inspect(all_answered), Some(5), "no late second answer");
    let stats = dingtalk.inspect(|w| w.stats());
    assert!(stats.duplicate_pushes >= 5, "every message was pushed twice: {stats:?}");
    for message in &posted {
        assert_eq!(
            outbox.state(&message.msg_id).await.unwrap().as_deref(),
            Some("answered")
        );
    }
    assert_eq!(
        audit.records(0).await.unwrap().len(),
        5,
        "one answer each, across both connectors"
    );
    dingtalk.shutdown().await.unwrap();
}

/// `hearth serve` with the connector, as a child process.
fn spawn_hearth(dingtalk: &DingTalkEmulator, db: &Path) -> Child {
    serve(Stdio::null(), |command| {
        command
            .args([
                "--dingtalk-app-key",
                DEFAULT_CLIENT_ID,
                "--dingtalk-app-secret",
                DEFAULT_CLIENT_SECRET,
            ])
            .args([
                "--dingtalk-card-template-id",
                TEMPLATE,
                "--dingtalk-api-base-url",
                &dingtalk.base_url(),
            ])
            .arg("--dingtalk-database")
            .arg(db)
    })
}

/// `hearth serve` with the connector configured by `config` (written to `dir`), logging to `log`.
pub(crate) fn spawn_hearth_configured(config: &DingTalkConfig, dir: &Path, log: &Path) -> Child {
    let file = dir.join("dingtalk.toml");
    std::fs::write(&file, toml::to_string(config).expect("the config serializes")).unwrap();
    let log = std::fs::File::create(log).expect("the log file opens");
    serve(log.into(), |command| command.arg("--dingtalk-config").arg(&file))
}

fn serve(stderr: Stdio, dingtalk: impl FnOnce(&mut Command) -> &mut Command) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
    command
        .args(["serve", "--port", "0", "--ctx-size", "1024", "--model"])
        .arg(model_path());
    dingtalk(&mut command);
    command
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("the hearth binary starts")
}

/// The last lines of a child's log, for failure messages.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_accepted_message_is_finished_exactly_once() {
    let dingtalk = emulator(|c| c.redelivery_after = Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite3");
    let mut first = spawn_hearth(&dingtalk, &db);
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();

    // Slow card calls, so the answers are mid-flight when the process dies.
    dingtalk.fault(FaultCommand::Slow { millis: 400 }).unwrap();
    let posted = [
        say(
            &dingtalk,
            ConversationKind::Single,
            None,
            "kim",
            "Write a sentence about the sea.",
            false,
        ),
        say(
            &dingtalk,
            ConversationKind::Single,
            None,
            "lee",
            "Write a sentence about the sky.",
            false,
        ),
        say(
            &dingtalk,
            ConversationKind::Group,
            Some("cidCrash"),
            "max",
            "Write a sentence about trees.",
            true,
        ),
    ];
    dingtalk
        .wait_for(PATIENCE, |w| {
            let cards: Vec<_> = w.conversation_ids().iter().flat_map(|id| w.cards_in(id)).collect();
            let acked = w.stats().callbacks_acked == posted.len() as u64;
            (acked && !cards.is_empty()).then_some(())
        })
        .await
        .unwrap();
    let finished_before = dingtalk.inspect(|w| {
        w.conversation_ids()
            .iter()
            .flat_map(|id| w.cards_in(id))
            .filter(|c| c.status == CardStatus::Finished)
            .count()
    });
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    assert!(
        finished_before < posted.len(),
        "the process died with answers in flight"
    );

    dingtalk.fault(FaultCommand::Clear).unwrap();
    let mut second = spawn_hearth(&dingtalk, &db);
    let cards = dingtalk.wait_for(PATIENCE, all_answered).await;
    let _ = Command::new("kill").args(["-TERM", &second.id().to_string()]).status();
    let status = second.wait().unwrap();
    assert_eq!(cards.unwrap(), posted.len());
    assert!(status.success(), "hearth serve exits cleanly on SIGTERM: {status:?}");
    dingtalk.shutdown().await.unwrap();
}

/// Every card the platform holds.
pub(crate) fn all_cards(world: &World) -> Vec<Card> {
    world
        .conversation_ids()
        .iter()
        .flat_map(|id| world.cards_in(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_zombies_429s_and_a_kill_9_in_one_run_settle_every_message_exactly_once() {
    let dingtalk = faulty_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite3");
    // The default keepalive (ping every 5 s, pong deadline 10 s, idle timeout 60 s) and a short card retry
    // bound.
    let config = DingTalkConfig {
        card_retry_secs: 2,
        ..connector_config(&dingtalk, &db)
    };
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut hearth = spawn_hearth_configured(&config, dir.path(), &first_log);
    let expect_first = |what: &str| format!("{what}; first hearth's log:\n{}", log_tail(&first_log));
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("connected")));

    // A fifth of card updates fail with 429 for the whole run.
    let storm = FaultCommand::CardUpdateFailures {
        fraction: 0.2,
        status: 429,
    };
    dingtalk.fault(storm.clone()).unwrap();
    let mut posted = Vec::new();
    for (i, user) in ["s1", "s2", "s3"].iter().enumerate() {
        posted.push(if i == 0 {
            say(&dingtalk, ConversationKind::Single, None, user, "Name a color.", false)
        } else {
            say(
                &dingtalk,
                ConversationKind::Group,
                Some("cidRun"),
                user,
                "Name a fruit.",
                true,
            )
        });
    }
    // A disconnect notice while those are answered: the connector moves to a new connection.
    assert_eq!(
        dingtalk
            .fault(FaultCommand::Disconnect {
                connection: None,
                reason: None
            })
            .unwrap(),
        1
    );
    let moved = |w: &World| (w.stats().connections_opened >= 2 && w.stats().live_connections == 1).then_some(());
    dingtalk
        .wait_for(PATIENCE, moved)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("reconnected after the disconnect notice")));

    // The network path dies silently (no frame, no pong): the next pushes vanish until hearth's own ping
    // goes unanswered and it reconnects; the platform redelivers them. Each question asked meanwhile gets
    // its first text within 20 s.
    assert_eq!(dingtalk.fault(FaultCommand::Silence { connection: None }).unwrap(), 1);
    posted.push(say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "z1",
        "Say hello.",
        false,
    ));
    posted.push(say(
        &dingtalk,
        ConversationKind::Group,
        Some("cidSilent"),
        "z2",
        "Name an animal.",
        true,
    ));
    let silenced: Vec<String> = posted[posted.len() - 2..]
        .iter()
        .map(|p| p.conversation_id.clone())
        .collect();
    let latencies = |w: &World| {
        silenced
            .iter()
            .map(|c| first_text_ms(w, c))
            .collect::<Option<Vec<u64>>>()
    };
    let latencies = dingtalk
        .wait_for(PATIENCE, latencies)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("the silent socket was replaced")));
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!("silent socket: first text after {latencies:?} ms");
    assert!(
        worst < 20_000,
        "first text {worst} ms after the question behind a silent socket"
    );
    assert!(
        dingtalk.inspect(|w| w.stats().connections_opened) >= 3,
        "the silent socket was replaced"
    );

    // Every card call throttled: the answer arrives as markdown within the retry bound, and once the
    // platform lets card calls through the card ends failed, never left typing.
    dingtalk
        .fault(FaultCommand::CardUpdateFailures {
            fraction: 1.0,
            status: 429,
        })
        .unwrap();
    posted.push(say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "t1",
        "Name a shape.",
        false,
    ));
    let throttled = posted[posted.len() - 1].conversation_id.clone();
    dingtalk
        .wait_for(PATIENCE, |w| {
            (!robot_messages(w, &throttled, "sessionWebhook").is_empty()).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("the throttled answer arrived as markdown")));
    dingtalk.fault(FaultCommand::Clear).unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| {
            w.cards_in(&throttled)
                .first()
                .filter(|c| c.status == CardStatus::Failed && c.flow_status.as_deref() == Some("5"))
                .map(drop)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("the throttled card ended failed")));
    dingtalk.fault(storm.clone()).unwrap();
    let count = posted.len() as u64;
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().callbacks_acked == count).then_some(()))
        .await
        .unwrap();

    // Slow card calls keep the next answers in flight: SIGKILL once every push is ACKed and a card is open.
    dingtalk.fault(FaultCommand::Slow { millis: 400 }).unwrap();
    posted.push(say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "k1",
        "Write a sentence about the sea.",
        false,
    ));
    posted.push(say(
        &dingtalk,
        ConversationKind::Group,
        Some("cidCrash"),
        "k2",
        "Write a sentence about trees.",
        true,
    ));
    let count = posted.len() as u64;
    let in_flight = |w: &World| {
        let open = all_cards(w)
            .iter()
            .any(|c| !matches!(c.status, CardStatus::Finished | CardStatus::Failed));
        (w.stats().callbacks_acked == count && open).then_some(())
    };
    dingtalk
        .wait_for(PATIENCE, in_flight)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("answers in flight")));
    hearth.kill().expect("SIGKILL");
    hearth.wait().unwrap();
    let finished = dingtalk.inspect(|w| all_cards(w).iter().filter(|c| c.status == CardStatus::Finished).count());
    assert!(finished < posted.len(), "the process died with answers in flight");

    // The restarted process resumes what it had ACKed, under the same 429 storm, and answers new messages.
    dingtalk.fault(FaultCommand::Clear).unwrap();
    dingtalk.fault(storm).unwrap();
    let opened = dingtalk.inspect(|w| w.stats().connections_opened);
    let mut hearth = spawn_hearth_configured(&config, dir.path(), &second_log);
    let expect_second = |what: &str| format!("{what}; second hearth's log:\n{}", log_tail(&second_log));
    let back = |w: &World| (w.stats().connections_opened > opened && w.stats().live_connections == 1).then_some(());
    dingtalk
        .wait_for(PATIENCE, back)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_second("reconnected after the restart")));
    posted.push(say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "s1",
        "Name a number.",
        false,
    ));
    let settled = dingtalk.wait_for(PATIENCE, settled_cards).await;
    let _ = Command::new("kill").args(["-TERM", &hearth.id().to_string()]).status();
    let status = hearth.wait().unwrap();
    assert_eq!(
        settled.unwrap_or_else(|e| panic!("{e}: {}", expect_second("every message settled"))),
        posted.len()
    );
    assert!(status.success(), "hearth serve exits cleanly on SIGTERM: {status:?}");

    assert_eq!(
        dingtalk.inspect(settled_cards),
        Some(posted.len()),
        "nothing was answered twice afterwards"
    );
    let (stats, rejected) =
        dingtalk.inspect(|w| (w.stats(), all_cards(w).iter().map(|c| c.rejected_calls).sum::<u32>()));
    assert!(rejected > 0, "the 429 storm hit some card calls");
    assert!(stats.disconnects_sent >= 1 && stats.redeliveries >= 1, "{stats:?}");
    let outbox = gateway::dingtalk::Outbox::open(&db, DEFAULT_CLIENT_ID).unwrap();
    for message in &posted {
        let state = outbox.state(&message.msg_id).await.unwrap();
        assert!(
            matches!(state.as_deref(), Some("answered" | "answered_markdown")),
            "{}: {state:?}",
            message.msg_id
        );
    }
    dingtalk.shutdown().await.unwrap();
}

/// Milliseconds from the (first) user message in `conversation` to the first text its answer's card showed.
fn first_text_ms(world: &World, conversation: &str) -> Option<u64> {
    let asked = world
        .conversation(conversation)?
        .messages
        .iter()
        .find_map(|m| match m {
            ChatEntry::User { at_ms, .. } => Some(*at_ms),
            _ => None,
        })?;
    let shown = world
        .cards_in(conversation)
        .first()?
        .updates
        .iter()
        .find(|u| u.api == "streaming")?
        .at_ms;
    Some(shown.saturating_sub(asked))
}

/// The text of every robot message sent into `conversation` through `via` (`sessionWebhook` or `robotApi`).
pub(crate) fn robot_messages(world: &World, conversation: &str, via_wanted: &str) -> Vec<String> {
    world
        .conversation(conversation)
        .map(|c| {
            c.messages
                .iter()
                .filter_map(|m| match m {
                    ChatEntry::Robot { via, text, .. } if via == via_wanted => Some(text.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_card_permissions_fall_back_to_markdown_once() {
    // Streaming refused (Card.Streaming.Write): the answer goes out through the sessionWebhook. The tokens
    // are expired too, so the first call also exercises refresh-and-retry.
    let dingtalk = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let connector = DingTalkConnector::start(
        connector_config(&dingtalk, &dir.path().join("a.sqlite3")),
        shared_models(),
    )
    .await
    .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    // One normal answer first, so the connector holds a token when they expire.
    say(&dingtalk, ConversationKind::Single, None, "warmup", "Hi.", false);
    dingtalk.wait_for(PATIENCE, all_answered).await.unwrap();
    dingtalk
        .fault(FaultCommand::RevokePermission {
            permission: emulator::dingtalk::PERM_CARD_STREAMING.to_owned(),
        })
        .unwrap();
    dingtalk.fault(FaultCommand::ExpireTokens).unwrap();
    let asked = say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "nina",
        "What is two plus two?",
        false,
    );
    let sent = dingtalk
        .wait_for(PATIENCE, |w| {
            Some(robot_messages(w, &asked.conversation_id, "sessionWebhook")).filter(|m| !m.is_empty())
        })
        .await
        .unwrap();
    // The status page names the refused permission.
    let health = connector.health().view();
    let missing: Vec<&str> = health
        .missing_permissions
        .iter()
        .map(|m| m.permission.as_str())
        .collect();
    assert_eq!((health.status, missing), ("degraded", vec!["Card.Streaming.Write"]));
    assert!(health
        .last_problem
        .unwrap()
        .message
        .contains("lacks the `Card.Streaming.Write` permission"));
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].trim().is_empty());
    assert_eq!(
        outbox.state(&asked.msg_id).await.unwrap().as_deref(),
        Some("answered_markdown")
    );
    assert!(
        dingtalk.inspect(|w| w.stats().tokens_issued) >= 2,
        "the expired token was replaced"
    );
    dingtalk.shutdown().await.unwrap();

    // Card creation refused (Card.Instance.Write) and the sessionWebhook about to expire: the robot send API.
    let dingtalk = emulator(|c| c.session_webhook_ttl = Duration::from_secs(1)).await;
    let connector = DingTalkConnector::start(
        connector_config(&dingtalk, &dir.path().join("b.sqlite3")),
        shared_models(),
    )
    .await
    .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    dingtalk
        .fault(FaultCommand::RevokePermission {
            permission: emulator::dingtalk::PERM_CARD_INSTANCE.to_owned(),
        })
        .unwrap();
    let asked = say(
        &dingtalk,
        ConversationKind::Group,
        Some("cidNoCards"),
        "omar",
        "Name a planet.",
        true,
    );
    let sent = dingtalk
        .wait_for(PATIENCE, |w| {
            Some(robot_messages(w, "cidNoCards", "robotApi")).filter(|m| !m.is_empty())
        })
        .await
        .unwrap();
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        outbox.state(&asked.msg_id).await.unwrap().as_deref(),
        Some("answered_markdown")
    );
    assert!(dingtalk.inspect(|w| w.cards_in("cidNoCards").is_empty()));
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_session_webhook_hands_the_fallback_to_the_robot_send_api() {
    // Two webhook messages a minute per robot; card creation refused, so every answer is a fallback.
    let dingtalk = emulator(|c| c.webhook_messages_per_minute = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let connector = DingTalkConnector::start(
        connector_config(&dingtalk, &dir.path().join("outbox.sqlite3")),
        shared_models(),
    )
    .await
    .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    dingtalk
        .fault(FaultCommand::RevokePermission {
            permission: emulator::dingtalk::PERM_CARD_INSTANCE.to_owned(),
        })
        .unwrap();
    let mut posted = Vec::new();
    let mut routes = Vec::new();
    for user in ["w1", "w2", "w3", "w4"] {
        // `help` is a built-in skill: a fixed answer, no model.
        let asked = say(&dingtalk, ConversationKind::Single, None, user, "help", false);
        let via = |w: &World| {
            w.conversation(&asked.conversation_id)?
                .messages
                .iter()
                .find_map(|m| match m {
                    ChatEntry::Robot { via, .. } => Some(via.clone()),
                    _ => None,
                })
        };
        routes.push(dingtalk.wait_for(PATIENCE, via).await.unwrap());
        posted.push(asked);
    }
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(routes, ["sessionWebhook", "sessionWebhook", "robotApi", "robotApi"]);
    assert_eq!(
        dingtalk.inspect(|w| w.stats().webhooks_throttled),
        1,
        "once throttled, the connector leaves the webhooks alone"
    );
    for asked in &posted {
        let replies = dingtalk.inspect(|w| {
            [
                robot_messages(w, &asked.conversation_id, "sessionWebhook"),
                robot_messages(w, &asked.conversation_id, "robotApi"),
            ]
            .concat()
        });
        assert_eq!(replies.len(), 1, "one reply each");
        assert_eq!(
            outbox.state(&asked.msg_id).await.unwrap().as_deref(),
            Some("answered_markdown")
        );
    }
    dingtalk.shutdown().await.unwrap();
}

/// The shared engine behind a router, as `hearth serve` hands it to the connector.
pub(crate) fn shared_models() -> std::sync::Arc<gateway::routing::ModelRouter> {
    std::sync::Arc::new(gateway::routing::ModelRouter::single(
        crate::support::MODEL_NAME,
        shared_engine(),
    ))
}

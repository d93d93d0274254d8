//! The Feishu connector under every fault in one run, with `hearth serve` as a real process: a closed
//! socket, a zombie socket, 429 on a fifth of OpenAPI and CardKit calls, tenant tokens expiring, duplicate
//! pushes, and a SIGKILL mid-stream followed by a restart. Every message must still end with exactly one
//! answer, none lost, none doubled.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use emulator::feishu::{FaultCommand, PostedMessage, World, DEFAULT_APP_ID};
use gateway::feishu::FeishuConfig;

use crate::dingtalk::{log_tail, PATIENCE};
use crate::feishu::{all_cards, answers, connector_config, emulator, say, settled};
use crate::support::model_path;

/// `hearth serve` with `config` as its `--feishu-config` file, logging to `log`.
fn spawn_hearth(config: &FeishuConfig, dir: &Path, log: &Path) -> Child {
    let file = dir.join("feishu.toml");
    std::fs::write(&file, toml::to_string(config).expect("the config serializes")).unwrap();
    let log = std::fs::File::create(log).expect("the log file opens");
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--port", "0", "--ctx-size", "1024", "--model"])
        .arg(model_path())
        .arg("--feishu-config")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("the hearth binary starts")
}

/// Every pushed event answered, and `count` events posted.
fn all_acked(world: &World, count: u64) -> Option<()> {
    let stats = world.stats();
    (stats.unacked == 0 && stats.events_acked >= count).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feishu_closed_and_zombie_sockets_429s_token_expiry_duplicates_and_a_kill_9_settle_every_message_exactly_once()
{
    // Unanswered pushes come again after 1 s (the platform waits 15 s first).
    let feishu = emulator(|c| {
        c.retry_intervals = vec![Duration::from_secs(1); 8];
        c.api_calls_per_window = 0;
        c.api_calls_per_minute = 0;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite3");
    // A zombie is found by silence: no event for 3 s replaces the connection.
    let config = FeishuConfig {
        idle_timeout_secs: 3,
        ping_interval_secs: 1,
        pong_timeout_secs: 2,
        card_retry_secs: 5,
        ..connector_config(&feishu, &db)
    };
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut hearth = spawn_hearth(&config, dir.path(), &first_log);
    let expect_first = |what: &str| format!("{what}; first hearth's log:\n{}", log_tail(&first_log));
    feishu
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("connected")));

    // For the whole run: 429 on a fifth of the calls, and half of the pushes pushed twice.
    let storm = FaultCommand::RateLimitStorm { fraction: 0.2 };
    let duplicates = FaultCommand::DuplicatePushes { fraction: 0.5 };
    feishu.fault(storm.clone()).unwrap();
    feishu.fault(duplicates.clone()).unwrap();
    let mut posted: Vec<PostedMessage> = vec![
        say(&feishu, None, "s1", "Name a color.", false),
        say(&feishu, Some("oc_run"), "s2", "Name a fruit.", true),
        say(&feishu, Some("oc_run"), "s3", "Name a city.", true),
    ];

    // The platform closes the socket: hearth opens a new one.
    let opened = feishu.inspect(|w| w.stats().connections_opened);
    assert_eq!(feishu.fault(FaultCommand::Close { connection: None }).unwrap(), 1);
    feishu
        .wait_for(PATIENCE, |w| {
            (w.stats().connections_opened > opened && w.stats().live_connections == 1).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("reconnected after the close")));

    // A zombie: pongs still come, pushes vanish. hearth replaces it after its idle timeout and the platform
    // pushes the swallowed events again.
    let opened = feishu.inspect(|w| w.stats().connections_opened);
    assert!(feishu.fault(FaultCommand::Zombie { connection: None }).unwrap() >= 1);
    posted.push(say(&feishu, None, "z1", "Say hello.", false));
    posted.push(say(&feishu, Some("oc_zombie"), "z2", "Name an animal.", true));
    feishu
        .wait_for(PATIENCE, |w| (w.stats().connections_opened > opened).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("the zombie was replaced")));

    // Every tenant token expires: calls refused 99991663 are tried again with a new token.
    let issued = feishu.inspect(|w| w.stats().tokens_issued);
    feishu.fault(FaultCommand::ExpireTokens).unwrap();
    posted.push(say(&feishu, None, "t1", "Name a shape.", false));
    let count = posted.len() as u64;
    feishu
        .wait_for(PATIENCE, |w| all_acked(w, count))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("every push answered")));

    // Slow calls keep the next answers streaming: SIGKILL once every push is answered and a card streams.
    feishu.fault(FaultCommand::Slow { millis: 400 }).unwrap();
    posted.push(say(&feishu, None, "k1", "Write a sentence about the sea.", false));
    posted.push(say(
        &feishu,
        Some("oc_crash"),
        "k2",
        "Write a sentence about trees.",
        true,
    ));
    let count = posted.len() as u64;
    let streaming = |w: &World| {
        let open = all_cards(w).iter().any(|c| c.streaming_mode && c.message_id.is_some());
        (all_acked(w, count).is_some() && open).then_some(())
    };
    feishu
        .wait_for(PATIENCE, streaming)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_first("answers streaming")));
    hearth.kill().expect("SIGKILL");
    hearth.wait().unwrap();
    assert!(
        feishu.inspect(|w| settled(w, &posted)).is_none(),
        "the process died with answers in flight"
    );

    // The restarted process resumes what it had answered the platform for, under the same faults, and
    // answers new messages.
    feishu.fault(FaultCommand::Clear).unwrap();
    feishu.fault(storm).unwrap();
    feishu.fault(duplicates).unwrap();
    let opened = feishu.inspect(|w| w.stats().connections_opened);
    let mut hearth = spawn_hearth(&config, dir.path(), &second_log);
    let expect_second = |what: &str| format!("{what}; second hearth's log:\n{}", log_tail(&second_log));
    feishu
        .wait_for(PATIENCE, |w| (w.stats().connections_opened > opened).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", expect_second("reconnected after the restart")));
    posted.push(say(&feishu, None, "s1", "Name a number.", false));
    let all = feishu.wait_for(PATIENCE, |w| settled(w, &posted)).await;
    let _ = Command::new("kill").args(["-TERM", &hearth.id().to_string()]).status();
    let status = hearth.wait().unwrap();
    let all = all.unwrap_or_else(|e| panic!("{e}: {}", expect_second("every message settled")));
    assert!(status.success(), "hearth serve exits cleanly on SIGTERM: {status:?}");

    for (message, answer) in posted.iter().zip(&all) {
        assert_eq!(answer.delivered(), 1, "exactly one answer to {message:?}: {answer:?}");
        assert_eq!(
            feishu.inspect(|w| answers(w, &message.chat_id, &message.message_id).delivered()),
            1
        );
    }
    let (stats, cards) = feishu.inspect(|w| (w.stats(), all_cards(w)));
    eprintln!("faults run: {stats:?}");
    assert!(stats.rate_limited > 0, "the 429 storm hit some calls");
    assert!(stats.duplicate_pushes > 0, "some events were pushed twice");
    assert!(stats.redeliveries > 0, "the zombie's pushes came again");
    assert!(stats.tokens_issued > issued, "a new token after the expiry");
    assert!(cards
        .iter()
        .filter(|c| c.message_id.is_some())
        .all(|c| !c.streaming_mode));
    let streamed = cards
        .iter()
        .flat_map(|c| c.history.iter())
        .filter(|op| op.api == "content")
        .count();
    assert!(streamed > 0, "cards were streamed");
    let outbox =
        gateway::im::outbox::Outbox::open(&gateway::db::Database::open(&db).unwrap(), "feishu", DEFAULT_APP_ID)
            .unwrap();
    for message in &posted {
        let state = outbox.state(&message.message_id).await.unwrap();
        assert!(
            matches!(state.as_deref(), Some("answered" | "answered_markdown")),
            "{}: {state:?}",
            message.message_id
        );
    }
    feishu.shutdown().await.unwrap();
}

//! Two `hearth serve` nodes answer one DingTalk app from one PostgreSQL store (a throwaway server): the
//! platform spreads the pushes over both nodes' connections, each message is stored once with its dedupe
//! key, and a node that dies loses its unfinished messages to the other once their leases run out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use emulator::dingtalk::{ConversationKind, FaultCommand};
use gateway::dingtalk::DingTalkConfig;

use crate::dingtalk::{all_answered, connector_config, emulator, log_tail, say, spawn_hearth_configured};
use crate::store_support::shared_postgres;

/// Long enough for 100 model answers through two processes on a busy two-core machine; the waits end as
/// soon as their condition holds.
const PATIENCE: Duration = Duration::from_secs(600);

/// Node `node`'s config: the shared store, short leases, its own name.
fn node_config(base: &DingTalkConfig, store: &str, node: &str) -> DingTalkConfig {
    DingTalkConfig {
        database: PathBuf::from(store),
        node_id: node.to_owned(),
        lease_secs: 3,
        ..base.clone()
    }
}

/// Start node `name` in its own directory under `dir`.
fn start(config: &DingTalkConfig, dir: &Path, name: &str) -> (Child, PathBuf) {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let log = home.join("hearth.log");
    (spawn_hearth_configured(config, &home, &log), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_store_answer_every_message_once_when_one_is_killed_and_restarted() {
    let dingtalk = emulator(|c| c.redelivery_after = Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = shared_postgres().create_database().unwrap();
    let base = connector_config(&dingtalk, &dir.path().join("unused.sqlite3"));
    let (one, two) = (
        node_config(&base, &store, "node-1"),
        node_config(&base, &store, "node-2"),
    );
    let (mut first, first_log) = start(&one, dir.path(), "node-1");
    let (mut second, second_log) = start(&two, dir.path(), "node-2");
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 2).then_some(()))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "both nodes connect\n{}\n{}",
                log_tail(&first_log),
                log_tail(&second_log)
            )
        });

    // Slow card calls, so answers are mid-flight when node 1 dies. 20 users × 5 messages, in 1:1 chats
    // and 5 groups.
    dingtalk.fault(FaultCommand::Slow { millis: 300 }).unwrap();
    for round in 0..5 {
        for user in 0..20 {
            let name = format!("user{user}");
            let text = format!("Question {round}: name a color.");
            if user % 2 == 0 {
                say(&dingtalk, ConversationKind::Single, None, &name, &text, false);
            } else {
                let group = format!("cidNodes{}", user % 5);
                say(&dingtalk, ConversationKind::Group, Some(&group), &name, &text, true);
            }
        }
    }
    // Node 1 holds unfinished messages (read from the store), so killing it leaves answers only a lease
    // claim can finish: the platform's redeliveries of them are known duplicates.
    let held = held_by(&store, "node-1").await;
    assert!(held > 0, "node 1 holds messages when it dies");
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let answered_before = dingtalk.inspect(|w| {
        crate::dingtalk::all_cards(w)
            .iter()
            .filter(|c| c.status == emulator::dingtalk::CardStatus::Finished)
            .count()
    });
    assert!(answered_before < 100, "node 1 died with answers in flight");

    // Node 2 takes over what node 1 held once the leases run out, and what the platform redelivers.
    dingtalk.fault(FaultCommand::Clear).unwrap();
    let answered = dingtalk.wait_for(PATIENCE, all_answered).await;
    assert_eq!(
        answered.unwrap_or_else(|_| panic!("every message answered\n{}", log_tail(&second_log))),
        100
    );

    // Node 1 comes back: it finds nothing of its own left to answer, and nothing is answered twice.
    let (mut first, first_log) = start(&one, dir.path(), "node-1");
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 2).then_some(()))
        .await
        .unwrap_or_else(|_| panic!("node 1 reconnects\n{}", log_tail(&first_log)));
    for node in [&mut first, &mut second] {
        let _ = Command::new("kill").args(["-TERM", &node.id().to_string()]).status();
        let status = node.wait().unwrap();
        assert!(status.success(), "hearth serve exits cleanly on SIGTERM: {status:?}");
    }
    // all_answered panics on a second answer to any message.
    assert_eq!(dingtalk.inspect(all_answered), Some(100));
    let log = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(
        log.contains("whose node's lease ran out"),
        "node 2 claimed node 1's messages\n{log}"
    );
    dingtalk.shutdown().await.unwrap();
}

/// Once node `node` holds an unfinished message in `store`: how many it holds (polled until it holds one).
async fn held_by(store: &str, node: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(store, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let held: i64 = client
            .query_one(
                "SELECT count(*) FROM inbound WHERE owner = $1 AND state = 'accepted'",
                &[&node],
            )
            .await
            .unwrap()
            .get(0);
        if held > 0 || tokio::time::Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

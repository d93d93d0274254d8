//! The WeCom connector through faults, with `hearth serve` as a child process over the long connection: a
//! dropped socket, duplicate pushes, expired streams, a takeover by another instance and a `kill -9`
//! mid-stream followed by a restart, in one run. Every message must still end with exactly one finished
//! answer (a finished stream, or one message sent in its place): none lost, none doubled.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use emulator::wecom::{FaultCommand, StreamStatus, WeComEmulator, World, DEFAULT_BOT_ID, DEFAULT_SECRET};
use futures::{SinkExt, StreamExt};
use gateway::wecom::{Mode, WeComConfig, WeComConnector};
use tokio_tungstenite::tungstenite::Message;

use crate::dingtalk::{log_tail, shared_models};
use crate::support::model_path;
use crate::wecom::{connector_config, emulator, post_questions, settled, PATIENCE};

/// A question whose answer streams for seconds (to `max_answer_tokens`), so the faults land mid-stream: a
/// short one ("name a color", 6 tokens) can finish before the fault on a quiet machine.
const LONG: &str = "write a long story about the sea.";

/// `hearth serve` with `[wecom]` = `config` (written to `dir`), logging to `log`.
fn spawn_hearth(config: &WeComConfig, dir: &Path, log: &Path) -> Child {
    let file = dir.join("hearth.toml");
    let section = toml::to_string(config).expect("the config serializes");
    std::fs::write(&file, format!("[wecom]\n{section}")).unwrap();
    let log = std::fs::File::create(log).expect("the log file opens");
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--port", "0", "--ctx-size", "1024", "--model"])
        .arg(model_path())
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the hearth binary starts")
}

/// `Some(true)` once every message of `ids` has a stream and one of them is still open: all are stored, and
/// the answers are mid-stream. `Some(false)` once they all have streams none of which is open: the waiter
/// missed the mid-stream moment (changes between two of its checks are seen together), and must not wait
/// for a moment that has passed.
fn mid_stream(world: &World, ids: &[String]) -> Option<bool> {
    let messages: Vec<_> = ids.iter().filter_map(|id| world.message(id)).collect();
    let all_streaming = messages.len() == ids.len() && messages.iter().all(|m| !m.stream_ids.is_empty());
    let open = messages
        .iter()
        .flat_map(|m| &m.stream_ids)
        .any(|id| world.stream(id).is_some_and(|s| s.status == StreamStatus::Open));
    all_streaming.then_some(open)
}

/// Wait for `ids` to be [`mid_stream`]; whether a stream was still open (false: the moment was missed).
async fn await_mid_stream(wecom: &WeComEmulator, ids: &[String], log: &Path) -> bool {
    let open = wecom
        .wait_for(PATIENCE, |w| mid_stream(w, ids))
        .await
        .unwrap_or_else(|err| panic!("the batch did not start streaming: {err}\n{}", log_tail(log)));
    if !open {
        eprintln!("every answer of the batch finished before the fault (the machine outran the check)");
    }
    open
}

/// Take the robot over from another WeCom client, as a second instance would, then leave.
async fn take_over(wecom: &WeComEmulator) {
    let (mut socket, _) = tokio_tungstenite::connect_async(wecom.ws_url()).await.unwrap();
    let subscribe = serde_json::json!({
        "cmd": "aibot_subscribe",
        "headers": {"req_id": "aibot_subscribe_1_0000beef"},
        "body": {"bot_id": DEFAULT_BOT_ID, "secret": DEFAULT_SECRET},
    });
    socket.send(Message::Text(subscribe.to_string().into())).await.unwrap();
    let ack = socket.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("\"errcode\":0"), "{ack:?}");
    wecom
        .wait_for(PATIENCE, |w| (w.stats().takeovers == 1).then_some(()))
        .await
        .unwrap();
    socket.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_duplicates_expiries_a_takeover_and_a_kill_9_in_one_run_settle_every_message_exactly_once() {
    let wecom = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = (dir.path().join("outbox.sqlite3"), dir.path().join("hearth.log"));
    let config = WeComConfig {
        // Only so that this test's own takeover ends; the default never takes the robot back.
        reconnect_after_takeover_secs: 1,
        // Longer answers keep streams open for seconds, so the faults below land mid-stream.
        max_answer_tokens: 96,
        ..connector_config(&wecom, &db, Mode::LongConnection)
    };
    let mut hearth = spawn_hearth(&config, dir.path(), &log);
    wecom
        .wait_for(PATIENCE, |w| w.subscribed().then_some(()))
        .await
        .unwrap_or_else(|err| panic!("hearth did not subscribe: {err}\n{}", log_tail(&log)));
    wecom.fault(FaultCommand::DuplicatePushes { fraction: 0.5 }).unwrap();
    let mut posted = Vec::new();

    // A dropped socket mid-stream.
    let batch = post_questions(&wecom, 20, 1, LONG);
    let _ = await_mid_stream(&wecom, &batch, &log).await;
    assert_eq!(wecom.fault(FaultCommand::Disconnect { connection: None }).unwrap(), 1);
    posted.extend(batch);

    // Streams expired mid-stream: what is left goes out with aibot_send_msg.
    let batch = post_questions(&wecom, 20, 1, LONG);
    let expired_mid_stream = await_mid_stream(&wecom, &batch, &log).await;
    wecom.fault(FaultCommand::ExpireStreams).unwrap();
    posted.extend(batch);
    wecom
        .wait_for(PATIENCE, |w| settled(w).filter(|(s, m)| s + m == posted.len()))
        .await
        .unwrap_or_else(|err| panic!("not settled: {err}\n{}", log_tail(&log)));

    // Another instance takes the robot over and leaves again; hearth comes back without a takeover of its own.
    let subscribed = wecom.inspect(|w| w.stats().subscribes_ok);
    take_over(&wecom).await;
    wecom
        .wait_for(PATIENCE, |w| {
            (w.subscribed() && w.stats().subscribes_ok >= subscribed + 2).then_some(())
        })
        .await
        .unwrap_or_else(|err| panic!("hearth did not come back: {err}\n{}", log_tail(&log)));

    // kill -9 mid-stream, then a restart on the same outbox.
    let batch = post_questions(&wecom, 20, 1, LONG);
    let _ = await_mid_stream(&wecom, &batch, &log).await;
    hearth.kill().unwrap();
    hearth.wait().unwrap();
    posted.extend(batch);
    let log2 = dir.path().join("hearth-2.log");
    let mut hearth = spawn_hearth(&config, dir.path(), &log2);
    let (by_stream, by_message) = wecom
        .wait_for(PATIENCE, |w| settled(w).filter(|(s, m)| s + m == posted.len()))
        .await
        .unwrap_or_else(|err| panic!("not settled after the restart: {err}\n{}", log_tail(&log2)));
    eprintln!("faults: {by_stream} answers streamed, {by_message} sent as messages");
    if expired_mid_stream {
        assert!(by_message > 0, "expired streams were answered with aibot_send_msg");
    }

    let stats = wecom.inspect(World::stats);
    assert!(stats.duplicate_pushes > 0);
    assert_eq!(stats.takeovers, 1, "hearth never took the robot from another instance");
    let first_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        first_log.contains("took the WeCom robot over"),
        "the takeover is logged"
    );
    // The platform has every answer; hearth settles each row right after its last frame (a separate
    // process: its database is polled).
    let database = gateway::db::Database::open(&db).unwrap();
    let outbox = gateway::im::outbox::Outbox::open(&database, "wecom", DEFAULT_BOT_ID).unwrap();
    let all_settled = async {
        loop {
            let mut unsettled = Vec::new();
            for msgid in &posted {
                let state = outbox.state(msgid).await.unwrap();
                if !matches!(state.as_deref(), Some("answered" | "answered_markdown")) {
                    unsettled.push((msgid.clone(), state));
                }
            }
            if unsettled.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all_settled)
        .await
        .unwrap_or_else(|_| panic!("rows left unsettled\n{}", log_tail(&log2)));
    hearth.kill().unwrap();
    hearth.wait().unwrap();
    wecom.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_is_not_fought_and_shows_on_the_status_page() {
    let wecom = emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let config = connector_config(&wecom, &dir.path().join("outbox.sqlite3"), Mode::LongConnection);
    assert_eq!(
        config.reconnect_after_takeover_secs, 0,
        "the default never takes the robot back"
    );
    let connector = WeComConnector::start(config, shared_models()).await.unwrap();
    wecom
        .wait_for(PATIENCE, |w| w.subscribed().then_some(()))
        .await
        .unwrap();
    take_over(&wecom).await;
    // The connector notices the takeover (the status page shows it) and stays off: once the other
    // instance has left, nothing subscribes again, however long the heartbeats run.
    let health = connector.health().clone();
    let shown = async {
        loop {
            let view = health.view();
            if !view.connected && view.last_problem.is_some_and(|p| p.message.contains("taken over")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, shown)
        .await
        .expect("the takeover shows on the status page");
    let quiet = wecom
        .wait_for(Duration::from_secs(3), |w| (w.stats().subscribes_ok > 2).then_some(()))
        .await;
    assert!(quiet.is_err(), "the connector subscribed again after a takeover");
    assert_eq!(health.view().status, "down");
    connector.shutdown(Duration::from_secs(5)).await;
    wecom.shutdown().await.unwrap();
}

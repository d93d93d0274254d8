//! A Feishu app without a scope it needs: `hearth doctor` names the refused scope, and a running connector
//! names it on the status page (its health) while answers go out as text replies, until the scope is
//! granted again.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use emulator::feishu::{FaultCommand, DEFAULT_APP_ID, DEFAULT_APP_SECRET};
use gateway::feishu::{FeishuConfig, FeishuConnector};
use gateway::skills::{SkillSet, SkillsConfig};

use crate::dingtalk::{shared_models, PATIENCE};
use crate::feishu::{answers, connector_config, emulator, say, settled};
use crate::support::model_path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_scope_is_named_by_doctor_and_on_the_status_page() {
    let feishu = emulator(|_| {}).await;
    feishu
        .fault(FaultCommand::RevokeScope {
            scope: "cardkit:card:write".to_owned(),
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let config = dir.path().join("hearth.toml");
    let text = format!(
        "[data]\ndir = {:?}\n[feishu]\napp_id = {DEFAULT_APP_ID:?}\napp_secret = {DEFAULT_APP_SECRET:?}\ndomain = {:?}\n",
        dir.path().join("data"),
        feishu.base_url()
    );
    fs::write(&config, text).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let model = model_path();
    // The emulator answers on the runtime's other thread while this one waits for the process.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .arg("--config")
            .arg(&config)
            .args(["doctor", "--model", model.to_str().unwrap(), "--port", &port])
            .env_remove("HEARTH_MODEL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("ok    im       Feishu accepts app"), "{report}");
    assert!(
        report.contains("FAIL  im       Feishu refuses the `cardkit:card:write` scope: grant it to app"),
        "{report}"
    );
    assert!(
        report.contains("ok    im       Feishu grants the `im:message:send_as_bot` scope"),
        "{report}"
    );

    // The running connector: the card is refused, the answer goes out as a text reply, and the status page
    // names the scope.
    let skills = Arc::new(SkillSet::new(&SkillsConfig::default()).unwrap());
    let config = FeishuConfig {
        max_answer_tokens: 8,
        ..connector_config(&feishu, &dir.path().join("db.sqlite3"))
    };
    let connector = FeishuConnector::start_with_access(config, shared_models(), skills, Default::default())
        .await
        .unwrap();
    let first = say(&feishu, None, "ann", "Name a color.", false);
    let all = feishu
        .wait_for(PATIENCE, |w| settled(w, std::slice::from_ref(&first)))
        .await
        .unwrap();
    assert_eq!((all[0].texts.len(), all[0].finished.len()), (1, 0), "{:?}", all[0]);
    let health = connector.health().view();
    assert_eq!(health.status, "degraded");
    assert_eq!(
        health
            .missing_permissions
            .iter()
            .map(|m| m.permission.as_str())
            .collect::<Vec<_>>(),
        ["cardkit:card:write"]
    );
    assert!(health
        .last_problem
        .is_some_and(|p| p.message.contains("cardkit:card:write")));

    // Granted again: the next answer is a card, and the status page clears.
    feishu
        .fault(FaultCommand::GrantScope {
            scope: "cardkit:card:write".to_owned(),
        })
        .unwrap();
    let second = say(&feishu, None, "ann", "Name a fruit.", false);
    feishu
        .wait_for(PATIENCE, |w| settled(w, std::slice::from_ref(&second)))
        .await
        .unwrap();
    let answer = feishu.inspect(|w| answers(w, &second.chat_id, &second.message_id));
    assert_eq!(answer.finished.len(), 1, "{answer:?}");
    let health = connector.health().view();
    assert!(health.missing_permissions.is_empty(), "{health:?}");
    assert_eq!(health.status, "ok");
    connector.shutdown(std::time::Duration::from_secs(30)).await;
    feishu.shutdown().await.unwrap();
}

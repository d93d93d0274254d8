//! HTTP skills end to end: the DingTalk emulator, a company endpoint on loopback (a real axum server),
//! the access rules, the audit log in a real SQLite file; and, with Qwen2.5-Coder-1.5B, the skill offered
//! to the model as a tool.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path as UrlPath;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use emulator::dingtalk::{CardStatus, ConversationKind, DingTalkEmulator};
use engine::{Engine, EngineConfig};
use gateway::access_rules::AccessConfig;
use gateway::audit::AuditRecord;
use gateway::dingtalk::{DingTalkConfig, DingTalkConnector};
use gateway::routing::ModelRouter;
use gateway::skills::calls::SkillCall;
use gateway::skills::{CallStatus, HttpSkillConfig, SkillSet, SkillsConfig};

use crate::dingtalk::{connector_config, emulator, say, shared_models, PATIENCE};

/// The secret the endpoint wants in `Authorization`; it must never appear in the audit database.
const TOKEN: &str = "Bearer s3cret-order-token";

/// A company endpoint: `/orders/{id}` (needs the token), `/slow` (never answers), `/broken` (500),
/// `/huge` (more than the skill may read).
async fn endpoint() -> SocketAddr {
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|UrlPath(id): UrlPath<String>, headers: HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
                    return Err(StatusCode::UNAUTHORIZED);
                }
                Ok(Json(
                    serde_json::json!({"order": {"id": id, "status": "shipped", "eta": "Friday"}}),
                ))
            }),
        )
        .route("/slow", get(std::future::pending::<&'static str>))
        .route("/broken", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/huge", get(|| async { "x".repeat(10_000) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn http_skill(name: &str, patterns: &[&str], url: String, secret: &Path) -> HttpSkillConfig {
    let mut config: HttpSkillConfig = toml::from_str(&format!(
        r#"
        name = "{name}"
        description = "Look up the status of an order by its order number."
        url = "{url}"
        response = "Order {{json.order.id}}: {{json.order.status}}, arriving {{json.order.eta}}."
        timeout_ms = 300
        max_response_bytes = 1000
        argument = "the order number, e.g. 42"
        "#
    ))
    .unwrap();
    config.patterns = patterns.iter().map(|p| (*p).to_owned()).collect();
    config
        .secret_headers
        .insert("Authorization".to_owned(), secret.to_owned());
    config
}

/// Post `text` as `user` in their 1:1 chat; the finished card's text once the message's audit record is in.
async fn ask(dingtalk: &DingTalkEmulator, connector: &DingTalkConnector, user: &str, text: &str) -> String {
    let before = dingtalk.inspect(|w| {
        let ids = w.conversation_ids();
        ids.iter()
            .find(|id| w.conversation(id).is_some_and(|c| c.user_id.as_deref() == Some(user)))
            .map_or(0, |id| w.cards_in(id).len())
    });
    let records = connector.audit().records(0).await.unwrap().len() as u64;
    let posted = say(dingtalk, ConversationKind::Single, None, user, text, false);
    let answered = dingtalk
        .wait_for(PATIENCE, |w| {
            let cards = w.cards_in(&posted.conversation_id);
            (cards.len() > before && cards.iter().all(|c| c.status == CardStatus::Finished))
                .then(|| cards[before..].iter().map(|c| c.text.clone()).collect::<String>())
        })
        .await;
    let answer = answered.unwrap_or_else(|e| panic!("no answer to {text:?}: {e}"));
    tokio::time::timeout(PATIENCE, connector.audit().wait_for_records(records + 1))
        .await
        .expect("the audit record was written")
        .unwrap();
    answer
}

async fn calls(connector: &DingTalkConnector) -> Vec<SkillCall> {
    connector.audit().calls(0).await.unwrap()
}

fn handler(records: &[AuditRecord], sender: &str, question: &str) -> String {
    records
        .iter()
        .find(|r| r.sender_id == sender && r.question == question)
        .map(|r| r.handler.to_string())
        .unwrap_or_else(|| panic!("no audit row for {sender} {question:?}: {records:#?}"))
}

/// Everything stored in the database file, as text, to look for the secret.
fn database_text(path: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_http_skills_answer_by_command_refuse_reserved_ones_explain_failures_and_audit_every_call() {
    let api = endpoint().await;
    let dingtalk = emulator(|c| c.qps_per_api = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let secret = dir.path().join("order-token");
    std::fs::write(&secret, format!("{TOKEN}\n")).unwrap();
    let base = format!("http://{api}");
    let skills = SkillsConfig {
        http: vec![
            http_skill("order", &["order"], format!("{base}/orders/{{args}}"), &secret),
            http_skill("payroll", &["payroll"], format!("{base}/orders/{{args}}"), &secret),
            http_skill("slow", &["slow"], format!("{base}/slow"), &secret),
            http_skill("broken", &["broken"], format!("{base}/broken"), &secret),
            http_skill("huge", &["huge"], format!("{base}/huge"), &secret),
        ],
        ..SkillsConfig::default()
    };
    let access: AccessConfig =
        toml::from_str("admin_skills = [\"payroll\"]\n[dingtalk]\nadmins = [\"root\"]\n").unwrap();
    let database = data.join("db.sqlite3");
    let config = DingTalkConfig {
        card_updates_per_second: 200,
        ..connector_config(&dingtalk, &database)
    };
    let connector = DingTalkConnector::start_with_access(
        config,
        shared_models(),
        Arc::new(SkillSet::new(&skills).unwrap()),
        Arc::new(access.rules().unwrap()),
    )
    .await
    .unwrap();

    // The endpoint answers through the template; the URL argument is percent-encoded.
    assert_eq!(
        ask(&dingtalk, &connector, "alice", "/order 4711").await,
        "Order 4711: shipped, arriving Friday."
    );
    assert_eq!(
        ask(&dingtalk, &connector, "alice", "/order A/7 x").await,
        "Order A/7 x: shipped, arriving Friday."
    );
    // A reserved skill: a user is refused, an admin is answered.
    assert_eq!(
        ask(&dingtalk, &connector, "alice", "/payroll 1").await,
        AccessConfig::default().reserved
    );
    assert_eq!(
        ask(&dingtalk, &connector, "root", "/payroll 1").await,
        "Order 1: shipped, arriving Friday."
    );
    // A slow, failing or oversized endpoint: a clear answer, not silence.
    let slow = ask(&dingtalk, &connector, "alice", "/slow").await;
    assert_eq!(
        slow,
        "Sorry, slow did not answer within 300 ms; please try again later."
    );
    let broken = ask(&dingtalk, &connector, "alice", "/broken").await;
    assert_eq!(
        broken,
        "Sorry, broken answered with an error (HTTP 500); please try again later."
    );
    let huge = ask(&dingtalk, &connector, "alice", "/huge").await;
    assert!(huge.contains("more than 1000 bytes"), "{huge}");

    let records = connector.audit().records(0).await.unwrap();
    assert_eq!(handler(&records, "alice", "/order 4711"), "skill:order");
    assert_eq!(
        handler(&records, "alice", "/payroll 1"),
        "refused:the skill \"payroll\" is reserved to admins"
    );
    assert_eq!(handler(&records, "root", "/payroll 1"), "skill:payroll");
    let calls = calls(&connector).await;
    let summary: Vec<(&str, &str, CallStatus, Option<u16>)> = calls
        .iter()
        .map(|c| (c.sender_id.as_str(), c.skill.as_str(), c.status, c.http_status))
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", "order", CallStatus::Ok, Some(200)),
            ("alice", "order", CallStatus::Ok, Some(200)),
            ("alice", "payroll", CallStatus::Refused, None),
            ("root", "payroll", CallStatus::Ok, Some(200)),
            ("alice", "slow", CallStatus::Timeout, None),
            ("alice", "broken", CallStatus::HttpError, Some(500)),
            ("alice", "huge", CallStatus::TooLarge, Some(200)),
        ]
    );
    let slow_call = calls.iter().find(|c| c.skill == "slow").unwrap();
    assert!(
        (300..5_000).contains(&slow_call.latency_ms),
        "the timeout bounds the call: {slow_call:?}"
    );
    assert!(calls.iter().all(|c| c.platform == "dingtalk" && !c.msg_id.is_empty()));
    connector.shutdown(Duration::from_secs(30)).await;
    // The secret reached the endpoint (the orders were answered) but never the disk.
    assert!(!database_text(&database).contains("s3cret-order-token"));
    dingtalk.shutdown().await.unwrap();
}

/// Qwen2.5-Coder-1.5B, which calls tools; its own engine with a small context.
fn qwen_models() -> Arc<ModelRouter> {
    let preset = gateway::presets::Preset::find("qwen2.5-coder-1.5b").expect("the preset exists");
    let path = gateway::model_path::preset_path(preset).expect("HEARTH_MODELS_DIR or HOME must be set");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    let mut config = EngineConfig::new(path);
    config.max_running = 2;
    config.max_waiting = 8;
    config.kv_cache_tokens = 2048;
    config.context_length = Some(1024);
    Arc::new(ModelRouter::single(
        "qwen2.5-coder-1.5b",
        Engine::load(config).expect("the real model loads"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_model_calls_an_http_skill_as_a_tool_and_a_user_without_the_right_is_refused() {
    let api = endpoint().await;
    let dingtalk = emulator(|c| c.qps_per_api = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("order-token");
    std::fs::write(&secret, TOKEN).unwrap();
    let mut order = http_skill("order_status", &[], format!("http://{api}/orders/{{args}}"), &secret);
    order.tool = true;
    order.timeout_ms = 5_000;
    let skills = SkillsConfig {
        http: vec![order],
        ..SkillsConfig::default()
    };
    // The skill is reserved to admins: sales01 is one, bob a plain user.
    let access: AccessConfig =
        toml::from_str("admin_skills = [\"order_status\"]\n[dingtalk]\nadmins = [\"sales01\"]\n").unwrap();
    let config = DingTalkConfig {
        card_updates_per_second: 200,
        max_answer_tokens: 48,
        ..connector_config(&dingtalk, &dir.path().join("db.sqlite3"))
    };
    let connector = DingTalkConnector::start_with_access(
        config,
        qwen_models(),
        Arc::new(SkillSet::new(&skills).unwrap()),
        Arc::new(access.rules().unwrap()),
    )
    .await
    .unwrap();
    let question = "What is the status of my order 4711?";
    assert_eq!(
        ask(&dingtalk, &connector, "sales01", question).await,
        "Order 4711: shipped, arriving Friday."
    );
    assert_eq!(
        ask(&dingtalk, &connector, "bob", question).await,
        AccessConfig::default().reserved
    );
    let records = connector.audit().records(0).await.unwrap();
    assert_eq!(handler(&records, "sales01", question), "skill:order_status");
    assert_eq!(
        handler(&records, "bob", question),
        "refused:the skill \"order_status\" is reserved to admins"
    );
    let calls: Vec<(String, CallStatus)> = calls(&connector)
        .await
        .into_iter()
        .map(|c| (c.sender_id, c.status))
        .collect();
    assert_eq!(
        calls,
        [
            ("sales01".to_owned(), CallStatus::Ok),
            ("bob".to_owned(), CallStatus::Refused)
        ]
    );
    connector.shutdown(Duration::from_secs(30)).await;
    dingtalk.shutdown().await.unwrap();
}

//! Issue 23: admin actions that change state are audited with who did them. Real HTTP against a real
//! server: the record is read back through `GET /admin/audit` and from the SQLite file itself, for the
//! library's server and for `hearth serve`, which keeps the log in its data directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use engine::EngineConfig;
use gateway::access::Scope;
use gateway::admin_log::{AdminAction, AdminLog, AdminOutcome, AdminRecord};
use gateway::config::{KeyEntry, Secret, ServerSection};
use gateway::routing::{CatalogEntry, Loaded, ModelRouter};
use gateway::{AppState, GatewayConfig};
use serde_json::{json, Value};

use crate::support::{load_engine, model_path, shared_engine, spawn_server, Limits};

const ADMIN_TOKEN: &str = "audit-admin-token-0123";
const OPS_KEY: &str = "sk-audit-ops-0123456789";
const CHAT_KEY: &str = "sk-audit-chat-0123456789";

/// `method path` with `key` as the bearer token and `body` as JSON; returns the status and the JSON answer.
async fn call(addr: SocketAddr, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{path}");
    let request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    let request = request.bearer_auth(key);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The rows of the admin audit table in the SQLite file at `path`, oldest first, as
/// (caller, action, target, outcome).
fn rows(path: &Path) -> Vec<(String, String, String, String)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT caller, action, target, outcome FROM admin_audit ORDER BY id")
        .unwrap();
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn row(caller: &str, action: &str, target: &str, outcome: &str) -> (String, String, String, String) {
    (caller.into(), action.into(), target.into(), outcome.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_recorded_with_the_caller_who_made_them() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("hearth.sqlite3");
    let path = model_path();
    let mut template = EngineConfig::new(&path);
    (template.max_running, template.kv_cache_tokens, template.context_length) = (2, 1024, Some(512));
    let catalog = vec![
        CatalogEntry {
            name: "a".into(),
            path: path.clone(),
        },
        CatalogEntry { name: "b".into(), path },
    ];
    // Its own engine: switching models stops the active one, which must not be the shared engine.
    let router = ModelRouter::new(
        Arc::new(Loaded {
            name: "a".into(),
            engine: load_engine(Limits {
                max_running: 2,
                max_waiting: 8,
                kv_cache_tokens: 1024,
                context_length: 512,
            }),
        }),
        None,
        catalog,
        Some(template),
    );
    let key = |name: &str, key: &str, scopes: &[Scope]| KeyEntry {
        name: name.to_owned(),
        key: Some(Secret(key.to_owned())),
        key_file: None,
        scopes: scopes.to_vec(),
    };
    let config = GatewayConfig {
        server: ServerSection {
            admin_token: Some(Secret(ADMIN_TOKEN.into())),
            keys: vec![
                key("ops", OPS_KEY, &[Scope::Admin]),
                key("ci", CHAT_KEY, &[Scope::Chat]),
            ],
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    };
    let state = AppState::with_router(router, &config).with_admin_log(AdminLog::open(&database).unwrap());
    let addr = spawn_server(state).await;

    // Refused, done, and refused again (no IM connector has skills to reload), by two credentials.
    let switch = |model: &str| Some(json!({ "model": model }));
    let (status, body) = call(addr, "POST", "/admin/models/active", OPS_KEY, switch("nope")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("model_not_found")));
    let (status, body) = call(addr, "POST", "/admin/models/active", OPS_KEY, switch("b")).await;
    assert_eq!((status, body), (200, json!({"active": "b", "previous": "a"})));
    let (status, body) = call(addr, "POST", "/admin/skills/reload", ADMIN_TOKEN, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("no_skills")));
    // A key without the admin scope changes nothing, and leaves no record.
    let (status, _) = call(addr, "POST", "/admin/models/active", CHAT_KEY, switch("a")).await;
    assert_eq!(status, 403);

    // Read back through the admin API, newest first...
    let (status, body) = call(addr, "GET", "/admin/audit?limit=10", OPS_KEY, None).await;
    assert_eq!(status, 200, "{body}");
    let records: Vec<AdminRecord> = serde_json::from_value(body["records"].clone()).unwrap();
    let seen: Vec<(&str, AdminAction, &str, AdminOutcome)> = records
        .iter()
        .map(|r| (r.caller.as_str(), r.action, r.target.as_str(), r.outcome))
        .collect();
    assert_eq!(
        seen,
        [
            ("admin_token", AdminAction::ReloadSkills, "", AdminOutcome::Refused),
            ("ops", AdminAction::SwitchModel, "b", AdminOutcome::Done),
            ("ops", AdminAction::SwitchModel, "nope", AdminOutcome::Refused),
        ]
    );
    assert_eq!(records[1].detail, "previous: a");
    assert!(records[2].detail.contains("nope"), "{}", records[2].detail);
    assert!(records.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    let (_, body) = call(addr, "GET", "/admin/audit?limit=1", ADMIN_TOKEN, None).await;
    assert_eq!(body["records"].as_array().map(Vec::len), Some(1));
    let (status, body) = call(addr, "GET", "/admin/audit?limit=many", ADMIN_TOKEN, None).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("limit")));
    // ...and from the database file itself.
    assert_eq!(
        rows(&database),
        [
            row("ops", "switch_model", "nope", "refused"),
            row("ops", "switch_model", "b", "done"),
            row("admin_token", "reload_skills", "", "refused"),
        ]
    );
}

#[tokio::test]
async fn without_an_admin_audit_log_admin_changes_are_refused() {
    let config = GatewayConfig {
        server: ServerSection {
            admin_token: Some(Secret(ADMIN_TOKEN.into())),
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    };
    let addr = spawn_server(AppState::new(shared_engine(), &config)).await;
    for path in ["/admin/models/active", "/admin/skills/reload"] {
        let (status, body) = call(addr, "POST", path, ADMIN_TOKEN, Some(json!({"model": "x"}))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("admin_audit_off")),
            "{path}"
        );
    }
    // Reading changes nothing: the model list stays available.
    assert_eq!(call(addr, "GET", "/admin/models", ADMIN_TOKEN, None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_serve_keeps_the_admin_audit_log_in_its_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ctx-size",
            "512",
            "--model",
        ])
        .arg(model_path())
        .env_remove("HEARTH_CONFIG")
        .env("HEARTH_SERVER__ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HEARTH_DATA__DIR", &data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hearth binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("hearth serve logs its address").unwrap();
        if let Some((_, rest)) = line.split_once("http://") {
            if let Some((addr, _)) = rest.split_once("/v1") {
                break addr.parse().unwrap();
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let (status, _) = call(addr, "POST", "/admin/skills/reload", ADMIN_TOKEN, None).await;
    assert_eq!(
        status, 404,
        "no IM connector: nothing to reload, and the refusal is recorded"
    );
    let (_, body) = call(addr, "GET", "/admin/audit", ADMIN_TOKEN, None).await;
    assert_eq!(body["records"][0]["caller"], "admin_token", "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        rows(&data_dir.join(gateway::admin_log::DATABASE_FILE)),
        [row("admin_token", "reload_skills", "", "refused")]
    );
}

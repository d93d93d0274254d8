//! The web console: the page and every embedded asset with its content type, the status JSON, and the IM
//! proxy against a real DingTalk emulator. The pages themselves are tested in a browser by tests/browser/.

use axum::body::Body;
use axum::http::{header, StatusCode};
use emulator::dingtalk::{DingTalkEmulator, EmulatorConfig};
use gateway::config::{Secret, ServerSection};
use gateway::console::{ASSETS, INDEX_HTML};
use gateway::{AppState, GatewayConfig};
use serde_json::json;

use crate::support::{body_json, body_text, get_json, post_json, send, shared_app, shared_engine, MODEL_NAME};

#[tokio::test]
async fn the_page_is_served_at_the_root_as_utf8_html() {
    let response = send(shared_app(), "GET", "/", None, Body::empty()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let page = body_text(response).await;
    assert_eq!(page, INDEX_HTML);
    assert!(page.contains(r#"<script type="module" src="/console/assets/app.js"></script>"#));
    assert!(page.contains(r#"<meta charset="utf-8">"#));
}

#[tokio::test]
async fn every_asset_is_served_with_its_content_type() {
    for asset in ASSETS {
        let response = send(
            shared_app(),
            "GET",
            &format!("/console/assets/{}", asset.name),
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{}", asset.name);
        let expected = match asset.name.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("svg") => "image/svg+xml",
            _ => "text/css; charset=utf-8",
        };
        assert_eq!(response.headers()[header::CONTENT_TYPE], expected, "{}", asset.name);
        assert_eq!(body_text(response).await, asset.body, "{}", asset.name);
    }
    let response = send(shared_app(), "GET", "/console/assets/secret.js", None, Body::empty()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[test]
fn assets_reference_only_embedded_files_and_nothing_off_the_server() {
    let embedded = |name: &str| ASSETS.iter().any(|a| a.name == name);
    for reference in INDEX_HTML.split("/console/assets/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(embedded(name), "index.html references {name}, which is not embedded");
    }
    for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
        for import in asset.body.split("from \"./").skip(1) {
            let name = import.split('"').next().unwrap();
            assert!(embedded(name), "{} imports {name}, which is not embedded", asset.name);
        }
    }
    for (name, body) in ASSETS
        .iter()
        .map(|a| (a.name, a.body))
        .chain([("index.html", INDEX_HTML)])
    {
        // The SVG namespace is an identifier, not a request.
        let body = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("@import"),
            "{name} refers to another host"
        );
    }
}

#[tokio::test]
async fn status_reports_the_model_and_the_engine_load() {
    let (status, body) = get_json(shared_app(), "/console/api/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["model"]["name"], MODEL_NAME);
    assert_eq!(body["model"]["architecture"], "llama");
    assert_eq!(body["device"], "cpu");
    assert!(body["kv_blocks_total"].as_u64().unwrap() > 0);
    assert!(body["now_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(body["platforms"], json!([]));
    assert_eq!(body["emulator"], false);
    assert!(body["im_deliveries"].is_array());
}

#[tokio::test]
async fn the_im_api_is_off_without_an_emulator() {
    let (status, body) = get_json(shared_app(), "/console/api/im/state").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "emulator_off");
}

#[tokio::test]
async fn the_im_api_proxies_the_emulators_control_api() {
    let dingtalk = DingTalkEmulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = GatewayConfig {
        emulator_url: Some(format!("{}/", dingtalk.base_url())),
        ..GatewayConfig::default()
    };
    let app = gateway::app(AppState::new(shared_engine(), &config));

    let (status, state) = get_json(app.clone(), "/console/api/im/state").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state["conversations"], json!([]));
    let version = state["version"].as_u64().unwrap();

    let message = json!({"conversationType": "single", "userId": "alice", "text": "你好"});
    let (status, posted) = post_json(app.clone(), "/console/api/im/messages", &message).await;
    assert_eq!(status, StatusCode::OK, "{posted}");
    let conversation = posted["conversationId"].as_str().unwrap().to_owned();

    // The query string goes along: the change feed answers at once because the version has moved.
    let (status, changed) = get_json(
        app.clone(),
        &format!("/console/api/im/wait?after={version}&timeout_ms=5000"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(changed["version"].as_u64().unwrap() > version);

    let (status, view) = get_json(app.clone(), &format!("/console/api/im/conversations/{conversation}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["messages"][0]["text"], "你好");

    // The emulator's own errors come back with their status.
    let response = send(app, "GET", "/console/api/im/cards/no-such-card", None, Body::empty()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(body_json(response).await["error"]
        .as_str()
        .unwrap()
        .contains("no-such-card"));
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_emulator_is_a_502_that_says_where() {
    let config = GatewayConfig {
        emulator_url: Some("http://127.0.0.1:9".into()),
        ..GatewayConfig::default()
    };
    let app = gateway::app(AppState::new(shared_engine(), &config));
    let (status, body) = get_json(app, "/console/api/im/state").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("http://127.0.0.1:9/_emulator/api/state"),
        "{body}"
    );
}

const ADMIN_TOKEN: &str = "console-admin-token-0123";

/// `POST /admin/skills/reload`, with `token` when given.
async fn reload_skills(app: &axum::Router, token: Option<&str>) -> (StatusCode, serde_json::Value) {
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder()
        .method("POST")
        .uri("/admin/skills/reload");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    (response.status(), body_json(response).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_im_health_and_masked_audit_and_the_admin_reloads_skills() {
    use gateway::dingtalk::DingTalkConnector;
    use gateway::skills::SkillSet;
    use std::sync::Arc;

    let dingtalk = crate::dingtalk::emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hearth.toml");
    let skills_section = |reply: &str| {
        format!(
            "[[skills.custom]]\nname = \"ping\"\ntrigger = \"regex\"\npatterns = [\"^ping\"]\nreply = \"{reply}\"\n"
        )
    };
    std::fs::write(&file, skills_section("pong")).unwrap();
    let skills_config = gateway::config::Config::load_with_env(Some(&file), []).unwrap().skills;
    let skills = Arc::new(SkillSet::with_file(&skills_config, file.clone()).unwrap());
    let connector_config = crate::dingtalk::connector_config(&dingtalk, &dir.path().join("db.sqlite3"));
    let connector = DingTalkConnector::start_with_skills(connector_config, crate::dingtalk::shared_models(), skills)
        .await
        .unwrap();
    let config = GatewayConfig {
        server: ServerSection {
            admin_token: Some(Secret(ADMIN_TOKEN.into())),
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    };
    let admin_log = || gateway::admin_log::AdminLog::open(&dir.path().join("hearth.sqlite3")).unwrap();
    let app = gateway::app(
        AppState::new(shared_engine(), &config)
            .with_platforms(vec![connector.link()])
            .with_admin_log(admin_log()),
    );

    // A skill answers; the audit record keeps the question masked.
    dingtalk
        .wait_for(crate::dingtalk::PATIENCE, |w| {
            (w.stats().live_connections == 1).then_some(())
        })
        .await
        .unwrap();
    crate::dingtalk::say(
        &dingtalk,
        emulator::dingtalk::ConversationKind::Single,
        None,
        "ada",
        "ping me at 13812345678",
        false,
    );
    tokio::time::timeout(crate::dingtalk::PATIENCE, connector.audit().wait_for_records(1))
        .await
        .unwrap()
        .unwrap();
    // With an admin token configured, the status (audit records) needs it.
    assert_eq!(
        get_json(app.clone(), "/console/api/status").await.0,
        StatusCode::UNAUTHORIZED
    );
    let response = {
        use tower::ServiceExt;
        let request = axum::http::Request::get("/console/api/status")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request).await.unwrap()
    };
    let status = response.status();
    let body = body_json(response).await;
    assert_eq!(status, StatusCode::OK);
    let platform = &body["platforms"][0];
    assert_eq!(
        (
            platform["name"].as_str(),
            platform["status"].as_str(),
            platform["connected"].as_bool()
        ),
        (Some("dingtalk"), Some("ok"), Some(true))
    );
    assert_eq!(platform["connections"], 1);
    assert_eq!(platform["missing_permissions"], json!([]));
    let entry = &body["audit"][0];
    assert_eq!(
        (entry["handler"].as_str(), entry["outcome"].as_str()),
        (Some("skill:ping"), Some("answered"))
    );
    assert_eq!(entry["question"], "ping me at [masked]");
    assert!(!body.to_string().contains("13812345678"));

    // Reloading skills takes the admin token and re-reads the file; a broken section is refused and the
    // skills in use stay.
    assert_eq!(reload_skills(&app, None).await.0, StatusCode::UNAUTHORIZED);
    std::fs::write(
        &file,
        skills_section("pong")
            + "[[skills.custom]]\nname = \"pong\"\ntrigger = \"keyword\"\npatterns = [\"pong\"]\nreply = \"ping\"\n",
    )
    .unwrap();
    let (status, body) = reload_skills(&app, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["platforms"][0]["platform"], "dingtalk");
    let names: Vec<&str> = body["platforms"][0]["skills"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(names.contains(&"ping") && names.contains(&"pong"), "{names:?}");
    std::fs::write(
        &file,
        "[skills]\ncustom = [{ name = \"bad\", trigger = \"regex\", patterns = [\"(\"], reply = \"x\" }]\n",
    )
    .unwrap();
    let (status, body) = reload_skills(&app, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_skills");
    assert!(
        connector.skills().registry().names().contains(&"pong".to_owned()),
        "the skills in use stay"
    );

    // Without a connector there is nothing to reload.
    let bare = gateway::app(AppState::new(shared_engine(), &config).with_admin_log(admin_log()));
    let (status, body) = reload_skills(&bare, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_skills"))
    );

    connector.shutdown(std::time::Duration::from_secs(10)).await;
    dingtalk.shutdown().await.unwrap();
}

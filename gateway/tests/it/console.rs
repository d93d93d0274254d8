//! The web console: the page and every embedded asset with its content type, the status JSON, and the IM
//! proxy against a real DingTalk emulator. The pages themselves are tested in a browser by tests/browser/.

use axum::body::Body;
use axum::http::{header, StatusCode};
use emulator::dingtalk::{DingTalkEmulator, EmulatorConfig};
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
        let response = send(shared_app(), "GET", &format!("/console/assets/{}", asset.name), None, Body::empty()).await;
        assert_eq!(response.status(), StatusCode::OK, "{}", asset.name);
        let expected = if asset.name.ends_with(".js") { "text/javascript; charset=utf-8" } else { "text/css; charset=utf-8" };
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
    for (name, body) in ASSETS.iter().map(|a| (a.name, a.body)).chain([("index.html", INDEX_HTML)]) {
        // The SVG namespace is an identifier, not a request.
        let body = body.replace("http://www.w3.org/2000/svg", "");
        assert!(!body.contains("http://") && !body.contains("https://") && !body.contains("@import"), "{name} refers to another host");
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
    let dingtalk = DingTalkEmulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let config = GatewayConfig { emulator_url: Some(format!("{}/", dingtalk.base_url())), ..GatewayConfig::default() };
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
    let (status, changed) = get_json(app.clone(), &format!("/console/api/im/wait?after={version}&timeout_ms=5000")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(changed["version"].as_u64().unwrap() > version);

    let (status, view) = get_json(app.clone(), &format!("/console/api/im/conversations/{conversation}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["messages"][0]["text"], "你好");

    // The emulator's own errors come back with their status.
    let response = send(app, "GET", "/console/api/im/cards/no-such-card", None, Body::empty()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(body_json(response).await["error"].as_str().unwrap().contains("no-such-card"));
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_emulator_is_a_502_that_says_where() {
    let config = GatewayConfig { emulator_url: Some("http://127.0.0.1:9".into()), ..GatewayConfig::default() };
    let app = gateway::app(AppState::new(shared_engine(), &config));
    let (status, body) = get_json(app, "/console/api/im/state").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body["error"].as_str().unwrap().contains("http://127.0.0.1:9/_emulator/api/state"), "{body}");
}

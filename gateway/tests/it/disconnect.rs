//! A client that hangs up mid-stream cancels its request in the engine (real server, real socket).

use std::time::Duration;

use gateway::{AppState, GatewayConfig};
use serde_json::json;

use crate::support::{
    chat_body, http_get_json, http_post, load_engine, read_data_events, spawn_server, wait_for, Limits,
};

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_the_request() {
    // Its own engine, so no other test's requests show up in `running`.
    let engine = load_engine(Limits {
        max_running: 2,
        max_waiting: 4,
        kv_cache_tokens: 1024,
        context_length: 512,
    });
    let addr = spawn_server(AppState::new(engine.clone(), &GatewayConfig::default())).await;
    let before = http_get_json(addr, "/health").await;
    assert_eq!(before["requests_cancelled"], 0);

    let request = chat_body(
        "Tell me a very long story.",
        json!({"stream": true, "ignore_eos": true, "max_tokens": 400}),
    );
    let mut connection = http_post(addr, "/v1/chat/completions", &request).await;
    // The role chunk plus two content chunks: generation is under way.
    let seen = read_data_events(&mut connection, 3).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(seen.matches("data: ").count(), 3, "{seen}");
    assert!(!seen.contains("[DONE]"), "{seen}");
    let during = http_get_json(addr, "/health").await;
    assert_eq!(during["running"], 1, "{during}");

    drop(connection);

    let after = wait_for(
        "/health to show the request cancelled and nothing running",
        Duration::from_secs(60),
        || async {
            let health = http_get_json(addr, "/health").await;
            (health["requests_cancelled"] == 1 && health["running"] == 0).then_some(health)
        },
    )
    .await;
    assert_eq!(after["waiting"], 0, "{after}");
    let generated = after["generated_tokens_total"].as_u64().unwrap();
    assert!(generated < 400, "generation stopped early: {after}");
    engine.shutdown();
}

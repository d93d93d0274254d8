//! Graceful shutdown: stop accepting, drain for at most the deadline, then stop the engine under the
//! remaining streams, which end with an error event and `[DONE]`.

use std::time::Duration;

use gateway::{AppState, GatewayConfig};
use serde_json::json;

use crate::support::{chat_body, http_post, load_engine, read_data_events, read_to_end, Limits};

#[tokio::test]
async fn shutdown_past_the_deadline_ends_streams_with_an_error() {
    let engine = load_engine(Limits {
        max_running: 2,
        max_waiting: 4,
        kv_cache_tokens: 1024,
        context_length: 512,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, signal) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(engine.clone(), &GatewayConfig::default());
    // A zero drain deadline: the engine is stopped as soon as the signal arrives.
    let server = tokio::spawn(gateway::serve(
        listener,
        state,
        async move {
            let _ = signal.await;
        },
        Duration::ZERO,
    ));

    let request = chat_body(
        "Tell me a very long story.",
        json!({"stream": true, "ignore_eos": true, "max_tokens": 400}),
    );
    let mut connection = http_post(addr, "/v1/chat/completions", &request).await;
    let seen = read_data_events(&mut connection, 2).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");

    trigger.send(()).unwrap();
    let rest = read_to_end(&mut connection).await;
    assert!(rest.contains("\"code\":\"shutting_down\""), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");

    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve returns after shutdown")
        .expect("the server task does not panic")
        .expect("serve ends cleanly");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting connections"
    );
}

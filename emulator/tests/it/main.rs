//! The emulators over real sockets: HTTP with reqwest, WebSockets with tokio-tungstenite, exactly as a
//! client of the real platform talks to it. The DingTalk tests and helpers are at the top level (`cards`,
//! `stream`), Feishu's in `feishu/`, WeCom's in `wecom/`.

mod cards;
mod feishu;
mod stream;
mod wecom;

use std::time::Duration;

use emulator::dingtalk::{
    DingTalkEmulator, EmulatorConfig, PostedMessage, UserMessage, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound on any awaited event; tests never sleep, they await frames or state changes.
const PATIENCE: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An emulator on a free loopback port, with `tweak` applied to the default config.
pub async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> DingTalkEmulator {
    let mut config = EmulatorConfig {
        ping_interval: None,
        ..EmulatorConfig::default()
    };
    tweak(&mut config);
    DingTalkEmulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the emulator starts")
}

/// POST JSON; returns status and body.
pub async fn post(url: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    send(reqwest::Client::new().post(url), body, token).await
}

/// PUT JSON; returns status and body.
pub async fn put(url: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    send(reqwest::Client::new().put(url), body, token).await
}

async fn send(request: reqwest::RequestBuilder, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut request = request
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.header("x-acs-dingtalk-access-token", token);
    }
    let response = request.send().await.expect("the emulator answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// `POST /v1.0/gateway/connections/open` with the default app, subscribed to bot messages.
pub async fn open(dingtalk: &DingTalkEmulator) -> Value {
    let (status, body) = post(
        &format!("{}/v1.0/gateway/connections/open", dingtalk.base_url()),
        json!({
            "clientId": DEFAULT_CLIENT_ID,
            "clientSecret": DEFAULT_CLIENT_SECRET,
            "subscriptions": [{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}],
            "ua": "hearth-test/0",
            "localIp": "127.0.0.1",
        }),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Open a Stream connection: the open call, then the WebSocket with the ticket.
pub async fn connect(dingtalk: &DingTalkEmulator) -> Ws {
    let opened = open(dingtalk).await;
    let url = format!(
        "{}?ticket={}",
        opened["endpoint"].as_str().unwrap(),
        opened["ticket"].as_str().unwrap()
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("the ticket is accepted")
        .0
}

/// The next text frame, as JSON.
pub async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame within the patience window");
        match message.expect("the socket is open").expect("no socket error") {
            Message::Text(text) => return serde_json::from_str(&text).expect("frames are JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// ACK a frame the way the SDKs do.
pub async fn ack(ws: &mut Ws, frame: &Value, data: Value) {
    let reply = json!({
        "code": 200,
        "headers": {"messageId": frame["headers"]["messageId"], "contentType": "application/json"},
        "message": "OK",
        "data": data,
    });
    ws.send(Message::Text(reply.to_string().into()))
        .await
        .expect("the ACK is sent");
}

/// A 1:1 message from `user`.
pub fn single(dingtalk: &DingTalkEmulator, user: &str, text: &str) -> PostedMessage {
    dingtalk
        .post_message(UserMessage::single(user, text))
        .expect("the message is posted")
}

/// A group message from `user` in `group`.
pub fn group(dingtalk: &DingTalkEmulator, group: &str, user: &str, text: &str, at_bot: bool) -> PostedMessage {
    dingtalk
        .post_message(UserMessage {
            conversation_title: Some(format!("Group {group}")),
            nick: Some(format!("Nick {user}")),
            ..UserMessage::group(group, user, text, at_bot)
        })
        .expect("the message is posted")
}

/// An access token for the default app.
pub async fn token(dingtalk: &DingTalkEmulator) -> String {
    let (status, body) = post(
        &format!("{}/v1.0/oauth2/accessToken", dingtalk.base_url()),
        json!({"appKey": DEFAULT_CLIENT_ID, "appSecret": DEFAULT_CLIENT_SECRET}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expireIn"], 7200);
    body["accessToken"].as_str().unwrap().to_owned()
}

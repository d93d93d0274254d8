//! The Feishu emulator over real sockets: HTTP with reqwest, the long connection with tokio-tungstenite and
//! prost, exactly as a client of the real platform talks to it.

mod cards;
mod control;
mod longconn;
mod openapi;

use emulator::feishu::wire::{Frame, Header, METHOD_CONTROL, METHOD_DATA};
use emulator::feishu::{
    EmulatorConfig, FeishuEmulator, PostedMessage, UserMessage, DEFAULT_APP_ID, DEFAULT_APP_SECRET,
};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{Ws, PATIENCE};

/// An emulator on a free loopback port, with `tweak` applied to the default config.
pub async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> FeishuEmulator {
    let mut config = EmulatorConfig::default();
    tweak(&mut config);
    FeishuEmulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the emulator starts")
}

/// An HTTP answer.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The body's `code`.
    pub fn code(&self) -> i64 {
        self.body["code"].as_i64().unwrap_or(-1)
    }
}

/// Send `body` as JSON with `method` to `url`, with a bearer token when given.
pub async fn call(method: reqwest::Method, url: &str, body: Value, token: Option<&str>) -> Reply {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("the emulator answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// POST JSON.
pub async fn post(url: &str, body: Value, token: Option<&str>) -> Reply {
    call(reqwest::Method::POST, url, body, token).await
}

/// `POST /callback/ws/endpoint` with the default app; returns the whole answer.
pub async fn discover(feishu: &FeishuEmulator) -> Reply {
    post(
        &format!("{}/callback/ws/endpoint", feishu.base_url()),
        json!({"AppID": DEFAULT_APP_ID, "AppSecret": DEFAULT_APP_SECRET}),
        None,
    )
    .await
}

/// One open long connection and the `service_id` its frames must carry.
pub struct Conn {
    pub ws: Ws,
    pub service_id: i32,
}

/// The value of query parameter `key` in `url`.
pub fn query_param(url: &str, key: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
    })
}

/// Discovery, then the WebSocket at the URL it handed out.
pub async fn connect(feishu: &FeishuEmulator) -> Conn {
    let answer = discover(feishu).await;
    assert_eq!((answer.status, answer.code()), (200, 0), "{}", answer.body);
    let url = answer.body["data"]["URL"].as_str().expect("data.URL").to_owned();
    let service_id = query_param(&url, "service_id").unwrap().parse().unwrap();
    let ws = tokio_tungstenite::connect_async(url)
        .await
        .expect("the ticket is accepted")
        .0;
    Conn { ws, service_id }
}

/// The next pbbp2 frame.
pub async fn next_frame(ws: &mut Ws) -> Frame {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame within the patience window");
        match message.expect("the socket is open").expect("no socket error") {
            Message::Binary(bytes) => return Frame::decode(bytes.as_ref()).expect("frames are pbbp2"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The next data frame's event JSON (single-fragment events).
pub async fn next_event(conn: &mut Conn) -> (Frame, Value) {
    let frame = next_frame(&mut conn.ws).await;
    assert_eq!(frame.method, METHOD_DATA);
    let event = serde_json::from_slice(frame.payload.as_deref().unwrap()).expect("the payload is JSON");
    (frame, event)
}

/// Answer a data frame as the SDKs do: the same frame, `biz_rt` appended, payload `{"code": code}`.
pub async fn respond(conn: &mut Conn, frame: &Frame, code: i64) {
    let mut reply = frame.clone();
    reply.headers.push(Header {
        key: "biz_rt".to_owned(),
        value: "-3".to_owned(),
    });
    reply.payload = Some(json!({"code": code}).to_string().into_bytes());
    conn.ws
        .send(Message::Binary(reply.encode_to_vec().into()))
        .await
        .expect("the response is sent");
}

/// Send a ping control frame carrying `service`.
pub async fn ping(ws: &mut Ws, service: i32) {
    let frame = Frame::control(service, "ping", None);
    assert_eq!(frame.method, METHOD_CONTROL);
    ws.send(Message::Binary(frame.encode_to_vec().into()))
        .await
        .expect("the ping is sent");
}

/// A 1:1 message from `user`.
pub fn p2p(feishu: &FeishuEmulator, user: &str, text: &str) -> PostedMessage {
    feishu
        .post_message(UserMessage::p2p(user, text))
        .expect("the message is posted")
}

/// A tenant token for the default app.
pub async fn token(feishu: &FeishuEmulator) -> String {
    let answer = post(
        &format!("{}/open-apis/auth/v3/tenant_access_token/internal", feishu.base_url()),
        json!({"app_id": DEFAULT_APP_ID, "app_secret": DEFAULT_APP_SECRET}),
        None,
    )
    .await;
    assert_eq!((answer.status, answer.code()), (200, 0), "{}", answer.body);
    answer.body["tenant_access_token"].as_str().unwrap().to_owned()
}

/// The header `name` of an answer as a string.
pub fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

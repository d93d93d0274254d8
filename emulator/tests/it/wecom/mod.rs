//! The WeCom emulator: the long connection with raw JSON frames, URL mode against a robot written here
//! (an axum server on loopback that seals its replies with `emulator::wecom::crypto`), `response_url`s.
//! The independent check of the crypto itself is `tests/python/run-wecom.sh`.

mod callback;
mod longconn;

use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use emulator::wecom::crypto::{MsgCrypt, Padding};
use emulator::wecom::{EmulatorConfig, PostedMessage, UserMessage, WeComEmulator, DEFAULT_BOT_ID, DEFAULT_SECRET};
use futures::SinkExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::{next_frame, Ws, PATIENCE};

/// An emulator on a free loopback port, with `tweak` applied to the default config.
pub async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> WeComEmulator {
    let mut config = EmulatorConfig::default();
    tweak(&mut config);
    WeComEmulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the emulator starts")
}

/// Send one request frame.
pub async fn request(ws: &mut Ws, cmd: &str, req_id: &str, body: Value) {
    let mut frame = json!({"cmd": cmd, "headers": {"req_id": req_id}});
    if !body.is_null() {
        frame["body"] = body;
    }
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("the frame is sent");
}

/// Send a request and return its acknowledgement (the next frame, which must echo `req_id` and have no cmd).
pub async fn call(ws: &mut Ws, cmd: &str, req_id: &str, body: Value) -> Value {
    request(ws, cmd, req_id, body).await;
    let ack = next_frame(ws).await;
    assert_eq!(ack["headers"]["req_id"], req_id, "{ack}");
    assert!(ack.get("cmd").is_none(), "acknowledgements carry no cmd: {ack}");
    ack
}

/// A raw WebSocket to the emulator's long connection, not yet subscribed.
pub async fn open(wecom: &WeComEmulator) -> Ws {
    tokio_tungstenite::connect_async(wecom.ws_url())
        .await
        .expect("the WebSocket opens")
        .0
}

/// A subscribed long connection.
pub async fn connect(wecom: &WeComEmulator) -> Ws {
    let mut ws = open(wecom).await;
    let ack = call(
        &mut ws,
        "aibot_subscribe",
        "aibot_subscribe_1_ok",
        json!({"bot_id": DEFAULT_BOT_ID, "secret": DEFAULT_SECRET}),
    )
    .await;
    assert_eq!(ack["errcode"], 0, "{ack}");
    ws
}

/// A 1:1 message from `user`.
pub fn single(wecom: &WeComEmulator, user: &str, text: &str) -> PostedMessage {
    wecom
        .post_message(UserMessage::single(user, text))
        .expect("the message is posted")
}

/// A 1:1 message from `user`, and the `req_id` of its push on `ws`.
pub async fn ask(wecom: &WeComEmulator, ws: &mut Ws, user: &str, text: &str) -> (PostedMessage, String) {
    let posted = single(wecom, user, text);
    let push = next_push(ws, "aibot_msg_callback").await;
    assert_eq!(push["body"]["msgid"], posted.msgid.as_str(), "{push}");
    (posted, push["headers"]["req_id"].as_str().unwrap().to_owned())
}

/// The next push, which must be `cmd`.
pub async fn next_push(ws: &mut Ws, cmd: &str) -> Value {
    let frame = next_frame(ws).await;
    assert_eq!(frame["cmd"], cmd, "{frame}");
    assert!(
        frame["headers"]["req_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{frame}"
    );
    frame
}

/// `aibot_respond_msg` with a stream snapshot; returns the acknowledgement.
pub async fn respond(ws: &mut Ws, req_id: &str, stream_id: &str, content: &str, finish: bool) -> Value {
    call(
        ws,
        "aibot_respond_msg",
        req_id,
        json!({"msgtype": "stream", "stream": {"id": stream_id, "finish": finish, "content": content}}),
    )
    .await
}

/// One request the robot below received (its signature already checked): the decrypted body (JSON for
/// POSTs, the echostr's plaintext for GETs) and where to send the answer.
pub struct Callback {
    pub method: &'static str,
    pub body: Value,
    pub answer: oneshot::Sender<Answer>,
}

/// How the robot answers one callback.
pub enum Answer {
    /// An empty 200.
    Empty,
    /// This reply body, sealed correctly (32-byte padding, the callback's nonce).
    Reply(Value),
    /// This raw body, as it is.
    Raw(String),
}

/// The query of every callback.
#[derive(Debug, Clone, Deserialize)]
struct CallbackQuery {
    msg_signature: String,
    timestamp: String,
    nonce: String,
    #[serde(default)]
    echostr: Option<String>,
}

#[derive(Clone)]
struct Robot {
    crypt: MsgCrypt,
    tx: mpsc::Sender<Callback>,
}

/// A robot's callback server on loopback: every request is checked (signature, padding, receiveid) and
/// handed to the test, which answers it. Returns the callback URL and the stream of requests.
pub async fn robot(config: &EmulatorConfig) -> (String, mpsc::Receiver<Callback>) {
    let crypt = MsgCrypt::new(&config.token, &config.encoding_aes_key).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let app = Router::new()
        .route("/hook", get(robot_get).post(robot_post))
        .with_state(Robot { crypt, tx });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn robot_get(State(robot): State<Robot>, Query(query): Query<CallbackQuery>) -> String {
    let echostr = query.echostr.clone().expect("a verification carries echostr");
    robot
        .crypt
        .verify(&query.msg_signature, &query.timestamp, &query.nonce, &echostr)
        .expect("the verification is signed over the echostr");
    let plain = robot.crypt.decrypt_for(&echostr, "", Padding::Block32).unwrap();
    match hand_over(&robot, "GET", Value::String(plain)).await {
        Answer::Empty => String::new(),
        Answer::Raw(raw) => raw,
        Answer::Reply(_) => panic!("a verification is answered with text"),
    }
}

async fn robot_post(State(robot): State<Robot>, Query(query): Query<CallbackQuery>, body: String) -> String {
    let envelope: Value = serde_json::from_str(&body).expect("the callback body is JSON");
    let encrypt = envelope["encrypt"].as_str().expect("{\"encrypt\"}").to_owned();
    robot
        .crypt
        .verify(&query.msg_signature, &query.timestamp, &query.nonce, &encrypt)
        .expect("the callback is signed");
    let plain = robot
        .crypt
        .decrypt_for(&encrypt, "", Padding::Block32)
        .expect("32-byte padding, receiveid \"\"");
    let message: Value = serde_json::from_str(&plain).unwrap();
    match hand_over(&robot, "POST", message).await {
        Answer::Empty => String::new(),
        Answer::Raw(raw) => raw,
        Answer::Reply(reply) => seal(&robot.crypt, &reply, &query.nonce),
    }
}

async fn hand_over(robot: &Robot, method: &'static str, body: Value) -> Answer {
    let (answer, rx) = oneshot::channel();
    robot
        .tx
        .send(Callback { method, body, answer })
        .await
        .expect("the test is listening");
    rx.await.unwrap_or(Answer::Empty)
}

/// A passive reply envelope for `reply`.
pub fn seal(crypt: &MsgCrypt, reply: &Value, nonce: &str) -> String {
    let encrypt = crypt.encrypt(&reply.to_string(), "").unwrap();
    let timestamp = "1713000000";
    json!({
        "encrypt": encrypt,
        "msgsignature": crypt.signature(timestamp, nonce, &encrypt),
        "timestamp": timestamp,
        "nonce": nonce,
    })
    .to_string()
}

/// The next request the robot got.
pub async fn next_callback(rx: &mut mpsc::Receiver<Callback>) -> Callback {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a callback within the patience window")
        .expect("the robot is up")
}

/// Await a condition on the emulator's state.
pub async fn until<T>(wecom: &WeComEmulator, check: impl FnMut(&emulator::wecom::World) -> Option<T>) -> T {
    wecom.wait_for(PATIENCE, check).await.expect("the condition comes true")
}

/// A stream snapshot body.
pub fn stream_body(id: &str, content: &str, finish: bool) -> Value {
    json!({"msgtype": "stream", "stream": {"id": id, "finish": finish, "content": content}})
}

/// A short duration for tests that watch something expire.
pub const SHORT: Duration = Duration::from_millis(1000);

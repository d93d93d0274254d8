//! URL mode (§1): the platform side of the encrypted HTTP callback. The driver POSTs each message as
//! `{"encrypt"}` with `msg_signature`, `timestamp` and `nonce` to the robot's callback URL, verifies and
//! decrypts the passive reply, and while a stream it opened is unfinished POSTs refresh callbacks for its
//! `stream.id` every [`EmulatorConfig::refresh_interval`](super::EmulatorConfig) until `finish` or expiry.
//! [`verify_url`] is the GET the admin console sends when the URL is saved.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::crypto::{CryptoError, Padding};
use super::wire::{EncryptedBody, PassiveReply, ReplyBody};
use super::world::{Job, MessageState, Refusal, Shared, Via};
use super::EmulatorError;
use crate::ids::{digits, now_ms};

/// Expire, release, push and refresh whatever falls due, until `shutdown` turns true.
pub(crate) async fn driver(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let tick = shared.with(|world, config| world.tick(Instant::now(), config));
        for (url, job) in tick.jobs {
            tokio::spawn(run_job(shared.clone(), url, job));
        }
        let wait = async {
            match tick.next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = wait => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A signed, encrypted query and body for `plain`.
struct Sealed {
    encrypt: String,
    timestamp: String,
    nonce: String,
    signature: String,
}

fn seal(shared: &Shared, plain: &str) -> Result<Sealed, CryptoError> {
    let encrypt = shared.crypto.encrypt(plain, "")?;
    let timestamp = (now_ms() / 1000).to_string();
    let nonce = digits(10);
    let signature = shared.crypto.signature(&timestamp, &nonce, &encrypt);
    Ok(Sealed {
        encrypt,
        timestamp,
        nonce,
        signature,
    })
}

/// Why a callback POST produced no usable answer.
enum Failure {
    /// No HTTP answer, or not a 2xx one: the platform retries a message callback.
    Transport(String),
    /// An answer the platform refuses (bad signature, padding, JSON…).
    Refused(Refusal),
}

/// POST one callback and apply its answer.
async fn run_job(shared: Arc<Shared>, url: String, job: Job) {
    let body = match &job {
        Job::Push { body, .. } | Job::Refresh { body, .. } => body.clone(),
    };
    let answer = post(&shared, &url, &body).await;
    let now = Instant::now();
    shared.with(|world, config| {
        world.stats.callback_posts += 1;
        match (job, answer) {
            (Job::Push { msgid, attempt, .. }, Err(Failure::Transport(cause))) => {
                world.stats.callback_failures += 1;
                tracing::info!(%msgid, attempt, %cause, "message callback failed");
                if attempt < config.callback_retries {
                    world.retries.push((now, msgid, attempt + 1));
                }
            }
            (Job::Push { msgid, .. }, Err(Failure::Refused(refusal))) => {
                world.stats.replies_refused += 1;
                if let Some(m) = world.message_mut(&msgid) {
                    m.refuse(Via::PassiveReply, &refusal);
                }
            }
            (Job::Push { msgid, .. }, Ok(None)) => {
                if let Some(m) = world.message_mut(&msgid) {
                    if m.state == MessageState::Pushed {
                        m.state = MessageState::NoReply;
                    }
                }
            }
            (Job::Push { msgid, .. }, Ok(Some(reply))) => {
                let _ = world.apply_reply(config, &msgid, &reply, Via::PassiveReply, now);
            }
            (Job::Refresh { stream_id, .. }, answer) => {
                let msgid = world.stream(&stream_id).map(|s| s.msgid.clone()).unwrap_or_default();
                let outcome = match answer {
                    Ok(Some(reply @ ReplyBody::Stream { .. })) => {
                        if reply.stream().is_some_and(|s| s.id == stream_id) {
                            world.apply_reply(config, &msgid, &reply, Via::RefreshReply, now)
                        } else {
                            Err(Refusal::new(
                                config.errcodes.invalid_request,
                                format!("a refresh of {stream_id} must answer that stream.id"),
                            ))
                        }
                    }
                    Ok(Some(other)) => Err(Refusal::new(
                        config.errcodes.invalid_request,
                        format!(
                            "a refresh must be answered with msgtype stream, not {}",
                            other.msgtype()
                        ),
                    )),
                    Ok(None) => Err(Refusal::new(
                        config.errcodes.invalid_request,
                        "a refresh must be answered with the stream",
                    )),
                    Err(Failure::Transport(cause)) => {
                        world.stats.callback_failures += 1;
                        Err(Refusal::new(-1, cause))
                    }
                    Err(Failure::Refused(refusal)) => Err(refusal),
                };
                if let Err(refusal) = &outcome {
                    if let Some(m) = world.message_mut(&msgid) {
                        m.refuse(Via::RefreshReply, refusal);
                    }
                }
                if let Some(stream) = world.streams.get_mut(&stream_id) {
                    if stream.status == super::world::StreamStatus::Open {
                        stream.next_refresh = Some(now + config.refresh_interval);
                    }
                }
            }
        }
    });
    shared.wake.notify_one();
}

/// POST `plain` sealed; the passive reply it got (`None`: an empty body or `success`).
async fn post(shared: &Shared, url: &str, plain: &str) -> Result<Option<ReplyBody>, Failure> {
    let sealed = seal(shared, plain).map_err(|err| Failure::Transport(err.to_string()))?;
    let envelope = serde_json::to_string(&EncryptedBody {
        encrypt: sealed.encrypt.clone(),
    })
    .expect("envelopes serialize");
    let request = shared
        .http
        .post(url)
        .query(&[
            ("msg_signature", sealed.signature.as_str()),
            ("timestamp", sealed.timestamp.as_str()),
            ("nonce", sealed.nonce.as_str()),
        ])
        .header("content-type", "application/json")
        .body(envelope)
        .timeout(shared.config.callback_timeout);
    let text = read_answer(shared, request).await.map_err(Failure::Transport)?;
    let text = text.trim();
    if text.is_empty() || text == "success" {
        return Ok(None);
    }
    open_passive(shared, text).map(Some).map_err(Failure::Refused)
}

/// Send `request` and read a 2xx answer of at most [`EmulatorConfig::max_callback_answer_bytes`].
async fn read_answer(shared: &Shared, request: reqwest::RequestBuilder) -> Result<String, String> {
    let mut response = request.send().await.map_err(|err| format!("no answer: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let limit = shared.config.max_callback_answer_bytes;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| format!("answer cut: {err}"))? {
        if bytes.len() + chunk.len() > limit {
            return Err(format!("answer over {limit} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| "answer is not UTF-8".to_owned())
}

/// Verify and decrypt a passive reply envelope into its reply body.
fn open_passive(shared: &Shared, text: &str) -> Result<ReplyBody, Refusal> {
    let codes = &shared.config.errcodes;
    let reply: PassiveReply = serde_json::from_str(text)
        .map_err(|err| Refusal::new(-40002, format!("the passive reply is not the JSON envelope: {err}")))?;
    let timestamp = reply
        .timestamp()
        .ok_or_else(|| Refusal::new(-40002, "timestamp must be a string or a number"))?;
    let crypto_refusal = |err: CryptoError| Refusal::new(err.code(), err.to_string());
    shared
        .crypto
        .verify(&reply.msgsignature, &timestamp, &reply.nonce, &reply.encrypt)
        .map_err(crypto_refusal)?;
    let padding = if shared.config.accept_16_byte_padding {
        Padding::Lenient
    } else {
        Padding::Block32
    };
    let plain = shared
        .crypto
        .decrypt_for(&reply.encrypt, "", padding)
        .map_err(crypto_refusal)?;
    serde_json::from_str(&plain)
        .map_err(|err| Refusal::new(codes.invalid_request, format!("invalid reply body: {err}")))
}

/// The URL verification GET (§1.1): an encrypted `echostr` whose plaintext must come back as the raw body.
pub(crate) async fn verify_url(shared: &Shared, url: &str) -> Result<(), EmulatorError> {
    let plain = digits(19);
    let sealed = seal(shared, &plain).map_err(|err| EmulatorError::InvalidRequest(err.to_string()))?;
    let request = shared
        .http
        .get(url)
        .query(&[
            ("msg_signature", sealed.signature.as_str()),
            ("timestamp", sealed.timestamp.as_str()),
            ("nonce", sealed.nonce.as_str()),
            ("echostr", sealed.encrypt.as_str()),
        ])
        .timeout(shared.config.verify_timeout);
    let outcome = match read_answer(shared, request).await {
        Ok(body) if body == plain => Ok(()),
        Ok(body) => Err(format!(
            "answered {:?}, not the decrypted echostr (the raw plaintext, no quotes or newline)",
            body.chars().take(80).collect::<String>()
        )),
        Err(cause) => Err(cause),
    };
    shared.with(|world, _| match &outcome {
        Ok(()) => world.stats.verifications_ok += 1,
        Err(_) => world.stats.verifications_failed += 1,
    });
    outcome.map_err(|cause| EmulatorError::Verification {
        url: url.to_owned(),
        cause,
    })
}

/// Switch to URL mode at `url` after verifying it, or back to the long connection with `None`.
pub(crate) async fn set_callback(shared: &Shared, url: Option<String>) -> Result<(), EmulatorError> {
    if let Some(url) = &url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(EmulatorError::InvalidRequest(format!(
                "`url` must be http(s), got {url:?}"
            )));
        }
        verify_url(shared, url).await?;
    }
    tracing::info!(url = ?url, "callback URL set");
    shared.with(|world, _| world.callback_url = url);
    shared.wake.notify_one();
    Ok(())
}

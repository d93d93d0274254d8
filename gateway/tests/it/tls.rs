//! TLS on the listener (issue 23): a self-signed certificate (rcgen), the real accept loop of
//! `gateway::serve` (or the real binary), the real model.
//! - a chat completion over https, with a client that trusts only that certificate;
//! - plain HTTP to the TLS port gets no HTTP answer;
//! - a client that connects and never starts its handshake is closed after the header-read timeout, and
//!   holds a slot of the connection cap no longer than that;
//! - bad certificate and key files are refused by `config check` and `serve`, naming the setting and the file.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gateway::tls::{Tls, CONFIG_NAMES};
use gateway::{AppState, ConnectionLimits, GatewayConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{chat_body, model_path, shared_engine};

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files into `dir`:
/// returns (certificate PEM, certificate file, key file).
fn self_signed(dir: &Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen makes a certificate");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
    (cert.pem(), cert_file, key_file)
}

/// `gateway::serve` over TLS on `127.0.0.1:0` until the test's runtime ends.
async fn spawn_tls(dir: &Path, connections: ConnectionLimits) -> (SocketAddr, String) {
    let (pem, cert_file, key_file) = self_signed(dir);
    let mut config = GatewayConfig {
        tls: Some(Tls::from_files(&cert_file, &key_file, CONFIG_NAMES).expect("the certificate loads")),
        ..GatewayConfig::default()
    };
    config.server.max_connections = connections.max_connections;
    config.server.header_read_timeout_secs = connections.header_read_timeout.as_secs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(shared_engine(), &config);
    tokio::spawn(gateway::serve(listener, state, std::future::pending(), Duration::ZERO));
    (addr, pem)
}

#[tokio::test]
async fn a_chat_completion_over_https_and_no_answer_over_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, pem) = spawn_tls(dir.path(), ConnectionLimits::default()).await;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let response = client
        .post(format!("https://127.0.0.1:{}/v1/chat/completions", addr.port()))
        .json(&chat_body("Say hello.", json!({"max_tokens": 8})))
        .send()
        .await
        .expect("an answer over https");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{body}");

    // A client that does not trust the certificate is refused by its own TLS check.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    let err = untrusting
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // Plain HTTP to the TLS port: at most a TLS alert, never an HTTP answer, and the socket is closed.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("the TLS port closes a plain-HTTP connection")
        .ok();
    let reply = String::from_utf8_lossy(&reply);
    assert!(!reply.contains("HTTP/1.1") && !reply.contains("ok"), "{reply:?}");
}

#[tokio::test]
async fn a_silent_client_is_closed_before_its_handshake_and_its_slot_freed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ConnectionLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(1),
    };
    let (addr, pem) = spawn_tls(dir.path(), limits).await;

    // Two sockets that never send a ClientHello: each is closed after the header-read timeout.
    let started = Instant::now();
    let mut silent = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    for stream in &mut silent {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a silent TLS client was never closed");
        assert!(buf.is_empty(), "{buf:?}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // At the cap of 2, silent sockets are the idlest and make room: an https client still gets answers.
    let _held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .expect("healthz over https at the cap");
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// `hearth ARGS` with a config file holding `config`; returns (success, stderr).
fn hearth(config: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hearth.toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--config")
        .arg(&file)
        .args(args)
        .env_remove("HEARTH_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run hearth");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_certificate_files_are_refused_by_name_at_config_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = self_signed(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").unwrap();
    let section = |cert: &Path, key: &Path| {
        format!(
            "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };

    let (ok, stderr) = hearth(&section(&cert, &key), &["config", "check"]);
    assert!(ok, "{stderr}");
    let cases = [
        (section(&garbage, &key), "server.tls_cert_file", garbage.as_path()),
        (section(&cert, &garbage), "server.tls_key_file", garbage.as_path()),
        (
            section(&cert, Path::new("/nonexistent/key.pem")),
            "server.tls_key_file",
            Path::new("/nonexistent/key.pem"),
        ),
        (
            format!("[server]\ntls_cert_file = {:?}\n", cert.display().to_string()),
            "server.tls_key_file",
            Path::new(""),
        ),
    ];
    for (config, key_name, file) in cases {
        let (ok, stderr) = hearth(&config, &["config", "check"]);
        assert!(!ok && stderr.contains(key_name), "{config}: {stderr}");
        assert!(stderr.contains(&file.display().to_string()), "{config}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // `serve` refuses them before loading the model, from the config or from the flags.
    let model = model_path();
    let model = model.to_str().unwrap();
    let (ok, stderr) = hearth(&section(&cert, &garbage), &["serve", "--port", "0", "--model", model]);
    assert!(
        !ok && stderr.contains("server.tls_key_file") && stderr.contains("garbage.pem"),
        "{stderr}"
    );
    let flags = [
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--tls-cert",
        garbage.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (ok, stderr) = hearth("", &flags);
    assert!(
        !ok && stderr.contains("--tls-cert") && stderr.contains("garbage.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, stderr) = hearth("", &["serve", "--tls-cert", cert.to_str().unwrap()]);
    assert!(!ok && stderr.contains("--tls-key"), "{stderr}");
}

#[test]
fn doctor_reports_tls_on_off_and_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = self_signed(dir.path());
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let old_key = rcgen::KeyPair::generate().unwrap();
    let old_cert = dir.path().join("old.pem");
    let old_key_file = dir.path().join("old-key.pem");
    std::fs::write(&old_cert, params.self_signed(&old_key).unwrap().pem()).unwrap();
    std::fs::write(&old_key_file, old_key.serialize_pem()).unwrap();

    let model = model_path();
    let doctor = |config: String| {
        let file = dir.path().join("hearth.toml");
        std::fs::write(&file, config).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .arg("--config")
            .arg(&file)
            .args(["doctor", "--model"])
            .arg(&model)
            .env_remove("HEARTH_CONFIG")
            .output()
            .expect("run hearth doctor");
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        report
            .lines()
            .find(|line| line.contains("tls"))
            .unwrap_or_else(|| panic!("no tls line: {report}"))
            .to_owned()
    };
    let tls = |cert: &Path, key: &Path| {
        format!(
            "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let line = doctor(String::new());
    assert!(line.contains("off: plain HTTP on loopback"), "{line}");
    let line = doctor(tls(&cert, &key));
    assert!(line.contains("on: ") && line.contains("valid until"), "{line}");
    let line = doctor(tls(&old_cert, &old_key_file));
    assert!(
        line.contains("FAIL") && line.contains("expired on 2002-01-01 00:00:00 UTC"),
        "{line}"
    );
    let line = doctor(tls(&cert, &old_key_file));
    assert!(line.contains("FAIL") && line.contains("server.tls_key_file"), "{line}");
}

//! Issue 23, as an attacker on the network and a careless operator would probe `hearth serve`: real
//! sockets against `gateway::serve` (or the real binary), the real emulator, the real model.
//! - the console's data needs a credential, `Host` headers naming other servers are refused (DNS
//!   rebinding), and the IM proxy takes only same-origin JSON posts under its own path;
//! - slow and idle connections are closed, and `/healthz` answers fast with 2,000 idle sockets open;
//! - 16 concurrent 4 MB prompts are refused by size, within a stated memory bound, without stalling others;
//! - careless configurations are refused, or warned about, naming the key or the file.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emulator::dingtalk::{DingTalkEmulator, EmulatorConfig};
use gateway::config::{Secret, ServerSection};
use gateway::{AppState, GatewayConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{chat_body, model_path, post_json, shared_engine};

const ADMIN_TOKEN: &str = "security-admin-token-0123";
const API_KEY: &str = "sk-security-test-key";

/// `gateway::serve` (the real listener, with its limits) on `127.0.0.1:0` until the test's runtime ends.
async fn spawn(config: GatewayConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(shared_engine(), &config);
    tokio::spawn(gateway::serve(listener, state, std::future::pending(), Duration::ZERO));
    addr
}

/// One request over a fresh connection (`Connection: close`); `head` is the request line and headers
/// without the final blank line. Returns the status and the body.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}{headers}"), b"").await
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("(no error code in {body:?})"))
}

#[tokio::test]
async fn console_data_needs_the_admin_token_or_an_api_key() {
    let addr = spawn(GatewayConfig {
        server: ServerSection {
            admin_token: Some(Secret(ADMIN_TOKEN.into())),
            api_keys: vec![Secret(API_KEY.into())],
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    for path in ["/console/api/status", "/console/api/im/state"] {
        for headers in ["", "\r\nAuthorization: Bearer wrong-token-wrong-token"] {
            let (status, body) = get(addr, path, headers).await;
            assert_eq!(
                (status, error_code(&body)),
                (401, "invalid_console_credential".into()),
                "{path}"
            );
            assert!(!body.contains("audit"), "{body}");
        }
    }
    for credential in [ADMIN_TOKEN, API_KEY] {
        let (status, body) = get(
            addr,
            "/console/api/status",
            &format!("\r\nAuthorization: Bearer {credential}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"audit\""), "{body}");
    }
    // The page itself holds no data and stays open.
    assert_eq!(get(addr, "/", "").await.0, 200);
    assert_eq!(get(addr, "/console/assets/app.js", "").await.0, 200);
}

#[tokio::test]
async fn without_credentials_console_data_is_served_on_loopback_only() {
    let loopback = spawn(GatewayConfig::default()).await;
    assert_eq!(get(loopback, "/console/api/status", "").await.0, 200);
    // The same server told it listens on every address (the test socket is on loopback either way).
    let everywhere = spawn(GatewayConfig {
        server: ServerSection {
            host: "0.0.0.0".into(),
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    let (status, body) = get(everywhere, "/console/api/status", "").await;
    assert_eq!((status, error_code(&body)), (403, "console_credential_required".into()));
    assert!(body.contains("server.admin_token"), "{body}");
    // The API and the probes are not the console: they stay as configured.
    assert_eq!(get(everywhere, "/healthz", "").await.0, 200);
    assert_eq!(get(everywhere, "/v1/models", "").await.0, 200);
}

#[tokio::test]
async fn host_headers_naming_other_servers_are_refused() {
    let addr = spawn(GatewayConfig {
        server: ServerSection {
            allowed_hosts: vec!["hearth.corp.example".into()],
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    let port = addr.port();
    for host in [format!("attacker.example:{port}"), "rebind.attacker.example".to_owned()] {
        for path in ["/console/api/status", "/v1/models", "/"] {
            let (status, body) = exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}"), b"").await;
            assert_eq!(
                (status, error_code(&body)),
                (403, "host_not_allowed".into()),
                "{host} {path}"
            );
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("hearth.corp.example:{port}"),
    ] {
        let (status, body) = exchange(addr, &format!("GET /console/api/status HTTP/1.1\r\nHost: {host}"), b"").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
}

#[tokio::test]
async fn the_im_proxy_takes_same_origin_json_posts_under_its_own_path_only() {
    let dingtalk = DingTalkEmulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = spawn(GatewayConfig {
        emulator_url: Some(dingtalk.base_url()),
        ..GatewayConfig::default()
    })
    .await;
    let message = json!({"conversationType": "single", "userId": "mallory", "text": "hi"}).to_string();
    let post = |headers: &str| format!("POST /console/api/im/messages HTTP/1.1\r\nHost: {addr}{headers}");
    let cases = [
        // A cross-site form: text/plain needs no preflight.
        ("\r\nContent-Type: text/plain\r\nOrigin: http://attacker.example", 415),
        ("\r\nContent-Type: text/plain", 415),
        ("", 415),
        (
            "\r\nContent-Type: application/json\r\nOrigin: http://attacker.example",
            403,
        ),
        ("\r\nContent-Type: application/json\r\nOrigin: null", 403),
        ("\r\nContent-Type: application/json\r\nSec-Fetch-Site: cross-site", 403),
        ("\r\nContent-Type: application/json\r\nSec-Fetch-Site: same-site", 403),
    ];
    for (headers, expected) in cases {
        let (status, body) = exchange(addr, &post(headers), message.as_bytes()).await;
        assert_eq!(status, expected, "{headers:?}: {body}");
    }
    let (status, state) = get(addr, "/console/api/im/state", "").await;
    assert_eq!(status, 200, "{state}");
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(
        state["conversations"],
        json!([]),
        "no refused post reached the emulator"
    );
    // The console's own call: same origin, JSON.
    let same_origin =
        format!("\r\nContent-Type: application/json\r\nOrigin: http://{addr}\r\nSec-Fetch-Site: same-origin");
    let (status, body) = exchange(addr, &post(&same_origin), message.as_bytes()).await;
    assert_eq!(status, 200, "{body}");

    for path in [
        "/console/api/im/..%2F..%2Fv1.0%2Fgateway%2Fconnections%2Fopen",
        "/console/api/im/%2e%2e/%2e%2e/v1.0/gateway/connections/open",
        "/console/api/im/../../v1.0/gateway/connections/open",
        "/console/api/im/cards/..%5C..%5Cstate",
    ] {
        let (status, body) = get(addr, path, "").await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_path".into()),
            "{path}: {body}"
        );
    }
    dingtalk.shutdown().await.unwrap();
}

/// Raise this process's open-file soft limit to its hard limit (at most 65536); returns the new soft limit.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(65536);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_healthz_stays_fast() {
    const IDLE: usize = 2000;
    let soft = raise_open_file_limit();
    // Client and server ends of the cap's connections, the other client ends, and room for the rest.
    assert!(
        soft as usize > IDLE + 512 + 200,
        "the open-file limit ({soft}) is too low for this test"
    );
    let timeout = Duration::from_secs(2);
    let addr = spawn(GatewayConfig {
        server: ServerSection {
            header_read_timeout_secs: timeout.as_secs(),
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    })
    .await;

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let started = Instant::now();
    let (status, body) = get(addr, "/healthz", "").await;
    let healthz = started.elapsed();
    eprintln!("/healthz with {IDLE} idle connections open: {healthz:?}");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(
        healthz < Duration::from_secs(1),
        "/healthz took {healthz:?} with {IDLE} idle connections open"
    );

    // A slowloris: half a request head, then nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
        .await
        .unwrap();
    // A keep-alive connection left idle after its answer.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let n = kept.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    let opened = Instant::now();

    // Every socket is closed by the server: read ends (EOF or reset) for each, within the timeout plus slack.
    let closed = |mut stream: TcpStream| async move {
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let patience = timeout * 4;
    tokio::time::timeout(patience, closed(slow))
        .await
        .expect("the slowloris connection is closed");
    tokio::time::timeout(patience, closed(kept))
        .await
        .expect("the idle keep-alive connection is closed");
    let waited = opened.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(200),
        "closed after {waited:?}, before the timeout"
    );
    // A slowloris on the body: the head whole, then ten bytes of a thousand, then nothing.
    let mut dribble = TcpStream::connect(addr).await.unwrap();
    dribble
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\n\r\n{{\"messages\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(patience, dribble.read_to_end(&mut answer))
        .await
        .expect("a stalled request body ends its request")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("sent nothing for 2 s"),
        "{answer}"
    );
    tokio::time::timeout(patience, futures::future::join_all(idle.into_iter().map(closed)))
        .await
        .expect("every idle connection is closed");
    eprintln!(
        "slowloris and idle keep-alive closed after {waited:?}, all {IDLE} idle ones after {:?}",
        opened.elapsed()
    );
    // And the server still answers.
    assert_eq!(get(addr, "/healthz", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_busy_connections_are_kept_and_new_ones_closed() {
    let addr = spawn(GatewayConfig {
        server: ServerSection {
            max_connections: 2,
            header_read_timeout_secs: 30,
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    // Two streams keep both connections busy for a while.
    let body = chat_body(
        "Tell me a long story.",
        json!({"stream": true, "ignore_eos": true, "max_tokens": 200}),
    );
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = crate::support::http_post(addr, "/v1/chat/completions", &body).await;
        let seen = crate::support::read_data_events(&mut stream, 1).await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        busy.push(stream);
    }
    // A third connection is closed at once, without an answer.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("the extra connection is closed at once");
    assert!(
        read.is_err() || answer.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // The busy ones go on streaming to the end.
    for mut stream in busy {
        let rest = crate::support::read_to_end(&mut stream).await;
        assert!(rest.contains("data: [DONE]"), "{rest}");
    }
}

/// `hearth serve` as a child process on a free port, with `args`; returns it with its address.
fn spawn_hearth(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ctx-size",
            "1024",
            "--model",
        ])
        .arg(model_path())
        .args(args)
        .env_remove("HEARTH_CONFIG")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hearth binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("hearth serve logs its address before exiting")
            .unwrap();
        if let Some(rest) = line.split_once("http://").map(|(_, r)| r) {
            if let Some((addr, _)) = rest.split_once("/v1") {
                break addr.parse().expect("a socket address");
            }
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// The resident set size of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The bound stated in ARCHITECTURE.md ("Admission"): each of the 16 requests holds its body (4 MB) and its
/// parsed prompt (4 MB) until it is refused by size, so 16 × 8 MB = 128 MiB, doubled for the allocator.
const MEMORY_BOUND: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_4mb_prompts_stay_within_the_memory_bound_and_stall_nothing() {
    let (mut child, addr) = spawn_hearth(&[]);
    let pid = child.id();
    // Warm up: one real answer, so the baseline includes what serving normally takes.
    let small = chat_body("Hi", json!({"max_tokens": 2})).to_string();
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json");
    assert_eq!(exchange(addr, &head, small.as_bytes()).await.0, 200);
    let baseline = rss_bytes(pid);

    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let huge = chat_body(&"lorem ipsum ".repeat(4_000_000 / 12), json!({"max_tokens": 8})).to_string();
    assert!(huge.len() > 4_000_000 && huge.len() < 4 << 20, "{}", huge.len());
    let huge = std::sync::Arc::new(huge);
    let started = Instant::now();
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let (head, huge) = (head.clone(), huge.clone());
            tokio::spawn(async move { exchange(addr, &head, huge.as_bytes()).await })
        })
        .collect();
    // Others are not stalled while the burst is in.
    let probe = Instant::now();
    assert_eq!(get(addr, "/healthz", "").await.0, 200);
    let healthz = probe.elapsed();
    let mut answers = Vec::new();
    for request in burst {
        answers.push(request.await.unwrap());
    }
    let burst_time = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "16 x {} byte prompts: RSS {} -> peak {} MiB (+{} MiB), all answered in {burst_time:?}; /healthz meanwhile {healthz:?}",
        huge.len(),
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    for (status, body) in answers {
        assert_eq!(
            (status, error_code(&body)),
            (400, "context_length_exceeded".into()),
            "{body}"
        );
        assert!(
            body.contains("`messages` is"),
            "refused by its size, before tokenizing: {body}"
        );
    }
    assert!(
        growth < MEMORY_BOUND,
        "RSS grew by {} MiB, over the {} MiB bound",
        growth >> 20,
        MEMORY_BOUND >> 20
    );
    assert!(
        healthz < Duration::from_secs(1),
        "/healthz took {healthz:?} during the burst"
    );
    // And the server still answers a real chat.
    assert_eq!(exchange(addr, &head, small.as_bytes()).await.0, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_chat_without_max_tokens_stops_at_the_configured_default() {
    let config = GatewayConfig {
        server: ServerSection {
            default_max_tokens: 3,
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    };
    let app = gateway::app(AppState::new(shared_engine(), &config));
    let (status, body) = post_json(
        app.clone(),
        "/v1/chat/completions",
        &chat_body("Tell me a long story.", json!({"ignore_eos": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    // A client's own max_tokens still wins.
    let (_, body) = post_json(
        app,
        "/v1/chat/completions",
        &chat_body("Tell me a long story.", json!({"ignore_eos": true, "max_tokens": 5})),
    )
    .await;
    assert_eq!(body["usage"]["completion_tokens"], 5, "{body}");
}

#[tokio::test]
async fn unknown_roles_tools_for_a_template_without_them_and_response_formats_are_400s() {
    let app = crate::support::shared_app();
    let cases = [
        (
            json!({"messages": [{"role": "function", "content": "42", "name": "a"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
            "tools",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}}),
            "response_format",
        ),
        // Schemas the engine cannot enforce: a remote `$ref`, and one no value satisfies.
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema",
                "json_schema": {"name": "remote", "schema": {"$ref": "https://example.com/schema.json"}}}}),
            "response_format",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema",
                "json_schema": {"name": "never", "schema": {"type": "integer", "minimum": 5, "maximum": 2}}}}),
            "response_format",
        ),
    ];
    for (body, param) in cases {
        let (status, answer) = post_json(app.clone(), "/v1/chat/completions", &body).await;
        crate::support::assert_openai_error(
            axum::http::StatusCode::from_u16(status.as_u16()).unwrap(),
            &answer,
            axum::http::StatusCode::BAD_REQUEST,
            Some(param),
        );
    }
}

/// `hearth ARGS` with a config file holding `config` at `mode`; returns (success, stderr).
fn hearth_with_config(config: &str, mode: u32, args: &[&str]) -> (bool, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hearth.toml");
    std::fs::write(&file, config).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--config")
        .arg(&file)
        .args(args)
        .env_remove("HEARTH_CONFIG")
        .env_remove("HEARTH_API_KEY")
        .env_remove("RUST_LOG")
        .output()
        .expect("run hearth");
    let stderr = String::from_utf8_lossy(&output.stderr).replace(&file.display().to_string(), "FILE");
    (output.status.success(), stderr)
}

#[test]
fn careless_configurations_are_refused_or_warned_about_by_name() {
    // A world-readable file with keys: `config check` passes but says which file, why, and its mode.
    let (ok, stderr) = hearth_with_config("[server]\napi_keys = [\"sk-1\"]\n", 0o644, &["config", "check"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning: FILE holds server.api_keys but its mode is 0644"),
        "{stderr}"
    );
    let (ok, stderr) = hearth_with_config("[server]\napi_keys = [\"sk-1\"]\n", 0o600, &["config", "check"]);
    assert!(ok && !stderr.contains("warning"), "{stderr}");

    let refused = [
        ("[log]\nlevel = \"lots\"\n", "log.level"),
        ("[engine]\nkv_cache_tokens = 1000000000000\n", "engine.kv_cache_tokens"),
        ("[server]\napi_keys = [\"sk-one two\"]\n", "server.api_keys[0]"),
        (
            "[[skills.custom]]\nname = \"x\"\ntrigger = \"regex\"\npatterns = [\"(unclosed\"]\nreply = \"y\"\n",
            "custom[0].patterns[0]",
        ),
        ("[skills]\nescalate_patterns = [\"*\"]\n", "escalate_patterns[0]"),
    ];
    for (config, key) in refused {
        let (ok, stderr) = hearth_with_config(config, 0o600, &["config", "check"]);
        assert!(!ok && stderr.contains(key), "{config:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("sk-one"), "{stderr}");
    }

    // An absurd KV cache from the command line: a clear error before any allocation, no abort.
    let model = model_path();
    let (ok, stderr) = hearth_with_config(
        "",
        0o600,
        &[
            "generate",
            "--prompt",
            "hi",
            "--model",
            model.to_str().unwrap(),
            "--kv-cache-tokens",
            "10000000",
        ],
    );
    assert!(!ok && stderr.contains("kv_cache_tokens"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("memory allocation"),
        "{stderr}"
    );
    // A key with a space given on the command line is refused naming the flag.
    let (ok, stderr) = hearth_with_config(
        "",
        0o600,
        &[
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--api-key",
            "sk with space",
        ],
    );
    assert!(!ok && stderr.contains("--api-key"), "{stderr}");
}

#[tokio::test]
async fn named_keys_grant_only_their_scopes() {
    use gateway::access::Scope;
    use gateway::config::KeyEntry;
    let named = |name: &str, key: &str, scopes: &[Scope]| KeyEntry {
        name: name.to_owned(),
        key: Some(Secret(key.to_owned())),
        key_file: None,
        scopes: scopes.to_vec(),
    };
    let addr = spawn(GatewayConfig {
        server: ServerSection {
            keys: vec![
                named("grafana", "sk-metrics-only", &[Scope::Metrics]),
                named("ci", "sk-chat-only", &[Scope::Chat]),
                named("ops", "sk-ops-admin-0123456789", &[Scope::Admin, Scope::Metrics]),
            ],
            ..ServerSection::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    let bearer = |key: &str| format!("\r\nAuthorization: Bearer {key}");
    let chat = chat_body("Hi", json!({"max_tokens": 1})).to_string();
    let post_chat = |key: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json{}",
            bearer(key)
        )
    };
    // A metrics key cannot chat, nor administer, nor read the console's data.
    let (status, body) = exchange(addr, &post_chat("sk-metrics-only"), chat.as_bytes()).await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "insufficient_scope".into()),
        "{body}"
    );
    assert!(body.contains("chat"), "{body}");
    for path in ["/v1/models", "/admin/models", "/console/api/status"] {
        let (status, body) = get(addr, path, &bearer("sk-metrics-only")).await;
        assert_eq!(
            (status, error_code(&body)),
            (403, "insufficient_scope".into()),
            "{path}"
        );
    }
    let (status, body) = get(addr, "/metrics", &bearer("sk-metrics-only")).await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE"), "{body}");
    // /metrics is guarded now that a key has the metrics scope.
    assert_eq!(get(addr, "/metrics", "").await.0, 401);
    assert_eq!(get(addr, "/metrics", &bearer("sk-chat-only")).await.0, 403);
    assert_eq!(get(addr, "/metrics", &bearer("sk-ops-admin-0123456789")).await.0, 200);
    // The chat key chats and reads the console's data, and administers nothing.
    assert_eq!(exchange(addr, &post_chat("sk-chat-only"), chat.as_bytes()).await.0, 200);
    assert_eq!(get(addr, "/console/api/status", &bearer("sk-chat-only")).await.0, 200);
    assert_eq!(get(addr, "/admin/models", &bearer("sk-chat-only")).await.0, 403);
    // The admin key administers, and does not chat.
    assert_eq!(
        get(addr, "/admin/models", &bearer("sk-ops-admin-0123456789")).await.0,
        200
    );
    assert_eq!(
        exchange(addr, &post_chat("sk-ops-admin-0123456789"), chat.as_bytes())
            .await
            .0,
        403
    );
    // Unknown keys are 401s everywhere guarded.
    for path in ["/v1/models", "/admin/models", "/metrics", "/console/api/status"] {
        assert_eq!(get(addr, path, &bearer("sk-nobody")).await.0, 401, "{path}");
    }
}

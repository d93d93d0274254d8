//! `hearth doctor`, run as the real binary: each problem it must catch gives exit status 1 and a message
//! that says what is wrong and how to fix it; a healthy setup passes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::model_path;

/// Run `hearth doctor ARGS` with a private config file (mode `mode`) and data directory.
fn doctor(dir: &Path, mode: u32, args: &[&str]) -> Output {
    let config = dir.join("hearth.toml");
    fs::write(&config, format!("[data]\ndir = {:?}\n", dir.join("data"))).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(mode)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--config")
        .arg(&config)
        .arg("doctor")
        .args(args)
        .env_remove("HEARTH_MODEL")
        .env_remove("HEARTH_CONFIG")
        .output()
        .expect("run hearth doctor")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A port nobody listens on right now.
fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

#[test]
fn a_healthy_setup_passes() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_path();
    let output = doctor(
        dir.path(),
        0o600,
        &["--model", model.to_str().unwrap(), "--port", &free_port()],
    );
    let report = stdout(&output);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("all checks passed"), "{report}");
    assert!(report.contains("llama Q4_1"), "the model is inspected: {report}");
}

#[test]
fn a_truncated_model_fails() {
    let dir = tempfile::tempdir().unwrap();
    let whole = fs::read(model_path()).unwrap();
    let cut = dir.path().join("cut.gguf");
    fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let output = doctor(
        dir.path(),
        0o600,
        &["--model", cut.to_str().unwrap(), "--port", &free_port()],
    );
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL  model") && report.contains("is truncated"),
        "{report}"
    );
    assert!(report.contains("cut.gguf"), "names the file: {report}");
}

#[test]
fn a_config_readable_by_others_fails() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_path();
    let output = doctor(
        dir.path(),
        0o644,
        &["--model", model.to_str().unwrap(), "--port", &free_port()],
    );
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("readable by other users (mode 0644)") && report.contains("chmod 600"),
        "{report}"
    );
}

#[test]
fn a_missing_cpu_feature_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cpuinfo = dir.path().join("cpuinfo");
    // An x86-64-v2 machine: SSE4.2 and AVX, but no AVX2, FMA, F16C or BMI.
    fs::write(
        &cpuinfo,
        "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx movbe\n",
    )
    .unwrap();
    let model = model_path();
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--port",
        &free_port(),
        "--cpuinfo",
        cpuinfo.to_str().unwrap(),
    ];
    let output = doctor(dir.path(), 0o600, &args);
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("this CPU lacks AVX2, FMA, F16C, BMI1, BMI2"),
        "{report}"
    );
}

#[test]
fn a_port_in_use_fails() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let model = model_path();
    let output = doctor(
        dir.path(),
        0o600,
        &["--model", model.to_str().unwrap(), "--port", &port],
    );
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("127.0.0.1:{port} is already in use")),
        "{report}"
    );
}

/// `hearth doctor` with the config file `config` holding `text` (owner-only) and the model `model`. Run on a
/// blocking thread, so an emulator answers on the runtime's other thread while this one waits.
async fn doctor_with(config: &Path, text: &str, model: &Path) -> Output {
    fs::write(config, text).unwrap();
    fs::set_permissions(config, fs::Permissions::from_mode(0o600)).unwrap();
    let args = [
        "--config".to_owned(),
        config.to_str().unwrap().to_owned(),
        "doctor".to_owned(),
        "--model".to_owned(),
        model.to_str().unwrap().to_owned(),
        "--port".to_owned(),
        free_port(),
    ];
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env_remove("HEARTH_MODEL")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn im_credentials_and_permissions_are_checked_with_the_platform() {
    use emulator::dingtalk::{
        DingTalkEmulator, EmulatorConfig, FaultCommand, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
    };
    let dingtalk = DingTalkEmulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = model_path();
    // Accepted; refused; accepted but without the streaming permission.
    for (secret, accepted, revoke) in [
        (DEFAULT_CLIENT_SECRET, true, false),
        ("a-wrong-secret", false, false),
        (DEFAULT_CLIENT_SECRET, false, true),
    ] {
        if revoke {
            dingtalk
                .fault(FaultCommand::RevokePermission {
                    permission: "Card.Streaming.Write".to_owned(),
                })
                .unwrap();
        }
        let config = dir.path().join("hearth.toml");
        let text = format!(
            "[data]\ndir = {:?}\n[dingtalk]\napp_key = {DEFAULT_CLIENT_ID:?}\napp_secret = {secret:?}\ncard_template_id = \"t\"\napi_base_url = {:?}\n",
            dir.path().join("data"),
            dingtalk.base_url()
        );
        let output = doctor_with(&config, &text, &model).await;
        let report = stdout(&output);
        if accepted {
            assert!(output.status.success(), "{report}");
            assert!(report.contains("ok    im       DingTalk accepts app"), "{report}");
            for permission in ["Card.Instance.Write", "Card.Streaming.Write", "qyapi_robot_sendmsg"] {
                assert!(
                    report.contains(&format!("ok    im       DingTalk grants the `{permission}` permission")),
                    "{report}"
                );
            }
        } else if revoke {
            assert_eq!(output.status.code(), Some(1), "{report}");
            assert!(
                report
                    .contains("FAIL  im       DingTalk refuses the `Card.Streaming.Write` permission: grant it to app"),
                "{report}"
            );
            assert!(
                report.contains("ok    im       DingTalk grants the `Card.Instance.Write` permission"),
                "{report}"
            );
        } else {
            assert_eq!(output.status.code(), Some(1), "{report}");
            assert!(report.contains("FAIL  im       DingTalk app"), "{report}");
        }
    }
}

/// `[wecom]`: doctor checks the settings and that the long connection answers its handshake (without
/// subscribing, which would take the robot over), and fails a `ws_url` nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wecom_long_connection_is_checked_without_taking_the_robot_over() {
    use emulator::wecom::{EmulatorConfig, WeComEmulator, DEFAULT_BOT_ID, DEFAULT_SECRET};
    let wecom = WeComEmulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = model_path();
    let dead = format!("ws://127.0.0.1:{}", free_port());
    for (url, reachable) in [(wecom.ws_url(), true), (dead, false)] {
        let config = dir.path().join("hearth.toml");
        let text = format!(
            "[data]\ndir = {:?}\n[wecom]\nbot_id = {DEFAULT_BOT_ID:?}\nsecret = {DEFAULT_SECRET:?}\nws_url = {url:?}\n",
            dir.path().join("data"),
        );
        let output = doctor_with(&config, &text, &model).await;
        let report = stdout(&output);
        if reachable {
            assert!(output.status.success(), "{report}");
            assert!(
                report.contains("ok    im       WeCom long connection at ws://"),
                "{report}"
            );
            let stats = wecom.inspect(|w| w.stats());
            assert!(stats.connections_opened >= 1, "doctor opened the socket: {stats:?}");
            assert_eq!(
                stats.subscribes_ok + stats.subscribes_refused,
                0,
                "doctor subscribed: {stats:?}"
            );
        } else {
            assert_eq!(output.status.code(), Some(1), "{report}");
            assert!(report.contains("FAIL  im       WeCom long connection at"), "{report}");
        }
    }
    wecom.shutdown().await.unwrap();
}

#[path = "malformed_gguf.rs"]
mod malformed_gguf;

/// Every malformed file of [`malformed_gguf::cases`] goes through `Engine::load` (the load `hearth serve`,
/// `generate` and `chat` run) and through `hearth doctor`: the load refuses it with an error naming the key or
/// tensor (never a panic), doctor fails exactly the files the load refuses, with the same name in its report,
/// and a file claiming a huge context loads with rotary tables of the served context only.
/// `HEARTH_MALFORMED_DIR=DIR` keeps the files there (to try them on other builds).
#[test]
fn malformed_model_files_are_refused_by_load_and_doctor_alike() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::env::var_os("HEARTH_MALFORMED_DIR").map_or_else(|| dir.path().to_path_buf(), Into::into);
    fs::create_dir_all(&out).unwrap();
    let real = malformed_gguf::RawGguf::read(&model_path());
    let port = free_port();
    let mut problems = Vec::new();
    let (mut refused_by_load, mut refused_by_doctor, mut total) = (0, 0, 0);
    for case in malformed_gguf::cases() {
        total += 1;
        let mut gguf = real.clone();
        (case.make)(&mut gguf);
        let path = out.join(format!("{}.gguf", case.name));
        gguf.write(&path);
        let mut config = engine::EngineConfig::new(&path);
        (config.kv_cache_tokens, config.context_length, config.max_running) = (256, Some(256), 2);
        let loaded = std::panic::catch_unwind(|| engine::Engine::load(config));
        let load_error = match loaded {
            Err(_) => {
                problems.push(format!("{}: Engine::load panicked", case.name));
                continue;
            }
            Ok(Ok(engine)) => {
                engine.shutdown();
                None
            }
            Ok(Err(err)) => Some(err.to_string()),
        };
        refused_by_load += usize::from(load_error.is_some());
        let output = doctor(dir.path(), 0o600, &["--model", path.to_str().unwrap(), "--port", &port]);
        let report = stdout(&output);
        let doctor_failed = output.status.code() == Some(1);
        refused_by_doctor += usize::from(doctor_failed);
        match (case.names, &load_error) {
            (None, None) if output.status.success() => {}
            (None, _) => problems.push(format!(
                "{}: must load and pass doctor; load: {load_error:?}; doctor: {report}",
                case.name
            )),
            (Some(name), Some(err)) if err.contains(name) => {
                if !doctor_failed || !report.lines().any(|l| l.starts_with("FAIL  model") && l.contains(name)) {
                    problems.push(format!(
                        "{}: load refuses it ({err}) but doctor says: {report}",
                        case.name
                    ));
                }
            }
            (Some(name), err) => problems.push(format!("{}: load must name `{name}`, got {err:?}", case.name)),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {total} cases wrong (load refused {refused_by_load}, doctor failed {refused_by_doctor}):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(
        refused_by_load, refused_by_doctor,
        "doctor fails exactly what the load refuses"
    );
    assert_eq!(refused_by_load, total - 1, "every case but the huge context is refused");
}

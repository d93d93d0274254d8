//! `hearth doctor`: one report on whether this machine and configuration can run hearth, with a clear
//! message and a fix for every problem. Each check is independent; the report lists all of them.
//!
//! Checks: CPU features the binary was built for, GPU (when `nvidia-smi` exists), each model file (whole,
//! checksum when known, supported architecture, fits in memory with its KV cache, then loaded once on the
//! CPU with every check `hearth serve`'s load makes, and dropped), config file
//! permissions, the listening port, TLS (on or off; a certificate and key that do not parse or belong
//! together, a certificate expired or about to), the data directory, and the IM app's credentials (the platform must
//! issue an access token for them).

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use crate::config::{Config, ServerSection};
use crate::dingtalk::{DingTalkConfig, OpenApi};
use crate::model_path;
use crate::presets::Preset;
use crate::tls::Tls;
use rustls::pki_types::pem::PemObject;

/// CPU flags the default (x86-64-v3) build executes; without any of them it dies with SIGILL.
pub const REQUIRED_CPU_FLAGS: &[&str] = &["avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe"];

/// What the doctor looks at.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub config: Config,
    /// The configuration file, when one was given.
    pub config_path: Option<PathBuf>,
    /// `--model`: checked instead of the configured models.
    pub model: Option<PathBuf>,
    /// Where CPU flags are read (`/proc/cpuinfo`; another file simulates another CPU).
    pub cpuinfo: PathBuf,
    /// KV-cache tokens the engine will allocate (for the memory estimate).
    pub kv_cache_tokens: usize,
    /// Host and port `hearth serve` will listen on.
    pub host: String,
    pub port: u16,
}

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but worth knowing (no checksum to compare, no config file, …).
    Note,
    /// hearth will not run correctly until this is fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub message: String,
}

/// Every finding, in check order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, check: &'static str, status: Status, message: impl Into<String>) {
        self.findings.push(Finding {
            check,
            status,
            message: message.into(),
        });
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let status = match finding.status {
                Status::Ok => "ok",
                Status::Note => "note",
                Status::Fail => "FAIL",
            };
            writeln!(f, "{status:<5} {:<8} {}", finding.check, finding.message)?;
        }
        let failures = self.findings.iter().filter(|f| f.status == Status::Fail).count();
        match failures {
            0 => writeln!(f, "all checks passed"),
            n => writeln!(f, "{n} problem{} found", if n == 1 { "" } else { "s" }),
        }
    }
}

/// Run every check.
pub fn run(inputs: &Inputs) -> Report {
    let mut report = Report::default();
    check_cpu(&mut report, &inputs.cpuinfo);
    check_gpu(&mut report);
    check_models(&mut report, inputs);
    check_config_file(&mut report, inputs.config_path.as_deref());
    check_port(&mut report, &inputs.host, inputs.port);
    check_tls(&mut report, &inputs.config.server);
    check_data_dir(&mut report, &inputs.config.data.dir);
    if inputs.config.dingtalk.is_some() || inputs.config.feishu.is_none() {
        check_dingtalk(&mut report, inputs.config.dingtalk.as_ref());
    }
    if let Some(feishu) = &inputs.config.feishu {
        check_feishu(&mut report, feishu);
    }
    if let Some(wecom) = &inputs.config.wecom {
        check_wecom(&mut report, wecom);
    }
    report
}

fn check_cpu(report: &mut Report, cpuinfo: &Path) {
    let text = match fs::read_to_string(cpuinfo) {
        Ok(text) => text,
        Err(err) => return report.push("cpu", Status::Fail, format!("cannot read {}: {err}", cpuinfo.display())),
    };
    let flags: Vec<&str> = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("flags")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, f)| f)
        })
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let missing: Vec<&str> = REQUIRED_CPU_FLAGS
        .iter()
        .copied()
        .filter(|flag| !flags.contains(flag))
        .collect();
    if !missing.is_empty() {
        let names = missing
            .iter()
            .map(|f| f.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(", ");
        return report.push(
            "cpu",
            Status::Fail,
            format!(
                "this CPU lacks {names}: the default build targets x86-64-v3 (AVX2/FMA/F16C) and would stop with an \
                 illegal instruction; rebuild for this machine with `./install.sh --native`"
            ),
        );
    }
    let cores = text.lines().filter(|l| l.starts_with("processor")).count();
    let avx512 = if flags.contains(&"avx512f") {
        "; AVX-512 present"
    } else {
        ""
    };
    report.push(
        "cpu",
        Status::Ok,
        format!("AVX2, FMA, F16C, BMI2 present, {cores} logical cores{avx512}"),
    );
}

fn check_gpu(report: &mut Report) {
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.free,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                let fields: Vec<&str> = line.split(',').map(str::trim).collect();
                if let [name, driver, free, total] = fields[..] {
                    let build = if engine::Device::CUDA_BUILT {
                        "this build has CUDA: serve with --device cuda"
                    } else {
                        "this build is CPU-only: ./install.sh --cuda builds the CUDA one"
                    };
                    report.push(
                        "gpu",
                        Status::Note,
                        format!("{name}, driver {driver}, {free} MiB free of {total} MiB; {build}"),
                    );
                }
            }
        }
        Ok(out) => report.push(
            "gpu",
            Status::Fail,
            format!(
                "nvidia-smi failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
        Err(_) => report.push(
            "gpu",
            Status::Note,
            "no NVIDIA GPU found (no nvidia-smi): running on the CPU",
        ),
    }
}

/// The model files to check: `--model`, else `$HEARTH_MODEL`, else every configured model, else the
/// default model's path (not fetched).
fn model_files(inputs: &Inputs) -> Vec<(PathBuf, Option<String>)> {
    if let Some(path) = &inputs.model {
        return vec![(path.clone(), None)];
    }
    if let Some(path) = std::env::var_os("HEARTH_MODEL").filter(|v| !v.is_empty()) {
        return vec![(PathBuf::from(path), None)];
    }
    if !inputs.config.models.is_empty() {
        return inputs
            .config
            .models
            .iter()
            .map(|m| (m.path.clone(), m.sha256.clone()))
            .collect();
    }
    match model_path::default_model_path() {
        Ok(path) => vec![(path, Some(Preset::default_preset().sha256.to_owned()))],
        Err(_) => Vec::new(),
    }
}

fn check_models(report: &mut Report, inputs: &Inputs) {
    let files = model_files(inputs);
    if files.is_empty() {
        return report.push(
            "model",
            Status::Fail,
            "no model configured and no default models folder (set HOME or HEARTH_MODELS_DIR)",
        );
    }
    let available = mem_available_bytes();
    for (path, expected_sha) in files {
        let shown = path.display();
        if !path.is_file() {
            report.push(
                "model",
                Status::Fail,
                format!("{shown} does not exist (fetch it, or fix the path in [[models]] / --model)"),
            );
            continue;
        }
        let summary = match engine::inspect_model(&path) {
            Ok(summary) => summary,
            Err(err) => {
                report.push("model", Status::Fail, format!("{err}"));
                continue;
            }
        };
        let expected = expected_sha.or_else(|| sidecar_checksum(&path));
        match expected.map(|e| (sha256_file(&path), e)) {
            Some((Ok(actual), expected)) if actual.eq_ignore_ascii_case(&expected) => {
                report.push("model", Status::Ok, format!("{shown}: SHA-256 matches"));
            }
            Some((Ok(actual), expected)) => {
                report.push(
                    "model",
                    Status::Fail,
                    format!(
                        "{shown}: SHA-256 is {actual}, expected {expected}: the file is damaged or a different file"
                    ),
                );
                continue;
            }
            Some((Err(err), _)) => {
                report.push("model", Status::Fail, format!("cannot read {shown}: {err}"));
                continue;
            }
            None => report.push(
                "model",
                Status::Note,
                format!("{shown}: no checksum configured (models[].sha256 or {shown}.sha256); structure checked"),
            ),
        }
        let kv = summary.kv_bytes_per_token as u64 * inputs.kv_cache_tokens as u64;
        let needed = summary.file_bytes + kv;
        let detail = format!(
            "{} {}, {} on disk + {} KV cache ({} tokens)",
            summary.architecture,
            summary.quantization,
            gib(summary.file_bytes),
            gib(kv),
            inputs.kv_cache_tokens
        );
        match available {
            Some(free) if needed > free => {
                report.push(
                    "memory",
                    Status::Fail,
                    format!("{shown} needs about {} ({detail}) but only {} is available; lower engine.kv_cache_tokens or pick a smaller model", gib(needed), gib(free)),
                );
                // Loading it to check the weights could exhaust the memory this check just found short.
                continue;
            }
            Some(free) => report.push(
                "memory",
                Status::Ok,
                format!("{shown}: {detail}; {} available", gib(free)),
            ),
            None => report.push(
                "memory",
                Status::Note,
                format!("{shown}: {detail}; cannot read MemAvailable"),
            ),
        }
        // The load's own checks (hyperparameters, tensor shapes, NaN or infinite weights, the tokenizer
        // against the model), run by the same code as `hearth serve`: doctor passes what serve loads.
        let started = std::time::Instant::now();
        match engine::check_model(&path) {
            Ok(_) => report.push(
                "model",
                Status::Ok,
                format!(
                    "{shown}: loads (weights checked in {:.1} s)",
                    started.elapsed().as_secs_f64()
                ),
            ),
            Err(err) => report.push("model", Status::Fail, format!("{err}")),
        }
    }
}

fn check_config_file(report: &mut Report, path: Option<&Path>) {
    let Some(path) = path else {
        return report.push(
            "config",
            Status::Note,
            "no config file (--config or HEARTH_CONFIG): using defaults and HEARTH_* variables",
        );
    };
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                report.push(
                    "config",
                    Status::Fail,
                    format!(
                        "{} is readable by other users (mode {mode:04o}) and may hold secrets: run `chmod 600 {}`",
                        path.display(),
                        path.display()
                    ),
                );
            } else {
                report.push(
                    "config",
                    Status::Ok,
                    format!("{} is valid, mode {mode:04o}", path.display()),
                );
            }
        }
        Err(err) => report.push("config", Status::Fail, format!("cannot read {}: {err}", path.display())),
    }
}

fn check_port(report: &mut Report, host: &str, port: u16) {
    match TcpListener::bind((host, port)) {
        Ok(_) => report.push("port", Status::Ok, format!("{host}:{port} is free")),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => report.push(
            "port",
            Status::Fail,
            format!("{host}:{port} is already in use by another process (is hearth already running? see `ss -ltnp 'sport = :{port}'`); pick another server.port"),
        ),
        Err(err) => report.push("port", Status::Fail, format!("cannot listen on {host}:{port}: {err}")),
    }
}

/// A certificate expiring sooner than this is worth a note.
const CERT_EXPIRY_NOTE_SECS: i64 = 30 * 86_400;

fn check_tls(report: &mut Report, server: &ServerSection) {
    let tls = match Tls::from_config(server) {
        Ok(Some(tls)) => tls,
        Ok(None) if crate::access::is_loopback_host(&server.host) => {
            return report.push("tls", Status::Ok, "off: plain HTTP on loopback");
        }
        Ok(None) => {
            return report.push(
                "tls",
                Status::Note,
                format!(
                    "off: plain HTTP on {}; terminate TLS in a reverse proxy, or set server.tls_cert_file and \
                     server.tls_key_file",
                    server.host
                ),
            )
        }
        Err(err) => return report.push("tls", Status::Fail, err.to_string()),
    };
    let shown = tls.cert_file().display();
    let validity = fs::read(tls.cert_file())
        .ok()
        .and_then(|pem| rustls::pki_types::CertificateDer::from_pem_slice(&pem).ok())
        .and_then(|der| crate::tls::certificate_validity(&der));
    let Some((not_before, not_after)) = validity else {
        return report.push(
            "tls",
            Status::Note,
            format!("on: {shown} (cannot read its validity period)"),
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now > not_after.unix {
        report.push(
            "tls",
            Status::Fail,
            format!(
                "{shown} expired on {}: clients will refuse it; renew it",
                not_after.shown
            ),
        );
    } else if now < not_before.unix {
        report.push(
            "tls",
            Status::Fail,
            format!(
                "{shown} is not valid before {}: check the clock or the certificate",
                not_before.shown
            ),
        );
    } else if not_after.unix - now < CERT_EXPIRY_NOTE_SECS {
        report.push(
            "tls",
            Status::Note,
            format!("on: {shown} expires on {}, in under 30 days: renew it", not_after.shown),
        );
    } else {
        report.push(
            "tls",
            Status::Ok,
            format!("on: {shown}, valid until {}", not_after.shown),
        );
    }
}

fn check_data_dir(report: &mut Report, dir: &Path) {
    // The nearest existing ancestor is where the directory (and the database in it) will be created.
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let probe = existing.join(format!(".hearth-doctor-{}", std::process::id()));
    match File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            let state = if existing == dir {
                "is writable"
            } else {
                "will be created (its parent is writable)"
            };
            report.push("data", Status::Ok, format!("{} {state}", dir.display()));
        }
        Err(err) => report.push(
            "data",
            Status::Fail,
            format!(
                "{} is not writable ({}: {err}); fix its owner or set data.dir",
                dir.display(),
                existing.display()
            ),
        ),
    }
}

/// The DingTalk app: settings complete, the platform issues an access token for its key and secret, and
/// it grants the permission scopes the connector needs (each probed with a call that changes nothing).
fn check_dingtalk(report: &mut Report, config: Option<&DingTalkConfig>) {
    let Some(config) = config else {
        return report.push("im", Status::Note, "no IM platform configured ([dingtalk] is absent)");
    };
    if let Err(err) = config.validate() {
        return report.push("im", Status::Fail, format!("{err} (in the [dingtalk] section)"));
    }
    let checked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                let api = OpenApi::new(config.clone()).map_err(|e| e.to_string())?;
                let within = |what| format!("no answer from {} within 15 s ({what})", config.api_base_url);
                match tokio::time::timeout(Duration::from_secs(15), api.check_credentials()).await {
                    Ok(result) => result.map_err(|e| e.to_string())?,
                    Err(_) => return Err(within("access token")),
                }
                tokio::time::timeout(Duration::from_secs(15), api.probe_permissions())
                    .await
                    .map_err(|_| within("permission probes"))
            })
        });
    let verdicts = match checked {
        Ok(verdicts) => verdicts,
        Err(err) => {
            let hint = format!(
                "check app_key/app_secret and the network path to {}",
                config.api_base_url
            );
            return report.push(
                "im",
                Status::Fail,
                format!("DingTalk app {}: {err}; {hint}", config.app_key),
            );
        }
    };
    report.push(
        "im",
        Status::Ok,
        format!(
            "DingTalk accepts app {} at {} (access token issued)",
            config.app_key, config.api_base_url
        ),
    );
    for (permission, verdict) in verdicts {
        match verdict {
            Ok(true) => report.push("im", Status::Ok, format!("DingTalk grants the `{permission}` permission")),
            Ok(false) => report.push(
                "im",
                Status::Fail,
                format!("DingTalk refuses the `{permission}` permission: grant it to app {} in the DingTalk developer console", config.app_key),
            ),
            Err(err) => report.push("im", Status::Note, format!("cannot tell whether DingTalk grants `{permission}`: {err}")),
        }
    }
}

/// The Feishu app: settings complete, the platform issues a tenant token for its id and secret, and it
/// grants the scopes the connector needs (im:message, im:message:send_as_bot, cardkit:card:write), each
/// probed with a call that changes nothing.
fn check_feishu(report: &mut Report, config: &crate::feishu::FeishuConfig) {
    if let Err(err) = config.validate() {
        return report.push("im", Status::Fail, format!("{err} (in the [feishu] section)"));
    }
    let base = config.base().to_owned();
    let checked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                let api = crate::feishu::OpenApi::new(config.clone()).map_err(|e| e.to_string())?;
                let late = |what| format!("no answer from {base} within 15 s ({what})");
                tokio::time::timeout(Duration::from_secs(15), api.check_credentials())
                    .await
                    .map_err(|_| late("tenant token"))?
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(Duration::from_secs(15), api.probe_scopes())
                    .await
                    .map_err(|_| late("scope probes"))
            })
        });
    let verdicts = match checked {
        Ok(verdicts) => verdicts,
        Err(err) => {
            let message = format!(
                "Feishu app {}: {err}; check app_id/app_secret and domain",
                config.app_id
            );
            return report.push("im", Status::Fail, message);
        }
    };
    let accepted = format!("Feishu accepts app {} at {base} (tenant token issued)", config.app_id);
    report.push("im", Status::Ok, accepted);
    for (scope, verdict) in verdicts {
        let (status, line) = match verdict {
            Ok(true) => (Status::Ok, format!("Feishu grants the `{scope}` scope")),
            Ok(false) => (
                Status::Fail,
                format!(
                    "Feishu refuses the `{scope}` scope: grant it to app {} in the Feishu developer console",
                    config.app_id
                ),
            ),
            Err(err) => (
                Status::Note,
                format!("cannot tell whether Feishu grants `{scope}`: {err}"),
            ),
        };
        report.push("im", status, line);
    }
}

/// The WeCom robot: settings complete, and in long-connection mode the WebSocket answers its handshake.
/// The robot is not subscribed: one connection per robot is live, so a subscription would take it over from
/// a running hearth.
fn check_wecom(report: &mut Report, config: &crate::wecom::WeComConfig) {
    if let Err(err) = config.validate() {
        return report.push("im", Status::Fail, format!("{err} (in the [wecom] section)"));
    }
    if config.mode == crate::wecom::Mode::Callback {
        let line = format!(
            "WeCom robot {}: URL mode, Token and EncodingAESKey valid; WeCom must reach this server's \
             /im/wecom/callback",
            config.bot_id
        );
        return report.push("im", Status::Ok, line);
    }
    let url = config.ws_url.clone();
    let opened = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                let handshake = tokio_tungstenite::connect_async(url.as_str());
                let (mut socket, _) = tokio::time::timeout(Duration::from_secs(15), handshake)
                    .await
                    .map_err(|_| "no answer within 15 s".to_owned())?
                    .map_err(|e| e.to_string())?;
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                Ok::<_, String>(())
            })
        });
    match opened {
        Ok(()) => report.push(
            "im",
            Status::Ok,
            format!(
                "WeCom long connection at {url} answers (robot {} not subscribed: that would take it over \
                 from a running hearth)",
                config.bot_id
            ),
        ),
        Err(err) => report.push(
            "im",
            Status::Fail,
            format!("WeCom long connection at {url}: {err}; check ws_url and the network"),
        ),
    }
}

/// `FILE.sha256` next to the model, in `sha256sum` format (or the bare digest).
fn sidecar_checksum(path: &Path) -> Option<String> {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    let text = fs::read_to_string(PathBuf::from(name)).ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    model_path::copy_hashing(&mut File::open(path)?, &mut io::sink())
}

fn mem_available_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

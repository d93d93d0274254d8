//! The llama.cpp half: start `llama-server` on loopback and measure it over its native `/completion` endpoint.
//!
//! Prefill and decode speeds come from the server's own `timings` object (`prompt_per_second`,
//! `predicted_per_second`); time to first token, inter-token latency and aggregate throughput are measured
//! here, on the client, with streaming responses (one event per token). Every request sets
//! `cache_prompt: false` and `ignore_eos: true`, and the server runs with `--cache-ram 0`, so nothing is served
//! from a prompt cache.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde::Deserialize;

use indicatif::ProgressBar;

use crate::prompt::Workload;
use crate::provenance::Device;
use crate::report::{EngineKind, EngineResults, SingleStream};
use crate::stats::{gaps, ms, LevelRun, StreamTrace};
use crate::sweep::{self, note, progress_bar, LevelPlan};

/// How long a server may take to load the model and answer `/health`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

/// How to start one `llama-server`.
pub struct ServerConfig<'a> {
    pub binary: &'a Path,
    pub model: &'a Path,
    pub device: Device,
    pub threads: usize,
    /// Number of slots (`-np`): the most requests it decodes at once.
    pub slots: usize,
    /// Context per slot; the server gets `slots × ctx_per_slot` in total (`-c`).
    pub ctx_per_slot: usize,
}

/// A running `llama-server` child process, killed when dropped (also on errors and panics).
pub struct LlamaServer {
    child: Child,
    base_url: String,
    log_path: PathBuf,
}

impl LlamaServer {
    /// Start the server on a free loopback port and wait until `/health` answers 200.
    pub async fn start(config: &ServerConfig<'_>, client: &reqwest::Client) -> Result<Self> {
        let port = free_port()?;
        let log_path =
            std::env::temp_dir().join(format!("hearth-bench-llama-server-{}-{port}.log", std::process::id()));
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        let ctx = config.slots * config.ctx_per_slot;
        let mut command = Command::new(config.binary);
        command
            .arg("-m")
            .arg(config.model)
            .args(["-t", &config.threads.to_string()])
            .args(["-c", &ctx.to_string()])
            .args(["-np", &config.slots.to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--cache-ram", "0"]);
        // The one place the device reaches llama-server: on a GPU, every layer is offloaded to it.
        let gpu = match config.device {
            Device::Cpu => String::new(),
            Device::Cuda(n) => {
                command.args(["-ngl", "999", "--split-mode", "none", "--main-gpu", &n.to_string()]);
                format!(" -ngl 999 --split-mode none --main-gpu {n}")
            }
        };
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        eprintln!(
            "llama.cpp: starting {} -t {} -c {ctx} -np {} --cache-ram 0{gpu} on 127.0.0.1:{port} (log: {})",
            config.binary.display(),
            config.threads,
            config.slots,
            log_path.display()
        );
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", config.binary.display()))?;
        let mut server = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path,
        };
        server.wait_healthy(client).await?;
        Ok(server)
    }

    async fn wait_healthy(&mut self, client: &reqwest::Client) -> Result<()> {
        let start = Instant::now();
        let url = format!("{}/health", self.base_url);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "llama-server exited with {status} before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if start.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "llama-server did not become healthy within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// One single-stream run of `g` tokens after `prompt`: the server's decode tok/s.
    pub async fn decode_run(
        &self,
        client: &reqwest::Client,
        prompt: &[u32],
        g: usize,
        bar: &ProgressBar,
    ) -> Result<f64> {
        let run = self.complete(client, prompt, g, bar).await?;
        if run.timings.predicted_n != g {
            note(
                bar,
                &format!(
                    "llama.cpp: warning: generated {} of {g} tokens",
                    run.timings.predicted_n
                ),
            );
        }
        Ok(run.timings.predicted_per_second)
    }

    /// One streamed `/completion` request; `bar` advances by one per streamed token.
    async fn complete(
        &self,
        client: &reqwest::Client,
        prompt: &[u32],
        n_predict: usize,
        bar: &ProgressBar,
    ) -> Result<Run> {
        let body = serde_json::json!({
            "prompt": prompt,
            "n_predict": n_predict,
            "ignore_eos": true,
            "cache_prompt": false,
            "temperature": 0.0,
            "stream": true,
        });
        let start = Instant::now();
        let resp = client
            .post(format!("{}/completion", self.base_url))
            .json(&body)
            .send()
            .await
            .context("sending a /completion request to llama-server")?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!("llama-server answered {status}: {text}");
        }
        // One event per token, then a final one (`stop: true`) with the timings and no new token.
        let mut arrivals = Vec::new();
        let mut buf = Vec::<u8>::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.context("reading the llama-server stream")?);
            let now = Instant::now();
            // Server-sent events are separated by a blank line.
            while let Some(pos) = find_event_end(&buf) {
                let event: Vec<u8> = buf.drain(..pos).collect();
                let event = String::from_utf8_lossy(&event);
                for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                    let msg: StreamMessage =
                        serde_json::from_str(data).with_context(|| format!("parsing a llama-server event: {data}"))?;
                    if let Some(err) = msg.error {
                        bail!("llama-server error: {err}");
                    }
                    if msg.stop {
                        let timings = msg.timings.context("the final llama-server event has no `timings`")?;
                        let first = arrivals.first().copied().unwrap_or(now);
                        let trace = StreamTrace {
                            ttft: first.saturating_duration_since(start),
                            gaps: gaps(&arrivals),
                            tokens: timings.predicted_n,
                        };
                        return Ok(Run { trace, timings });
                    }
                    arrivals.push(now);
                    bar.inc(1);
                }
            }
        }
        bail!("the llama-server stream ended without a final event")
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Failures have already quoted the log's tail in their error.
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The byte offset just past the first complete event (`\n\n`) in `buf`.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2)
}

/// A port that was free a moment ago (the server binds it next; a race is possible but unlikely on loopback).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

#[derive(Deserialize)]
struct StreamMessage {
    #[serde(default)]
    stop: bool,
    timings: Option<Timings>,
    error: Option<serde_json::Value>,
}

/// The part of llama-server's `timings` object used here.
#[derive(Debug, Clone, Deserialize)]
struct Timings {
    prompt_n: usize,
    prompt_per_second: f64,
    predicted_n: usize,
    predicted_per_second: f64,
}

/// One finished request.
struct Run {
    /// Client-side: when each token's event arrived, from sending the request.
    trace: StreamTrace,
    timings: Timings,
}

/// Settings of the llama.cpp half.
pub struct LlamaConfig<'a> {
    pub binary: &'a Path,
    pub model: &'a Path,
    pub device: Device,
    pub threads: usize,
}

impl<'a> LlamaConfig<'a> {
    /// The server for `workload` with `slots` slots: room per slot for the prompt, the generated tokens and a
    /// little slack.
    pub fn server(&self, workload: &Workload, slots: usize) -> ServerConfig<'a> {
        ServerConfig {
            binary: self.binary,
            model: self.model,
            device: self.device,
            threads: self.threads,
            slots,
            ctx_per_slot: (workload.prompt_tokens + workload.gen_tokens + 64).next_multiple_of(256),
        }
    }
}

/// Measure llama.cpp on `workload` into `results`: single-stream figures on a one-slot server, then one
/// server per concurrency level with that many slots. What was measured before an error (or an interrupt,
/// which drops this future and kills the server) stays in `results`.
pub async fn measure(
    config: &LlamaConfig<'_>,
    workload: &Workload,
    max_seconds: Duration,
    results: &mut EngineResults,
) -> Result<()> {
    let client = reqwest::Client::builder().build().context("building the HTTP client")?;
    let g = workload.gen_tokens;
    let server_config = |slots| config.server(workload, slots);
    let hidden = ProgressBar::hidden();

    let single = LlamaServer::start(&server_config(1), &client).await?;
    {
        let server = &single;
        server
            .complete(&client, &workload.warmup, 8, &hidden)
            .await
            .context("warm-up request")?;

        let repeat = workload.prefill.len();
        let bar = progress_bar((repeat * (1 + g)) as u64, "llama.cpp single stream".to_string());
        bar.set_message("prefill");
        let mut prefill = Vec::new();
        let mut ttft = Vec::new();
        for prompt in &workload.prefill {
            let run = server.complete(&client, prompt, 1, &bar).await?;
            if run.timings.prompt_n != prompt.len() {
                note(
                    &bar,
                    &format!(
                        "llama.cpp: warning: processed {} of {} prompt tokens (a cache hit?)",
                        run.timings.prompt_n,
                        prompt.len()
                    ),
                );
            }
            prefill.push(run.timings.prompt_per_second);
            ttft.push(ms(run.trace.ttft));
        }
        bar.set_message("decode");
        let mut decode = Vec::new();
        for prompt in &workload.decode {
            decode.push(server.decode_run(&client, prompt, g, &bar).await?);
        }
        bar.finish_and_clear();
        results.single = Some(SingleStream::from_runs(EngineKind::LlamaCpp, &prefill, &decode, &ttft));
    }

    let mut single = Some(single);
    let mut over_budget = false;
    for (c, runs) in &workload.aggregate {
        if over_budget {
            results.skipped.push(*c);
            continue;
        }
        // One stream reuses the single-slot server; otherwise a fresh server with one slot per stream.
        let fresh;
        let server = match single.as_ref().filter(|_| *c == 1) {
            Some(s) => s,
            None => {
                // Only one server runs at a time: the single-slot one stops here, each fresh one at the end
                // of its iteration.
                single = None;
                fresh = LlamaServer::start(&server_config(*c), &client).await?;
                fresh
                    .complete(&client, &workload.warmup, 8, &hidden)
                    .await
                    .context("warm-up request")?;
                &fresh
            }
        };
        let client = &client;
        let outcome = sweep::level(
            LevelPlan {
                engine: EngineKind::LlamaCpp,
                concurrency: *c,
                planned_runs: runs.len(),
                gen_tokens: g,
                max_seconds,
            },
            |i, bar| run_streams(server, client, &runs[i], g, bar),
        )
        .await?;
        over_budget = outcome.over_budget;
        results.levels.push(outcome.level);
    }
    Ok(())
}

/// One run of a level: every request sent at once, all streams read concurrently.
async fn run_streams(
    server: &LlamaServer,
    client: &reqwest::Client,
    prompts: &[Vec<u32>],
    g: usize,
    bar: ProgressBar,
) -> Result<LevelRun> {
    let start = Instant::now();
    let results = futures::future::join_all(prompts.iter().map(|p| server.complete(client, p, g, &bar))).await;
    let wall = start.elapsed();
    let runs = results.into_iter().collect::<Result<Vec<_>>>()?;
    for (r, p) in runs.iter().zip(prompts) {
        if r.timings.prompt_n != p.len() {
            let line = format!(
                "llama.cpp: warning: processed {} of {} prompt tokens",
                r.timings.prompt_n,
                p.len()
            );
            note(&bar, &line);
        }
    }
    Ok(LevelRun {
        wall,
        streams: runs.into_iter().map(|r| r.trace).collect(),
    })
}

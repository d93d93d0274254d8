//! `im-bench`: an IM platform's path end to end, through its emulator (`emulator::dingtalk`, or with
//! `--platform feishu` `emulator::feishu`, in `im_bench_feishu.rs`) and a real `hearth serve` child process
//! on loopback.
//!
//! Two figures:
//! - **message → first visible card token**, p50/p99, with `--conversations` 1:1 conversations talking at
//!   once to the real model (each sends `--rounds` messages, one after the other's answer);
//! - **gateway messages/s** with an `echo` skill answering every message (the model loaded, never asked),
//!   `--echo-messages` messages posted at once across the same conversations.
//!
//! Latencies come from the emulator's own clock: when the user message was recorded, and when the first
//! card update with text was accepted. It measures and never asserts; prints a markdown table, and after
//! it where the model run's time went, from the histograms `hearth serve` exposes at `/metrics`
//! (`im_bench_metrics`, scraped once the run is over).
#![forbid(unsafe_code)]

mod im_bench_feishu;
mod im_bench_metrics;
mod im_bench_wecom;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use emulator::dingtalk::{
    CardStatus, ChatEntry, DingTalkEmulator, EmulatorConfig, UserMessage, World, DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
};

/// Benchmark an IM connector through its platform's emulator.
#[derive(Parser, Debug)]
#[command(name = "im-bench", version)]
struct Args {
    /// The platform: `dingtalk`, `feishu` (`im_bench_feishu`) or `wecom` (the long connection;
    /// `im_bench_wecom`).
    #[arg(long, value_enum, default_value_t = Platform::Dingtalk)]
    platform: Platform,
    /// The GGUF model file [default: ~/.cache/hearth/models/SmolLM2-135M-Instruct.Q4_1.gguf]
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// The `hearth` binary [default: next to this one]
    #[arg(long, value_name = "FILE")]
    hearth: Option<PathBuf>,
    /// Concurrent conversations.
    #[arg(long, default_value_t = 50)]
    conversations: usize,
    /// Messages per conversation in the model run.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Most answer tokens in the model run.
    #[arg(long, default_value_t = 16)]
    max_answer_tokens: usize,
    /// Messages in the echo run.
    #[arg(long, default_value_t = 1000)]
    echo_messages: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// The IM platforms `im-bench` drives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Platform {
    Dingtalk,
    Feishu,
    Wecom,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let model = match &args.model {
        Some(model) => model.clone(),
        None => PathBuf::from(std::env::var("HOME").context("HOME is not set")?)
            .join(".cache/hearth/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    let hearth = match &args.hearth {
        Some(hearth) => hearth.clone(),
        None => std::env::current_exe()?.with_file_name("hearth"),
    };
    if !hearth.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p gateway` or pass --hearth",
            hearth.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (run, echo) = runtime.block_on(async {
        if args.platform == Platform::Feishu {
            return im_bench_feishu::run(&args, &hearth, &model).await;
        }
        if args.platform == Platform::Wecom {
            return im_bench_wecom::run(&args, &hearth, &model).await;
        }
        let run = model_run(&args, &hearth, &model).await?;
        let echo = echo_run(&args, &hearth, &model).await?;
        anyhow::Ok((run, echo))
    })?;
    let ttft = &run.latencies;
    println!("| figure | value |");
    println!("|---|---|");
    println!("| platform | {:?} |", args.platform);
    println!("| conversations | {} |", args.conversations);
    println!(
        "| message → first visible card token, p50 (model, {} messages) | {:.0} ms |",
        ttft.len(),
        percentile(ttft, 0.50)
    );
    println!(
        "| message → first visible card token, p99 (model) | {:.0} ms |",
        percentile(ttft, 0.99)
    );
    println!(
        "| gateway messages/s (echo skill, {} messages) | {:.1} |",
        args.echo_messages, echo
    );
    println!();
    im_bench_metrics::print_breakdown(&run.metrics, CARD_UPDATE_INTERVAL_MS);
    Ok(())
}

/// The `card_update_interval_ms` (WeCom: `stream_update_interval_ms`) every platform's config sets.
const CARD_UPDATE_INTERVAL_MS: u64 = 100;

/// What a model run measured: the emulator's first-visible latencies (ms), and hearth's `/metrics` page
/// once the run was over.
pub struct ModelRun {
    pub latencies: Vec<f64>,
    pub metrics: String,
}

/// The `hearth serve` config: the connector pointed at the emulator, limits out of the way.
fn write_config(dir: &Path, dingtalk: &DingTalkEmulator, max_answer_tokens: usize, echo: bool) -> Result<PathBuf> {
    let text = format!(
        "[dingtalk]\napp_key = \"{DEFAULT_CLIENT_ID}\"\napp_secret = \"{DEFAULT_CLIENT_SECRET}\"\ncard_template_id = \"bench.schema\"\n\
         api_base_url = \"{}\"\ndatabase = \"{}\"\ncard_update_interval_ms = {CARD_UPDATE_INTERVAL_MS}\n\
         card_updates_per_second = 1000\n\
         user_requests_per_second = 1000\nmax_answer_tokens = {max_answer_tokens}\n",
        dingtalk.base_url(),
        dir.join("dingtalk.sqlite3").display()
    );
    write_hearth_toml(dir, text, echo)
}

/// Write `text` (with the echo skill when `echo`) as `dir/hearth.toml`, readable by its owner only (it holds
/// the app's secret, and hearth warns about a config others may read).
fn write_hearth_toml(dir: &Path, mut text: String, echo: bool) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if echo {
        text.push_str(ECHO_SKILL);
    }
    let path = dir.join("hearth.toml");
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// The `[skills]` section of the echo run: every message answered with itself.
const ECHO_SKILL: &str =
    "[skills]\n[[skills.custom]]\nname = \"echo\"\ntrigger = \"regex\"\npatterns = [\"(?s).*\"]\nreply = \"{text}\"\n";

/// A `hearth serve` child process and the loopback port it listens on.
struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// `hearth serve` with `config`, logging warnings to stderr.
    /// It listens on a port free a moment before, so `/metrics` can be read.
    fn spawn(hearth: &Path, model: &Path, config: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(hearth)
            .args(["serve", "--port", &port.to_string(), "--ctx-size", "1024", "--model"])
            .arg(model)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", hearth.display()))?;
        Ok(Self(child, port))
    }

    /// Read `/metrics` once, retrying until the server answers: hearth installs its metrics recorder on the
    /// first scrape, and what is recorded before it is lost, so the model run scrapes before its first
    /// message.
    async fn first_scrape(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.scrape().await {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() > deadline => return Err(err.context("hearth's /metrics never answered")),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The server's `/metrics` page (Prometheus text).
    async fn scrape(&self) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.1);
        let response = reqwest::get(&url).await?.error_for_status()?;
        Ok(response.text().await?)
    }
}

async fn start(hearth: &Path, model: &Path, config: &Path, dingtalk: &DingTalkEmulator) -> Result<Server> {
    let server = Server::spawn(hearth, model, config)?;
    dingtalk
        .wait_for(Duration::from_secs(120), |w| {
            (w.stats().live_connections == 1).then_some(())
        })
        .await?;
    Ok(server)
}

fn post(dingtalk: &DingTalkEmulator, user: &str, text: &str) -> Result<()> {
    dingtalk.post_message(UserMessage::single(user, text))?;
    Ok(())
}

/// Finished cards across every conversation.
fn finished(world: &World) -> usize {
    world
        .conversation_ids()
        .iter()
        .flat_map(|id| world.cards_in(id))
        .filter(|c| c.status == CardStatus::Finished)
        .count()
}

async fn model_run(args: &Args, hearth: &Path, model: &Path) -> Result<ModelRun> {
    let dingtalk = DingTalkEmulator::start(
        EmulatorConfig {
            qps_per_api: 0,
            ..EmulatorConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &dingtalk, args.max_answer_tokens, false)?;
    let server = start(hearth, model, &config, &dingtalk).await?;
    server.first_scrape().await?;
    let questions = [
        "Name a color.",
        "Tell me a short fact about the sea.",
        "What is two plus two?",
        "Say hello.",
    ];
    let started = Instant::now();
    for round in 0..args.rounds {
        for c in 0..args.conversations {
            post(
                &dingtalk,
                &format!("bench{c:03}"),
                questions[(c + round) % questions.len()],
            )?;
        }
        let want = (round + 1) * args.conversations;
        dingtalk
            .wait_for(Duration::from_secs(args.timeout_secs), |w| {
                (finished(w) >= want).then_some(())
            })
            .await?;
        eprintln!(
            "round {} of {} done after {:.1} s",
            round + 1,
            args.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    let latencies = dingtalk.inspect(first_visible_latencies);
    let metrics = server.scrape().await.context("cannot read hearth's /metrics")?;
    drop(server);
    dingtalk.shutdown().await?;
    Ok(ModelRun { latencies, metrics })
}

/// For every user message: milliseconds from the message to the first card update carrying text.
fn first_visible_latencies(world: &World) -> Vec<f64> {
    let mut latencies = Vec::new();
    for id in world.conversation_ids() {
        let Some(conversation) = world.conversation(&id) else {
            continue;
        };
        let cards = world.cards_in(&id);
        let asked = conversation.messages.iter().filter_map(|m| match m {
            ChatEntry::User { at_ms, .. } => Some(*at_ms),
            _ => None,
        });
        for (at_ms, card) in asked.zip(cards.iter()) {
            let shown = card
                .updates
                .iter()
                .find(|u| u.content.as_deref().is_some_and(|c| !c.trim().is_empty()))
                .map(|u| u.at_ms);
            if let Some(shown) = shown {
                latencies.push(shown.saturating_sub(at_ms) as f64);
            }
        }
    }
    latencies
}

async fn echo_run(args: &Args, hearth: &Path, model: &Path) -> Result<f64> {
    let dingtalk = DingTalkEmulator::start(
        EmulatorConfig {
            qps_per_api: 0,
            ..EmulatorConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &dingtalk, args.max_answer_tokens, true)?;
    let server = start(hearth, model, &config, &dingtalk).await?;
    let started = Instant::now();
    for i in 0..args.echo_messages {
        post(
            &dingtalk,
            &format!("echo{:03}", i % args.conversations),
            &format!("message {i}"),
        )?;
    }
    dingtalk
        .wait_for(Duration::from_secs(args.timeout_secs), |w| {
            (finished(w) >= args.echo_messages).then_some(())
        })
        .await?;
    let rate = args.echo_messages as f64 / started.elapsed().as_secs_f64();
    drop(server);
    dingtalk.shutdown().await?;
    Ok(rate)
}

/// The `q` quantile of `values` (nearest rank); 0 when empty.
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

//! `im-bench --platform wecom`: the WeCom path end to end, through the emulator (`emulator::wecom`) over
//! the long connection and a real `hearth serve` child process on loopback. The same two figures as the
//! DingTalk run: message → first visible stream text (p50/p99, the real model) and gateway messages/s
//! (an `echo` skill). Latencies come from the emulator's clock: when the user's message was recorded, and
//! when the first stream snapshot with text (not the placeholder) was accepted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use emulator::wecom::{
    EmulatorConfig, InFlightOverflow, MessageState, UserMessage, WeComEmulator, World, DEFAULT_BOT_ID, DEFAULT_SECRET,
};

use crate::{Args, ModelRun, Server, CARD_UPDATE_INTERVAL_MS};

/// The placeholder hearth opens a stream with.
const PLACEHOLDER: &str = "<think></think>";

/// Both runs: the model run (first-visible latencies, hearth's metrics), and the echo run's messages/s.
pub(crate) async fn run(args: &Args, hearth: &Path, model: &Path) -> Result<(ModelRun, f64)> {
    let ttft = model_run(args, hearth, model).await?;
    let echo = echo_run(args, hearth, model).await?;
    Ok((ttft, echo))
}

async fn emulator() -> Result<WeComEmulator> {
    let config = EmulatorConfig {
        max_in_flight_per_user: 0,
        in_flight_overflow: InFlightOverflow::Hold,
        max_messages: 100_000,
        ..EmulatorConfig::default()
    };
    Ok(WeComEmulator::start(config, "127.0.0.1:0".parse()?).await?)
}

/// The `hearth serve` config: the connector pointed at the emulator, limits out of the way.
fn write_config(dir: &Path, wecom: &WeComEmulator, max_answer_tokens: usize, echo: bool) -> Result<PathBuf> {
    let text = format!(
        "[wecom]\nbot_id = \"{DEFAULT_BOT_ID}\"\nsecret = \"{DEFAULT_SECRET}\"\nws_url = \"{}\"\ndatabase = \"{}\"\n\
         stream_update_interval_ms = {CARD_UPDATE_INTERVAL_MS}\nupdates_per_second = 1000\nuser_requests_per_second = 1000\n\
         max_answer_tokens = {max_answer_tokens}\n",
        wecom.ws_url(),
        dir.join("wecom.sqlite3").display()
    );
    crate::write_hearth_toml(dir, text, echo)
}

async fn start(hearth: &Path, model: &Path, config: &Path, wecom: &WeComEmulator) -> Result<Server> {
    let server = crate::Server::spawn(hearth, model, config)?;
    wecom
        .wait_for(Duration::from_secs(120), |w| w.subscribed().then_some(()))
        .await?;
    Ok(server)
}

/// Messages answered.
fn answered(world: &World) -> usize {
    world
        .messages()
        .iter()
        .filter(|m| m.state == MessageState::Answered)
        .count()
}

async fn model_run(args: &Args, hearth: &Path, model: &Path) -> Result<ModelRun> {
    let wecom = emulator().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &wecom, args.max_answer_tokens, false)?;
    let server = start(hearth, model, &config, &wecom).await?;
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
            let text = questions[(c + round) % questions.len()];
            wecom.post_message(UserMessage::single(&format!("bench{c:03}"), text))?;
        }
        let want = (round + 1) * args.conversations;
        wecom
            .wait_for(Duration::from_secs(args.timeout_secs), |w| {
                (answered(w) >= want).then_some(())
            })
            .await?;
        eprintln!(
            "round {} of {} done after {:.1} s",
            round + 1,
            args.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    let latencies = wecom.inspect(first_visible_latencies);
    let metrics = server.scrape().await?;
    drop(server);
    wecom.shutdown().await?;
    Ok(ModelRun { latencies, metrics })
}

/// For every user message: milliseconds from the message to the first accepted snapshot with text.
fn first_visible_latencies(world: &World) -> Vec<f64> {
    let mut latencies = Vec::new();
    for message in world.messages() {
        let shown = message
            .stream_ids
            .first()
            .and_then(|id| world.stream(id))
            .and_then(|stream| {
                stream
                    .updates
                    .iter()
                    .find(|u| u.errcode == 0 && !u.content.trim().is_empty() && u.content != PLACEHOLDER)
            })
            .map(|u| u.at_ms);
        if let Some(shown) = shown {
            latencies.push(shown.saturating_sub(message.created_ms) as f64);
        }
    }
    latencies
}

async fn echo_run(args: &Args, hearth: &Path, model: &Path) -> Result<f64> {
    let wecom = emulator().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &wecom, args.max_answer_tokens, true)?;
    let server = start(hearth, model, &config, &wecom).await?;
    let started = Instant::now();
    for i in 0..args.echo_messages {
        let user = format!("echo{:03}", i % args.conversations);
        wecom.post_message(UserMessage::single(&user, &format!("message {i}")))?;
    }
    wecom
        .wait_for(Duration::from_secs(args.timeout_secs), |w| {
            (answered(w) >= args.echo_messages).then_some(())
        })
        .await?;
    let rate = args.echo_messages as f64 / started.elapsed().as_secs_f64();
    drop(server);
    wecom.shutdown().await?;
    Ok(rate)
}

//! `im-bench --platform feishu`: the same two figures as the DingTalk run, through the Feishu emulator
//! (`emulator::feishu`): the first visible card text is the first CardKit `content` call the platform
//! applied to the card replying to the message.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use emulator::feishu::{
    ChatEntry, EmulatorConfig, FeishuEmulator, UserMessage, World, DEFAULT_APP_ID, DEFAULT_APP_SECRET,
};

use super::{Args, ModelRun, Server, CARD_UPDATE_INTERVAL_MS};

/// The model run (first-visible latencies in ms, hearth's metrics) and the echo run's messages per second.
pub async fn run(args: &Args, hearth: &Path, model: &Path) -> Result<(ModelRun, f64)> {
    let ttft = model_run(args, hearth, model).await?;
    let echo = echo_run(args, hearth, model).await?;
    Ok((ttft, echo))
}

/// The documented platform with its per-API quota off (the bench measures hearth, not the quota).
async fn emulator() -> Result<FeishuEmulator> {
    let config = EmulatorConfig {
        api_calls_per_window: 0,
        api_calls_per_minute: 0,
        ..EmulatorConfig::default()
    };
    Ok(FeishuEmulator::start(config, "127.0.0.1:0".parse()?).await?)
}

fn write_config(dir: &Path, feishu: &FeishuEmulator, max_answer_tokens: usize, echo: bool) -> Result<PathBuf> {
    let text = format!(
        "[feishu]\napp_id = \"{DEFAULT_APP_ID}\"\napp_secret = \"{DEFAULT_APP_SECRET}\"\ndomain = \"{}\"\n\
         database = \"{}\"\ncard_update_interval_ms = {CARD_UPDATE_INTERVAL_MS}\ncard_updates_per_second = 1000\n\
         user_requests_per_second = 1000\nmax_answer_tokens = {max_answer_tokens}\n",
        feishu.base_url(),
        dir.join("feishu.sqlite3").display()
    );
    crate::write_hearth_toml(dir, text, echo)
}

async fn start(hearth: &Path, model: &Path, config: &Path, feishu: &FeishuEmulator) -> Result<Server> {
    let server = Server::spawn(hearth, model, config)?;
    feishu
        .wait_for(Duration::from_secs(120), |w| {
            (w.stats().live_connections == 1).then_some(())
        })
        .await?;
    Ok(server)
}

/// Cards sent whose streaming mode is off.
fn finished(world: &World) -> usize {
    world
        .cards()
        .iter()
        .filter(|c| c.message_id.is_some() && !c.streaming_mode)
        .count()
}

async fn model_run(args: &Args, hearth: &Path, model: &Path) -> Result<ModelRun> {
    let feishu = emulator().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &feishu, args.max_answer_tokens, false)?;
    let server = start(hearth, model, &config, &feishu).await?;
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
            feishu.post_message(UserMessage::p2p(&format!("bench{c:03}"), text))?;
        }
        let want = (round + 1) * args.conversations;
        feishu
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
    let latencies = feishu.inspect(first_visible_latencies);
    let metrics = server.scrape().await?;
    drop(server);
    feishu.shutdown().await?;
    Ok(ModelRun { latencies, metrics })
}

/// For every user message: milliseconds from the message to the first `content` call on its card.
fn first_visible_latencies(world: &World) -> Vec<f64> {
    let mut latencies = Vec::new();
    for id in world.chat_ids() {
        let Some(chat) = world.chat(&id) else { continue };
        for entry in &chat.messages {
            let ChatEntry::User { message_id, at_ms, .. } = entry else {
                continue;
            };
            let card = chat.messages.iter().find_map(|m| match m {
                ChatEntry::Bot {
                    reply_to: Some(to),
                    card_id: Some(card),
                    ..
                } if to == message_id => world.card(card),
                _ => None,
            });
            let shown = card.and_then(|c| c.history.iter().find(|op| op.api == "content").map(|op| op.at_ms));
            if let Some(shown) = shown {
                latencies.push(shown.saturating_sub(*at_ms) as f64);
            }
        }
    }
    latencies
}

async fn echo_run(args: &Args, hearth: &Path, model: &Path) -> Result<f64> {
    let feishu = emulator().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &feishu, args.max_answer_tokens, true)?;
    let server = start(hearth, model, &config, &feishu).await?;
    let started = Instant::now();
    for i in 0..args.echo_messages {
        let user = format!("echo{:03}", i % args.conversations);
        feishu.post_message(UserMessage::p2p(&user, &format!("message {i}")))?;
    }
    feishu
        .wait_for(Duration::from_secs(args.timeout_secs), |w| {
            (finished(w) >= args.echo_messages).then_some(())
        })
        .await?;
    let rate = args.echo_messages as f64 / started.elapsed().as_secs_f64();
    drop(server);
    feishu.shutdown().await?;
    Ok(rate)
}

//! The hearth half: the engine in this process, driven through its public API.
//!
//! Prefill speed is prompt tokens / the engine's own time to first token (submission to first token, with
//! `max_tokens` 1); decode speed comes from [`engine::Timings::decode_tokens_per_second`]. In the concurrency
//! sweep, aggregate throughput, time to first token and inter-token latency are measured here, around `submit`
//! and the event streams (one `Event::Token` per token), like a client would see them.
//! Prefix caching is switched off for the run, matching llama.cpp's `cache_prompt: false`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use engine::{Completion, Engine, EngineConfig, EngineHandle, Event, GenerateRequest};
use indicatif::ProgressBar;

use crate::prompt::{Workload, WorkloadConfig};
use crate::provenance::Device;
use crate::report::{EngineKind, EngineResults, SingleStream};
use crate::stats::{gaps, ms, LevelRun, StreamTrace};
use crate::sweep::{self, note, progress_bar, LevelPlan};

/// Load the model on `device` with room for the largest concurrency level of the run: that many running
/// sequences, and KV blocks for every one of their prompts and outputs.
pub fn load(model: &Path, device: Device, workload: &WorkloadConfig) -> Result<EngineHandle> {
    let max_c = workload.concurrency.iter().copied().max().unwrap_or(1);
    let per_stream = workload.prompt_tokens + workload.gen_tokens;
    let mut config = EngineConfig::new(model);
    config.prefix_caching = false;
    config.max_running = config.max_running.max(max_c);
    config.max_waiting = config.max_waiting.max(max_c);
    // Every stream's prompt and output, plus one block of slack per stream.
    config.kv_cache_tokens = config.kv_cache_tokens.max(max_c * (per_stream + config.block_size));
    // The one place the device reaches the engine.
    config.device = device.into();
    eprintln!(
        "hearth: loading {} (max_running {}, kv_cache_tokens {}, max_batch_tokens {}, prefix caching off)",
        model.display(),
        config.max_running,
        config.kv_cache_tokens,
        config.max_batch_tokens
    );
    let handle = Engine::load(config).with_context(|| format!("loading {} into hearth", model.display()))?;
    let ctx = handle.info().context_length;
    if per_stream > ctx {
        bail!(
            "prompt ({}) + generated ({}) tokens exceed the model's context of {ctx} tokens",
            workload.prompt_tokens,
            workload.gen_tokens
        );
    }
    Ok(handle)
}

/// One finished request.
struct Run {
    /// Client-side arrival times and token count.
    trace: StreamTrace,
    completion: Completion,
}

/// Submit one greedy request that ignores EOS and read its stream to the end.
async fn complete(handle: &EngineHandle, prompt: &[u32], max_tokens: usize, bar: &ProgressBar) -> Result<Run> {
    let start = Instant::now();
    let mut stream = submit(handle, prompt, max_tokens)?;
    drain(&mut stream, start, bar).await
}

fn submit(handle: &EngineHandle, prompt: &[u32], max_tokens: usize) -> Result<engine::RequestStream> {
    let mut request = GenerateRequest::greedy(prompt.to_vec(), max_tokens);
    request.stop.ignore_eos = true;
    handle
        .submit(request)
        .map_err(|e| anyhow!(e).context("submitting a request to hearth"))
}

/// Read a stream to its end, noting when each token arrived; `bar` advances by one per token.
async fn drain(stream: &mut engine::RequestStream, start: Instant, bar: &ProgressBar) -> Result<Run> {
    // Each `Event::Token` carries exactly one token.
    let mut arrivals = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Event::Token(_) => {
                arrivals.push(Instant::now());
                bar.inc(1);
            }
            Event::Finished(completion) => {
                if completion.usage.cached_prompt_tokens > 0 {
                    note(
                        bar,
                        &format!(
                            "hearth: warning: {} prompt tokens came from the prefix cache",
                            completion.usage.cached_prompt_tokens
                        ),
                    );
                }
                let first = arrivals.first().copied().unwrap_or_else(Instant::now);
                let trace = StreamTrace {
                    ttft: first.saturating_duration_since(start),
                    gaps: gaps(&arrivals),
                    tokens: completion.usage.completion_tokens,
                };
                return Ok(Run { trace, completion });
            }
            Event::Error(e) => return Err(anyhow!(e).context("hearth failed a request")),
        }
    }
    bail!("a hearth request stream ended without a Finished event")
}

/// One single-stream run of `g` tokens after `prompt`: the engine's decode tok/s.
pub async fn decode_run(handle: &EngineHandle, prompt: &[u32], g: usize, bar: &ProgressBar) -> Result<f64> {
    let run = complete(handle, prompt, g, bar).await?;
    let n = run.completion.usage.completion_tokens;
    if n != g {
        note(
            bar,
            &format!(
                "hearth: warning: generated {n} of {g} tokens ({:?})",
                run.completion.reason
            ),
        );
    }
    Ok(run.completion.timings.decode_tokens_per_second(n))
}

/// Measure hearth on `workload` into `results`: single-stream prefill and decode, then each concurrency level.
/// What was measured before an error (or an interrupt, which drops this future) stays in `results`.
pub async fn measure(
    handle: &EngineHandle,
    workload: &Workload,
    max_seconds: Duration,
    results: &mut EngineResults,
) -> Result<()> {
    let g = workload.gen_tokens;
    let hidden = ProgressBar::hidden();
    complete(handle, &workload.warmup, 8, &hidden)
        .await
        .context("warm-up request")?;

    let repeat = workload.prefill.len();
    let bar = progress_bar((repeat * (1 + g)) as u64, "hearth single stream".to_string());
    let mut prefill = Vec::new();
    let mut ttft = Vec::new();
    bar.set_message("prefill");
    for prompt in &workload.prefill {
        let run = complete(handle, prompt, 1, &bar).await?;
        let t = run.completion.timings.time_to_first_token;
        prefill.push(prompt.len() as f64 / t.as_secs_f64());
        ttft.push(ms(run.trace.ttft));
    }
    bar.set_message("decode");
    let mut decode = Vec::new();
    for prompt in &workload.decode {
        decode.push(decode_run(handle, prompt, g, &bar).await?);
    }
    bar.finish_and_clear();
    results.single = Some(SingleStream::from_runs(EngineKind::Hearth, &prefill, &decode, &ttft));

    let mut over_budget = false;
    for (c, runs) in &workload.aggregate {
        if over_budget {
            results.skipped.push(*c);
            continue;
        }
        let outcome = sweep::level(
            LevelPlan {
                engine: EngineKind::Hearth,
                concurrency: *c,
                planned_runs: runs.len(),
                gen_tokens: g,
                max_seconds,
            },
            |i, bar| run_streams(handle, &runs[i], g, bar),
        )
        .await?;
        over_budget = outcome.over_budget;
        results.levels.push(outcome.level);
    }
    Ok(())
}

/// One run of a level: every prompt submitted at once, then all streams read concurrently.
async fn run_streams(handle: &EngineHandle, prompts: &[Vec<u32>], g: usize, bar: ProgressBar) -> Result<LevelRun> {
    // Submit every stream first, so they all enter the queue together.
    let start = Instant::now();
    let mut streams = Vec::with_capacity(prompts.len());
    for p in prompts {
        streams.push((Instant::now(), submit(handle, p, g)?));
    }
    let results = futures::future::join_all(streams.iter_mut().map(|(t0, s)| drain(s, *t0, &bar))).await;
    let wall = start.elapsed();
    let runs = results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(LevelRun {
        wall,
        streams: runs.into_iter().map(|r| r.trace).collect(),
    })
}

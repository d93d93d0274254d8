//! The hearth half: the engine in this process, driven through its public API.
//!
//! Prefill speed is prompt tokens / the engine's own time to first token (submission to first token, with
//! `max_tokens` 1); decode speed comes from [`engine::Timings::decode_tokens_per_second`]. Aggregate throughput
//! and its TTFT are measured here, around `submit` and the event streams, like a client would see them.
//! Prefix caching is switched off for the run, matching llama.cpp's `cache_prompt: false`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use engine::{Completion, Engine, EngineConfig, EngineHandle, Event, GenerateRequest};

use crate::prompt::{Workload, WorkloadConfig};
use crate::report::{median, ms, Figure, Metric};

/// Load the model with room for the largest concurrency level of the run.
pub fn load(model: &Path, workload: &WorkloadConfig, device: engine::Device) -> Result<EngineHandle> {
    let max_c = workload.concurrency.iter().copied().max().unwrap_or(1);
    let per_stream = workload.prompt_tokens + workload.gen_tokens;
    let mut config = EngineConfig::new(model);
    config.prefix_caching = false;
    config.device = device;
    config.max_running = config.max_running.max(max_c);
    config.max_waiting = config.max_waiting.max(max_c);
    // Every stream's prompt and output, plus one block of slack per stream.
    config.kv_cache_tokens = config.kv_cache_tokens.max(max_c * (per_stream + config.block_size));
    eprintln!(
        "hearth: loading {} on {device} (max_running {}, kv_cache_tokens {}, max_batch_tokens {}, prefix caching off)",
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
    /// Client-side: from `submit` to the first token event.
    ttft: Duration,
    completion: Completion,
}

/// Submit one greedy request that ignores EOS and read its stream to the end.
async fn complete(handle: &EngineHandle, prompt: &[u32], max_tokens: usize) -> Result<Run> {
    let start = Instant::now();
    let mut stream = submit(handle, prompt, max_tokens)?;
    drain(&mut stream, start).await
}

fn submit(handle: &EngineHandle, prompt: &[u32], max_tokens: usize) -> Result<engine::RequestStream> {
    let mut request = GenerateRequest::greedy(prompt.to_vec(), max_tokens);
    request.stop.ignore_eos = true;
    handle.submit(request).map_err(|e| anyhow!(e).context("submitting a request to hearth"))
}

async fn drain(stream: &mut engine::RequestStream, start: Instant) -> Result<Run> {
    let mut ttft = None;
    while let Some(event) = stream.next().await {
        match event {
            Event::Token(_) => {
                ttft.get_or_insert_with(|| start.elapsed());
            }
            Event::Finished(completion) => {
                let ttft = ttft.unwrap_or_else(|| start.elapsed());
                if completion.usage.cached_prompt_tokens > 0 {
                    eprintln!(
                        "hearth: warning: {} prompt tokens came from the prefix cache",
                        completion.usage.cached_prompt_tokens
                    );
                }
                return Ok(Run { ttft, completion });
            }
            Event::Error(e) => return Err(anyhow!(e).context("hearth failed a request")),
        }
    }
    bail!("a hearth request stream ended without a Finished event")
}

/// Measure hearth on `workload`: single-stream prefill and decode, then each concurrency level.
pub async fn measure(handle: &EngineHandle, workload: &Workload) -> Result<Vec<Figure>> {
    let g = workload.gen_tokens;
    let mut figures = Vec::new();
    complete(handle, &workload.warmup, 8).await.context("warm-up request")?;

    let mut prefill = Vec::new();
    let mut ttft = Vec::new();
    for prompt in &workload.prefill {
        let run = complete(handle, prompt, 1).await?;
        let t = run.completion.timings.time_to_first_token;
        prefill.push(prompt.len() as f64 / t.as_secs_f64());
        ttft.push(ms(run.ttft));
    }
    figures.push(Figure { metric: Metric::PrefillTokS, concurrency: 1, value: median(&prefill) });
    figures.push(Figure { metric: Metric::TtftMs, concurrency: 1, value: median(&ttft) });
    eprintln!("hearth: prefill {:.1} tok/s, TTFT {:.1} ms", median(&prefill), median(&ttft));

    let mut decode = Vec::new();
    for prompt in &workload.decode {
        let run = complete(handle, prompt, g).await?;
        let n = run.completion.usage.completion_tokens;
        if n != g {
            eprintln!("hearth: warning: generated {n} of {g} tokens ({:?})", run.completion.reason);
        }
        decode.push(run.completion.timings.decode_tokens_per_second(n));
    }
    figures.push(Figure { metric: Metric::DecodeTokS, concurrency: 1, value: median(&decode) });
    eprintln!("hearth: decode {:.1} tok/s", median(&decode));

    for (c, runs) in &workload.aggregate {
        let mut throughput = Vec::new();
        let mut ttft_p50 = Vec::new();
        for prompts in runs {
            // Submit every stream first, so they all enter the queue together, then read them concurrently.
            let start = Instant::now();
            let mut streams = Vec::with_capacity(prompts.len());
            for p in prompts {
                streams.push((Instant::now(), submit(handle, p, g)?));
            }
            let results = futures::future::join_all(streams.iter_mut().map(|(t0, s)| drain(s, *t0))).await;
            let wall = start.elapsed();
            let runs = results.into_iter().collect::<Result<Vec<_>>>()?;
            let generated: usize = runs.iter().map(|r| r.completion.usage.completion_tokens).sum();
            throughput.push(generated as f64 / wall.as_secs_f64());
            ttft_p50.push(median(&runs.iter().map(|r| ms(r.ttft)).collect::<Vec<_>>()));
        }
        figures.push(Figure { metric: Metric::AggregateTokS, concurrency: *c, value: median(&throughput) });
        figures.push(Figure { metric: Metric::TtftP50Ms, concurrency: *c, value: median(&ttft_p50) });
        eprintln!(
            "hearth: {c} stream(s): {:.1} tok/s aggregate, TTFT p50 {:.1} ms",
            median(&throughput),
            median(&ttft_p50)
        );
    }
    Ok(figures)
}

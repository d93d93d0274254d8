//! Prometheus metrics: what the gateway records, and `GET /metrics` rendering it in the text format.
//!
//! Event-driven figures (HTTP requests by route and status, time to first token, inter-token latency,
//! queue wait, finished generations, IM deliveries and where an IM answer's time goes) are recorded
//! through the `metrics` facade where they happen. The engine's own counters and gauges (running, waiting, KV blocks, tokens) are read from
//! `EngineHandle::stats` at scrape time, so they are exact and cost nothing between scrapes.
//!
//! One recorder per process ([`handle`] installs it on first use, which `server::app` makes before any
//! request); every router in the process renders it.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use engine::{Completion as EngineCompletion, EngineStats};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

/// Latency buckets in seconds, from 1 ms to 2 minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The process's recorder handle, installed on first use. `None` when another recorder was installed
/// first (then `/metrics` says so instead of serving an empty page).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "another metrics recorder is installed; /metrics is off");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "hearth_http_requests_total",
        "HTTP requests answered, by route and status code."
    );
    describe_counter!(
        "hearth_generations_total",
        "Generations that ended, by finish reason (stop, length, error, cancelled)."
    );
    describe_histogram!(
        "hearth_time_to_first_token_seconds",
        Unit::Seconds,
        "From request submission to its first generated token."
    );
    describe_histogram!(
        "hearth_inter_token_latency_seconds",
        Unit::Seconds,
        "Time between generated tokens (each request's mean gap, counted once per gap)."
    );
    describe_histogram!(
        "hearth_queue_wait_seconds",
        Unit::Seconds,
        "Time a request waited before its first engine step."
    );
    describe_counter!("hearth_prompt_tokens_total", "Prompt tokens of accepted requests.");
    describe_counter!("hearth_generation_tokens_total", "Tokens generated.");
    describe_counter!(
        "hearth_prefix_cache_hit_tokens_total",
        "Prompt tokens served from the prefix cache."
    );
    describe_counter!(
        "hearth_preemptions_total",
        "Sequences preempted (their KV blocks freed, recomputed later)."
    );
    describe_counter!("hearth_engine_requests_total", "Requests accepted by the engine.");
    describe_counter!(
        "hearth_engine_requests_failed_total",
        "Requests the engine ended with an error."
    );
    describe_counter!("hearth_engine_steps_total", "Engine steps run.");
    describe_counter!(
        "hearth_im_refusals_total",
        "IM messages refused by the access rules ([access]); the refusal is answered and audited."
    );
    describe_counter!(
        "hearth_tool_calls_malformed_total",
        "Tool-call blocks from the model that were not valid calls of an offered tool (returned as text)."
    );
    describe_gauge!("hearth_requests_running", "Sequences generating now.");
    describe_gauge!("hearth_queue_depth", "Requests admitted and waiting for a slot.");
    describe_gauge!("hearth_kv_cache_blocks_used", "KV-cache blocks held by sequences.");
    describe_gauge!("hearth_kv_cache_blocks_total", "KV-cache blocks in the pool.");
    describe_gauge!(
        "hearth_kv_cache_usage_ratio",
        "Fraction of the KV cache in use (0 to 1)."
    );
    describe_gauge!(
        "hearth_generation_tokens_per_second",
        "Tokens generated per second since the previous scrape."
    );
    describe_counter!(
        "hearth_im_deliveries_total",
        "IM replies delivered, by platform and outcome."
    );
    describe_counter!(
        "hearth_im_card_update_failures_total",
        "IM card updates the platform refused or that failed, by platform."
    );
    describe_histogram!(
        "hearth_im_answer_slot_wait_seconds",
        Unit::Seconds,
        "From an IM message being stored to its answer getting one of the connector's answer slots, by platform."
    );
    describe_histogram!(
        "hearth_im_card_open_seconds",
        Unit::Seconds,
        "Opening an IM answer's card: the platform's open call with its pacing and retries, by platform."
    );
    describe_histogram!(
        "hearth_im_first_visible_seconds",
        Unit::Seconds,
        "From an IM message being stored to the platform accepting the first text of its model answer, by platform."
    );
}

/// Record one HTTP response.
pub fn http_response(route: &str, status: u16) {
    counter!("hearth_http_requests_total", "route" => route_label(route), "status" => status.to_string()).increment(1);
}

/// Record a generation that ended normally.
pub fn generation_finished(done: &EngineCompletion, finish_reason: &'static str) {
    counter!("hearth_generations_total", "reason" => finish_reason).increment(1);
    histogram!("hearth_time_to_first_token_seconds").record(done.timings.time_to_first_token.as_secs_f64());
    histogram!("hearth_queue_wait_seconds").record(done.timings.queue.as_secs_f64());
    let gaps = done.usage.completion_tokens.saturating_sub(1);
    if gaps > 0 {
        let mean = done.timings.decode.as_secs_f64() / gaps as f64;
        histogram!("hearth_inter_token_latency_seconds").record_many(mean, gaps);
    }
}

/// Record a generation that ended without finishing: `"error"` or `"cancelled"`.
pub fn generation_ended(outcome: &'static str) {
    counter!("hearth_generations_total", "reason" => outcome).increment(1);
}

/// Record one IM reply's delivery outcome (`answered`, `answered_markdown`, `failed`, `busy`, …).
pub fn im_delivery(platform: &'static str, outcome: &'static str) {
    counter!("hearth_im_deliveries_total", "platform" => platform, "outcome" => outcome).increment(1);
}

/// Record one tool-call block from the model that was not a valid call (it went back as text).
pub fn tool_call_malformed() {
    counter!("hearth_tool_calls_malformed_total").increment(1);
}

/// Record one IM message refused by the access rules.
pub fn im_refusal(platform: &'static str) {
    counter!("hearth_im_refusals_total", "platform" => platform).increment(1);
}

/// Record one card update that failed or was refused.
pub fn im_card_update_failure(platform: &'static str) {
    counter!("hearth_im_card_update_failures_total", "platform" => platform).increment(1);
}

/// Record how long an IM message waited for an answer slot after it was stored.
pub fn im_answer_slot_wait(platform: &'static str, waited: Duration) {
    histogram!("hearth_im_answer_slot_wait_seconds", "platform" => platform).record(waited.as_secs_f64());
}

/// Record one IM card open (the platform's call, paced and retried).
pub fn im_card_open(platform: &'static str, took: Duration) {
    histogram!("hearth_im_card_open_seconds", "platform" => platform).record(took.as_secs_f64());
}

/// Record the time from an IM message being stored to the first text of its model answer the platform
/// accepted.
pub fn im_first_visible(platform: &'static str, took: Duration) {
    histogram!("hearth_im_first_visible_seconds", "platform" => platform).record(took.as_secs_f64());
}

/// Copies the engine's counters and gauges into the recorder; called on every scrape.
pub fn observe_engine(stats: &EngineStats) {
    counter!("hearth_prompt_tokens_total").absolute(stats.prompt_tokens_total);
    counter!("hearth_generation_tokens_total").absolute(stats.generated_tokens_total);
    counter!("hearth_prefix_cache_hit_tokens_total").absolute(stats.prefix_cache_hit_tokens);
    counter!("hearth_preemptions_total").absolute(stats.preemptions_total);
    counter!("hearth_engine_requests_total").absolute(stats.requests_total);
    counter!("hearth_engine_requests_failed_total").absolute(stats.requests_failed);
    counter!("hearth_engine_steps_total").absolute(stats.steps_total);
    gauge!("hearth_requests_running").set(stats.running as f64);
    gauge!("hearth_queue_depth").set(stats.waiting as f64);
    gauge!("hearth_kv_cache_blocks_used").set(stats.kv_blocks_used as f64);
    gauge!("hearth_kv_cache_blocks_total").set(stats.kv_blocks_total as f64);
    let usage = if stats.kv_blocks_total == 0 {
        0.0
    } else {
        stats.kv_blocks_used as f64 / stats.kv_blocks_total as f64
    };
    gauge!("hearth_kv_cache_usage_ratio").set(usage);
    gauge!("hearth_generation_tokens_per_second").set(THROUGHPUT.rate(stats.generated_tokens_total, Instant::now()));
}

/// Tokens/s between two scrapes.
static THROUGHPUT: Throughput = Throughput { last: Mutex::new(None) };

struct Throughput {
    last: Mutex<Option<(Instant, u64, f64)>>,
}

impl Throughput {
    /// The rate since the previous call; scrapes closer than 100 ms apart repeat the previous rate.
    fn rate(&self, total: u64, now: Instant) -> f64 {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match *last {
            Some((at, _, rate)) if now.duration_since(at) < Duration::from_millis(100) => rate,
            Some((at, before, _)) => {
                let rate = total.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64();
                *last = Some((now, total, rate));
                rate
            }
            None => {
                *last = Some((now, total, 0.0));
                0.0
            }
        }
    }
}

/// Known routes keep their path as label; anything else is one label, so scanners cannot blow up the
/// number of series.
fn route_label(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/health",
        "/healthz",
        "/readyz",
        "/metrics",
    ];
    KNOWN.iter().find(|known| **known == path).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_tokens_over_time_between_scrapes() {
        let meter = Throughput { last: Mutex::new(None) };
        let t0 = Instant::now();
        assert_eq!(meter.rate(100, t0), 0.0);
        assert_eq!(meter.rate(300, t0 + Duration::from_secs(2)), 100.0);
        assert_eq!(
            meter.rate(999, t0 + Duration::from_millis(2050)),
            100.0,
            "too close: the previous rate"
        );
        assert_eq!(meter.rate(300, t0 + Duration::from_secs(3)), 0.0);
    }

    #[test]
    fn unknown_routes_share_one_label() {
        assert_eq!(route_label("/v1/completions"), "/v1/completions");
        assert_eq!(route_label("/wp-admin/x.php"), "other");
    }
}

/// The engine's load as `/health` and the console's status report it (flattened into both).
#[derive(Debug, Serialize)]
pub struct EngineLoad {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub requests_total: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_failed: u64,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    pub prefix_cache_hit_tokens: u64,
    pub preemptions_total: u64,
}

impl From<&engine::EngineStats> for EngineLoad {
    fn from(stats: &engine::EngineStats) -> Self {
        Self {
            running: stats.running,
            waiting: stats.waiting,
            kv_blocks_used: stats.kv_blocks_used,
            kv_blocks_total: stats.kv_blocks_total,
            requests_total: stats.requests_total,
            requests_finished: stats.requests_finished,
            requests_cancelled: stats.requests_cancelled,
            requests_failed: stats.requests_failed,
            prompt_tokens_total: stats.prompt_tokens_total,
            generated_tokens_total: stats.generated_tokens_total,
            prefix_cache_hit_tokens: stats.prefix_cache_hit_tokens,
            preemptions_total: stats.preemptions_total,
        }
    }
}

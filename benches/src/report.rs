//! Results: one JSON document with every figure, one JSON line per figure, and a markdown table with both
//! engines side by side and their ratio. The SVG plot is in [`crate::plot`].
//!
//! Everything here is a pure function of a [`RunInfo`] and the [`EngineResults`], so it is tested on made-up
//! figures.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::provenance::LlamaBuild;
use crate::stats::{median, Level};

/// Version of the JSON document's layout; bump it when a field changes meaning or goes away.
pub const SCHEMA: &str = "hearth-bench/2";

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Single stream: prompt tokens / time to first token.
    PrefillTokS,
    /// Single stream: generated tokens per second after the first one.
    DecodeTokS,
    /// Single stream: time to first token of the prefill run, in milliseconds.
    TtftMs,
    /// `concurrency` streams at once: all generated tokens / wall time from first submit to last finish.
    AggregateTokS,
    /// `concurrency` streams at once: time to first token, median over streams, in milliseconds.
    TtftP50Ms,
    /// `concurrency` streams at once: time to first token, 99th percentile over streams, in milliseconds.
    TtftP99Ms,
    /// `concurrency` streams at once: time between consecutive tokens of a stream, median, in milliseconds.
    ItlP50Ms,
    /// `concurrency` streams at once: time between consecutive tokens of a stream, 99th percentile.
    ItlP99Ms,
}

impl Metric {
    /// The stable name written to the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Metric::PrefillTokS => "prefill_tok_per_s",
            Metric::DecodeTokS => "decode_tok_per_s",
            Metric::TtftMs => "ttft_ms",
            Metric::AggregateTokS => "aggregate_tok_per_s",
            Metric::TtftP50Ms => "ttft_p50_ms",
            Metric::TtftP99Ms => "ttft_p99_ms",
            Metric::ItlP50Ms => "itl_p50_ms",
            Metric::ItlP99Ms => "itl_p99_ms",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::PrefillTokS | Metric::DecodeTokS | Metric::AggregateTokS => "tok/s",
            _ => "ms",
        }
    }

    /// The row label of the markdown table.
    fn label(self, c: usize) -> String {
        let s = if c == 1 { "stream" } else { "streams" };
        match self {
            Metric::PrefillTokS => "prefill tok/s (1 stream)".to_string(),
            Metric::DecodeTokS => "decode tok/s (1 stream)".to_string(),
            Metric::TtftMs => "TTFT ms (1 stream, lower is better)".to_string(),
            Metric::AggregateTokS => format!("aggregate tok/s ({c} {s})"),
            Metric::TtftP50Ms => format!("TTFT p50 ms ({c} {s}, lower is better)"),
            Metric::TtftP99Ms => format!("TTFT p99 ms ({c} {s}, lower is better)"),
            Metric::ItlP50Ms => format!("ITL p50 ms ({c} {s}, lower is better)"),
            Metric::ItlP99Ms => format!("ITL p99 ms ({c} {s}, lower is better)"),
        }
    }
}

/// Which engine a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Hearth,
    LlamaCpp,
}

impl EngineKind {
    /// The name used in every output.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Hearth => "hearth",
            EngineKind::LlamaCpp => "llama.cpp",
        }
    }
}

/// The single-stream figures of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SingleStream {
    /// Prompt tokens / time to first token (median of `--repeat` runs).
    pub prefill_tok_per_s: f64,
    /// Generated tokens per second after the first (median).
    pub decode_tok_per_s: f64,
    /// Client-side time to first token of the prefill runs (median), milliseconds.
    pub ttft_ms: f64,
}

impl SingleStream {
    /// The medians of `engine`'s single-stream runs, also printed to stderr.
    pub fn from_runs(engine: EngineKind, prefill: &[f64], decode: &[f64], ttft: &[f64]) -> Self {
        let single = Self {
            prefill_tok_per_s: median(prefill),
            decode_tok_per_s: median(decode),
            ttft_ms: median(ttft),
        };
        eprintln!(
            "{}: prefill {:.1} tok/s, TTFT {:.1} ms, decode {:.1} tok/s",
            engine.name(),
            single.prefill_tok_per_s,
            single.ttft_ms,
            single.decode_tok_per_s
        );
        single
    }
}

/// Everything one engine produced; partial when the run was interrupted or failed part-way.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineResults {
    pub engine: EngineKind,
    /// `None` until measured.
    pub single: Option<SingleStream>,
    /// The concurrency sweep, in the order measured.
    pub levels: Vec<Level>,
    /// Concurrency levels not measured because a lower one already ran past `--max-seconds`.
    pub skipped: Vec<usize>,
}

impl EngineResults {
    /// Nothing measured yet.
    pub fn new(engine: EngineKind) -> Self {
        Self {
            engine,
            single: None,
            levels: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Every figure as (metric, concurrency, value), in the order measured.
    pub fn figures(&self) -> Vec<(Metric, usize, f64)> {
        let mut out = Vec::new();
        if let Some(s) = self.single {
            out.push((Metric::PrefillTokS, 1, s.prefill_tok_per_s));
            out.push((Metric::DecodeTokS, 1, s.decode_tok_per_s));
            out.push((Metric::TtftMs, 1, s.ttft_ms));
        }
        for l in &self.levels {
            let c = l.concurrency;
            out.push((Metric::AggregateTokS, c, l.aggregate_tok_per_s));
            out.push((Metric::TtftP50Ms, c, l.ttft_ms.p50));
            out.push((Metric::TtftP99Ms, c, l.ttft_ms.p99));
            out.push((Metric::ItlP50Ms, c, l.itl_ms.p50));
            out.push((Metric::ItlP99Ms, c, l.itl_ms.p99));
        }
        out
    }
}

/// What every figure of a run shares: what was measured, on what, with which code.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// See [`crate::provenance::git_revision`].
    pub git_rev: String,
    /// The model's file name.
    pub model: String,
    /// The dominant weight type of the GGUF, e.g. "Q4_1".
    pub quant: String,
    /// See [`crate::provenance::Device::describe`].
    pub device: String,
    pub threads: usize,
    /// The llama.cpp build, when llama.cpp was measured.
    pub llama_cpp: Option<LlamaBuild>,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub repeat: usize,
    /// `--max-seconds`: the time after which a level starts no further run.
    pub max_seconds: f64,
    /// Seconds since the Unix epoch when the run started.
    pub started_at: u64,
    /// The 1-minute load average when the run started and when it ended (Linux): other work on the machine
    /// skews the figures.
    pub load_avg_1m: Option<f64>,
    pub load_avg_1m_end: Option<f64>,
}

impl RunInfo {
    /// One line naming the code, model, device and peer: the caption of every output.
    pub fn caption(&self) -> String {
        let llama = self
            .llama_cpp
            .as_ref()
            .map_or_else(String::new, |b| format!(", llama.cpp {}", b.label));
        format!(
            "hearth {} · {} ({}) · {}{llama}",
            self.git_rev, self.model, self.quant, self.device
        )
    }

    /// One line describing the workload and the machine load.
    pub fn workload(&self) -> String {
        let load = match (self.load_avg_1m, self.load_avg_1m_end) {
            (Some(a), Some(b)) => format!(", load average {a:.2} at start, {b:.2} at end"),
            _ => String::new(),
        };
        format!(
            "prompt {} tokens, generate {} tokens per stream, median of {} runs (at most {}s per level){load}",
            self.prompt_tokens, self.gen_tokens, self.repeat, self.max_seconds
        )
    }
}

/// Round to two decimals, for output.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The value of `metric` at `c` for `engine`, if measured.
fn find(results: &[EngineResults], engine: EngineKind, metric: Metric, c: usize) -> Option<f64> {
    results
        .iter()
        .filter(|r| r.engine == engine)
        .flat_map(|r| r.figures())
        .find(|&(m, fc, _)| m == metric && fc == c)
        .map(|(_, _, v)| v)
}

/// hearth / llama.cpp for one figure, when both were measured and the divisor is not zero.
fn ratio(results: &[EngineResults], metric: Metric, c: usize) -> Option<f64> {
    let h = find(results, EngineKind::Hearth, metric, c)?;
    let l = find(results, EngineKind::LlamaCpp, metric, c)?;
    (l > 0.0).then(|| h / l)
}

/// Every (metric, concurrency) measured by any engine, each once, single-stream first, then by concurrency.
fn rows(results: &[EngineResults]) -> Vec<(Metric, usize)> {
    let mut rows: Vec<(Metric, usize)> = Vec::new();
    for r in results {
        for (m, c, _) in r.figures() {
            if !rows.contains(&(m, c)) {
                rows.push((m, c));
            }
        }
    }
    let single = |m: Metric| matches!(m, Metric::PrefillTokS | Metric::DecodeTokS | Metric::TtftMs);
    // Stable: the metric order within a level stays as measured.
    rows.sort_by_key(|&(m, c)| (!single(m), c));
    rows
}

/// One JSON document with every figure, the provenance, and the ratios hearth / llama.cpp.
pub fn json_document(info: &RunInfo, results: &[EngineResults]) -> Value {
    let mut engines = serde_json::Map::new();
    for r in results {
        let single = r.single.map(|s| {
            json!({
                "prefill_tok_per_s": round2(s.prefill_tok_per_s),
                "decode_tok_per_s": round2(s.decode_tok_per_s),
                "ttft_ms": round2(s.ttft_ms),
            })
        });
        let sweep: Vec<Value> = r
            .levels
            .iter()
            .map(|l| {
                json!({
                    "concurrency": l.concurrency,
                    "runs": l.runs,
                    "aggregate_tok_per_s": round2(l.aggregate_tok_per_s),
                    "ttft_p50_ms": round2(l.ttft_ms.p50),
                    "ttft_p99_ms": round2(l.ttft_ms.p99),
                    "itl_p50_ms": round2(l.itl_ms.p50),
                    "itl_p99_ms": round2(l.itl_ms.p99),
                    "generated_tokens": l.generated_tokens,
                    "wall_s": round2(l.wall_s),
                })
            })
            .collect();
        engines.insert(
            r.engine.name().to_string(),
            json!({ "single_stream": single, "sweep": sweep, "skipped_concurrency": r.skipped }),
        );
    }
    let metric_ratios = |c: usize, metrics: &[Metric]| {
        let mut m = serde_json::Map::new();
        for &metric in metrics {
            m.insert(
                metric.name().to_string(),
                ratio(results, metric, c).map(round_ratio).into(),
            );
        }
        m
    };
    let single_ratios = metric_ratios(1, &[Metric::PrefillTokS, Metric::DecodeTokS, Metric::TtftMs]);
    let mut levels: Vec<usize> = results
        .iter()
        .flat_map(|r| r.levels.iter().map(|l| l.concurrency))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let sweep_ratios: Vec<Value> = levels
        .iter()
        .map(|&c| {
            let mut m = metric_ratios(
                c,
                &[
                    Metric::AggregateTokS,
                    Metric::TtftP50Ms,
                    Metric::TtftP99Ms,
                    Metric::ItlP50Ms,
                    Metric::ItlP99Ms,
                ],
            );
            m.insert("concurrency".to_string(), c.into());
            Value::Object(m)
        })
        .collect();
    let llama_cpp = info
        .llama_cpp
        .as_ref()
        .map(|b| json!({ "build": b.label, "version": b.version, "cmake_flags": b.cmake_flags }));
    json!({
        "schema": SCHEMA,
        "git_rev": info.git_rev,
        "model": info.model,
        "quant": info.quant,
        "device": info.device,
        "threads": info.threads,
        "llama_cpp": llama_cpp,
        "prompt_tokens": info.prompt_tokens,
        "gen_tokens": info.gen_tokens,
        "repeat": info.repeat,
        "max_seconds": info.max_seconds,
        "started_at": info.started_at,
        "load_avg_1m": info.load_avg_1m,
        "load_avg_1m_end": info.load_avg_1m_end,
        "engines": engines,
        "ratios_hearth_over_llama_cpp": { "single_stream": single_ratios, "sweep": sweep_ratios },
    })
}

fn round_ratio(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One JSON line per figure, in order: the flat form, for appending to a history file and grepping.
pub fn json_lines(info: &RunInfo, results: &[EngineResults]) -> String {
    let mut out = String::new();
    let llama_build = info.llama_cpp.as_ref().map(|b| b.label.as_str());
    for r in results {
        for (metric, concurrency, value) in r.figures() {
            let line = json!({
                "git_rev": info.git_rev,
                "model": info.model,
                "quant": info.quant,
                "device": info.device,
                "threads": info.threads,
                "llama_cpp_build": llama_build,
                "engine": r.engine.name(),
                "metric": metric.name(),
                "value": round2(value),
                "unit": metric.unit(),
                "concurrency": concurrency,
                "prompt_tokens": info.prompt_tokens,
                "gen_tokens": info.gen_tokens,
                "repeat": info.repeat,
                "started_at": info.started_at,
                "load_avg_1m": info.load_avg_1m,
                "load_avg_1m_end": info.load_avg_1m_end,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    out
}

/// A markdown section: caption, workload, then one row per (metric, concurrency) with hearth and llama.cpp side
/// by side and their ratio.
pub fn markdown(info: &RunInfo, results: &[EngineResults]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "{}", info.caption());
    let _ = writeln!(t);
    let _ = writeln!(t, "{}", info.workload());
    let _ = writeln!(t);
    let _ = writeln!(t, "| metric | hearth | llama.cpp | hearth / llama.cpp |");
    let _ = writeln!(t, "|---|---:|---:|---:|");
    let cell = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
    for (metric, c) in rows(results) {
        let h = find(results, EngineKind::Hearth, metric, c);
        let l = find(results, EngineKind::LlamaCpp, metric, c);
        let r = ratio(results, metric, c).map_or_else(|| "–".to_string(), |r| format!("{r:.2}×"));
        let _ = writeln!(t, "| {} | {} | {} | {r} |", metric.label(c), cell(h), cell(l));
    }
    for r in results.iter().filter(|r| !r.skipped.is_empty()) {
        let skipped: Vec<String> = r.skipped.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            t,
            "\n{}: concurrency {} not measured (a lower level ran past {}s).",
            r.engine.name(),
            skipped.join(", "),
            info.max_seconds
        );
    }
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::Percentiles;

    pub(crate) fn info() -> RunInfo {
        RunInfo {
            git_rev: "abc1234".into(),
            model: "m.gguf".into(),
            quant: "Q4_1".into(),
            device: "cpu: Test CPU (2 threads)".into(),
            threads: 2,
            llama_cpp: Some(LlamaBuild {
                label: "b11434".into(),
                version: None,
                cmake_flags: None,
            }),
            prompt_tokens: 256,
            gen_tokens: 128,
            repeat: 3,
            max_seconds: 60.0,
            started_at: 0,
            load_avg_1m: None,
            load_avg_1m_end: None,
        }
    }

    pub(crate) fn level(concurrency: usize, tok_s: f64, ttft_p50: f64) -> Level {
        Level {
            concurrency,
            runs: 3,
            aggregate_tok_per_s: tok_s,
            ttft_ms: Percentiles {
                p50: ttft_p50,
                p99: ttft_p50 * 2.0,
            },
            itl_ms: Percentiles { p50: 10.0, p99: 20.0 },
            generated_tokens: concurrency * 128 * 3,
            wall_s: 1.0,
        }
    }

    pub(crate) fn results() -> Vec<EngineResults> {
        let single = |p, d, t| {
            Some(SingleStream {
                prefill_tok_per_s: p,
                decode_tok_per_s: d,
                ttft_ms: t,
            })
        };
        vec![
            EngineResults {
                engine: EngineKind::Hearth,
                single: single(50.0, 40.0, 30.0),
                levels: vec![level(1, 40.0, 30.0), level(8, 80.0, 200.0)],
                skipped: vec![64],
            },
            EngineResults {
                engine: EngineKind::LlamaCpp,
                single: single(100.0, 80.0, 15.0),
                levels: vec![level(1, 80.0, 15.0)],
                skipped: vec![],
            },
        ]
    }

    #[test]
    fn table_pairs_engines_and_ratios() {
        let table = markdown(&info(), &results());
        let check = |row: &str| assert!(table.contains(row), "missing {row:?} in\n{table}");
        check("hearth abc1234 · m.gguf (Q4_1) · cpu: Test CPU (2 threads), llama.cpp b11434");
        check("| prefill tok/s (1 stream) | 50.0 | 100.0 | 0.50× |");
        check("| TTFT ms (1 stream, lower is better) | 30.0 | 15.0 | 2.00× |");
        check("| aggregate tok/s (1 stream) | 40.0 | 80.0 | 0.50× |");
        check("| aggregate tok/s (8 streams) | 80.0 | – | – |");
        check("| TTFT p99 ms (8 streams, lower is better) | 400.0 | – | – |");
        check("| ITL p50 ms (1 stream, lower is better) | 10.0 | 10.0 | 1.00× |");
        check("hearth: concurrency 64 not measured");
        // Single-stream rows come first, then the levels in increasing concurrency.
        let prefill = table.find("prefill tok/s").unwrap();
        let agg1 = table.find("aggregate tok/s (1 stream)").unwrap();
        let agg8 = table.find("aggregate tok/s (8 streams)").unwrap();
        assert!(prefill < agg1 && agg1 < agg8, "{table}");
    }

    #[test]
    fn json_lines_name_every_figure() {
        let lines = json_lines(&info(), &results());
        // hearth: 3 single + 2 levels × 5; llama.cpp: 3 + 1 × 5.
        assert_eq!(lines.lines().count(), 21);
        let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(first["engine"], "hearth");
        assert_eq!(first["metric"], "prefill_tok_per_s");
        assert_eq!(first["device"], "cpu: Test CPU (2 threads)");
        assert_eq!(first["llama_cpp_build"], "b11434");
        assert_eq!(first["git_rev"], "abc1234");
    }

    #[test]
    fn json_document_has_provenance_sweeps_and_ratios() {
        let doc = json_document(&info(), &results());
        assert_eq!(doc["schema"], SCHEMA);
        assert_eq!(doc["git_rev"], "abc1234");
        assert_eq!(doc["quant"], "Q4_1");
        assert_eq!(doc["llama_cpp"]["build"], "b11434");
        let hearth = &doc["engines"]["hearth"];
        assert_eq!(hearth["single_stream"]["decode_tok_per_s"], 40.0);
        assert_eq!(hearth["sweep"][1]["concurrency"], 8);
        assert_eq!(hearth["sweep"][1]["ttft_p99_ms"], 400.0);
        assert_eq!(hearth["skipped_concurrency"][0], 64);
        let ratios = &doc["ratios_hearth_over_llama_cpp"];
        assert_eq!(ratios["single_stream"]["prefill_tok_per_s"], 0.5);
        assert_eq!(ratios["sweep"][0]["concurrency"], 1);
        assert_eq!(ratios["sweep"][0]["aggregate_tok_per_s"], 0.5);
        assert_eq!(ratios["sweep"][1]["aggregate_tok_per_s"], Value::Null);
    }
}

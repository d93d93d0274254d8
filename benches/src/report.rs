//! Results: one JSON line per measurement, and a markdown table with both engines side by side.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

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
    /// `concurrency` streams at once: median time to first token, in milliseconds.
    TtftP50Ms,
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
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::PrefillTokS | Metric::DecodeTokS | Metric::AggregateTokS => "tok/s",
            Metric::TtftMs | Metric::TtftP50Ms => "ms",
        }
    }
}

/// One measured figure of one engine.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub metric: Metric,
    /// Streams running at once (1 for the single-stream figures).
    pub concurrency: usize,
    pub value: f64,
}

/// Which engine a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Hearth,
    LlamaCpp,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Hearth => "hearth",
            EngineKind::LlamaCpp => "llama.cpp",
        }
    }
}

/// What every line of a run shares.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub git_rev: String,
    pub model: String,
    pub quant: String,
    /// Where both engines ran the model: `cpu` or `cuda:N`.
    pub device: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub repeat: usize,
    /// Seconds since the Unix epoch when the run started.
    pub started_at: u64,
    /// The 1-minute load average when the run started and when it ended (Linux): other work on the machine
    /// skews the figures.
    pub load_avg_1m: Option<f64>,
    pub load_avg_1m_end: Option<f64>,
}

/// The machine-readable form of one figure: one JSON object per line.
#[derive(Serialize)]
struct Line<'a> {
    git_rev: &'a str,
    model: &'a str,
    quant: &'a str,
    device: &'a str,
    threads: usize,
    engine: &'static str,
    metric: &'static str,
    value: f64,
    unit: &'static str,
    concurrency: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    repeat: usize,
    started_at: u64,
    load_avg_1m: Option<f64>,
    load_avg_1m_end: Option<f64>,
}

/// One JSON line per figure, in order.
pub fn json_lines(info: &RunInfo, results: &[(EngineKind, Vec<Figure>)]) -> String {
    let mut out = String::new();
    for (engine, figures) in results {
        for f in figures {
            let line = Line {
                git_rev: &info.git_rev,
                model: &info.model,
                quant: &info.quant,
                device: &info.device,
                threads: info.threads,
                engine: engine.name(),
                metric: f.metric.name(),
                value: (f.value * 100.0).round() / 100.0,
                unit: f.metric.unit(),
                concurrency: f.concurrency,
                prompt_tokens: info.prompt_tokens,
                gen_tokens: info.gen_tokens,
                repeat: info.repeat,
                started_at: info.started_at,
                load_avg_1m: info.load_avg_1m,
                load_avg_1m_end: info.load_avg_1m_end,
            };
            // Serializing a struct of strings and numbers cannot fail.
            out.push_str(&serde_json::to_string(&line).expect("a Line always serializes"));
            out.push('\n');
        }
    }
    out
}

/// A markdown table: one row per (metric, concurrency), hearth and llama.cpp side by side, and their ratio.
pub fn markdown_table(info: &RunInfo, results: &[(EngineKind, Vec<Figure>)]) -> String {
    let find = |engine: EngineKind, metric: Metric, c: usize| {
        results
            .iter()
            .filter(|(e, _)| *e == engine)
            .flat_map(|(_, figs)| figs.iter())
            .find(|f| f.metric == metric && f.concurrency == c)
            .map(|f| f.value)
    };
    // Rows in the order they were measured, each (metric, concurrency) once.
    let mut rows: Vec<(Metric, usize)> = Vec::new();
    for (_, figs) in results {
        for f in figs {
            if !rows.contains(&(f.metric, f.concurrency)) {
                rows.push((f.metric, f.concurrency));
            }
        }
    }

    let mut t = String::new();
    let load = match (info.load_avg_1m, info.load_avg_1m_end) {
        (Some(a), Some(b)) => format!(", load average {a:.2} at start, {b:.2} at end"),
        _ => String::new(),
    };
    let _ = writeln!(
        t,
        "{} ({}), {}, {} threads, prompt {} tokens, generate {} tokens, median of {}, rev {}{load}",
        info.model, info.quant, info.device, info.threads, info.prompt_tokens, info.gen_tokens, info.repeat, info.git_rev
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "| metric | hearth | llama.cpp | hearth / llama.cpp |");
    let _ = writeln!(t, "|---|---:|---:|---:|");
    for (metric, c) in rows {
        let label = match metric {
            Metric::PrefillTokS => "prefill tok/s (1 stream)".to_string(),
            Metric::DecodeTokS => "decode tok/s (1 stream)".to_string(),
            Metric::TtftMs => "TTFT ms (1 stream, lower is better)".to_string(),
            Metric::AggregateTokS => format!("aggregate tok/s ({c} {})", streams(c)),
            Metric::TtftP50Ms => format!("TTFT p50 ms ({c} {}, lower is better)", streams(c)),
        };
        let h = find(EngineKind::Hearth, metric, c);
        let l = find(EngineKind::LlamaCpp, metric, c);
        let cell = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
        let ratio = match (h, l) {
            (Some(h), Some(l)) if l > 0.0 => format!("{:.2}×", h / l),
            _ => "–".to_string(),
        };
        let _ = writeln!(t, "| {label} | {} | {} | {ratio} |", cell(h), cell(l));
    }
    t
}

fn streams(c: usize) -> &'static str {
    if c == 1 {
        "stream"
    } else {
        "streams"
    }
}

/// The median of some values (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn table_pairs_engines_and_ratios() {
        let info = RunInfo {
            git_rev: "abc1234".into(),
            model: "m.gguf".into(),
            quant: "Q4_1".into(),
            device: "cuda:0".into(),
            threads: 2,
            prompt_tokens: 256,
            gen_tokens: 128,
            repeat: 3,
            started_at: 0,
            load_avg_1m: None,
            load_avg_1m_end: None,
        };
        let fig = |metric, concurrency, value| Figure { metric, concurrency, value };
        let results = vec![
            (EngineKind::Hearth, vec![fig(Metric::PrefillTokS, 1, 50.0), fig(Metric::AggregateTokS, 8, 80.0)]),
            (EngineKind::LlamaCpp, vec![fig(Metric::PrefillTokS, 1, 100.0)]),
        ];
        let table = markdown_table(&info, &results);
        assert!(table.contains("| prefill tok/s (1 stream) | 50.0 | 100.0 | 0.50× |"), "{table}");
        assert!(table.contains("| aggregate tok/s (8 streams) | 80.0 | – | – |"), "{table}");
        let lines = json_lines(&info, &results);
        assert_eq!(lines.lines().count(), 3);
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(first["engine"], "hearth");
        assert_eq!(first["metric"], "prefill_tok_per_s");
        assert_eq!(first["device"], "cuda:0");
        assert!(table.starts_with("m.gguf (Q4_1), cuda:0, 2 threads"), "{table}");
    }
}

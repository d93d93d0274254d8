//! `--paired-decode`: single-stream decode with hearth and llama.cpp taking turns, run by run.
//!
//! A model much larger than the caches decodes at the memory bandwidth, and on a shared VM that bandwidth can
//! change within seconds. The usual layout (every hearth run, then every llama.cpp run) then compares the two
//! engines on two different machines. Here both engines are loaded at once and alternate on the same prompt,
//! pair after pair (which one goes first alternates too), so a swing hits both alike; the figure is the median
//! of the per-pair ratios.

use anyhow::{Context, Result};
use engine::EngineHandle;
use indicatif::ProgressBar;
use serde_json::{json, Value};

use crate::llama::{LlamaConfig, LlamaServer};
use crate::prompt::Workload;
use crate::report::RunInfo;
use crate::stats::median;
use crate::sweep::progress_bar;

/// Decode tok/s of each pair, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairedDecode {
    pub hearth: Vec<f64>,
    pub llama: Vec<f64>,
}

impl PairedDecode {
    /// hearth ÷ llama.cpp, pair by pair.
    pub fn ratios(&self) -> Vec<f64> {
        self.hearth.iter().zip(&self.llama).map(|(h, l)| h / l).collect()
    }

    /// The medians: hearth, llama.cpp and the per-pair ratio (`None` before the first pair).
    pub fn medians(&self) -> Option<(f64, f64, f64)> {
        let pairs = self.hearth.len().min(self.llama.len());
        (pairs > 0).then(|| {
            (
                median(&self.hearth[..pairs]),
                median(&self.llama[..pairs]),
                median(&self.ratios()),
            )
        })
    }

    /// The run's caption, every pair and the medians as a markdown table.
    pub fn markdown(&self, info: &RunInfo) -> String {
        let mut t = format!(
            "{}\n\n{} (paired decode: the engines take turns)\n\n",
            info.caption(),
            info.workload()
        );
        t.push_str("| pair | hearth tok/s | llama.cpp tok/s | hearth / llama.cpp |\n|---:|---:|---:|---:|\n");
        for (i, ((h, l), r)) in self.hearth.iter().zip(&self.llama).zip(self.ratios()).enumerate() {
            t.push_str(&format!("| {} | {h:.1} | {l:.1} | {r:.2}× |\n", i + 1));
        }
        if let Some((h, l, r)) = self.medians() {
            t.push_str(&format!("| median | {h:.1} | {l:.1} | {r:.2}× |\n"));
        }
        t
    }

    /// The same as one JSON document.
    pub fn json(&self, info: &RunInfo) -> Value {
        let medians = self
            .medians()
            .map(|(h, l, r)| json!({ "hearth": h, "llama_cpp": l, "ratio": r }));
        json!({
            "schema": "hearth-bench/paired-decode/1",
            "git_rev": info.git_rev,
            "model": info.model,
            "quant": info.quant,
            "device": info.device,
            "threads": info.threads,
            "llama_cpp": info.llama_cpp.as_ref().map(|b| b.label.clone()),
            "prompt_tokens": info.prompt_tokens,
            "gen_tokens": info.gen_tokens,
            "hearth_decode_tok_per_s": self.hearth,
            "llama_cpp_decode_tok_per_s": self.llama,
            "ratios": self.ratios(),
            "median": medians,
        })
    }
}

/// Warm both engines up, then run one pair per decode prompt of `workload` into `out`. What was measured
/// before an error (or an interrupt, which drops this future and kills the server) stays in `out`.
pub async fn measure(
    handle: &EngineHandle,
    llama: &LlamaConfig<'_>,
    workload: &Workload,
    out: &mut PairedDecode,
) -> Result<()> {
    let client = reqwest::Client::builder().build().context("building the HTTP client")?;
    let server = LlamaServer::start(&llama.server(workload, 1), &client).await?;
    let hidden = ProgressBar::hidden();
    crate::hearth::decode_run(handle, &workload.warmup, 8, &hidden)
        .await
        .context("hearth warm-up request")?;
    server
        .decode_run(&client, &workload.warmup, 8, &hidden)
        .await
        .context("llama.cpp warm-up request")?;
    let g = workload.gen_tokens;
    let bar = progress_bar((2 * workload.decode.len() * g) as u64, "paired decode".to_string());
    for (i, prompt) in workload.decode.iter().enumerate() {
        let (h, l) = if i % 2 == 0 {
            let h = crate::hearth::decode_run(handle, prompt, g, &bar).await?;
            (h, server.decode_run(&client, prompt, g, &bar).await?)
        } else {
            let l = server.decode_run(&client, prompt, g, &bar).await?;
            (crate::hearth::decode_run(handle, prompt, g, &bar).await?, l)
        };
        out.hearth.push(h);
        out.llama.push(l);
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_take_the_per_pair_ratio() {
        let p = PairedDecode {
            hearth: vec![10.0, 40.0, 30.0],
            llama: vec![20.0, 10.0, 60.0],
        };
        assert_eq!(p.ratios(), vec![0.5, 4.0, 0.5]);
        // The median of the pairs' ratios, not the ratio of the medians (30 / 20).
        assert_eq!(p.medians(), Some((30.0, 20.0, 0.5)));
        assert_eq!(PairedDecode::default().medians(), None);
    }
}

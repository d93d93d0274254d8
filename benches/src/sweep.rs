//! The concurrency sweep's rules, shared by both engines: how many runs a level gets, when a level is cut
//! short, when higher levels are skipped, and the progress bars on stderr.
//!
//! A level runs up to `--repeat` times, but starts no further run once `--max-seconds` have passed since it
//! began (at least one run always happens). When a single run alone took longer than `--max-seconds`, the
//! higher levels (more streams, so longer still) are skipped and reported as such.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::report::EngineKind;
use crate::stats::{summarize, Level, LevelRun};

/// A progress bar on stderr (hidden when stderr is not a terminal) counting `len` units.
pub fn progress_bar(len: u64, prefix: String) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix:>24} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos:>6}/{len:6} {msg} (eta {eta})",
    )
    .expect("the progress template is valid")
    .progress_chars("=> ");
    ProgressBar::new(len).with_style(style).with_prefix(prefix)
}

/// Print a line on stderr without tearing a visible progress bar.
pub fn note(bar: &ProgressBar, line: &str) {
    bar.suspend(|| eprintln!("{line}"));
}

/// What one level produced.
pub struct LevelOutcome {
    pub level: Level,
    /// One run took longer than `--max-seconds`: the caller skips the higher levels.
    pub over_budget: bool,
}

/// What one level is to run.
pub struct LevelPlan {
    pub engine: EngineKind,
    /// Streams at once.
    pub concurrency: usize,
    /// `--repeat`: the most runs.
    pub planned_runs: usize,
    /// Tokens per stream, for the progress bar.
    pub gen_tokens: usize,
    /// `--max-seconds`.
    pub max_seconds: Duration,
}

/// Measure one concurrency level. `run_once(i, bar)` performs run `i` (its prompts are the caller's
/// `i`-th set), advancing `bar` by one per generated token.
pub async fn level<F, Fut>(plan: LevelPlan, mut run_once: F) -> Result<LevelOutcome>
where
    F: FnMut(usize, ProgressBar) -> Fut,
    Fut: Future<Output = Result<LevelRun>>,
{
    let LevelPlan {
        engine,
        concurrency,
        planned_runs,
        gen_tokens,
        max_seconds,
    } = plan;
    let tokens = (planned_runs * concurrency * gen_tokens) as u64;
    let bar = progress_bar(tokens, format!("{} ×{concurrency}", engine.name()));
    let start = Instant::now();
    let mut runs = Vec::new();
    while another_run(runs.len(), planned_runs, start.elapsed(), max_seconds) {
        bar.set_message(format!("run {}/{planned_runs}", runs.len() + 1));
        runs.push(run_once(runs.len(), bar.clone()).await?);
    }
    if runs.len() < planned_runs {
        note(
            &bar,
            &format!(
                "{}: {concurrency} stream(s): stopped after {} of {planned_runs} runs (--max-seconds {})",
                engine.name(),
                runs.len(),
                max_seconds.as_secs_f64()
            ),
        );
    }
    let over_budget = runs.iter().any(|r| r.wall > max_seconds);
    bar.finish_and_clear();
    let level = summarize(concurrency, &runs);
    eprintln!(
        "{}: {concurrency} stream(s): {:.1} tok/s aggregate, TTFT p50 {:.1} / p99 {:.1} ms, \
         ITL p50 {:.1} / p99 {:.1} ms",
        engine.name(),
        level.aggregate_tok_per_s,
        level.ttft_ms.p50,
        level.ttft_ms.p99,
        level.itl_ms.p50,
        level.itl_ms.p99
    );
    if over_budget {
        eprintln!(
            "{}: one run of {concurrency} streams took over {}s; higher levels are skipped",
            engine.name(),
            max_seconds.as_secs_f64()
        );
    }
    Ok(LevelOutcome { level, over_budget })
}

/// Whether a level that has done `done` of `planned` runs in `elapsed` starts another: always the first,
/// then while runs are left and the level has not used up `max`.
fn another_run(done: usize, planned: usize, elapsed: Duration, max: Duration) -> bool {
    done == 0 || (done < planned && elapsed <= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_continue_until_done_or_out_of_time() {
        let s = Duration::from_secs;
        let check = |done, planned, elapsed, expected| {
            assert_eq!(
                another_run(done, planned, s(elapsed), s(60)),
                expected,
                "{done}/{planned} after {elapsed}s"
            );
        };
        check(0, 3, 0, true);
        // The first run always happens, even on a budget already spent.
        check(0, 3, 100, true);
        check(1, 3, 10, true);
        check(2, 3, 60, true);
        check(2, 3, 61, false);
        check(3, 3, 10, false);
        check(1, 1, 0, false);
    }
}

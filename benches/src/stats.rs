//! What one concurrency level produced, as the client saw it, and the summary figures made from it.
//!
//! Both engines record the same raw data per stream (time to first token, the gaps between consecutive
//! tokens, the tokens generated) and per run (wall time). [`summarize`] turns a level's runs into its figures:
//! aggregate tok/s is the median over runs; latency percentiles pool every stream (TTFT) and every gap (ITL)
//! of all runs, so that p99 rests on as many samples as the level has.

use std::time::Duration;

/// One stream of a run, seen from the client.
#[derive(Debug, Clone, Default)]
pub struct StreamTrace {
    /// From sending the request to the first token.
    pub ttft: Duration,
    /// Between consecutive tokens (one fewer than the tokens received).
    pub gaps: Vec<Duration>,
    /// Tokens generated, as the engine counted them.
    pub tokens: usize,
}

/// One run of C streams started together.
#[derive(Debug, Clone, Default)]
pub struct LevelRun {
    /// From the first request sent to the last stream finished.
    pub wall: Duration,
    pub streams: Vec<StreamTrace>,
}

impl LevelRun {
    /// All generated tokens / wall time.
    pub fn tokens_per_second(&self) -> f64 {
        let generated: usize = self.streams.iter().map(|s| s.tokens).sum();
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            generated as f64 / secs
        } else {
            0.0
        }
    }
}

/// The 50th and 99th percentile of some latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

impl Percentiles {
    /// p50 and p99 of `values`; zeros when there are none.
    pub fn of(values: &[f64]) -> Self {
        Self {
            p50: percentile(values, 50.0).unwrap_or(0.0),
            p99: percentile(values, 99.0).unwrap_or(0.0),
        }
    }
}

/// The figures of one engine at one concurrency level.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// Streams running at once.
    pub concurrency: usize,
    /// Runs measured (at most `--repeat`; fewer when `--max-seconds` cut the level short).
    pub runs: usize,
    /// Median over runs of all generated tokens / wall time.
    pub aggregate_tok_per_s: f64,
    /// Time to first token over every stream of every run, milliseconds.
    pub ttft_ms: Percentiles,
    /// Inter-token latency over every gap of every stream of every run, milliseconds.
    pub itl_ms: Percentiles,
    /// Tokens generated over all runs.
    pub generated_tokens: usize,
    /// Wall time of all runs together, seconds.
    pub wall_s: f64,
}

/// Summarize the runs of one level (see the module doc for how).
pub fn summarize(concurrency: usize, runs: &[LevelRun]) -> Level {
    let throughput: Vec<f64> = runs.iter().map(LevelRun::tokens_per_second).collect();
    let streams = || runs.iter().flat_map(|r| r.streams.iter());
    let ttfts: Vec<f64> = streams().map(|s| ms(s.ttft)).collect();
    let gaps: Vec<f64> = streams().flat_map(|s| s.gaps.iter().map(|&g| ms(g))).collect();
    Level {
        concurrency,
        runs: runs.len(),
        aggregate_tok_per_s: median(&throughput),
        ttft_ms: Percentiles::of(&ttfts),
        itl_ms: Percentiles::of(&gaps),
        generated_tokens: streams().map(|s| s.tokens).sum(),
        wall_s: runs.iter().map(|r| r.wall.as_secs_f64()).sum(),
    }
}

/// The `q`-th percentile (0..=100) of `values`, interpolating linearly between the two nearest ranks (numpy's
/// default), ignoring non-finite values; `None` when no finite value is left.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = q.clamp(0.0, 100.0) / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

/// The median of some values (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0).unwrap_or(0.0)
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Gaps between consecutive instants, for [`StreamTrace::gaps`].
pub fn gaps(arrivals: &[std::time::Instant]) -> Vec<Duration> {
    arrivals
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[f64::NAN, 7.0]), 7.0);
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let check = |values: &[f64], q: f64, expected: Option<f64>| {
            let got = percentile(values, q);
            match (got, expected) {
                (Some(g), Some(e)) => assert!((g - e).abs() < 1e-9, "p{q} of {values:?}: {g} != {e}"),
                _ => assert_eq!(got, expected, "p{q} of {values:?}"),
            }
        };
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        check(&hundred, 50.0, Some(50.5));
        check(&hundred, 99.0, Some(99.01));
        check(&hundred, 100.0, Some(100.0));
        check(&hundred, 0.0, Some(1.0));
        check(&[5.0], 99.0, Some(5.0));
        check(&[10.0, 0.0], 99.0, Some(9.9));
        check(&[], 50.0, None);
        check(&[f64::INFINITY], 50.0, None);
    }

    #[test]
    fn summarize_pools_latencies_and_takes_the_median_throughput() {
        let d = Duration::from_millis;
        let stream = |ttft, gaps: &[u64], tokens| StreamTrace {
            ttft: d(ttft),
            gaps: gaps.iter().map(|&g| d(g)).collect(),
            tokens,
        };
        let runs = [
            // 4 tokens in 1 s, 8 in 2 s, 30 in 1 s: the median run does 4 tok/s.
            LevelRun {
                wall: d(1000),
                streams: vec![stream(100, &[10, 10, 10], 2), stream(300, &[], 2)],
            },
            LevelRun {
                wall: d(2000),
                streams: vec![stream(200, &[20], 8)],
            },
            LevelRun {
                wall: d(1000),
                streams: vec![stream(400, &[30, 40], 30)],
            },
        ];
        let level = summarize(2, &runs);
        assert_eq!(level.concurrency, 2);
        assert_eq!(level.runs, 3);
        assert_eq!(level.aggregate_tok_per_s, 4.0);
        assert_eq!(level.ttft_ms.p50, 250.0);
        assert!((level.ttft_ms.p99 - 397.0).abs() < 1e-9, "{:?}", level.ttft_ms);
        assert_eq!(level.itl_ms.p50, 15.0);
        assert_eq!(level.generated_tokens, 42);
        assert_eq!(level.wall_s, 4.0);
    }

    #[test]
    fn gaps_between_arrivals() {
        let t0 = std::time::Instant::now();
        let arrivals = [t0, t0 + Duration::from_millis(5), t0 + Duration::from_millis(12)];
        assert_eq!(
            gaps(&arrivals),
            vec![Duration::from_millis(5), Duration::from_millis(7)]
        );
        assert!(gaps(&arrivals[..1]).is_empty());
    }
}

//! Where a model run's time went, from `hearth serve`'s `/metrics` page (Prometheus text) once the run is
//! over: the IM core's histograms (answer slot wait, card open, message stored → first visible model
//! text), the engine's (queue wait, time to first token), and the prefix cache's share of prompt tokens.
//!
//! A percentile is given as the histogram bucket it falls in (…, 0.1, 0.25, 0.5, 1, 2.5 s, …), the
//! buckets being too coarse to interpolate in honestly; the mean (sum over count) is exact.

/// One histogram, summed over its label sets (one bench run has one platform).
#[derive(Debug, Default, PartialEq)]
pub struct Histogram {
    /// Upper bound and cumulative count of each bucket, ascending (`+Inf` last).
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    /// The histogram `name` in `page`; `None` when it has no samples there.
    pub fn parse(page: &str, name: &str) -> Option<Self> {
        let mut histogram = Self::default();
        for (series, labels, value) in samples(page) {
            match series.strip_prefix(name) {
                Some("_bucket") => {
                    // `+Inf` parses as infinity.
                    let le = label(labels, "le")?.parse::<f64>().ok()?;
                    match histogram.buckets.iter_mut().find(|(bound, _)| *bound == le) {
                        Some((_, count)) => *count += value,
                        None => histogram.buckets.push((le, value)),
                    }
                }
                Some("_sum") => histogram.sum += value,
                Some("_count") => histogram.count += value,
                _ => {}
            }
        }
        histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        (histogram.count > 0.0).then_some(histogram)
    }

    /// The mean, in seconds.
    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// The bucket the `q` quantile falls in: its lower and upper bound in seconds (the upper one infinite
    /// past the last finite bound).
    pub fn quantile(&self, q: f64) -> (f64, f64) {
        let rank = q * self.count;
        let mut lower = 0.0;
        for &(upper, cumulative) in &self.buckets {
            if cumulative >= rank {
                return (lower, upper);
            }
            lower = upper;
        }
        (lower, f64::INFINITY)
    }
}

/// A counter or gauge in `page`, summed over its label sets; `None` when absent.
pub fn value(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for (series, _, value) in samples(page) {
        if series == name {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// Every sample line of `page`: series name, label text (without braces) and value.
fn samples(page: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    page.lines().filter(|line| !line.starts_with('#')).filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse::<f64>().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        Some((name, labels, value))
    })
}

/// The value of label `key` in `labels` (`a="x",b="y"`).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

/// A quantile's bucket in milliseconds: `250–500 ms`, `> 120000 ms`.
fn bucket((lower, upper): (f64, f64)) -> String {
    if upper.is_infinite() {
        format!("> {:.0} ms", lower * 1000.0)
    } else {
        format!("{:.0}–{:.0} ms", lower * 1000.0, upper * 1000.0)
    }
}

/// Print the breakdown of `page` as a markdown table; `interval_ms`: the card update interval the run set.
pub fn print_breakdown(page: &str, interval_ms: u64) {
    const ROWS: &[(&str, &str)] = &[
        (
            "hearth_im_first_visible_seconds",
            "message stored → first visible model text (hearth's clock)",
        ),
        (
            "hearth_im_answer_slot_wait_seconds",
            "waiting for an answer slot (connector's concurrent answers)",
        ),
        ("hearth_im_card_open_seconds", "card open round trip"),
        ("hearth_queue_wait_seconds", "engine queue wait"),
        (
            "hearth_time_to_first_token_seconds",
            "engine time to first token (queue wait and prefill included)",
        ),
    ];
    println!("| where the model run's time went | n | mean | p50 (bucket) | p99 (bucket) |");
    println!("|---|---|---|---|---|");
    for (name, what) in ROWS {
        match Histogram::parse(page, name) {
            Some(h) => println!(
                "| {what} | {:.0} | {:.0} ms | {} | {} |",
                h.count,
                h.mean() * 1000.0,
                bucket(h.quantile(0.50)),
                bucket(h.quantile(0.99))
            ),
            None => println!("| {what} | 0 | – | – | – |"),
        }
    }
    println!("| card update interval (setting) | | {interval_ms} ms | | |");
    let prompt = value(page, "hearth_prompt_tokens_total").unwrap_or(0.0);
    let requests = value(page, "hearth_engine_requests_total").unwrap_or(0.0);
    if requests > 0.0 {
        println!(
            "| prompt tokens per request (system prompt, session history, question) | {requests:.0} | {:.0} | | |",
            prompt / requests
        );
    }
    match value(page, "hearth_prefix_cache_hit_tokens_total") {
        Some(hits) if prompt > 0.0 => println!(
            "| prefix cache hit rate (prompt tokens served from the cache) | | {:.1} % | | |",
            100.0 * hits / prompt
        ),
        _ => println!("| prefix cache hit rate | | not in /metrics | | |"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE hearth_im_card_open_seconds histogram
hearth_im_card_open_seconds_bucket{platform=\"dingtalk\",le=\"0.1\"} 2
hearth_im_card_open_seconds_bucket{platform=\"dingtalk\",le=\"0.5\"} 6
hearth_im_card_open_seconds_bucket{platform=\"dingtalk\",le=\"1\"} 10
hearth_im_card_open_seconds_bucket{platform=\"dingtalk\",le=\"+Inf\"} 10
hearth_im_card_open_seconds_sum{platform=\"dingtalk\"} 3
hearth_im_card_open_seconds_count{platform=\"dingtalk\"} 10
hearth_prompt_tokens_total 400
hearth_prefix_cache_hit_tokens_total 100
";

    #[test]
    fn quantiles_are_their_buckets() {
        let h = Histogram::parse(PAGE, "hearth_im_card_open_seconds").unwrap();
        assert_eq!(h.mean(), 0.3);
        assert_eq!(h.quantile(0.2), (0.0, 0.1));
        assert_eq!(h.quantile(0.5), (0.1, 0.5));
        assert_eq!(h.quantile(0.99), (0.5, 1.0));
        assert_eq!(bucket(h.quantile(0.99)), "500–1000 ms");
        assert_eq!(bucket((120.0, f64::INFINITY)), "> 120000 ms");
        assert!(Histogram::parse(PAGE, "hearth_queue_wait_seconds").is_none());
    }

    #[test]
    fn counters_are_read_by_exact_name() {
        assert_eq!(value(PAGE, "hearth_prompt_tokens_total"), Some(400.0));
        assert_eq!(value(PAGE, "hearth_prefix_cache_hit_tokens_total"), Some(100.0));
        assert_eq!(value(PAGE, "hearth_prompt_tokens"), None);
    }
}

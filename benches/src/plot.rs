//! The SVG plot of the concurrency sweep: aggregate tok/s (left) and time to first token p50/p99 (right)
//! against concurrency, both engines, captioned with the run's provenance.
//!
//! plotters' SVG backend writes text as `<text>` elements and, without its `ttf` feature, sizes it with
//! built-in metrics, so drawing needs no system fonts.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::{EngineKind, EngineResults, RunInfo};

/// Width and height of the SVG, in pixels.
const SIZE: (u32, u32) = (1200, 520);

fn color(engine: EngineKind) -> RGBColor {
    match engine {
        EngineKind::Hearth => RGBColor(214, 39, 40),
        EngineKind::LlamaCpp => RGBColor(31, 119, 180),
    }
}

/// Concurrency is drawn on a log2 axis: x = log2(streams), labelled with the stream counts 1, 2, 4, 8, ...
fn x_of(concurrency: usize) -> f64 {
    (concurrency.max(1) as f64).log2()
}

/// The label of a log2 x position: the stream count at whole powers of two, nothing in between.
fn x_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
        format!("{}", 2f64.powf(x.round()))
    } else {
        String::new()
    }
}

/// The x range around the measured levels, half a doubling of margin on each side.
fn x_range(levels: impl Iterator<Item = usize>) -> std::ops::Range<f64> {
    let (lo, hi) = levels
        .map(x_of)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if lo > hi {
        return -0.5..1.5;
    }
    lo - 0.5..hi + 0.5
}

/// A millisecond label rounded to two significant digits (the log axis's ticks fall on 10^(k/5)).
fn ms_label(ms: f64) -> String {
    if !(ms.is_finite() && ms > 0.0) {
        return String::new();
    }
    let step = 10f64.powi(ms.log10().floor() as i32 - 1).max(1.0);
    format!("{:.0}", (ms / step).round() * step)
}

/// A log-scale axis range around `values` (positive ones), with some margin; (1, 10) when there are none.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi == 0.0 {
        return 1.0..10.0;
    }
    lo / 1.3..hi * 1.3
}

/// Draw the sweep of every engine in `results` as an SVG document.
pub fn svg(info: &RunInfo, results: &[EngineResults]) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let root = root.titled(&info.caption(), ("sans-serif", 18)).map_err(plot_error)?;
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        let levels = || results.iter().flat_map(|r| r.levels.iter());
        let x_range = x_range(levels().map(|l| l.concurrency));
        let subtitle = format!(
            "prompt {} tokens, {} generated per stream",
            info.prompt_tokens, info.gen_tokens
        );

        // Left: aggregate throughput.
        let top = levels().map(|l| l.aggregate_tok_per_s).fold(0.0f64, f64::max);
        let y_top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(&left)
            .caption(format!("aggregate tok/s ({subtitle})"), ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone(), 0.0..y_top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("concurrent streams")
            .y_desc("tokens / s")
            .x_labels(16)
            .x_label_formatter(&x_label)
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(plot_error)?;
        for r in results.iter().filter(|r| !r.levels.is_empty()) {
            let c = color(r.engine);
            let points: Vec<(f64, f64)> = r
                .levels
                .iter()
                .map(|l| (x_of(l.concurrency), l.aggregate_tok_per_s))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(plot_error)?
                .label(r.engine.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;

        // Right: time to first token, p50 solid and p99 dashed, on a log scale (it spans orders of magnitude):
        // y = log10(ms), labelled in ms (plotters' own log axis leaves whole decades unlabelled).
        let y_range = log_range(levels().flat_map(|l| [l.ttft_ms.p50, l.ttft_ms.p99]));
        let y_range = y_range.start.log10()..y_range.end.log10();
        let mut chart = ChartBuilder::on(&right)
            .caption("time to first token, ms (p50 solid, p99 dashed)", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range, y_range)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("concurrent streams")
            .y_desc("ms")
            .x_labels(16)
            .x_label_formatter(&x_label)
            .light_line_style(TRANSPARENT)
            .y_labels(12)
            .y_label_formatter(&|y| ms_label(10f64.powf(*y)))
            .draw()
            .map_err(plot_error)?;
        for r in results.iter().filter(|r| !r.levels.is_empty()) {
            let c = color(r.engine);
            let point = |c: usize, ms: f64| (x_of(c), ms.max(1e-3).log10());
            let p50: Vec<(f64, f64)> = r.levels.iter().map(|l| point(l.concurrency, l.ttft_ms.p50)).collect();
            let p99: Vec<(f64, f64)> = r.levels.iter().map(|l| point(l.concurrency, l.ttft_ms.p99)).collect();
            chart
                .draw_series(LineSeries::new(p50.clone(), c.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("{} p50", r.engine.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart
                .draw_series(p50.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(plot_error)?;
            chart
                .draw_series(DashedLineSeries::new(p99.clone(), 6, 4, c.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("{} p99", r.engine.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], c.stroke_width(2)));
            chart
                .draw_series(p99.iter().map(|&p| TriangleMarker::new(p, 5, c.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(out)
}

/// plotters' error type borrows nothing but is generic over the backend; keep its message.
fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the SVG plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{info, results};

    #[test]
    fn svg_names_the_run_and_both_engines() {
        let svg = svg(&info(), &results()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for text in [
            "abc1234",
            "m.gguf",
            "Q4_1",
            "Test CPU",
            "b11434",
            "aggregate tok/s",
            "hearth p99",
            "llama.cpp",
        ] {
            assert!(svg.contains(text), "the SVG lacks {text:?}");
        }
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn svg_without_levels_still_draws() {
        let mut results = results();
        for r in &mut results {
            r.levels.clear();
        }
        assert!(svg(&info(), &results).unwrap().contains("<svg"));
        assert_eq!(log_range(std::iter::empty()), 1.0..10.0);
        assert_eq!(x_range(std::iter::empty()), -0.5..1.5);
    }

    #[test]
    fn x_axis_is_log2_labelled_with_stream_counts() {
        assert_eq!(x_of(1), 0.0);
        assert_eq!(x_of(64), 6.0);
        assert_eq!(x_label(&4.0), "16");
        assert_eq!(x_label(&0.5), "");
        assert_eq!(x_range([1, 4, 16].into_iter()), -0.5..4.5);
    }

    #[test]
    fn ms_labels_have_two_significant_digits() {
        assert_eq!(ms_label(39810.7), "40000");
        assert_eq!(ms_label(1584.9), "1600");
        assert_eq!(ms_label(63.1), "63");
        assert_eq!(ms_label(2.512), "3");
        assert_eq!(ms_label(0.0), "");
    }
}

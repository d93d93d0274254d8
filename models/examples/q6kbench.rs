//! Times the batched one-row-rounding Q6_K kernel ([`models::kernels::q6k_matmul_rows`], the decode rows of a
//! batched step) on Qwen2.5-1.5B's Q6_K shapes (the tied output projection, and `ffn_down` of half the
//! layers) and Qwen2.5-7B's `ffn_down`, at 1 and 8 rows, and candle's own one-row call (which this kernel
//! replaces in decode) next to it at 1 row; µs per call, median of 9 batches, the two taking turns.
//!
//! Each call uses the next of several copies of the weight, at least 128 MB in all, so that the weights come
//! from memory as in a real decode step.
//!
//! `cargo run --release -p models --example q6kbench [-- FILTER [ROWS]]`

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module, Tensor};

mod timing;

fn main() -> candle_core::Result<()> {
    // As in the engine: on the pinned step-loop thread, with candle's barrier pool.
    models::run_pinned(bench)
}

fn bench() -> candle_core::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let rows: Vec<usize> = match std::env::args().nth(2) {
        Some(list) => list.split(',').filter_map(|m| m.parse().ok()).collect(),
        None => vec![1, 8],
    };
    let dev = Device::Cpu;
    let shapes = [("1.5B output 151936x1536", 151936usize, 1536usize), ("1.5B down 1536x8960", 1536, 8960), ("7B down 3584x18944", 3584, 18944)];
    println!("| shape | m | ours µs | ours GB/s of weights | candle µs |");
    println!("|---|---:|---:|---:|---:|");
    for (name, n, k) in shapes {
        if !name.contains(&filter) {
            continue;
        }
        let bytes = n * k / 256 * 210;
        let copies = (128 << 20) / bytes + 1;
        let weights = (0..copies)
            .map(|c| {
                let w: Vec<f32> = (0..n * k).map(|i| (((i + c) * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect();
                Ok(std::sync::Arc::new(QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev)?, GgmlDType::Q6K)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let mut calls = 0usize;
            let mut ours = |_: usize| -> candle_core::Result<()> {
                calls += 1;
                models::kernels::q6k_matmul_rows(&x, &weights[calls % copies])?.expect("the kernel applies");
                Ok(())
            };
            let candles: Vec<_> = weights.iter().map(|w| candle_core::quantized::QMatMul::from_arc(w.clone())).collect::<candle_core::Result<_>>()?;
            let mut candle_calls = 0usize;
            let mut theirs = |_: usize| -> candle_core::Result<()> {
                candle_calls += 1;
                candles[candle_calls % copies].forward(&x)?;
                Ok(())
            };
            let (us, candle) = if m == 1 {
                let [us, candle_us] = timing::alternating([&mut ours, &mut theirs])?;
                (us, format!("{candle_us:.0}"))
            } else {
                (timing::alternating([&mut ours])?[0], "–".to_string())
            };
            println!("| {name} | {m} | {us:.0} | {:.1} | {candle} |", bytes as f64 / us / 1e3);
        }
    }
    Ok(())
}

//! Times the batched one-row-rounding Q6_K kernel ([`models::kernels::q6k_matmul_rows`], the decode rows of a
//! batched step) on Qwen2.5-1.5B's Q6_K shapes (the tied output projection, and `ffn_down` of half the
//! layers) and Qwen2.5-7B's `ffn_down`, at 1 and 8 rows; µs per call, median of 9 batches.
//!
//! Each call uses the next of several copies of the weight, at least 128 MB in all, so that the weights come
//! from memory as in a real decode step.
//!
//! `cargo run --release -p models --example q6kbench [-- FILTER [ROWS]]`

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    // As in the engine: the calls start on a worker of the engine's compute pool.
    models::run_in_compute_pool(bench)
}

fn bench() -> candle_core::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let rows: Vec<usize> = match std::env::args().nth(2) {
        Some(list) => list.split(',').filter_map(|m| m.parse().ok()).collect(),
        None => vec![1, 8],
    };
    let dev = Device::Cpu;
    let shapes = [("1.5B output 151936x1536", 151936usize, 1536usize), ("1.5B down 1536x8960", 1536, 8960), ("7B down 3584x18944", 3584, 18944)];
    println!("| shape | m | µs per call | GB/s of weights |");
    println!("|---|---:|---:|---:|");
    for (name, n, k) in shapes {
        if !name.contains(&filter) {
            continue;
        }
        let bytes = n * k / 256 * 210;
        let copies = (128 << 20) / bytes + 1;
        let weights = (0..copies)
            .map(|c| {
                let w: Vec<f32> = (0..n * k).map(|i| (((i + c) * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect();
                QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev)?, GgmlDType::Q6K)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let mut calls = 0usize;
            let mut run = || -> candle_core::Result<()> {
                models::kernels::q6k_matmul_rows(&x, &weights[calls % copies])?.expect("the kernel applies");
                calls += 1;
                Ok(())
            };
            let t = Instant::now();
            let mut warm = 0;
            while t.elapsed() < Duration::from_millis(200) || warm < 2 {
                run()?;
                warm += 1;
            }
            let per_batch = ((0.05 / (t.elapsed().as_secs_f64() / warm as f64)) as usize).max(1);
            let mut per_call = Vec::new();
            for _ in 0..9 {
                let t = Instant::now();
                for _ in 0..per_batch {
                    run()?;
                }
                per_call.push(t.elapsed().as_secs_f64() / per_batch as f64 * 1e6);
            }
            per_call.sort_by(f64::total_cmp);
            let us = per_call[4];
            println!("| {name} | {m} | {us:.0} | {:.1} |", bytes as f64 / us / 1e3);
        }
    }
    Ok(())
}

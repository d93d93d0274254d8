//! Times the Q6_K kernels on Qwen2.5-1.5B's Q6_K shapes (the tied output projection, and `ffn_down` of half
//! the layers) and Qwen2.5-7B's `ffn_down`, at 1 and 8 rows: the repacked [`models::kernels::Q6Kx16`] (what
//! models run), the one-row-rounding [`models::kernels::q6k_matmul_rows`] (what they ran before it, and still
//! run for shapes it does not tile), and candle's own one-row call at 1 row; µs per call, median of 9 batches,
//! the kernels taking turns.
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
    let shapes = [
        ("1.5B output 151936x1536", 151936usize, 1536usize),
        ("1.5B down 1536x8960", 1536, 8960),
        ("7B down 3584x18944", 3584, 18944),
    ];
    println!("| shape | m | Q6Kx16 µs | Q6Kx16 GB/s of weights | rows µs | candle µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, n, k) in shapes {
        if !name.contains(&filter) {
            continue;
        }
        let bytes = n * k / 256 * 210;
        let copies = (128 << 20) / bytes + 1;
        let weights = (0..copies)
            .map(|c| {
                let w: Vec<f32> = (0..n * k)
                    .map(|i| (((i + c) * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
                    .collect();
                Ok(std::sync::Arc::new(QTensor::quantize(
                    &Tensor::from_vec(w, (n, k), &dev)?,
                    GgmlDType::Q6K,
                )?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let repacked = weights
            .iter()
            .map(|w| Ok(models::kernels::Q6Kx16::new(w)?.expect("the kernel applies")))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let mut x16_calls = 0usize;
            let mut x16 = |_: usize| -> candle_core::Result<()> {
                x16_calls += 1;
                repacked[x16_calls % copies].matmul(&x)?;
                Ok(())
            };
            let mut calls = 0usize;
            let mut ours = |_: usize| -> candle_core::Result<()> {
                calls += 1;
                models::kernels::q6k_matmul_rows(&x, &weights[calls % copies])?.expect("the kernel applies");
                Ok(())
            };
            let candles: Vec<_> = weights
                .iter()
                .map(|w| candle_core::quantized::QMatMul::from_arc(w.clone()))
                .collect::<candle_core::Result<_>>()?;
            let mut candle_calls = 0usize;
            let mut theirs = |_: usize| -> candle_core::Result<()> {
                candle_calls += 1;
                candles[candle_calls % copies].forward(&x)?;
                Ok(())
            };
            let (x16_us, us, candle) = if m == 1 {
                let [x16_us, us, candle_us] = timing::alternating([&mut x16, &mut ours, &mut theirs])?;
                (x16_us, us, format!("{candle_us:.0}"))
            } else {
                let [x16_us, us] = timing::alternating([&mut x16, &mut ours])?;
                (x16_us, us, "–".to_string())
            };
            println!(
                "| {name} | {m} | {x16_us:.0} | {:.1} | {us:.0} | {candle} |",
                bytes as f64 / x16_us / 1e3
            );
        }
    }
    Ok(())
}

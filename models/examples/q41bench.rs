//! Times the SmolLM2-135M kernels on its shapes at 1 and 8 rows: [`models::kernels::Q4_1x8`] on the attention
//! and MLP projections, [`models::kernels::Q8_0x8`] on the tied 49152 × 576 output projection. µs per call,
//! median of 15 batches, on the pinned compute threads as in the engine.
//!
//! `cargo run --release -p models --example q41bench [-- FILTER]` (FILTER: a substring of the shape names); with
//! `HEARTH_NO_AVX512=1` the AVX2 kernels run.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// A repacked weight's product with the activations.
type Matmul = dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

/// Median and minimum µs per call of `run`, over 15 batches of `per_batch` calls after a warm-up.
fn time(per_batch: usize, mut run: impl FnMut() -> candle_core::Result<Tensor>) -> candle_core::Result<(f64, f64)> {
    for _ in 0..per_batch / 4 + 1 {
        run()?;
    }
    let mut per_call = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..per_batch {
            run()?;
        }
        per_call.push(t.elapsed().as_secs_f64() / per_batch as f64 * 1e6);
    }
    per_call.sort_by(f64::total_cmp);
    Ok((per_call[7], per_call[0]))
}

fn main() -> candle_core::Result<()> {
    models::run_pinned(bench)
}

fn bench() -> candle_core::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let dev = Device::Cpu;
    let shapes = [
        ("q/o 576x576", GgmlDType::Q4_1, 576usize, 576usize),
        ("gate/up 1536x576", GgmlDType::Q4_1, 1536, 576),
        ("down 576x1536", GgmlDType::Q4_1, 576, 1536),
        ("output 49152x576", GgmlDType::Q8_0, 49152, 576),
    ];
    for (name, dtype, n, k) in shapes {
        if !name.contains(&filter) {
            continue;
        }
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev)?, dtype)?;
        let t = Instant::now();
        let matmul: Box<Matmul> = match dtype {
            GgmlDType::Q4_1 => {
                let w = models::kernels::Q4_1x8::new(&w)?;
                Box::new(move |x| w.matmul(x))
            }
            _ => {
                let w = models::kernels::Q8_0x8::new(&w)?;
                Box::new(move |x| w.matmul(x))
            }
        };
        println!("{name}  repack at load: {:.0} µs", t.elapsed().as_secs_f64() * 1e6);
        for m in [1usize, 8] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0)
                .collect();
            let x = Tensor::from_vec(x, (m, k), &dev)?;
            let per_batch = (2_000_000 / (n * k * m.min(4))).max(2);
            let (median, min) = time(per_batch, || matmul(&x))?;
            println!("{name}  m = {m}: {median:8.1} µs/call (median), min {min:.1}");
        }
    }
    Ok(())
}

//! Times the Q4_1 kernel ([`models::kernels::Q4_1x8`]) on SmolLM2-135M's MLP shapes (gate/up 1536 × 576, down 576 × 1536) at 1 and 8 rows.
//!
//! `cargo run --release -p models --example q41bench`

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (name, n, k) in [("gate 1536x576", 1536usize, 576usize), ("down 576x1536", 576, 1536)] {
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev)?, GgmlDType::Q4_1)?;
        let t = Instant::now();
        let w = models::kernels::Q4_1x8::new(&w)?;
        println!("{name}  repack at load: {:.0} µs", t.elapsed().as_secs_f64() * 1e6);
        for m in [1usize, 8] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0).collect();
            let x = Tensor::from_vec(x, (m, k), &dev)?;
            let run = || w.matmul(&x);
            for _ in 0..50 {
                run()?;
            }
            // Median of 15 batches of 200 calls.
            let mut per_call: Vec<f64> = (0..15)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..200 {
                        run().unwrap();
                    }
                    t.elapsed().as_secs_f64() / 200.0 * 1e6
                })
                .collect();
            per_call.sort_by(f64::total_cmp);
            println!("{name}  m = {m}: {:8.1} µs/call (median), min {:.1}", per_call[7], per_call[0]);
        }
    }
    Ok(())
}

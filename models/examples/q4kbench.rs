//! Times the Q4_K kernel ([`models::kernels::Q4Kx16`]) against candle's `QMatMul` on Qwen2.5-1.5B's and
//! Qwen2.5-7B's projection shapes, at 1, 8 and 256 rows; µs per call, median.
//!
//! Each call uses the next of several copies of the weight, at least 128 MB in all, so that the weights come
//! from memory as in a real decode step rather than from the last-level cache. The two kernels take turns,
//! batch by batch (both run on candle's worker pool), so that a change in the machine's speed meanwhile (a
//! neighbour's load, the memory bus) hits both alike.
//!
//! Then a layer's q/k/v and gate/up as `Q4Kx16::matmul_many` (one pass) against one `matmul` per weight.
//!
//! `cargo run --release -p models --example q4kbench [-- FILTER [ROWS]]` (FILTER: a substring of the shape
//! names; ROWS: a comma-separated list of row counts, 1,8,256 by default).

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
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
        None => vec![1, 8, 256],
    };
    let dev = Device::Cpu;
    let shapes = [
        ("1.5B q 1536x1536", 1536usize, 1536usize),
        ("1.5B k/v 256x1536", 256, 1536),
        ("1.5B gate/up 8960x1536", 8960, 1536),
        ("1.5B down 1536x8960", 1536, 8960),
        ("7B gate/up 18944x3584", 18944, 3584),
        ("7B down 3584x18944", 3584, 18944),
    ];
    println!("| shape | m | ours µs | candle µs | candle / ours |");
    println!("|---|---:|---:|---:|---:|");
    for (name, n, k) in shapes {
        if !name.contains(&filter) {
            continue;
        }
        let copies = (128 << 20) / (n * k / 256 * 144) + 1;
        let (mut ours, mut theirs, mut repack) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..copies {
            let w: Vec<f32> = (0..n * k)
                .map(|i| (((i + c) * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
                .collect();
            let w = std::sync::Arc::new(QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev)?, GgmlDType::Q4K)?);
            let t = Instant::now();
            ours.push(
                models::kernels::Q4Kx16::new(&w)?
                    .ok_or_else(|| candle_core::Error::Msg(format!("{name}: declined")))?,
            );
            repack.push(t.elapsed().as_secs_f64() * 1e3);
            theirs.push(QMatMul::from_arc(w)?);
        }
        repack.sort_by(f64::total_cmp);
        eprintln!("{name}: repack at load {:.1} ms", repack[repack.len() / 2]);
        for m in rows.iter().copied() {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0)
                .collect();
            let x = Tensor::from_vec(x, (m, k), &dev)?;
            let [a, b] = timing::alternating([&mut |i| ours[i % copies].matmul(&x), &mut |i| {
                theirs[i % copies].forward(&x)
            }])?;
            println!("| {name} | {m} | {a:.1} | {b:.1} | {:.2} |", b / a);
        }
    }
    let layers: [(&str, &[usize], usize); 4] = [
        ("1.5B q+k+v", &[1536, 256, 256], 1536),
        ("1.5B gate+up", &[8960, 8960], 1536),
        ("7B q+k+v", &[3584, 512, 512], 3584),
        ("7B gate+up", &[18944, 18944], 3584),
    ];
    println!();
    println!("| layer | m | one pass µs | one call per weight µs | per weight / one pass |");
    println!("|---|---:|---:|---:|---:|");
    for (name, ns, k) in layers {
        if !name.contains(&filter) {
            continue;
        }
        let bytes: usize = ns.iter().map(|n| n * k / 256 * 144).sum();
        let copies = (128 << 20) / bytes + 1;
        let sets = (0..copies)
            .map(|c| {
                ns.iter()
                    .map(|&n| {
                        let w: Vec<f32> = (0..n * k)
                            .map(|i| (((i + c + n) * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
                            .collect();
                        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev)?, GgmlDType::Q4K)?;
                        models::kernels::Q4Kx16::new(&w)?
                            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: declined")))
                    })
                    .collect::<candle_core::Result<Vec<_>>>()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        for m in rows.iter().copied() {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0)
                .collect();
            let x = Tensor::from_vec(x, (m, k), &dev)?;
            let [a, b] = timing::alternating([
                &mut |i| {
                    models::kernels::Q4Kx16::matmul_many(&sets[i % copies].iter().collect::<Vec<_>>(), &x).map(drop)
                },
                &mut |i| sets[i % copies].iter().try_for_each(|w| w.matmul(&x).map(drop)),
            ])?;
            println!("| {name} | {m} | {a:.1} | {b:.1} | {:.2} |", b / a);
        }
    }
    Ok(())
}

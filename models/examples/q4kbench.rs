//! Times the Q4_K kernel ([`models::kernels::Q4Kx16`]) against candle's `QMatMul` on Qwen2.5-1.5B's and
//! Qwen2.5-7B's projection shapes, at 1, 8 and 256 rows; µs per call, median.
//!
//! Each call uses the next of several copies of the weight, at least 128 MB in all, so that the weights come
//! from memory as in a real decode step rather than from the last-level cache. The two kernels take turns,
//! batch by batch (both run on candle's worker pool), so that a change in the machine's speed meanwhile (a
//! neighbour's load, the memory bus) hits both alike.
//!
//! `cargo run --release -p models --example q4kbench [-- FILTER [ROWS]]` (FILTER: a substring of the shape
//! names; ROWS: a comma-separated list of row counts, 1,8,256 by default).

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

/// Median µs per call of each of `runs` (given the call's index), in alternating batches of about 20 ms,
/// 9 batches each after a warm-up.
fn time<const N: usize>(mut runs: [&mut dyn FnMut(usize) -> candle_core::Result<Tensor>; N]) -> candle_core::Result<[f64; N]> {
    let mut per_batch = [1usize; N];
    let mut calls = 0;
    for (run, per_batch) in runs.iter_mut().zip(&mut per_batch) {
        let (t, start) = (Instant::now(), calls);
        while t.elapsed() < Duration::from_millis(100) || calls - start < 2 {
            run(calls)?;
            calls += 1;
        }
        *per_batch = ((0.02 / (t.elapsed().as_secs_f64() / (calls - start) as f64)) as usize).max(1);
    }
    let mut per_call = [(); N].map(|_| Vec::new());
    for _ in 0..9 {
        for (i, run) in runs.iter_mut().enumerate() {
            // One call first, so that the previous kernel's last batch does not spill over.
            run(calls)?;
            calls += 1;
            let t = Instant::now();
            for _ in 0..per_batch[i] {
                run(calls)?;
                calls += 1;
            }
            per_call[i].push(t.elapsed().as_secs_f64() / per_batch[i] as f64 * 1e6);
        }
    }
    Ok(per_call.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }))
}

fn main() -> candle_core::Result<()> {
    // As in the engine: the calls start on a worker of the engine's compute pool.
    models::run_in_compute_pool(bench)
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
            let w: Vec<f32> = (0..n * k).map(|i| (((i + c) * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect();
            let w = std::sync::Arc::new(QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev)?, GgmlDType::Q4K)?);
            let t = Instant::now();
            ours.push(models::kernels::Q4Kx16::new(&w)?.ok_or_else(|| candle_core::Error::Msg(format!("{name}: declined")))?);
            repack.push(t.elapsed().as_secs_f64() * 1e3);
            theirs.push(QMatMul::from_arc(w)?);
        }
        repack.sort_by(f64::total_cmp);
        eprintln!("{name}: repack at load {:.1} ms", repack[repack.len() / 2]);
        for m in rows.iter().copied() {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0).collect();
            let x = Tensor::from_vec(x, (m, k), &dev)?;
            let [a, b] = time([&mut |i| ours[i % copies].matmul(&x), &mut |i| theirs[i % copies].forward(&x)])?;
            println!("| {name} | {m} | {a:.1} | {b:.1} | {:.2} |", b / a);
        }
    }
    Ok(())
}

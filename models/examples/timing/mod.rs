//! The alternating timer the kernel benchmarks share (`mod timing;` in each; not an example itself).

use std::time::{Duration, Instant};

/// Median µs per call of each of `runs` (given the call's index), in alternating batches of about 20 ms,
/// 9 batches each after a warm-up.
pub fn alternating<T, const N: usize>(
    mut runs: [&mut dyn FnMut(usize) -> candle_core::Result<T>; N],
) -> candle_core::Result<[f64; N]> {
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

//! The compute threads: candle's barrier pool, and where its threads and the step loop run.
//!
//! Every parallel loop of a step runs on candle's barrier pool: candle's quantized matmuls and CPU ops, and
//! ours (`kernels::for_each_chunk`). The caller (the step loop) takes one share and the pool's workers the
//! others; between loops the workers spin (candle's default, about 0.6 ms) rather than sleep, so a step's
//! hundreds of loops never wait for a thread to wake. An earlier layout ran our kernels on a rayon pool of
//! the engine's own besides candle's pool, and the two pools' idle workers spun or slept on the cores the
//! other pool needed next.
//!
//! [`run_pinned`] also pins the threads. Left to the kernel's scheduler, a worker woken while the other core
//! looks busy may be placed on the step loop's own core, and the two then take turns on it while the other
//! core idles; a state like that is the likeliest reading of an earlier observation on 2 cores, where
//! Qwen2.5-Coder-1.5B decode sat at either ~30 or ~45 tok/s for a whole request. Pinned, the step loop and
//! each worker have a core of their own. A thread that the pinned step loop started would inherit its one CPU;
//! it starts none (models runs no rayon loops: every parallel loop, the repacks at load too, is on candle's pool).

/// The environment variable that turns pinning off (`0`); on by default.
pub const PIN_VAR: &str = "HEARTH_PIN_THREADS";

/// Run `f` (the engine's step loop, or a kernel benchmark) on this thread after pinning it to one allowed
/// CPU and candle's barrier workers to the others, round robin (`pin_compute_threads`). Repacking weights
/// after this call still uses every core: it runs on candle's pool too.
pub fn run_pinned<R>(f: impl FnOnce() -> R) -> R {
    pin_compute_threads();
    f()
}

/// Pin the calling thread to one allowed CPU, and candle's barrier workers (started here if they were not
/// yet) to the others, round robin. Each call moves the caller to the next CPU, so the step loops of two
/// engines in one process start on different CPUs; the barrier workers, which all engines share, are pinned
/// once, away from the first. Does nothing when [`PIN_VAR`] is `0`, on one CPU, or off Linux; a thread that
/// cannot be pinned keeps running where the kernel puts it.
fn pin_compute_threads() {
    if std::env::var(PIN_VAR).is_ok_and(|v| v == "0") {
        return;
    }
    #[cfg(target_os = "linux")]
    linux::pin();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The CPUs this thread may run on, in order.
    fn allowed_cpus() -> Option<Vec<usize>> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the call writes at most its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return None;
            }
            Some(
                (0..libc::CPU_SETSIZE as usize)
                    .filter(|&c| libc::CPU_ISSET(c, &set))
                    .collect(),
            )
        }
    }

    /// Let thread `tid` of this process (0: the caller) run on `cpus` only.
    fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> bool {
        // SAFETY: as above.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// This process's threads named `{prefix}{i}`, in the order of `i`.
    fn threads_named(prefix: &str) -> Vec<libc::pid_t> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else {
                continue;
            };
            let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
                continue;
            };
            if let Some(i) = name
                .trim_end()
                .strip_prefix(prefix)
                .and_then(|i| i.parse::<usize>().ok())
            {
                found.push((i, tid));
            }
        }
        found.sort_unstable();
        found.into_iter().map(|(_, tid)| tid).collect()
    }

    pub(super) fn pin() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let Some(cpus) = allowed_cpus() else { return };
        if cpus.len() < 2 {
            return;
        }
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let home = call % cpus.len();
        let mut failed = 0;
        if call == 0 {
            let others: Vec<usize> = (1..cpus.len()).map(|k| cpus[(home + k) % cpus.len()]).collect();
            // Workers started now inherit this thread's CPUs, and set their names only once they run: start
            // candle's pool (if nothing has yet) while this thread may use only the others, then pin each
            // worker found by name to one of them.
            failed += usize::from(!set_affinity(0, &others));
            let workers = candle_core::utils::barrier_pool().n_workers();
            let tids = threads_named("candle-bp-");
            for (k, &tid) in tids.iter().enumerate() {
                failed += usize::from(!set_affinity(tid, &others[k % others.len()..][..1]));
            }
            tracing::debug!(
                cpu = cpus[home],
                workers,
                found = tids.len(),
                "step loop and barrier workers pinned"
            );
        }
        failed += usize::from(!set_affinity(0, &cpus[home..home + 1]));
        if failed > 0 {
            tracing::warn!(failed, "some compute threads could not be pinned to a CPU");
        }
    }
}

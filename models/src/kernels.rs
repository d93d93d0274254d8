//! CPU matmul kernels of our own for weight types whose candle kernel is slow on x86.
//!
//! candle 0.11 has no SIMD dot product for Q4_1 on x86: it runs `vec_dot_unopt`, a scalar loop, once per
//! (row, column), reading the whole weight matrix again for every row. [`Q4_1x8`] repacks a Q4_1 matrix once,
//! at load, interleaving eight output columns block by block, so that one AVX2 register holds four consecutive
//! quants of each of the eight columns. [`Q4_1x8::matmul`] then needs no horizontal sums: per block, eight
//! `maddubs` against broadcast activations and one `madd` leave each column's exact integer sum in its own
//! lane, and candle's float expression, `sumf += sumi·dx·dy + mx·sy`, block after block, runs lane by lane.
//! So it computes candle's numbers bit for bit, and each row rounds the same whatever else is in the batch.
//! Each weight block is read once per step and unpacked once for up to four rows.
//!
//! [`Q8_0x8`] does the same for Q8_0 matrices where candle uses its row-by-row AVX path (shapes its
//! repacked kernel does not take, such as SmolLM2's tied 49152 × 576 output projection), bit for bit: the same
//! per-block `fma` into eight float lanes per column and the same final horizontal sum, with the weights read
//! once per step.
//!
//! [`Q4Kx16`] replaces candle's x86 repacked Q4_K kernel, bit for bit, over a compact layout: candle's tiles
//! widen each subblock's scale and minimum to f32 (192 bytes per 256 weights of a column), ours keep the
//! GGUF block's 144 bytes, sixteen columns interleaved, so decode reads a quarter fewer bytes; rows are tiled
//! eight at a time, so a batch reads the weights once.
//!
//! [`q6k_matmul_rows`] reproduces candle's one-row Q6_K path (`vec_dot_q6k_q8k`, AVX2) for several rows at
//! once: the reference decodes one row at a time, so decode rows must round that way, but reading the weights
//! once for all of them is what makes a batch cheap (`kernels/q6k.rs`).
//!
//! [`Q6Kx16`] and [`Q8_0x16`] lay Q6_K and Q8_0 matrices out as [`Q4Kx16`] does and keep each column's block
//! sum an exact integer, as llama.cpp does: not candle's rounding, so models run them for the output
//! projection only, where a batch of eight decode rows costs less than half of what [`q6k_matmul_rows`] and
//! [`Q8_0x8`] take (`kernels/q6kx16.rs`, `kernels/q8_0x16.rs`).
//!
//! # Catalogue
//!
//! | weight type | kernel | file | layout | rounding | serves |
//! |---|---|---|---|---|---|
//! | Q4_1 | [`Q4_1x8`] (+ its Q8_1 activation quantizer) | `kernels/q4_1.rs` | eight columns interleaved | candle's, bit for bit | every Q4_1 layer |
//! | Q8_0 | [`Q8_0x8`] | `kernels/q8_0.rs` | eight columns interleaved | candle's | shapes candle does not repack; a tied table's lookups too |
//! | Q4_K | [`Q4Kx16`] | `kernels/q4k.rs` | sixteen columns in the GGUF's 144 bytes per 256 weights | candle's | every Q4_K layer (AVX-VNNI / AVX2 / AVX-512) |
//! | Q6_K | [`q6k_matmul_rows`] | `kernels/q6k.rs` | candle's blocks; columns in tiles of eight when the rows outgrow L1 | candle's one-row path, every decode row | hidden Q6_K layers |
//! | Q6_K | [`Q6Kx16`] | `kernels/q6kx16.rs` | sixteen columns in the GGUF's 210 bytes, in read order | llama.cpp's exact integer block sums | output projection only; a tied table's lookups |
//! | Q8_0 | [`Q8_0x16`] | `kernels/q8_0x16.rs` | sixteen columns, weights as `x + 128` | llama.cpp's exact integer block sums | output projection only; a tied table's lookups |
//! | activations | Q8_K quantizer, `Q8KRows` | `kernels/q8k.rs` | the K-quant kernels' quantized rows | candle's | — |
//!
//! The three sixteen-column kernels share their repack, work item and (for [`Q6Kx16`], [`Q8_0x16`]) tier
//! choice and product loop through `kernels/columns16.rs`. The two that round as llama.cpp does serve only
//! the output projection (`Linear::new_output`), whose logits feed no later layer: in hidden layers the
//! difference crossed Q8_K rounding steps and grew past the fidelity test's near-tie bound.
//!
//! Common to all: each is repacked once at load in place of the `QTensor` and reads each weight block once
//! per step; activations are read from the tensor's storage (`f32_view`, no copy) and quantized on the
//! pool; the `[m, n]` product is written directly (`Out`), each work item its own columns. Each matmul has
//! an AVX2 body compiled in (the x86-64-v3 build) and a 512-bit body (AVX-512 F/BW/VL/VNNI) chosen at run
//! time by `avx512_vnni`; the two compute the same integers and the same float sequence per lane, and
//! `HEARTH_NO_AVX512=1` forces the AVX2 bodies to compare them. Every parallel loop of a step runs on
//! candle's barrier pool (`for_each_chunk`), as candle's own matmuls and CPU ops do, so its workers spin
//! between loops instead of sleeping and no second pool competes for the cores; `threads.rs`
//! (`run_pinned`) pins the step loop to one CPU and the barrier workers to the others
//! (`HEARTH_PIN_THREADS=0` turns it off).

use candle_core::quantized::k_quants::BlockQ8K;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

mod columns16;
mod q4_1;
mod q4k;
mod q6k;
mod q6kx16;
mod q8_0;
mod q8_0x16;
mod q8k;

pub use q4_1::Q4_1x8;
pub use q4k::Q4Kx16;
pub use q6k::q6k_matmul_rows;
pub use q6kx16::Q6Kx16;
pub use q8_0::Q8_0x8;
pub use q8_0x16::Q8_0x16;

/// Whether the 512-bit kernels run: the CPU has AVX-512 F, BW, VL and VNNI, besides AVX2, FMA and F16C, and
/// `HEARTH_NO_AVX512` is not set. Decided once. Those kernels compute the same bits as the AVX2 ones, so the
/// choice only changes speed (the variable is there to compare the two).
fn avx512_vnni() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var_os("HEARTH_NO_AVX512").is_some() {
            return false;
        }
        // The 512-bit kernels finish with the AVX2 kernels' helpers, compiled in only for such a build.
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni")
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )))]
        false
    })
}

/// The data of a `[n, k]` matrix `w` of `dtype`, whose blocks hold 32 values in `block_bytes` bytes, for a
/// repack by `who`: `(n, k, data)`, or an error for another type or rank, a `k` that is not a multiple of 32,
/// or a storage of the wrong size.
fn repack_source<'a>(
    w: &'a QTensor,
    dtype: GgmlDType,
    block_bytes: usize,
    who: &str,
) -> candle_core::Result<(usize, usize, std::borrow::Cow<'a, [u8]>)> {
    if w.dtype() != dtype {
        candle_core::bail!("{who}: a {:?} tensor, not {dtype:?}", w.dtype());
    }
    let (n, k) = w.shape().dims2()?;
    let data = w.data()?;
    if k == 0 || k % 32 != 0 || data.len() != n * (k / 32) * block_bytes {
        candle_core::bail!("{who}: {} bytes for a [{n}, {k}] {dtype:?} matrix", data.len());
    }
    Ok((n, k, data))
}

/// The values of an f32 CPU tensor, borrowed from its storage when it is contiguous (as every activation of a
/// step is), else copied: a step's serial work spent 6 % of its time copying activations that the next loop
/// reads once.
pub(crate) struct F32View<'a> {
    values: View<'a>,
}

enum View<'a> {
    Borrowed(candle_core::StorageRef<'a>, std::ops::Range<usize>),
    Owned(Vec<f32>),
}

impl std::ops::Deref for F32View<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.values {
            View::Borrowed(storage, range) => match &**storage {
                candle_core::Storage::Cpu(cpu) => cpu.as_slice::<f32>().map(|v| &v[range.clone()]).unwrap_or(&[]),
                _ => &[],
            },
            View::Owned(v) => v,
        }
    }
}

/// `x`'s values, row-major ([`F32View`]); an error for a tensor that is not f32 on the CPU.
pub(crate) fn f32_view(x: &Tensor) -> candle_core::Result<F32View<'_>> {
    if x.dtype() != candle_core::DType::F32 || !x.device().is_cpu() {
        candle_core::bail!("expected an f32 CPU tensor, got {:?} on {:?}", x.dtype(), x.device());
    }
    let (storage, layout) = x.storage_and_layout();
    if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(_)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    {
        return Ok(F32View {
            values: View::Borrowed(storage, start..end),
        });
    }
    drop(storage);
    Ok(F32View {
        values: View::Owned(x.flatten_all()?.to_vec1::<f32>()?),
    })
}

/// The rows of `x` (`[m, k]`, f32, CPU) for `who`'s `[n, k]` weight, row-major with their count; `None` when
/// there are none (the product is then `[0, n]`). An error for another shape or device.
fn activation_rows<'a>(
    x: &'a Tensor,
    n: usize,
    k: usize,
    who: &str,
) -> candle_core::Result<Option<(usize, F32View<'a>)>> {
    let (m, xk) = x.dims2()?;
    if xk != k || !matches!(x.device(), Device::Cpu) {
        candle_core::bail!(
            "{who}: x is [{m}, {xk}] on {:?}, the weight [{n}, {k}] on the CPU",
            x.device()
        );
    }
    if m == 0 {
        return Ok(None);
    }
    Ok(Some((m, f32_view(x)?)))
}

/// The `k` that all of `ks` (the weights of one `matmul_many`) share, `None` for no weights; an error naming
/// `who` when two differ.
fn shared_k(mut ks: impl Iterator<Item = usize>, who: &str) -> candle_core::Result<Option<usize>> {
    let Some(k) = ks.next() else { return Ok(None) };
    match ks.find(|&other| other != k) {
        Some(other) => candle_core::bail!("{who}: weights of {k} and {other} inputs"),
        None => Ok(Some(k)),
    }
}

/// Where a kernel's work items write: `[m, n]` row-major f32, each item its own columns.
struct Out {
    ptr: *mut f32,
    n: usize,
}

// SAFETY: the work items write disjoint parts of the buffer (their own columns), which outlives them.
unsafe impl Sync for Out {}

impl Out {
    /// Row `r` of columns `col0..col0 + 8` from `lanes[r]`, for every row of `lanes`; lanes at or past `n`
    /// (a last group's padding) are dropped.
    ///
    /// # Safety
    /// The buffer has `lanes.len()` rows of `n`, and no other work item writes these columns.
    unsafe fn put_lanes(&self, lanes: &[[f32; 8]], col0: usize) {
        let cols = self.n.saturating_sub(col0).min(8);
        for (r, lane) in lanes.iter().enumerate() {
            let at = r * self.n + col0;
            // SAFETY: within row `r` (`col0 + cols <= n`), and the caller's columns. A whole group is one
            // fixed-size copy (a variable-length one is a `memcpy` call per row).
            unsafe {
                if cols == 8 {
                    self.ptr.add(at).cast::<[f32; 8]>().write_unaligned(*lane);
                } else {
                    std::ptr::copy_nonoverlapping(lane.as_ptr(), self.ptr.add(at), cols);
                }
            }
        }
    }
}

/// An `[m, n]` product that `fill` writes through an `Out`, every element of it (each column by exactly
/// one work item); the buffer is not zeroed first.
fn product(m: usize, n: usize, fill: impl FnOnce(&Out)) -> candle_core::Result<Tensor> {
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    fill(&Out { ptr: y.as_mut_ptr(), n });
    // SAFETY: `fill` has written all `m * n` elements (its contract); a panic in it propagates before this.
    unsafe { y.set_len(m * n) };
    Tensor::from_vec(y, (m, n), &Device::Cpu)
}

/// An `[m, n]` product (row-major) computed by blocks of `cols` columns (`n` a multiple of `cols`) on candle's
/// pool: `tile(j, r0, rows, out)` must write rows `r0..r0 + rows` of columns `cols * j..cols * (j + 1)` of
/// `out`, every one of them and nothing else; it is called for each column block with row tiles of at most
/// `max_rows` rows, so that a tile's weights are unpacked once for its rows.
fn column_blocks(
    m: usize,
    n: usize,
    cols: usize,
    max_rows: usize,
    tile: impl Fn(usize, usize, usize, &Out) + Sync,
) -> Vec<f32> {
    let mut ys = column_blocks_many(m, &[n], cols, max_rows, |_, j, r0, rows, out| tile(j, r0, rows, out));
    ys.pop().unwrap_or_default()
}

/// [`column_blocks`] for several products of the same `m` rows at once, `ns[i]` columns for product `i`, in
/// one parallel loop over all their column blocks: `tile(i, j, r0, rows, out)` writes product `i`'s.
fn column_blocks_many(
    m: usize,
    ns: &[usize],
    cols: usize,
    max_rows: usize,
    tile: impl Fn(usize, usize, usize, usize, &Out) + Sync,
) -> Vec<Vec<f32>> {
    debug_assert!(ns.iter().all(|n| n.is_multiple_of(cols)) && max_rows > 0);
    // Not zeroed first: the column blocks together write every element.
    let mut ys: Vec<Vec<f32>> = ns.iter().map(|&n| Vec::with_capacity(m * n)).collect();
    let outs: Vec<Out> = ys
        .iter_mut()
        .zip(ns)
        .map(|(y, &n)| Out { ptr: y.as_mut_ptr(), n })
        .collect();
    // `starts[i]`: the first of product `i`'s column blocks in the loop.
    let starts: Vec<usize> = std::iter::once(0)
        .chain(ns.iter().scan(0, |end, &n| {
            *end += n / cols;
            Some(*end)
        }))
        .collect();
    let column_block = |item: usize| {
        let i = starts.partition_point(|&s| s <= item) - 1;
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(max_rows);
            tile(i, item - starts[i], r0, rows, &outs[i]);
            r0 += rows;
        }
    };
    // On candle's worker pool, where every parallel loop of a step runs (see `threads.rs`).
    parallel_ranges(starts[ns.len()], |blocks| blocks.for_each(column_block));
    for (y, &n) in ys.iter_mut().zip(ns) {
        // SAFETY: every column block has run (`parallel_ranges` returns when all items are done; a panic
        // propagates from it), each writing all `m` rows of its columns (`tile`'s contract): all `m * n`
        // elements.
        unsafe { y.set_len(m * n) };
    }
    ys
}

/// `f(i, chunk)` for each `size`-element chunk of `data` (the last one may be shorter), on candle's barrier
/// pool, where candle's own quantized matmuls and CPU ops run too: a step's parallel loops all run on one set
/// of threads, whose workers spin between them instead of sleeping (see `threads.rs`).
pub(crate) fn for_each_chunk<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    for_each_chunk_init(data, size, || (), |_, i, chunk| f(i, chunk));
}

/// `for_each_chunk` with a scratch state made by `init` for each run of consecutive chunks that one thread
/// takes, and handed to `f` with each of them.
pub(crate) fn for_each_chunk_init<T: Send, S>(
    data: &mut [T],
    size: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync,
) {
    let (len, size) = (data.len(), size.max(1));
    if len <= size {
        // One chunk: no other thread to wake.
        f(&mut init(), 0, data);
        return;
    }
    let ptr = SyncPtr(data.as_mut_ptr());
    parallel_ranges(len.div_ceil(size), |items| {
        let mut state = init();
        for i in items {
            let start = i * size;
            // SAFETY: chunk `i` is `data[start..start + size]` cut at the end, and no other item touches it;
            // `data` is borrowed mutably for the whole call, which returns when every item has run.
            let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), size.min(len - start)) };
            f(&mut state, i, chunk);
        }
    });
}

/// `f` over ranges that together cover `0..n_items` once, on candle's barrier pool, the caller taking its
/// share. Threads take ranges from a shared cursor, each a half of its share of what is left (guided
/// scheduling): long ranges first, which stream the weights in long runs, then shorter ones, so that the
/// threads end within about one item of each other. candle's `execute_chunked` takes sixteen equal ranges,
/// and a thread that finished early waited on average half of one, about 3 % of each decode matmul.
pub(crate) fn parallel_ranges(n_items: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    thread_local! {
        /// Set while this thread runs a share: a nested call runs inline (the pool takes one call at a time).
        static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if n_items <= 1 || threads == 1 || INSIDE.with(|i| i.get()) {
        f(0..n_items);
        return;
    }
    let cursor = AtomicUsize::new(0);
    let next = || {
        let mut start = cursor.load(Ordering::Relaxed);
        loop {
            if start >= n_items {
                return None;
            }
            let size = ((n_items - start) / (2 * threads)).max(1);
            match cursor.compare_exchange_weak(start, start + size, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(start..start + size),
                Err(now) => start = now,
            }
        }
    };
    pool.execute(|_| {
        let outer = INSIDE.with(|i| i.replace(true));
        while let Some(range) = next() {
            f(range);
        }
        INSIDE.with(|i| i.set(outer));
    });
}

/// A pointer that parallel work items share, each using its own part of what it points to.
struct SyncPtr<T>(*mut T);

// SAFETY: only used where each work item reads or writes a part of the buffer no other item touches.
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer (a method, so that closures capture the whole `SyncPtr`, not its field).
    fn get(&self) -> *mut T {
        self.0
    }
}

/// candle's `BlockQ8K`, mirrored (292 bytes).
#[repr(C)]
struct Q8K {
    d: f32,
    qs: [i8; 256],
    bsums: [i16; 16],
}

const _: () = assert!(std::mem::size_of::<Q8K>() == 292);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

/// candle's `hsum_float_8`: the eight lanes summed in its fixed order.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn hsum_float_8(x: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: AVX at compile time; register-only operations.
    unsafe {
        let res = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        let res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }
}

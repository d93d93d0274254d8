//! CPU matmul kernels of our own for weight types whose candle kernel is slow on x86.
//!
//! candle 0.11 has no SIMD dot product for Q4_1 on x86: it runs `vec_dot_unopt`, a scalar loop, once per
//! (row, column), reading the whole weight matrix again for every row. [`q4_1_matmul`] computes the same
//! numbers bit for bit: each block's integer sum is exact (AVX2 `maddubs`/`madd`), and the floats are
//! combined in candle's order, `sumf += sumi·dx·dy + mx·sy`, block after block. Each weight block is unpacked
//! once and used for every row of the batch, so a batch of decode rows costs little more than one row.
//!
//! [`q8_0_matmul`] does the same for Q8_0 matrices where candle uses its row-by-row AVX path (shapes its
//! repacked kernel does not take, such as SmolLM2's tied 49152 × 576 output projection): the same per-block
//! `fma` into eight float lanes and the same final horizontal sum, with the weights read once per step.
//!
//! [`q6k_matmul_rows`] reproduces candle's one-row Q6_K path (`vec_dot_q6k_q8k`, AVX2) for several rows at
//! once: the reference decodes one row at a time, so decode rows must round that way, but reading the weights
//! once for all of them is what makes a batch cheap.

use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

/// candle's `BlockQ4_1`, mirrored: both are `repr(C)` with these fields in this order (20 bytes).
#[repr(C)]
struct Q4_1 {
    d: f16,
    m: f16,
    qs: [u8; 16],
}

/// candle's `BlockQ8_1`, mirrored (36 bytes).
#[repr(C)]
struct Q8_1 {
    d: f16,
    s: f16,
    qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<Q4_1>() == 20 && std::mem::size_of::<Q8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// candle's `BlockQ8_0`, mirrored (34 bytes).
#[repr(C)]
struct Q8_0 {
    d: f16,
    qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<Q8_0>() == 34 && std::mem::size_of::<BlockQ8_0>() == 34);

/// `x` (`[m, k]`) times the transpose of the Q8_0 matrix `w` (`[n, k]`), where candle would take its
/// row-by-row AVX path; `None` otherwise (candle's repacked kernel, which rounds differently, then runs).
pub fn q8_0_matmul(x: &Tensor, w: &QTensor) -> candle_core::Result<Option<Tensor>> {
    if w.dtype() != GgmlDType::Q8_0 || !matches!(w.device(), Device::Cpu) || !matches!(x.device(), Device::Cpu) {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let (m, xk) = x.dims2()?;
    // candle repacks Q8_0 when k is a multiple of 256 and n of 16 (on CPUs with VNNI); leave those to it.
    if xk != k || k % 32 != 0 || m == 0 || (k % 256 == 0 && n % 16 == 0) || !cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")) {
        return Ok(None);
    }
    let nb = k / 32;
    let data = w.data()?;
    if data.len() != n * nb * 34 || data.as_ptr() as usize % std::mem::align_of::<Q8_0>() != 0 {
        return Ok(None);
    }
    // SAFETY: candle's `Vec<BlockQ8_0>` storage, same `repr(C)` layout, alignment checked above.
    let weights: &[Q8_0] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const Q8_0, n * nb) };
    let x = x.contiguous()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut lhs = vec![BlockQ8_0::zeros(); m * nb];
    for (row, blocks) in xs.chunks_exact(k).zip(lhs.chunks_exact_mut(nb)) {
        BlockQ8_0::from_float(row, blocks);
    }
    // SAFETY: same layout and size.
    let lhs: &[Q8_0] = unsafe { std::slice::from_raw_parts(lhs.as_ptr() as *const Q8_0, m * nb) };
    let lhs_d: Vec<f32> = lhs.iter().map(|b| b.d.to_f32()).collect();
    let mut out_t = vec![0f32; n * m];
    out_t.par_chunks_mut(4 * m).enumerate().with_min_len(4).for_each(|(group, out)| {
        let cols = out.len() / m;
        let w = &weights[group * 4 * nb..(group * 4 + cols) * nb];
        for r in 0..m {
            let (ys, yd) = (&lhs[r * nb..(r + 1) * nb], &lhs_d[r * nb..(r + 1) * nb]);
            let mut c = 0;
            while c + 4 <= cols {
                let d = q8_0_dot4(&w[c * nb..(c + 4) * nb], nb, ys, yd);
                for i in 0..4 {
                    out[(c + i) * m + r] = d[i];
                }
                c += 4;
            }
            for c in c..cols {
                out[c * m + r] = q8_0_dot(&w[c * nb..(c + 1) * nb], ys, yd);
            }
        }
    });
    Ok(Some(Tensor::from_vec(out_t, (n, m), &Device::Cpu)?.t()?.contiguous()?))
}

/// candle's `BlockQ6K`, mirrored (210 bytes).
#[repr(C)]
struct Q6K {
    ql: [u8; 128],
    qh: [u8; 64],
    scales: [i8; 16],
    d: f16,
}

/// candle's `BlockQ8K`, mirrored (292 bytes).
#[repr(C)]
struct Q8K {
    d: f32,
    qs: [i8; 256],
    bsums: [i16; 16],
}

const _: () = assert!(std::mem::size_of::<Q6K>() == 210 && std::mem::size_of::<Q8K>() == 292);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

/// Each row of `x` (`[m, k]`) times the transpose of the Q6_K matrix `w`, every row rounded exactly as
/// candle's one-row (compact, AVX2) path rounds it; `None` when this kernel does not apply.
pub fn q6k_matmul_rows(x: &Tensor, w: &QTensor) -> candle_core::Result<Option<Tensor>> {
    if w.dtype() != GgmlDType::Q6K || !matches!(w.device(), Device::Cpu) || !matches!(x.device(), Device::Cpu) {
        return Ok(None);
    }
    if !cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")) {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let (m, xk) = x.dims2()?;
    if xk != k || k % 256 != 0 || m == 0 {
        return Ok(None);
    }
    let nb = k / 256;
    let data = w.data()?;
    if data.len() != n * nb * 210 || data.as_ptr() as usize % std::mem::align_of::<Q6K>() != 0 {
        return Ok(None);
    }
    // SAFETY: candle's `Vec<BlockQ6K>` storage, same `repr(C)` layout, alignment checked above.
    let weights: &[Q6K] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const Q6K, n * nb) };
    let x = x.contiguous()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut lhs = vec![BlockQ8K::zeros(); m * nb];
    for (row, blocks) in xs.chunks_exact(k).zip(lhs.chunks_exact_mut(nb)) {
        BlockQ8K::from_float(row, blocks);
    }
    // SAFETY: same layout and size.
    let lhs: &[Q8K] = unsafe { std::slice::from_raw_parts(lhs.as_ptr() as *const Q8K, m * nb) };
    let mut out_t = vec![0f32; n * m];
    out_t.par_chunks_mut(m).enumerate().with_min_len(8).for_each_init(Vec::new, |acc, (col, out)| {
        q6k_column(&weights[col * nb..(col + 1) * nb], lhs, nb, acc, out);
    });
    Ok(Some(Tensor::from_vec(out_t, (n, m), &Device::Cpu)?.t()?.contiguous()?))
}

/// One Q6_K column against every row: candle's `vec_dot_q6k_q8k`, with each weight block unpacked once and
/// the rows' accumulators kept in `acc`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn q6k_column(w: &[Q6K], lhs: &[Q8K], nb: usize, acc: &mut Vec<std::arch::x86_64::__m256>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // candle's `get_scale_shuffle` table: shuffle `i` repeats scale byte 2i eight times, then 2i + 1.
    const fn shuffle_table() -> [[u8; 16]; 8] {
        let mut t = [[0u8; 16]; 8];
        let mut i = 0;
        while i < 8 {
            let mut j = 0;
            while j < 16 {
                t[i][j] = (2 * i + j / 8) as u8;
                j += 1;
            }
            i += 1;
        }
        t
    }
    const SHUFFLE: [[u8; 16]; 8] = shuffle_table();
    let m = out.len();
    // SAFETY: AVX2 and FMA at compile time; every load reads within one block's arrays.
    unsafe {
        acc.clear();
        acc.resize(m, _mm256_setzero_ps());
        let (m4, m2, m32s) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
        for (b, x) in w.iter().enumerate() {
            let xd = x.d.to_f32();
            let scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            // The block's quants and scales, as candle builds them, for both 128-value halves.
            let mut q4 = [[_mm256_setzero_si256(); 4]; 2];
            let mut sc = [[_mm256_setzero_si256(); 4]; 2];
            for j in 0..2 {
                for i in 0..4 {
                    let shuf = _mm_loadu_si128(SHUFFLE[j * 4 + i].as_ptr() as *const __m128i);
                    sc[j][i] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf));
                }
                let q4bits1 = _mm256_loadu_si256(x.ql.as_ptr().add(j * 64) as *const __m256i);
                let q4bits2 = _mm256_loadu_si256(x.ql.as_ptr().add(j * 64 + 32) as *const __m256i);
                let q4bits_h = _mm256_loadu_si256(x.qh.as_ptr().add(j * 32) as *const __m256i);
                let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m2), 4);
                let q4h_1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 2), m2), 4);
                let q4h_2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 4), m2), 4);
                let q4h_3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 6), m2), 4);
                q4[j] = [
                    _mm256_or_si256(_mm256_and_si256(q4bits1, m4), q4h_0),
                    _mm256_or_si256(_mm256_and_si256(q4bits2, m4), q4h_1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m4), q4h_2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m4), q4h_3),
                ];
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let y = &lhs[r * nb + b];
                let d = y.d * xd;
                let mut sumi = _mm256_setzero_si256();
                for j in 0..2 {
                    let mut p = [_mm256_setzero_si256(); 4];
                    for i in 0..4 {
                        let q8 = _mm256_loadu_si256(y.qs.as_ptr().add(j * 128 + i * 32) as *const __m256i);
                        let q8s = _mm256_maddubs_epi16(m32s, q8);
                        let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q4[j][i], q8), q8s);
                        p[i] = _mm256_madd_epi16(sc[j][i], p16);
                    }
                    sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[0], p[1]));
                    sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[2], p[3]));
                }
                *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), *acc);
            }
        }
        for (o, &acc) in out.iter_mut().zip(acc.iter()) {
            *o = hsum_float_8(acc);
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn q6k_column(_: &[Q6K], _: &[Q8K], _: usize, _: &mut Vec<f32>, _: &mut [f32]) {
    unreachable!("q6k_matmul_rows declines without AVX2 and FMA")
}

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

/// candle's `vec_dot_q8_0_q8_0` (AVX2), operation for operation.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn q8_0_dot(xs: &[Q8_0], ys: &[Q8_0], yd: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 and FMA at compile time; each load reads exactly one block's 32 quants.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for ((x, y), &dy) in xs.iter().zip(ys).zip(yd) {
            let d = _mm256_set1_ps(x.d.to_f32() * dy);
            let bx = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            let ax = _mm256_sign_epi8(bx, bx);
            let sy = _mm256_sign_epi8(by, bx);
            let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(ax, sy)));
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }
}

/// [`q8_0_dot`] of four consecutive columns (`xs`: four runs of `nb` blocks) with one row, their chains
/// interleaved; each column's result is bit-identical to `q8_0_dot` alone.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn q8_0_dot4(xs: &[Q8_0], nb: usize, ys: &[Q8_0], yd: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 and FMA at compile time; each load reads exactly one block's 32 quants.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, (y, &dy)) in ys.iter().zip(yd).enumerate() {
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            for (c, acc) in acc.iter_mut().enumerate() {
                let x = &xs[c * nb + b];
                let d = _mm256_set1_ps(x.d.to_f32() * dy);
                let bx = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
                let ax = _mm256_sign_epi8(bx, bx);
                let sy = _mm256_sign_epi8(by, bx);
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(ax, sy)));
                *acc = _mm256_fmadd_ps(d, q, *acc);
            }
        }
        acc.map(hsum_float_8)
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn q8_0_dot4(_: &[Q8_0], _: usize, _: &[Q8_0], _: &[f32]) -> [f32; 4] {
    unreachable!("q8_0_matmul declines without AVX2 and FMA")
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn q8_0_dot(_: &[Q8_0], _: &[Q8_0], _: &[f32]) -> f32 {
    unreachable!("q8_0_matmul declines without AVX2 and FMA")
}

/// `x` (`[m, k]`, f32, CPU) times the transpose of the Q4_1 matrix `w` (`[n, k]`) → `[m, n]`.
/// `None` when this kernel does not apply (other type or device, odd sizes); the caller then uses candle.
pub fn q4_1_matmul(x: &Tensor, w: &QTensor) -> candle_core::Result<Option<Tensor>> {
    if w.dtype() != GgmlDType::Q4_1 || !matches!(w.device(), Device::Cpu) || !matches!(x.device(), Device::Cpu) {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let (m, xk) = x.dims2()?;
    if xk != k || k % 32 != 0 || m == 0 {
        return Ok(None);
    }
    let nb = k / 32;
    let data = w.data()?;
    if data.len() != n * nb * 20 || data.as_ptr() as usize % std::mem::align_of::<Q4_1>() != 0 {
        return Ok(None);
    }
    // SAFETY: the bytes are candle's `Vec<BlockQ4_1>` storage: `n * nb` blocks of the same `repr(C)` layout,
    // aligned as checked above, alive as long as `w`.
    let weights: &[Q4_1] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const Q4_1, n * nb) };

    // Quantize the activations exactly as candle does (`BlockQ8_1::from_float`, row by row).
    let x = x.contiguous()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut lhs = vec![BlockQ8_1::zeros(); m * nb];
    for (row, blocks) in xs.chunks_exact(k).zip(lhs.chunks_exact_mut(nb)) {
        BlockQ8_1::from_float(row, blocks);
    }
    // SAFETY: same `repr(C)` layout and size, checked at compile time above.
    let blocks: &[Q8_1] = unsafe { std::slice::from_raw_parts(lhs.as_ptr() as *const Q8_1, m * nb) };
    let lhs = Lhs { blocks, d: blocks.iter().map(|b| b.d.to_f32()).collect(), s: blocks.iter().map(|b| b.s.to_f32()).collect() };

    // Eight output columns (all rows) per work item, the last group possibly fewer; written transposed, then
    // flipped.
    let mut out_t = vec![0f32; n * m];
    out_t.par_chunks_mut(8 * m).enumerate().with_min_len(2).for_each_init(ColumnScratch::default, |scratch, (group, out)| {
        let cols = out.len() / m;
        let w = &weights[group * 8 * nb..(group * 8 + cols) * nb];
        if cols == 8 && columns8(w, &lhs, nb, m, scratch, out) {
            return;
        }
        for (i, out) in out.chunks_mut(4 * m).enumerate() {
            let c = out.len() / m;
            columns(&w[i * 4 * nb..(i * 4 + c) * nb], &lhs, nb, m, scratch, out);
        }
    });
    let out = Tensor::from_vec(out_t, (n, m), &Device::Cpu)?.t()?.contiguous()?;
    Ok(Some(out))
}

/// Activations quantized to Q8_1, with their scales widened to f32 once.
struct Lhs<'a> {
    blocks: &'a [Q8_1],
    d: Vec<f32>,
    s: Vec<f32>,
}

/// Per-thread buffers for a group of weight columns, reused across groups.
#[derive(Default)]
struct ColumnScratch {
    unpacked: Vec<Unpacked>,
    dx: Vec<f32>,
    mx: Vec<f32>,
}

/// Dot `w.len() / nb` (at most 4) weight columns with every activation row; `out[c * m + r]` gets column `c`,
/// row `r`. Each output is one chain over its blocks in candle's order; the columns' chains run side by side.
fn columns(w: &[Q4_1], lhs: &Lhs<'_>, nb: usize, m: usize, scratch: &mut ColumnScratch, out: &mut [f32]) {
    let cols = w.len() / nb;
    let ColumnScratch { unpacked, dx, mx } = scratch;
    unpacked.clear();
    unpacked.extend(w.iter().map(|b| Unpacked::new(&b.qs)));
    dx.clear();
    dx.extend(w.iter().map(|b| b.d.to_f32()));
    mx.clear();
    mx.extend(w.iter().map(|b| b.m.to_f32()));
    for r in 0..m {
        let ys = &lhs.blocks[r * nb..(r + 1) * nb];
        let (dy, sy) = (&lhs.d[r * nb..(r + 1) * nb], &lhs.s[r * nb..(r + 1) * nb]);
        let mut sumf = [0f32; 4];
        let mut b = 0;
        while b + 4 <= nb {
            let mut sumi = [[0i32; 4]; 4];
            for c in 0..cols {
                sumi[c] = Unpacked::dot4(&unpacked[c * nb + b..c * nb + b + 4], &ys[b..b + 4]);
            }
            // candle's per-block float expression, sumi·dx·dy + mx·sy, added to each column's running sum in
            // block order (each column's chain rounds exactly as candle's scalar loop).
            for i in 0..4 {
                for c in 0..4 {
                    let k = c * nb + b + i;
                    if c < cols {
                        sumf[c] += sumi[c][i] as f32 * dx[k] * dy[b + i] + mx[k] * sy[b + i];
                    }
                }
            }
            b += 4;
        }
        while b < nb {
            for c in 0..cols {
                let k = c * nb + b;
                let sumi = unpacked[k].dot(&ys[b].qs);
                sumf[c] += sumi as f32 * dx[k] * dy[b] + mx[k] * sy[b];
            }
            b += 1;
        }
        for c in 0..cols {
            out[c * m + r] = sumf[c];
        }
    }
}

/// Eight weight columns against every row, the columns in the eight lanes of one vector: per block the eight
/// exact integer sums are reduced together, and candle's float expression `sumi·dx·dy + mx·sy` and the running
/// sum are evaluated lane by lane, which rounds each column exactly as candle's scalar loop. False when the
/// vector path is not compiled in.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn columns8(w: &[Q4_1], lhs: &Lhs<'_>, nb: usize, m: usize, scratch: &mut ColumnScratch, out: &mut [f32]) -> bool {
    use std::arch::x86_64::*;
    // Block-major: entry `b * 8 + c` is column `c`'s block `b`. Unpacking once pays off from three rows on;
    // for one or two rows the blocks are unpacked as they are used.
    let ColumnScratch { unpacked, dx, mx } = scratch;
    let cache = m > 2;
    unpacked.clear();
    if cache {
        unpacked.extend((0..nb * 8).map(|i| Unpacked::new(&w[(i % 8) * nb + i / 8].qs)));
    }
    dx.clear();
    dx.extend((0..nb * 8).map(|i| w[(i % 8) * nb + i / 8].d.to_f32()));
    mx.clear();
    mx.extend((0..nb * 8).map(|i| w[(i % 8) * nb + i / 8].m.to_f32()));
    // SAFETY: AVX2 at compile time; loads and stores touch exactly the eight lanes of local arrays.
    unsafe {
        let reduce4 = |q: [__m256i; 4]| {
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(q[0], q[1]), _mm256_hadd_epi32(q[2], q[3]));
            _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
        };
        for r in 0..m {
            let mut sumf = _mm256_setzero_ps();
            for b in 0..nb {
                let y = &lhs.blocks[r * nb + b].qs;
                let u: [Unpacked; 8] = if cache {
                    std::array::from_fn(|c| unpacked[b * 8 + c])
                } else {
                    std::array::from_fn(|c| Unpacked::new(&w[c * nb + b].qs))
                };
                let lo = reduce4([u[0].partial(y), u[1].partial(y), u[2].partial(y), u[3].partial(y)]);
                let hi = reduce4([u[4].partial(y), u[5].partial(y), u[6].partial(y), u[7].partial(y)]);
                let sumi = _mm256_cvtepi32_ps(_mm256_set_m128i(hi, lo));
                let dy = _mm256_set1_ps(lhs.d[r * nb + b]);
                let sy = _mm256_set1_ps(lhs.s[r * nb + b]);
                let scaled = _mm256_mul_ps(_mm256_mul_ps(sumi, _mm256_loadu_ps(dx[b * 8..].as_ptr())), dy);
                let v = _mm256_add_ps(scaled, _mm256_mul_ps(_mm256_loadu_ps(mx[b * 8..].as_ptr()), sy));
                sumf = _mm256_add_ps(sumf, v);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), sumf);
            for (c, v) in lanes.into_iter().enumerate() {
                out[c * m + r] = v;
            }
        }
    }
    true
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn columns8(_: &[Q4_1], _: &Lhs<'_>, _: usize, _: usize, _: &mut ColumnScratch, _: &mut [f32]) -> bool {
    false
}

/// A Q4_1 block's 32 quants as bytes: the low nibbles (pairing with activations 0..16), then the high ones.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[derive(Clone, Copy)]
struct Unpacked(std::arch::x86_64::__m256i);

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl Unpacked {
    #[inline(always)]
    fn new(qs: &[u8; 16]) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 is enabled at compile time (cfg above); the load reads exactly 16 bytes.
        unsafe {
            let packed = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
            let lo = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
            Self(_mm256_set_m128i(hi, lo))
        }
    }

    /// Eight partial sums of the products with 32 signed activations. `maddubs` cannot saturate here: two
    /// products of at most 15 × 128 fit an i16.
    #[inline(always)]
    fn partial(&self, ys: &[i8; 32]) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 at compile time; the load reads exactly 32 bytes.
        unsafe {
            let y = _mm256_loadu_si256(ys.as_ptr() as *const __m256i);
            _mm256_madd_epi16(_mm256_maddubs_epi16(self.0, y), _mm256_set1_epi16(1))
        }
    }

    /// Exact integer dot product with 32 signed activations.
    #[inline(always)]
    fn dot(&self, ys: &[i8; 32]) -> i32 {
        use std::arch::x86_64::*;
        let q = self.partial(ys);
        // SAFETY: AVX2 at compile time.
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            _mm_cvtsi128_si32(s)
        }
    }

    /// Exact integer dot products of four blocks with their activations, reduced together.
    #[inline(always)]
    fn dot4(w: &[Unpacked], ys: &[Q8_1]) -> [i32; 4] {
        use std::arch::x86_64::*;
        let (q0, q1, q2, q3) = (w[0].partial(&ys[0].qs), w[1].partial(&ys[1].qs), w[2].partial(&ys[2].qs), w[3].partial(&ys[3].qs));
        // SAFETY: AVX2 at compile time; the store writes exactly four i32.
        unsafe {
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(q0, q1), _mm256_hadd_epi32(q2, q3));
            let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            let mut out = [0i32; 4];
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s);
            out
        }
    }
}

/// Portable fallback with the same (exact) integer results.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[derive(Clone, Copy)]
struct Unpacked([u8; 32]);

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
impl Unpacked {
    fn new(qs: &[u8; 16]) -> Self {
        let mut v = [0u8; 32];
        for j in 0..16 {
            v[j] = qs[j] & 0x0F;
            v[j + 16] = qs[j] >> 4;
        }
        Self(v)
    }

    fn dot(&self, ys: &[i8; 32]) -> i32 {
        self.0.iter().zip(ys).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    fn dot4(w: &[Unpacked], ys: &[Q8_1]) -> [i32; 4] {
        std::array::from_fn(|i| w[i].dot(&ys[i].qs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    #[test]
    fn q6k_rows_are_bit_identical_to_candles_one_row_path() {
        let dev = Device::Cpu;
        let (n, k) = (37, 512);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect();
        let w = std::sync::Arc::new(QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q6K).unwrap());
        let qm = candle_core::quantized::QMatMul::from_arc(w.clone()).unwrap();
        let m = 5;
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0).collect();
        let x = Tensor::from_vec(x, (m, k), &dev).unwrap();
        let ours = q6k_matmul_rows(&x, &w).unwrap().unwrap();
        for r in 0..m {
            // candle's one-row call, row by row.
            let theirs = qm.forward(&x.narrow(0, r, 1).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mine = ours.narrow(0, r, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(mine.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "row {r}");
        }
    }

    #[test]
    fn q8_0_matmul_is_bit_identical_to_candle() {
        let dev = Device::Cpu;
        let (n, k) = (51, 288);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect();
        let w = std::sync::Arc::new(QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q8_0).unwrap());
        let qm = candle_core::quantized::QMatMul::from_arc(w.clone()).unwrap();
        for m in [1usize, 3, 8] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0).collect();
            let x = Tensor::from_vec(x, (m, k), &dev).unwrap();
            let ours = q8_0_matmul(&x, &w).unwrap().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let theirs = qm.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "m = {m}");
        }
    }

    #[test]
    fn q4_1_matmul_is_bit_identical_to_candle() {
        let dev = Device::Cpu;
        let (n, k) = (53, 288);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q4_1).unwrap();
        for m in [1usize, 3, 8, 33] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0).collect();
            let x = Tensor::from_vec(x, (m, k), &dev).unwrap();
            let ours = q4_1_matmul(&x, &w).unwrap().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let qm = candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize(&w.dequantize(&dev).unwrap(), GgmlDType::Q4_1).unwrap()).unwrap();
            let theirs = qm.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "m = {m}");
        }
    }
}

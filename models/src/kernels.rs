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
//! once for all of them is what makes a batch cheap.

use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

mod q4_1;
mod q4k;
mod q8_0;
mod q8k;

pub use q4_1::Q4_1x8;
pub use q4k::Q4Kx16;
pub use q8_0::Q8_0x8;

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
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni")
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
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

/// The rows of `x` (`[m, k]`, f32, CPU) for `who`'s `[n, k]` weight, row-major with their count; `None` when
/// there are none (the product is then `[0, n]`). An error for another shape or device.
fn activation_rows(x: &Tensor, n: usize, k: usize, who: &str) -> candle_core::Result<Option<(usize, Vec<f32>)>> {
    let (m, xk) = x.dims2()?;
    if xk != k || !matches!(x.device(), Device::Cpu) {
        candle_core::bail!("{who}: x is [{m}, {xk}] on {:?}, the weight [{n}, {k}] on the CPU", x.device());
    }
    if m == 0 {
        return Ok(None);
    }
    Ok(Some((m, x.contiguous()?.flatten_all()?.to_vec1::<f32>()?)))
}

/// The `[m, n]` product from per-group lanes: `lanes[g * m + r]` holds row `r` of columns `8g..8g + 8`, the
/// lanes past `n` being padding. `m` is at least 1.
fn gather_groups(lanes: &[[f32; 8]], m: usize, n: usize) -> candle_core::Result<Tensor> {
    let mut y = Vec::with_capacity(m * n);
    for r in 0..m {
        for (g, group) in lanes.chunks_exact(m).enumerate() {
            y.extend_from_slice(&group[r][..(n - 8 * g).min(8)]);
        }
    }
    Tensor::from_vec(y, (m, n), &Device::Cpu)
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
    let wide = avx512_vnni();
    out_t.par_chunks_mut(m).enumerate().with_min_len(8).for_each_init(Vec::new, |acc, (col, out)| {
        let w = &weights[col * nb..(col + 1) * nb];
        if wide {
            // SAFETY: the CPU has the features (checked above).
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            unsafe {
                x86::q6k_column_512(w, lhs, nb, acc, out)
            }
        } else {
            q6k_column(w, lhs, nb, acc, out);
        }
    });
    Ok(Some(Tensor::from_vec(out_t, (n, m), &Device::Cpu)?.t()?.contiguous()?))
}

/// candle's `get_scale_shuffle` table for Q6_K: shuffle `i` repeats scale byte 2i eight times, then 2i + 1.
const SHUFFLE: [[u8; 16]; 8] = {
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
};

/// One Q6_K column against every row: candle's `vec_dot_q6k_q8k`, with each weight block unpacked once and
/// the rows' accumulators kept in `acc`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn q6k_column(w: &[Q6K], lhs: &[Q8K], nb: usize, acc: &mut Vec<std::arch::x86_64::__m256>, out: &mut [f32]) {
    use std::arch::x86_64::*;
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

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod x86 {
    use super::{Q6K, Q8K, SHUFFLE};
    use std::arch::x86_64::*;

    /// [`super::q6k_column`] with 512-bit registers, the same bits: each register holds two of a block's
    /// 32-value chunks, chunk `2i` in the low half and `2i + 1` in the high half, so the integer work halves.
    /// Each 32-bit lane collects the same products, scaled by the same 16-bit scales, as candle's 256-bit lane
    /// of that position does over the chunks, all exactly; the two halves are added (exactly) before candle's
    /// per-block `fma`.
    ///
    /// # Safety
    /// AVX-512 F and BW, AVX2 and FMA; `w` and each row of `lhs` of `nb` blocks, `lhs` of `out.len()` rows.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw")]
    pub(super) unsafe fn q6k_column_512(w: &[Q6K], lhs: &[Q8K], nb: usize, acc: &mut Vec<__m256>, out: &mut [f32]) {
        let m = out.len();
        acc.clear();
        acc.resize(m, _mm256_setzero_ps());
        let (m4, m2, m32s) = (_mm512_set1_epi8(0xF), _mm512_set1_epi8(3), _mm512_set1_epi8(32));
        // Per 16-bit lane, the shift that brings chunk `i`'s two high bits down: 0 and 2 for chunks 0 and 1,
        // 4 and 6 for chunks 2 and 3.
        let shift01 = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
        let shift23 = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(6));
        let both = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        for (b, x) in w.iter().enumerate() {
            let xd = x.d.to_f32();
            let scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            let scale = |t: usize| _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, _mm_loadu_si128(SHUFFLE[t].as_ptr() as *const __m128i)));
            // q4[2j + h], sc[2j + h]: chunks 2h and 2h + 1 of half `j`, as candle builds them.
            let mut q4 = [_mm512_setzero_si512(); 4];
            let mut sc = [_mm512_setzero_si512(); 4];
            for j in 0..2 {
                let ql = _mm512_loadu_si512(x.ql.as_ptr().add(j * 64) as *const __m512i);
                let qh = _mm256_loadu_si256(x.qh.as_ptr().add(j * 32) as *const __m256i);
                let qh = both(qh, qh);
                let high = |shift: __m512i| _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, shift), m2));
                q4[2 * j] = _mm512_or_si512(_mm512_and_si512(ql, m4), high(shift01));
                q4[2 * j + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4), high(shift23));
                sc[2 * j] = both(scale(4 * j), scale(4 * j + 1));
                sc[2 * j + 1] = both(scale(4 * j + 2), scale(4 * j + 3));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let y = &lhs[r * nb + b];
                let d = y.d * xd;
                let mut sumi = _mm512_setzero_si512();
                for (t, (&q4, &sc)) in q4.iter().zip(&sc).enumerate() {
                    let q8 = _mm512_loadu_si512(y.qs.as_ptr().add(64 * t) as *const __m512i);
                    let p16 = _mm512_sub_epi16(_mm512_maddubs_epi16(q4, q8), _mm512_maddubs_epi16(m32s, q8));
                    sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(sc, p16));
                }
                let high = _mm512_extracti64x4_epi64::<1>(sumi);
                let sumi = _mm256_add_epi32(_mm512_castsi512_si256(sumi), high);
                *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), *acc);
            }
        }
        for (o, &acc) in out.iter_mut().zip(acc.iter()) {
            *o = super::hsum_float_8(acc);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[test]
    fn q6k_512_bit_columns_are_bit_identical_to_the_avx2_columns() {
        if !avx512_vnni() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        let dev = Device::Cpu;
        let (n, k) = (5, 768);
        let nb = k / 256;
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q6K).unwrap();
        let data = w.data().unwrap();
        // SAFETY: candle's `Vec<BlockQ6K>` storage, as in `q6k_matmul_rows`.
        let weights: &[Q6K] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const Q6K, n * nb) };
        for m in [1usize, 3, 8] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0).collect();
            let mut lhs = vec![BlockQ8K::zeros(); m * nb];
            BlockQ8K::from_float(&x, &mut lhs);
            // SAFETY: the same layout and size.
            let lhs: &[Q8K] = unsafe { std::slice::from_raw_parts(lhs.as_ptr() as *const Q8K, m * nb) };
            for col in 0..n {
                let w = &weights[col * nb..(col + 1) * nb];
                let (mut narrow, mut wide) = (vec![0f32; m], vec![0f32; m]);
                q6k_column(w, lhs, nb, &mut Vec::new(), &mut narrow);
                // SAFETY: the CPU has the features (checked above).
                unsafe { x86::q6k_column_512(w, lhs, nb, &mut Vec::new(), &mut wide) };
                assert_eq!(narrow.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), wide.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), "m = {m}, column {col}");
            }
        }
    }

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

}

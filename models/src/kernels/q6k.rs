//! Q6_K decode rows: candle's one-row path (`vec_dot_q6k_q8k`, AVX2) for any number of rows at once, a single
//! row included (it reads the weights faster than candle's own call). It runs on candle's worker pool, as
//! `Q4Kx16` does.
//!
//! The reference decodes one row at a time, so a decode row must round as candle's one-row kernel rounds it;
//! what makes a batch cheap is that the weights are read, and each block unpacked, once for all the rows.
//! When the activations are larger than L1 (a `[8, 8960]` batch's are 82 KB), columns go [`TILE`] at a time,
//! block by block, so each row's block of activations is loaded into L1 once per tile rather than once per
//! column; otherwise one at a time, which reads the weights in order.
//! Within a column, blocks are still taken in order, each row's float accumulator gets candle's per-block
//! `fma`, and the final horizontal sum is candle's: the bits are the same for any tiling.
//!
//! Only the integer sums are formed otherwise, and they are exact whatever their order. With several rows,
//! the 512-bit body flips the activations' sign bits once ([`Prep::Flipped`]) and makes each block's weights
//! signed once for all rows, which leaves a row four `maddubs` and four `vpdpwssd` per block, with no offset to
//! load or subtract (`q6kbench`, 8 rows, alternating builds: the 1.5B `ffn_down` 1478-1564 → 1039-1054 µs,
//! the 7B one 5567-5789 → 4218-4314 µs).

use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::{SyncPtr, Q8K};

/// Columns per work item, when the activations do not fit in [`L1_BYTES`].
const TILE: usize = 8;

/// The activations' size up to which columns go one at a time: well within any x86 L1 data cache.
const L1_BYTES: usize = 24 << 10;

/// Blocks ahead of the one in use that [`tile_columns`] asks the memory for, when columns go one at a time.
const AHEAD: usize = 16;

/// The same when columns go [`TILE`] at a time. A column's next block is then used only after a block of each
/// of the other columns, so two are enough; sixteen ahead in eight columns (27 KB) were pushed out of L1 before
/// their turn (q6kbench, 8 rows, alternating builds: the 1.5B `ffn_down` 1496-1530 µs against 1713-1816, the
/// 7B one 2 % faster).
const AHEAD_TILED: usize = 2;

/// candle's `BlockQ6K`, mirrored (210 bytes).
#[repr(C)]
struct Q6K {
    ql: [u8; 128],
    qh: [u8; 64],
    scales: [i8; 16],
    d: f16,
}

const _: () = assert!(std::mem::size_of::<Q6K>() == 210);

/// Each row of `x` (`[m, k]`) times the transpose of the Q6_K matrix `w`, every row rounded exactly as
/// candle's one-row (compact, AVX2) path rounds it; `None` when this kernel does not apply.
pub fn q6k_matmul_rows(x: &Tensor, w: &QTensor) -> candle_core::Result<Option<Tensor>> {
    if w.dtype() != GgmlDType::Q6K || !matches!(w.device(), Device::Cpu) || !matches!(x.device(), Device::Cpu) {
        return Ok(None);
    }
    if !cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )) {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let (m, xk) = x.dims2()?;
    if xk != k || k % 256 != 0 || m == 0 {
        return Ok(None);
    }
    let nb = k / 256;
    let data = w.data()?;
    if data.len() != n * nb * 210 || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<Q6K>()) {
        return Ok(None);
    }
    // SAFETY: candle's `Vec<BlockQ6K>` storage, same `repr(C)` layout, alignment checked above.
    let weights: &[Q6K] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const Q6K, n * nb) };
    let x = x.contiguous()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let wide = super::avx512_vnni();
    let prep = match (m, wide) {
        (1, _) => Prep::Plain,
        (_, true) => Prep::Flipped,
        (_, false) => Prep::Offsets,
    };
    let lhs = Lhs::quantize(&xs, m, k, prep);
    let mut out_t = vec![0f32; n * m];
    // Activations that fit in L1 stay there anyway: columns one at a time then read the weights in order.
    let tile = if m * nb * std::mem::size_of::<Q8K>() <= L1_BYTES {
        1
    } else {
        TILE
    };
    let out = SyncPtr(out_t.as_mut_ptr());
    let tiles = |range: std::ops::Range<usize>| {
        let mut acc = Vec::new();
        for j in range {
            let (c0, cols) = (j * tile, tile.min(n - j * tile));
            // SAFETY: tile `j` alone writes columns `c0..c0 + cols` of `out_t`, which outlives the call.
            let out = unsafe { std::slice::from_raw_parts_mut(out.get().add(c0 * m), cols * m) };
            let w = &weights[c0 * nb..(c0 + cols) * nb];
            if wide {
                // SAFETY: the CPU has the features (checked above); `w` holds `cols` columns of `nb` blocks.
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
                unsafe {
                    x86::columns_512(w, &lhs, &mut acc, out)
                }
            } else {
                columns(w, &lhs, &mut acc, out);
            }
        }
    };
    // On candle's worker pool, where every parallel loop of a step runs (see `threads.rs`).
    super::parallel_ranges(n.div_ceil(tile), tiles);
    Ok(Some(Tensor::from_vec(out_t, (n, m), &Device::Cpu)?.t()?.contiguous()?))
}

/// What a body needs of the activations beyond candle's Q8_K blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prep {
    /// Nothing: one row, or several for a body that takes candle's offsets on the fly.
    Plain,
    /// [`Lhs::offsets`], for the 256-bit body with several rows.
    Offsets,
    /// Every quant's sign bit flipped in place (`q8 + 128`, read as unsigned), for the 512-bit body with several
    /// rows.
    Flipped,
}

/// Activations quantized to Q8_K, block-major (`[nb][rows]`), so that the rows a column's block meets lie
/// side by side.
struct Lhs {
    /// `nb * rows` blocks: entry `b * rows + r` is block `b` of row `r`. With [`Prep::Flipped`], each quant
    /// holds `q8 ^ 0x80`.
    blocks: Vec<BlockQ8K>,
    /// Per block of `blocks`, candle's `maddubs(32, q8)`: `32 · (qs[2i] + qs[2i + 1])` for each pair of
    /// quants, the offset that Q6_K's `q - 32` subtracts. It depends on the row only, so with several rows it
    /// is computed once here rather than once per column (8 rows of the 1.5B output: 24.4 → 22.7 ms); a single
    /// row computes it on the fly, where the extra bytes in L1 cost more than they save (1.5B `ffn_down`:
    /// 300 → 390 µs). Empty unless [`Prep::Offsets`].
    offsets: Vec<[i16; 128]>,
    rows: usize,
    prep: Prep,
}

impl Lhs {
    /// Quantize `rows` rows of `k` values exactly as candle's `from_float` does (it treats each 256 values on
    /// their own), then prepare them as `prep` says.
    fn quantize(xs: &[f32], rows: usize, k: usize, prep: Prep) -> Self {
        let nb = k / 256;
        let mut blocks = vec![BlockQ8K::zeros(); rows * nb];
        for (i, block) in blocks.iter_mut().enumerate() {
            let (b, r) = (i / rows, i % rows);
            super::q8k::quantize_block(&xs[r * k + 256 * b..r * k + 256 * (b + 1)], block);
        }
        if prep == Prep::Flipped {
            // SAFETY: `Q8K` mirrors `BlockQ8K` (same `repr(C)` layout and size, checked in `kernels`).
            let q8 = unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut Q8K, blocks.len()) };
            q8.iter_mut()
                .flat_map(|block| block.qs.iter_mut())
                .for_each(|q| *q ^= i8::MIN);
        }
        let mut lhs = Self {
            blocks,
            offsets: Vec::new(),
            rows,
            prep,
        };
        if prep != Prep::Offsets {
            return lhs;
        }
        lhs.offsets = (0..nb)
            .flat_map(|b| (0..rows).map(move |r| (b, r)))
            .map(|(b, r)| {
                let qs = &lhs.block(b)[r].qs;
                std::array::from_fn(|i| 32 * (i16::from(qs[2 * i]) + i16::from(qs[2 * i + 1])))
            })
            .collect();
        lhs
    }

    /// The offsets of the rows' blocks number `b` (see [`Self::offsets`]); `None` for a single row.
    fn offsets(&self, b: usize) -> Option<&[[i16; 128]]> {
        self.offsets.get(b * self.rows..(b + 1) * self.rows)
    }

    /// The rows' blocks number `b`, through our mirror of their layout.
    fn block(&self, b: usize) -> &[Q8K] {
        let blocks = &self.blocks[b * self.rows..(b + 1) * self.rows];
        // SAFETY: `Q8K` mirrors `BlockQ8K` (same `repr(C)` layout and size, checked in `kernels`).
        unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const Q8K, blocks.len()) }
    }
}

/// The columns of `w` (`out.len() / rows` of them, `nb` blocks each) against every row: `out[c * rows + r]`.
/// `body(block, rows' blocks, accumulators)` adds one block of one column to that column's row accumulators.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn tile_columns(
    w: &[Q6K],
    lhs: &Lhs,
    acc: &mut Vec<std::arch::x86_64::__m256>,
    out: &mut [f32],
    mut body: impl FnMut(&Q6K, &[Q8K], Option<&[[i16; 128]]>, &mut [std::arch::x86_64::__m256]),
) {
    let (rows, cols) = (lhs.rows, out.len() / lhs.rows);
    let nb = w.len() / cols;
    let ahead = if cols == 1 { AHEAD } else { AHEAD_TILED };
    acc.clear();
    // SAFETY: AVX at compile time.
    acc.resize(cols * rows, unsafe { std::arch::x86_64::_mm256_setzero_ps() });
    for b in 0..nb {
        let (y, offsets) = (lhs.block(b), lhs.offsets(b));
        for (c, acc) in acc.chunks_exact_mut(rows).enumerate() {
            let block = &w[c * nb + b];
            // Ask for the block `ahead` places further on in this column (in the weights' order, when columns go
            // one at a time): the hardware prefetcher alone left the 7B shape's ffn_down at 19-22 GB/s, this
            // at 24-28 (q6kbench, one row; 0, 16 and 32 alternated).
            let next = (block as *const Q6K as *const i8).wrapping_add(ahead * std::mem::size_of::<Q6K>());
            for line in 0..4 {
                // SAFETY: a prefetch does not fault, whatever the address; SSE is part of x86-64.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(next.wrapping_add(64 * line))
                };
            }
            body(block, y, offsets, acc);
        }
    }
    for (o, &acc) in out.iter_mut().zip(acc.iter()) {
        *o = super::hsum_float_8(acc);
    }
}

/// candle's `get_scale_shuffle` table for Q6_K: shuffle `i` repeats scale byte 2i eight times, then 2i + 1.
const SHUFFLE: [[u8; 16]; 8] = scale_shuffles();

/// Shuffles of `W` bytes that repeat each of `W / 8` consecutive scale bytes eight times: shuffle `i` starts at
/// scale byte `W / 8 · i`.
const fn scale_shuffles<const N: usize, const W: usize>() -> [[u8; W]; N] {
    let mut table = [[0u8; W]; N];
    let mut i = 0;
    while i < N {
        let mut j = 0;
        while j < W {
            table[i][j] = (W / 8 * i + j / 8) as u8;
            j += 1;
        }
        i += 1;
    }
    table
}

/// [`tile_columns`] with candle's `vec_dot_q6k_q8k` as the block body, each weight block unpacked once for
/// all rows.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn columns(w: &[Q6K], lhs: &Lhs, acc: &mut Vec<std::arch::x86_64::__m256>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert_ne!(lhs.prep, Prep::Flipped, "the 256-bit body reads candle's quants");
    // SAFETY: AVX2 and FMA at compile time; every load reads within one block's arrays.
    tile_columns(w, lhs, acc, out, |x, ys, offsets, acc| unsafe {
        let (m4, m2, m32s) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
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
        for (r, (y, acc)) in ys.iter().zip(acc).enumerate() {
            let d = y.d * xd;
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                let mut p = [_mm256_setzero_si256(); 4];
                for i in 0..4 {
                    let q8 = _mm256_loadu_si256(y.qs.as_ptr().add(j * 128 + i * 32) as *const __m256i);
                    // candle's `maddubs(32, q8)`.
                    let q8s = match offsets {
                        Some(o) => _mm256_loadu_si256(o[r].as_ptr().add(j * 64 + i * 16) as *const __m256i),
                        None => _mm256_maddubs_epi16(m32s, q8),
                    };
                    let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q4[j][i], q8), q8s);
                    p[i] = _mm256_madd_epi16(sc[j][i], p16);
                }
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[0], p[1]));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[2], p[3]));
            }
            *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), *acc);
        }
    })
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn columns(_: &[Q6K], _: &Lhs, _: &mut Vec<f32>, _: &mut [f32]) {
    unreachable!("q6k_matmul_rows declines without AVX2 and FMA")
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod x86 {
    use super::{Lhs, Prep, Q6K};
    use std::arch::x86_64::*;

    /// Shuffle `t` repeats scale bytes `4t`, `4t + 1`, `4t + 2` and `4t + 3` eight times each: candle's
    /// `get_scale_shuffle` `2t` then `2t + 1`, the scales of one 512-bit register's two chunks.
    const SCALES4: [[u8; 32]; 4] = super::scale_shuffles();

    /// [`super::columns`] with 512-bit registers, the same bits: each register holds two of a block's 32-value
    /// chunks, chunk `2i` in the low half and `2i + 1` in the high half, so the integer work halves, and
    /// `vpdpwssd` scales and adds in one instruction where candle has a `madd` and an `add`. Each 32-bit lane
    /// collects the same products, scaled by the same 16-bit scales, as candle's 256-bit lane of that position
    /// does over the chunks, all exactly (no sum comes near 2³¹, so the order of the additions does not
    /// matter); the two halves are added before candle's per-block `fma`.
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI, AVX2 and FMA; `w` of `out.len() / lhs.rows` columns of the same number of
    /// blocks as `lhs`.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn columns_512(w: &[Q6K], lhs: &Lhs, acc: &mut Vec<__m256>, out: &mut [f32]) {
        let (m4, m2, m32s) = (_mm512_set1_epi8(0xF), _mm512_set1_epi8(3), _mm512_set1_epi8(32));
        let m128 = _mm512_set1_epi8(-128);
        // Per 16-bit lane, the shift that brings chunk `i`'s two high bits down: 0 and 2 for chunks 0 and 1,
        // 4 and 6 for chunks 2 and 3.
        let shift01 = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
        let shift23 = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(6));
        let both = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        // A row's block: the two chains' exact sums, the register's halves added, then candle's `fma`.
        let add_block = |acc: &mut __m256, d: f32, even: __m512i, odd: __m512i| {
            let sumi = _mm512_add_epi32(even, odd);
            let sumi = _mm256_add_epi32(_mm512_castsi512_si256(sumi), _mm512_extracti64x4_epi64::<1>(sumi));
            *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), *acc);
        };
        let flipped = lhs.prep == Prep::Flipped;
        super::tile_columns(w, lhs, acc, out, |x, ys, _, acc| {
            let xd = x.d.to_f32();
            let scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            // Both 128-bit lanes hold the sixteen scales, so one in-lane shuffle picks any four of them.
            let scales = _mm256_broadcastsi128_si256(scales);
            let scale4 = |t: usize| {
                _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(
                    scales,
                    _mm256_loadu_si256(SCALES4[t].as_ptr() as *const __m256i),
                ))
            };
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
                sc[2 * j] = scale4(2 * j);
                sc[2 * j + 1] = scale4(2 * j + 1);
            }
            if flipped {
                // Several rows: the weights, made signed, go against the activations made unsigned (`q8 + 128`,
                // a sign-bit flip), so `maddubs` gives `Σ q8·(q - 32) + 128·Σ(q - 32)` per pair with no offset of
                // the row's to load and subtract. The second term depends on the column only: its scaled sum,
                // `c`, is taken once per block for all rows and starts each row's chain negated. Every lane's
                // integer is the same as candle's (no 16-bit pair leaves -16320..15810, nothing saturates).
                let w = q4.map(|q| _mm512_sub_epi8(q, m32s));
                let c16 = |t: usize| _mm512_maddubs_epi16(m128, w[t]);
                let c = _mm512_dpwssd_epi32(_mm512_madd_epi16(sc[0], c16(0)), sc[2], c16(2));
                let c = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(c, sc[1], c16(1)), sc[3], c16(3));
                let minus_c = _mm512_sub_epi32(_mm512_setzero_si512(), c);
                for (y, acc) in ys.iter().zip(acc) {
                    let d = y.d * xd;
                    let p16 = |t: usize| {
                        _mm512_maddubs_epi16(_mm512_loadu_si512(y.qs.as_ptr().add(64 * t) as *const __m512i), w[t])
                    };
                    let even = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(minus_c, sc[0], p16(0)), sc[2], p16(2));
                    let odd = _mm512_dpwssd_epi32(_mm512_madd_epi16(sc[1], p16(1)), sc[3], p16(3));
                    add_block(acc, d, even, odd);
                }
                return;
            }
            // One row: candle's sums, its `maddubs(32, q8)` offset taken on the fly.
            for (y, acc) in ys.iter().zip(acc) {
                let d = y.d * xd;
                let p16 = |t: usize| {
                    let q8 = _mm512_loadu_si512(y.qs.as_ptr().add(64 * t) as *const __m512i);
                    _mm512_sub_epi16(_mm512_maddubs_epi16(q4[t], q8), _mm512_maddubs_epi16(m32s, q8))
                };
                // Two chains of two, so that the latency of one row's sum stays short.
                let even = _mm512_dpwssd_epi32(_mm512_madd_epi16(sc[0], p16(0)), sc[2], p16(2));
                let odd = _mm512_dpwssd_epi32(_mm512_madd_epi16(sc[1], p16(1)), sc[3], p16(3));
                add_block(acc, d, even, odd);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    fn q6k_case(n: usize, k: usize, m: usize) -> (std::sync::Arc<QTensor>, Tensor) {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let w = std::sync::Arc::new(
            QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q6K).unwrap(),
        );
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0)
            .collect();
        (w, Tensor::from_vec(x, (m, k), &dev).unwrap())
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|f| f.to_bits())
            .collect()
    }

    /// Every row, in batches of several sizes, against candle's one-row call, on whichever body this CPU runs;
    /// the last case's activations exceed `L1_BYTES`, so its columns go in tiles, the last one short.
    #[test]
    fn q6k_rows_are_bit_identical_to_candles_one_row_path() {
        for (n, k, m) in [(37, 512, 5), (16, 768, 1), (19, 256, 8), (8, 1024, 9), (19, 3072, 9)] {
            assert_eq!(m * k / 256 * std::mem::size_of::<Q8K>() > L1_BYTES, k == 3072);
            let (w, x) = q6k_case(n, k, m);
            let qm = candle_core::quantized::QMatMul::from_arc(w.clone()).unwrap();
            let ours = q6k_matmul_rows(&x, &w).unwrap().unwrap();
            for r in 0..m {
                let theirs = qm.forward(&x.narrow(0, r, 1).unwrap()).unwrap();
                assert_eq!(
                    bits(&ours.narrow(0, r, 1).unwrap()),
                    bits(&theirs),
                    "[{n}, {k}] × {m} rows, row {r}"
                );
            }
        }
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[test]
    fn q6k_512_bit_columns_are_bit_identical_to_the_avx2_columns() {
        if !crate::kernels::avx512_vnni() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        let (n, k) = (13, 768);
        let nb = k / 256;
        let (w, _) = q6k_case(n, k, 1);
        let data = w.data().unwrap();
        // SAFETY: candle's `Vec<BlockQ6K>` storage, as in `q6k_matmul_rows`.
        let weights: &[Q6K] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const Q6K, n * nb) };
        for m in [1usize, 3, 8] {
            let (_, x) = q6k_case(n, k, m);
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (narrow_prep, wide_prep) = if m == 1 {
                (Prep::Plain, Prep::Plain)
            } else {
                (Prep::Offsets, Prep::Flipped)
            };
            let (mut narrow, mut wide) = (vec![0f32; n * m], vec![0f32; n * m]);
            columns(
                weights,
                &Lhs::quantize(&xs, m, k, narrow_prep),
                &mut Vec::new(),
                &mut narrow,
            );
            // SAFETY: the CPU has the features (checked above).
            unsafe {
                x86::columns_512(
                    weights,
                    &Lhs::quantize(&xs, m, k, wide_prep),
                    &mut Vec::new(),
                    &mut wide,
                )
            };
            assert_eq!(
                narrow.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                wide.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                "m = {m}"
            );
        }
    }
}

//! [`Q4_1x8`]: a Q4_1 matrix repacked at load, eight output columns interleaved block by block, with its
//! activations quantized to Q8_1 by a vector copy of candle's quantizer.

use candle_core::quantized::k_quants::{BlockQ8_1, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::{activation_rows, repack_source, Out};

/// candle's `BlockQ8_1`, mirrored (36 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct Q8_1 {
    d: f16,
    s: f16,
    qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<Q8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// A Q4_1 weight matrix (`[n, k]`, one row per output column) repacked for the CPU: eight output columns
/// interleaved block by block (llama.cpp's "8x8 interleave"), built once at load by [`Q4_1x8::new`] and used
/// instead of the `QTensor` by [`Q4_1x8::matmul`].
///
/// Columns `8g..8g + 8` form group `g`; entry `g * nb + b` of `blocks` holds block `b` (values
/// `32b..32b + 32`) of those eight columns, padded with zero columns past `n`. It takes the same 20 bytes per
/// 32 weights as the `QTensor`.
pub struct Q4_1x8 {
    /// Output columns (rows of the weight matrix).
    n: usize,
    /// Input features, a multiple of 32.
    k: usize,
    /// `n.div_ceil(8) * (k / 32)` interleaved blocks, group-major.
    blocks: Vec<Block8>,
}

/// One 32-value block of eight columns: their scales and minimums as f16 (eight at once convert to one f32
/// vector), and their quants arranged so that 32 consecutive bytes hold four consecutive quants of each column,
/// column `c` in 32-bit lane `c`. Byte `32i + 4c + j` is byte `4i + j` of column `c`'s Q4_1 `qs`: its low
/// nibble is the column's value `4i + j`, its high nibble value `16 + 4i + j`.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Block8 {
    d: [f16; 8],
    m: [f16; 8],
    qs: [u8; 128],
}

const _: () = assert!(std::mem::size_of::<Block8>() == 160);

impl Block8 {
    const ZERO: Self = Self {
        d: [f16::ZERO; 8],
        m: [f16::ZERO; 8],
        qs: [0; 128],
    };
}

impl std::fmt::Debug for Q4_1x8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q4_1x8")
            .field("n", &self.n)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

impl Q4_1x8 {
    /// Repack a Q4_1 `QTensor` of shape `[n, k]`; an error for any other type or rank.
    pub fn new(w: &QTensor) -> candle_core::Result<Self> {
        let (n, k, data) = repack_source(w, GgmlDType::Q4_1, 20, "Q4_1x8::new")?;
        let nb = k / 32;
        let mut blocks = vec![Block8::ZERO; n.div_ceil(8) * nb];
        // candle's `BlockQ4_1` is `repr(C)`: d (f16), m (f16), qs ([u8; 16]); 20 bytes, little-endian.
        for (col, column) in data.chunks_exact(nb * 20).enumerate() {
            let (g, c) = (col / 8, col % 8);
            for (b, src) in column.chunks_exact(20).enumerate() {
                let dst = &mut blocks[g * nb + b];
                dst.d[c] = f16::from_le_bytes([src[0], src[1]]);
                dst.m[c] = f16::from_le_bytes([src[2], src[3]]);
                for i in 0..4 {
                    dst.qs[32 * i + 4 * c..32 * i + 4 * c + 4].copy_from_slice(&src[4 + 4 * i..8 + 4 * i]);
                }
            }
        }
        Ok(Self { n, k, blocks })
    }

    /// The weight's shape, `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `x` (`[m, k]`, f32, CPU) times the transpose of the weight → `[m, n]`.
    ///
    /// Bit-identical to candle's `QMatMul::forward`: the activations are quantized to Q8_1 by candle's own
    /// `BlockQ8_1::from_float`, each block's integer sum is exact, and the floats are combined in candle's
    /// order. Each row's arithmetic is the same whatever the other rows and their number.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = Self::matmul_many(&[self], x)?;
        Ok(y.remove(0))
    }

    /// [`Self::matmul`] of the same `x` by each of `ws` (which must share `k`), the activations quantized
    /// once and all the products in one parallel loop: a layer's q/k/v, or gate and up, take one pass.
    pub fn matmul_many(ws: &[&Self], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let Some(k) = super::shared_k(ws.iter().map(|w| w.k), "Q4_1x8::matmul_many")? else {
            return Ok(Vec::new());
        };
        let nb = k / 32;
        let Some((m, xs)) = activation_rows(x, ws[0].n, k, "Q4_1x8::matmul")? else {
            return ws
                .iter()
                .map(|w| Tensor::zeros((0, w.n), candle_core::DType::F32, &Device::Cpu))
                .collect();
        };
        let lhs = Lhs::quantize(&xs, k);
        // Work items: per weight, pairs of groups of eight columns with the 512-bit kernel (a last odd group
        // alone), single groups otherwise; `starts[i]` is weight `i`'s first item.
        let wide = super::avx512_vnni();
        let per_item = if wide { 2 } else { 1 };
        let mut starts = Vec::with_capacity(ws.len() + 1);
        starts.push(0);
        for w in ws {
            starts.push(starts.last().copied().unwrap_or(0) + w.n.div_ceil(8).div_ceil(per_item));
        }
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(m * w.n)).collect();
        let targets: Vec<Out> = outs
            .iter_mut()
            .zip(ws)
            .map(|(y, w)| Out {
                ptr: y.as_mut_ptr(),
                n: w.n,
            })
            .collect();
        super::parallel_ranges(starts[ws.len()], |items| {
            // Row `r`'s lanes of the item's first group at `r`, of its second at `m + r`.
            let mut lanes = vec![[0f32; 8]; 2 * m];
            for item in items {
                let i = starts.partition_point(|&s| s <= item) - 1;
                let (w, unit) = (ws[i], item - starts[i]);
                let groups = &w.blocks[per_item * unit * nb..(per_item * (unit + 1) * nb).min(w.blocks.len())];
                let col0 = 8 * per_item * unit;
                if wide && groups.len() == 2 * nb {
                    // SAFETY: the CPU has the features (checked by `avx512_vnni`); two groups of `nb` blocks,
                    // and the lanes of all `m` rows of both.
                    unsafe { pair(groups, &lhs, &mut lanes) };
                } else {
                    group(groups, &lhs, &mut lanes[..m]);
                }
                for (g, lanes) in lanes.chunks_exact(m).take(groups.len() / nb).enumerate() {
                    // SAFETY: `outs[i]` has `m` rows of `w.n`; this item alone covers columns
                    // `col0..col0 + 8 * per_item` of weight `i`.
                    unsafe { targets[i].put_lanes(lanes, col0 + 8 * g) };
                }
            }
        });
        outs.into_iter()
            .zip(ws)
            .map(|(mut y, w)| {
                // SAFETY: every item has run (`parallel_ranges` returns when all are done; a panic propagates
                // from it), and together they write every column of every row.
                unsafe { y.set_len(m * w.n) };
                Tensor::from_vec(y, (m, w.n), &Device::Cpu)
            })
            .collect()
    }
}

/// Blocks per work item of the activations' quantization: a decode step's 8 rows of 576 values are two.
const QUANTIZE_CHUNK: usize = 72;

/// Activations quantized to Q8_1, with their scales widened to f32 once.
struct Lhs {
    /// `m * nb` blocks, row-major.
    blocks: Vec<Wide>,
    /// Blocks per row.
    nb: usize,
}

/// One Q8_1 block with its `d` and `s` (`d` times the sum of its quants) as f32.
#[derive(Clone, Copy)]
struct Wide {
    d: f32,
    s: f32,
    q: Q8_1,
}

impl Wide {
    fn new(q: Q8_1) -> Self {
        Self {
            d: q.d.to_f32(),
            s: q.s.to_f32(),
            q,
        }
    }
}

impl Lhs {
    /// Quantize rows of `k` values (`xs`: `[m, k]`, row-major) exactly as candle does, row by row.
    fn quantize(xs: &[f32], k: usize) -> Self {
        let (nb, n) = (k / 32, xs.len() / 32);
        let mut blocks: Vec<Wide> = Vec::with_capacity(n);
        if cfg!(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )) {
            // Spread over the pool: the matmul's threads are idle until the activations are ready.
            super::for_each_chunk(&mut blocks.spare_capacity_mut()[..n], QUANTIZE_CHUNK, |i, out| {
                for (x, y) in xs[32 * QUANTIZE_CHUNK * i..].chunks_exact(32).zip(out) {
                    let mut q = Q8_1 {
                        d: f16::ZERO,
                        s: f16::ZERO,
                        qs: [0; 32],
                    };
                    quantize_q8_1(x.try_into().expect("32 values"), &mut q);
                    y.write(Wide::new(q));
                }
            });
            // SAFETY: the loop above wrote all `n` blocks (`xs` has `32 n` values).
            unsafe { blocks.set_len(n) };
        } else {
            let mut row_blocks = vec![BlockQ8_1::zeros(); nb];
            for row in xs.chunks_exact(k) {
                BlockQ8_1::from_float(row, &mut row_blocks);
                // SAFETY: candle's `BlockQ8_1` and our `Q8_1` have the same `repr(C)` layout and size (checked at
                // compile time above).
                blocks.extend(
                    row_blocks
                        .iter()
                        .map(|b| Wide::new(unsafe { std::mem::transmute_copy::<BlockQ8_1, Q8_1>(b) })),
                );
            }
        }
        Self { blocks, nb }
    }
}

/// candle's `BlockQ8_1::from_float` for one block, bit for bit, in AVX2: `d = amax / 127`, each quant
/// `round(x · (1 / d))` with ties away from zero (as `f32::round`; a NaN product gives 0, as `as i8` does),
/// `s = f16(Σ q) · d` in f16 arithmetic.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[inline(always)]
fn quantize_q8_1(xs: &[f32; 32], y: &mut Q8_1) {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 at compile time (cfg above); the loads read the 32 values of `xs`, the store writes the 32
    // bytes of `y.qs`.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xs.as_ptr().add(8 * i)));
        // `max_ps(a, b)` returns `b` when `a` is NaN, as `f32::max` skips a NaN.
        let mut m = _mm256_setzero_ps();
        for v in v {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        y.d = f16::from_f32(d);
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            let p = _mm256_mul_ps(v[i], id);
            let t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            // |p - trunc(p)| is exact; at 0.5 or more, step one away from zero.
            let away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(p, t)), half, _CMP_GE_OQ);
            let r = _mm256_add_ps(t, _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(p, sign), one)));
            let r = _mm256_andnot_ps(_mm256_cmp_ps(p, p, _CMP_UNORD_Q), r);
            _mm256_cvttps_epi32(r)
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let sum = _mm_add_epi32(sum, _mm_unpackhi_epi64(sum, sum));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32(sum, 1)));
        // Values are within ±127, so the saturating packs are exact; the permute undoes their lane interleave.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(y.qs.as_mut_ptr() as *mut __m256i, bytes);
        y.s = f16::from_f32(sum as f32) * y.d;
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
fn quantize_q8_1(_: &[f32; 32], _: &mut Q8_1) {
    unreachable!("Lhs::quantize takes candle's path without AVX2")
}

/// Rows handled together per pass over a group's blocks: each block is unpacked once per pass.
const ROW_TILE: usize = 4;

/// One group of eight columns (`w`: its `nb` blocks) against every row: `out[r]` gets row `r`'s eight lanes.
fn group(w: &[Block8], lhs: &Lhs, out: &mut [[f32; 8]]) {
    for (t, out) in out.chunks_mut(ROW_TILE).enumerate() {
        let r0 = t * ROW_TILE;
        match out.len() {
            4 => tile::<4>(w, lhs, r0, out),
            3 => tile::<3>(w, lhs, r0, out),
            2 => tile::<2>(w, lhs, r0, out),
            _ => tile::<1>(w, lhs, r0, out),
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[inline(always)]
fn tile<const R: usize>(w: &[Block8], lhs: &Lhs, r0: usize, out: &mut [[f32; 8]]) {
    tile_avx2::<R>(w, lhs, r0, out)
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
#[inline(always)]
fn tile<const R: usize>(w: &[Block8], lhs: &Lhs, r0: usize, out: &mut [[f32; 8]]) {
    tile_portable::<R>(w, lhs, r0, out)
}

/// Rows `r0..r0 + R` against one group (into `out[..R]`), the eight columns in the eight lanes of a vector.
/// Per block, eight `maddubs` of the unpacked quants with four broadcast activations each give every column's
/// partial sums in its own lane; they add up in i16 without overflow (each `maddubs` lane is at most
/// 2·15·128 = 3840 in magnitude, eight of them 30720 < 32767) and one `madd` with ones yields each column's
/// exact block sum. The floats then follow candle's `vec_dot_unopt` per lane, unfused.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[inline(always)]
fn tile_avx2<const R: usize>(w: &[Block8], lhs: &Lhs, r0: usize, out: &mut [[f32; 8]]) {
    use std::arch::x86_64::*;
    let nb = lhs.nb;
    // SAFETY: AVX2, FMA and F16C at compile time (cfg above); each load reads within one `Block8` (16 bytes
    // of `d` or `m`, 32 of `qs`) or one Q8_1 block's 32 quants (4 bytes at offsets 0..28), each store writes
    // one `[f32; 8]`.
    unsafe {
        let (low4, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
        let mut sumf = [_mm256_setzero_ps(); R];
        for (b, blk) in w.iter().enumerate() {
            let dx = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr() as *const __m128i));
            let mx = _mm256_cvtph_ps(_mm_loadu_si128(blk.m.as_ptr() as *const __m128i));
            // q[2i]: values 4i..4i + 4 of each column; q[2i + 1]: values 16 + 4i..16 + 4i + 4.
            let q: [__m256i; 8] = std::array::from_fn(|j| {
                let packed = _mm256_loadu_si256(blk.qs.as_ptr().add(32 * (j / 2)) as *const __m256i);
                if j % 2 == 0 {
                    _mm256_and_si256(packed, low4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4)
                }
            });
            for r in 0..R {
                let i = (r0 + r) * nb + b;
                let y = lhs.blocks[i].q.qs.as_ptr() as *const i32;
                let act = |j: usize| _mm256_set1_epi32(y.add(j / 2 + 4 * (j % 2)).read_unaligned());
                let mut s = _mm256_maddubs_epi16(q[0], act(0));
                for (j, &q) in q.iter().enumerate().skip(1) {
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(q, act(j)));
                }
                // candle's `sumf += sumi·dx·dy + mx·sy`, lane by lane, unfused.
                let sumi = _mm256_cvtepi32_ps(_mm256_madd_epi16(s, ones));
                let scaled = _mm256_mul_ps(_mm256_mul_ps(sumi, dx), _mm256_set1_ps(lhs.blocks[i].d));
                let v = _mm256_add_ps(scaled, _mm256_mul_ps(mx, _mm256_set1_ps(lhs.blocks[i].s)));
                sumf[r] = _mm256_add_ps(sumf[r], v);
            }
        }
        for (out, sumf) in out[..R].iter_mut().zip(sumf) {
            _mm256_storeu_ps(out.as_mut_ptr(), sumf);
        }
    }
}

/// Rows per pass of [`x86::pair_avx512`] over two groups' blocks.
const PAIR_ROWS: usize = 8;

/// Two groups of eight columns (`w`: group `a`'s `nb` blocks, then group `b`'s) against every row: `out[r]`
/// gets row `r`'s lanes of group `a`, `out[m + r]` those of group `b`.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C ([`super::avx512_vnni`]).
unsafe fn pair(w: &[Block8], lhs: &Lhs, out: &mut [[f32; 8]]) {
    let m = out.len() / 2;
    let (a, b) = w.split_at(w.len() / 2);
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(PAIR_ROWS);
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))]
        // SAFETY: forwarded from the caller; rows `r0..r0 + rows` are within `lhs` and `out`.
        unsafe {
            match rows {
                8 => x86::pair_avx512::<8>(a, b, lhs, r0, out),
                7 => x86::pair_avx512::<7>(a, b, lhs, r0, out),
                6 => x86::pair_avx512::<6>(a, b, lhs, r0, out),
                5 => x86::pair_avx512::<5>(a, b, lhs, r0, out),
                4 => x86::pair_avx512::<4>(a, b, lhs, r0, out),
                3 => x86::pair_avx512::<3>(a, b, lhs, r0, out),
                2 => x86::pair_avx512::<2>(a, b, lhs, r0, out),
                _ => x86::pair_avx512::<1>(a, b, lhs, r0, out),
            }
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )))]
        unreachable!("the 512-bit kernels need a build with AVX2, FMA and F16C");
        r0 += rows;
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod x86 {
    use super::{Block8, Lhs};
    use std::arch::x86_64::*;

    /// Rows `r0..r0 + R` against two groups (`a`, `b`: their blocks), group `a`'s eight columns in the low
    /// half of each 512-bit register and group `b`'s in the high half. `vpdpbusd` adds four products of an
    /// unsigned nibble and a signed activation byte into each 32-bit lane, exactly, so each lane ends a block
    /// with the same integer sum as [`super::tile_avx2`]'s, and the floats follow the same unfused sequence:
    /// the same bits.
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI, AVX2, FMA and F16C; `a` and `b` of `lhs.nb` blocks each; rows `r0..r0 + R`
    /// within `lhs`; `out` holds `2m` lanes for `m >= r0 + R` rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn pair_avx512<const R: usize>(
        a: &[Block8],
        b: &[Block8],
        lhs: &Lhs,
        r0: usize,
        out: &mut [[f32; 8]],
    ) {
        let (nb, m) = (lhs.nb, out.len() / 2);
        let low4 = _mm512_set1_epi8(0x0F);
        let both = |x: *const u8, y: *const u8| {
            // SAFETY: each pointer is to 32 bytes of a `Block8`'s `qs`.
            unsafe {
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_load_si256(x as *const __m256i)),
                    _mm256_load_si256(y as *const __m256i),
                )
            }
        };
        let halves = |x: &[half::f16; 8], y: &[half::f16; 8]| {
            // SAFETY: each pointer is to the eight f16 of a `Block8` field.
            unsafe {
                _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
                    _mm256_castsi128_si256(_mm_loadu_si128(x.as_ptr() as *const __m128i)),
                    _mm_loadu_si128(y.as_ptr() as *const __m128i),
                ))
            }
        };
        let mut sumf = [_mm512_setzero_ps(); R];
        for (i, (ba, bb)) in a.iter().zip(b).enumerate() {
            let (dx, mx) = (halves(&ba.d, &bb.d), halves(&ba.m, &bb.m));
            // q[2j]: values 4j..4j + 4 of each column; q[2j + 1]: values 16 + 4j..16 + 4j + 4.
            let q: [__m512i; 8] = std::array::from_fn(|j| {
                let packed = both(ba.qs.as_ptr().add(32 * (j / 2)), bb.qs.as_ptr().add(32 * (j / 2)));
                if j % 2 == 0 {
                    _mm512_and_si512(packed, low4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low4)
                }
            });
            for (r, sumf) in sumf.iter_mut().enumerate() {
                let idx = (r0 + r) * nb + i;
                let y = lhs.blocks[idx].q.qs.as_ptr() as *const i32;
                let act = |j: usize| _mm512_set1_epi32(y.add(j / 2 + 4 * (j % 2)).read_unaligned());
                // Two chains, so that each `vpdpbusd` waits on one two steps back.
                let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for j in (0..8).step_by(2) {
                    s0 = _mm512_dpbusd_epi32(s0, q[j], act(j));
                    s1 = _mm512_dpbusd_epi32(s1, q[j + 1], act(j + 1));
                }
                // candle's `sumf += sumi·dx·dy + mx·sy`, lane by lane, unfused.
                let sumi = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                let scaled = _mm512_mul_ps(_mm512_mul_ps(sumi, dx), _mm512_set1_ps(lhs.blocks[idx].d));
                let v = _mm512_add_ps(scaled, _mm512_mul_ps(mx, _mm512_set1_ps(lhs.blocks[idx].s)));
                *sumf = _mm512_add_ps(*sumf, v);
            }
        }
        for (r, sumf) in sumf.iter().enumerate() {
            _mm256_storeu_ps(out[r0 + r].as_mut_ptr(), _mm512_castps512_ps256(*sumf));
            _mm256_storeu_ps(
                out[m + r0 + r].as_mut_ptr(),
                _mm256_castsi256_ps(_mm512_extracti64x4_epi64::<1>(_mm512_castps_si512(*sumf))),
            );
        }
    }
}

/// [`tile_avx2`] without SIMD, bit for bit: candle's `vec_dot_unopt` for each of the eight columns.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ),
    allow(dead_code)
)]
fn tile_portable<const R: usize>(w: &[Block8], lhs: &Lhs, r0: usize, out: &mut [[f32; 8]]) {
    let nb = lhs.nb;
    for (r, out) in out[..R].iter_mut().enumerate() {
        let mut sumf = [0f32; 8];
        for (b, blk) in w.iter().enumerate() {
            let i = (r0 + r) * nb + b;
            let y = &lhs.blocks[i].q.qs;
            for c in 0..8 {
                let mut sumi = 0i32;
                for i4 in 0..4 {
                    for j in 0..4 {
                        let q = blk.qs[32 * i4 + 4 * c + j];
                        sumi += (q & 0x0F) as i32 * y[4 * i4 + j] as i32 + (q >> 4) as i32 * y[16 + 4 * i4 + j] as i32;
                    }
                }
                sumf[c] += sumi as f32 * blk.d[c].to_f32() * lhs.blocks[i].d + blk.m[c].to_f32() * lhs.blocks[i].s;
            }
        }
        *out = sumf;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    /// A Q4_1 matrix of `n` columns and `k` inputs, and `m` activation rows, from fixed patterns.
    fn q4_1_case(n: usize, k: usize, m: usize) -> (QTensor, Tensor) {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q4_1).unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0)
            .collect();
        (w, Tensor::from_vec(x, (m, k), &dev).unwrap())
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn q4_1_matmul_is_bit_identical_to_candle() {
        // 53 columns: six full groups of eight and a tail of five. Ten blocks per column (candle's Q4_1 dot
        // product asserts an even count in debug builds).
        let (n, k) = (53, 320);
        for m in [1usize, 3, 8, 33] {
            let (w, x) = q4_1_case(n, k, m);
            let w = std::sync::Arc::new(w);
            let ours = to_vec(&Q4_1x8::new(&w).unwrap().matmul(&x).unwrap());
            let theirs = to_vec(
                &candle_core::quantized::QMatMul::from_arc(w)
                    .unwrap()
                    .forward(&x)
                    .unwrap(),
            );
            assert!(
                ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()),
                "m = {m}"
            );
        }
    }

    #[test]
    fn q4_1_matmul_rows_round_alike_in_any_batch() {
        let (n, k, m) = (53, 320, 33);
        let (w, x) = q4_1_case(n, k, m);
        let w = Q4_1x8::new(&w).unwrap();
        let all = to_vec(&w.matmul(&x).unwrap());
        // The same rows in reverse order: each lands at another place in the row tiles.
        let reversed = Tensor::from_vec((0..m as u32).rev().collect::<Vec<_>>(), m, &Device::Cpu).unwrap();
        let rev = to_vec(&w.matmul(&x.index_select(&reversed, 0).unwrap()).unwrap());
        for r in 0..m {
            let alone = to_vec(&w.matmul(&x.narrow(0, r, 1).unwrap()).unwrap());
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&all[r * n..(r + 1) * n]), bits(&alone), "row {r} of {m}");
            assert_eq!(
                bits(&rev[(m - 1 - r) * n..(m - r) * n]),
                bits(&alone),
                "row {r}, reversed"
            );
        }
    }

    #[test]
    fn q8_1_quantization_is_candles() {
        // Ties (x · id lands on k + 0.5), zeros, a zero block, signs, a NaN and an infinity, large and tiny values.
        let mut xs: Vec<f32> = (0..32 * 64)
            .map(|i| ((i * 104729 % 9973) as f32 / 9973.0 - 0.5) * 10f32.powi((i % 7) - 3))
            .collect();
        for (i, x) in xs[..32].iter_mut().enumerate() {
            // amax 127 makes `id` exactly 1, so every other value is a tie.
            *x = if i == 31 { 127.0 } else { i as f32 - 15.5 };
        }
        xs[64..96].fill(0.0);
        xs[100] = f32::NAN;
        xs[140] = f32::INFINITY;
        xs[170] = -0.0;
        let mut theirs = vec![BlockQ8_1::zeros(); xs.len() / 32];
        BlockQ8_1::from_float(&xs, &mut theirs);
        let ours = Lhs::quantize(&xs, 64);
        // SAFETY: `BlockQ8_1` and `Q8_1` are 36-byte `repr(C)` structs of bytes and f16s.
        let bytes =
            |b: &[BlockQ8_1]| unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, b.len() * 36).to_vec() };
        let ours_q: Vec<Q8_1> = ours.blocks.iter().map(|w| w.q).collect();
        // SAFETY: as above.
        let ours_bytes =
            unsafe { std::slice::from_raw_parts(ours_q.as_ptr() as *const u8, ours_q.len() * 36).to_vec() };
        for (i, (a, b)) in ours_bytes.chunks(36).zip(bytes(&theirs).chunks(36)).enumerate() {
            assert_eq!(a, b, "block {i}");
            let w = &ours.blocks[i];
            assert_eq!(
                (w.d.to_bits(), w.s.to_bits()),
                (w.q.d.to_f32().to_bits(), w.q.s.to_f32().to_bits()),
                "block {i}"
            );
        }
    }

    /// The 512-bit path, where the CPU has it, computes the AVX2 path's bits for any row count and for both
    /// groups of a pair.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    #[test]
    fn q4_1_512_bit_pairs_are_bit_identical_to_the_avx2_groups() {
        if !crate::kernels::avx512_vnni() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        let (n, k) = (48, 320);
        let nb = k / 32;
        for m in [1usize, 2, 5, 8, 9, 17] {
            let (w, x) = q4_1_case(n, k, m);
            let w = Q4_1x8::new(&w).unwrap();
            let lhs = Lhs::quantize(&to_vec(&x), k);
            for g in [0, 2, 4] {
                let blocks = &w.blocks[g * nb..(g + 2) * nb];
                let mut paired = vec![[0f32; 8]; 2 * m];
                // SAFETY: the CPU has the features (checked above); two groups and 2m lanes.
                unsafe { pair(blocks, &lhs, &mut paired) };
                let mut single = vec![[0f32; 8]; 2 * m];
                group(&blocks[..nb], &lhs, &mut single[..m]);
                group(&blocks[nb..], &lhs, &mut single[m..]);
                assert_eq!(
                    paired.iter().flatten().map(|f| f.to_bits()).collect::<Vec<_>>(),
                    single.iter().flatten().map(|f| f.to_bits()).collect::<Vec<_>>(),
                    "m = {m}, groups {g} and {}",
                    g + 1
                );
            }
        }
    }

    /// The portable path is what runs without AVX2; it must round exactly as the vector path.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    #[test]
    fn q4_1_portable_path_is_bit_identical_to_the_vector_path() {
        let (n, k, m) = (53, 320, 6);
        let (w, x) = q4_1_case(n, k, m);
        let w = Q4_1x8::new(&w).unwrap();
        let lhs = Lhs::quantize(&to_vec(&x), k);
        let nb = k / 32;
        for g in 0..n.div_ceil(8) {
            let blocks = &w.blocks[g * nb..(g + 1) * nb];
            let (mut simd, mut portable) = ([[0f32; 8]; 4], [[0f32; 8]; 4]);
            for r0 in [0, 2] {
                tile_avx2::<4>(blocks, &lhs, r0, &mut simd);
                tile_portable::<4>(blocks, &lhs, r0, &mut portable);
                assert_eq!(
                    simd.map(|l| l.map(f32::to_bits)),
                    portable.map(|l| l.map(f32::to_bits)),
                    "group {g}, rows {r0}.."
                );
            }
        }
    }
}

//! [`Q8_0x8`]: a Q8_0 matrix repacked at load, eight output columns per block group, for the shapes where
//! candle runs its row-by-row AVX dot product (`vec_dot_q8_0_q8_0`), such as SmolLM2's tied 49152 × 576 output
//! projection.
//!
//! candle's dot product keeps eight float lanes per column, one `fma` per block, `acc += (dx·dy) · sumi`,
//! where lane `l` of `sumi` is the exact integer sum of quants `4l..4l + 4`, and adds the lanes up at the end.
//! That shape cannot change without changing the result's last bits, so the gain comes from around it: the
//! eight columns' f16 scales convert with one instruction and multiply with `dy` as one vector, each column's
//! scale is then one lane permute away, and every quant load is 32-byte aligned.

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

/// A Q8_0 weight matrix (`[n, k]`, one row per output column) repacked for the CPU, built once at load by
/// [`Q8_0x8::new`] and used instead of the `QTensor` by [`Q8_0x8::matmul`].
///
/// Columns `8g..8g + 8` form group `g`; entry `g * nb + b` of `d` and `qs` holds block `b` (values
/// `32b..32b + 32`) of those eight columns, padded with zero columns past `n`. It takes the same 34 bytes per
/// 32 weights as the `QTensor`.
pub struct Q8_0x8 {
    /// Output columns (rows of the weight matrix).
    n: usize,
    /// Input features, a multiple of 32.
    k: usize,
    /// The eight columns' block scales.
    d: Vec<[f16; 8]>,
    /// The eight columns' 32 quants each, column after column.
    qs: Vec<Quants8>,
}

/// candle's `BlockQ8_0` (its fields are private), mirrored: 34 bytes.
#[repr(C)]
struct Q8_0 {
    d: f16,
    qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<Q8_0>() == 34 && std::mem::size_of::<BlockQ8_0>() == 34);

/// Block `b` of eight columns: column `c`'s 32 quants at bytes `32c..32c + 32`.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Quants8([[i8; 32]; 8]);

impl std::fmt::Debug for Q8_0x8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q8_0x8")
            .field("n", &self.n)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

impl Q8_0x8 {
    /// Whether candle's own matmul for a Q8_0 `[n, k]` matrix is the row-by-row dot product this type
    /// reproduces: candle repacks Q8_0 when `k` is a multiple of 256 and `n` of 16 on CPUs with VNNI, and
    /// rounds differently there, so those shapes are left to it (on CPUs without VNNI that costs speed only).
    pub fn takes(w: &QTensor) -> bool {
        match w.shape().dims2() {
            Ok((n, k)) => {
                w.dtype() == GgmlDType::Q8_0
                    && w.device().is_cpu()
                    && k > 0
                    && k % 32 == 0
                    && !(k % 256 == 0 && n % 16 == 0)
                    && KERNEL
            }
            Err(_) => false,
        }
    }

    /// Repack a Q8_0 `QTensor` of shape `[n, k]`; an error for any other type or rank.
    pub fn new(w: &QTensor) -> candle_core::Result<Self> {
        let (n, k, data) = super::repack_source(w, GgmlDType::Q8_0, 34, "Q8_0x8::new")?;
        let nb = k / 32;
        let groups = n.div_ceil(8);
        let mut d = vec![[f16::ZERO; 8]; groups * nb];
        let mut qs = vec![Quants8([[0; 32]; 8]); groups * nb];
        // candle's `BlockQ8_0` is `repr(C)`: d (f16), qs ([i8; 32]); 34 bytes, little-endian.
        for (col, column) in data.chunks_exact(nb * 34).enumerate() {
            let (g, c) = (col / 8, col % 8);
            for (b, src) in column.chunks_exact(34).enumerate() {
                d[g * nb + b][c] = f16::from_le_bytes([src[0], src[1]]);
                for (q, &byte) in qs[g * nb + b].0[c].iter_mut().zip(&src[2..]) {
                    *q = byte as i8;
                }
            }
        }
        Ok(Self { n, k, d, qs })
    }

    /// The weight's shape, `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Columns `ids` of the matrix, dequantized (`[ids.len(), k]`, row-major), as candle's Q8_0 embedding lookup
    /// computes them: each quant times its block's scale. An id past `n` is an error.
    pub fn rows(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let nb = self.k / 32;
        let mut out = Vec::with_capacity(ids.len() * self.k);
        for &id in ids {
            let col = id as usize;
            if col >= self.n {
                candle_core::bail!("Q8_0x8::rows: id {id} past the {} rows of the table", self.n);
            }
            let (g, c) = (col / 8, col % 8);
            for b in 0..nb {
                let d = self.d[g * nb + b][c].to_f32();
                out.extend(self.qs[g * nb + b].0[c].iter().map(|&q| q as f32 * d));
            }
        }
        Ok(out)
    }

    /// `x` (`[m, k]`, f32, CPU) times the transpose of the weight → `[m, n]`, bit-identical to candle's
    /// row-by-row path: the activations are quantized by candle's `BlockQ8_0::from_float`, and each row's
    /// arithmetic is the same whatever the other rows and their number.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, k, nb) = (self.n, self.k, self.k / 32);
        let Some((m, xs)) = super::activation_rows(x, n, k, "Q8_0x8::matmul")? else {
            return Tensor::zeros((0, n), candle_core::DType::F32, &Device::Cpu);
        };
        let mut lhs = vec![BlockQ8_0::zeros(); m * nb];
        for (row, blocks) in xs.chunks_exact(k).zip(lhs.chunks_exact_mut(nb)) {
            BlockQ8_0::from_float(row, blocks);
        }
        // SAFETY: the same `repr(C)` layout and size, checked at compile time above, so the same alignment.
        let lhs: &[Q8_0] = unsafe { std::slice::from_raw_parts(lhs.as_ptr() as *const Q8_0, lhs.len()) };
        let lhs_d: Vec<f32> = lhs.iter().map(|b| b.d.to_f32()).collect();
        let wide = super::avx512_vnni();
        // The 512-bit kernel's per-block offsets (see `x86::group_avx512`), computed once for all columns.
        let offsets: Vec<Offsets> = if wide {
            lhs.iter().map(Offsets::new).collect()
        } else {
            Vec::new()
        };
        let offsets = &offsets;
        let (wd, wq) = (&self.d, &self.qs);
        // One group of eight columns (all rows) per work item.
        super::product(m, n, |out| {
            super::parallel_ranges(self.d.len() / nb, |groups| {
                let mut lanes = vec![[0f32; 8]; m];
                for g in groups {
                    let (d, qs) = (&wd[g * nb..(g + 1) * nb], &wq[g * nb..(g + 1) * nb]);
                    if wide {
                        // SAFETY: the CPU has the features (checked above); one group's `nb` blocks and `m` rows.
                        unsafe { group_512(d, qs, lhs, &lhs_d, offsets, &mut lanes) }
                    } else {
                        for (r, out) in lanes.iter_mut().enumerate() {
                            *out = group(d, qs, &lhs[r * nb..(r + 1) * nb], &lhs_d[r * nb..(r + 1) * nb]);
                        }
                    }
                    // SAFETY: `m` rows of `n`; group `g` alone writes columns `8g..8g + 8`.
                    unsafe { out.put_lanes(&lanes, 8 * g) };
                }
            })
        })
    }
}

/// Whether [`group`] has its vector body in this build.
const KERNEL: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
));

/// One row (`ys`, its blocks' scales `yd`) against one group of eight columns: candle's `vec_dot_q8_0_q8_0`
/// for each column, operation for operation.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[inline(always)]
fn group(d: &[[f16; 8]], qs: &[Quants8], ys: &[Q8_0], yd: &[f32]) -> [f32; 8] {
    use std::arch::x86_64::*;
    // SAFETY: AVX2, FMA and F16C at compile time (cfg above); each load reads 16 bytes of one `[f16; 8]`, 32
    // aligned bytes of one `Quants8` column or one Q8_0 block's 32 quants.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 8];
        for ((d, qs), (y, &dy)) in d.iter().zip(qs).zip(ys.iter().zip(yd)) {
            // Lane c: column c's `dx·dy`, the product candle broadcasts.
            let scales = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr() as *const __m128i)),
                _mm256_set1_ps(dy),
            );
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            for (c, acc) in acc.iter_mut().enumerate() {
                let bx = _mm256_load_si256(qs.0[c].as_ptr() as *const __m256i);
                let ax = _mm256_sign_epi8(bx, bx);
                let sy = _mm256_sign_epi8(by, bx);
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy)));
                let scale = _mm256_permutevar8x32_ps(scales, _mm256_set1_epi32(c as i32));
                *acc = _mm256_fmadd_ps(scale, q, *acc);
            }
        }
        acc.map(super::hsum_float_8)
    }
}

/// One activation block's `-128 · Σ` of each four consecutive quants, lanes 0..8, repeated in lanes 8..16:
/// the 512-bit kernel multiplies `x + 128` (unsigned) by the quants, and starting each lane from this
/// offset leaves it with the exact `Σ x·y` of candle's lane.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Offsets([i32; 16]);

impl Offsets {
    fn new(y: &Q8_0) -> Self {
        Self(std::array::from_fn(|l| {
            -128 * y.qs[4 * (l % 8)..4 * (l % 8) + 4]
                .iter()
                .map(|&q| i32::from(q))
                .sum::<i32>()
        }))
    }
}

/// Rows per pass of [`x86::group_avx512`] over a group's blocks.
const ROWS_512: usize = 4;

/// One group of eight columns against every row (`ys`, `yd`: all rows' blocks and scales, row-major), with the
/// 512-bit kernel: `out[r]` gets row `r`'s eight results.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C ([`super::avx512_vnni`]).
unsafe fn group_512(
    d: &[[f16; 8]],
    qs: &[Quants8],
    ys: &[Q8_0],
    yd: &[f32],
    offsets: &[Offsets],
    out: &mut [[f32; 8]],
) {
    for (t, out) in out.chunks_mut(ROWS_512).enumerate() {
        let r0 = t * ROWS_512;
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))]
        // SAFETY: forwarded from the caller; rows `r0..r0 + out.len()` are within `ys` and `yd`.
        unsafe {
            match out.len() {
                4 => x86::group_avx512::<4>(d, qs, ys, yd, offsets, r0, out),
                3 => x86::group_avx512::<3>(d, qs, ys, yd, offsets, r0, out),
                2 => x86::group_avx512::<2>(d, qs, ys, yd, offsets, r0, out),
                _ => x86::group_avx512::<1>(d, qs, ys, yd, offsets, r0, out),
            }
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )))]
        unreachable!("the 512-bit kernels need a build with AVX2, FMA and F16C");
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod x86 {
    use super::{Quants8, Q8_0};
    use half::f16;
    use std::arch::x86_64::*;

    /// Rows `r0..r0 + R` against one group, two columns per 512-bit register (column `2p` in the low half,
    /// `2p + 1` in the high half), each block's quants loaded and made unsigned once for the `R` rows.
    ///
    /// candle's `maddubs` of `|x|` and `y`·sign(x), then `madd` with ones, gives lane `l` the exact sum of
    /// products `4l..4l + 4` (no pair reaches the i16 limit: `|x| ≤ 128`, and `|x| = 128` only with
    /// `|y·sign(x)| ≤ 127` or a product of −16384). Here `vpdpbusd` adds the four products of `x + 128`
    /// (`x ^ 0x80`, unsigned) and `y` to the row's [`super::Offsets`], `-128 · Σ y`: the same integer,
    /// exactly, with no per-row sign fix. So the `fma` into each lane and the final horizontal sum are
    /// candle's: the same bits.
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI, AVX2, FMA and F16C; `d` and `qs` of `nb` blocks, rows `r0..r0 + R` within `ys`
    /// and `yd` (`nb` blocks each), `out` of `R` entries.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn group_avx512<const R: usize>(
        d: &[[f16; 8]],
        qs: &[Quants8],
        ys: &[Q8_0],
        yd: &[f32],
        offsets: &[super::Offsets],
        r0: usize,
        out: &mut [[f32; 8]],
    ) {
        let nb = d.len();
        // Lanes 0..8 take column 2p's scale, lanes 8..16 column 2p + 1's.
        let pick: [__m512i; 4] = std::array::from_fn(|p| {
            _mm512_inserti64x4::<1>(_mm512_set1_epi32(2 * p as i32), _mm256_set1_epi32(2 * p as i32 + 1))
        });
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for b in 0..nb {
            let dx = _mm512_zextps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(d[b].as_ptr() as *const __m128i)));
            // `x + 128` as unsigned bytes.
            let ux: [__m512i; 4] = std::array::from_fn(|p| {
                _mm512_xor_si512(_mm512_loadu_si512(qs[b].0[2 * p].as_ptr() as *const __m512i), flip)
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let i = (r0 + r) * nb + b;
                let by = _mm512_broadcast_i64x4(_mm256_loadu_si256(ys[i].qs.as_ptr() as *const __m256i));
                let offset = _mm512_load_si512(offsets[i].0.as_ptr() as *const __m512i);
                // Lane c: column c's `dx·dy`, the product candle broadcasts.
                let scales = _mm512_mul_ps(dx, _mm512_set1_ps(yd[i]));
                for p in 0..4 {
                    let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(offset, ux[p], by));
                    acc[p] = _mm512_fmadd_ps(_mm512_permutexvar_ps(pick[p], scales), q, acc[p]);
                }
            }
        }
        for (acc, out) in acc.iter().zip(&mut out[..R]) {
            for (p, acc) in acc.iter().enumerate() {
                let high = _mm256_castsi256_ps(_mm512_extracti64x4_epi64::<1>(_mm512_castps_si512(*acc)));
                out[2 * p] = super::super::hsum_float_8(_mm512_castps512_ps256(*acc));
                out[2 * p + 1] = super::super::hsum_float_8(high);
            }
        }
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
fn group(_: &[[f16; 8]], _: &[Quants8], _: &[Q8_0], _: &[f32]) -> [f32; 8] {
    unreachable!("Q8_0x8::takes declines without AVX2, FMA and F16C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    fn case(n: usize, k: usize, m: usize) -> (std::sync::Arc<QTensor>, Tensor) {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q8_0).unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 4.0)
            .collect();
        (std::sync::Arc::new(w), Tensor::from_vec(x, (m, k), &dev).unwrap())
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

    #[test]
    fn matmul_is_bit_identical_to_candle() {
        // 51 columns: six full groups and a tail of three.
        let (n, k) = (51, 288);
        for m in [1usize, 3, 8] {
            let (w, x) = case(n, k, m);
            assert!(Q8_0x8::takes(&w));
            let ours = Q8_0x8::new(&w).unwrap().matmul(&x).unwrap();
            let theirs = candle_core::quantized::QMatMul::from_arc(w)
                .unwrap()
                .forward(&x)
                .unwrap();
            assert_eq!(bits(&ours), bits(&theirs), "m = {m}");
        }
    }

    #[test]
    fn rows_round_alike_in_any_batch() {
        let (n, k, m) = (51, 288, 9);
        let (w, x) = case(n, k, m);
        let w = Q8_0x8::new(&w).unwrap();
        let all = bits(&w.matmul(&x).unwrap());
        for r in 0..m {
            assert_eq!(
                all[r * n..(r + 1) * n],
                bits(&w.matmul(&x.narrow(0, r, 1).unwrap()).unwrap()),
                "row {r}"
            );
        }
    }

    #[test]
    fn the_512_bit_kernel_computes_the_avx2_bits() {
        if !crate::kernels::avx512_vnni() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        let (n, k) = (51, 288);
        let nb = k / 32;
        for m in [1usize, 3, 4, 9] {
            let (w, x) = case(n, k, m);
            let mut w = Q8_0x8::new(&w).unwrap();
            // The extremes a GGUF may hold, beyond what quantization makes: -128 and 127 quants.
            for (i, q) in w.qs[0].0[1].iter_mut().enumerate() {
                *q = if i % 2 == 0 { -128 } else { 127 };
            }
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut lhs = vec![BlockQ8_0::zeros(); m * nb];
            BlockQ8_0::from_float(&xs, &mut lhs);
            // SAFETY: the same layout, as in `matmul`.
            let lhs: &[Q8_0] = unsafe { std::slice::from_raw_parts(lhs.as_ptr() as *const Q8_0, lhs.len()) };
            let lhs_d: Vec<f32> = lhs.iter().map(|b| b.d.to_f32()).collect();
            let offsets: Vec<Offsets> = lhs.iter().map(Offsets::new).collect();
            for g in 0..n.div_ceil(8) {
                let (d, qs) = (&w.d[g * nb..(g + 1) * nb], &w.qs[g * nb..(g + 1) * nb]);
                let mut wide = vec![[0f32; 8]; m];
                // SAFETY: the CPU has the features (checked above).
                unsafe { group_512(d, qs, lhs, &lhs_d, &offsets, &mut wide) };
                for (r, wide) in wide.iter().enumerate() {
                    let narrow = group(d, qs, &lhs[r * nb..(r + 1) * nb], &lhs_d[r * nb..(r + 1) * nb]);
                    assert_eq!(
                        wide.map(f32::to_bits),
                        narrow.map(f32::to_bits),
                        "m = {m}, group {g}, row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_are_candles_embedding_lookup() {
        let (w, _) = case(51, 288, 1);
        let ids = [0u32, 50, 7, 8, 7];
        let theirs = w.embedding(&Tensor::new(&ids, &Device::Cpu).unwrap()).unwrap();
        let ours = Q8_0x8::new(&w).unwrap().rows(&ids).unwrap();
        assert_eq!(ours.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), bits(&theirs));
        assert!(Q8_0x8::new(&w).unwrap().rows(&[51]).is_err());
    }

    #[test]
    fn declines_what_candle_repacks_and_other_types() {
        let (w, _) = case(32, 512, 1);
        assert!(!Q8_0x8::takes(&w));
        let q4 = QTensor::quantize(
            &Tensor::zeros((8, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::Q4_0,
        )
        .unwrap();
        assert!(!Q8_0x8::takes(&q4));
        assert!(Q8_0x8::new(&q4).is_err());
    }
}

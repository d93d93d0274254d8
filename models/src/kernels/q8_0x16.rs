//! [`Q8_0x16`]: a Q8_0 output projection repacked at load with sixteen output columns side by side, one per
//! 32-bit lane of a 512-bit register (eight per 256-bit half), as [`super::Q4Kx16`] does for Q4_K.
//!
//! [`super::Q8_0x8`] keeps candle's eight float lanes per column and block, so an 8-row SmolLM2 step spent 16 %
//! of its time in the tied 49 152 × 576 output projection. Here a block of 32 values of sixteen columns is eight
//! `vpdpbusd` against broadcast activations (the weights stored as `x + 128`, unsigned, and `-128 · Σ y` added
//! once per block), and a column's block sum stays an exact integer until one `fma` per block, as llama.cpp
//! sums it. That is not candle's rounding, so models use it for the output projection only (see
//! `Linear::new_output`), whose logits feed no later layer. Each row's arithmetic is the same whatever the other
//! rows and their number, and both kernel tiers compute the same bits.

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::columns16::{Tier, COLS};

/// Values per block.
const QK: usize = 32;

/// Bytes of one GGUF `BlockQ8_0`: `d` (f16), 32 quants.
const GGUF_BLOCK: usize = 34;

/// A Q8_0 weight matrix (`[n, k]`, one row per output column) repacked for the CPU, built once at load by
/// [`Q8_0x16::new`] and used instead of the `QTensor` by [`Q8_0x16::matmul`]; it also serves a tied
/// embedding's row lookups ([`Q8_0x16::rows`]).
///
/// Columns `16j..16j + 16` form column block `j`; entry `j * nb + b` of `blocks` holds block `b` (values
/// `32b..32b + 32`) of those sixteen columns, in the same 34 bytes per 32 weights of a column as the GGUF file.
pub struct Q8_0x16 {
    /// Output columns (rows of the weight matrix), a multiple of 16.
    n: usize,
    /// Input features, a multiple of 32.
    k: usize,
    /// `n / 16 * (k / 32)` blocks, column-block-major.
    blocks: Vec<Block>,
}

/// One block of sixteen columns: `qs[64t + 4c + j]` is column `c`'s value `4t + j` plus 128 (so one 64-byte
/// load holds four consecutive values of every column, column `c` in 32-bit lane `c`), `d[c]` its scale.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Block {
    qs: [u8; QK * COLS],
    d: [f16; COLS],
}

const _: () = assert!(std::mem::size_of::<Block>() == GGUF_BLOCK * COLS);

impl std::fmt::Debug for Q8_0x16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q8_0x16")
            .field("n", &self.n)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

/// Whether the kernels are compiled in: an x86-64 build with AVX2, FMA and F16C (the default x86-64-v3).
const COMPILED: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
));

impl Q8_0x16 {
    /// Repack a Q8_0 `QTensor` of shape `[n, k]` on the CPU, `n` a multiple of 16, for a build with AVX2, FMA
    /// and F16C; `None` elsewhere. An error for any other type or rank, or a storage of the wrong size.
    pub fn new(w: &QTensor) -> candle_core::Result<Option<Self>> {
        let (n, k, data) = super::repack_source(w, GgmlDType::Q8_0, GGUF_BLOCK, "Q8_0x16::new")?;
        if !COMPILED || !matches!(w.device(), Device::Cpu) || n % COLS != 0 {
            return Ok(None);
        }
        let nb = k / QK;
        let zero = Block {
            qs: [0; QK * COLS],
            d: [f16::ZERO; COLS],
        };
        let blocks = super::columns16::repack(&data, n, nb, GGUF_BLOCK, zero, |src, c, dst| {
            dst.d[c] = f16::from_le_bytes([src[0], src[1]]);
            for (v, &q) in src[2..].iter().enumerate() {
                dst.qs[64 * (v / 4) + 4 * c + v % 4] = q ^ 0x80;
            }
        });
        Ok(Some(Self { n, k, blocks }))
    }

    /// The weight's shape, `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Columns `ids` of the matrix, dequantized (`[ids.len(), k]`, row-major), as candle's Q8_0 embedding lookup
    /// computes them: each quant times its block's scale. An id past `n` is an error.
    pub fn rows(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        super::columns16::lookup(
            &self.blocks,
            self.n,
            self.k / QK,
            QK,
            ids,
            "Q8_0x16",
            |block, c, out| {
                let d = block.d[c].to_f32();
                out.extend((0..QK).map(|v| f32::from((block.qs[64 * (v / 4) + 4 * c + v % 4] ^ 0x80) as i8) * d));
            },
        )
    }

    /// `x` (`[m, k]`, f32, CPU) times the transpose of the weight → `[m, n]`. The activations are quantized
    /// by candle's `BlockQ8_0::from_float`; per column and block, `Σ x·y` is an exact integer, and the column's
    /// float sum takes `fma(float(sum), d · d_y, acc)` block after block.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, k) = (self.n, self.k);
        let Some((m, xs)) = super::activation_rows(x, n, k, "Q8_0x16::matmul")? else {
            return Tensor::zeros((0, n), candle_core::DType::F32, &Device::Cpu);
        };
        let lhs = Lhs::new(&xs, m, k);
        let y = self.matmul_lhs(&lhs, Tier::best());
        Tensor::from_vec(y, (m, n), &Device::Cpu)
    }

    /// The product with quantized rows, on one kernel tier; row-major `[m, n]`.
    fn matmul_lhs(&self, lhs: &Lhs, tier: Tier) -> Vec<f32> {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))]
        // SAFETY: `Tier::best` (or a test) picked a tier this CPU runs; `new` repacked `n / 16` column blocks
        // of `k / 32` blocks, and `lhs` has its rows of `k` values.
        return unsafe {
            super::columns16::product(&self.blocks, self.k / QK, self.n, lhs.rows, lhs, tier, &x86::TILES)
        };
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )))]
        unreachable!(
            "Q8_0x16::new declines without AVX2, FMA and F16C ({tier:?}, {} rows)",
            lhs.rows
        )
    }
}

/// The activations quantized by candle's `BlockQ8_0::from_float`, block-major (`[nb][rows]`), with each
/// block's scale as f32 and `-128 · Σ y`, the offset that the weights' `+ 128` adds.
struct Lhs {
    /// Entry `b * rows + r`: block `b` of row `r`, as `(quants, d, offset)`.
    blocks: Vec<([i8; QK], f32, i32)>,
    rows: usize,
}

impl Lhs {
    fn new(xs: &[f32], rows: usize, k: usize) -> Self {
        let nb = k / QK;
        let mut quantized = vec![BlockQ8_0::zeros(); rows * nb];
        for (row, blocks) in xs.chunks_exact(k).zip(quantized.chunks_exact_mut(nb)) {
            BlockQ8_0::from_float(row, blocks);
        }
        let blocks = (0..nb * rows)
            .map(|i| {
                let block = &quantized[(i % rows) * nb + i / rows];
                // SAFETY: candle's `BlockQ8_0` is `repr(C)` { d: f16, qs: [i8; 32] }, 34 bytes (checked in `q8_0`).
                let bytes: &[u8; GGUF_BLOCK] = unsafe { &*(block as *const BlockQ8_0 as *const [u8; GGUF_BLOCK]) };
                let qs: [i8; QK] = std::array::from_fn(|v| bytes[2 + v] as i8);
                let offset = -128 * qs.iter().map(|&q| i32::from(q)).sum::<i32>();
                (qs, f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), offset)
            })
            .collect();
        Self { blocks, rows }
    }
}

/// One work item: a column block against the quantized rows.
type Item<'a> = super::columns16::Item<'a, Block, Lhs>;

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod x86 {
    //! The kernels proper. Per row and column: for each block, `isum = Σ x·y` exactly in i32 (at most
    //! 32 · 128 · 127 in magnitude), then `acc = fma(float(isum), d · d_y, acc)`.

    use super::super::columns16::Tiles;
    use super::{Block, Item, Lhs};
    use std::arch::x86_64::*;

    /// The kernel's bodies by tile height.
    pub(super) const TILES: Tiles<Block, Lhs> = Tiles {
        wide: [
            tile_avx512::<1>,
            tile_avx512::<2>,
            tile_avx512::<3>,
            tile_avx512::<4>,
            tile_avx512::<5>,
            tile_avx512::<6>,
            tile_avx512::<7>,
            tile_avx512::<8>,
        ],
        narrow: [tile_avx2::<1>, tile_avx2::<2>, tile_avx2::<3>, tile_avx2::<4>],
    };

    /// The four activation bytes at `p`, as one integer to broadcast.
    #[inline(always)]
    unsafe fn act4(p: *const i8) -> i32 {
        // SAFETY: the caller points within a block's 32 quants, four bytes before its end at most.
        unsafe { (p as *const i32).read_unaligned() }
    }

    /// Rows `r0..r0 + R` against one column block, sixteen columns per 512-bit register: `vpdpbusd` of the
    /// unsigned `x + 128` and `y`, started from the row's `-128 · Σ y`. Two chains per row (even and odd
    /// groups of four values) keep a single row's dependent additions short.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile_avx512<const R: usize>(item: &Item<'_>, r0: usize) {
        let Item { w, lhs, out, col0 } = *item;
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, blk) in w.iter().enumerate() {
            let ys = &lhs.blocks[b * lhs.rows + r0..][..R];
            // SAFETY (loads): within the block's quants.
            let mut q = [_mm512_setzero_si512(); 8];
            for (t, q) in q.iter_mut().enumerate() {
                *q = _mm512_loadu_si512(blk.qs.as_ptr().add(64 * t) as *const __m512i);
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk.d.as_ptr() as *const __m256i));
            for (r, (qs, yd, offset)) in ys.iter().enumerate() {
                let a = qs.as_ptr();
                let mut even = _mm512_set1_epi32(*offset);
                let mut odd = _mm512_setzero_si512();
                for t in (0..8).step_by(2) {
                    even = _mm512_dpbusd_epi32(even, q[t], _mm512_set1_epi32(act4(a.add(4 * t))));
                    odd = _mm512_dpbusd_epi32(odd, q[t + 1], _mm512_set1_epi32(act4(a.add(4 * t + 4))));
                }
                let isum = _mm512_add_epi32(even, odd);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, _mm512_set1_ps(*yd)), acc[r]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.ptr.add((r0 + r) * out.n + col0), *acc);
        }
    }

    /// Rows `r0..r0 + R` against one column block as two halves of eight columns, 256-bit registers:
    /// `vpmaddubsw` of `|x|` and `y · sign(x)` (candle's form; `y` is never -128, so each pair is at most
    /// 2 · 128 · 127 in magnitude, exact), then `vpmaddwd` with ones.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize>(item: &Item<'_>, r0: usize) {
        let Item { w, lhs, out, col0 } = *item;
        let (flip, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for (b, blk) in w.iter().enumerate() {
            let ys = &lhs.blocks[b * lhs.rows + r0..][..R];
            for h in 0..2 {
                // SAFETY (loads): within the block's quants and scales.
                let (mut x, mut ax) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
                for t in 0..8 {
                    x[t] = _mm256_xor_si256(
                        _mm256_loadu_si256(blk.qs.as_ptr().add(64 * t + 32 * h) as *const __m256i),
                        flip,
                    );
                    ax[t] = _mm256_sign_epi8(x[t], x[t]);
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().add(8 * h) as *const __m128i));
                for (r, (qs, yd, _)) in ys.iter().enumerate() {
                    let a = qs.as_ptr();
                    let mut isum = _mm256_setzero_si256();
                    for t in 0..8 {
                        let sy = _mm256_sign_epi8(_mm256_set1_epi32(act4(a.add(4 * t))), x[t]);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(ax[t], sy), ones));
                    }
                    let acc = &mut acc[r][h];
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(*yd)), *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (h, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.ptr.add((r0 + r) * out.n + col0 + 8 * h), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    /// A Q8_0 matrix of `n` columns and `k` inputs, and `m` activation rows, from fixed patterns.
    fn case(n: usize, k: usize, m: usize) -> (QTensor, Tensor) {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (0.05 + (i / k % 7) as f32 * 0.03))
            .collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q8_0).unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * (1.0 + (i % 13) as f32))
            .collect();
        (w, Tensor::from_vec(x, (m, k), &dev).unwrap())
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn bits(xs: &[f32]) -> Vec<u32> {
        xs.iter().map(|f| f.to_bits()).collect()
    }

    /// The kernels' arithmetic, one value at a time: the exact integer block sums, then one `fma` per block.
    fn reference(w: &QTensor, x: &Tensor) -> Vec<f32> {
        let (n, k) = w.shape().dims2().unwrap();
        let (m, nb) = (x.dim(0).unwrap(), k / QK);
        let data = w.data().unwrap();
        let lhs = Lhs::new(&values(x), m, k);
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut acc = 0f32;
                for b in 0..nb {
                    let src = &data[(c * nb + b) * GGUF_BLOCK..][..GGUF_BLOCK];
                    let (qs, yd, _) = &lhs.blocks[b * m + r];
                    let isum: i32 = (0..QK).map(|v| i32::from(src[2 + v] as i8) * i32::from(qs[v])).sum();
                    let d = f16::from_le_bytes([src[0], src[1]]).to_f32();
                    acc = (isum as f32).mul_add(d * yd, acc);
                }
                y[r * n + c] = acc;
            }
        }
        y
    }

    #[test]
    fn q8_0_x16_computes_the_reference_sums_on_every_tier() {
        let mut tiers = vec![Tier::Avx2];
        if super::super::avx512_vnni() {
            tiers.push(Tier::Avx512Vnni);
        }
        for (n, k) in [(16, 32), (48, 576)] {
            let (w, _) = case(n, k, 1);
            let ours = Q8_0x16::new(&w).unwrap().expect("repacks this shape");
            for m in [1usize, 2, 3, 4, 5, 8, 9, 13] {
                let (_, x) = case(n, k, m);
                let want = bits(&reference(&w, &x));
                let lhs = Lhs::new(&values(&x), m, k);
                for &tier in &tiers {
                    assert_eq!(
                        bits(&ours.matmul_lhs(&lhs, tier)),
                        want,
                        "{tier:?}, [{n}, {k}], m = {m}"
                    );
                }
            }
        }
    }

    #[test]
    fn q8_0_x16_is_close_to_candle_and_rows_round_alike_in_any_batch() {
        let (n, k, m) = (64, 576, 11);
        let (w, x) = case(n, k, m);
        let ours = Q8_0x16::new(&w).unwrap().unwrap();
        let all = values(&ours.matmul(&x).unwrap());
        let theirs = values(&QMatMul::from_arc(std::sync::Arc::new(w)).unwrap().forward(&x).unwrap());
        let scale = theirs.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (i, (a, b)) in all.iter().zip(&theirs).enumerate() {
            assert!((a - b).abs() <= 1e-5 * scale, "element {i}: {a} against candle's {b}");
        }
        for r in 0..m {
            let alone = values(&ours.matmul(&x.narrow(0, r, 1).unwrap()).unwrap());
            assert_eq!(bits(&all[r * n..(r + 1) * n]), bits(&alone), "row {r} of {m}");
        }
    }

    #[test]
    fn q8_0_x16_rows_are_candles_embedding_lookup() {
        let (n, k) = (32, 64);
        let (w, _) = case(n, k, 1);
        let ours = Q8_0x16::new(&w).unwrap().unwrap();
        let ids = [0u32, 31, 7, 16];
        let want = w
            .dequantize(&Device::Cpu)
            .unwrap()
            .index_select(&Tensor::new(&ids, &Device::Cpu).unwrap(), 0)
            .unwrap();
        assert_eq!(bits(&ours.rows(&ids).unwrap()), bits(&values(&want)));
        assert!(ours.rows(&[32]).is_err());
    }

    #[test]
    fn q8_0_x16_declines_other_widths_and_rejects_other_types() {
        let (w, _) = case(40, 64, 1);
        assert!(Q8_0x16::new(&w).unwrap().is_none());
        let w = QTensor::quantize(
            &Tensor::zeros((16, 256), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::Q4_0,
        )
        .unwrap();
        assert!(Q8_0x16::new(&w).is_err());
    }
}

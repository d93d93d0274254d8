//! candle's `BlockQ8K::from_float`, vectorized, with the same results.
//!
//! Every K-quant matmul of candle quantizes its activations to Q8_K with a scalar loop (a maximum search, a
//! multiply, `f32::round` and a clamp per value). For prompts that loop costs as much as a small matmul, so
//! our kernels quantize eight values at a time instead. Every step is exact or rounds exactly as the scalar
//! code does: the products are the same single multiplications, and `round` (half away from zero) is
//! rebuilt from truncation, whose remainder is exact in f32.

use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};

use super::{SyncPtr, Q8K};

/// Rows of activations quantized to Q8_K, superblock-major (`[nb][rows]`), so that the rows a kernel call
/// takes for one superblock lie side by side; with each block, a value `E` that the kernel derives from it
/// once per block instead of once per column block (the K-quant kernels' per-subblock terms).
pub(super) struct Q8KRows<E> {
    /// `nb * rows` blocks: entry `b * rows + r` is superblock `b` of row `r`.
    blocks: Vec<BlockQ8K>,
    /// `extra[b * rows + r]` belongs to `blocks[b * rows + r]`.
    pub(super) extra: Vec<E>,
    /// Rows.
    pub(super) rows: usize,
}

impl<E: Copy + Default + Send> Q8KRows<E> {
    /// Quantize rows of `k` values (`xs`: `[m, k]`, row-major) exactly as candle's `from_float` does (it treats
    /// each 256 values on their own, so quantizing a row a superblock at a time gives the same blocks), and
    /// derive each block's `extra`. Several rows quantize on candle's pool.
    pub(super) fn quantize(xs: &[f32], k: usize, extra: impl Fn(&Q8K) -> E + Sync) -> Self {
        let (rows, nb) = (xs.len() / k, k / 256);
        let mut blocks = vec![BlockQ8K::zeros(); rows * nb];
        let mut extras = vec![E::default(); rows * nb];
        let (blocks_ptr, extras_ptr) = (SyncPtr(blocks.as_mut_ptr()), SyncPtr(extras.as_mut_ptr()));
        let superblock = |b: usize| {
            // SAFETY: superblock `b` owns entries `b * rows..(b + 1) * rows` of both vectors, which outlive
            // this call; no other `b` touches them.
            let (blocks, extras) = unsafe {
                (
                    std::slice::from_raw_parts_mut(blocks_ptr.get().add(b * rows), rows),
                    std::slice::from_raw_parts_mut(extras_ptr.get().add(b * rows), rows),
                )
            };
            for (r, (block, e)) in blocks.iter_mut().zip(extras).enumerate() {
                quantize_block(&xs[r * k + 256 * b..r * k + 256 * (b + 1)], block);
                // SAFETY: `Q8K` mirrors `BlockQ8K` (same `repr(C)` layout, checked in `kernels`).
                *e = extra(unsafe { &*(block as *const BlockQ8K as *const Q8K) });
            }
        };
        if rows == 1 {
            (0..nb).for_each(superblock);
        } else {
            super::parallel_ranges(nb, |range| range.for_each(superblock));
        }
        Self {
            blocks,
            extra: extras,
            rows,
        }
    }

    /// The blocks through our mirror of their layout.
    pub(super) fn q8(&self) -> &[Q8K] {
        // SAFETY: same `repr(C)` layout and size (checked at compile time in `kernels`), so the same alignment.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr() as *const Q8K, self.blocks.len()) }
    }
}

/// Quantize 256 values into `y` exactly as `BlockQ8K::from_float` does.
pub(super) fn quantize_block(xs: &[f32], y: &mut BlockQ8K) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if xs.len() == 256 {
        // SAFETY: AVX2 at compile time; `Q8K` mirrors `BlockQ8K` (same `repr(C)` layout, checked in
        // `kernels`).
        let done = unsafe { quantize_avx2(xs, &mut *(y as *mut BlockQ8K as *mut Q8K)) };
        if done {
            return;
        }
    }
    BlockQ8K::from_float(xs, std::slice::from_mut(y));
}

/// The vector path; `false` (and `y` left for the scalar path to overwrite) when a value is not finite,
/// where the scalar code's NaN and infinity handling is not worth mirroring.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(xs: &[f32], y: &mut Q8K) -> bool {
    use std::arch::x86_64::*;
    let p = xs.as_ptr();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    // SAFETY (loads): `xs` holds 256 values, read eight at a time.
    let x = |i: usize| _mm256_loadu_ps(p.add(8 * i));
    // The largest magnitude, and whether all values are finite (NaN fails the comparison too).
    let (mut amax, mut finite) = (_mm256_setzero_ps(), _mm256_set1_epi32(-1));
    for i in 0..32 {
        let a = _mm256_and_ps(x(i), abs_mask);
        amax = _mm256_max_ps(amax, a);
        finite = _mm256_and_si256(
            finite,
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(f32::INFINITY))),
        );
    }
    if _mm256_movemask_ps(_mm256_castsi256_ps(finite)) != 0xFF {
        return false;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), amax);
    let amax = lanes.iter().fold(0f32, |a, &b| a.max(b));
    if amax == 0.0 {
        y.d = 0.0;
        y.qs.fill(0);
        y.bsums.fill(0);
        return true;
    }
    // The scalar loop keeps the first value of the largest magnitude.
    let max = xs.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
    let iscale = -127f32 / max;
    if !iscale.is_finite() {
        // A subnormal maximum: the products overflow, and the scalar code's NaN handling applies.
        return false;
    }
    let (scale, half, one) = (_mm256_set1_ps(iscale), _mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    // `(iscale * x).round().clamp(-128, 127)` as i32, eight values.
    let q = |i: usize| {
        let v = _mm256_mul_ps(scale, x(i));
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        // |v - t| < 1 is exact; at a half or more, step away from zero.
        let away = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_and_ps(_mm256_sub_ps(v, t), abs_mask), half);
        let step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(v, sign_mask)));
        _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(t, step), lo), hi))
    };
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let bias = _mm256_set1_epi8(i8::MIN);
    for c in 0..8 {
        // 32 values: pack to bytes (in-lane packs interleave 4-value groups; the permute restores order).
        let ab = _mm256_packs_epi32(q(4 * c), q(4 * c + 1));
        let cd = _mm256_packs_epi32(q(4 * c + 2), q(4 * c + 3));
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
        _mm256_storeu_si256(y.qs.as_mut_ptr().add(32 * c) as *mut __m256i, bytes);
        // Sums of each 16 bytes: unsigned sums of 8 after a +128 bias, then the bias removed.
        let mut sums = [0u64; 4];
        _mm256_storeu_si256(
            sums.as_mut_ptr() as *mut __m256i,
            _mm256_sad_epu8(_mm256_xor_si256(bytes, bias), _mm256_setzero_si256()),
        );
        y.bsums[2 * c] = (sums[0] + sums[1]) as i16 - 16 * 128;
        y.bsums[2 * c + 1] = (sums[2] + sums[3]) as i16 - 16 * 128;
    }
    y.d = 1.0 / iscale;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(b: &BlockQ8K) -> Vec<u8> {
        // SAFETY: a plain `repr(C)` struct of 292 bytes without padding.
        unsafe {
            std::slice::from_raw_parts(b as *const BlockQ8K as *const u8, std::mem::size_of::<BlockQ8K>()).to_vec()
        }
    }

    fn check(xs: &[f32], what: &str) {
        let (mut ours, mut theirs) = (BlockQ8K::zeros(), BlockQ8K::zeros());
        quantize_block(xs, &mut ours);
        BlockQ8K::from_float(xs, std::slice::from_mut(&mut theirs));
        assert_eq!(bits(&ours), bits(&theirs), "{what}");
    }

    #[test]
    fn q8k_quantization_is_bit_identical_to_candle() {
        // A small xorshift generator: values of many magnitudes and signs.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..2000 {
            let scale = [1e-6f32, 0.01, 1.0, 3.7, 1e4][case % 5];
            let xs: Vec<f32> = (0..256)
                .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale)
                .collect();
            check(&xs, &format!("random block {case}"));
        }
        // The cases above took the vector path, not the scalar fallback.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        {
            let mut y = BlockQ8K::zeros();
            let xs: Vec<f32> = (0..256).map(|i| (i as f32).sin()).collect();
            // SAFETY: as in `quantize_block`.
            assert!(unsafe { quantize_avx2(&xs, &mut *(&mut y as *mut BlockQ8K as *mut Q8K)) });
        }
        // Halves: with the largest value -127, iscale is 1 and every value is its own product.
        let mut xs: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) / 2.0).collect();
        xs[200] = -127.0;
        check(&xs, "ties");
        let negate: Vec<f32> = xs.iter().map(|v| -v).collect();
        check(&negate, "ties, negated");
        // The largest magnitude twice, with opposite signs: the first one sets the sign of the scale.
        let mut xs = vec![0.25f32; 256];
        (xs[3], xs[100]) = (-2.0, 2.0);
        check(&xs, "first maximum negative");
        (xs[3], xs[100]) = (2.0, -2.0);
        check(&xs, "first maximum positive");
        check(&[0.0; 256], "zeros");
        check(&[-0.0; 256], "negative zeros");
        let mut xs = vec![1.0f32; 256];
        xs[17] = f32::NAN;
        check(&xs, "a NaN");
        xs[17] = f32::INFINITY;
        check(&xs, "an infinity");
        let mut subnormal: Vec<f32> = (0..256).map(|i| f32::from_bits(i as u32 + 1)).collect();
        check(&subnormal, "subnormals");
        subnormal[9] = 0.0;
        check(&subnormal, "subnormals and a zero");
    }
}

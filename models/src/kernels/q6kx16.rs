//! Q6_K matmul over a repacked layout with sixteen output columns side by side, one per 32-bit lane of a
//! 512-bit register (eight per 256-bit half), as [`super::Q4Kx16`] does for Q4_K.
//!
//! candle's Q6_K kernels (and [`super::q6k_matmul_rows`], which copies its one-row path) keep one column per
//! register: eight partial sums per column and block, a horizontal sum per column, and an unpack of the block
//! for every row. For an 8-row Qwen2.5-1.5B step that made the tied 151 936-column output projection cost
//! 23 ms, four times its one-row time. Here a subblock of sixteen values of sixteen columns is four `vpdpbusd`
//! against broadcast activations and one `vpmulld` by its scales, and a column's block sum stays an exact
//! integer until one `fma` per block, as llama.cpp sums it (`q6kbench`, that output at 8 rows: 23.5 → 10.8 ms;
//! at one row 4.9 → 4.3 ms).
//!
//! That is not candle's rounding: its one-row path sums each block in eight float lanes. So models use this
//! kernel for the output projection only, whose logits feed no later layer (see `Linear::new_output`). Each
//! row's arithmetic is the same whatever the other rows and their number, so a batch still computes each
//! row's solo result, bit for bit, and both kernel tiers compute the same bits.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::columns16::{Tier, COLS};

/// Values per superblock (`QK_K`).
const QK: usize = 256;

/// Bytes of one GGUF `BlockQ6K`: 128 bytes of low nibbles, 64 of high bit pairs, 16 scales (i8), `d` (f16).
const GGUF_BLOCK: usize = 210;

/// A Q6_K weight matrix (`[n, k]`, one row per output column) repacked for the CPU, built once at load by
/// [`Q6Kx16::new`] and used instead of the `QTensor` by [`Q6Kx16::matmul`].
///
/// Columns `16j..16j + 16` form column block `j`; entry `j * nb + b` of `blocks` holds superblock `b` of
/// those sixteen columns, in the same 210 bytes per 256 weights of a column as the GGUF file.
pub struct Q6Kx16 {
    /// Output columns (rows of the weight matrix), a multiple of 16.
    n: usize,
    /// Input features, a multiple of 256.
    k: usize,
    /// `n / 16 * (k / 256)` blocks, column-block-major.
    blocks: Vec<Block>,
}

/// One superblock of sixteen columns: four [`Group`]s of four subblocks each, in the order the kernels read
/// them (the weights stream in order), then the column's block scale `d[c]`.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Block {
    groups: [Group; 4],
    d: [f16; COLS],
}

/// Subblocks `4g..4g + 4` of a [`Block`]'s sixteen columns. Value `v` of a column lies in subblock
/// `s = v / 16` at `t = v % 16 / 4`, `j = v % 4`; each 64-byte vector below holds one `(s, t)` of all sixteen
/// columns, column `c` in bytes `4c..4c + 4` (one 32-bit lane), `j` in byte `4c + j`. With `i = s % 4`:
///
/// - `ql[64(4p + t) + 4c + j]`: the low four bits of column `c`'s value in subblock `i = 2p` (low nibble) and
///   in `i = 2p + 1` (high nibble);
/// - `qh[64t + 4c + j]`: bits `2i..2i + 2` are the high two bits of the value in subblock `i`;
/// - `scales[16i + c]`: column `c`'s scale of subblock `i`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Group {
    ql: [u8; 512],
    qh: [u8; 256],
    scales: [i8; 64],
}

const _: () = assert!(std::mem::size_of::<Block>() == GGUF_BLOCK * COLS);

impl Block {
    const ZERO: Self = Self {
        groups: [Group {
            ql: [0; 512],
            qh: [0; 256],
            scales: [0; 64],
        }; 4],
        d: [f16::ZERO; COLS],
    };

    /// Column `c`'s value `v` (0..256): its subblock's scale and its six-bit value, read back from the layout
    /// [`repack_column`] writes.
    fn value(&self, c: usize, v: usize) -> (i8, u8) {
        let (s, t, at) = (v / 16, v % 16 / 4, 4 * c + v % 4);
        let (group, i) = (&self.groups[s / 4], s % 4);
        let low = group.ql[64 * (4 * (i / 2) + t) + at] >> (4 * (i % 2)) & 0x0F;
        let high = group.qh[64 * t + at] >> (2 * i) & 3;
        (group.scales[16 * i + c], low | high << 4)
    }
}

impl std::fmt::Debug for Q6Kx16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q6Kx16")
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

impl Q6Kx16 {
    /// Repack a Q6_K `QTensor` of shape `[n, k]` on the CPU, `n` a multiple of 16 and `k` of 256, for a build
    /// with AVX2, FMA and F16C; `None` elsewhere (candle's kernels then run). An error for any other type or
    /// rank, or a storage of the wrong size.
    pub fn new(w: &QTensor) -> candle_core::Result<Option<Self>> {
        if w.dtype() != GgmlDType::Q6K {
            candle_core::bail!("Q6Kx16::new: a {:?} tensor, not Q6_K", w.dtype());
        }
        let (n, k) = w.shape().dims2()?;
        if !COMPILED || !matches!(w.device(), Device::Cpu) || k == 0 || k % QK != 0 || n % COLS != 0 {
            return Ok(None);
        }
        let nb = k / QK;
        let data = w.data()?;
        if data.len() != n * nb * GGUF_BLOCK {
            candle_core::bail!("Q6Kx16::new: {} bytes for a [{n}, {k}] Q6_K matrix", data.len());
        }
        let blocks = super::columns16::repack(&data, n, nb, GGUF_BLOCK, Block::ZERO, repack_column);
        Ok(Some(Self { n, k, blocks }))
    }

    /// The weight's shape, `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Columns `ids` of the matrix, dequantized (`[ids.len(), k]`, row-major), as candle's Q6_K embedding lookup
    /// computes them: `d · scale · (value - 32)`, in that order. A tied table's embedding reads them here, so
    /// the table is held once. An id past `n` is an error.
    pub fn rows(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        super::columns16::lookup(&self.blocks, self.n, self.k / QK, QK, ids, "Q6Kx16", |block, c, out| {
            let d = block.d[c].to_f32();
            out.extend((0..QK).map(|v| {
                let (scale, value) = block.value(c, v);
                d * f32::from(scale) * f32::from(value as i8 - 32)
            }));
        })
    }

    /// `x` (`[m, k]`, f32, CPU) times the transpose of the weight → `[m, n]`.
    ///
    /// The activations are quantized to Q8_K exactly as candle's `BlockQ8K::from_float` does; per column and
    /// block, `Σ_s scale_s · Σ (q - 32)·x_q` is an exact integer, and the column's float sum takes
    /// `fma(float(sum), d · d_x, acc)` block after block.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, k) = (self.n, self.k);
        let Some((m, xs)) = super::activation_rows(x, n, k, "Q6Kx16::matmul")? else {
            return Tensor::zeros((0, n), candle_core::DType::F32, &Device::Cpu);
        };
        let lhs = Lhs::new(&xs, k);
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
        // of `k / 256` blocks, and `lhs` has its rows of `k` values.
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
            "Q6Kx16::new declines without AVX2, FMA and F16C ({tier:?}, {} rows)",
            lhs.rows
        )
    }
}

/// The six-bit value `v` (0..256, unsigned: the weight is `d · scale · (value - 32)`) of one GGUF `BlockQ6K`.
fn value(src: &[u8], v: usize) -> u8 {
    let (ql, qh) = (&src[..128], &src[128..192]);
    // Half `h` of 128 values: value `64h·2 + 32g + i` has its low bits in byte `64h + 32(g % 2) + i` (high
    // nibble for g ≥ 2) and its high bits in bits `2g..2g + 2` of byte `32h + i`.
    let (h, g, i) = (v / 128, v % 128 / 32, v % 32);
    let low = ql[64 * h + 32 * (g % 2) + i] >> (4 * (g / 2)) & 0x0F;
    let high = qh[32 * h + i] >> (2 * g) & 3;
    low | high << 4
}

/// Copy one GGUF `BlockQ6K` (`src`, 210 bytes) into lane `c` of `dst`.
fn repack_column(src: &[u8], c: usize, dst: &mut Block) {
    for s in 0..16 {
        let (group, i) = (&mut dst.groups[s / 4], s % 4);
        group.scales[16 * i + c] = src[192 + s] as i8;
        for t in 0..4 {
            for j in 0..4 {
                let q = value(src, 16 * s + 4 * t + j);
                let at = 4 * c + j;
                group.ql[64 * (4 * (i / 2) + t) + at] |= (q & 0x0F) << (4 * (i % 2));
                group.qh[64 * t + at] |= (q >> 4) << (2 * i);
            }
        }
    }
    dst.d[c] = f16::from_le_bytes([src[208], src[209]]);
}

/// The activations, with per block `-32 · bsums[s]` for each subblock `s`: the `- 32` of every six-bit value,
/// folded into the subblock's integer sum before its scale.
type Lhs = super::q8k::Q8KRows<[i32; 16]>;

impl Lhs {
    /// Quantize rows of `k` values (`xs`: `[m, k]`, row-major) exactly as candle's `from_float` does.
    fn new(xs: &[f32], k: usize) -> Self {
        Self::quantize(xs, k, |q8| std::array::from_fn(|s| -32 * i32::from(q8.bsums[s])))
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
    //! The kernels proper. Per row and column: for each superblock, `isum = Σ_s scale_s · (Σ_v q_v·x_v -
    //! 32·bsum_s)` exactly in i32 (at most 16 · 128 · 16 · 64 · 128 < 2³¹ in magnitude), then
    //! `acc = fma(float(isum), d · d_x, acc)`.

    use super::super::columns16::Tiles;
    use super::{Block, Group, Item, Lhs, COLS};
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
        // SAFETY: the caller points within a Q8_K block's 256 quants, four bytes before its end at most.
        unsafe { (p as *const i32).read_unaligned() }
    }

    /// Subblock `s`'s six-bit values at `t` (0..4) from its group (`*const Group`), one register's width
    /// from byte `off` of each 64-byte vector: low nibble from `ql`, high pair from `qh`, put together by the
    /// tier's `and`, shifts and `or`.
    macro_rules! unpack {
        ($load:ident, $and:ident, $or:ident, $srli:ident, $slli:ident, $set1:ident, $group:expr, $s:expr, $t:expr, $off:expr) => {{
            let (group, i, t): (&Group, usize, usize) = (&*$group, $s % 4, $t);
            let l = $load(group.ql.as_ptr().add(64 * (4 * (i / 2) + t) + $off) as *const _);
            let h = $load(group.qh.as_ptr().add(64 * t + $off) as *const _);
            let low = if i % 2 == 0 { l } else { $srli::<4>(l) };
            let high = match i {
                0 => $slli::<4>(h),
                1 => $slli::<2>(h),
                2 => h,
                _ => $srli::<2>(h),
            };
            $or($and(low, $set1(0x0F)), $and(high, $set1(0x30)))
        }};
    }

    /// `group`'s address, handed on by an empty `asm!` only once `after` (the previous subblock's last row sum)
    /// is computed. It emits no instruction; it keeps the compiler from unpacking every subblock's weights at
    /// the top of the block, which it did, spilling them all to the stack (the 8-row kernel ran at half speed).
    #[inline(always)]
    #[allow(clippy::pointers_in_nomem_asm_block)] // The template is empty: it never dereferences the pointer.
    unsafe fn behind(group: &Group, after: __m256i) -> *const Group {
        let mut group: *const Group = group;
        // SAFETY: an empty template; it reads and writes no memory and changes no flag.
        unsafe {
            std::arch::asm!("/* {g} {x} */", g = inout(reg) group, x = in(ymm_reg) after, options(nomem, nostack, preserves_flags))
        };
        group
    }

    /// `$body(s)` for each subblock `s`, written out with a literal `s`, so that the unpacking's shifts and
    /// the loads' offsets are constants and each row's registers stay registers.
    macro_rules! each_subblock {
        ($body:ident) => {
            $body!(0);
            $body!(1);
            $body!(2);
            $body!(3);
            $body!(4);
            $body!(5);
            $body!(6);
            $body!(7);
            $body!(8);
            $body!(9);
            $body!(10);
            $body!(11);
            $body!(12);
            $body!(13);
            $body!(14);
            $body!(15);
        };
    }

    /// Rows `r0..r0 + R` against one column block, sixteen columns per 512-bit register.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile_avx512<const R: usize>(item: &Item<'_>, r0: usize) {
        let Item { w, lhs, out, col0 } = *item;
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, blk) in w.iter().enumerate() {
            let ys = &lhs.q8()[b * lhs.rows + r0..][..R];
            let offsets = &lhs.extra[b * lhs.rows + r0..][..R];
            let mut isum = [_mm512_setzero_si512(); R];
            macro_rules! subblock {
                ($s:literal) => {{
                    let group = behind(&blk.groups[$s / 4], _mm512_castsi512_si256(isum[R - 1]));
                    // SAFETY (loads): each reads within one `Group` field.
                    let scale = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                        (*group).scales.as_ptr().add(COLS * ($s % 4)) as *const __m128i
                    ));
                    let q0 = unpack!(
                        _mm512_loadu_si512,
                        _mm512_and_si512,
                        _mm512_or_si512,
                        _mm512_srli_epi16,
                        _mm512_slli_epi16,
                        _mm512_set1_epi8,
                        group,
                        $s,
                        0,
                        0
                    );
                    let q1 = unpack!(
                        _mm512_loadu_si512,
                        _mm512_and_si512,
                        _mm512_or_si512,
                        _mm512_srli_epi16,
                        _mm512_slli_epi16,
                        _mm512_set1_epi8,
                        group,
                        $s,
                        1,
                        0
                    );
                    let q2 = unpack!(
                        _mm512_loadu_si512,
                        _mm512_and_si512,
                        _mm512_or_si512,
                        _mm512_srli_epi16,
                        _mm512_slli_epi16,
                        _mm512_set1_epi8,
                        group,
                        $s,
                        2,
                        0
                    );
                    let q3 = unpack!(
                        _mm512_loadu_si512,
                        _mm512_and_si512,
                        _mm512_or_si512,
                        _mm512_srli_epi16,
                        _mm512_slli_epi16,
                        _mm512_set1_epi8,
                        group,
                        $s,
                        3,
                        0
                    );
                    for r in 0..R {
                        let a = ys[r].qs.as_ptr().add(16 * $s);
                        let p = _mm512_dpbusd_epi32(_mm512_set1_epi32(offsets[r][$s]), q0, _mm512_set1_epi32(act4(a)));
                        let p = _mm512_dpbusd_epi32(p, q1, _mm512_set1_epi32(act4(a.add(4))));
                        let p = _mm512_dpbusd_epi32(p, q2, _mm512_set1_epi32(act4(a.add(8))));
                        let p = _mm512_dpbusd_epi32(p, q3, _mm512_set1_epi32(act4(a.add(12))));
                        isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(p, scale));
                    }
                }};
            }
            each_subblock!(subblock);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk.d.as_ptr() as *const __m256i));
            for r in 0..R {
                acc[r] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(isum[r]),
                    _mm512_mul_ps(d, _mm512_set1_ps(ys[r].d)),
                    acc[r],
                );
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.ptr.add((r0 + r) * out.n + col0), *acc);
        }
    }

    /// Rows `r0..r0 + R` against one column block as two halves of eight columns, 256-bit registers. Each
    /// `vpmaddubsw` pair is at most 2 · 63 · 128 = 16 128 in magnitude, exact in 16 bits; `vpmaddwd` with
    /// the scale in both halves of a column's lane then adds a pair of pairs times the scale, exactly.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize>(item: &Item<'_>, r0: usize) {
        let Item { w, lhs, out, col0 } = *item;
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for (b, blk) in w.iter().enumerate() {
            let ys = &lhs.q8()[b * lhs.rows + r0..][..R];
            let offsets = &lhs.extra[b * lhs.rows + r0..][..R];
            for h in 0..2 {
                let mut isum = [_mm256_setzero_si256(); R];
                macro_rules! subblock {
                    ($s:literal) => {{
                        let group = behind(&blk.groups[$s / 4], isum[R - 1]);
                        // SAFETY (loads): each reads within one `Group` field.
                        let bytes =
                            _mm_loadl_epi64((*group).scales.as_ptr().add(COLS * ($s % 4) + 8 * h) as *const __m128i);
                        let scale32 = _mm256_cvtepi8_epi32(bytes);
                        let scale16 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(bytes, bytes));
                        let mut q = [_mm256_setzero_si256(); 4];
                        for (t, q) in q.iter_mut().enumerate() {
                            *q = unpack!(
                                _mm256_loadu_si256,
                                _mm256_and_si256,
                                _mm256_or_si256,
                                _mm256_srli_epi16,
                                _mm256_slli_epi16,
                                _mm256_set1_epi8,
                                group,
                                $s,
                                t,
                                32 * h
                            );
                        }
                        for r in 0..R {
                            let a = ys[r].qs.as_ptr().add(16 * $s);
                            let mut p = _mm256_mullo_epi32(_mm256_set1_epi32(offsets[r][$s]), scale32);
                            for (t, q) in q.iter().enumerate() {
                                let pairs = _mm256_maddubs_epi16(*q, _mm256_set1_epi32(act4(a.add(4 * t))));
                                p = _mm256_add_epi32(p, _mm256_madd_epi16(pairs, scale16));
                            }
                            isum[r] = _mm256_add_epi32(isum[r], p);
                        }
                    }};
                }
                each_subblock!(subblock);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().add(8 * h) as *const __m128i));
                for r in 0..R {
                    let a = &mut acc[r][h];
                    *a = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum[r]),
                        _mm256_mul_ps(d, _mm256_set1_ps(ys[r].d)),
                        *a,
                    );
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

    /// A Q6_K matrix of `n` columns and `k` inputs, and `m` activation rows, from fixed patterns.
    fn case(n: usize, k: usize, m: usize) -> (QTensor, Tensor) {
        let dev = Device::Cpu;
        // Column-dependent ranges and signs, so that the scales differ and some are negative.
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                ((i * 7919 % 1013) as f32 / 1013.0 - 0.45)
                    * (0.05 + (i / k % 7) as f32 * 0.03)
                    * if i / 64 % 5 == 0 { -1.0 } else { 1.0 }
            })
            .collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q6K).unwrap();
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
        let lhs = Lhs::new(&values(x), k);
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut acc = 0f32;
                for b in 0..nb {
                    let src = &data[(c * nb + b) * GGUF_BLOCK..][..GGUF_BLOCK];
                    let q8 = &lhs.q8()[b * m + r];
                    let isum: i64 = (0..QK)
                        .map(|v| {
                            i64::from(src[192 + v / 16] as i8) * (i64::from(value(src, v)) - 32) * i64::from(q8.qs[v])
                        })
                        .sum();
                    let d = f16::from_le_bytes([src[208], src[209]]).to_f32();
                    acc = (isum as i32 as f32).mul_add(d * q8.d, acc);
                }
                y[r * n + c] = acc;
            }
        }
        y
    }

    #[test]
    fn q6k_x16_computes_the_reference_sums_on_every_tier() {
        let mut tiers = vec![Tier::Avx2];
        if super::super::avx512_vnni() {
            tiers.push(Tier::Avx512Vnni);
        }
        for (n, k) in [(16, 256), (48, 768)] {
            let (w, _) = case(n, k, 1);
            let ours = Q6Kx16::new(&w).unwrap().expect("repacks this shape");
            // Every tile height of both tiers, and tiles after a full one.
            for m in [1usize, 2, 3, 4, 5, 7, 8, 9, 13] {
                let (_, x) = case(n, k, m);
                let want = bits(&reference(&w, &x));
                let lhs = Lhs::new(&values(&x), k);
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
    fn q6k_x16_is_close_to_candle() {
        let (n, k, m) = (64, 1536, 3);
        let (w, x) = case(n, k, m);
        let ours = values(&Q6Kx16::new(&w).unwrap().unwrap().matmul(&x).unwrap());
        let theirs = values(&QMatMul::from_arc(std::sync::Arc::new(w)).unwrap().forward(&x).unwrap());
        let scale = theirs.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!((a - b).abs() <= 1e-5 * scale, "element {i}: {a} against candle's {b}");
        }
    }

    #[test]
    fn q6k_x16_rows_round_alike_in_any_batch() {
        let (n, k, m) = (32, 512, 17);
        let (w, x) = case(n, k, m);
        let w = Q6Kx16::new(&w).unwrap().unwrap();
        let all = bits(&values(&w.matmul(&x).unwrap()));
        for r in 0..m {
            let alone = bits(&values(&w.matmul(&x.narrow(0, r, 1).unwrap()).unwrap()));
            assert_eq!(all[r * n..(r + 1) * n], alone, "row {r} of {m}");
        }
    }

    #[test]
    fn q6k_x16_rows_are_candles_embedding_lookup() {
        let (n, k) = (32, 512);
        let (w, _) = case(n, k, 1);
        let ours = Q6Kx16::new(&w).unwrap().unwrap();
        let ids = [0u32, 31, 7, 16, 7];
        let want = w.embedding(&Tensor::new(&ids, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(bits(&ours.rows(&ids).unwrap()), bits(&values(&want)));
        assert!(ours.rows(&[32]).is_err());
    }

    #[test]
    fn q6k_x16_declines_shapes_it_does_not_tile_and_rejects_other_types() {
        let (w, _) = case(40, 256, 1);
        assert!(Q6Kx16::new(&w).unwrap().is_none());
        let w = QTensor::quantize(
            &Tensor::zeros((16, 256), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        assert!(Q6Kx16::new(&w).is_err());
    }
}

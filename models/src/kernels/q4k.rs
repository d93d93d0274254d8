//! Q4_K matmul over a compact repacked layout, bit-identical to candle's x86 repacked kernel.
//!
//! candle 0.11 repacks a Q4_K matrix into `TileQ4K`s that store each subblock's scale and minimum as f32:
//! 192 bytes per 256 weights of a column instead of the GGUF block's 144, and decode (one row, memory-bound)
//! reads all of them every step. [`Q4Kx16`] keeps the GGUF bytes (144 per column and superblock: f16 `d` and
//! `dmin`, the twelve packed 6-bit scale bytes, 128 bytes of nibbles), only rearranged so that sixteen output
//! columns sit side by side, one per 32-bit lane of a 512-bit register (or eight per 256-bit half). The
//! 6-bit scales are unpacked in registers, sixteen columns at a time, and each column's float arithmetic is
//! candle's, in candle's order, so the results are the same bits.
//!
//! Rows go eight at a time through each weight block, so a batch of decode rows reads the weights once. The
//! work runs on candle's worker pool, like candle's other quantized matmuls, and the activations are
//! quantized by [`super::q8k`], a vector copy of candle's quantizer.

use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::columns16::COLS;

/// Values per superblock (`QK_K`).
const QK: usize = 256;

/// Bytes of one GGUF `BlockQ4K`: `d`, `dmin` (f16), 12 scale bytes, 128 quant bytes.
const GGUF_BLOCK: usize = 144;

/// A Q4_K weight matrix (`[n, k]`, one row per output column) repacked for the CPU, built once at load by
/// [`Q4Kx16::new`] and used instead of the `QTensor` by [`Q4Kx16::matmul`].
///
/// Columns `16j..16j + 16` form column block `j`; entry `j * nb + b` of `blocks` holds superblock `b`
/// (values `256b..256b + 256`) of those sixteen columns. It takes the same 144 bytes per 256 weights of a
/// column as the `QTensor`.
pub struct Q4Kx16 {
    /// Output columns (rows of the weight matrix), a multiple of 16.
    n: usize,
    /// Input features, a multiple of 256.
    k: usize,
    /// `n / 16 * (k / 256)` blocks, column-block-major.
    blocks: Vec<Block>,
}

/// One superblock of sixteen columns, each field laid out so that one load covers all sixteen columns with
/// column `c` in 32-bit lane `c` (or, for `d` and `dmin`, in f16 `c`).
///
/// - `scales[64i + 4c + j]` is byte `4i + j` of column `c`'s twelve packed 6-bit scale bytes (`i` in 0..3).
/// - `qs[64(4s + t) + 4c + j]`, for subblock `s` (0..8), `t` in 0..4 and `j` in 0..4, holds column `c`'s
///   value `32s + 4t + j` in its low nibble and value `32s + 16 + 4t + j` in its high nibble, so that the
///   low nibbles of one 64-byte load meet four consecutive activations and the high nibbles the four
///   sixteen places further on, all in subblock `s`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Block {
    d: [f16; COLS],
    dmin: [f16; COLS],
    scales: [u8; 12 * COLS],
    qs: [u8; QK / 2 * COLS],
}

const _: () = assert!(std::mem::size_of::<Block>() == GGUF_BLOCK * COLS);

impl Block {
    const ZERO: Self = Self {
        d: [f16::ZERO; COLS],
        dmin: [f16::ZERO; COLS],
        scales: [0; 12 * COLS],
        qs: [0; QK / 2 * COLS],
    };
}

impl std::fmt::Debug for Q4Kx16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q4Kx16")
            .field("n", &self.n)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

impl Q4Kx16 {
    /// Repack a Q4_K `QTensor` of shape `[n, k]` where candle would run its x86 repacked kernel (`n` a
    /// multiple of 16, `k` of 256, a CPU with AVX2, FMA and F16C); `None` elsewhere, where candle runs another
    /// kernel that rounds differently. An error for any other type or rank, or a storage of the wrong size.
    pub fn new(w: &QTensor) -> candle_core::Result<Option<Self>> {
        if w.dtype() != GgmlDType::Q4K {
            candle_core::bail!("Q4Kx16::new: a {:?} tensor, not Q4_K", w.dtype());
        }
        let (n, k) = w.shape().dims2()?;
        if !matches!(w.device(), Device::Cpu) || k == 0 || k % QK != 0 || n % COLS != 0 || tier().is_none() {
            return Ok(None);
        }
        let nb = k / QK;
        let data = w.data()?;
        if data.len() != n * nb * GGUF_BLOCK {
            candle_core::bail!("Q4Kx16::new: {} bytes for a [{n}, {k}] Q4_K matrix", data.len());
        }
        let blocks = super::columns16::repack(&data, n, nb, GGUF_BLOCK, Block::ZERO, repack_column);
        Ok(Some(Self { n, k, blocks }))
    }

    /// The weight's shape, `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `x` (`[m, k]`, f32, CPU) times the transpose of the weight → `[m, n]`.
    ///
    /// Bit-identical to candle's `QMatMul::forward`: the activations are quantized to Q8_K exactly as
    /// candle's `BlockQ8K::from_float` does, each subblock's integer sum is exact, and every column
    /// accumulates candle's float terms in candle's order. Each row's arithmetic is the same whatever the other
    /// rows and their number.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = Self::matmul_many(&[self], x)?;
        Ok(y.remove(0))
    }

    /// [`Self::matmul`] of the same `x` by each of `ws` (which must share `k`), the activations quantized
    /// once and all the products in one parallel loop: a layer's q/k/v, or gate and up, take one pass. The
    /// results are those of [`Self::matmul`], bit for bit.
    pub fn matmul_many(ws: &[&Self], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let Some(k) = super::shared_k(ws.iter().map(|w| w.k), "Q4Kx16::matmul_many")? else {
            return Ok(Vec::new());
        };
        let Some(tier) = tier() else {
            candle_core::bail!("Q4Kx16::matmul: this CPU lacks AVX2, FMA or F16C")
        };
        let Some((m, xs)) = super::activation_rows(x, ws[0].n, k, "Q4Kx16::matmul")? else {
            return ws
                .iter()
                .map(|w| Tensor::zeros((0, w.n), candle_core::DType::F32, &Device::Cpu))
                .collect();
        };
        let lhs = Lhs::new(&xs, k);
        let ys = Self::matmul_lhs_many(ws, &lhs, tier);
        ys.into_iter()
            .zip(ws)
            .map(|(y, w)| Tensor::from_vec(y, (m, w.n), &Device::Cpu))
            .collect()
    }

    /// The product with quantized rows, on one kernel tier; row-major `[m, n]`.
    #[cfg(test)]
    fn matmul_lhs(&self, lhs: &Lhs, tier: Tier) -> Vec<f32> {
        Self::matmul_lhs_many(&[self], lhs, tier).remove(0)
    }

    /// The products of `ws` (of one `k`) with quantized rows, on one kernel tier; each row-major `[m, n]`.
    fn matmul_lhs_many(ws: &[&Self], lhs: &Lhs, tier: Tier) -> Vec<Vec<f32>> {
        let ns: Vec<usize> = ws.iter().map(|w| w.n).collect();
        // No software prefetch: the weights stream in order, and the hardware prefetcher alone read them faster
        // (q4kbench, one row, alternating builds: 7B `ffn_gate` 1170-1330 µs with 36 lines asked for two
        // superblocks ahead, 740-1090 without; no shape at 1 or 8 rows got slower).
        super::column_blocks_many(lhs.rows, &ns, COLS, tier.max_rows(), |i, j, r0, rows, out| {
            let nb = ws[i].k / QK;
            let item = Item {
                w: &ws[i].blocks[j * nb..(j + 1) * nb],
                lhs,
                out,
                col0: COLS * j,
            };
            // SAFETY: `tier()` detected this tier's CPU features; `w` is one column block of `nb` superblocks,
            // `lhs` has rows `r0..r0 + rows`, and the kernel writes only rows `r0..r0 + rows`, columns
            // `16j..16j + 16` of `out` (`column_blocks_many`' contract).
            unsafe { tier.run(&item, r0, rows) }
        })
    }
}

/// Copy one GGUF `BlockQ4K` (`src`, 144 bytes) into lane `c` of `dst`.
fn repack_column(src: &[u8], c: usize, dst: &mut Block) {
    dst.d[c] = f16::from_le_bytes([src[0], src[1]]);
    dst.dmin[c] = f16::from_le_bytes([src[2], src[3]]);
    let (scales, qs) = (&src[4..16], &src[16..144]);
    for i in 0..3 {
        dst.scales[64 * i + 4 * c..64 * i + 4 * c + 4].copy_from_slice(&scales[4 * i..4 * i + 4]);
    }
    // GGUF: byte 32h + j holds value 64h + j (low nibble) and value 64h + 32 + j (high nibble).
    let value = |v: usize| {
        let byte = qs[32 * (v / 64) + v % 32];
        if v % 64 < 32 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    };
    for s in 0..8 {
        for t in 0..4 {
            for j in 0..4 {
                let v = 32 * s + 4 * t + j;
                dst.qs[64 * (4 * s + t) + 4 * c + j] = value(v) | (value(v + 16) << 4);
            }
        }
    }
}

/// One work item: a column block against the quantized rows.
type Item<'a> = super::columns16::Item<'a, Block, Lhs>;

/// The activations, with per block and subblock `s` the factor of the weight's minimum,
/// `d * (bsums[2s] + bsums[2s + 1])`, rounded as candle rounds it.
type Lhs = super::q8k::Q8KRows<[f32; 8]>;

impl Lhs {
    /// Quantize rows of `k` values (`xs`: `[m, k]`, row-major) exactly as candle's `from_float` does.
    fn new(xs: &[f32], k: usize) -> Self {
        Self::quantize(xs, k, |q8| {
            std::array::from_fn(|s| q8.d * (q8.bsums[2 * s] as i32 + q8.bsums[2 * s + 1] as i32) as f32)
        })
    }
}

/// The instruction sets our kernels come in. All compute the same bits; they differ in how the exact
/// integer sums are formed and in register width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    /// 512-bit registers (sixteen columns each) and `vpdpbusd`.
    Avx512Vnni,
    /// 256-bit registers (eight columns each) and the VEX `vpdpbusd`.
    AvxVnni,
    /// 256-bit registers, `vpmaddubsw` then `vpmaddwd`.
    Avx2,
}

/// The best tier this CPU runs, detected once; `None` without AVX2, FMA and F16C (then candle's repacked
/// kernel does not run either, and [`Q4Kx16::new`] declines).
fn tier() -> Option<Tier> {
    static TIER: OnceLock<Option<Tier>> = OnceLock::new();
    *TIER.get_or_init(|| available_tiers().first().copied())
}

/// Every tier this CPU runs, best first.
fn available_tiers() -> Vec<Tier> {
    let mut tiers = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            if super::avx512_vnni() {
                tiers.push(Tier::Avx512Vnni);
            }
            if has!("avxvnni") {
                tiers.push(Tier::AvxVnni);
            }
            tiers.push(Tier::Avx2);
        }
    }
    tiers
}

impl Tier {
    /// Rows per kernel call: each weight block is loaded and unpacked once for that many rows.
    fn max_rows(self) -> usize {
        match self {
            Tier::Avx512Vnni => 8,
            Tier::AvxVnni | Tier::Avx2 => 2,
        }
    }

    /// Rows `r0..r0 + rows` (at most [`Self::max_rows`]) against the item's column block.
    ///
    /// # Safety
    /// The CPU must have this tier's features, and the rows and columns must lie within the item's `lhs`
    /// and `out`.
    #[allow(unused_variables)]
    unsafe fn run(self, item: &Item<'_>, r0: usize, rows: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! dispatch {
                ($kernel:ident, $($r:literal)*) => {
                    match rows {
                        $( $r => x86::$kernel::<$r>(item, r0), )*
                        _ => unreachable!("{rows} rows"),
                    }
                };
            }
            // SAFETY: forwarded from the caller.
            unsafe {
                match self {
                    Tier::Avx512Vnni => dispatch!(tile_avx512, 1 2 3 4 5 6 7 8),
                    Tier::AvxVnni => dispatch!(tile_avxvnni, 1 2),
                    Tier::Avx2 => dispatch!(tile_avx2, 1 2),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no Q4_K kernel tier off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The kernels proper. Per column, they all run candle's sequence: for each superblock and subblock `s`,
    //! `acc = fma(float(isum), scale · d_act, acc)` then `acc = -(min · d_act·bsum) + acc` (one rounding),
    //! with `scale = d · sc` and `min = dmin · mn` exact in f32.

    use super::Item;
    use std::arch::x86_64::*;

    /// The 6-bit fields in a column's twelve packed scale bytes, read as three dwords `a | b | c` (one
    /// column per 32-bit lane): byte `j` of `sc[0]` is subblock `j`'s scale, of `sc[1]` subblock `4 + j`'s,
    /// and likewise `mn` for the minimums (ggml's `get_scale_min_k4`, four subblocks per dword).
    macro_rules! unpack_scales {
        ($and:ident, $or:ident, $srli:ident, $set1:ident, $a:expr, $b:expr, $c:expr) => {{
            let (a, b, c) = ($a, $b, $c);
            let (m3f, m0f, m30) = ($set1(0x3F3F_3F3F), $set1(0x0F0F_0F0F), $set1(0x3030_3030));
            let sc_lo = $and(a, m3f);
            let mn_lo = $and(b, m3f);
            let sc_hi = $or($and(c, m0f), $and($srli::<2>(a), m30));
            let mn_hi = $or($and($srli::<4>(c), m0f), $and($srli::<2>(b), m30));
            ([sc_lo, sc_hi], [mn_lo, mn_hi])
        }};
    }

    /// Byte `j` (0..4) of each 32-bit lane, as a 32-bit integer.
    macro_rules! byte_lane {
        ($and:ident, $srlv:ident, $set1:ident, $v:expr, $j:expr) => {
            $and($srlv($v, $set1(8 * $j as i32)), $set1(0xFF))
        };
    }

    /// The four activation bytes at `p`, as one integer to broadcast.
    #[inline(always)]
    unsafe fn act4(p: *const i8) -> i32 {
        // SAFETY: the caller points within a Q8_K block's 256 quants, four bytes before its end at most.
        unsafe { (p as *const i32).read_unaligned() }
    }

    /// Rows `r0..r0 + R` against one column block (`w`: its superblocks), sixteen columns per 512-bit
    /// register. With few rows, two integer accumulators per row (low and high nibbles) keep the dependent
    /// `vpdpbusd` chains short; with more, the rows' chains are enough and one accumulator saves registers.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile_avx512<const R: usize>(item: &Item<'_>, r0: usize) {
        let Item { w, lhs, out, col0 } = *item;
        let split = R < 4;
        let low4 = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, blk) in w.iter().enumerate() {
            let ys = &lhs.q8()[b * lhs.rows + r0..][..R];
            let dbs = &lhs.extra[b * lhs.rows + r0..][..R];
            // SAFETY (loads): each reads within one `Block` field of that size.
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk.d.as_ptr() as *const __m256i));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(blk.dmin.as_ptr() as *const __m256i));
            let s = blk.scales.as_ptr() as *const __m512i;
            let (sc, mn) = unpack_scales!(
                _mm512_and_si512,
                _mm512_or_si512,
                _mm512_srli_epi32,
                _mm512_set1_epi32,
                _mm512_loadu_si512(s),
                _mm512_loadu_si512(s.add(1)),
                _mm512_loadu_si512(s.add(2))
            );
            for s in 0..8 {
                let mut lo = [_mm512_setzero_si512(); R];
                let mut hi = [_mm512_setzero_si512(); R];
                for t in 0..4 {
                    let q = _mm512_loadu_si512(blk.qs.as_ptr().add(64 * (4 * s + t)) as *const __m512i);
                    let (ql, qh) = (
                        _mm512_and_si512(q, low4),
                        _mm512_and_si512(_mm512_srli_epi16::<4>(q), low4),
                    );
                    for r in 0..R {
                        let a = ys[r].qs.as_ptr().add(32 * s + 4 * t);
                        lo[r] = _mm512_dpbusd_epi32(lo[r], ql, _mm512_set1_epi32(act4(a)));
                        let h = if split { &mut hi[r] } else { &mut lo[r] };
                        *h = _mm512_dpbusd_epi32(*h, qh, _mm512_set1_epi32(act4(a.add(16))));
                    }
                }
                let scale = _mm512_mul_ps(
                    d,
                    _mm512_cvtepi32_ps(byte_lane!(
                        _mm512_and_si512,
                        _mm512_srlv_epi32,
                        _mm512_set1_epi32,
                        sc[s / 4],
                        s % 4
                    )),
                );
                let min = _mm512_mul_ps(
                    dmin,
                    _mm512_cvtepi32_ps(byte_lane!(
                        _mm512_and_si512,
                        _mm512_srlv_epi32,
                        _mm512_set1_epi32,
                        mn[s / 4],
                        s % 4
                    )),
                );
                for r in 0..R {
                    let isum = if split { _mm512_add_epi32(lo[r], hi[r]) } else { lo[r] };
                    acc[r] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(isum),
                        _mm512_mul_ps(scale, _mm512_set1_ps(ys[r].d)),
                        acc[r],
                    );
                    acc[r] = _mm512_fnmadd_ps(min, _mm512_set1_ps(dbs[r][s]), acc[r]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.ptr.add((r0 + r) * out.n + col0), *acc);
        }
    }

    /// The 256-bit kernels: the column block as two halves of eight columns, one integer accumulator per row
    /// and half, filled by `$step` and turned into exact i32 sums by `$finish`.
    macro_rules! tile_256 {
        ($name:ident, $features:literal, $step:ident, $finish:ident) => {
            /// Rows `r0..r0 + R` against one column block, eight columns per 256-bit register.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const R: usize>(item: &Item<'_>, r0: usize) {
                let Item { w, lhs, out, col0 } = *item;
                let low4 = _mm256_set1_epi8(0x0F);
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                for (b, blk) in w.iter().enumerate() {
                    let ys = &lhs.q8()[b * lhs.rows + r0..][..R];
                    let dbs = &lhs.extra[b * lhs.rows + r0..][..R];
                    for h in 0..2 {
                        let d = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().add(8 * h) as *const __m128i));
                        let dmin = _mm256_cvtph_ps(_mm_loadu_si128(blk.dmin.as_ptr().add(8 * h) as *const __m128i));
                        let s = blk.scales.as_ptr().add(32 * h);
                        let (sc, mn) = unpack_scales!(
                            _mm256_and_si256,
                            _mm256_or_si256,
                            _mm256_srli_epi32,
                            _mm256_set1_epi32,
                            _mm256_loadu_si256(s as *const __m256i),
                            _mm256_loadu_si256(s.add(64) as *const __m256i),
                            _mm256_loadu_si256(s.add(128) as *const __m256i)
                        );
                        for s in 0..8 {
                            let mut isum = [_mm256_setzero_si256(); R];
                            for t in 0..4 {
                                let q = _mm256_loadu_si256(
                                    blk.qs.as_ptr().add(64 * (4 * s + t) + 32 * h) as *const __m256i
                                );
                                let (ql, qh) = (
                                    _mm256_and_si256(q, low4),
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4),
                                );
                                for r in 0..R {
                                    let a = ys[r].qs.as_ptr().add(32 * s + 4 * t);
                                    let (al, ah) = (_mm256_set1_epi32(act4(a)), _mm256_set1_epi32(act4(a.add(16))));
                                    isum[r] = $step(isum[r], ql, qh, al, ah);
                                }
                            }
                            let scale = _mm256_mul_ps(
                                d,
                                _mm256_cvtepi32_ps(byte_lane!(
                                    _mm256_and_si256,
                                    _mm256_srlv_epi32,
                                    _mm256_set1_epi32,
                                    sc[s / 4],
                                    s % 4
                                )),
                            );
                            let min = _mm256_mul_ps(
                                dmin,
                                _mm256_cvtepi32_ps(byte_lane!(
                                    _mm256_and_si256,
                                    _mm256_srlv_epi32,
                                    _mm256_set1_epi32,
                                    mn[s / 4],
                                    s % 4
                                )),
                            );
                            for r in 0..R {
                                let a = &mut acc[r][h];
                                *a = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps($finish(isum[r])),
                                    _mm256_mul_ps(scale, _mm256_set1_ps(ys[r].d)),
                                    *a,
                                );
                                *a = _mm256_fnmadd_ps(min, _mm256_set1_ps(dbs[r][s]), *a);
                            }
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    for (h, acc) in acc.iter().enumerate() {
                        _mm256_storeu_ps(out.ptr.add((r0 + r) * out.n + col0 + 8 * h), *acc);
                    }
                }
            }
        };
    }

    /// `isum += ql·al + qh·ah` per 32-bit lane, with the VEX `vpdpbusd`.
    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    unsafe fn step_avxvnni(isum: __m256i, ql: __m256i, qh: __m256i, al: __m256i, ah: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(isum, ql, al), qh, ah)
    }

    /// The sums of [`step_avxvnni`] are already 32-bit.
    #[inline(always)]
    fn finish_i32(isum: __m256i) -> __m256i {
        isum
    }

    /// `isum += ql·al + qh·ah` per 16-bit pair. Each `maddubs` lane is at most 2·15·128 = 3840 in magnitude,
    /// and a subblock adds eight of them (30720 < 32767), so the 16-bit sums are exact.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn step_avx2(isum: __m256i, ql: __m256i, qh: __m256i, al: __m256i, ah: __m256i) -> __m256i {
        _mm256_add_epi16(
            isum,
            _mm256_add_epi16(_mm256_maddubs_epi16(ql, al), _mm256_maddubs_epi16(qh, ah)),
        )
    }

    /// The 16-bit pair sums of [`step_avx2`] added into 32-bit lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn finish_avx2(isum: __m256i) -> __m256i {
        _mm256_madd_epi16(isum, _mm256_set1_epi16(1))
    }

    tile_256!(tile_avxvnni, "avx2,fma,f16c,avxvnni", step_avxvnni, finish_i32);
    tile_256!(tile_avx2, "avx2,fma,f16c", step_avx2, finish_avx2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    /// A Q4_K matrix of `n` columns and `k` inputs, and `m` activation rows, from fixed patterns.
    fn case(n: usize, k: usize, m: usize) -> (QTensor, Tensor) {
        let dev = Device::Cpu;
        // Column-dependent ranges, so that the columns' scales and minimums differ.
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.3) * (0.05 + (i / k % 7) as f32 * 0.03))
            .collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q4K).unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * (1.0 + (i % 13) as f32))
            .collect();
        (w, Tensor::from_vec(x, (m, k), &dev).unwrap())
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    #[test]
    fn q4k_matmul_is_bit_identical_to_candle() {
        for (n, k) in [(16, 256), (48, 512), (1536, 1536), (256, 1536)] {
            let (w, _) = case(n, k, 1);
            let w = std::sync::Arc::new(w);
            let ours = Q4Kx16::new(&w).unwrap().expect("candle repacks this shape");
            let theirs = QMatMul::from_arc(w).unwrap();
            for m in [1usize, 2, 3, 5, 8, 17] {
                let (_, x) = case(n, k, m);
                assert_eq!(
                    bits(&ours.matmul(&x).unwrap()),
                    bits(&theirs.forward(&x).unwrap()),
                    "[{n}, {k}], m = {m}"
                );
            }
        }
    }

    #[test]
    fn q4k_matmul_is_bit_identical_to_candle_on_a_wide_matrix() {
        let (n, k) = (8960, 1536);
        let (w, _) = case(n, k, 1);
        let w = std::sync::Arc::new(w);
        let ours = Q4Kx16::new(&w).unwrap().unwrap();
        let theirs = QMatMul::from_arc(w).unwrap();
        for m in [1usize, 3, 8] {
            let (_, x) = case(n, k, m);
            assert_eq!(
                bits(&ours.matmul(&x).unwrap()),
                bits(&theirs.forward(&x).unwrap()),
                "m = {m}"
            );
        }
    }

    #[test]
    fn q4k_rows_round_alike_in_any_batch() {
        let (n, k, m) = (48, 512, 17);
        let (w, x) = case(n, k, m);
        let w = Q4Kx16::new(&w).unwrap().unwrap();
        let all = bits(&w.matmul(&x).unwrap());
        // The same rows in reverse order: each lands at another place in the row tiles.
        let reversed = Tensor::from_vec((0..m as u32).rev().collect::<Vec<_>>(), m, &Device::Cpu).unwrap();
        let rev = bits(&w.matmul(&x.index_select(&reversed, 0).unwrap()).unwrap());
        for r in 0..m {
            let alone = bits(&w.matmul(&x.narrow(0, r, 1).unwrap()).unwrap());
            assert_eq!(all[r * n..(r + 1) * n], alone, "row {r} of {m}");
            assert_eq!(rev[(m - 1 - r) * n..(m - r) * n], alone, "row {r}, reversed");
        }
    }

    /// A layer's q/k/v in one pass: each product the bits of its own `matmul`, whatever its place in the list;
    /// weights of different `k` are an error.
    #[test]
    fn q4k_matmul_many_is_each_matmul() {
        let k = 512;
        let ws: Vec<Q4Kx16> = [(64, 1), (16, 2), (32, 3)]
            .into_iter()
            .map(|(n, seed)| {
                let w: Vec<f32> = (0..n * k)
                    .map(|i| (((i * 7919 + seed * 104729) % 1013) as f32 / 1013.0 - 0.5) * 0.2)
                    .collect();
                let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(), GgmlDType::Q4K).unwrap();
                Q4Kx16::new(&w).unwrap().unwrap()
            })
            .collect();
        for m in [1usize, 8, 9] {
            let (_, x) = case(64, k, m);
            let many = Q4Kx16::matmul_many(&ws.iter().collect::<Vec<_>>(), &x).unwrap();
            assert_eq!(many.len(), ws.len());
            for (i, (w, y)) in ws.iter().zip(&many).enumerate() {
                assert_eq!(bits(y), bits(&w.matmul(&x).unwrap()), "weight {i}, m = {m}");
            }
        }
        let (other, _) = case(16, 256, 1);
        let other = Q4Kx16::new(&other).unwrap().unwrap();
        let (_, x) = case(16, k, 2);
        assert!(Q4Kx16::matmul_many(&[&ws[0], &other], &x).is_err());
    }

    #[test]
    fn q4k_every_tier_computes_the_same_bits() {
        let (n, k) = (64, 768);
        let (w, _) = case(n, k, 1);
        let w = Q4Kx16::new(&w).unwrap().unwrap();
        let tiers = available_tiers();
        assert!(
            !tiers.is_empty() || !cfg!(target_arch = "x86_64"),
            "an x86-64-v3 build runs on AVX2 at least"
        );
        // Every tile height of every tier, and tiles after a full one.
        for m in [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 15] {
            let (_, x) = case(n, k, m);
            let lhs = Lhs::new(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), k);
            let results: Vec<Vec<u32>> = tiers
                .iter()
                .map(|&t| w.matmul_lhs(&lhs, t).into_iter().map(f32::to_bits).collect())
                .collect();
            for (t, r) in tiers.iter().zip(&results) {
                assert_eq!(r, &results[0], "{t:?} against {:?}, m = {m}", tiers[0]);
            }
        }
    }

    #[test]
    fn q4k_declines_shapes_candle_does_not_repack() {
        // Column counts that are not a multiple of 16: candle runs its generic kernel there.
        for (n, k) in [(40, 256), (8, 512)] {
            let (w, _) = case(n, k, 1);
            assert!(Q4Kx16::new(&w).unwrap().is_none(), "[{n}, {k}]");
        }
    }

    #[test]
    fn q4k_rejects_other_types() {
        let w = QTensor::quantize(
            &Tensor::zeros((16, 256), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        assert!(Q4Kx16::new(&w).is_err());
    }
}

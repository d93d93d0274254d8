//! Attention over the paged KV cache, on the CPU, without gathering the cache into contiguous tensors.
//!
//! For every new token `t` of sequence `s` at position `p`, and every query head `h` (with key/value head
//! `h / group`), the kernel walks `s`'s block table over positions `0..=p`:
//! ```text
//! score_j = (q_t,h · k_j) * (1 / sqrt(head_dim))   j = 0..=p   (causal: later positions are never read)
//! w       = softmax(score)
//! out_t,h = Σ_j w_j v_j
//! ```
//! Work items are (token, head) pairs, spread over candle's barrier pool. Each item's result depends only on
//! its own query and the cached keys/values, never on what else is in the batch or how a prompt was chunked,
//! so batching and preemption do not change outputs.
//!
//! The arithmetic reproduces candle's CPU ops as candle-transformers' reference models use them (a single
//! full-prompt prefill, then one token per step), so greedy outputs agree with the reference to the last bit
//! in decode. gemm, under candle's matmul, rounds a score (a dot product over the head dimension) in one of
//! three orders depending on the matrix shape; [`ScoreOrder`] picks the order the reference would have used
//! from the token's own position and its prompt length only — never from the batch or the chunking — so the
//! kernel stays batch-invariant. The softmax denominator is summed in candle's `vec_sum` order and the output
//! is one sequential FMA chain over positions, as gemm does for `weights × values`.

use crate::nn::Rotary;
use crate::{Batch, KvCache, ModelError};

/// Write the new keys and values of `batch` into layer `layer` of `cache`.
///
/// `k` and `v` are `[tokens][num_kv_heads][head_dim]`, tokens in batch order.
pub fn write_kv(cache: &mut KvCache, layer: usize, k: &[f32], v: &[f32], batch: &Batch<'_>) -> Result<(), ModelError> {
    if cache.is_tensors() {
        return Err(ModelError::InvalidBatch(
            "write_kv needs a host KV cache; a tensor cache is written by attention_ops".into(),
        ));
    }
    let layout = cache.layout();
    let (heads, dim, bs) = (layout.num_kv_heads, layout.head_dim, cache.block_size());
    let expected = batch.tokens.len() * heads * dim;
    if k.len() != expected || v.len() != expected {
        return Err(ModelError::InvalidBatch(format!(
            "k/v have {} values, expected {expected}",
            k.len()
        )));
    }
    let mut t = 0;
    for seq in batch.seqs {
        for pos in seq.num_computed..seq.num_computed + seq.num_new {
            let (block, slot) = (seq.block_table[pos / bs] as usize, pos % bs);
            for h in 0..heads {
                let base = cache.block_offset(block, h);
                let src = (t * heads + h) * dim;
                let kv = cache.layer_mut(layer);
                for d in 0..dim {
                    kv.k[base + d * bs + slot] = k[src + d];
                }
                kv.v[base + slot * dim..base + (slot + 1) * dim].copy_from_slice(&v[src..src + dim]);
            }
            t += 1;
        }
    }
    Ok(())
}

/// Causal attention of the batch's queries over layer `layer` of `cache` (which must already hold the new
/// tokens' keys and values, see [`write_kv`]).
///
/// `q` is `[tokens][num_heads][head_dim]`; the result has the same shape.
pub fn paged_attention(q: &[f32], cache: &KvCache, layer: usize, batch: &Batch<'_>, num_heads: usize) -> Vec<f32> {
    let layout = cache.layout();
    let (kv_heads, dim) = (layout.num_kv_heads, layout.head_dim);
    let group = num_heads / kv_heads;
    // candle divides a tensor by a float as an affine map with the reciprocal.
    let inv_scale = (1.0 / (dim as f64).sqrt()) as f32;
    let kv = cache.layer(layer);

    // Per token: (sequence index, position).
    let mut token_seq = Vec::with_capacity(batch.tokens.len());
    for (s, seq) in batch.seqs.iter().enumerate() {
        token_seq.extend((seq.num_computed..seq.num_computed + seq.num_new).map(|p| (s, p)));
    }

    let regions = Regions::new(kv, cache);
    let mut out = vec![0f32; q.len()];
    crate::kernels::for_each_chunk_init(&mut out, dim, Scratch::default, |scratch: &mut Scratch, item, out| {
        let (t, h) = (item / num_heads, item % num_heads);
        let (s, pos) = token_seq[t];
        let head = Head {
            regions,
            cache,
            table: batch.seqs[s].block_table,
            kvh: h / group,
            pos,
            prompt_len: batch.seqs[s].prompt_len,
            inv_scale,
        };
        // SAFETY: nothing writes the cache during this call (`cache` is borrowed shared).
        unsafe {
            head.attend(
                &mut scratch.scores,
                &mut scratch.acc,
                &q[item * dim..(item + 1) * dim],
                out,
            )
        };
    });
    out
}

/// Raw access to one layer's keys and values, one (block, head) region at a time (`head_dim * block_size`
/// values each), so that the fused kernel's work items can write a decode token's keys and values into the
/// regions they alone read while other items read theirs.
#[derive(Clone, Copy)]
struct Regions {
    k: *mut f32,
    v: *mut f32,
    /// Values in each of `k` and `v`.
    len: usize,
    /// Values per region.
    region: usize,
}

// SAFETY: the pointers are only dereferenced through `keys`, `values` and `write`, whose callers promise
// that no region is written while another thread reads it.
unsafe impl Send for Regions {}
unsafe impl Sync for Regions {}

impl Regions {
    /// Read-only access ([`Self::write`] must not be called on it).
    fn new(kv: &crate::kv_cache::LayerKv, cache: &KvCache) -> Self {
        let region = cache.block_size() * cache.layout().head_dim;
        Self {
            k: kv.k.as_ptr() as *mut f32,
            v: kv.v.as_ptr() as *mut f32,
            len: kv.k.len().min(kv.v.len()),
            region,
        }
    }

    /// Read and write access.
    fn new_mut(kv: &mut crate::kv_cache::LayerKv, cache_block_size: usize, head_dim: usize) -> Self {
        let len = kv.k.len().min(kv.v.len());
        Self {
            k: kv.k.as_mut_ptr(),
            v: kv.v.as_mut_ptr(),
            len,
            region: cache_block_size * head_dim,
        }
    }

    /// The region at `offset` (a [`KvCache::block_offset`]) of `base`.
    ///
    /// # Safety
    /// No thread writes this region while the slice lives.
    unsafe fn slice<'a>(&self, base: *mut f32, offset: usize) -> &'a [f32] {
        assert!(
            offset + self.region <= self.len,
            "KV region {offset} past the layer's {} values",
            self.len
        );
        // SAFETY: within the buffer (checked above); the caller rules out concurrent writes.
        unsafe { std::slice::from_raw_parts(base.add(offset), self.region) }
    }

    /// The keys of the region at `offset`: `[head_dim][block_size]`.
    ///
    /// # Safety
    /// As [`Self::slice`].
    unsafe fn keys<'a>(&self, offset: usize) -> &'a [f32] {
        // SAFETY: forwarded.
        unsafe { self.slice(self.k, offset) }
    }

    /// The values of the region at `offset`: `[block_size][head_dim]`.
    ///
    /// # Safety
    /// As [`Self::slice`].
    unsafe fn values<'a>(&self, offset: usize) -> &'a [f32] {
        // SAFETY: forwarded.
        unsafe { self.slice(self.v, offset) }
    }

    /// Store one position's key `k` (dimension-major, at `slot`) and value `v` into the region at `offset`.
    ///
    /// # Safety
    /// `self` comes from [`Self::new_mut`], and no other thread reads or writes this region meanwhile.
    unsafe fn write(&self, offset: usize, slot: usize, k: &[f32], v: &[f32]) {
        let (dim, bs) = (k.len(), self.region / k.len().max(1));
        assert!(
            offset + self.region <= self.len && slot < bs && v.len() == dim,
            "KV write out of its region"
        );
        // SAFETY: within the region (checked above); the caller rules out other accesses to it.
        unsafe {
            for (d, &x) in k.iter().enumerate() {
                *self.k.add(offset + d * bs + slot) = x;
            }
            std::ptr::copy_nonoverlapping(v.as_ptr(), self.v.add(offset + slot * dim), dim);
        }
    }
}

/// One query head of one token, attending over its sequence's cached keys and values.
struct Head<'a> {
    regions: Regions,
    cache: &'a KvCache,
    table: &'a [u32],
    /// The key/value head.
    kvh: usize,
    /// The token's position: keys `0..=pos` are read.
    pos: usize,
    prompt_len: usize,
    /// `1 / sqrt(head_dim)`, as candle computes it.
    inv_scale: f32,
}

impl Head<'_> {
    /// The head's output for query `q` (rotated) into `out`; `scores` and `acc` are scratch.
    ///
    /// # Safety
    /// No thread writes the regions of the sequence's blocks `0..=pos / block_size` for this head meanwhile.
    unsafe fn attend(&self, scores: &mut Vec<f32>, acc: &mut Vec<f32>, q: &[f32], out: &mut [f32]) {
        let Self {
            regions,
            cache,
            table,
            kvh,
            pos,
            prompt_len,
            inv_scale,
        } = *self;
        let (dim, bs) = (q.len(), cache.block_size());
        let len = pos + 1;
        let region = |j: usize| cache.block_offset(table[j / bs] as usize, kvh);

        // Scores, one block of positions at a time: a block's keys are stored dimension-major, so the
        // per-position accumulator chains run side by side in vector registers.
        let order = ScoreOrder::for_token(pos, prompt_len);
        scores.clear();
        for b in 0..len.div_ceil(bs) {
            // SAFETY: forwarded from the caller.
            let keys = unsafe { regions.keys(region(b * bs)) };
            block_scores(order, q, keys, bs, acc, scores);
        }
        scores.truncate(len);
        let mut max = f32::NEG_INFINITY;
        for s in scores.iter_mut() {
            *s *= inv_scale;
            max = max.max(*s);
        }
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
        }
        // The reference sums a prompt row over the whole (masked) prompt, a decode row over `pos + 1` scores;
        // masked entries are zeros, which only matter for which accumulator each score lands in.
        let row_len = if pos < prompt_len { prompt_len } else { len };
        let sum = candle_vec_sum(scores, row_len);
        for e in scores.iter_mut() {
            *e /= sum;
        }
        // Output: one sequential FMA chain over positions per dimension, 64 (or 32) dimensions at a time in
        // registers, so that eight (or four) independent vector chains hide the FMA latency.
        // SAFETY: forwarded from the caller.
        let value = |j: usize, d0: usize| unsafe { &regions.values(region(j))[(j % bs) * dim + d0..] };
        let mut d0 = 0;
        while d0 + 64 <= dim {
            out[d0..d0 + 64].copy_from_slice(&weighted_values::<64>(scores, |j| value(j, d0)));
            d0 += 64;
        }
        while d0 + 32 <= dim {
            out[d0..d0 + 32].copy_from_slice(&weighted_values::<32>(scores, |j| value(j, d0)));
            d0 += 32;
        }
        for d in d0..dim {
            let mut o = 0f32;
            for (j, &w) in scores.iter().enumerate() {
                o = w.mul_add(value(j, d)[0], o);
            }
            out[d] = o;
        }
    }
}

/// `Σ_j w_j v_j` over `W` consecutive dimensions, each one sequential FMA chain over positions `j` (as gemm
/// runs `weights × values`); `value(j)` starts at position `j`'s first value of these dimensions.
#[inline(always)]
fn weighted_values<'v, const W: usize>(weights: &[f32], value: impl Fn(usize) -> &'v [f32]) -> [f32; W] {
    let mut o = [0f32; W];
    for (j, &w) in weights.iter().enumerate() {
        let v: &[f32; W] = value(j)[..W].try_into().expect("W values");
        for i in 0..W {
            o[i] = w.mul_add(v[i], o[i]);
        }
    }
    o
}

/// Per-thread buffers of the attention kernel.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    acc: Vec<f32>,
    /// A rotated query head.
    q: Vec<f32>,
    /// A rotated key head.
    k: Vec<f32>,
}

/// The order in which one score's products are summed, mirroring the gemm path candle's matmul takes for the
/// reference model's `q · kᵀ` of shape `[m, n]` (gemm-common's `gemm_basic_generic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreOrder {
    /// `m · n ≤ 256`: the small-matrix kernel; 8 lanes over the head dimension (`d mod 8`), each a sequential
    /// FMA chain, then a halving tree.
    Tree8,
    /// `m = 1`, `n > 256`: the matrix-vector kernel; eight 8-lane accumulators over 64-wide steps, a pairwise
    /// tree over accumulators, then the lanes summed in order.
    Gemv8,
    /// Otherwise: the main kernel; one sequential FMA chain over the head dimension.
    Sequential,
}

impl ScoreOrder {
    /// The order for a token at `pos` of a sequence whose prompt has `prompt_len` tokens: prompt tokens as in
    /// one `[prompt_len, prompt_len]` prefill, generated tokens as in a `[1, pos + 1]` decode step.
    pub fn for_token(pos: usize, prompt_len: usize) -> Self {
        if pos < prompt_len {
            if prompt_len * prompt_len <= 256 {
                Self::Tree8
            } else {
                Self::Sequential
            }
        } else if pos < 256 {
            Self::Tree8
        } else {
            Self::Gemv8
        }
    }
}

/// Append the scores of one block's `bs` positions (`keys`: `[head_dim][bs]`) against `q` to `out`.
fn block_scores(order: ScoreOrder, q: &[f32], keys: &[f32], bs: usize, acc: &mut Vec<f32>, out: &mut Vec<f32>) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    if x86::block_scores(order, q, keys, bs, out) {
        return;
    }
    let dim = q.len();
    let key = |d: usize| &keys[d * bs..(d + 1) * bs];
    // `acc[r * bs + s]`: accumulator `r` of position `s`.
    let fma_into = |acc: &mut [f32], qd: f32, k: &[f32]| {
        for (a, &k) in acc.iter_mut().zip(k) {
            *a = qd.mul_add(k, *a);
        }
    };
    let add_into = |acc: &mut [f32], r: usize, from: usize| {
        for s in 0..bs {
            acc[r * bs + s] += acc[from * bs + s];
        }
    };
    match order {
        ScoreOrder::Sequential => {
            acc.clear();
            acc.resize(bs, 0.0);
            for (d, &qd) in q.iter().enumerate() {
                fma_into(acc, qd, key(d));
            }
            out.extend_from_slice(acc);
        }
        ScoreOrder::Tree8 => {
            acc.clear();
            acc.resize(8 * bs, 0.0);
            for (d, &qd) in q.iter().enumerate() {
                fma_into(&mut acc[(d % 8) * bs..(d % 8 + 1) * bs], qd, key(d));
            }
            for w in [4, 2, 1] {
                for l in 0..w {
                    add_into(acc, l, l + w);
                }
            }
            out.extend_from_slice(&acc[..bs]);
        }
        ScoreOrder::Gemv8 => {
            // Accumulator (chunk i, lane l) is row i * 8 + l.
            acc.clear();
            acc.resize(64 * bs, 0.0);
            let k_lane8 = dim / 64 * 64;
            let k_lane = dim / 8 * 8;
            for d in 0..k_lane8 {
                let r = (d / 8 % 8) * 8 + d % 8;
                fma_into(&mut acc[r * bs..(r + 1) * bs], q[d], key(d));
            }
            for (a, b) in [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (4, 6), (0, 4)] {
                for l in 0..8 {
                    add_into(acc, a * 8 + l, b * 8 + l);
                }
            }
            for d in k_lane8..k_lane {
                let l = d % 8;
                fma_into(&mut acc[l * bs..(l + 1) * bs], q[d], key(d));
            }
            for l in 1..8 {
                add_into(acc, 0, l);
            }
            for d in k_lane..dim {
                fma_into(&mut acc[..bs], q[d], key(d));
            }
            out.extend_from_slice(&acc[..bs]);
        }
    }
}

/// The common score shapes in AVX2 registers, eight positions per vector; the same operations, lane by lane,
/// as the portable code of [`block_scores`] (the compiler does not keep that code's accumulators in registers
/// everywhere).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod x86 {
    use super::ScoreOrder;
    use std::arch::x86_64::*;

    /// Append the scores of one block (`keys`: `[head_dim][bs]`) to `out` and return true, or return false
    /// (having done nothing) for a shape these kernels do not take.
    pub(super) fn block_scores(order: ScoreOrder, q: &[f32], keys: &[f32], bs: usize, out: &mut Vec<f32>) -> bool {
        let dim = q.len();
        let taken = bs.is_multiple_of(8)
            && keys.len() == dim * bs
            && match order {
                ScoreOrder::Sequential => true,
                ScoreOrder::Tree8 => dim.is_multiple_of(8),
                ScoreOrder::Gemv8 => dim == 64 || dim == 128,
            };
        if !taken {
            return false;
        }
        if order == ScoreOrder::Sequential && bs.is_multiple_of(32) {
            // Four blocks of eight positions side by side: four independent chains hide the FMA latency.
            for c in (0..bs).step_by(32) {
                // SAFETY: as below, with `c + 32 <= bs`.
                unsafe {
                    let mut acc = [_mm256_setzero_ps(); 4];
                    for (d, &qd) in q.iter().enumerate() {
                        let (qd, k) = (_mm256_set1_ps(qd), keys.as_ptr().add(d * bs + c));
                        for (j, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k.add(8 * j)), *acc);
                        }
                    }
                    let mut lanes = [0f32; 32];
                    for (j, acc) in acc.iter().enumerate() {
                        _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * j), *acc);
                    }
                    out.extend_from_slice(&lanes);
                }
            }
            return true;
        }
        for c in (0..bs).step_by(8) {
            // SAFETY: AVX2 and FMA at compile time (cfg above); `d < dim` and `c + 8 <= bs`, so each load reads
            // eight values within `keys` (`dim * bs` long, checked above).
            unsafe {
                let k8 = |d: usize| _mm256_loadu_ps(keys.as_ptr().add(d * bs + c));
                let fma = |d: usize, acc: __m256| _mm256_fmadd_ps(_mm256_set1_ps(q[d]), k8(d), acc);
                let zero = _mm256_setzero_ps();
                let scores = match order {
                    // One FMA chain over the dimensions per position.
                    ScoreOrder::Sequential => (0..dim).fold(zero, |acc, d| fma(d, acc)),
                    // Lane l chains dimensions d ≡ l (mod 8), then a halving tree over the lanes.
                    ScoreOrder::Tree8 => {
                        let mut lanes = [zero; 8];
                        for d0 in (0..dim).step_by(8) {
                            for (l, lane) in lanes.iter_mut().enumerate() {
                                *lane = fma(d0 + l, *lane);
                            }
                        }
                        for w in [4, 2, 1] {
                            for l in 0..w {
                                lanes[l] = _mm256_add_ps(lanes[l], lanes[l + w]);
                            }
                        }
                        lanes[0]
                    }
                    // Accumulator (chunk i, lane l): dimension 8i + l (then 64 + 8i + l), a pairwise tree over
                    // the chunks per lane, then the lanes summed in order.
                    ScoreOrder::Gemv8 => {
                        let mut total = zero;
                        for l in 0..8 {
                            let p: [__m256; 8] = std::array::from_fn(|i| {
                                let p = fma(8 * i + l, zero);
                                if dim == 128 {
                                    fma(64 + 8 * i + l, p)
                                } else {
                                    p
                                }
                            });
                            let add = |a, b| _mm256_add_ps(a, b);
                            let t = add(
                                add(add(p[0], p[1]), add(p[2], p[3])),
                                add(add(p[4], p[5]), add(p[6], p[7])),
                            );
                            total = if l == 0 { t } else { add(total, t) };
                        }
                        total
                    }
                };
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), scores);
                out.extend_from_slice(&lanes);
            }
        }
        true
    }
}

/// Sum `xs`, zero-padded to `row_len`, in the order of candle's AVX `vec_sum` (the softmax denominator of the
/// reference): four 8-lane accumulators over 32-element steps, a fixed reduction tree, then the tail added one
/// by one. Where a position lands depends on `row_len` only through `row_len & !31`, so with blocks of a
/// multiple of 32 positions a full prompt block rounds alike in every prompt that contains it.
fn candle_vec_sum(xs: &[f32], row_len: usize) -> f32 {
    let np = row_len & !31;
    // Positions past `xs` are the padding zeros; they are read as 0.0 rather than materialised.
    let at = |i: usize| xs.get(i).copied().unwrap_or(0.0);
    let mut acc = [[0f32; 8]; 4];
    for c in (0..np).step_by(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, x) in a.iter_mut().enumerate() {
                *x += at(c + j * 8 + l);
            }
        }
    }
    let mut lanes = [0f32; 8];
    for l in 0..8 {
        lanes[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    }
    let t: [f32; 4] = std::array::from_fn(|i| lanes[i] + lanes[i + 4]);
    let mut sum = (t[0] + t[1]) + (t[2] + t[3]);
    for &x in xs.get(np..).unwrap_or(&[]) {
        sum += x;
    }
    sum
}

/// What one layer's attention call needs besides its q, k, v and the cache.
#[derive(Debug, Clone, Copy)]
pub struct LayerCtx<'a> {
    /// The model's rotary embedding (its style and tables).
    pub rotary: &'a Rotary,
    /// The step's cosine table, `[tokens, 1, head_dim / 2]` ([`Rotary::tables`]).
    pub cos: &'a candle_core::Tensor,
    /// The step's sine table, likewise.
    pub sin: &'a candle_core::Tensor,
    /// The step's sequences: positions and block tables.
    pub batch: &'a Batch<'a>,
    /// The layer, an index into the cache.
    pub layer: usize,
    /// Query heads (the cache knows the key/value heads).
    pub num_heads: usize,
}

/// [`attend`] with the rotary embedding applied here: `q` (`[tokens, num_heads * head_dim]`) and `k`
/// (`[tokens, num_kv_heads * head_dim]`) come straight from their projections, `cos` and `sin` are the step's
/// tables (`[tokens, 1, head_dim / 2]`, [`Rotary::tables`]), `v` is `[tokens, num_kv_heads * head_dim]`.
///
/// On a host cache this is one parallel loop over (token, key/value head) items: each rotates its key and
/// writes it with its value into the cache when the token is its sequence's only new one (a decode token;
/// a prompt chunk's keys are written first, since its tokens attend to each other), then rotates and
/// attends its group of query heads, reading that head's keys and values once for all of them. The same
/// bits as rotating with [`Rotary::apply`] and calling [`attend`]: the rotation is candle's, per element,
/// and the attention is [`paged_attention`]'s. A tensor cache takes exactly that route.
pub fn attend_rope(
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
    ctx: &LayerCtx<'_>,
    cache: &mut KvCache,
) -> Result<candle_core::Tensor, ModelError> {
    let LayerCtx {
        rotary,
        cos,
        sin,
        batch,
        layer,
        num_heads,
    } = *ctx;
    let layout = cache.layout();
    let (kv_heads, dim, bs) = (layout.num_kv_heads, layout.head_dim, cache.block_size());
    if cache.is_tensors() || !q.device().is_cpu() {
        let q = rotary.apply(q, num_heads, cos, sin)?;
        let k = rotary.apply(k, kv_heads, cos, sin)?;
        return attend(&q, &k, v, cache, layer, batch, num_heads);
    }
    let _enter = tracing::trace_span!("paged_attention").entered();
    let (tokens, half) = (batch.tokens.len(), dim / 2);
    let (qs, ks, vs) = (
        crate::kernels::f32_view(q)?,
        crate::kernels::f32_view(k)?,
        crate::kernels::f32_view(v)?,
    );
    let (cs, ss) = (crate::kernels::f32_view(cos)?, crate::kernels::f32_view(sin)?);
    if qs.len() != tokens * num_heads * dim
        || ks.len() != tokens * kv_heads * dim
        || vs.len() != ks.len()
        || cs.len() != tokens * half
        || ss.len() != cs.len()
    {
        return Err(ModelError::InvalidBatch(format!(
            "attention inputs of {}, {}, {} and {} values for {tokens} tokens of {num_heads} heads ({kv_heads} kv) of {dim}",
            qs.len(),
            ks.len(),
            vs.len(),
            cs.len()
        )));
    }
    let group = num_heads / kv_heads;
    let style = rotary.style();
    // Per token: (sequence index, position, whether it is its sequence's only new token).
    let mut toks = Vec::with_capacity(tokens);
    for (s, seq) in batch.seqs.iter().enumerate() {
        toks.extend((seq.num_computed..seq.num_computed + seq.num_new).map(|p| (s, p, seq.num_new == 1)));
    }
    let head_of = |t: usize, h: usize, heads: usize| (t * heads + h) * dim..(t * heads + h + 1) * dim;
    let rows = |t: usize| (&cs[t * half..(t + 1) * half], &ss[t * half..(t + 1) * half]);

    let regions = Regions::new_mut(cache.layer_mut(layer), bs, dim);
    let cache: &KvCache = cache;
    // A prompt chunk's keys and values first: its tokens read each other's.
    let mut rotated = vec![0f32; dim];
    for (t, &(s, pos, alone)) in toks.iter().enumerate() {
        if alone {
            continue;
        }
        let (c, sn) = rows(t);
        for h in 0..kv_heads {
            style.rotate(&ks[head_of(t, h, kv_heads)], c, sn, &mut rotated);
            let offset = cache.block_offset(batch.seqs[s].block_table[pos / bs] as usize, h);
            // SAFETY: from `new_mut`; no other thread runs yet.
            unsafe { regions.write(offset, pos % bs, &rotated, &vs[head_of(t, h, kv_heads)]) };
        }
    }
    let inv_scale = (1.0 / (dim as f64).sqrt()) as f32;
    let mut out = vec![0f32; qs.len()];
    crate::kernels::for_each_chunk_init(
        &mut out,
        group * dim,
        Scratch::default,
        |scratch: &mut Scratch, item, out| {
            let (t, kvh) = (item / kv_heads, item % kv_heads);
            let (s, pos, alone) = toks[t];
            let seq = &batch.seqs[s];
            let (c, sn) = rows(t);
            if alone {
                scratch.k.resize(dim, 0.0);
                style.rotate(&ks[head_of(t, kvh, kv_heads)], c, sn, &mut scratch.k);
                let offset = cache.block_offset(seq.block_table[pos / bs] as usize, kvh);
                // SAFETY: from `new_mut`. This item alone touches its sequence's regions of head `kvh`: its
                // sequence has no other new token, other sequences never share a block being written
                // (`KvCache::copy_block`), and other heads' regions are disjoint.
                unsafe { regions.write(offset, pos % bs, &scratch.k, &vs[head_of(t, kvh, kv_heads)]) };
            }
            let head = Head {
                regions,
                cache,
                table: seq.block_table,
                kvh,
                pos,
                prompt_len: seq.prompt_len,
                inv_scale,
            };
            scratch.q.resize(dim, 0.0);
            for (g, out) in out.chunks_exact_mut(dim).enumerate() {
                style.rotate(&qs[head_of(t, kvh * group + g, num_heads)], c, sn, &mut scratch.q);
                // SAFETY: the regions read are this sequence's for head `kvh`; only this item writes them (above,
                // before reading), a prompt chunk's were written before the loop.
                unsafe { head.attend(&mut scratch.scores, &mut scratch.acc, &scratch.q, out) };
            }
        },
    );
    Ok(candle_core::Tensor::from_vec(
        out,
        (tokens, num_heads * dim),
        q.device(),
    )?)
}

/// One attention call of a layer: write the new (already rotated) keys and values into the cache, attend,
/// and return `[tokens, num_heads * head_dim]`. A host cache runs the CPU kernel of this module; a tensor
/// cache ([`KvCache::new_tensors`]) runs [`crate::attention_ops::attend_tensors`].
///
/// `q`: `[tokens, num_heads, 1, head_dim]`, `k`: `[tokens, num_kv_heads, 1, head_dim]` (as returned by
/// [`crate::nn::Rotary::apply`]), `v`: `[tokens, num_kv_heads * head_dim]`.
pub fn attend(
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
    cache: &mut KvCache,
    layer: usize,
    batch: &Batch<'_>,
    num_heads: usize,
) -> Result<candle_core::Tensor, ModelError> {
    if cache.is_tensors() {
        // A tensor cache (CUDA, or its CPU twin in tests) is attended with candle ops.
        return crate::attention_ops::attend_tensors(q, k, v, cache, layer, batch, num_heads);
    }
    let _enter = tracing::trace_span!("paged_attention").entered();
    let tokens = batch.tokens.len();
    let q_device = q.device();
    let k = k.flatten_all()?.to_vec1::<f32>()?;
    let v = v.flatten_all()?.to_vec1::<f32>()?;
    write_kv(cache, layer, &k, &v, batch)?;
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let out = paged_attention(&q, cache, layer, batch, num_heads);
    let width = out.len() / tokens.max(1);
    Ok(candle_core::Tensor::from_vec(out, (tokens, width), q_device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KvLayout, SeqInput};

    /// Attention computed naively over contiguous keys/values for one sequence.
    fn reference(q: &[f32], k: &[f32], v: &[f32], heads: usize, kv_heads: usize, dim: usize, start: usize) -> Vec<f32> {
        let tokens = q.len() / (heads * dim);
        let mut out = vec![0f32; q.len()];
        for t in 0..tokens {
            let pos = start + t;
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let qv = &q[(t * heads + h) * dim..][..dim];
                let scores: Vec<f32> = (0..=pos)
                    .map(|j| {
                        qv.iter()
                            .zip(&k[(j * kv_heads + kvh) * dim..][..dim])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            / (dim as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                for j in 0..=pos {
                    for d in 0..dim {
                        out[(t * heads + h) * dim + d] += e[j] / sum * v[(j * kv_heads + kvh) * dim + d];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn paged_matches_contiguous_with_scattered_blocks_and_chunks() {
        let (heads, kv_heads, dim, bs) = (4, 2, 16, 4);
        let layout = KvLayout {
            num_layers: 1,
            num_kv_heads: kv_heads,
            head_dim: dim,
        };
        let mut cache = KvCache::new(layout, 8, bs).unwrap();
        let len = 11;
        let val = |i: usize| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
        let k: Vec<f32> = (0..len * kv_heads * dim).map(val).collect();
        let v: Vec<f32> = (0..len * kv_heads * dim).map(|i| val(i + 13)).collect();
        let q: Vec<f32> = (0..len * heads * dim).map(|i| val(i + 29)).collect();
        let table = [5u32, 2, 7];
        // Prefill the first 6 positions in one step, then the remaining 5 in a second step.
        for (start, n) in [(0usize, 6usize), (6, 5)] {
            let tokens = vec![0u32; n];
            let seqs = [SeqInput {
                num_computed: start,
                num_new: n,
                block_table: &table,
                prompt_len: len,
                want_logits: true,
                all_logits: false,
            }];
            let batch = Batch {
                tokens: &tokens,
                seqs: &seqs,
            };
            let ks = &k[start * kv_heads * dim..(start + n) * kv_heads * dim];
            let vs = &v[start * kv_heads * dim..(start + n) * kv_heads * dim];
            write_kv(&mut cache, 0, ks, vs, &batch).unwrap();
            let qs = &q[start * heads * dim..(start + n) * heads * dim];
            let got = paged_attention(qs, &cache, 0, &batch, heads);
            let want = reference(qs, &k, &v, heads, kv_heads, dim, start);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
    }
}

#[cfg(test)]
mod rope_tests {
    use super::*;
    use crate::nn::RopeStyle;
    use crate::{KvLayout, SeqInput};
    use candle_core::{Device, Tensor};

    /// The fused kernel against candle's rotation followed by [`attend`]: the same outputs and the same cache,
    /// bit for bit, over steps that mix prompt chunks, decode tokens and a one-token prompt.
    #[test]
    fn attend_rope_is_rotate_then_attend() {
        let (heads, kv_heads, dim, bs) = (6, 2, 16, 4);
        let layout = KvLayout {
            num_layers: 1,
            num_kv_heads: kv_heads,
            head_dim: dim,
        };
        let val = |i: usize, salt: usize| (((i + salt) * 7919) % 1000) as f32 / 500.0 - 1.0;
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let rotary = Rotary::new(dim, 10_000.0, 64, style, None, &Device::Cpu).unwrap();
            let (mut plain, mut fused) = (
                KvCache::new(layout, 12, bs).unwrap(),
                KvCache::new(layout, 12, bs).unwrap(),
            );
            let tables: [&[u32]; 3] = [&[3, 7], &[0, 5, 9], &[11]];
            // (sequence, first position, new tokens, prompt length) per step.
            let steps: [&[(usize, usize, usize, usize)]; 3] = [
                &[(0, 0, 5, 6), (1, 0, 3, 9)],
                &[(0, 5, 1, 6), (1, 3, 6, 9), (2, 0, 1, 1)],
                &[(0, 6, 1, 6), (1, 9, 1, 9), (2, 1, 1, 1)],
            ];
            for (n, step) in steps.iter().enumerate() {
                let seqs: Vec<SeqInput> = step
                    .iter()
                    .map(|&(s, start, new, prompt)| SeqInput {
                        num_computed: start,
                        num_new: new,
                        block_table: tables[s],
                        prompt_len: prompt,
                        want_logits: true,
                        all_logits: false,
                    })
                    .collect();
                let tokens = vec![0u32; seqs.iter().map(|s| s.num_new).sum()];
                let batch = Batch {
                    tokens: &tokens,
                    seqs: &seqs,
                };
                let t = tokens.len();
                let q = Tensor::from_vec(
                    (0..t * heads * dim).map(|i| val(i, 100 * n)).collect::<Vec<_>>(),
                    (t, heads * dim),
                    &Device::Cpu,
                )
                .unwrap();
                let k = Tensor::from_vec(
                    (0..t * kv_heads * dim).map(|i| val(i, 100 * n + 7)).collect::<Vec<_>>(),
                    (t, kv_heads * dim),
                    &Device::Cpu,
                )
                .unwrap();
                let v = Tensor::from_vec(
                    (0..t * kv_heads * dim)
                        .map(|i| val(i, 100 * n + 13))
                        .collect::<Vec<_>>(),
                    (t, kv_heads * dim),
                    &Device::Cpu,
                )
                .unwrap();
                let positions = Tensor::from_vec(batch.positions(), t, &Device::Cpu).unwrap();
                let (cos, sin) = rotary.tables(&positions).unwrap();
                let (qr, kr) = (
                    rotary.apply(&q, heads, &cos, &sin).unwrap(),
                    rotary.apply(&k, kv_heads, &cos, &sin).unwrap(),
                );
                let want = attend(&qr, &kr, &v, &mut plain, 0, &batch, heads).unwrap();
                let ctx = LayerCtx {
                    rotary: &rotary,
                    cos: &cos,
                    sin: &sin,
                    batch: &batch,
                    layer: 0,
                    num_heads: heads,
                };
                let got = attend_rope(&q, &k, &v, &ctx, &mut fused).unwrap();
                let bits = |t: &Tensor| {
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(&got), bits(&want), "{style:?}, step {n}");
                let (a, b) = (plain.layer(0), fused.layer(0));
                assert!(
                    a.k.iter()
                        .zip(&b.k)
                        .chain(a.v.iter().zip(&b.v))
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{style:?}, step {n}: caches differ"
                );
            }
        }
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;

    /// Every fast path agrees bit for bit with the generic accumulator code it replaces.
    #[test]
    fn register_paths_match_the_generic_orders() {
        for dim in [64usize, 128] {
            let bs = 32;
            let q: Vec<f32> = (0..dim)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
                .collect();
            let keys: Vec<f32> = (0..dim * bs)
                .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 3.0)
                .collect();
            for order in [ScoreOrder::Tree8, ScoreOrder::Gemv8, ScoreOrder::Sequential] {
                let (mut fast, mut slow, mut acc) = (Vec::new(), Vec::new(), Vec::new());
                block_scores(order, &q, &keys, bs, &mut acc, &mut fast);
                // A block size that is not a multiple of 8 takes the generic path; compare slot by slot.
                for s in 0..bs {
                    let one: Vec<f32> = (0..dim).map(|d| keys[d * bs + s]).collect();
                    block_scores(order, &q, &one, 1, &mut acc, &mut slow);
                }
                assert!(
                    fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{order:?} dim {dim}"
                );
            }
        }
    }
}

#[cfg(test)]
mod candle_order_tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Scores of one query against `len` keys as candle's matmul computes them in the reference model, for a
    /// `[m, len]` product (row 0 of a query block of `m` rows).
    fn candle_scores(q: &[f32], keys: &[f32], len: usize, m: usize) -> Vec<f32> {
        let dim = q.len();
        let qs: Vec<f32> = (0..m).flat_map(|_| q.iter().copied()).collect();
        let qt = Tensor::from_vec(qs, (1, 1, m, dim), &Device::Cpu).unwrap();
        let kt = Tensor::from_vec(keys.to_vec(), (1, 1, len, dim), &Device::Cpu).unwrap();
        let s = qt
            .matmul(&kt.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        s[..len].to_vec()
    }

    #[test]
    fn score_orders_reproduce_candles_matmul() {
        for dim in [64usize, 128] {
            // (keys, rows of the reference product, the order for that shape)
            for (len, m, order) in [
                (300usize, 1usize, ScoreOrder::Gemv8),
                (200, 1, ScoreOrder::Tree8),
                (12, 12, ScoreOrder::Tree8),
                (40, 40, ScoreOrder::Sequential),
            ] {
                let q: Vec<f32> = (0..dim)
                    .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
                    .collect();
                let keys: Vec<f32> = (0..len * dim)
                    .map(|i| ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 3.0)
                    .collect();
                let want = candle_scores(&q, &keys, len, m);
                // Our layout: blocks of 32 positions, dimension-major within a block.
                let bs = 32;
                let (mut got, mut acc) = (Vec::new(), Vec::new());
                for b in 0..len.div_ceil(bs) {
                    let block: Vec<f32> = (0..dim * bs)
                        .map(|i| {
                            let (d, s) = (i / bs, i % bs);
                            let pos = b * bs + s;
                            if pos < len {
                                keys[pos * dim + d]
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    block_scores(order, &q, &block, bs, &mut acc, &mut got);
                }
                assert!(
                    want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{order:?} dim {dim} len {len} m {m}"
                );
            }
        }
    }
}

//! Attention over a paged tensor KV cache ([`KvCache::new_tensors`]) built from candle ops only, so it runs
//! on any device: it is how the models attend on CUDA, and on the CPU it is the testable twin of that path
//! (the CPU's own kernel, `attention.rs`, reads host caches and stays the default there).
//!
//! Each layer's cache is two tensors with one row per slot (`slot = block * block_size + offset`):
//! `[num_slots, num_kv_heads * head_dim]`, f16 on CUDA. One attention call
//! 1. writes the new keys and values into their slots with one `scatter_set` each;
//! 2. for each group of sequences gathers their slots with `index_select` (a sequence's block table turned
//!    into slot ids, padded to the group's longest sequence), and computes, in f32,
//!    ```text
//!    scores = q · kᵀ / sqrt(head_dim) + mask        mask: 0 where key j ≤ the query's position, else -inf
//!    out    = softmax(scores) · v
//!    ```
//!    with grouped-query heads folded into the query rows (`[kv_heads, group * rows, head_dim]`), so keys
//!    and values are never repeated per query head;
//! 3. puts the groups' rows back in batch order.
//!
//! Groups: every sequence with several new tokens (a prefill chunk) is its own group; sequences with one
//! new token (decode) are batched together, sorted by length and split so that one gather stays under
//! [`GATHER_BUDGET_BYTES`]. Index and mask tensors depend only on the batch, so the first layer builds them
//! (`StepPlan`) and the other layers of the step reuse them.
//!
//! Unlike the CPU kernel this path does not reproduce the reference model's rounding: its outputs agree with
//! the CPU kernel within float tolerance, not bit for bit, and may vary slightly with the batch's shape.

use candle_core::{DType, Tensor};

use crate::{Batch, KvCache, ModelError};

/// Upper bound on the f32 keys (or values) one decode group gathers, in bytes; bigger decode batches are
/// split into several groups.
pub const GATHER_BUDGET_BYTES: usize = 256 << 20;

/// What identifies the batch a plan was built for (checked by every layer after the first).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlanKey {
    tokens: usize,
    /// Per sequence: first position, new tokens, blocks in its table, sum of its block ids.
    seqs: Vec<(usize, usize, usize, u64)>,
}

impl PlanKey {
    fn new(batch: &Batch<'_>) -> Self {
        let seqs = batch
            .seqs
            .iter()
            .map(|s| {
                (
                    s.num_computed,
                    s.num_new,
                    s.block_table.len(),
                    s.block_table.iter().map(|&b| u64::from(b)).sum(),
                )
            })
            .collect();
        Self {
            tokens: batch.tokens.len(),
            seqs,
        }
    }
}

/// One group of sequences attended together: `seqs` sequences, each with `rows` query rows and at most
/// `len` keys.
#[derive(Debug)]
struct Group {
    seqs: usize,
    rows: usize,
    len: usize,
    /// `[seqs * rows]` u32: the batch rows (tokens) of this group's queries, sequence by sequence.
    q_rows: Tensor,
    /// `[seqs * len]` u32: the cache slots of each sequence's keys; padding repeats slot 0, which the mask
    /// hides.
    slots: Tensor,
    /// `[seqs, 1, 1, rows, len]` f32: 0 where the query may see the key, -inf elsewhere.
    mask: Tensor,
}

/// Index and mask tensors of one step, on the cache's device, shared by all layers.
#[derive(Debug)]
pub(crate) struct StepPlan {
    key: PlanKey,
    /// `[tokens, kv_width]` u32: each new token's slot, repeated along the row (`scatter_set` wants indices
    /// shaped like its source).
    write_slots: Tensor,
    groups: Vec<Group>,
    /// `[tokens]` u32: where each batch row sits among the concatenated group outputs.
    inverse: Tensor,
}

impl StepPlan {
    /// The plan for `batch`; a decode group gathers at most `budget` bytes of f32 keys.
    fn new(
        batch: &Batch<'_>,
        block_size: usize,
        kv_width: usize,
        budget: usize,
        device: &candle_core::Device,
    ) -> Result<Self, ModelError> {
        let tokens = batch.tokens.len();
        let slot = |table: &[u32], pos: usize| table[pos / block_size] * block_size as u32 + (pos % block_size) as u32;

        let mut write = Vec::with_capacity(tokens);
        // (first batch row, sequence index) of each sequence.
        let mut starts = Vec::with_capacity(batch.seqs.len());
        let mut row = 0;
        for (i, seq) in batch.seqs.iter().enumerate() {
            write.extend((seq.num_computed..seq.num_computed + seq.num_new).map(|p| slot(seq.block_table, p)));
            starts.push((row, i));
            row += seq.num_new;
        }
        let write_slots = Tensor::from_vec(write, (tokens, 1), device)?
            .broadcast_as((tokens, kv_width))?
            .contiguous()?;

        let mut groups = Vec::new();
        let mut order: Vec<u32> = Vec::with_capacity(tokens);
        let mut build = |members: &[(usize, usize)], rows: usize| -> Result<(), ModelError> {
            let len = members
                .iter()
                .map(|&(_, i)| batch.seqs[i].num_computed + batch.seqs[i].num_new)
                .max()
                .unwrap_or(0);
            let (mut q_rows, mut slots, mut mask) = (Vec::new(), Vec::new(), Vec::new());
            for &(first_row, i) in members {
                let seq = &batch.seqs[i];
                q_rows.extend((first_row..first_row + rows).map(|r| r as u32));
                let seq_len = seq.num_computed + seq.num_new;
                slots.extend((0..len).map(|j| if j < seq_len { slot(seq.block_table, j) } else { 0 }));
                for t in 0..rows {
                    let pos = seq.num_computed + t;
                    mask.extend((0..len).map(|j| if j <= pos { 0f32 } else { f32::NEG_INFINITY }));
                }
            }
            order.extend_from_slice(&q_rows);
            let seqs = members.len();
            groups.push(Group {
                seqs,
                rows,
                len,
                q_rows: Tensor::from_vec(q_rows, seqs * rows, device)?,
                slots: Tensor::from_vec(slots, seqs * len, device)?,
                mask: Tensor::from_vec(mask, (seqs, 1, 1, rows, len), device)?,
            });
            Ok(())
        };

        let mut decode = Vec::new();
        for &(first_row, i) in &starts {
            match batch.seqs[i].num_new {
                0 => {}
                1 => decode.push((first_row, i)),
                n => build(&[(first_row, i)], n)?,
            }
        }
        // Decode sequences: sorted by length so each group pads little, split to bound one gather.
        let seq_len = |&(_, i): &(usize, usize)| batch.seqs[i].num_computed + 1;
        decode.sort_by_key(seq_len);
        let mut from = 0;
        while from < decode.len() {
            let mut to = from + 1;
            while to < decode.len() && (to + 1 - from) * seq_len(&decode[to]) * kv_width * 4 <= budget {
                to += 1;
            }
            build(&decode[from..to], 1)?;
            from = to;
        }

        let mut inverse = vec![0u32; tokens];
        for (at, &r) in order.iter().enumerate() {
            inverse[r as usize] = at as u32;
        }
        Ok(Self {
            key: PlanKey::new(batch),
            write_slots,
            groups,
            inverse: Tensor::from_vec(inverse, tokens, device)?,
        })
    }
}

/// One attention call of a layer over a tensor cache: write the new (already rotated) keys and values, attend,
/// and return `[tokens, num_heads * head_dim]` in f32.
///
/// `q`: `[tokens, num_heads, 1, head_dim]`, `k`: `[tokens, num_kv_heads, 1, head_dim]` (as returned by
/// [`crate::nn::Rotary::apply`]), `v`: `[tokens, num_kv_heads * head_dim]`. Layer 0 builds the step's
/// `StepPlan`; later layers reuse it while the batch is the same.
pub fn attend_tensors(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &mut KvCache,
    layer: usize,
    batch: &Batch<'_>,
    num_heads: usize,
) -> Result<Tensor, ModelError> {
    let _enter = tracing::trace_span!("attention_ops").entered();
    batch.validate(cache.block_size(), cache.num_blocks())?;
    let layout = cache.layout();
    let (kv_heads, dim, block_size) = (layout.num_kv_heads, layout.head_dim, cache.block_size());
    if num_heads == 0 || !num_heads.is_multiple_of(kv_heads) {
        return Err(ModelError::InvalidBatch(format!(
            "{num_heads} query heads are not a multiple of {kv_heads} KV heads"
        )));
    }
    let (group, kv_width, tokens) = (num_heads / kv_heads, kv_heads * dim, batch.tokens.len());
    if tokens == 0 {
        return Err(ModelError::InvalidBatch("the batch has no tokens".into()));
    }
    let store = cache.tensors_mut().ok_or_else(|| {
        ModelError::InvalidBatch("attend_tensors needs a tensor KV cache (KvCache::new_tensors)".into())
    })?;
    if layer >= store.layers.len() {
        return Err(ModelError::InvalidBatch(format!(
            "layer {layer} is past the cache's {} layers",
            store.layers.len()
        )));
    }
    let kv = &store.layers[layer];
    let device = kv.k.device().clone();
    let plan_is_current = layer > 0 && store.plan.as_ref().is_some_and(|p| p.key == PlanKey::new(batch));
    if !plan_is_current {
        store.plan = Some(StepPlan::new(
            batch,
            block_size,
            kv_width,
            GATHER_BUDGET_BYTES,
            &device,
        )?);
    }
    let plan = store.plan.as_ref().expect("the plan was just built");

    // 1. Write the new keys and values into their slots.
    let cache_dtype = kv.k.dtype();
    let k_new = k.reshape((tokens, kv_width))?.to_dtype(cache_dtype)?.contiguous()?;
    let v_new = v.reshape((tokens, kv_width))?.to_dtype(cache_dtype)?.contiguous()?;
    kv.k.scatter_set(&plan.write_slots, &k_new, 0)?;
    kv.v.scatter_set(&plan.write_slots, &v_new, 0)?;

    // 2. Attend, group by group.
    // candle divides a tensor by a float as an affine map with the reciprocal; so does the CPU kernel.
    let inv_scale = f64::from((1.0 / (dim as f64).sqrt()) as f32);
    let q = q.reshape((tokens, num_heads * dim))?;
    let mut outs = Vec::with_capacity(plan.groups.len());
    for g in &plan.groups {
        let (s, n, len) = (g.seqs, g.rows, g.len);
        // [s * n, heads * dim] → [s, kv_heads, group * n, dim]: query heads of one KV head side by side.
        let qg = q
            .index_select(&g.q_rows, 0)?
            .reshape((s, n, kv_heads, group, dim))?
            .permute((0, 2, 3, 1, 4))?
            .contiguous()?
            .reshape((s, kv_heads, group * n, dim))?;
        // [s * len, kv_width] → [s, kv_heads, len, dim], in f32.
        let gather = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.index_select(&g.slots, 0)?
                .to_dtype(DType::F32)?
                .reshape((s, len, kv_heads, dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (kg, vg) = (gather(&kv.k)?, gather(&kv.v)?);
        let scores = (qg.matmul(&kg.t()?)? * inv_scale)?
            .reshape((s, kv_heads, group, n, len))?
            .broadcast_add(&g.mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.reshape((s, kv_heads, group * n, len))?;
        // [s, kv_heads, group * n, dim] → [s * n, heads * dim].
        let out = weights
            .matmul(&vg)?
            .reshape((s, kv_heads, group, n, dim))?
            .permute((0, 3, 1, 2, 4))?
            .contiguous()?
            .reshape((s * n, num_heads * dim))?;
        outs.push(out);
    }

    // 3. Back to batch order.
    let out = Tensor::cat(&outs, 0)?;
    Ok(out.index_select(&plan.inverse, 0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::{KvLayout, SeqInput};

    fn val(i: usize) -> f32 {
        ((i * 7919) % 1000) as f32 / 1000.0 - 0.5
    }

    /// Steps of two sequences over scattered blocks: a chunked prefill, then a prefill chunk beside a decode
    /// token, then two decode tokens together. The tensor path (f32 cache) must match the CPU kernel.
    #[test]
    fn tensor_path_matches_the_cpu_kernel_on_mixed_batches() {
        let (heads, kv_heads, dim, bs) = (9, 3, 64, 32);
        let layout = KvLayout {
            num_layers: 2,
            num_kv_heads: kv_heads,
            head_dim: dim,
        };
        let mut host = KvCache::new(layout, 8, bs).unwrap();
        let mut tensors = KvCache::new_tensors(layout, 8, bs, &Device::Cpu, DType::F32).unwrap();
        let (table_a, table_b) = ([5u32, 1, 7], [3u32, 0]);
        // (computed, new) of a and b per step; `None` when the sequence sits the step out.
        let mut steps: Vec<[Option<(usize, usize)>; 2]> = vec![
            [Some((0, 24)), None],
            [Some((24, 16)), None],
            [Some((40, 1)), Some((0, 12))],
        ];
        for i in 0..8 {
            steps.push([Some((41 + i, 1)), Some((12 + i, 1))]);
        }
        let mut seed = 0;
        for step in steps {
            let mut seqs = Vec::new();
            for (which, s) in step.iter().enumerate() {
                if let Some((computed, new)) = *s {
                    let table: &[u32] = if which == 0 { &table_a } else { &table_b };
                    seqs.push(SeqInput {
                        num_computed: computed,
                        num_new: new,
                        block_table: table,
                        prompt_len: 40,
                        want_logits: true,
                        all_logits: false,
                    });
                }
            }
            let tokens = vec![0u32; seqs.iter().map(|s| s.num_new).sum()];
            let batch = Batch {
                tokens: &tokens,
                seqs: &seqs,
            };
            let n = tokens.len();
            for layer in 0..2 {
                let make = |width: usize, off: usize| {
                    let data: Vec<f32> = (0..n * width).map(|i| val(i + off) * 2.0).collect();
                    data
                };
                let q = Tensor::from_vec(make(heads * dim, seed), (n, heads, 1, dim), &Device::Cpu).unwrap();
                let k = Tensor::from_vec(make(kv_heads * dim, seed + 11), (n, kv_heads, 1, dim), &Device::Cpu).unwrap();
                let v = Tensor::from_vec(make(kv_heads * dim, seed + 23), (n, kv_heads * dim), &Device::Cpu).unwrap();
                seed += 37;
                let want = crate::attention::attend(&q, &k, &v, &mut host, layer, &batch, heads).unwrap();
                let got = crate::attention::attend(&q, &k, &v, &mut tensors, layer, &batch, heads).unwrap();
                assert_eq!(got.dims(), want.dims());
                let diff = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-5, "step {step:?} layer {layer}: max difference {diff}");
            }
        }
    }

    #[test]
    fn decode_sequences_are_grouped_by_length_within_the_budget() {
        let tables: Vec<Vec<u32>> = (0..5).map(|i| vec![2 * i, 2 * i + 1]).collect();
        // Lengths 50, 3, 40, 4, 45 (decode), and one prefill chunk.
        let lens = [50usize, 3, 40, 4, 45];
        let mut seqs: Vec<SeqInput> = lens
            .iter()
            .zip(&tables)
            .map(|(&len, t)| SeqInput {
                num_computed: len - 1,
                num_new: 1,
                block_table: t,
                prompt_len: 1,
                want_logits: true,
                all_logits: false,
            })
            .collect();
        let prefill = [11u32];
        seqs.push(SeqInput {
            num_computed: 0,
            num_new: 6,
            block_table: &prefill,
            prompt_len: 6,
            want_logits: true,
            all_logits: false,
        });
        let tokens = vec![0u32; 11];
        let batch = Batch {
            tokens: &tokens,
            seqs: &seqs,
        };
        let kv_width = 8;
        // Room for two sequences of 50 keys.
        let budget = 2 * 50 * kv_width * 4;
        let plan = StepPlan::new(&batch, 32, kv_width, budget, &Device::Cpu).unwrap();
        let shape: Vec<(usize, usize, usize)> = plan.groups.iter().map(|g| (g.seqs, g.rows, g.len)).collect();
        // The prefill chunk first; then decode sorted by length, as many as fit padded to the longest:
        // (3, 4), (40, 45), (50).
        assert_eq!(shape, vec![(1, 6, 6), (2, 1, 4), (2, 1, 45), (1, 1, 50)]);
        let rows: Vec<u32> = plan
            .groups
            .iter()
            .flat_map(|g| g.q_rows.to_vec1::<u32>().unwrap())
            .collect();
        assert_eq!(rows, vec![5, 6, 7, 8, 9, 10, 1, 3, 2, 4, 0]);
        let inverse = plan.inverse.to_vec1::<u32>().unwrap();
        for (at, &r) in rows.iter().enumerate() {
            assert_eq!(inverse[r as usize] as usize, at);
        }
        // Slot ids of the length-3 sequence (table [2, 3]): slots 64, 65, 66, then padding.
        let slots = plan.groups[1].slots.to_vec1::<u32>().unwrap();
        assert_eq!(&slots[..4], &[64, 65, 66, 0]);
        // Its mask: three visible keys, the padding hidden.
        let mask = plan.groups[1].mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(mask[..3], [0.0; 3]);
        assert_eq!(mask[3], f32::NEG_INFINITY);
    }
}

//! Building blocks shared by the architecture files: traced linear layers, RMS norm, rotary embedding with
//! per-token positions, and the SwiGLU MLP. Like candle's `with_tracing.rs`, each forward enters a TRACE span.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::{Gguf, ModelError};

/// A quantized linear layer `y = x Wᵀ (+ b)`, with a TRACE span per call.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    span: tracing::Span,
}

/// How a [`Linear`] holds its weight: a Q4_1 matrix on the CPU, a Q8_0 one of a shape candle does not repack,
/// a Q4_K one of a shape candle repacks, and a Q6_K or Q8_0 output projection of sixteen-column multiples, are
/// repacked once, at load, for our kernels (and the `QTensor` dropped, unless something else shares it);
/// everything else stays candle's.
#[derive(Debug, Clone)]
enum Weight {
    Candle(QMatMul),
    Q4_1(std::sync::Arc<crate::kernels::Q4_1x8>),
    Q8_0(std::sync::Arc<crate::kernels::Q8_0x8>),
    Q4K(std::sync::Arc<crate::kernels::Q4Kx16>),
    Q6K(std::sync::Arc<crate::kernels::Q6Kx16>),
    Q8_0x16(std::sync::Arc<crate::kernels::Q8_0x16>),
}

impl Linear {
    /// Load `{name}.weight` of shape `[out_dim, in_dim]`, and `{name}.bias` when `with_bias`.
    pub fn load(
        gguf: &mut Gguf,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        with_bias: bool,
    ) -> Result<Self, ModelError> {
        let weight = gguf.qmatmul(&format!("{name}.weight"), out_dim, in_dim)?;
        let bias = if with_bias {
            Some(gguf.vector(&format!("{name}.bias"), out_dim)?)
        } else {
            None
        };
        Ok(Self::new(weight, bias, name))
    }

    /// Wrap an already-loaded weight (the tied output projection reuses the embedding). A Q4_1 weight on the
    /// CPU is repacked here for [`crate::kernels::Q4_1x8`], a Q8_0 one for [`crate::kernels::Q8_0x8`] and a
    /// Q4_K one for [`crate::kernels::Q4Kx16`] where those apply; a tied Q4_1 or Q4_K table is then held twice
    /// (the embedding keeps the `QTensor` for its row lookups; a tied Q8_0 table serves both).
    pub fn new(weight: QMatMul, bias: Option<Tensor>, name: &str) -> Self {
        let span = tracing::trace_span!("linear", name = name.to_string());
        let weight = match &weight {
            QMatMul::QTensor(t) if t.dtype() == GgmlDType::Q4_1 && t.device().is_cpu() => {
                match crate::kernels::Q4_1x8::new(t) {
                    Ok(w) => Weight::Q4_1(std::sync::Arc::new(w)),
                    Err(_) => Weight::Candle(weight),
                }
            }
            QMatMul::QTensor(t) if crate::kernels::Q8_0x8::takes(t) => match crate::kernels::Q8_0x8::new(t) {
                Ok(w) => Weight::Q8_0(std::sync::Arc::new(w)),
                Err(_) => Weight::Candle(weight),
            },
            QMatMul::QTensor(t) if t.dtype() == GgmlDType::Q4K && t.device().is_cpu() => {
                match crate::kernels::Q4Kx16::new(t) {
                    Ok(Some(w)) => Weight::Q4K(std::sync::Arc::new(w)),
                    Ok(None) | Err(_) => Weight::Candle(weight),
                }
            }
            _ => Weight::Candle(weight),
        };
        Self { weight, bias, span }
    }

    /// [`Self::new`] for a model's output projection, where a Q6_K weight on the CPU goes to
    /// [`crate::kernels::Q6Kx16`] and a Q8_0 one to
    /// [`crate::kernels::Q8_0x16`] where they apply. Those kernels round otherwise than candle (as llama.cpp
    /// does), so only here: the logits feed no later layer, and the difference stays at rounding level, while
    /// in a hidden layer it can move an activation across a Q8_K rounding step and grow (with every Q6_K layer
    /// on `Q6Kx16`, Qwen2.5-Coder-1.5B left the reference's greedy tokens at a top-2 gap of 0.033, over the
    /// fidelity test's 0.01).
    fn new_output(weight: QMatMul, name: &str) -> Self {
        let repacked = match &weight {
            QMatMul::QTensor(t) if t.dtype() == GgmlDType::Q6K && t.device().is_cpu() => crate::kernels::Q6Kx16::new(t)
                .ok()
                .flatten()
                .map(|w| Weight::Q6K(std::sync::Arc::new(w))),
            QMatMul::QTensor(t) if t.dtype() == GgmlDType::Q8_0 && t.device().is_cpu() => {
                crate::kernels::Q8_0x16::new(t)
                    .ok()
                    .flatten()
                    .map(|w| Weight::Q8_0x16(std::sync::Arc::new(w)))
            }
            _ => None,
        };
        match repacked {
            Some(weight) => Self {
                weight,
                bias: None,
                span: tracing::trace_span!("linear", name = name.to_string()),
            },
            None => Self::new(weight, None, name),
        }
    }

    /// Rows of the weight: the output dimension.
    pub fn out_dim(&self) -> usize {
        self.weight_shape().0
    }

    fn weight_shape(&self) -> (usize, usize) {
        match &self.weight {
            Weight::Candle(QMatMul::QTensor(t)) => t.shape().dims2().unwrap_or((0, 0)),
            Weight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dims2().unwrap_or((0, 0)),
            Weight::Q4_1(w) => w.shape(),
            Weight::Q8_0(w) => w.shape(),
            Weight::Q4K(w) => w.shape(),
            Weight::Q6K(w) => w.shape(),
            Weight::Q8_0x16(w) => w.shape(),
        }
    }

    /// `x`: `[tokens, in_dim]` → `[tokens, out_dim]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_rows(x, None)
    }

    /// Like [`Self::forward`], but for a weight type whose candle kernel depends on the number of rows
    /// (Q6_K: a compact kernel for one row, a repacked one for more), `rows` says how the reference model
    /// would have run each row: decode rows alone, prompt rows together. Each row then rounds the same
    /// whatever else is in the batch.
    pub fn forward_rows(&self, x: &Tensor, rows: Option<&RowKinds>) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let weight = match &self.weight {
            Weight::Q4_1(w) => return self.add_bias(w.matmul(x)?),
            Weight::Q8_0(w) => return self.add_bias(w.matmul(x)?),
            // Each row rounds the same in any batch: no row grouping to follow.
            Weight::Q4K(w) => return self.add_bias(w.matmul(x)?),
            Weight::Q6K(w) => return self.add_bias(w.matmul(x)?),
            Weight::Q8_0x16(w) => return self.add_bias(w.matmul(x)?),
            Weight::Candle(weight) => weight,
        };
        let y = match (rows, weight) {
            // Only the CPU reference rounds by row count; other devices run one plain matmul.
            (Some(rows), QMatMul::QTensor(t))
                if t.dtype() == GgmlDType::Q6K && x.device().is_cpu() && (rows.mixed() || rows.prompt.is_empty()) =>
            {
                // Decode rows: one-row rounding, by our kernel when it applies (it also beats candle's one-row
                // call on a single row), else row by row.
                let decode = |x: &Tensor| match crate::kernels::q6k_matmul_rows(x, t)? {
                    Some(y) => Ok(y),
                    None => {
                        let rows = (0..x.dim(0)?)
                            .map(|r| weight.forward(&x.narrow(0, r, 1)?))
                            .collect::<candle_core::Result<Vec<_>>>()?;
                        Tensor::cat(&rows, 0)
                    }
                };
                if rows.prompt.is_empty() {
                    decode(x)?
                } else {
                    rows.apply(x, |x| weight.forward(x), decode)?
                }
            }
            _ => weight.forward(x)?,
        };
        self.add_bias(y)
    }

    /// [`Self::forward_rows`] of the same `x` by each of `layers`: a layer's q/k/v, or gate and up. Repacked
    /// Q4_1 weights (when all are) and repacked Q4_K weights (when two or more are) have the activations
    /// quantized once and their products run as one parallel loop; the other layers run on their own. The
    /// results are the same either way.
    pub fn forward_many<const N: usize>(
        layers: [&Linear; N],
        x: &Tensor,
        rows: Option<&RowKinds>,
    ) -> candle_core::Result<[Tensor; N]> {
        let mut ys: [Option<Tensor>; N] = std::array::from_fn(|_| None);
        let q4_1: Vec<&crate::kernels::Q4_1x8> = layers
            .iter()
            .filter_map(|l| match &l.weight {
                Weight::Q4_1(w) => Some(&**w),
                _ => None,
            })
            .collect();
        let q4k: Vec<(usize, &crate::kernels::Q4Kx16)> = layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match &l.weight {
                Weight::Q4K(w) => Some((i, &**w)),
                _ => None,
            })
            .collect();
        if N > 1 && q4_1.len() == N && q4_1.iter().all(|w| w.shape().1 == q4_1[0].shape().1) {
            let _enter = layers[0].span.enter();
            let products = crate::kernels::Q4_1x8::matmul_many(&q4_1, x)?;
            for ((l, y), slot) in layers.iter().zip(products).zip(&mut ys) {
                *slot = Some(l.add_bias(y)?);
            }
        } else if q4k.len() > 1 && q4k.iter().all(|(_, w)| w.shape().1 == q4k[0].1.shape().1) {
            let _enter = layers[q4k[0].0].span.enter();
            let ws: Vec<_> = q4k.iter().map(|&(_, w)| w).collect();
            let products = crate::kernels::Q4Kx16::matmul_many(&ws, x)?;
            for (&(i, _), y) in q4k.iter().zip(products) {
                ys[i] = Some(layers[i].add_bias(y)?);
            }
        }
        let mut out = Vec::with_capacity(N);
        for (l, y) in layers.iter().zip(ys) {
            out.push(match y {
                Some(y) => y,
                None => l.forward_rows(x, rows)?,
            });
        }
        Ok(out.try_into().unwrap_or_else(|_| unreachable!("one product per layer")))
    }

    fn add_bias(&self, y: Tensor) -> candle_core::Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Which rows of a step are decode rows (a generated token, or a one-token prompt: the reference runs them
/// as one-row matmuls) and which are prompt rows (the reference runs a prompt as one many-row matmul).
#[derive(Debug, Clone)]
pub struct RowKinds {
    /// Indices of prompt rows, in order.
    prompt: Vec<u32>,
    /// Indices of decode rows, in order.
    decode: Vec<u32>,
}

impl RowKinds {
    /// Classify the rows of `batch`.
    pub fn new(batch: &crate::Batch<'_>) -> Self {
        let (mut prompt, mut decode) = (Vec::new(), Vec::new());
        let mut row = 0u32;
        for seq in batch.seqs {
            for pos in seq.num_computed..seq.num_computed + seq.num_new {
                if pos < seq.prompt_len && seq.prompt_len > 1 {
                    prompt.push(row)
                } else {
                    decode.push(row)
                }
                row += 1;
            }
        }
        Self { prompt, decode }
    }

    /// Whether a plain matmul over all rows could round a row differently from the reference.
    fn mixed(&self) -> bool {
        self.decode.len() > 1 || (self.decode.len() == 1 && !self.prompt.is_empty()) || self.prompt.len() == 1
    }

    /// Run `f` on the prompt rows together (at least two rows, padding with a copy) and `decode` on the decode
    /// rows (which must round each row as a one-row matmul would), and put the results back in row order.
    fn apply(
        &self,
        x: &Tensor,
        f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        decode: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let mut parts = Vec::new();
        let mut order = Vec::new();
        if !self.prompt.is_empty() {
            let mut idx = self.prompt.clone();
            if idx.len() == 1 {
                idx.push(idx[0]);
            }
            let ids = Tensor::from_vec(idx, self.prompt.len().max(2), x.device())?;
            let y = f(&x.index_select(&ids, 0)?)?;
            parts.push(y.narrow(0, 0, self.prompt.len())?);
            order.extend_from_slice(&self.prompt);
        }
        if !self.decode.is_empty() {
            let ids = Tensor::from_vec(self.decode.clone(), self.decode.len(), x.device())?;
            parts.push(decode(&x.index_select(&ids, 0)?)?);
            order.extend_from_slice(&self.decode);
        }
        let y = Tensor::cat(&parts, 0)?;
        // `order[i]` is the row that `y[i]` belongs to; invert it to gather rows back in place.
        let mut inverse = vec![0u32; n];
        for (i, &r) in order.iter().enumerate() {
            inverse[r as usize] = i as u32;
        }
        y.index_select(&Tensor::from_vec(inverse, n, x.device())?, 0)
    }
}

/// RMS normalisation over the last dimension, `x / sqrt(mean(x²) + eps) * weight`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// The weight's values, for the CPU path.
    alpha: Vec<f32>,
    eps: f32,
    span: tracing::Span,
}

impl RmsNorm {
    /// Load `{name}.weight` of length `dim`.
    pub fn load(gguf: &mut Gguf, name: &str, dim: usize, eps: f32) -> Result<Self, ModelError> {
        let weight = gguf.vector(&format!("{name}.weight"), dim)?;
        let alpha = if weight.device().is_cpu() {
            weight.to_dtype(DType::F32)?.to_vec1::<f32>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            weight,
            alpha,
            eps,
            span: tracing::trace_span!("rms_norm"),
        })
    }

    /// Normalise each row of `x`.
    ///
    /// On the CPU, f32 rows go through our loop, which computes candle's `rms_norm` bit for bit (each row's
    /// squares summed in order, then `x / m * alpha`) but sums `NORM_ROWS` rows side by side: candle's
    /// one-row sum waits on each addition in turn, and a decode step of 8 rows spent 2 % of its time there.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let n = self.alpha.len();
        if !x.device().is_cpu() || x.dtype() != DType::F32 || n == 0 || x.dim(candle_core::D::Minus1)? != n {
            return candle_nn::ops::rms_norm(x, &self.weight, self.eps);
        }
        let xs = crate::kernels::f32_view(x)?;
        let mut out = vec![0f32; xs.len()];
        crate::kernels::for_each_chunk(&mut out, NORM_ROWS * n, |i, out| {
            let src = &xs[i * NORM_ROWS * n..][..out.len()];
            match out.len() / n {
                NORM_ROWS => rms_rows::<NORM_ROWS>(src, &self.alpha, self.eps, out),
                rows => {
                    for (src, out) in src.chunks_exact(n).zip(out.chunks_exact_mut(n)).take(rows) {
                        rms_rows::<1>(src, &self.alpha, self.eps, out);
                    }
                }
            }
        });
        Tensor::from_vec(out, x.shape(), x.device())
    }
}

/// Rows [`RmsNorm::forward`] sums side by side.
const NORM_ROWS: usize = 8;

/// `R` rows of `alpha.len()` values (`src`, row-major) normalised into `out`, each row as candle's `rms_row`
/// computes it: `Σ v·v` in order from the first value, `m = sqrt(Σ / n + eps)`, then `v / m * alpha`.
#[inline(always)]
fn rms_rows<const R: usize>(src: &[f32], alpha: &[f32], eps: f32, out: &mut [f32]) {
    let n = alpha.len();
    let mut sum2 = [0f32; R];
    for j in 0..n {
        for (r, sum) in sum2.iter_mut().enumerate() {
            let v = src[r * n + j];
            *sum += v * v;
        }
    }
    for (r, sum) in sum2.iter().enumerate() {
        let m = (sum / n as f32 + eps).sqrt();
        for ((d, &s), &a) in out[r * n..(r + 1) * n]
            .iter_mut()
            .zip(&src[r * n..(r + 1) * n])
            .zip(alpha)
        {
            *d = s / m * a;
        }
    }
}

/// Which elements RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: llama.cpp's NORM type, used by Llama and Mistral GGUFs.
    Interleaved,
    /// Pairs `(i, i + d/2)`: llama.cpp's NEOX type, used by Qwen2 and Qwen3.
    Neox,
}

impl RopeStyle {
    /// Rotate one head `x` (`head_dim` values) by one token's `cos` and `sin` rows (`head_dim / 2` values)
    /// into `out`, element for element as candle's `rope_i` (interleaved) and `rope` (NEOX) compute it.
    pub(crate) fn rotate(self, x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
        let half = cos.len();
        match self {
            Self::Interleaved => {
                for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
                    let (a, b) = (x[2 * i], x[2 * i + 1]);
                    out[2 * i] = a * c - b * s;
                    out[2 * i + 1] = a * s + b * c;
                }
            }
            Self::Neox => {
                for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
                    let (a, b) = (x[i], x[i + half]);
                    out[i] = a * c - b * s;
                    out[i + half] = a * s + b * c;
                }
            }
        }
    }
}

/// Rotary position embedding with precomputed cos/sin tables, applied at per-token positions so that one
/// batch can hold sequences at different positions.
#[derive(Debug, Clone)]
pub struct Rotary {
    /// `[max_positions, head_dim / 2]`.
    cos: Tensor,
    /// `[max_positions, head_dim / 2]`.
    sin: Tensor,
    style: RopeStyle,
    span: tracing::Span,
}

impl Rotary {
    /// Tables for `max_positions` positions. `freq_factors` (Llama 3's `rope_freqs.weight`) divide the
    /// frequencies when present, as llama.cpp does.
    pub fn new(
        head_dim: usize,
        base: f32,
        max_positions: usize,
        style: RopeStyle,
        freq_factors: Option<&[f32]>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        // Built exactly as candle-transformers' quantized models build theirs, so the tables are bit-identical
        // to the reference implementation.
        let theta: Vec<f32> = (0..head_dim)
            .step_by(2)
            .enumerate()
            .map(|(j, i)| {
                let f = 1f32 / base.powf(i as f32 / head_dim as f32);
                f / freq_factors.map_or(1.0, |ff| ff[j])
            })
            .collect();
        let half = theta.len();
        let theta = Tensor::new(theta.as_slice(), device)?;
        let idx_theta = Tensor::arange(0, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?
            .matmul(&theta.reshape((1, half))?)?;
        Ok(Self {
            cos: idx_theta.cos()?,
            sin: idx_theta.sin()?,
            style,
            span: tracing::trace_span!("rope"),
        })
    }

    /// Which elements rotate together.
    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// Number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// cos and sin rows for `positions`, shaped `[tokens, 1, head_dim / 2]` for [`Self::apply`].
    pub fn tables(&self, positions: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let n = positions.dim(0)?;
        let cos = self.cos.index_select(positions, 0)?;
        let sin = self.sin.index_select(positions, 0)?;
        let half = cos.dim(1)?;
        Ok((cos.reshape((n, 1, half))?, sin.reshape((n, 1, half))?))
    }

    /// Rotate `x` of shape `[tokens, heads * head_dim]`; token `t` uses row `t` of the tables.
    /// Returns `[tokens, heads, 1, head_dim]` (contiguous, same memory order as `[tokens, heads, head_dim]`).
    pub fn apply(&self, x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let (tokens, width) = x.dims2()?;
        // candle's rope kernels take (batch, heads, seq, dim) and, with 3-D tables, one table row per batch
        // entry: making every token its own batch entry gives per-token positions.
        let x = x.reshape((tokens, heads, 1, width / heads))?.contiguous()?;
        match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin),
            RopeStyle::Neox => candle_nn::rotary_emb::rope(&x, cos, sin),
        }
    }
}

/// The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    span: tracing::Span,
}

impl Mlp {
    /// Load `{prefix}.ffn_gate`, `ffn_up` and `ffn_down`.
    pub fn load(gguf: &mut Gguf, prefix: &str, hidden: usize, intermediate: usize) -> Result<Self, ModelError> {
        Ok(Self {
            gate: Linear::load(gguf, &format!("{prefix}.ffn_gate"), intermediate, hidden, false)?,
            up: Linear::load(gguf, &format!("{prefix}.ffn_up"), intermediate, hidden, false)?,
            down: Linear::load(gguf, &format!("{prefix}.ffn_down"), hidden, intermediate, false)?,
            span: tracing::trace_span!("mlp"),
        })
    }

    /// `x`: `[tokens, hidden]`; `rows` as in [`Linear::forward_rows`].
    pub fn forward(&self, x: &Tensor, rows: &RowKinds) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let [gate, up] = Linear::forward_many([&self.gate, &self.up], x, Some(rows))?;
        self.down.forward_rows(&silu_mul(&gate, &up)?, Some(rows))
    }
}

/// `silu(gate) * up`, elementwise, with candle's roundings (`silu(v) = v / (1 + exp(-v))`, then the product),
/// in one pass spread over the barrier pool for f32 CPU tensors; candle's two ops elsewhere. candle runs its
/// SiLU on one thread below 64k elements, and its `exp` was 3 % of an 8-stream SmolLM2 decode step.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !gate.device().is_cpu() || gate.dtype() != DType::F32 || up.dtype() != DType::F32 || gate.shape() != up.shape() {
        return candle_nn::ops::silu(gate)? * up;
    }
    let (g, u) = (crate::kernels::f32_view(gate)?, crate::kernels::f32_view(up)?);
    const CHUNK: usize = 2048;
    let mut out = Vec::with_capacity(g.len());
    crate::kernels::for_each_chunk(&mut out.spare_capacity_mut()[..g.len()], CHUNK, |i, out| {
        let (g, u) = (&g[i * CHUNK..][..out.len()], &u[i * CHUNK..][..out.len()]);
        for ((o, &v), &w) in out.iter_mut().zip(g).zip(u) {
            o.write(v / (1.0 + (-v).exp()) * w);
        }
    });
    // SAFETY: the loop above wrote every element.
    unsafe { out.set_len(g.len()) };
    Tensor::from_vec(out, gate.shape(), gate.device())
}

/// The token embedding table, kept quantized; rows are dequantized on lookup.
#[derive(Debug)]
pub struct Embedding {
    table: Table,
    span: tracing::Span,
}

/// Where the embedding rows come from: the loaded `QTensor`, or the tied output projection's Q8_0 or Q6_K repack
/// (the `QTensor` is then dropped, so the table is held once).
#[derive(Debug)]
enum Table {
    Candle(std::sync::Arc<QTensor>),
    Q8_0(std::sync::Arc<crate::kernels::Q8_0x8>),
    Q8_0x16(std::sync::Arc<crate::kernels::Q8_0x16>),
    Q6K(std::sync::Arc<crate::kernels::Q6Kx16>),
}

impl Embedding {
    /// Load `token_embd.weight` of shape `[vocab, hidden]`.
    pub fn load(gguf: &mut Gguf, vocab: usize, hidden: usize) -> Result<Self, ModelError> {
        let table = gguf.tensor("token_embd.weight", Some(&[vocab, hidden]))?;
        Ok(Self {
            table: Table::Candle(std::sync::Arc::new(table)),
            span: tracing::trace_span!("embedding"),
        })
    }

    /// `ids`: `[tokens]` u32 → `[tokens, hidden]` f32.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        match &self.table {
            Table::Candle(t) => t.embedding(ids),
            Table::Q8_0(w) => lookup(ids, w.shape().1, |ids| w.rows(ids)),
            Table::Q8_0x16(w) => lookup(ids, w.shape().1, |ids| w.rows(ids)),
            Table::Q6K(w) => lookup(ids, w.shape().1, |ids| w.rows(ids)),
        }
    }
}

/// `ids` (`[tokens]` u32) looked up by a repacked table's `rows` → `[tokens, hidden]` f32.
fn lookup(
    ids: &Tensor,
    hidden: usize,
    rows: impl FnOnce(&[u32]) -> candle_core::Result<Vec<f32>>,
) -> candle_core::Result<Tensor> {
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    Tensor::from_vec(rows(&ids)?, (ids.len(), hidden), &candle_core::Device::Cpu)
}

/// The vocabulary size and hidden size of `token_embd.weight`.
pub fn embedding_shape(gguf: &Gguf) -> Result<(usize, usize), ModelError> {
    match gguf.tensor_shape("token_embd.weight")?.as_slice() {
        &[vocab, hidden] => Ok((vocab, hidden)),
        other => Err(ModelError::Shape {
            name: "token_embd.weight".into(),
            expected: vec![0, 0],
            actual: other.to_vec(),
        }),
    }
}

/// The output projection: `output.weight` when present, else the embedding table (tied embeddings, as in
/// SmolLM2 and the small Qwen models). A tied table that the projection repacks (Q8_0, Q6_K) then serves the
/// embedding's lookups too.
pub fn output_projection(
    gguf: &mut Gguf,
    embedding: &mut Embedding,
    vocab: usize,
    hidden: usize,
) -> Result<Linear, ModelError> {
    if gguf.has_tensor("output.weight") {
        return Ok(Linear::new_output(
            gguf.qmatmul("output.weight", vocab, hidden)?,
            "output",
        ));
    }
    let name = "output(tied)";
    let table = match &embedding.table {
        Table::Candle(table) => table.clone(),
        Table::Q8_0(w) => {
            return Ok(Linear {
                weight: Weight::Q8_0(w.clone()),
                bias: None,
                span: tracing::trace_span!("linear", name),
            })
        }
        Table::Q8_0x16(w) => {
            return Ok(Linear {
                weight: Weight::Q8_0x16(w.clone()),
                bias: None,
                span: tracing::trace_span!("linear", name),
            })
        }
        Table::Q6K(w) => {
            return Ok(Linear {
                weight: Weight::Q6K(w.clone()),
                bias: None,
                span: tracing::trace_span!("linear", name),
            })
        }
    };
    let output = Linear::new_output(QMatMul::from_arc(table)?, name);
    match &output.weight {
        Weight::Q8_0(w) => embedding.table = Table::Q8_0(w.clone()),
        Weight::Q8_0x16(w) => embedding.table = Table::Q8_0x16(w.clone()),
        Weight::Q6K(w) => embedding.table = Table::Q6K(w.clone()),
        _ => {}
    }
    Ok(output)
}

/// Per-step tensors every architecture needs: token ids, rotary tables at each token's position, and the
/// rows whose logits are wanted.
pub struct StepInputs {
    /// `[tokens]` u32.
    pub ids: Tensor,
    /// `[tokens, 1, head_dim / 2]`.
    pub cos: Tensor,
    /// `[tokens, 1, head_dim / 2]`.
    pub sin: Tensor,
    /// Indices of the rows to project to logits.
    pub logit_rows: Tensor,
    /// How the reference would have grouped each row into matmuls.
    pub rows: RowKinds,
}

impl StepInputs {
    /// Build the step tensors for `batch`, checking it against the cache and the rotary table.
    pub fn new(
        batch: &crate::Batch<'_>,
        rotary: &Rotary,
        cache: &crate::KvCache,
        device: &Device,
    ) -> Result<Self, ModelError> {
        batch.validate(cache.block_size(), cache.num_blocks())?;
        if batch.tokens.is_empty() {
            return Err(ModelError::InvalidBatch("the batch has no tokens".into()));
        }
        let positions = batch.positions();
        let max = *positions.iter().max().expect("batch is not empty") as usize;
        if max >= rotary.max_positions() {
            return Err(ModelError::InvalidBatch(format!(
                "position {max} is past the model's context of {} positions",
                rotary.max_positions()
            )));
        }
        let n = positions.len();
        let positions = Tensor::from_vec(positions, n, device)?;
        let (cos, sin) = rotary.tables(&positions)?;
        let rows = batch.logit_rows();
        let n_rows = rows.len();
        Ok(Self {
            ids: Tensor::from_vec(batch.tokens.to_vec(), n, device)?,
            cos,
            sin,
            logit_rows: Tensor::from_vec(rows, n_rows, device)?,
            rows: RowKinds::new(batch),
        })
    }
}

/// Final norm and output projection of the wanted rows of `x` (`[tokens, hidden]`) → `[rows, vocab]`.
pub fn logits(x: &Tensor, rows: &Tensor, norm: &RmsNorm, output: &Linear) -> candle_core::Result<Tensor> {
    if rows.dim(0)? == 0 {
        return Tensor::zeros((0, output.out_dim()), DType::F32, x.device());
    }
    let x = x.index_select(rows, 0)?;
    // The reference projects one sequence's last row at a time.
    let all_decode = RowKinds {
        prompt: Vec::new(),
        decode: (0..rows.dim(0)? as u32).collect(),
    };
    output.forward_rows(&norm.forward(&x)?, Some(&all_decode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_is_bit_identical_to_candles() {
        let dev = Device::Cpu;
        let dim = 576;
        let alpha: Vec<f32> = (0..dim).map(|i| ((i * 104729 % 997) as f32 - 498.0) * 0.003).collect();
        let norm = RmsNorm {
            weight: Tensor::from_vec(alpha.clone(), dim, &dev).unwrap(),
            alpha,
            eps: 1e-5,
            span: tracing::Span::none(),
        };
        // Whole tiles of rows, a short last tile, and rows of widely spread magnitudes.
        for rows in [1usize, 8, 13, 40] {
            let x: Vec<f32> = (0..rows * dim)
                .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 10f32.powi((i % 7) as i32 - 3))
                .collect();
            let x = Tensor::from_vec(x, (rows, dim), &dev).unwrap();
            let ours = norm
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let theirs = candle_nn::ops::rms_norm(&x, &norm.weight, norm.eps)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(
                ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                theirs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{rows} rows"
            );
        }
    }

    #[test]
    fn silu_mul_is_bit_identical_to_candles_silu_then_mul() {
        // Several chunks and a short last one; values across exp's range, zeros and signs included.
        let n = 3 * 4099;
        let gate: Vec<f32> = (0..n).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.031).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i * 104729 % 997) as f32 - 498.0) * 0.007).collect();
        let (gate, up) = (
            Tensor::from_vec(gate, (3, 4099), &Device::Cpu).unwrap(),
            Tensor::from_vec(up, (3, 4099), &Device::Cpu).unwrap(),
        );
        let ours = silu_mul(&gate, &up)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let theirs = (candle_nn::ops::silu(&gate).unwrap() * &up)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            theirs.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

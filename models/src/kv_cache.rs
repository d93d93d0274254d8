//! [`KvCache`]: the paged key/value storage the engine owns and models write into.
//!
//! Storage is split into fixed-size blocks of `block_size` positions. A sequence's block table lists the blocks
//! that hold its positions in order, so sequences grow without copying and share prefix blocks. Which block
//! belongs to whom is the engine's business (its block manager); this type only stores values.
//!
//! Layout of each layer, f32 on the CPU:
//! ```text
//! keys:   [num_blocks][num_kv_heads][head_dim][block_size]   (transposed within a block)
//! values: [num_blocks][num_kv_heads][block_size][head_dim]
//! ```
//! One head's block is contiguous either way. Keys are transposed so that the attention kernel computes the
//! scores of a whole block's positions at once, one dimension at a time (see `attention.rs`).
//!
//! A cache made with [`KvCache::new_tensors`] keeps each layer as two candle tensors on any device instead
//! (the layout on CUDA, f16 there), one row per slot, `slot = block * block_size + offset`:
//! ```text
//! keys, values:   [num_blocks * block_size, num_kv_heads * head_dim]
//! ```
//! Such a cache is read by `attention_ops.rs` (attention from candle ops), never by the CPU kernel.

use candle_core::{DType, Device, Tensor};

use crate::ModelError;

/// The key/value geometry of a model: what one cached position costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Transformer blocks, each with its own keys and values.
    pub num_layers: usize,
    /// Key/value heads per layer.
    pub num_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
}

impl KvLayout {
    /// Bytes one cached position takes across all layers (keys and values, f32).
    pub fn bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}

/// Keys and values of one layer.
#[derive(Debug)]
pub struct LayerKv {
    /// `[num_blocks][num_kv_heads][head_dim][block_size]`.
    pub k: Vec<f32>,
    /// `[num_blocks][num_kv_heads][block_size][head_dim]`.
    pub v: Vec<f32>,
}

/// Keys and values of one layer of a tensor cache ([`KvCache::new_tensors`]).
#[derive(Debug)]
pub struct TensorLayerKv {
    /// `[num_blocks * block_size, num_kv_heads * head_dim]`, one row per slot.
    pub k: Tensor,
    /// `[num_blocks * block_size, num_kv_heads * head_dim]`, one row per slot.
    pub v: Tensor,
}

/// The layers of a tensor cache, plus the gather plan of the step in flight (built by the first layer's
/// attention call and reused by the others, so index and mask tensors go to the device once per step).
#[derive(Debug)]
pub(crate) struct TensorKv {
    pub(crate) layers: Vec<TensorLayerKv>,
    pub(crate) plan: Option<crate::attention_ops::StepPlan>,
}

/// Paged key/value storage for all layers.
#[derive(Debug)]
pub struct KvCache {
    layout: KvLayout,
    block_size: usize,
    num_blocks: usize,
    /// Host storage for the CPU kernel; empty for a tensor cache.
    layers: Vec<LayerKv>,
    /// Tensor storage for attention from candle ops; `None` for a host cache.
    tensors: Option<TensorKv>,
}

impl KvCache {
    /// Allocate `num_blocks` blocks of `block_size` positions for every layer.
    pub fn new(layout: KvLayout, num_blocks: usize, block_size: usize) -> Result<Self, ModelError> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::InvalidBatch(format!(
                "a KV cache needs at least one block of at least one position (got {num_blocks} blocks of {block_size})"
            )));
        }
        let per_layer = num_blocks * layout.num_kv_heads * block_size * layout.head_dim;
        // Zeros written, not `vec![0.0; n]` (fresh pages from the kernel that fault in on first use): the cache
        // is resident from the start, as llama.cpp's is, and a step that reaches a block for the first time
        // does not stop to fault its pages in (3.5 % of an 8-stream SmolLM2 decode step, measured).
        let zeros = || {
            let mut v = Vec::with_capacity(per_layer);
            v.resize(per_layer, 0f32);
            v
        };
        let layers = (0..layout.num_layers)
            .map(|_| LayerKv { k: zeros(), v: zeros() })
            .collect();
        Ok(Self {
            layout,
            block_size,
            num_blocks,
            layers,
            tensors: None,
        })
    }

    /// Allocate `num_blocks` blocks of `block_size` positions for every layer as tensors of `dtype` (f16 or
    /// f32) on `device`. Models run attention over such a cache with candle ops (`attention_ops.rs`): the
    /// path for CUDA, and on the CPU a testable twin of it (the CPU kernel needs [`KvCache::new`]).
    pub fn new_tensors(
        layout: KvLayout,
        num_blocks: usize,
        block_size: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::InvalidBatch(format!(
                "a KV cache needs at least one block of at least one position (got {num_blocks} blocks of {block_size})"
            )));
        }
        if !matches!(dtype, DType::F16 | DType::F32) {
            return Err(ModelError::InvalidBatch(format!(
                "a tensor KV cache holds f16 or f32, not {dtype:?}"
            )));
        }
        let shape = (num_blocks * block_size, layout.num_kv_heads * layout.head_dim);
        let layers = (0..layout.num_layers)
            .map(|_| {
                Ok(TensorLayerKv {
                    k: Tensor::zeros(shape, dtype, device)?,
                    v: Tensor::zeros(shape, dtype, device)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            layout,
            block_size,
            num_blocks,
            layers: Vec::new(),
            tensors: Some(TensorKv { layers, plan: None }),
        })
    }

    /// Whether this cache holds tensors ([`KvCache::new_tensors`]) rather than host vectors.
    pub fn is_tensors(&self) -> bool {
        self.tensors.is_some()
    }

    /// Bytes the cache holds over all layers.
    pub fn bytes(&self) -> usize {
        let per_value = match &self.tensors {
            Some(t) => t.layers.first().map_or(4, |l| l.k.dtype().size_in_bytes()),
            None => std::mem::size_of::<f32>(),
        };
        self.layout.bytes_per_token() / std::mem::size_of::<f32>() * per_value * self.num_blocks * self.block_size
    }

    /// The tensor storage, for attention from candle ops; `None` for a host cache.
    pub(crate) fn tensors_mut(&mut self) -> Option<&mut TensorKv> {
        self.tensors.as_mut()
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// The geometry this cache was built for.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Keys and values of layer `i` of a host cache ([`KvCache::new`]).
    ///
    /// # Panics
    /// On a tensor cache, which has no host layers (`attention::attend` never asks one for them).
    pub fn layer(&self, i: usize) -> &LayerKv {
        self.layers
            .get(i)
            .expect("host KV layer: a tensor cache is read by attention_ops, never by the CPU kernel")
    }

    /// Mutable keys and values of layer `i` of a host cache; panics like [`KvCache::layer`].
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        self.layers
            .get_mut(i)
            .expect("host KV layer: a tensor cache is written by attention_ops, never by the CPU kernel")
    }

    /// Offset of one head's block in a layer's `k` or `v` (both hold `block_size * head_dim` values there).
    #[inline]
    pub fn block_offset(&self, block: usize, head: usize) -> usize {
        (block * self.layout.num_kv_heads + head) * self.block_size * self.layout.head_dim
    }

    /// Copy all positions of block `src` into block `dst` in every layer (copy-on-write of a shared,
    /// partially filled block).
    pub fn copy_block(&mut self, src: usize, dst: usize) -> Result<(), ModelError> {
        if let Some(tensors) = &self.tensors {
            let bs = self.block_size;
            for layer in &tensors.layers {
                for t in [&layer.k, &layer.v] {
                    t.slice_set(&t.narrow(0, src * bs, bs)?.copy()?, 0, dst * bs)?;
                }
            }
            return Ok(());
        }
        let len = self.layout.num_kv_heads * self.block_size * self.layout.head_dim;
        for layer in &mut self.layers {
            layer.k.copy_within(src * len..(src + 1) * len, dst * len);
            layer.v.copy_within(src * len..(src + 1) * len, dst * len);
        }
        Ok(())
    }
}

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

/// Paged key/value storage for all layers.
#[derive(Debug)]
pub struct KvCache {
    layout: KvLayout,
    block_size: usize,
    num_blocks: usize,
    layers: Vec<LayerKv>,
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
        let layers = (0..layout.num_layers).map(|_| LayerKv { k: vec![0.0; per_layer], v: vec![0.0; per_layer] }).collect();
        Ok(Self { layout, block_size, num_blocks, layers })
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

    /// Keys and values of layer `i`.
    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }

    /// Mutable keys and values of layer `i`.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// Offset of one head's block in a layer's `k` or `v` (both hold `block_size * head_dim` values there).
    #[inline]
    pub fn block_offset(&self, block: usize, head: usize) -> usize {
        (block * self.layout.num_kv_heads + head) * self.block_size * self.layout.head_dim
    }

    /// Copy all positions of block `src` into block `dst` in every layer (copy-on-write of a shared,
    /// partially filled block).
    pub fn copy_block(&mut self, src: usize, dst: usize) {
        let len = self.layout.num_kv_heads * self.block_size * self.layout.head_dim;
        for layer in &mut self.layers {
            layer.k.copy_within(src * len..(src + 1) * len, dst * len);
            layer.v.copy_within(src * len..(src + 1) * len, dst * len);
        }
    }
}

//! [`BlockManager`]: which KV-cache block belongs to whom, with prefix caching.
//!
//! The cache's storage is `models::KvCache`; this module only does the bookkeeping. Each block has a
//! reference count. A block whose `block_size` positions all hold *prompt* tokens can be registered under a
//! hash of its tokens chained with its parent's hash, so a later request whose prompt starts the same way (the
//! system prompt every IM user gets) reuses it instead of recomputing it.
//!
//! Blocks with no references sit in a free list ordered by when they were released. Allocation takes the
//! oldest; if that block is still registered, it is evicted from the prefix map then. So cached prefixes
//! survive as long as memory allows and are dropped least-recently-used first.
//!
//! Invariants (checked by the randomized test below): a block is either free (reference count 0, in the free
//! list) or in use (count > 0, not in the free list); the prefix map and `block_hash` agree; free + used =
//! total.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The identity of a full prompt block: its parent's hash and its own tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockKey {
    parent: u64,
    tokens: Vec<u32>,
}

impl BlockKey {
    /// Chain hash of this block, the `parent` of the next. `DefaultHasher::new()` has fixed keys, so the value
    /// is stable within a process (it never leaves it).
    fn hash_value(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// Hashes of the full blocks of `tokens` (only whole blocks), each chained to the previous one.
pub(crate) fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<(u64, BlockKeyRef)> {
    let mut parent = 0u64;
    tokens
        .chunks_exact(block_size)
        .map(|chunk| {
            let key = BlockKey {
                parent,
                tokens: chunk.to_vec(),
            };
            let hash = key.hash_value();
            parent = hash;
            (hash, BlockKeyRef(key))
        })
        .collect()
}

/// An opaque block key, handed back to [`BlockManager::register`].
#[derive(Debug, Clone)]
pub(crate) struct BlockKeyRef(BlockKey);

/// Reference-counted KV blocks with an LRU free list and a prefix map.
#[derive(Debug)]
pub(crate) struct BlockManager {
    ref_counts: Vec<u32>,
    /// The key a block is registered under, if any.
    registered: Vec<Option<BlockKey>>,
    /// Registered full prompt blocks.
    prefix: HashMap<BlockKey, u32>,
    /// Free blocks by release tick: the first entry is the least recently released.
    free: BTreeMap<u64, u32>,
    /// Each free block's tick in `free`.
    free_tick: Vec<Option<u64>>,
    tick: u64,
    prefix_caching: bool,
}

impl BlockManager {
    /// `num_blocks` free blocks; `prefix_caching` enables reuse of registered prompt blocks.
    pub(crate) fn new(num_blocks: usize, prefix_caching: bool) -> Self {
        let mut m = Self {
            ref_counts: vec![0; num_blocks],
            registered: vec![None; num_blocks],
            prefix: HashMap::new(),
            free: BTreeMap::new(),
            free_tick: vec![None; num_blocks],
            tick: 0,
            prefix_caching,
        };
        for b in 0..num_blocks as u32 {
            m.push_free(b);
        }
        m
    }

    pub(crate) fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks that can be allocated now (free, cached or not).
    pub(crate) fn num_free(&self) -> usize {
        self.free.len()
    }

    fn push_free(&mut self, b: u32) {
        self.tick += 1;
        self.free.insert(self.tick, b);
        self.free_tick[b as usize] = Some(self.tick);
    }

    fn take_free(&mut self, b: u32) {
        let tick = self.free_tick[b as usize]
            .take()
            .expect("block taken from the free list is in it");
        self.free.remove(&tick);
    }

    /// Take the least recently released free block, evicting its prefix registration.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let (&tick, &b) = self.free.iter().next()?;
        self.free.remove(&tick);
        self.free_tick[b as usize] = None;
        if let Some(key) = self.registered[b as usize].take() {
            self.prefix.remove(&key);
        }
        self.ref_counts[b as usize] = 1;
        Some(b)
    }

    /// Drop one reference to `b`; at zero it joins the free list (still findable by prefix until reused).
    pub(crate) fn release(&mut self, b: u32) {
        let rc = &mut self.ref_counts[b as usize];
        debug_assert!(*rc > 0, "block {b} released more often than taken");
        *rc -= 1;
        if *rc == 0 {
            self.push_free(b);
        }
    }

    /// Find a registered block for `key` and take a reference to it.
    pub(crate) fn lookup(&mut self, key: &BlockKeyRef) -> Option<u32> {
        if !self.prefix_caching {
            return None;
        }
        let b = *self.prefix.get(&key.0)?;
        if self.ref_counts[b as usize] == 0 {
            self.take_free(b);
        }
        self.ref_counts[b as usize] += 1;
        Some(b)
    }

    /// Register the in-use block `b`, now full of computed prompt tokens, under `key`. A block already
    /// registered under the same key elsewhere wins; `b` then stays unregistered.
    pub(crate) fn register(&mut self, b: u32, key: &BlockKeyRef) {
        if !self.prefix_caching || self.registered[b as usize].is_some() || self.prefix.contains_key(&key.0) {
            return;
        }
        self.prefix.insert(key.0.clone(), b);
        self.registered[b as usize] = Some(key.0.clone());
    }

    /// Check the invariants; panics with a description when one is broken (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut free = 0;
        for b in 0..self.num_blocks() {
            let in_free = self.free_tick[b].is_some();
            assert_eq!(
                in_free,
                self.ref_counts[b] == 0,
                "block {b}: free list and ref count disagree"
            );
            free += usize::from(in_free);
            if let Some(key) = &self.registered[b] {
                assert_eq!(
                    self.prefix.get(key),
                    Some(&(b as u32)),
                    "block {b}: registration not in prefix map"
                );
            }
        }
        assert_eq!(free, self.free.len());
        for (key, &b) in &self.prefix {
            assert_eq!(self.registered[b as usize].as_ref(), Some(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn randomized_allocate_share_release_keeps_invariants() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut m = BlockManager::new(64, true);
        // Owners hold lists of blocks; a few fixed prompts make prefix hits likely.
        let prompts: Vec<Vec<u32>> = (0..4)
            .map(|p| (0..64).map(|i| (i % (5 + p)) as u32).collect())
            .collect();
        let mut owners: Vec<Vec<u32>> = Vec::new();
        for _ in 0..100_000 {
            match rng.random_range(0..4) {
                0 => {
                    let prompt = &prompts[rng.random_range(0..prompts.len())];
                    let mut blocks = Vec::new();
                    for (_, key) in block_hashes(prompt, 16) {
                        match m.lookup(&key).or_else(|| m.allocate()) {
                            Some(b) => {
                                m.register(b, &key);
                                blocks.push(b);
                            }
                            None => break,
                        }
                    }
                    owners.push(blocks);
                }
                1 => {
                    if let Some(b) = m.allocate() {
                        owners.push(vec![b]);
                    }
                }
                _ => {
                    if !owners.is_empty() {
                        let i = rng.random_range(0..owners.len());
                        for b in owners.swap_remove(i) {
                            m.release(b);
                        }
                    }
                }
            }
            m.check();
            let held: usize = owners.iter().map(Vec::len).sum();
            // Shared blocks are counted once per holder, so `held` can exceed the used blocks, never the reverse.
            assert!(m.num_blocks() - m.num_free() <= held);
        }
        for blocks in owners.drain(..) {
            for b in blocks {
                m.release(b);
            }
        }
        m.check();
        assert_eq!(m.num_free(), m.num_blocks(), "every block returns to the free list");
    }

    #[test]
    fn a_shared_prompt_prefix_is_found_again_after_release() {
        let mut m = BlockManager::new(8, true);
        let prompt: Vec<u32> = (0..40).collect();
        let keys = block_hashes(&prompt, 16);
        assert_eq!(keys.len(), 2, "only whole blocks are hashed");
        let first: Vec<u32> = keys
            .iter()
            .map(|(_, k)| {
                let b = m.allocate().unwrap();
                m.register(b, k);
                b
            })
            .collect();
        for &b in &first {
            m.release(b);
        }
        let again: Vec<u32> = keys.iter().map(|(_, k)| m.lookup(k).unwrap()).collect();
        assert_eq!(first, again);
        // A different first block changes the chain, so the second block no longer matches.
        let other: Vec<u32> = (100..140).collect();
        assert!(block_hashes(&other, 16).iter().all(|(_, k)| m.lookup(k).is_none()));
        m.check();
    }
}

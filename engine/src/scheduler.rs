//! [`Scheduler`]: a synchronous state machine that decides, step by step, which tokens of which sequences run.
//!
//! As in vLLM v1, prefill and decode are not separate modes. Each sequence knows how many of its tokens are
//! already in the KV cache (`num_computed`) and how many it has (`tokens.len()`); each step hands out a token
//! budget so the first catches up with the second. A long prompt is cut into chunks that fit what is left of
//! the budget, so it never stalls the streams already decoding.
//!
//! Policy, in order, each step:
//! 1. Running sequences, oldest first, get their next chunk (one token when decoding). When the KV pool has
//!    no block left for one, the youngest running sequence is preempted: its blocks are freed and it goes back
//!    to the front of the waiting queue, to be recomputed later (its prompt and what it generated so far).
//! 2. If nothing was preempted, waiting sequences are admitted strictly first-come-first-served, reusing
//!    cached prefix blocks, while the budget, the running limit and free blocks allow. The queue's head is
//!    never skipped, so no request starves.
//!
//! The scheduler does no IO and knows nothing of models or channels; it can be tested on its own.

use std::collections::{HashMap, VecDeque};

use crate::kv_cache::{block_hashes, BlockKeyRef, BlockManager};

/// Identifies a sequence inside the engine.
pub(crate) type SeqId = u64;

/// Scheduler limits.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    /// Tokens computed per step, over all sequences.
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_running: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Reuse registered prompt blocks.
    pub prefix_caching: bool,
}

/// One sequence: its tokens and where its keys and values live.
#[derive(Debug)]
pub(crate) struct Sequence {
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    /// Length of the prompt part of `tokens`.
    pub prompt_len: usize,
    /// Tokens whose keys/values are in the cache.
    pub num_computed: usize,
    /// Block table: block `i` holds positions `i * block_size ..`.
    pub blocks: Vec<u32>,
    /// Prompt tokens served from the prefix cache at the last admission.
    pub cached_tokens: usize,
    /// Keys of the prompt's full blocks, for lookup and registration.
    prompt_keys: Vec<BlockKeyRef>,
    /// How many leading blocks are known registered (or found) in the prefix map.
    registered_blocks: usize,
    /// Times this sequence was preempted.
    pub preemptions: usize,
}

/// What one step computes for one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scheduled {
    pub id: SeqId,
    /// New tokens this step, starting at the sequence's `num_computed`.
    pub num_new: usize,
    /// Whether this chunk reaches the end of the sequence's tokens (logits are needed).
    pub completes: bool,
}

/// The output of [`Scheduler::schedule`].
#[derive(Debug, Default)]
pub(crate) struct Step {
    pub scheduled: Vec<Scheduled>,
    /// Sequences admitted from the waiting queue this step (their queue time ends now).
    pub admitted: Vec<SeqId>,
    /// Sequences preempted this step.
    pub preempted: Vec<SeqId>,
    /// Running sequences that can never fit the pool (alone and out of blocks); the caller ends them.
    pub out_of_memory: Vec<SeqId>,
}

/// The scheduler: sequences, queues and the block manager.
#[derive(Debug)]
pub(crate) struct Scheduler {
    cfg: SchedulerConfig,
    blocks: BlockManager,
    seqs: HashMap<SeqId, Sequence>,
    /// Waiting sequences in service order (preempted ones go back to the front).
    waiting: VecDeque<SeqId>,
    /// Running sequences, oldest first.
    running: Vec<SeqId>,
}

impl Scheduler {
    pub(crate) fn new(cfg: SchedulerConfig) -> Self {
        let blocks = BlockManager::new(cfg.num_blocks, cfg.prefix_caching);
        Self {
            cfg,
            blocks,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Queue a new sequence at the back of the waiting queue.
    pub(crate) fn add(&mut self, id: SeqId, prompt: Vec<u32>) {
        let prompt_keys = block_hashes(&prompt, self.cfg.block_size)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        let seq = Sequence {
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            blocks: Vec::new(),
            cached_tokens: 0,
            prompt_keys,
            registered_blocks: 0,
            preemptions: 0,
        };
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
    }

    pub(crate) fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// Append a sampled token to a running sequence.
    pub(crate) fn push_token(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.tokens.push(token);
        }
    }

    /// Remove a sequence (finished, cancelled or failed) and free its blocks.
    pub(crate) fn remove(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.remove(&id) {
            for b in seq.blocks {
                self.blocks.release(b);
            }
        }
        self.waiting.retain(|&s| s != id);
        self.running.retain(|&s| s != id);
    }

    pub(crate) fn num_running(&self) -> usize {
        self.running.len()
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub(crate) fn blocks_used(&self) -> usize {
        self.blocks.num_blocks() - self.blocks.num_free()
    }

    /// Why `id`, reported in [`Step::out_of_memory`], is ended: the tokens its KV cache needs against the
    /// tokens the whole pool holds.
    pub(crate) fn out_of_blocks_error(&self, id: SeqId) -> crate::EngineError {
        crate::EngineError::KvCacheTooSmall {
            needed_tokens: self.seqs.get(&id).map_or(0, |s| s.tokens.len()),
            pool_tokens: self.blocks.num_blocks() * self.cfg.block_size,
        }
    }

    /// Blocks needed to hold `positions` positions.
    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.cfg.block_size)
    }

    /// Grow `id`'s block table to cover `positions`; false when the pool is out of blocks.
    fn grow(&mut self, id: SeqId, positions: usize) -> bool {
        let need = self.blocks_for(positions);
        loop {
            let have = self.seqs[&id].blocks.len();
            if have >= need {
                return true;
            }
            match self.blocks.allocate() {
                Some(b) => self.seqs.get_mut(&id).expect("growing a known sequence").blocks.push(b),
                None => return false,
            }
        }
    }

    /// Free a running sequence's blocks and put it back at the front of the waiting queue.
    fn preempt(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("preempting a known sequence");
        for b in seq.blocks.drain(..) {
            self.blocks.release(b);
        }
        seq.num_computed = 0;
        seq.registered_blocks = 0;
        seq.preemptions += 1;
        self.running.retain(|&s| s != id);
        self.waiting.push_front(id);
    }

    /// Decide the next step.
    pub(crate) fn schedule(&mut self) -> Step {
        let mut step = Step::default();
        let mut budget = self.cfg.max_batch_tokens;

        // 1. Running sequences, oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            let target = seq.num_computed + n;
            let mut fits = self.grow(id, target);
            while !fits {
                // Preempt the youngest running sequence other than this one, if any.
                let victim = *self.running.last().expect("the sequence being scheduled is running");
                if victim == id {
                    break;
                }
                step.scheduled.retain(|s| s.id != victim);
                self.preempt(victim);
                step.preempted.push(victim);
                fits = self.grow(id, target);
            }
            if !fits {
                if self.running.len() == 1 {
                    // Alone and still out of blocks: it can never fit.
                    step.out_of_memory.push(id);
                } else {
                    self.preempt(id);
                    step.preempted.push(id);
                }
                break;
            }
            let completes = target == self.seqs[&id].tokens.len();
            step.scheduled.push(Scheduled {
                id,
                num_new: n,
                completes,
            });
            budget -= n;
            i += 1;
        }

        // 2. Waiting sequences, first come first served, unless this step had to preempt.
        if step.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.cfg.max_running {
                let Some(&id) = self.waiting.front() else { break };
                self.reuse_prefix(id);
                let seq = &self.seqs[&id];
                let n = (seq.tokens.len() - seq.num_computed).min(budget);
                let target = seq.num_computed + n;
                if !self.grow(id, target) {
                    // Not enough free blocks now; give back what it holds and wait (it stays at the head).
                    let seq = self.seqs.get_mut(&id).expect("known waiting sequence");
                    for b in seq.blocks.drain(..) {
                        self.blocks.release(b);
                    }
                    seq.num_computed = 0;
                    seq.registered_blocks = 0;
                    if self.running.is_empty() {
                        step.out_of_memory.push(id);
                        self.waiting.pop_front();
                    }
                    break;
                }
                self.waiting.pop_front();
                self.running.push(id);
                let completes = target == self.seqs[&id].tokens.len();
                step.scheduled.push(Scheduled {
                    id,
                    num_new: n,
                    completes,
                });
                step.admitted.push(id);
                budget -= n;
            }
        }
        step
    }

    /// On admission, take cached blocks for the longest registered prefix of the prompt. At least one token
    /// is always left to compute, so the step yields logits.
    fn reuse_prefix(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("known waiting sequence");
        if seq.num_computed > 0 || !seq.blocks.is_empty() {
            return;
        }
        let bs = self.cfg.block_size;
        let mut hits = Vec::new();
        for key in &seq.prompt_keys {
            // A hit must leave a token after it to compute.
            if (hits.len() + 1) * bs >= seq.tokens.len() {
                break;
            }
            match self.blocks.lookup(key) {
                Some(b) => hits.push(b),
                None => break,
            }
        }
        seq.num_computed = hits.len() * bs;
        seq.cached_tokens = seq.num_computed;
        seq.registered_blocks = hits.len();
        seq.blocks = hits;
    }

    /// After a step ran: advance `num_computed` and register prompt blocks that just became full.
    pub(crate) fn complete(&mut self, done: &[Scheduled]) {
        let bs = self.cfg.block_size;
        for s in done {
            let Some(seq) = self.seqs.get_mut(&s.id) else { continue };
            seq.num_computed += s.num_new;
            let full_prompt_blocks = seq.num_computed.min(seq.prompt_len) / bs;
            while seq.registered_blocks < full_prompt_blocks.min(seq.prompt_keys.len()) {
                let i = seq.registered_blocks;
                self.blocks.register(seq.blocks[i], &seq.prompt_keys[i]);
                seq.registered_blocks += 1;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn check(&self) {
        self.blocks.check();
        let held: usize = self.seqs.values().map(|s| s.blocks.len()).sum();
        assert!(self.blocks_used() <= held);
        for id in &self.running {
            let s = &self.seqs[id];
            assert!(s.blocks.len() * self.cfg.block_size >= s.num_computed);
        }
    }
}

#[cfg(test)]
mod tests;

//! The description of one forward step: new tokens of several sequences, each at its own position.

/// One step's input: the new tokens of every scheduled sequence, flattened in sequence order.
///
/// ```text
/// tokens:  [ a0 a1 a2 a3 | b7 | c0 c1 ]      (a: prefill chunk, b: one decode token, c: prefill)
/// seqs:    a{computed 0, new 4}  b{computed 7, new 1}  c{computed 0, new 2}
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// New token ids of all sequences, concatenated in the order of `seqs`.
    pub tokens: &'a [u32],
    /// One entry per sequence in the step.
    pub seqs: &'a [SeqInput<'a>],
}

/// One sequence's part of a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// Tokens of this sequence already in the KV cache; its first new token sits at this position.
    pub num_computed: usize,
    /// How many consecutive entries of [`Batch::tokens`] belong to this sequence.
    pub num_new: usize,
    /// KV-cache block ids holding positions `0..num_computed + num_new`, block `i` holding positions
    /// `i * block_size .. (i + 1) * block_size`.
    pub block_table: &'a [u32],
    /// Length of the sequence's prompt. Positions below it are prompt tokens, the rest were generated; the
    /// attention kernel rounds the two kinds as a single full-prompt prefill and as one-token decode steps
    /// (see [`crate::attention::ScoreOrder`]), so outputs do not depend on chunking or batching.
    pub prompt_len: usize,
    /// Whether to return logits for this sequence's last new token (false for a partial prefill chunk).
    pub want_logits: bool,
    /// Return logits for every new token of this sequence instead (perplexity scoring), in token order.
    /// The output projection then runs these rows as the decode path does, one rounding per row.
    pub all_logits: bool,
}

impl Batch<'_> {
    /// Position of every token in `tokens`.
    pub fn positions(&self) -> Vec<u32> {
        let mut positions = Vec::with_capacity(self.tokens.len());
        for seq in self.seqs {
            positions.extend((seq.num_computed..seq.num_computed + seq.num_new).map(|p| p as u32));
        }
        positions
    }

    /// Indices into `tokens` of the last new token of each sequence that wants logits, or of all its new
    /// tokens with `all_logits`.
    pub fn logit_rows(&self) -> Vec<u32> {
        let mut rows = Vec::new();
        let mut start = 0;
        for seq in self.seqs {
            if seq.all_logits {
                rows.extend((start..start + seq.num_new).map(|r| r as u32));
            } else if seq.want_logits && seq.num_new > 0 {
                rows.push((start + seq.num_new - 1) as u32);
            }
            start += seq.num_new;
        }
        rows
    }

    /// Check that token counts add up and every block table covers its positions.
    pub fn validate(&self, block_size: usize, num_blocks: usize) -> Result<(), crate::ModelError> {
        let total: usize = self.seqs.iter().map(|s| s.num_new).sum();
        if total != self.tokens.len() {
            return Err(crate::ModelError::InvalidBatch(format!(
                "sequences claim {total} new tokens but the batch has {}",
                self.tokens.len()
            )));
        }
        for (i, seq) in self.seqs.iter().enumerate() {
            let needed = (seq.num_computed + seq.num_new).div_ceil(block_size);
            if seq.block_table.len() < needed {
                return Err(crate::ModelError::InvalidBatch(format!(
                    "sequence {i} needs {needed} blocks for {} positions but its table has {}",
                    seq.num_computed + seq.num_new,
                    seq.block_table.len()
                )));
            }
            if let Some(b) = seq.block_table.iter().find(|&&b| b as usize >= num_blocks) {
                return Err(crate::ModelError::InvalidBatch(format!(
                    "sequence {i} refers to block {b}, but the cache has {num_blocks}"
                )));
            }
        }
        Ok(())
    }
}

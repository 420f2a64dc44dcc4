//! The model contract: what an architecture provides to run in a session (its vocabulary,
//! context, per-sequence state and the graphs it builds), and what a graph ends in.

use crate::error::Result;
use crate::graph::Graph;
use crate::kv::KvLayout;
use crate::state::StateSpec;

/// What the last op of a graph produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Head {
    /// Logits for every position [T, vocab].
    AllLogits,
    /// One sampled token id, drawn on the GPU from the last position.
    Sample,
    /// One token id drawn from every position [T], each as the decode step there would
    /// draw it: the verification of a speculative draft (`kernels::sample`).
    Verify,
    /// A diffusion step: the masked positions to commit, chosen on the GPU.
    Unmask(UnmaskHead),
    /// A batched step of several sequences (`crate::batch`): one token id per sequence,
    /// drawn from its pick row with its own settings, [picks].
    Batch(BatchShape),
}

/// The fixed sizes of a batched step's graph: the sequences it samples (`picks`, one row
/// each), its block table, `slots` rows of `table_width` block numbers, and the longest
/// sequence (`context` positions), for which each layer's KV layout is chosen
/// (`crate::batch::batch_layouts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchShape {
    pub picks: usize,
    pub slots: usize,
    pub table_width: usize,
    pub context: usize,
}

/// The fixed settings of a diffusion step's graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnmaskHead {
    pub mask_id: u32,
    /// Classifier-free guidance scale as f32 bits (0 = off: no unconditional pass).
    pub cfg_scale_bits: u32,
    pub random_remasking: bool,
}

impl UnmaskHead {
    pub fn cfg_scale(&self) -> f32 {
        f32::from_bits(self.cfg_scale_bits)
    }
}

/// The per-step settings of a diffusion step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnmaskStep {
    /// Positions to commit; 0 = every one at or above `threshold` (at least one).
    pub k: u32,
    pub threshold: f32,
    /// Absolute positions whose masks may be committed (the current block).
    pub window: (u32, u32),
    pub temperature: f32,
    pub seed: u32,
}

/// What a model must provide to run in a session. Models build graphs; they never touch wgpu.
pub trait Architecture {
    fn vocab_size(&self) -> usize;
    /// The longest sequence the model supports (its position limit).
    fn max_context(&self) -> usize;
    fn states(&self, capacity: usize) -> Vec<StateSpec>;
    /// The KV cache layout of each attention layer for a sequence of up to `capacity` tokens
    /// (none for an architecture without KV caches). Ring caches bound how many tokens one
    /// pass may append and how far a sequence can be cut back.
    fn kv_layouts(&self, _capacity: usize) -> Vec<KvLayout> {
        Vec::new()
    }
    /// The forward graph for `n_tokens` new tokens (input "tokens"), ending in `head`. With
    /// [`Head::Batch`] the tokens are rows of several sequences and `capacity` is the rows of
    /// the KV pool ([`crate::batch`]).
    fn build(&self, n_tokens: usize, capacity: usize, head: Head) -> Result<Graph>;
    /// The states of a batched session whose KV pool has `pool_rows` rows per layer, for
    /// `slots` sequence slots: by default [`Architecture::states`] for a sequence of
    /// `pool_rows` tokens with each recurrent state once per slot ([`StateSpec::in_slots`]).
    fn batch_states(&self, pool_rows: usize, slots: usize) -> Vec<StateSpec> {
        (self.states(pool_rows).into_iter())
            .map(|s| s.in_slots(slots))
            .collect()
    }
    /// Why the architecture cannot run batched steps of several sequences (attention sinks,
    /// block-sparse masks, bidirectional attention, a kernel without a batched form); None
    /// when it can ([`Head::Batch`]).
    fn batch_refusal(&self) -> Option<String> {
        None
    }
}

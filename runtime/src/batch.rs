//! Several sequences in one forward: continuous batching over a paged KV cache.
//!
//! A [`BatchSession`] holds one pool of KV rows per attention layer, cut into blocks of
//! [`KV_BLOCK`] positions. Each open sequence owns a row of the block table (its slot) that
//! lists its blocks, reserved when it is opened. A step runs a ragged batch: each sequence
//! contributes its next tokens (a decode step's one token, or a chunk of its prompt), every
//! token a row of one graph ([`Head::Batch`]) whose linear layers read each weight once for
//! all rows. Each row carries its position and the pool row its K and V go to; attention
//! reads each query's own sequence through the block table; one row per sequence (its last)
//! is gathered, projected to logits and sampled with that sequence's own settings. Plans are
//! made per row count rounded up to a power of two; padding rows write to block 0, which no
//! sequence owns. Full blocks are kept after their sequence closes and shared by later
//! sequences whose tokens begin the same way (`crate::kv_blocks`): a prompt that repeats a
//! system prompt, or the next turn of a conversation, runs only what is new.
//!
//! Where every layer keeps the same ring (a sliding window, attention sinks), a sequence's
//! blocks hold its ring instead of every position ([`batch_layouts`]). Recurrent states
//! (convolutions, linear scans) are kept once per slot and zeroed when a sequence opens
//! there. Neither shares prefixes: a ring's blocks are rewritten, and a state sums up the
//! whole sequence.

use std::collections::HashMap;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::arch::{Architecture, BatchShape, Head};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Plan;
use crate::graph::BLOCK_TABLE;
use crate::kernels::Step;
use crate::kv::KvLayout;
use crate::kv_blocks::{BlockPool, Chain};
use crate::rng::pcg_hash;
use crate::session::Sampling;
use crate::state::{StateSpec, StateStore};
use crate::tensor::{check_binding, shape_bytes};

/// Positions per block of the KV pool (KV_BLOCK in shaders/batch.wgsl).
pub const KV_BLOCK: usize = 16;
/// The most token rows one step runs (the length of `rows` in shaders/batch.wgsl).
pub const MAX_ROWS: usize = 256;
/// The most sequences one step samples (the length of `picks` in shaders/batch.wgsl).
pub const MAX_SEQS: usize = 64;

/// The most tokens of one sequence a step runs where the model keeps a recurrent state or a
/// ring of KV rows: recurrences run them token by token in one invocation, within the loop
/// iterations llvmpipe allows one (`kernels::linear_scan::recurrent_tokens_per_dispatch`:
/// 64 at 256 key dims), and rings are sized for appends of this many ([`batch_layouts`]).
pub const MAX_SEQ_ROWS: usize = 64;

/// Each attention layer's KV layout in a batched step with a pool of `pool_rows` rows, from
/// `layouts`, the layers' layouts for one sequence of `context` positions
/// (`Architecture::kv_layouts`). Where every layer keeps the same ring (a sliding window or
/// attention sinks), each sequence keeps that ring, sized for appends of up to
/// [`MAX_SEQ_ROWS`] tokens, in as many blocks as it takes: a long sequence holds a bounded
/// number of blocks. Otherwise (no ring, or rings in some layers only, as in Gemma's local
/// and global layers, whose sequences need blocks for every position anyway) every position
/// keeps its row and windows only limit what a query sees.
pub fn batch_layouts(layouts: &[KvLayout], context: usize, pool_rows: usize) -> Vec<KvLayout> {
    let sized: Vec<KvLayout> = (layouts.iter())
        .map(|l| l.for_chunks(MAX_SEQ_ROWS, context))
        .collect();
    let shared = sized
        .first()
        .filter(|&first| first.max_chunk.is_some() && sized.iter().all(|l| l == first));
    match shared {
        Some(ring) => vec![ring.paged(pool_rows); layouts.len()],
        None => (layouts.iter())
            .map(|l| {
                let own = KvLayout {
                    window: l.window,
                    ..KvLayout::linear(context)
                };
                own.paged(pool_rows)
            })
            .collect(),
    }
}

/// The batch uniform; mirrors `Batch` in shaders/batch.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BatchRows {
    /// (position, pool row, slot, 0) of each token row.
    pub rows: [[u32; 4]; MAX_ROWS],
    /// (row, seed, top_k, temperature bits) of each sampled sequence.
    pub picks: [[u32; 4]; MAX_SEQS],
    /// (top_p bits, first row, rows, slot) of each sampled sequence (rows 0: unused).
    pub pick_p: [[u32; 4]; MAX_SEQS],
}

/// How large a batch session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Sequences open at once (at most [`MAX_SEQS`]).
    pub max_seqs: usize,
    /// The longest sequence (clipped to the model's context).
    pub context: usize,
    /// Positions the pool holds for all sequences together.
    pub pool_tokens: usize,
}

/// An open sequence of a [`BatchSession`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(usize);

/// What one sequence runs in a step: `tokens` appended (a prompt chunk or the last token),
/// then one token drawn after the last of them with `sampling`.
#[derive(Debug, Clone, Copy)]
pub struct Work<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
    pub sampling: Sampling,
}

struct Seq {
    blocks: Vec<u32>,
    /// The positions it reserved (it may not append past them).
    limit: usize,
    /// Every token appended (its length is the position).
    tokens: Vec<u32>,
    /// Its leading blocks registered for reuse ([`BlockPool::register`]).
    chain: Chain,
}

pub struct BatchSession {
    gpu: Arc<Gpu>,
    arch: Arc<dyn Architecture>,
    states: StateStore,
    config: BatchConfig,
    table_width: usize,
    pool_rows: usize,
    /// Who holds each block, and the full blocks kept for reuse.
    pool: BlockPool,
    /// The ring every attention layer keeps per sequence, if they share one
    /// ([`batch_layouts`]): a sequence's cache rows are then the ring's.
    ring: Option<KvLayout>,
    slots: Vec<Option<Seq>>,
    /// One plan per row count (a power of two).
    plans: HashMap<usize, Plan>,
    /// The rows of the last step's plan and how many sequences it sampled.
    last: Option<(usize, usize)>,
}

impl BatchSession {
    /// A pool of `config.pool_tokens` positions (rounded up to whole blocks) for up to
    /// `config.max_seqs` sequences of up to `config.context` tokens each. Refuses, by the
    /// architecture's reason, a model batched steps cannot run.
    pub fn new(
        gpu: &Arc<Gpu>,
        arch: Arc<dyn Architecture>,
        config: BatchConfig,
    ) -> Result<BatchSession> {
        if let Some(why) = arch.batch_refusal() {
            return Err(Error::Graph(format!("batched decoding: {why}")));
        }
        if config.max_seqs == 0 || config.max_seqs > MAX_SEQS {
            return Err(Error::InputOutOfRange(format!(
                "a batch holds 1 to {MAX_SEQS} sequences, not {}",
                config.max_seqs
            )));
        }
        let context = config.context.min(arch.max_context()).max(1);
        let blocks = config.pool_tokens.div_ceil(KV_BLOCK).max(1) + 1;
        let pool_rows = blocks * KV_BLOCK;
        let table_width = context.div_ceil(KV_BLOCK);
        let mut specs = arch.batch_states(pool_rows, slots_of(config.max_seqs));
        let table_words = slots_of(config.max_seqs) * table_width;
        specs.push(StateSpec::block_table(BLOCK_TABLE.into(), table_words));
        for s in &specs {
            let what = format!("state {} for a KV pool of {pool_rows} tokens", s.name);
            check_binding(gpu, &what, shape_bytes(&s.shape, s.dtype))?;
        }
        let states = StateStore::allocate(gpu, &specs)?;
        gpu.check()?;
        let layouts = batch_layouts(&arch.kv_layouts(context), context, pool_rows);
        let ring = layouts.first().copied().filter(|l| l.max_chunk.is_some());
        Ok(BatchSession {
            gpu: gpu.clone(),
            arch,
            states,
            config: BatchConfig { context, ..config },
            table_width,
            pool_rows,
            pool: BlockPool::new(blocks),
            ring,
            slots: (0..config.max_seqs).map(|_| None).collect(),
            plans: HashMap::new(),
            last: None,
        })
    }

    /// The longest sequence.
    pub fn context(&self) -> usize {
        self.config.context
    }
    pub fn max_seqs(&self) -> usize {
        self.config.max_seqs
    }
    /// Positions the pool holds for sequences (block 0 aside).
    pub fn pool_tokens(&self) -> usize {
        self.pool_rows - KV_BLOCK
    }
    /// The most tokens of one sequence a step may run: [`MAX_SEQ_ROWS`] where the model keeps
    /// a recurrent state or a ring, else [`MAX_ROWS`].
    pub fn max_seq_rows(&self) -> usize {
        match self.shares_prefixes() {
            true => MAX_ROWS,
            false => MAX_SEQ_ROWS,
        }
    }
    /// Whether a sequence may start on the blocks of another with the same first tokens: not
    /// where blocks are rewritten (a ring) or a recurrent state sums up the sequence.
    fn shares_prefixes(&self) -> bool {
        self.ring.is_none() && !self.states.has_recurrent()
    }
    /// Positions not reserved by any open sequence (free, or kept for reuse until needed).
    pub fn free_tokens(&self) -> usize {
        self.pool.available() * KV_BLOCK
    }
    pub fn state_bytes(&self) -> u64 {
        self.states.bytes()
    }
    /// Why a sequence that reserves `tokens` positions can never be opened here (longer than
    /// the context, or its cache rows more than the whole pool); None when it can once enough
    /// is free.
    pub fn never_fits(&self, tokens: usize) -> Option<String> {
        if tokens > self.config.context {
            return Some(format!(
                "{tokens} tokens exceed the context of {} tokens",
                self.config.context
            ));
        }
        if self.cache_rows(tokens) > self.pool_tokens() {
            return Some(format!(
                "{tokens} tokens exceed the KV pool of {} tokens",
                self.pool_tokens()
            ));
        }
        None
    }

    /// The cache rows a sequence of `tokens` positions keeps: one per position, or at most
    /// its ring's.
    fn cache_rows(&self, tokens: usize) -> usize {
        self.ring.map_or(tokens, |r| tokens.min(r.rows))
    }

    /// Open a sequence for `prompt` with `reserve` positions reserved (the prompt and the
    /// most it may generate). Leading full blocks of the prompt that an earlier or open
    /// sequence wrote are shared (prefix caching), at least one prompt token left to run.
    /// Returns the sequence and how many prompt tokens it already holds; None while no slot or
    /// not enough blocks are free; an error when it could never fit
    /// ([`BatchSession::never_fits`]).
    pub fn open(&mut self, prompt: &[u32], reserve: usize) -> Result<Option<(SeqId, usize)>> {
        let reserve = reserve.max(prompt.len());
        if let Some(why) = self.never_fits(reserve) {
            return Err(Error::InputOutOfRange(why));
        }
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            return Ok(None);
        };
        let need = self.cache_rows(reserve).max(1).div_ceil(KV_BLOCK);
        let most = match self.shares_prefixes() {
            true => prompt.len().saturating_sub(1) / KV_BLOCK,
            false => 0,
        };
        let cached = self.pool.lookup(prompt, most.min(need));
        let Some(blocks) = self.pool.take(&cached, need - cached.len()) else {
            return Ok(None);
        };
        let held = cached.len() * KV_BLOCK;
        self.write_table(slot, &blocks)?;
        (self.states).clear_recurrent_slot(&self.gpu, slot, slots_of(self.config.max_seqs));
        self.slots[slot] = Some(Seq {
            limit: match self.ring {
                Some(_) => reserve,
                None => blocks.len() * KV_BLOCK,
            },
            blocks,
            tokens: prompt[..held].to_vec(),
            chain: Chain {
                blocks: cached.len(),
                entry: self.pool.entry_of(cached.last().copied()),
            },
        });
        Ok(Some((SeqId(slot), held)))
    }

    /// Close a sequence: its blocks are free at once.
    pub fn close(&mut self, seq: SeqId) {
        if let Some(s) = self.slots.get_mut(seq.0).and_then(Option::take) {
            self.pool.release(&s.blocks);
        }
    }

    /// Slot `slot`'s row of the block table (the rest of the row stays as it was: only
    /// positions the sequence holds are read).
    fn write_table(&self, slot: usize, blocks: &[u32]) -> Result<()> {
        let table = self.states.get(BLOCK_TABLE)?;
        let offset = (slot * self.table_width * 4) as u64;
        (self.gpu.queue).write_buffer(&table.buffer, offset, bytemuck::cast_slice(blocks));
        Ok(())
    }

    /// Make the plans of every step of up to `max_rows` rows now (one per power of two), so
    /// that the session's memory is all taken at start: a server's does not grow later as
    /// larger steps turn up.
    pub fn prepare(&mut self, max_rows: usize) -> Result<()> {
        let mut rows = 1;
        while rows <= bucket(max_rows.min(MAX_ROWS)) {
            self.plan(rows)?;
            rows *= 2;
        }
        Ok(())
    }

    /// The plan a step of `rows` token rows ran, if one did (for profiling:
    /// `crate::profile::kernel_times` replays it, rewriting the same rows).
    pub fn plan_of(&self, rows: usize) -> Option<&Plan> {
        self.plans.get(&bucket(rows))
    }

    /// The plan for `rows` token rows (made on first use). It samples as many sequences as
    /// it has rows, up to every slot (rounded up to a power of two): one plan per row count,
    /// so a server's memory does not grow as new mixes of sequences and rows turn up. Unused
    /// picks draw from row 0 and are not read.
    fn plan(&mut self, rows: usize) -> Result<&Plan> {
        if !self.plans.contains_key(&rows) {
            let head = Head::Batch(BatchShape {
                picks: rows.min(bucket(self.config.max_seqs)),
                slots: slots_of(self.config.max_seqs),
                table_width: self.table_width,
                context: self.config.context,
            });
            let mut graph = self.arch.build(rows, self.pool_rows, head)?;
            crate::fusion::fuse_elementwise(&mut graph);
            let plan = Plan::new(&self.gpu, &graph, &self.states)?;
            self.plans.insert(rows, plan);
        }
        Ok(&self.plans[&rows])
    }

    /// Run one step: each work item's tokens appended to its sequence, then one token drawn
    /// after each item's last token (returned in the order of `work`). Rows are at most
    /// [`MAX_ROWS`]; a sequence appears at most once.
    pub async fn step(&mut self, work: &[Work<'_>]) -> Result<Vec<u32>> {
        let rows: usize = work.iter().map(|w| w.tokens.len()).sum();
        if work.is_empty() || work.len() > self.config.max_seqs || rows > MAX_ROWS {
            return Err(Error::InputOutOfRange(format!(
                "a step of {} sequences and {rows} rows (1 to {} sequences, at most {MAX_ROWS} rows)",
                work.len(),
                self.config.max_seqs
            )));
        }
        let vocab = self.arch.vocab_size();
        let mut batch = BatchRows::zeroed();
        let mut tokens = Vec::with_capacity(rows);
        let mut seen = vec![false; self.slots.len()];
        for (s, w) in work.iter().enumerate() {
            let seq = self.slots.get(w.seq.0).and_then(Option::as_ref);
            let Some(seq) = seq.filter(|_| !std::mem::replace(&mut seen[w.seq.0], true)) else {
                return Err(Error::InputOutOfRange(
                    "a step names a closed sequence, or one twice".into(),
                ));
            };
            if w.tokens.is_empty() {
                return Err(Error::InputOutOfRange("no tokens given".into()));
            }
            if w.tokens.len() > self.max_seq_rows() {
                return Err(Error::InputOutOfRange(format!(
                    "{} tokens of one sequence in a step: this model takes at most {}",
                    w.tokens.len(),
                    self.max_seq_rows()
                )));
            }
            if let Some(t) = w.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::InputOutOfRange(format!(
                    "token id {t} is not below the vocabulary size {vocab}"
                )));
            }
            let first = tokens.len() as u32;
            let len = seq.tokens.len();
            let end = len + w.tokens.len();
            if end > seq.limit {
                return Err(Error::InputOutOfRange(format!(
                    "{end} tokens exceed the {} the sequence reserved",
                    seq.limit
                )));
            }
            for pos in len..end {
                let c = self.ring.map_or(pos, |r| r.row(pos));
                let row = seq.blocks[c / KV_BLOCK] as usize * KV_BLOCK + c % KV_BLOCK;
                batch.rows[tokens.len()] = [pos as u32, row as u32, w.seq.0 as u32, 0];
                tokens.push(w.tokens[pos - len]);
            }
            let last = (end - 1) as u32;
            let sm = w.sampling;
            batch.picks[s] = [
                tokens.len() as u32 - 1,
                pcg_hash(sm.seed ^ pcg_hash(last)),
                sm.top_k,
                sm.temperature.to_bits(),
            ];
            let n = w.tokens.len() as u32;
            batch.pick_p[s] = [sm.top_p.to_bits(), first, n, w.seq.0 as u32];
        }
        // Padding rows: position 0 of the padding slot, the last (its table row is all block
        // 0).
        let n_rows = bucket(rows);
        let pad_slot = (slots_of(self.config.max_seqs) - 1) as u32;
        for r in rows..n_rows {
            batch.rows[r] = [0, 0, pad_slot, 0];
        }
        tokens.resize(n_rows, 0);
        self.last = Some((n_rows, work.len()));
        let plan = self.plan(n_rows)?;
        plan.write_input("tokens", &tokens)?;
        plan.write_batch(&batch)?;
        plan.run(&Step {
            n_tokens: n_rows as u32,
            ..Step::default()
        })?;
        let ids = plan.read_u32(0).await?;
        if ids.len() < work.len() {
            return Err(Error::Readback(format!(
                "a batched step returned {} ids for {} sequences",
                ids.len(),
                work.len()
            )));
        }
        let share = self.shares_prefixes();
        for w in work {
            if let Some(seq) = self.slots[w.seq.0].as_mut() {
                seq.tokens.extend_from_slice(w.tokens);
                // Blocks filled by this step become findable by later prompts.
                if share && seq.tokens.len() / KV_BLOCK > seq.chain.blocks {
                    seq.chain = self.pool.register(&seq.blocks, &seq.tokens, seq.chain);
                }
            }
        }
        Ok(ids[..work.len()].to_vec())
    }

    /// The logits the last step drew from, one row per sequence in the order of its work
    /// ([picks * vocab]): for checks against a sequence run alone.
    pub async fn last_logits(&self) -> Result<Vec<f32>> {
        let Some((rows, n)) = self.last else {
            return Err(Error::Graph("no step has run".into()));
        };
        let mut logits = self.plans[&rows].read_f32(1).await?;
        logits.truncate(n * self.arch.vocab_size());
        Ok(logits)
    }
}

/// Slots of a session of `max_seqs` sequences: one per sequence and the padding rows' (the
/// last), whose block table row is all block 0 and whose recurrent states no sequence reads.
fn slots_of(max_seqs: usize) -> usize {
    max_seqs + 1
}

/// Rows rounded up to a power of two, so that few plans serve every step.
fn bucket(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

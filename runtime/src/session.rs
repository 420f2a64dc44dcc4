//! A sequence being generated: its persistent state (KV caches and any other per-layer state
//! an architecture declares), its position, and the plans it replays.

use std::collections::HashMap;
use std::sync::Arc;

use crate::arch::{Architecture, Head, UnmaskHead, UnmaskStep};
use crate::decode_loop::{DecodeLoop, MAX_STEPS};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Plan;
use crate::kernels::Step;
use crate::kv::KvLayout;
use crate::rng::pcg_hash;
use crate::state::{StateCopies, StateSpec, StateStore};
use crate::tensor::{check_binding, shape_bytes, DType};

/// Sampling settings; temperature 0 is greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

pub struct Session {
    gpu: Arc<Gpu>,
    arch: Arc<dyn Architecture>,
    states: StateStore,
    capacity: usize,
    layouts: Vec<KvLayout>,
    /// Every token appended so far, in order (its length is the position).
    history: Vec<u32>,
    plans: HashMap<(usize, Head), Plan>,
    /// The most tokens one pass of each head fits in the adapter's storage bindings, learnt
    /// from the first pass that did not fit (see [`Session::pass`]).
    pass_limit: HashMap<Head, usize>,
    /// The batched decode of the one-token sampling plan, made on first use.
    decode_loop: Option<DecodeLoop>,
    /// The recurrent states as they were at a position (see [`Session::checkpoint`]).
    checkpoint: Option<usize>,
    checkpoint_states: StateCopies,
}

/// Prefill plans for distinct lengths are kept up to this many; decode and verification
/// plans always stay.
const MAX_CACHED_PLANS: usize = 8;

impl Session {
    /// A new sequence with room for `capacity` tokens (at most the model's context).
    pub fn new(gpu: &Arc<Gpu>, arch: Arc<dyn Architecture>, capacity: usize) -> Result<Session> {
        let capacity = capacity.min(arch.max_context()).max(1);
        let specs = arch.states(capacity);
        check_state_sizes(gpu, &specs, capacity)?;
        let states = StateStore::allocate(gpu, &specs)?;
        // A context whose states fit each binding may still exceed the adapter's memory
        // (wgpu does not say how much it has): the allocation's error, not a later failure.
        gpu.check()?;
        Ok(Session {
            gpu: gpu.clone(),
            layouts: arch.kv_layouts(capacity),
            arch,
            states,
            capacity,
            history: Vec::new(),
            plans: HashMap::new(),
            pass_limit: HashMap::new(),
            decode_loop: None,
            checkpoint: None,
            checkpoint_states: StateCopies::default(),
        })
    }

    pub fn pos(&self) -> usize {
        self.history.len()
    }
    /// The tokens in the sequence so far.
    pub fn tokens(&self) -> &[u32] {
        &self.history
    }
    /// The KV cache layout of each attention layer.
    pub fn kv_layouts(&self) -> &[KvLayout] {
        &self.layouts
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Bytes of weights one decode step reads ([`crate::Graph::weight_bytes_read`] of the
    /// one-token sampling graph, built but not planned).
    pub fn decode_weight_bytes(&self) -> Result<u64> {
        Ok(self
            .arch
            .build(1, self.capacity, Head::Sample)?
            .weight_bytes_read())
    }
    /// Read a u32 state (counters) back.
    pub async fn read_counters(&self, name: &str) -> Result<Vec<u32>> {
        let t = self.states.get(name)?;
        if t.dtype != DType::U32 {
            return Err(Error::Graph(format!("state {name} is not a u32 counter")));
        }
        crate::readback::read_u32(&self.gpu, &t.buffer, 0, t.numel()).await
    }

    pub fn state_bytes(&self) -> u64 {
        self.states.bytes()
    }
    /// Forget the sequence (KV caches are overwritten from position 0; recurrent states are
    /// zeroed).
    pub fn reset(&mut self) {
        self.history.clear();
        self.checkpoint = None;
        self.states.clear_recurrent(&self.gpu);
    }
    /// Remember the recurrent states at the current position, so that [`Session::truncate`]
    /// can go back to any later position without starting over: a reply that ran past a stop
    /// string (a decode batch samples several tokens before the host sees the text) is cut
    /// back to it, and the next chat turn continues from there. One GPU copy of the
    /// recurrent states; nothing for a model without them.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.states.has_recurrent() {
            self.states
                .save_recurrent(&self.gpu, &mut self.checkpoint_states)?;
            self.checkpoint = Some(self.pos());
        }
        Ok(())
    }
    /// Keep only the first `len` tokens (to reuse a shared prefix); later ones are overwritten
    /// by the next run. Recurrent states, which cannot be cut back, go back to the
    /// checkpoint (if it is at or before `len`) and take in the kept tokens after it again.
    /// When a ring cache has already overwritten keys the shortened sequence needs, or a
    /// recurrent state has taken in later tokens and no checkpoint serves, the whole
    /// sequence is dropped instead. Returns the tokens kept.
    pub fn truncate(&mut self, len: usize) -> usize {
        let pos = self.pos();
        let len = len.min(pos);
        let caches_ok = |from: usize| self.layouts.iter().all(|l| l.can_truncate(pos, from));
        if len == pos || (!self.states.has_recurrent() && caches_ok(len)) {
            self.history.truncate(len);
        } else if let Some(at) = self.checkpoint.filter(|&at| at <= len && caches_ok(at)) {
            if self.replay_from_checkpoint(at, len).is_err() {
                self.reset();
            }
        } else {
            self.reset();
        }
        self.history.len()
    }
    /// Restore the checkpoint taken at `at` and run the tokens `at..len` of the sequence
    /// again.
    fn replay_from_checkpoint(&mut self, at: usize, len: usize) -> Result<()> {
        let again = self.history[at..len].to_vec();
        self.history.truncate(at);
        self.states
            .restore_recurrent(&self.gpu, &self.checkpoint_states)?;
        let mut done = 0;
        while done < again.len() {
            done += self.pass(&again[done..], Head::Sample, &Sampling::default())?;
        }
        Ok(())
    }
    /// Prepare to run `tokens` as a whole sequence: keep the longest prefix they share with
    /// the current sequence (leaving at least one token to run) and return the tokens still
    /// to append.
    pub fn reuse_prefix<'t>(&mut self, tokens: &'t [u32]) -> &'t [u32] {
        let shared = self
            .history
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len().saturating_sub(1));
        let kept = self.truncate(shared);
        &tokens[kept..]
    }
    /// The most tokens one pass may append (ring caches), if limited.
    fn max_chunk(&self) -> Option<usize> {
        self.layouts.iter().filter_map(|l| l.max_chunk).min()
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        self.check_appending(tokens, tokens.len())
    }

    /// Check `given`, the first of `count` tokens to append (the others are drawn on the GPU
    /// from the vocabulary): ids below the vocabulary size, and room in the context.
    fn check_appending(&self, given: &[u32], count: usize) -> Result<()> {
        if given.is_empty() {
            return Err(Error::InputOutOfRange("no tokens given".into()));
        }
        let vocab = self.arch.vocab_size();
        if let Some(t) = given.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InputOutOfRange(format!(
                "token id {t} is not below the vocabulary size {vocab}"
            )));
        }
        let end = self.pos() + count;
        if end > self.capacity || end > u32::MAX as usize {
            return Err(Error::InputOutOfRange(format!(
                "{count} tokens after {} cached exceed the context of {} tokens",
                self.pos(),
                self.capacity
            )));
        }
        Ok(())
    }

    /// The plan for passes of `n` tokens with `head` (made and cached on first use).
    pub fn plan(&mut self, n: usize, head: Head) -> Result<&Plan> {
        if !self.plans.contains_key(&(n, head)) {
            if self.plans.len() >= MAX_CACHED_PLANS {
                // Verification passes are as long as a speculative draft allows (a few).
                self.plans
                    .retain(|(len, head), _| *len == 1 || *head == Head::Verify);
            }
            let mut graph = self.arch.build(n, self.capacity, head)?;
            crate::fusion::fuse_elementwise(&mut graph);
            let plan = Plan::new(&self.gpu, &graph, &self.states)?;
            self.plans.insert((n, head), plan);
            if (n, head) == (1, Head::Sample) {
                self.decode_loop = None;
            }
        }
        Ok(&self.plans[&(n, head)])
    }

    /// Diffusion (bidirectional models): set positions `pos..pos + tokens.len()` to `tokens`
    /// (keeping the cache rows of earlier positions from previous runs), run them, and return
    /// the (position, token) pairs the GPU chose to commit. With classifier-free guidance,
    /// `uncond` holds the same positions with the prompt masked.
    pub async fn unmask(
        &mut self,
        pos: usize,
        tokens: &[u32],
        uncond: Option<&[u32]>,
        head: UnmaskHead,
        choice: &UnmaskStep,
    ) -> Result<Vec<(u32, u32)>> {
        if pos > self.pos() {
            return Err(Error::InputOutOfRange(format!(
                "position {pos} is past the {} positions run so far",
                self.pos()
            )));
        }
        self.history.truncate(pos);
        self.check_tokens(tokens)?;
        let bad_uncond = match uncond {
            Some(u) => u.len() != tokens.len() || head.cfg_scale() == 0.0,
            None => head.cfg_scale() != 0.0,
        };
        if bad_uncond {
            return Err(Error::Graph(
                "unmask: unconditional tokens go with a guidance scale".into(),
            ));
        }
        let mut step = self.step_for(tokens.len(), &Sampling::default());
        step.unmask_k = choice.k;
        step.threshold = choice.threshold;
        step.temperature = choice.temperature;
        step.seed = choice.seed;
        step.window_start = choice.window.0;
        step.window_end = choice.window.1;
        let plan = self.run_step(tokens, uncond, Head::Unmask(head), &step)?;
        let words = plan.read_u32(0).await?;
        let count = words.first().copied().unwrap_or(0) as usize;
        if 1 + 2 * count > words.len() {
            return Err(Error::Readback("unmask returned a bad count".into()));
        }
        Ok(words[1..1 + 2 * count]
            .chunks(2)
            .map(|c| (c[0], c[1]))
            .collect())
    }

    fn step_for(&self, n: usize, s: &Sampling) -> Step {
        step_at(self.pos(), n, s)
    }

    /// Run one pass over `tokens` (at most one chunk) with `head`; the plan's output is
    /// ready to read when this returns.
    fn run(&mut self, tokens: &[u32], head: Head, sampling: &Sampling) -> Result<&Plan> {
        let step = self.step_for(tokens.len(), sampling);
        self.run_step(tokens, None, head, &step)
    }

    /// Run `tokens` (and, for guidance, `uncond` as the graph's "uncond_tokens") with `step`
    /// and append them to the sequence.
    fn run_step(
        &mut self,
        tokens: &[u32],
        uncond: Option<&[u32]>,
        head: Head,
        step: &Step,
    ) -> Result<&Plan> {
        self.plan(tokens.len(), head)?;
        let plan = &self.plans[&(tokens.len(), head)];
        plan.write_input("tokens", tokens)?;
        if let Some(u) = uncond {
            plan.write_input("uncond_tokens", u)?;
        }
        plan.run(step)?;
        self.history.extend_from_slice(tokens);
        Ok(&self.plans[&(tokens.len(), head)])
    }

    /// Run the longest prefix of `rest` that one pass may take and return its length; the
    /// plan of that length holds the pass's output. A pass is bounded by ring caches
    /// (`max_chunk`) and by the storage-binding limit: activations, logits and scratch grow
    /// with the tokens of a pass, so a pass whose plan would exceed a binding is retried
    /// shorter, in proportion to the excess (the cache or recurrent state carries the
    /// sequence from one pass to the next, as in decoding).
    fn pass(&mut self, rest: &[u32], head: Head, sampling: &Sampling) -> Result<usize> {
        loop {
            let n = [self.max_chunk(), self.pass_limit.get(&head).copied()]
                .into_iter()
                .flatten()
                .fold(rest.len(), usize::min)
                .max(1);
            match self.plan(n, head) {
                Ok(_) => {
                    self.run(&rest[..n], head, sampling)?;
                    return Ok(n);
                }
                Err(Error::LimitExceeded {
                    needed, allowed, ..
                }) if n > 1 && needed > 0 => {
                    let fit = (n as u128 * allowed as u128 / needed as u128) as usize;
                    self.pass_limit.insert(head, fit.clamp(1, n - 1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Append `tokens` and return the logits after each of them, [T * vocab] row-major.
    pub async fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let mut out = Vec::with_capacity(tokens.len() * self.arch.vocab_size());
        let mut done = 0;
        while done < tokens.len() {
            let n = self.pass(&tokens[done..], Head::AllLogits, &Sampling::default())?;
            out.extend(self.plans[&(n, Head::AllLogits)].read_f32(0).await?);
            done += n;
        }
        Ok(out)
    }

    /// Append `tokens` and draw a token after each of them on the GPU, each as
    /// [`Session::next_token`] would draw it at that position with `sampling` (the
    /// verification of a speculative draft: `tokens` are the last token and the drafts);
    /// only the ids are read back.
    pub async fn verify(&mut self, tokens: &[u32], sampling: &Sampling) -> Result<Vec<u32>> {
        self.check_tokens(tokens)?;
        let mut out = Vec::with_capacity(tokens.len());
        while out.len() < tokens.len() {
            let n = self.pass(&tokens[out.len()..], Head::Verify, sampling)?;
            let ids = self.plans[&(n, Head::Verify)].read_u32(0).await?;
            if ids.len() != n {
                return Err(Error::Readback(format!(
                    "verification returned {} ids for {n} tokens",
                    ids.len()
                )));
            }
            out.extend(ids);
        }
        Ok(out)
    }

    /// Whether the last `k` tokens can always be cut off again by [`Session::truncate`]
    /// without replaying or dropping the sequence: no recurrent state, and every ring cache
    /// keeps `k` rows beyond its window (speculative decoding cuts back rejected drafts).
    pub fn rewinds(&self, k: usize) -> bool {
        !self.states.has_recurrent() && self.layouts.iter().all(|l| l.can_truncate(k, 0))
    }

    /// Append `tokens` and draw the next token on the GPU; only its id is read back.
    pub async fn next_token(&mut self, tokens: &[u32], sampling: &Sampling) -> Result<u32> {
        self.check_tokens(tokens)?;
        // Earlier passes only fill the cache; their sampled token is never read.
        let mut done = 0;
        let mut n = 0;
        while done < tokens.len() {
            n = self.pass(&tokens[done..], Head::Sample, sampling)?;
            done += n;
        }
        let out = self.plans[&(n, Head::Sample)].read_u32(0).await?;
        out.first()
            .copied()
            .ok_or_else(|| Error::Readback("sampler produced no token".into()))
    }
}

impl Session {
    /// Decode `n` tokens in one submission with the token loop on the GPU: feed `first`,
    /// then each sampled token, and return the `n` tokens sampled — the same tokens as `n`
    /// calls of [`Session::next_token`] — or fewer, ending with the first token of
    /// `end_ids` that was sampled: the steps after it do not run and the sequence holds
    /// the tokens fed up to it. `n` is at most [`MAX_STEPS`], `end_ids` at most
    /// [`crate::kernels::decode_gate::MAX_END_IDS`] tokens.
    pub async fn decode(
        &mut self,
        first: u32,
        n: usize,
        sampling: &Sampling,
        end_ids: &[u32],
    ) -> Result<Vec<u32>> {
        if n <= 1 {
            return Ok(vec![self.next_token(&[first], sampling).await?]);
        }
        if n > MAX_STEPS {
            return Err(Error::InputOutOfRange(format!(
                "{n} decode steps in one batch; at most {MAX_STEPS}"
            )));
        }
        // The n tokens fed: `first` now, the others as they are sampled (all below the
        // vocabulary: the sampler draws from it).
        self.check_appending(&[first], n)?;
        self.plan(1, Head::Sample)?;
        let plan = &self.plans[&(1, Head::Sample)];
        if self.decode_loop.is_none() {
            self.decode_loop = Some(DecodeLoop::new(&self.gpu, plan)?);
        }
        plan.write_input("tokens", &[first])?;
        let pos = self.pos();
        let steps: Vec<Step> = (0..n).map(|k| step_at(pos + k, 1, sampling)).collect();
        let Some(looped) = &self.decode_loop else {
            return Err(Error::Graph("no decode loop".into()));
        };
        let mut ids = looped.run(&self.gpu, plan, &steps, end_ids).await?;
        if let Some(end) = ids.iter().position(|t| end_ids.contains(t)) {
            ids.truncate(end + 1);
        }
        self.history.push(first);
        self.history.extend_from_slice(&ids[..ids.len() - 1]);
        Ok(ids)
    }
}

/// The step uniform of a pass of `n` tokens at `pos`.
fn step_at(pos: usize, n: usize, s: &Sampling) -> Step {
    let pos = pos as u32;
    Step {
        pos,
        n_tokens: n as u32,
        seed: pcg_hash(s.seed ^ pcg_hash(pos)),
        seed_base: s.seed,
        top_k: s.top_k,
        temperature: s.temperature,
        top_p: s.top_p,
        ..Step::default()
    }
}

/// Refuse, before allocating anything, a context whose per-sequence state (a layer's KV
/// cache grows with it) cannot be bound: a clear error instead of a failed allocation part
/// way through the layers.
fn check_state_sizes(gpu: &Gpu, specs: &[StateSpec], capacity: usize) -> Result<()> {
    for s in specs {
        let what = format!("state {} for a context of {capacity} tokens", s.name);
        check_binding(gpu, &what, shape_bytes(&s.shape, s.dtype))?;
    }
    Ok(())
}

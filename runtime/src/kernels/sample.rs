//! Sampling on the GPU: argmax, or temperature / top-k / top-p with a seeded draw. Reads the
//! last row of logits and writes one token id, or (speculative verification) every row and
//! one id per row, row r drawn with the seed of the decode step at `pos + r` ([`row_step`]).
//!
//! The accept rule of speculative decoding for a deterministic draft (prompt lookup, a
//! draft model decoding greedily) runs on top of this: the drafted run is verified in one
//! forward that samples every row, and draft token x at row r is accepted iff the token
//! drawn there equals x ([`accepted`]); the first drawn token that differs replaces it.
//! That is the standard rule (accept x with probability min(1, p(x)/q(x)) = p(x) for a draft
//! distribution q that is one-hot at x; on rejection draw from max(0, p - q) renormalised,
//! i.e. from p with x removed), realised by one draw from p: P(emit x) = p(x) and
//! P(emit y != x) = p(y). Each emitted token thus has the target distribution, and since
//! row r's seed is the plain decode's, a seeded speculative run draws the same tokens as
//! plain decoding wherever the logits are the same.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch, Kernel, Step};
use crate::device::Gpu;
use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::{Graph, Source, TensorId};
use crate::op::Op;
use crate::rng::{pcg_hash, unit_f32};
use crate::shader::ShaderDefs;
use crate::tensor::DType;

pub const KERNEL: Kernel = kernel!("sample", variants);

/// With the step's settings, and per sequence in a batched step (PAGED).
pub fn variants() -> Vec<ShaderDefs> {
    [false, true].map(defs).to_vec()
}

fn defs(paged: bool) -> ShaderDefs {
    ShaderDefs::new().bool("PAGED", paged)
}

/// One token id drawn from the last row of `logits` with the step's settings, or one per
/// row (`every_row`).
#[derive(Debug)]
pub struct Sample {
    pub logits: TensorId,
    pub out: TensorId,
    pub every_row: bool,
    /// A batched step's picks: row s drawn with sequence s's settings (shaders/batch.wgsl).
    pub paged: bool,
}

impl Graph {
    /// Sample one token id from the last row of `logits` with the step's settings.
    pub fn sample(&mut self, logits: TensorId) -> Result<TensorId> {
        let out = self.add(vec![1], DType::U32, Source::Activation);
        self.push(Sample {
            logits,
            out,
            every_row: false,
            paged: false,
        });
        Ok(out)
    }

    /// Sample one token id from every row r of `logits` [T, vocab] with the settings of the
    /// decode step at `pos + r` (speculative verification): [T] ids.
    pub fn sample_rows(&mut self, logits: TensorId) -> Result<TensorId> {
        let rows = self.shape(logits)[0];
        let out = self.add(vec![rows], DType::U32, Source::Activation);
        self.push(Sample {
            logits,
            out,
            every_row: true,
            paged: false,
        });
        Ok(out)
    }

    /// In a batched graph, one token id from each row s of `logits` [picks, vocab] (the
    /// gathered pick rows) with sequence s's own settings: [picks] ids.
    pub fn sample_picks(&mut self, logits: TensorId) -> Result<TensorId> {
        let rows = self.shape(logits)[0];
        if self.batch.is_none_or(|b| b.shape.picks != rows) {
            return Err(crate::error::Error::Graph(
                "sample_picks takes a batched graph's pick rows".into(),
            ));
        }
        let out = self.add(vec![rows], DType::U32, Source::Activation);
        self.push(Sample {
            logits,
            out,
            every_row: true,
            paged: true,
        });
        Ok(out)
    }
}

impl Op for Sample {
    fn name(&self) -> &'static str {
        "sample"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.logits], vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.logits);
        let (logits, out) = (cx.buf(self.logits)?, cx.buf(self.out)?);
        let d = match self.every_row {
            true if self.paged => {
                launch_picks(cx.gpu(), cx.step(), cx.batch()?, logits, out, s[1], s[0])?
            }
            true => launch_rows(cx.gpu(), cx.step(), logits, out, s[1], 0, s[0])?,
            false => launch(cx.gpu(), cx.step(), logits, out, s[1], (s[0] - 1) * s[1])?,
        };
        cx.push([d]);
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    _p: [u32; 2],
}

/// Sample from `logits[offset .. offset + vocab]` with the settings in the step uniform.
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    logits: &wgpu::Buffer,
    out: &wgpu::Buffer,
    vocab: usize,
    offset: usize,
) -> Result<Dispatch> {
    launch_rows(gpu, step, logits, out, vocab, offset, 1)
}

/// Sample each of `rows` rows of `vocab` logits from `offset` into `out[r]`, row r with the
/// settings of [`row_step`]`(step, r)`.
pub fn launch_rows(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    logits: &wgpu::Buffer,
    out: &wgpu::Buffer,
    vocab: usize,
    offset: usize,
    rows: usize,
) -> Result<Dispatch> {
    let params = Params {
        n: vocab as u32,
        offset: offset as u32,
        _p: [0; 2],
    };
    KERNEL.dispatch(
        gpu,
        &defs(false),
        &params,
        &[step, logits, out],
        [rows as u32, 1, 1],
    )
}

/// Sample each of `picks` rows of `vocab` logits into `out[s]` with the settings of the
/// batch's pick s ([`crate::batch::BatchRows`]).
pub fn launch_picks(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    batch: &wgpu::Buffer,
    logits: &wgpu::Buffer,
    out: &wgpu::Buffer,
    vocab: usize,
    picks: usize,
) -> Result<Dispatch> {
    let params = Params {
        n: vocab as u32,
        offset: 0,
        _p: [0; 2],
    };
    KERNEL.dispatch(
        gpu,
        &defs(true),
        &params,
        &[step, logits, out, batch],
        [picks as u32, 1, 1],
    )
}

/// The settings row `row` of a per-row pass draws with: those of the decode step at
/// `step.pos + row` (row 0 keeps the step's own seed).
pub fn row_step(step: &Step, row: usize) -> Step {
    let seed = match row {
        0 => step.seed,
        _ => pcg_hash(step.seed_base ^ pcg_hash(step.pos.wrapping_add(row as u32))),
    };
    Step { seed, ..*step }
}

/// The accept rule on the host: how many of `drafts` are accepted, given `drawn`, the token
/// the verification pass drew after each fed token (the last one before the drafts, then each
/// draft). Draft i is accepted iff every earlier one was and `drawn[i]` equals it; the
/// emitted tokens are then `drawn[..=accepted]`.
pub fn accepted(drafts: &[u32], drawn: &[u32]) -> usize {
    drafts.iter().zip(drawn).take_while(|(d, t)| d == t).count()
}

/// CPU reference of a verification pass: the token drawn from each row of `logits`
/// ([T * vocab]) with [`row_step`] (the sampler's exact pick; f32 rounding on the GPU may
/// move a draw that falls within rounding of a boundary, see [`Candidates::accepts`]).
pub fn reference_rows(logits: &[f32], vocab: usize, step: &Step) -> Vec<Candidates> {
    logits
        .chunks(vocab)
        .enumerate()
        .map(|(r, row)| reference(row, &row_step(step, r)))
        .collect()
}

/// The tokens the sampler may draw (`kept`), their unnormalised probabilities, and the draw
/// target `u * total` for `step.seed`. Greedy settings keep only the argmax.
pub struct Candidates {
    pub kept: Vec<u32>,
    pub weights: Vec<f64>,
    pub target: f64,
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// CPU reference of the sampler's candidate set (exact sort-based top-k / top-p).
pub fn reference(logits: &[f32], step: &Step) -> Candidates {
    if step.temperature <= 0.0 || step.top_k == 1 {
        return Candidates {
            kept: vec![argmax(logits)],
            weights: vec![1.0],
            target: 0.0,
        };
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let weight = |v: f32| (((v - max) / step.temperature) as f64).exp();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    // Top-k keeps every token tied with the k-th largest logit.
    let mut cut = logits.len();
    if step.top_k > 0 && (step.top_k as usize) < logits.len() {
        let kth = logits[order[step.top_k as usize - 1]];
        cut = order.iter().take_while(|&&i| logits[i] >= kth).count();
    }
    if step.top_p < 1.0 {
        let kept: f64 = order[..cut].iter().map(|&i| weight(logits[i])).sum();
        let goal = step.top_p as f64 * kept;
        let mut run = 0.0;
        let mut n = 0;
        while n < cut {
            // Whole groups of equal logits stay together.
            let v = logits[order[n]];
            while n < cut && logits[order[n]] == v {
                run += weight(logits[order[n]]);
                n += 1;
            }
            if run >= goal {
                break;
            }
        }
        cut = n;
    }
    let mut kept: Vec<u32> = order[..cut].iter().map(|&i| i as u32).collect();
    kept.sort();
    let weights: Vec<f64> = kept.iter().map(|&i| weight(logits[i as usize])).collect();
    let total: f64 = weights.iter().sum();
    Candidates {
        kept,
        weights,
        target: unit_f32(pcg_hash(step.seed)) as f64 * total,
    }
}

impl Candidates {
    /// The token the draw selects in exact arithmetic.
    pub fn pick(&self) -> u32 {
        let mut run = 0.0;
        for (t, w) in self.kept.iter().zip(&self.weights) {
            run += w;
            if run > self.target {
                return *t;
            }
        }
        *self.kept.last().unwrap_or(&0)
    }

    /// Whether `token` is a draw consistent with the target, allowing f32 rounding of the
    /// prefix sums (relative `tol` of the total mass) at the boundaries between tokens.
    pub fn accepts(&self, token: u32, tol: f64) -> bool {
        let total: f64 = self.weights.iter().sum();
        let mut run = 0.0;
        for (t, w) in self.kept.iter().zip(&self.weights) {
            let (lo, hi) = (run, run + w);
            if *t == token {
                return self.target >= lo - tol * total && self.target <= hi + tol * total;
            }
            run = hi;
        }
        false
    }
}

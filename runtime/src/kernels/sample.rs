//! Sampling on the GPU: argmax, or temperature / top-k / top-p with a seeded draw. Reads one
//! row of logits and writes one token id.

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel, Step};
use crate::device::Gpu;
use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::{Graph, Source, TensorId};
use crate::op::Op;
use crate::rng::{pcg_hash, unit_f32};
use crate::shader::ShaderDefs;
use crate::tensor::DType;

pub const KERNEL: Kernel = kernel!("sample", no_variants);

/// One token id drawn from the last row of `logits` with the step's settings.
#[derive(Debug)]
pub struct Sample {
    pub logits: TensorId,
    pub out: TensorId,
}

impl Graph {
    /// Sample one token id from the last row of `logits` with the step's settings.
    pub fn sample(&mut self, logits: TensorId) -> Result<TensorId> {
        let out = self.add(vec![1], DType::U32, Source::Activation);
        self.push(Sample { logits, out });
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
        let d = launch(cx.gpu(), cx.step(), logits, out, s[1], (s[0] - 1) * s[1])?;
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
    let params = Params {
        n: vocab as u32,
        offset: offset as u32,
        _p: [0; 2],
    };
    KERNEL.dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[step, logits, out],
        [1, 1, 1],
    )
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

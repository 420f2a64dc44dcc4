//! Diffusion-LM sampling (LLaDA's `generate` with low-confidence or random remasking, and
//! Fast-dLLM's confidence threshold): one denoising step's choice of which masked positions to
//! commit and to which tokens, on the GPU, so that a step reads back only the chosen ids.
//!
//! Inputs: `logits` [rows, vocab] (row r is absolute position `step.pos + r`), optionally
//! `uncond` [rows, vocab] for classifier-free guidance, and `tokens` [rows] (the current tokens;
//! a row is masked iff its token is `mask_id`). From the [`Step`] uniform: `window_start` /
//! `window_end` (only masked rows in that range of absolute positions may be committed),
//! `unmask_k` (how many to commit; 0 = threshold mode), `threshold`,
//! `temperature` and `seed`.
//!
//! Pass 1, per row: x0 = argmax(l) (ties to the lowest id), or with temperature T > 0
//! argmax(l + T * g_v) with Gumbel noise g_v = -ln(-ln u_v), u_v = [`open_unit`] of
//! [`token_hash`]`(seed, position, v)` (the same draw as LLaDA's argmax of exp(l) / (-ln u)^T).
//! Confidence = softmax(l)[x0], or with random remasking [`open_unit`] of
//! [`remask_hash`]`(seed, position)`. With `cfg_scale` != 0, l = u + (cfg_scale + 1) (l - u).
//! Pass 2: top-k mode commits the k most confident (ties to the lower position; fewer when
//! fewer rows are candidates); threshold mode the most confident plus every other with
//! confidence >= threshold. `out` = [count, then count (position, token) pairs sorted by
//! position]; the words after them are left as they were.
//!
//! Callers: a step whose schedule commits 0 tokens must be skipped (unmask_k = 0 means threshold).

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch, Kernel, Step};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, Source, TensorId};
use crate::op::Op;
use crate::rng::pcg_hash;
use crate::shader::ShaderDefs;
use crate::tensor::DType;

/// Pass 1 (per-row predictions) and pass 2 (the selection), by `SELECT`.
pub const KERNEL: Kernel = kernel!("unmask", variants);

fn defs(select: bool) -> ShaderDefs {
    ShaderDefs::new().bool("SELECT", select)
}

pub fn variants() -> Vec<ShaderDefs> {
    [false, true].map(defs).to_vec()
}

/// The most rows one launch takes (pass 2 ranks them in one workgroup's memory).
pub const MAX_ROWS: usize = 1024;

/// The settings of one launch that are not in the [`Step`] uniform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Rows of logits (positions `step.pos ..` `step.pos + rows`), 1 ..= [`MAX_ROWS`].
    pub rows: usize,
    pub vocab: usize,
    pub mask_id: u32,
    /// Classifier-free guidance scale; 0 = off (then `uncond` is not read).
    pub cfg_scale: f32,
    /// LLaDA's `remasking='random'`: confidences are seeded uniform draws.
    pub random_remasking: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Uniform {
    rows: u32,
    vocab: u32,
    mask_id: u32,
    cfg_scale: f32,
    random_remasking: u32,
    _p: [u32; 3],
}

/// Words of the scratch buffer: (token, confidence bits) per row.
pub fn scratch_words(rows: usize) -> usize {
    2 * rows
}

/// Words of the output buffer: the count, then up to `rows` (position, token) pairs.
pub fn out_words(rows: usize) -> usize {
    1 + 2 * rows
}

fn check_size(what: &str, buf: &wgpu::Buffer, words: usize) -> Result<()> {
    if buf.size() < 4 * words as u64 {
        return Err(Error::ShapeMismatch {
            context: format!("unmask: {what} buffer (in 4-byte words)"),
            expected: vec![words],
            got: vec![(buf.size() / 4) as usize],
        });
    }
    Ok(())
}

/// The two dispatches of one step (run them in this order, in one pass or in order):
/// per-row predictions into `scratch` ([`scratch_words`]), then the selection into `out`
/// ([`out_words`]). `uncond` is required exactly when `params.cfg_scale` != 0 (it is ignored
/// otherwise).
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    logits: &wgpu::Buffer,
    uncond: Option<&wgpu::Buffer>,
    tokens: &wgpu::Buffer,
    scratch: &wgpu::Buffer,
    out: &wgpu::Buffer,
    params: &Params,
) -> Result<[Dispatch; 2]> {
    let &Params {
        rows,
        vocab,
        mask_id,
        cfg_scale,
        random_remasking,
    } = params;
    if rows == 0 {
        return Err(Error::Graph("unmask: 0 rows".into()));
    }
    if rows > MAX_ROWS {
        return Err(Error::LimitExceeded {
            what: "unmask rows (one workgroup ranks them)".into(),
            needed: rows as u64,
            allowed: MAX_ROWS as u64,
        });
    }
    if vocab == 0 {
        return Err(Error::Graph("unmask: vocab is 0".into()));
    }
    let logit_bytes = 4 * (rows * vocab) as u64;
    if logit_bytes > gpu.caps.max_storage_binding {
        return Err(Error::LimitExceeded {
            what: format!("unmask logits [{rows}, {vocab}] binding (bytes)"),
            needed: logit_bytes,
            allowed: gpu.caps.max_storage_binding,
        });
    }
    check_size("logits", logits, rows * vocab)?;
    let uncond = match (uncond, cfg_scale != 0.0) {
        (Some(u), true) => {
            check_size("uncond", u, rows * vocab)?;
            u
        }
        (None, true) => {
            return Err(Error::Graph(format!(
                "unmask: cfg_scale {cfg_scale} needs the unconditional logits"
            )))
        }
        // Not read; any storage buffer fills the binding.
        (_, false) => logits,
    };
    check_size("tokens", tokens, rows)?;
    check_size("scratch", scratch, scratch_words(rows))?;
    check_size("out", out, out_words(rows))?;
    let uniform = Uniform {
        rows: rows as u32,
        vocab: vocab as u32,
        mask_id,
        cfg_scale,
        random_remasking: random_remasking as u32,
        _p: [0; 3],
    };
    let buffers = [step, logits, uncond, tokens, scratch, out];
    let predict = KERNEL.dispatch(gpu, &defs(false), &uniform, &buffers, gpu.grid(rows as u32))?;
    let select = KERNEL.dispatch(gpu, &defs(true), &uniform, &buffers, [1, 1, 1])?;
    Ok([predict, select])
}

/// One diffusion step's choice of masked positions to commit (u32 count then (position,
/// token) pairs), from `logits` [T, vocab] of the positions whose current ids are `tokens`,
/// with the step's k / threshold / window; `uncond`: logits of the prompt-masked sequence for
/// classifier-free guidance.
#[derive(Debug)]
pub struct Unmask {
    pub logits: TensorId,
    pub uncond: Option<TensorId>,
    pub tokens: TensorId,
    pub out: TensorId,
    pub mask_id: u32,
    pub cfg_scale: f32,
    pub random_remasking: bool,
}

impl Graph {
    /// The positions a diffusion step commits, chosen on the GPU (see [`Unmask`]).
    pub fn unmask(
        &mut self,
        logits: TensorId,
        uncond: Option<TensorId>,
        tokens: TensorId,
        mask_id: u32,
        cfg_scale: f32,
        random_remasking: bool,
    ) -> Result<TensorId> {
        let rows = self.shape(logits)[0];
        if self.shape(tokens) != [rows]
            || uncond.is_some_and(|u| self.shape(u) != self.shape(logits))
        {
            return Err(mismatch("unmask", &[rows], self.shape(tokens)));
        }
        let out = self.add(vec![out_words(rows)], DType::U32, Source::Activation);
        self.push(Unmask {
            logits,
            uncond,
            tokens,
            out,
            mask_id,
            cfg_scale,
            random_remasking,
        });
        Ok(out)
    }
}

impl Op for Unmask {
    fn name(&self) -> &'static str {
        "unmask"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.logits, self.tokens];
        r.extend(self.uncond);
        (r, vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.logits);
        let params = Params {
            rows: s[0],
            vocab: s[1],
            mask_id: self.mask_id,
            cfg_scale: self.cfg_scale,
            random_remasking: self.random_remasking,
        };
        let scratch = cx.scratch("unmask scratch", scratch_words(s[0]))?;
        let d = launch(
            cx.gpu(),
            cx.step(),
            cx.buf(self.logits)?,
            cx.opt_buf(self.uncond)?,
            cx.buf(self.tokens)?,
            &scratch,
            cx.buf(self.out)?,
            &params,
        )?;
        cx.push(d);
        Ok(())
    }
}

/// The hash behind the Gumbel noise of token `token` at absolute position `position`.
pub fn token_hash(seed: u32, position: u32, token: u32) -> u32 {
    pcg_hash(pcg_hash(pcg_hash(seed) ^ position) ^ token)
}

/// The hash behind the random-remasking confidence of absolute position `position`.
pub fn remask_hash(seed: u32, position: u32) -> u32 {
    token_hash(seed, position, u32::MAX)
}

/// Uniform in the open interval (0, 1) from a hash, exactly as the shader computes it:
/// (2m + 1) / 2^24 for the top 23 bits m (exact in f32).
pub fn open_unit(h: u32) -> f32 {
    (((h >> 9) << 1) | 1) as f32 / 16_777_216.0
}

/// The Gumbel noise -ln(-ln u) of token `token` at absolute position `position`, in f64 (the
/// shader computes it in f32 to a few ulp: see `neg_log_unit` in shaders/unmask.wgsl).
pub fn gumbel(seed: u32, position: u32, token: u32) -> f64 {
    let u = open_unit(token_hash(seed, position, token)) as f64;
    -(-u.ln()).ln()
}

/// Pass 1's result for a row that may be committed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Absolute position.
    pub position: u32,
    pub token: u32,
    pub confidence: f64,
    /// Best minus second-best score of the argmax (noisy logits when temperature > 0);
    /// infinite for a vocab of 1. A GPU in f32 agrees with this f64 reference while the margin
    /// is well above f32 rounding.
    pub margin: f64,
}

/// Pass 1 in f64 for every candidate row (masked and inside the window), in row order.
/// Logits (with CFG) are formed in f32 as on the GPU; noise and softmax are f64.
pub fn predictions(
    logits: &[f32],
    uncond: Option<&[f32]>,
    tokens: &[u32],
    params: &Params,
    step: &Step,
) -> Vec<Prediction> {
    let (rows, vocab) = (params.rows, params.vocab);
    assert_eq!(logits.len(), rows * vocab, "unmask reference: logits");
    assert_eq!(tokens.len(), rows, "unmask reference: tokens");
    let cfg = params.cfg_scale != 0.0;
    if cfg {
        let u = uncond.expect("unmask reference: cfg_scale needs uncond");
        assert_eq!(u.len(), rows * vocab, "unmask reference: uncond");
    }
    let mut preds = Vec::new();
    for r in 0..rows {
        let position = step.pos + r as u32;
        let in_window = position >= step.window_start && position < step.window_end;
        if tokens[r] != params.mask_id || !in_window {
            continue;
        }
        let row = &logits[r * vocab..(r + 1) * vocab];
        let l: Vec<f32> = match uncond {
            Some(u) if cfg => row
                .iter()
                .zip(&u[r * vocab..(r + 1) * vocab])
                .map(|(&l, &u)| u + (params.cfg_scale + 1.0) * (l - u))
                .collect(),
            _ => row.to_vec(),
        };
        let score = |v: usize| {
            let lv = l[v] as f64;
            if step.temperature > 0.0 {
                lv + step.temperature as f64 * gumbel(step.seed, position, v as u32)
            } else {
                lv
            }
        };
        let (mut best, mut best_z, mut second_z) = (0, f64::NEG_INFINITY, f64::NEG_INFINITY);
        for v in 0..vocab {
            let z = score(v);
            if z > best_z {
                second_z = best_z;
                best_z = z;
                best = v;
            } else if z > second_z {
                second_z = z;
            }
        }
        let confidence = if params.random_remasking {
            open_unit(remask_hash(step.seed, position)) as f64
        } else {
            let m = l.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let sum: f64 = l.iter().map(|&v| (v as f64 - m).exp()).sum();
            (l[best] as f64 - m).exp() / sum
        };
        preds.push(Prediction {
            position,
            token: best as u32,
            confidence,
            margin: best_z - second_z,
        });
    }
    preds
}

/// Pass 2: the committed (position, token) pairs, sorted by position.
pub fn select(preds: &[Prediction], step: &Step) -> Vec<(u32, u32)> {
    let mut order: Vec<&Prediction> = preds.iter().collect();
    // Most confident first, ties to the lower position.
    order.sort_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then(a.position.cmp(&b.position))
    });
    let mut chosen: Vec<(u32, u32)> = order
        .iter()
        .enumerate()
        .filter(|&(rank, p)| {
            if step.unmask_k > 0 {
                rank < step.unmask_k as usize
            } else {
                rank == 0 || p.confidence >= step.threshold as f64
            }
        })
        .map(|(_, p)| (p.position, p.token))
        .collect();
    chosen.sort();
    chosen
}

/// CPU reference of one step: the (absolute position, token) pairs committed, sorted by
/// position.
pub fn reference(
    logits: &[f32],
    uncond: Option<&[f32]>,
    tokens: &[u32],
    params: &Params,
    step: &Step,
) -> Vec<(u32, u32)> {
    select(&predictions(logits, uncond, tokens, params, step), step)
}

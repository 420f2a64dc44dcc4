//! RWKV-4's WKV recurrence (transformers' `rwkv_linear_attention_cpu`), per channel c with
//! w = -exp(time_decay) <= 0, u = time_first and a state (aa, bb, pp) (HF's num, den, max):
//!
//! ```text
//! wkv_t = (e^{pp-p} aa + e^{u+k_t-p} v_t) / (e^{pp-p} bb + e^{u+k_t-p}),  p = max(pp, u+k_t)
//! q = max(pp + w, k_t):  aa <- e^{pp+w-q} aa + e^{k_t-q} v_t,  bb <- e^{pp+w-q} bb + e^{k_t-q},  pp <- q
//! ```
//!
//! A state with bb == 0 is empty (nothing seen: the session zero-initialises states where HF
//! starts pp at -1e38); aa and pp are then ignored. See shaders/wkv4_state.wgsl.
//! Two ways to run it, as for kernels::linear_scan:
//! * [`launch_recurrent`]: token by token from the sequence's state, updated in place;
//! * [`launch_chunked`]: every chunk's state from an empty start at once (wkv4_local), a
//!   short walk over chunk boundaries (wkv4_carry), then every chunk's outputs at once (wkv4).
//!
//! [`reference`] is the f64 CPU form.

use bytemuck::{Pod, Zeroable};

use super::linear_scan::RECURRENT_TOKENS;
use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

/// The outputs pass (also the token-by-token form), the chunk-local pass and the carry pass.
pub const KERNEL: Kernel = kernel!("wkv4", variants);
pub const LOCAL: Kernel = kernel!("wkv4_local", no_variants);
pub const CARRY: Kernel = kernel!("wkv4_carry", no_variants);

fn defs(write_state: bool) -> ShaderDefs {
    ShaderDefs::new().bool("WRITE_STATE", write_state)
}

/// The outputs pass writing the state (token by token) or not (after the carry).
pub fn variants() -> Vec<ShaderDefs> {
    [false, true].map(defs).to_vec()
}

/// Tokens per chunk of the chunked form.
pub const CHUNK: usize = 32;
/// Rows of a state: aa, bb, pp.
pub const STATE_ROWS: usize = 3;

/// Tokens one invocation of the recurrent form may run: llvmpipe ends an invocation after
/// 65535 loop iterations, and a token costs one.
pub fn recurrent_tokens_per_dispatch() -> usize {
    16_384
}

/// Chunks one invocation of the carry pass walks (one loop iteration each).
pub const CARRY_CHUNKS_PER_DISPATCH: usize = 16_384;

/// Floats of scratch the chunked form needs.
pub fn scratch_floats(channels: usize, tokens: usize, chunk: usize) -> usize {
    tokens.div_ceil(chunk.max(1)) * STATE_ROWS * channels
}

/// The GPU buffers of one WKV run.
pub struct Wkv4Buffers<'a> {
    /// Keys and values [T, C].
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    /// -exp(time_decay) and time_first [C].
    pub w: &'a wgpu::Buffer,
    pub u: &'a wgpu::Buffer,
    /// The sequence's state [3, C] (aa, bb, pp rows), read and updated.
    pub state: &'a wgpu::Buffer,
    /// [T, C].
    pub out: &'a wgpu::Buffer,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    channels: u32,
    t0: u32,
    chunk: u32,
    chunks: u32,
    c0: u32,
    c1: u32,
    _p: u32,
}

fn params(channels: usize, t0: usize, tokens: usize, chunk: usize) -> Params {
    let chunks = tokens.div_ceil(chunk) as u32;
    Params {
        tokens: tokens as u32,
        channels: channels as u32,
        t0: t0 as u32,
        chunk: chunk as u32,
        chunks,
        c0: 0,
        c1: chunks,
        _p: 0,
    }
}

fn check(channels: usize) -> Result<()> {
    if channels == 0 {
        return Err(Error::Graph("wkv4: no channels".into()));
    }
    Ok(())
}

/// Token by token over `tokens` tokens from `b.state`, which ends as the state after them.
pub fn launch_recurrent(
    gpu: &Gpu,
    b: &Wkv4Buffers,
    channels: usize,
    tokens: usize,
) -> Result<Vec<Dispatch>> {
    check(channels)?;
    let defs = defs(true);
    let per = recurrent_tokens_per_dispatch();
    let groups = (channels as u32).div_ceil(64);
    (0..tokens)
        .step_by(per)
        .map(|t0| {
            let n = per.min(tokens - t0);
            KERNEL.dispatch(
                gpu,
                &defs,
                &params(channels, t0, n, n),
                &[b.k, b.v, b.w, b.u, b.state, b.out],
                gpu.grid(groups),
            )
        })
        .collect()
}

/// The chunked form over `tokens` tokens from `b.state` (updated to the state after them),
/// with `scratch` of [`scratch_floats`] floats.
pub fn launch_chunked(
    gpu: &Gpu,
    b: &Wkv4Buffers,
    scratch: &wgpu::Buffer,
    channels: usize,
    tokens: usize,
    chunk: usize,
) -> Result<Vec<Dispatch>> {
    check(channels)?;
    let chunk = chunk.max(1);
    let p = params(channels, 0, tokens, chunk);
    let rows = p.chunks * channels as u32;
    let mut d = vec![LOCAL.dispatch(
        gpu,
        &ShaderDefs::new(),
        &p,
        &[b.k, b.v, b.w, scratch],
        gpu.grid(rows.div_ceil(64)),
    )?];
    for c0 in (0..p.chunks).step_by(CARRY_CHUNKS_PER_DISPATCH) {
        let c1 = (c0 + CARRY_CHUNKS_PER_DISPATCH as u32).min(p.chunks);
        d.push(CARRY.dispatch(
            gpu,
            &ShaderDefs::new(),
            &Params { c0, c1, ..p },
            &[b.w, b.state, scratch],
            gpu.grid((channels as u32).div_ceil(64)),
        )?);
    }
    d.push(KERNEL.dispatch(
        gpu,
        &defs(false),
        &p,
        &[b.k, b.v, b.w, b.u, scratch, b.out],
        gpu.grid(rows.div_ceil(64)),
    )?);
    Ok(d)
}

/// RWKV-4's WKV over T tokens from `state` [3, C] (updated): k, v [T, C], w =
/// -exp(time_decay) and u = time_first [C]; out [T, C].
#[derive(Debug)]
pub struct Wkv4 {
    pub k: TensorId,
    pub v: TensorId,
    pub w: TensorId,
    pub u: TensorId,
    pub state: TensorId,
    pub out: TensorId,
}

impl Graph {
    /// RWKV-4's WKV (see [`Wkv4`]): k, v [T, C], w, u [C], state [3, C].
    pub fn wkv4(
        &mut self,
        k: TensorId,
        v: TensorId,
        w: TensorId,
        u: TensorId,
        state: TensorId,
    ) -> Result<TensorId> {
        if self.batch.is_some() {
            return Err(Error::Graph(
                "wkv4 has no batched form (per-sequence state slots)".into(),
            ));
        }
        let ks = self.shape(k).to_vec();
        if ks.len() != 2 || ks[1] == 0 {
            return Err(Error::Graph(format!("wkv4: k must be [T, C], got {ks:?}")));
        }
        let c = ks[1];
        if self.shape(v) != ks.as_slice() {
            return Err(mismatch("wkv4 v", &ks, self.shape(v)));
        }
        for (x, what) in [(w, "w (time_decay)"), (u, "u (time_first)")] {
            if self.numel(x) != c {
                return Err(mismatch(&format!("wkv4 {what}"), &[c], self.shape(x)));
            }
        }
        if self.shape(state) != [STATE_ROWS, c] {
            return Err(mismatch("wkv4 state", &[STATE_ROWS, c], self.shape(state)));
        }
        let out = self.activation(ks);
        self.push(Wkv4 {
            k,
            v,
            w,
            u,
            state,
            out,
        });
        Ok(out)
    }
}

impl Op for Wkv4 {
    fn name(&self) -> &'static str {
        "wkv4"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (
            vec![self.k, self.v, self.w, self.u, self.state],
            vec![self.out, self.state],
        )
    }

    /// Token by token up to [`RECURRENT_TOKENS`], else the chunked form with a scratch shared
    /// by every layer.
    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let (n, c) = (cx.shape(self.k)[0], cx.shape(self.k)[1]);
        let scratch = match n > RECURRENT_TOKENS {
            true => Some(cx.scratch("wkv4 scratch", scratch_floats(c, n, CHUNK))?),
            false => None,
        };
        let b = Wkv4Buffers {
            k: cx.buf(self.k)?,
            v: cx.buf(self.v)?,
            w: cx.buf(self.w)?,
            u: cx.buf(self.u)?,
            state: cx.buf(self.state)?,
            out: cx.buf(self.out)?,
        };
        let gpu = cx.gpu();
        match &scratch {
            Some(s) => cx.push(launch_chunked(gpu, &b, s, c, n, CHUNK)?),
            None => cx.push(launch_recurrent(gpu, &b, c, n)?),
        }
        Ok(())
    }
}

/// The recurrence in f64, token by token, exactly as transformers' CPU form (with an empty
/// state, bb == 0, standing for HF's pp = -1e38): returns the outputs [T, C] and leaves the
/// state after the last token in `state` [3, C].
pub fn reference(
    k: &[f32],
    v: &[f32],
    w: &[f32],
    u: &[f32],
    channels: usize,
    tokens: usize,
    state: &mut [f64],
) -> Vec<f64> {
    let c = channels;
    let mut out = vec![0.0; tokens * c];
    for ch in 0..c {
        let (mut aa, mut bb, mut pp) = (state[ch], state[c + ch], state[2 * c + ch]);
        if bb == 0.0 {
            (aa, pp) = (0.0, f64::NEG_INFINITY);
        }
        let (wc, uc) = (w[ch] as f64, u[ch] as f64);
        for t in 0..tokens {
            let kt = k[t * c + ch] as f64;
            let vt = v[t * c + ch] as f64;
            let p = pp.max(uc + kt);
            let (e1, e2) = ((pp - p).exp(), (uc + kt - p).exp());
            out[t * c + ch] = (e1 * aa + e2 * vt) / (e1 * bb + e2);
            let q = (pp + wc).max(kt);
            let (e1, e2) = ((pp + wc - q).exp(), (kt - q).exp());
            aa = e1 * aa + e2 * vt;
            bb = e1 * bb + e2;
            pp = q;
        }
        if bb == 0.0 {
            pp = 0.0;
        }
        state[ch] = aa;
        state[c + ch] = bb;
        state[2 * c + ch] = pp;
    }
    out
}

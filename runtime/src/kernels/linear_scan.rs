//! The gated linear recurrence behind the linear-time sequence models (GLA, Mamba, Mamba-2,
//! RWKV-6, RWKV-7, plain linear attention): per head a state S [dv, dk] whose rows update as
//! `s_i <- s_i * w_t + (s_i . a_t) b_t + v_t,i k_t` and whose output is `q_t . s_i` (see
//! shaders/linear_recurrence.wgsl for the exact forms). Two ways to run it:
//! * [`launch_recurrent`]: token by token from the sequence's state, updated in place
//!   (decode, and the reference form of prefill). On CPU adapters with subgroups of at least
//!   8 lanes it runs shaders/linear_scan_lanes.wgsl (a subgroup over the key dims and a block
//!   of state rows), which also takes their prefill: see [`lanes_on`];
//! * [`launch_chunked`]: the chunked scan for prefill: every chunk's effect on a state at
//!   once (linear_scan_local), a short walk over chunk boundaries (linear_scan_carry), then
//!   every chunk's outputs at once (linear_scan) — parallel over chunks as well as heads;
//! * [`launch_matmul`]: the same three passes with the chunk-local ones in matmul form
//!   (fla's chunked form: shaders/linear_scan_mm_local.wgsl, shaders/linear_scan_mm.wgsl;
//!   with the delta term fla's WY / UT form of the diagonal-plus-low-rank rule:
//!   shaders/linear_scan_mm_delta_local.wgsl, shaders/linear_scan_mm_delta.wgsl); the
//!   prefill of [`LinearScan`] where [`matmul_on`].
//!
//! [`reference`] is the f64 CPU form of the same recurrence.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

/// The outputs pass (also the token-by-token form), the chunk-local pass and the carry pass.
pub const KERNEL: Kernel = kernel!("linear_scan", variants);
pub const LOCAL: Kernel = kernel!("linear_scan_local", local_variants);
pub const CARRY: Kernel = kernel!("linear_scan_carry", carry_variants);
pub const LANES: Kernel = kernel!("linear_scan_lanes", lanes_variants);
/// The matmul form's chunk-local pass and outputs pass, without and with the delta term.
pub const MM_LOCAL: Kernel = kernel!("linear_scan_mm_local", mm_variants);
pub const MM: Kernel = kernel!("linear_scan_mm", mm_variants);
pub const MM_DELTA_LOCAL: Kernel = kernel!("linear_scan_mm_delta_local", mm_delta_variants);
pub const MM_DELTA: Kernel = kernel!("linear_scan_mm_delta", mm_delta_variants);

/// State rows per workgroup of the lanes kernel: each lane's loads of a token's k, q, a, b
/// and decays serve this many rows.
const LANES_ROWS: u32 = 16;

/// Up to this many tokens a recurrence runs token by token (decode); longer runs take the
/// chunked scan.
pub const RECURRENT_TOKENS: usize = 8;

/// Where the per-token log-decay `log w` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decay {
    /// w = 1 (plain linear attention).
    None,
    /// A gate tensor g [T, heads, dk or 1] holding log w (GLA, RWKV-6, RWKV-7).
    Gate { per_key: bool },
    /// dt [T, heads] times a constant A [heads, dk or 1] (Mamba: dt * A); values enter the
    /// state scaled by dt as well (Mamba's discretisation of dt * B * x).
    DtA { per_key: bool },
}

impl Decay {
    fn id(self) -> u32 {
        match self {
            Decay::None => 0,
            Decay::Gate { .. } => 1,
            Decay::DtA { .. } => 2,
        }
    }
    fn per_key(self) -> bool {
        matches!(
            self,
            Decay::Gate { per_key: true } | Decay::DtA { per_key: true }
        )
    }
}

/// The shape and kind of one recurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScanShape {
    pub heads: usize,
    /// Heads of q and k; each serves heads / qk_heads state heads.
    pub qk_heads: usize,
    pub dk: usize,
    pub dv: usize,
    pub decay: Decay,
    /// RWKV-7's delta term `(s . a) b` (input `ab` [T, heads, 2, dk]).
    pub delta: bool,
    /// RWKV-6's bonus: the output before the update, plus `q . (u * k) v` (input u [heads, dk]).
    pub bonus: bool,
}

/// The largest key dim (the carry pass keeps a state row in workgroup memory).
pub const MAX_DK: usize = 256;
/// Tokens per chunk of the chunked scan.
pub const CHUNK: usize = 64;
/// Tokens per chunk of the matmul form, at most (the shaders' LC: a chunk's A [LC, LC] and
/// the tiles it is made from fit in 13 KiB of workgroup memory).
pub const MM_CHUNK: usize = 32;
/// Tokens per chunk of the matmul form with the delta term, at most (its shaders' LC: the
/// four [LC, LC] matrices of the WY form and the key tiles they are built from fit in
/// 9.5 KiB of workgroup memory, and T's forward substitution takes LC steps).
pub const MM_DELTA_CHUNK: usize = 16;
/// Value rows per workgroup of both matmul-form passes (TV) and keys per workgroup of its
/// local pass (TK in linear_scan_mm_local.wgsl).
const MM_ROWS: usize = 32;
const MM_LOCAL_KEYS: usize = 32;
/// Value rows per workgroup of the delta kind's outputs pass (TV in linear_scan_mm_delta.wgsl).
const MM_DELTA_ROWS: usize = 16;
/// The fewest value rows per head for which prefill takes the matmul form: a workgroup
/// builds its chunk's A [LC, LC] over all dk keys for one tile of value rows, work that the
/// rows form does not have, paid back only when the tile has rows to share it (Mamba's
/// heads have one value row each and keep the rows form).
pub const MM_MIN_DV: usize = 16;

impl ScanShape {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Graph(format!("linear_scan: {m}")));
        if self.heads == 0 || self.qk_heads == 0 || self.dk == 0 || self.dv == 0 {
            return bad(format!("empty shape {self:?}"));
        }
        if !self.heads.is_multiple_of(self.qk_heads) {
            return bad(format!(
                "{} heads do not divide into {} q/k heads",
                self.heads, self.qk_heads
            ));
        }
        if self.dk > MAX_DK {
            return bad(format!("key dim {} is over {MAX_DK}", self.dk));
        }
        if self.bonus && matches!(self.decay, Decay::DtA { .. }) {
            return bad("a bonus and a dt*A decay both need the constants input".into());
        }
        Ok(())
    }
    /// Decay values per head and token (or per head, for A).
    pub fn gk(&self) -> usize {
        if self.decay.per_key() {
            self.dk
        } else {
            1
        }
    }
    pub fn state_floats(&self) -> usize {
        self.heads * self.dv * self.dk
    }
    /// Whether the matmul form runs this kind: all but the delta term with a bonus, which no
    /// model has (the delta kind's shaders write the output after the update).
    pub fn matmul_form(&self) -> bool {
        !(self.delta && self.bonus)
    }
    /// The longest chunk of the matmul form for this kind.
    pub fn matmul_chunk(&self) -> usize {
        match self.delta {
            true => MM_DELTA_CHUNK,
            false => MM_CHUNK,
        }
    }
    fn trans_rows(&self) -> usize {
        if self.delta {
            self.dk
        } else {
            1
        }
    }
    pub(crate) fn defs(&self) -> ShaderDefs {
        ShaderDefs::new()
            .u32("DK", self.dk as u32)
            .u32("DECAY", self.decay.id())
            .bool("DELTA", self.delta)
            .bool("BONUS", self.bonus)
    }
}

/// Every valid kind (decay, delta, bonus) at key dims 1, 16, 64 and 256.
fn kinds() -> Vec<ScanShape> {
    let mut out = Vec::new();
    for dk in [1, 16, 64, 256] {
        for decay in [
            Decay::None,
            Decay::Gate { per_key: true },
            Decay::DtA { per_key: true },
        ] {
            for (delta, bonus) in [(false, false), (true, false), (false, true)] {
                let shape = ScanShape {
                    heads: 1,
                    qk_heads: 1,
                    dk,
                    dv: 1,
                    decay,
                    delta,
                    bonus,
                };
                if shape.validate().is_ok() {
                    out.push(shape);
                }
            }
        }
    }
    out
}

/// The outputs pass's specialisation: writing the state (token by token) or not (after the
/// carry), for one sequence or each sequence of a batched step from its slot (`paged`).
fn outputs_defs(shape: &ScanShape, write_state: bool, paged: bool) -> ShaderDefs {
    (shape.defs())
        .bool("WRITE_STATE", write_state)
        .bool("PAGED", paged)
}

/// The outputs pass after the carry, token by token, and token by token in a batched step,
/// per kind.
pub fn variants() -> Vec<ShaderDefs> {
    kinds()
        .iter()
        .flat_map(|k| {
            [(false, false), (true, false), (true, true)].map(|(w, p)| outputs_defs(k, w, p))
        })
        .collect()
}

/// The lanes kernel's specialisation, for one sequence or a batched step (`paged`).
fn lanes_defs(shape: &ScanShape, paged: bool) -> ShaderDefs {
    (shape.defs()).u32("ROWS", LANES_ROWS).bool("PAGED", paged)
}

pub fn lanes_variants() -> Vec<ShaderDefs> {
    (kinds().iter())
        .flat_map(|k| [false, true].map(|paged| lanes_defs(k, paged)))
        .collect()
}

pub fn local_variants() -> Vec<ShaderDefs> {
    kinds().iter().map(ScanShape::defs).collect()
}

/// Every kind the matmul form runs without the delta term.
pub fn mm_variants() -> Vec<ShaderDefs> {
    kinds()
        .iter()
        .filter(|k| k.matmul_form() && !k.delta)
        .map(ScanShape::defs)
        .collect()
}

/// Every kind the matmul form runs with the delta term.
pub fn mm_delta_variants() -> Vec<ShaderDefs> {
    kinds()
        .iter()
        .filter(|k| k.matmul_form() && k.delta)
        .map(ScanShape::defs)
        .collect()
}

/// The carry's specialisation: with `wy` > 0 it reads the delta kind's transitions in the WY
/// form of chunks of `wy` tokens (the matmul form's), else as linear_scan_local writes them.
fn carry_defs(dk: usize, delta: bool, wy: usize) -> ShaderDefs {
    ShaderDefs::new()
        .u32("DK", dk as u32)
        .bool("DELTA", delta)
        .u32("WY", wy as u32)
}

/// Key dims from 1 to MAX_DK, without the delta term, with it, and with it in WY form.
pub fn carry_variants() -> Vec<ShaderDefs> {
    [1, 16, 64, 100, MAX_DK]
        .into_iter()
        .flat_map(|dk| {
            [(false, 0), (true, 0), (true, MM_DELTA_CHUNK)]
                .map(|(delta, wy)| carry_defs(dk, delta, wy))
        })
        .collect()
}

/// Floats of scratch the chunked scan needs for `tokens` tokens in chunks of `chunk`.
pub fn scratch_floats(shape: &ScanShape, tokens: usize, chunk: usize) -> usize {
    let chunks = tokens.div_ceil(chunk.max(1));
    chunks * shape.heads * (shape.dv + shape.trans_rows()) * shape.dk
}

/// Floats of scratch the matmul form needs for `tokens` tokens in chunks of `chunk`: the
/// chunked scan's, but with the delta term, per chunk and head, the local rows, the
/// transition in WY form (2 LC + 1 rows of dk) and what its outputs pass reads (U [LC, dk],
/// X0 [LC, dv], two [LC, LC]; `wy_base` in shaders/linear_recurrence.wgsl).
pub fn matmul_scratch_floats(shape: &ScanShape, tokens: usize, chunk: usize) -> usize {
    if !shape.delta {
        return scratch_floats(shape, tokens, chunk);
    }
    let chunks = tokens.div_ceil(chunk.max(1));
    let (lc, dk, dv) = (MM_DELTA_CHUNK, shape.dk, shape.dv);
    chunks * shape.heads * ((dv + 2 * lc + 1) * dk + lc * (dk + dv + 2 * lc))
}

/// Tokens one invocation of the recurrent form may run: llvmpipe ends an invocation after
/// 65535 loop iterations, and a token costs about 3 * dk of them.
pub fn recurrent_tokens_per_dispatch(dk: usize) -> usize {
    (50_000 / (3 * dk + 8)).max(1)
}

/// The GPU buffers of one recurrence. Inputs the kind does not use may be None.
pub struct ScanBuffers<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    /// g or dt, per [`Decay`].
    pub decay: Option<&'a wgpu::Buffer>,
    /// A (for [`Decay::DtA`]) or u (for a bonus).
    pub consts: Option<&'a wgpu::Buffer>,
    pub ab: Option<&'a wgpu::Buffer>,
    /// The sequence's state [heads, dv, dk], read and updated.
    pub state: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    t0: u32,
    heads: u32,
    qk_heads: u32,
    dv: u32,
    gk: u32,
    chunk: u32,
    chunks: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CarryParams {
    heads: u32,
    dv: u32,
    chunks: u32,
    _p: u32,
}

fn params(shape: &ScanShape, t0: usize, tokens: usize, chunk: usize) -> Params {
    Params {
        tokens: tokens as u32,
        t0: t0 as u32,
        heads: shape.heads as u32,
        qk_heads: shape.qk_heads as u32,
        dv: shape.dv as u32,
        gk: shape.gk() as u32,
        chunk: chunk as u32,
        chunks: tokens.div_ceil(chunk) as u32,
    }
}

fn check_inputs(gpu: &Gpu, shape: &ScanShape, b: &ScanBuffers) -> Result<[wgpu::Buffer; 3]> {
    shape.validate()?;
    let need = |what: &str, present: bool, wanted: bool| {
        if present != wanted {
            Err(Error::Graph(format!(
                "linear_scan: input {what} {} for {shape:?}",
                if wanted { "missing" } else { "not used" }
            )))
        } else {
            Ok(())
        }
    };
    need("decay", b.decay.is_some(), shape.decay != Decay::None)?;
    need(
        "consts",
        b.consts.is_some(),
        shape.bonus || matches!(shape.decay, Decay::DtA { .. }),
    )?;
    need("ab", b.ab.is_some(), shape.delta)?;
    let or_dummy = |x: Option<&wgpu::Buffer>| x.unwrap_or(&gpu.dummy).clone();
    Ok([or_dummy(b.decay), or_dummy(b.consts), or_dummy(b.ab)])
}

/// Whether `gpu` runs the recurrence on shaders/linear_scan_lanes.wgsl, for decode and
/// prefill alike: CPU adapters with subgroups of at least 8 lanes. There the chunked scan's
/// parallelism over chunks buys nothing (a CPU has few cores, and heads times value rows
/// already fill them) while its local pass repeats the recurrence for the transition rows.
pub fn lanes_on(gpu: &Gpu) -> bool {
    gpu.info.device_type == wgpu::DeviceType::Cpu && runs_lanes(gpu)
}

/// Whether prefill of `shape` on `gpu` takes the matmul form of the chunked scan: every kind
/// a model has (with the delta term or without), heads of at least [`MM_MIN_DV`] value rows,
/// and not on CPU adapters. There, where the chunked scan runs at all (llvmpipe GL, no
/// subgroups), its token-by-token chunk passes were the faster at 512 tokens: the matmul
/// form took 1.12x their time for RWKV-6 0.1B's scan, 1.04x for a Mamba-2 mixer's and about
/// 1.7x for RWKV-7 0.1B's (the delta kind: chunks of 16, so four times the carry's steps, and
/// the WY form's extra matrices; a CPU gains nothing from the matmul form's extra work for A,
/// nor from its workgroup barriers).
pub fn matmul_on(gpu: &Gpu, shape: &ScanShape) -> bool {
    shape.matmul_form() && shape.dv >= MM_MIN_DV && gpu.info.device_type != wgpu::DeviceType::Cpu
}

/// Whether `gpu` can run the lanes kernel at all: subgroups of at least 8 lanes.
pub fn runs_lanes(gpu: &Gpu) -> bool {
    gpu.caps.subgroups && gpu.caps.subgroup_min_size >= 8
}

/// Token by token over `tokens` tokens from `b.state`, which ends as the state after them,
/// on the lanes kernel where [`lanes_on`].
pub fn launch_recurrent(
    gpu: &Gpu,
    b: &ScanBuffers,
    shape: &ScanShape,
    tokens: usize,
) -> Result<Vec<Dispatch>> {
    match lanes_on(gpu) {
        true => launch_lanes(gpu, b, shape, tokens),
        false => launch_rows(gpu, b, shape, tokens),
    }
}

/// Tokens one dispatch of the lanes kernel may run (see [`recurrent_tokens_per_dispatch`]):
/// a token costs about 3 * ROWS * dk / 8 loop iterations.
fn lanes_tokens_per_dispatch(dk: usize) -> usize {
    let per_lane = dk.div_ceil(8);
    (50_000 / (3 * LANES_ROWS as usize * per_lane + per_lane + 8)).max(1)
}

/// Token by token on shaders/linear_scan_lanes.wgsl; an error where the adapter lacks
/// subgroups of at least 8 lanes.
pub fn launch_lanes(
    gpu: &Gpu,
    b: &ScanBuffers,
    shape: &ScanShape,
    tokens: usize,
) -> Result<Vec<Dispatch>> {
    check_lanes(gpu, true)?;
    token_by_token(gpu, b, shape, tokens, true)
}

/// An error where `lanes` asks for the lanes kernel and `gpu` lacks subgroups of 8 lanes.
fn check_lanes(gpu: &Gpu, lanes: bool) -> Result<()> {
    if lanes && !runs_lanes(gpu) {
        return Err(Error::Graph(
            "linear_scan: the lanes kernel needs subgroups of at least 8 lanes".into(),
        ));
    }
    Ok(())
}

/// The token-by-token kernel, its specialisation (one sequence or `paged`) and its
/// workgroups: one per 16 rows of a head (lanes) or per 64 state rows.
fn recurrent_kernel(shape: &ScanShape, lanes: bool, paged: bool) -> (Kernel, ShaderDefs, u32) {
    match lanes {
        true => (
            LANES,
            lanes_defs(shape, paged),
            (shape.heads * shape.dv.div_ceil(LANES_ROWS as usize)) as u32,
        ),
        false => (
            KERNEL,
            outputs_defs(shape, true, paged),
            ((shape.heads * shape.dv) as u32).div_ceil(64),
        ),
    }
}

/// Token by token on shaders/linear_scan.wgsl, an invocation per state row.
pub fn launch_rows(
    gpu: &Gpu,
    b: &ScanBuffers,
    shape: &ScanShape,
    tokens: usize,
) -> Result<Vec<Dispatch>> {
    token_by_token(gpu, b, shape, tokens, false)
}

/// The token-by-token kernels' dispatches ([`recurrent_kernel`]): as many tokens per
/// dispatch as the kernel's loop limit allows.
fn token_by_token(
    gpu: &Gpu,
    b: &ScanBuffers,
    shape: &ScanShape,
    tokens: usize,
    lanes: bool,
) -> Result<Vec<Dispatch>> {
    let [decay, consts, ab] = check_inputs(gpu, shape, b)?;
    let (kernel, defs, groups) = recurrent_kernel(shape, lanes, false);
    let per = match lanes {
        true => lanes_tokens_per_dispatch(shape.dk),
        false => recurrent_tokens_per_dispatch(shape.dk),
    };
    (0..tokens)
        .step_by(per)
        .map(|t0| {
            let n = per.min(tokens - t0);
            kernel.dispatch(
                gpu,
                &defs,
                &params(shape, t0, n, n),
                &[b.k, b.v, &decay, &consts, &ab, b.q, b.state, b.out],
                gpu.grid(groups),
            )
        })
        .collect()
}

/// A batched step's rows (`batch`, shaders/batch.wgsl) token by token: a workgroup layer per
/// sequence (`seqs` of them), each running its own rows from its own slot of `b.state`
/// [slots * heads * dv, dk], updated in place (at most `crate::batch::MAX_SEQ_ROWS` rows per
/// sequence, within llvmpipe's loop limit); on the lanes kernel with `lanes` (an error where
/// the adapter lacks subgroups of 8 lanes), else on shaders/linear_scan.wgsl.
pub fn launch_paged(
    gpu: &Gpu,
    b: &ScanBuffers,
    batch: &wgpu::Buffer,
    shape: &ScanShape,
    seqs: usize,
    lanes: bool,
) -> Result<Dispatch> {
    check_lanes(gpu, lanes)?;
    let [decay, consts, ab] = check_inputs(gpu, shape, b)?;
    let (kernel, defs, groups) = recurrent_kernel(shape, lanes, true);
    let [gx, gy, _] = gpu.grid(groups);
    kernel.dispatch(
        gpu,
        &defs,
        &params(shape, 0, 1, 1),
        &[b.k, b.v, &decay, &consts, &ab, b.q, b.state, b.out, batch],
        [gx, gy, seqs as u32],
    )
}

/// The chunked scan over `tokens` tokens from `b.state` (updated to the state after them),
/// with `scratch` of [`scratch_floats`] floats.
pub fn launch_chunked(
    gpu: &Gpu,
    b: &ScanBuffers,
    scratch: &wgpu::Buffer,
    shape: &ScanShape,
    tokens: usize,
    chunk: usize,
) -> Result<[Dispatch; 3]> {
    let [decay, consts, ab] = check_inputs(gpu, shape, b)?;
    let chunk = chunk.max(1);
    let p = params(shape, 0, tokens, chunk);
    let local_rows = p.chunks * (shape.heads * (shape.dv + shape.trans_rows())) as u32;
    let local = LOCAL.dispatch(
        gpu,
        &shape.defs(),
        &p,
        &[b.k, b.v, &decay, &consts, &ab, scratch],
        gpu.grid(local_rows.div_ceil(64)),
    )?;
    let carry = launch_carry(gpu, b, scratch, shape, p.chunks, 0)?;
    let rows = p.chunks * (shape.heads * shape.dv) as u32;
    let outputs = KERNEL.dispatch(
        gpu,
        &outputs_defs(shape, false, false),
        &p,
        &[b.k, b.v, &decay, &consts, &ab, b.q, scratch, b.out],
        gpu.grid(rows.div_ceil(64)),
    )?;
    Ok([local, carry, outputs])
}

/// The carry pass of both chunked forms over `chunks` chunks (`wy`: see [`carry_defs`]).
fn launch_carry(
    gpu: &Gpu,
    b: &ScanBuffers,
    scratch: &wgpu::Buffer,
    shape: &ScanShape,
    chunks: u32,
    wy: usize,
) -> Result<Dispatch> {
    CARRY.dispatch(
        gpu,
        &carry_defs(shape.dk, shape.delta, wy),
        &CarryParams {
            heads: shape.heads as u32,
            dv: shape.dv as u32,
            chunks,
            _p: 0,
        },
        &[b.state, scratch],
        gpu.grid((shape.heads * shape.dv) as u32),
    )
}

/// The chunked scan with its chunk-local passes in matmul form (chunks of 1 to
/// [`ScanShape::matmul_chunk`] tokens), as [`launch_chunked`] otherwise: the same carry, and
/// scratch of [`matmul_scratch_floats`] floats (the delta kind's outputs pass reads more).
pub fn launch_matmul(
    gpu: &Gpu,
    b: &ScanBuffers,
    scratch: &wgpu::Buffer,
    shape: &ScanShape,
    tokens: usize,
    chunk: usize,
) -> Result<[Dispatch; 3]> {
    let [decay, consts, ab] = check_inputs(gpu, shape, b)?;
    if !shape.matmul_form() {
        return Err(Error::Graph(
            "linear_scan: the matmul form has no delta term with a bonus".into(),
        ));
    }
    let most = shape.matmul_chunk();
    if chunk == 0 || chunk > most {
        return Err(Error::Graph(format!(
            "linear_scan: chunks of {chunk} tokens in the matmul form of {shape:?} (1 to {most})"
        )));
    }
    let p = params(shape, 0, tokens, chunk);
    // The delta kind's outputs pass takes tiles of MM_DELTA_ROWS value rows and its carry the
    // WY form of chunks of MM_DELTA_CHUNK; the other kinds' MM_ROWS and dense transitions (0).
    let (out_kernel, rows, wy_chunk) = match shape.delta {
        true => (MM_DELTA, MM_DELTA_ROWS, MM_DELTA_CHUNK),
        false => (MM, MM_ROWS, 0),
    };
    let tiles = p.chunks * (shape.heads * shape.dv.div_ceil(rows)) as u32;
    let local = match shape.delta {
        true => MM_DELTA_LOCAL.dispatch(
            gpu,
            &shape.defs(),
            &p,
            &[b.k, b.v, &decay, &consts, &ab, scratch, b.q],
            gpu.grid(p.chunks * shape.heads as u32),
        )?,
        false => MM_LOCAL.dispatch(
            gpu,
            &shape.defs(),
            &p,
            &[b.k, b.v, &decay, &consts, &ab, scratch],
            gpu.grid(tiles * shape.dk.div_ceil(MM_LOCAL_KEYS) as u32),
        )?,
    };
    let carry = launch_carry(gpu, b, scratch, shape, p.chunks, wy_chunk)?;
    let outputs = out_kernel.dispatch(
        gpu,
        &shape.defs(),
        &p,
        &[b.k, b.v, &decay, &consts, &ab, b.q, scratch, b.out],
        gpu.grid(tiles),
    )?;
    Ok([local, carry, outputs])
}

/// The gated linear recurrence over T tokens from `state` [heads * dv, dk] (updated):
/// q, k [T, qk_heads * dk], v [T, heads * dv], decay (g or dt), consts (A or u), ab
/// [T, heads * 2 * dk] as `shape` needs; out [T, heads * dv]. In a batched graph (`paged`:
/// its number of sequences) each sequence's rows run token by token from its own slot of
/// `state` [slots * heads * dv, dk].
#[derive(Debug)]
pub struct LinearScan {
    pub q: TensorId,
    pub k: TensorId,
    pub v: TensorId,
    pub decay: Option<TensorId>,
    pub consts: Option<TensorId>,
    pub ab: Option<TensorId>,
    pub state: TensorId,
    pub out: TensorId,
    pub shape: ScanShape,
    pub paged: Option<usize>,
}

impl Graph {
    /// The gated linear recurrence (see [`LinearScan`]); every input's shape is checked
    /// against `shape`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_scan(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        decay: Option<TensorId>,
        consts: Option<TensorId>,
        ab: Option<TensorId>,
        state: TensorId,
        shape: ScanShape,
    ) -> Result<TensorId> {
        shape.validate()?;
        let t = self.shape(q)[0];
        let ScanShape {
            heads,
            qk_heads,
            dk,
            dv,
            ..
        } = shape;
        let gk = shape.gk();
        let expect = |g: &Graph, id: Option<TensorId>, what: &str, want: Option<Vec<usize>>| match (
            id, want,
        ) {
            (None, None) => Ok(()),
            (Some(id), Some(w)) if g.numel(id) == w.iter().product::<usize>() => Ok(()),
            (Some(id), Some(w)) => Err(mismatch(&format!("linear scan {what}"), &w, g.shape(id))),
            (None, Some(_)) => Err(Error::Graph(format!("linear scan: {what} missing"))),
            (Some(_), None) => Err(Error::Graph(format!("linear scan: {what} not used"))),
        };
        expect(self, Some(q), "q", Some(vec![t, qk_heads * dk]))?;
        expect(self, Some(k), "k", Some(vec![t, qk_heads * dk]))?;
        expect(self, Some(v), "v", Some(vec![t, heads * dv]))?;
        let state_shape = self.recurrent_shape(&[heads * dv, dk]);
        expect(self, Some(state), "state", Some(state_shape))?;
        let decay_shape = match shape.decay {
            Decay::None => None,
            Decay::Gate { .. } => Some(vec![t, heads * gk]),
            Decay::DtA { .. } => Some(vec![t, heads]),
        };
        expect(self, decay, "decay", decay_shape)?;
        let consts_shape = match (shape.decay, shape.bonus) {
            (Decay::DtA { .. }, _) => Some(vec![heads * gk]),
            (_, true) => Some(vec![heads * dk]),
            _ => None,
        };
        expect(self, consts, "constants", consts_shape)?;
        expect(
            self,
            ab,
            "a/b",
            shape.delta.then(|| vec![t, heads * 2 * dk]),
        )?;
        let out = self.activation(vec![t, heads * dv]);
        self.push(LinearScan {
            q,
            k,
            v,
            decay,
            consts,
            ab,
            state,
            out,
            shape,
            paged: self.picks(),
        });
        Ok(out)
    }
}

impl Op for LinearScan {
    fn name(&self) -> &'static str {
        "linear_scan"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.q, self.k, self.v, self.state];
        r.extend(self.decay);
        r.extend(self.consts);
        r.extend(self.ab);
        (r, vec![self.out, self.state])
    }

    /// A batched step's sequences token by token ([`launch_paged`]). Otherwise token by token
    /// up to [`RECURRENT_TOKENS`] (at any length where [`lanes_on`]), else the chunked scan — in matmul form where [`matmul_on`] — with a scratch shared by
    /// every layer.
    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let n = cx.shape(self.q)[0];
        let matmul = matmul_on(cx.gpu(), &self.shape);
        let chunk = if matmul {
            self.shape.matmul_chunk()
        } else {
            CHUNK
        };
        let scratch = match n > RECURRENT_TOKENS && !lanes_on(cx.gpu()) && self.paged.is_none() {
            true => {
                let floats = match matmul {
                    true => matmul_scratch_floats(&self.shape, n, chunk),
                    false => scratch_floats(&self.shape, n, chunk),
                };
                Some(cx.scratch("linear scan scratch", floats)?)
            }
            false => None,
        };
        let b = ScanBuffers {
            q: cx.buf(self.q)?,
            k: cx.buf(self.k)?,
            v: cx.buf(self.v)?,
            decay: cx.opt_buf(self.decay)?,
            consts: cx.opt_buf(self.consts)?,
            ab: cx.opt_buf(self.ab)?,
            state: cx.buf(self.state)?,
            out: cx.buf(self.out)?,
        };
        let gpu = cx.gpu();
        if let Some(seqs) = self.paged {
            let d = launch_paged(gpu, &b, cx.batch()?, &self.shape, seqs, lanes_on(gpu))?;
            cx.push([d]);
            return Ok(());
        }
        match &scratch {
            Some(s) if matmul => cx.push(launch_matmul(gpu, &b, s, &self.shape, n, chunk)?),
            Some(s) => cx.push(launch_chunked(gpu, &b, s, &self.shape, n, chunk)?),
            None => cx.push(launch_recurrent(gpu, &b, &self.shape, n)?),
        }
        Ok(())
    }
}

/// Host inputs of [`reference`], laid out as the GPU buffers.
pub struct ScanInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub decay: &'a [f32],
    pub consts: &'a [f32],
    pub ab: &'a [f32],
}

/// The recurrence in f64, token by token: returns the outputs [T, heads, dv] and leaves the
/// state after the last token in `state`.
pub fn reference(x: &ScanInputs, shape: &ScanShape, tokens: usize, state: &mut [f64]) -> Vec<f64> {
    let ScanShape {
        heads,
        qk_heads,
        dk,
        dv,
        ..
    } = *shape;
    let gk = shape.gk();
    let mut out = vec![0.0; tokens * heads * dv];
    for t in 0..tokens {
        for h in 0..heads {
            let qk = (t * qk_heads + h / (heads / qk_heads)) * dk;
            let q = &x.q[qk..qk + dk];
            let k = &x.k[qk..qk + dk];
            let log_w = |j: usize| -> f64 {
                let jj = if gk > 1 { j } else { 0 };
                match shape.decay {
                    Decay::None => 0.0,
                    Decay::Gate { .. } => x.decay[(t * heads + h) * gk + jj] as f64,
                    Decay::DtA { .. } => {
                        x.decay[t * heads + h] as f64 * x.consts[h * gk + jj] as f64
                    }
                }
            };
            let w: Vec<f64> = (0..dk).map(|j| log_w(j).exp()).collect();
            let ab = (t * heads + h) * 2 * dk;
            for i in 0..dv {
                let mut vi = x.v[(t * heads + h) * dv + i] as f64;
                if let Decay::DtA { .. } = shape.decay {
                    vi *= x.decay[t * heads + h] as f64;
                }
                let s = &mut state[(h * dv + i) * dk..(h * dv + i + 1) * dk];
                let dot = |s: &[f64]| -> f64 { (0..dk).map(|j| q[j] as f64 * s[j]).sum() };
                let mut o = 0.0;
                if shape.bonus {
                    let u = &x.consts[h * dk..(h + 1) * dk];
                    o = dot(s)
                        + vi * (0..dk)
                            .map(|j| q[j] as f64 * u[j] as f64 * k[j] as f64)
                            .sum::<f64>();
                }
                let sa: f64 = if shape.delta {
                    (0..dk).map(|j| s[j] * x.ab[ab + j] as f64).sum()
                } else {
                    0.0
                };
                for j in 0..dk {
                    let b = if shape.delta {
                        x.ab[ab + dk + j] as f64
                    } else {
                        0.0
                    };
                    s[j] = s[j] * w[j] + sa * b + vi * k[j] as f64;
                }
                if !shape.bonus {
                    o = dot(s);
                }
                out[(t * heads + h) * dv + i] = o;
            }
        }
    }
    out
}

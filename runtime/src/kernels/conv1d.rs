//! Depthwise causal convolution over time with a rolling state of the last `kernel - 1`
//! inputs (Mamba's short convolution before the scan), optionally followed by silu.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("conv1d", variants);

fn defs(kernel: usize, silu: bool, bias: bool, paged: bool) -> ShaderDefs {
    ShaderDefs::new()
        .u32("K", kernel as u32)
        .bool("SILU", silu)
        .bool("BIAS", bias)
        .bool("PAGED", paged)
}

/// Kernel sizes 2, 4 (Mamba's), 7 and 16 (the largest), with and without silu and bias, for
/// one sequence and for a batched step.
pub fn variants() -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    for k in [2, 4, 7, 16] {
        for silu in [false, true] {
            for bias in [false, true] {
                for paged in [false, true] {
                    out.push(defs(k, silu, bias, paged));
                }
            }
        }
    }
    out
}

/// Depthwise causal conv over time: `x` [T, C] with `w` [C, kernel] (+ `bias` [C]) into
/// `out`, continuing from and updating `state` [kernel - 1, C]; silu after if `silu`. In a
/// batched graph (`paged`: its number of sequences) each sequence's rows run from its own
/// slot of `state` [slots * (kernel - 1), C].
#[derive(Debug)]
pub struct Conv1d {
    pub x: TensorId,
    pub w: TensorId,
    pub bias: Option<TensorId>,
    pub state: TensorId,
    pub out: TensorId,
    pub kernel: usize,
    pub silu: bool,
    pub paged: Option<usize>,
}

impl Graph {
    /// Depthwise causal conv1d over time with a rolling state (see [`Conv1d`]).
    pub fn conv1d(
        &mut self,
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        state: TensorId,
        kernel: usize,
        silu: bool,
    ) -> Result<TensorId> {
        validate(kernel)?;
        let xs = self.shape(x).to_vec();
        let c = xs[1];
        if self.numel(w) != c * kernel {
            return Err(mismatch("conv1d weight", &[c, kernel], self.shape(w)));
        }
        if let Some(b) = bias {
            self.expect_vector(b, c, "conv1d bias")?;
        }
        let want = self.recurrent_shape(&[kernel - 1, c]);
        if self.shape(state) != want {
            return Err(mismatch("conv1d state", &want, self.shape(state)));
        }
        let out = self.activation(xs);
        self.push(Conv1d {
            x,
            w,
            bias,
            state,
            out,
            kernel,
            silu,
            paged: self.picks(),
        });
        Ok(out)
    }
}

impl Op for Conv1d {
    fn name(&self) -> &'static str {
        "conv1d"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.x, self.w, self.state];
        r.extend(self.bias);
        (r, vec![self.out, self.state])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.x);
        let io = Buffers {
            x: cx.buf(self.x)?,
            w: cx.buf(self.w)?,
            bias: cx.opt_buf(self.bias)?,
            state: cx.buf(self.state)?,
            out: cx.buf(self.out)?,
        };
        let (gpu, channels) = (cx.gpu(), s[1]);
        match self.paged {
            Some(seqs) => {
                let batch = cx.batch()?;
                let d = launch_paged(gpu, &io, batch, seqs, channels, self.kernel, self.silu)?;
                cx.push([d]);
            }
            None => cx.push(launch(gpu, &io, s[0], channels, self.kernel, self.silu)?),
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    channels: u32,
    t0: u32,
    _p: u32,
}

/// Tokens per dispatch: llvmpipe ends an invocation after 65535 loop iterations.
fn tokens_per_dispatch(kernel: usize) -> usize {
    (50_000 / (2 * kernel + 4)).max(1)
}

pub fn validate(kernel: usize) -> Result<()> {
    if !(2..=16).contains(&kernel) {
        return Err(Error::Graph(format!(
            "conv1d: kernel size {kernel} is outside 2..=16"
        )));
    }
    Ok(())
}

/// The buffers of a convolution: `x` [tokens, channels], weights `w` [channels, kernel],
/// optional `bias` [channels], `state` (per sequence [kernel - 1, channels]) and `out`.
pub struct Buffers<'a> {
    pub x: &'a wgpu::Buffer,
    pub w: &'a wgpu::Buffer,
    pub bias: Option<&'a wgpu::Buffer>,
    pub state: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

impl Buffers<'_> {
    fn bindings<'b>(&'b self, gpu: &'b Gpu) -> [&'b wgpu::Buffer; 5] {
        let bias = self.bias.unwrap_or(&gpu.dummy);
        [self.x, self.w, bias, self.state, self.out]
    }
}

/// `io.x`'s `tokens` rows of one sequence through the convolution into `io.out`, reading and
/// updating `io.state`.
pub fn launch(
    gpu: &Gpu,
    io: &Buffers,
    tokens: usize,
    channels: usize,
    kernel: usize,
    silu: bool,
) -> Result<Vec<Dispatch>> {
    validate(kernel)?;
    let defs = defs(kernel, silu, io.bias.is_some(), false);
    let per = tokens_per_dispatch(kernel);
    (0..tokens)
        .step_by(per)
        .map(|t0| {
            let params = Params {
                tokens: per.min(tokens - t0) as u32,
                channels: channels as u32,
                t0: t0 as u32,
                _p: 0,
            };
            KERNEL.dispatch(
                gpu,
                &defs,
                &params,
                &io.bindings(gpu),
                gpu.grid((channels as u32).div_ceil(64)),
            )
        })
        .collect()
}

/// A batched step's rows (`batch`, shaders/batch.wgsl) through the convolution: a workgroup
/// layer per sequence (`seqs` of them), each running its own rows from its own slot of
/// `io.state` [slots * (kernel - 1), channels] (at most `crate::batch::MAX_SEQ_ROWS`
/// rows per sequence, within llvmpipe's loop limit).
pub fn launch_paged(
    gpu: &Gpu,
    io: &Buffers,
    batch: &wgpu::Buffer,
    seqs: usize,
    channels: usize,
    kernel: usize,
    silu: bool,
) -> Result<Dispatch> {
    validate(kernel)?;
    let defs = defs(kernel, silu, io.bias.is_some(), true);
    let params = Params {
        tokens: 0,
        channels: channels as u32,
        t0: 0,
        _p: 0,
    };
    let [gx, gy, _] = gpu.grid((channels as u32).div_ceil(64));
    let [x, w, bias, state, out] = io.bindings(gpu);
    let buffers = [x, w, bias, state, out, batch];
    KERNEL.dispatch(gpu, &defs, &params, &buffers, [gx, gy, seqs as u32])
}

/// The same on the CPU; `state` is updated as on the GPU.
pub fn reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    state: &mut [f32],
    channels: usize,
    kernel: usize,
    silu: bool,
) -> Vec<f32> {
    let tokens = x.len() / channels;
    let mut out = vec![0.0; x.len()];
    for c in 0..channels {
        let mut hist: Vec<f32> = (0..kernel - 1).map(|j| state[j * channels + c]).collect();
        for t in 0..tokens {
            hist.push(x[t * channels + c]);
            let mut y = bias.map_or(0.0, |b| b[c]);
            for (j, h) in hist.iter().enumerate() {
                y += w[c * kernel + j] * h;
            }
            if silu {
                y /= 1.0 + (-y).exp();
            }
            out[t * channels + c] = y;
            hist.remove(0);
        }
        for (j, h) in hist.iter().enumerate() {
            state[j * channels + c] = *h;
        }
    }
    out
}

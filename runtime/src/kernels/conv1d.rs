//! Depthwise causal convolution over time with a rolling state of the last `kernel - 1`
//! inputs (Mamba's short convolution before the scan), optionally followed by silu.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;

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

/// `x` [tokens, channels] through weights `w` [channels, kernel] and optional `bias`
/// [channels] into `out`, reading and updating `state` [kernel - 1, channels].
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    state: &wgpu::Buffer,
    out: &wgpu::Buffer,
    tokens: usize,
    channels: usize,
    kernel: usize,
    silu: bool,
) -> Result<Vec<Dispatch>> {
    validate(kernel)?;
    let defs = ShaderDefs::new()
        .u32("K", kernel as u32)
        .bool("SILU", silu)
        .bool("BIAS", bias.is_some());
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
            kernel!("conv1d").dispatch(
                gpu,
                &defs,
                &params,
                &[x, w, bias.unwrap_or(&gpu.dummy), state, out],
                gpu.grid((channels as u32).div_ceil(64)),
            )
        })
        .collect()
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

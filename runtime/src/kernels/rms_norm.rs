//! RMSNorm `x / sqrt(mean(x²) + eps) * w` and LayerNorm `(x - mean) / sqrt(var + eps) * w + b`,
//! one workgroup per row; grouped (Mamba-2's gated norm, RWKV's GroupNorm): each row of width
//! `groups * dim` normalised per group of `dim`, the weights spanning the whole row.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    groups: u32,
}

pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<Dispatch> {
    launch_grouped(gpu, x, w, out, rows, dim, eps, 1)
}

/// What kind of normalisation, and its bias.
#[derive(Debug, Clone, Copy)]
pub struct NormKind<'a> {
    /// LayerNorm (subtract the mean) rather than RMSNorm.
    pub centered: bool,
    pub bias: Option<&'a wgpu::Buffer>,
}

/// `rows` rows of `groups * dim` values, each group of `dim` normalised on its own; the
/// weight spans the whole row.
#[allow(clippy::too_many_arguments)]
pub fn launch_grouped(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
    groups: usize,
) -> Result<Dispatch> {
    let rms = NormKind {
        centered: false,
        bias: None,
    };
    launch_norm(gpu, x, w, out, rows, dim, eps, groups, rms)
}

/// RMSNorm or LayerNorm (`kind`) of `rows` rows of `groups` groups of `dim` values.
#[allow(clippy::too_many_arguments)]
pub fn launch_norm(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
    groups: usize,
    kind: NormKind,
) -> Result<Dispatch> {
    let params = Params {
        rows: (rows * groups) as u32,
        dim: dim as u32,
        eps,
        groups: groups as u32,
    };
    let defs = ShaderDefs::new()
        .bool("CENTERED", kind.centered)
        .bool("BIAS", kind.bias.is_some());
    kernel!("rms_norm").dispatch(
        gpu,
        &defs,
        &params,
        &[x, w, out, kind.bias.unwrap_or(&gpu.dummy)],
        gpu.grid((rows * groups) as u32),
    )
}

pub fn reference(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    reference_grouped(x, w, dim, eps, 1)
}

pub fn reference_grouped(x: &[f32], w: &[f32], dim: usize, eps: f32, groups: usize) -> Vec<f32> {
    reference_norm(x, w, None, dim, eps, groups, false)
}

/// RMSNorm or (`centered`) LayerNorm on the CPU, in f64.
pub fn reference_norm(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dim: usize,
    eps: f32,
    groups: usize,
    centered: bool,
) -> Vec<f32> {
    x.chunks(dim)
        .enumerate()
        .flat_map(|(r, row)| {
            let mean = match centered {
                true => row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64,
                false => 0.0,
            };
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            let at = (r % groups) * dim;
            (0..dim).map(move |i| {
                let b = bias.map_or(0.0, |b| b[at + i] as f64);
                ((row[i] as f64 - mean) * inv * w[at + i] as f64 + b) as f32
            })
        })
        .collect()
}

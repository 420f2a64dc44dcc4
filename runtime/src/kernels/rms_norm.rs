//! RMSNorm: `x / sqrt(mean(x²) + eps) * w`, one workgroup per row; grouped (Mamba-2's
//! gated norm): each row of width `groups * dim` normalised per group of `dim`.

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
    let params = Params {
        rows: (rows * groups) as u32,
        dim: dim as u32,
        eps,
        groups: groups as u32,
    };
    kernel!("rms_norm").dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[x, w, out],
        gpu.grid((rows * groups) as u32),
    )
}

pub fn reference(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    reference_grouped(x, w, dim, eps, 1)
}

pub fn reference_grouped(x: &[f32], w: &[f32], dim: usize, eps: f32, groups: usize) -> Vec<f32> {
    x.chunks(dim)
        .enumerate()
        .flat_map(|(r, row)| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            let w = &w[(r % groups) * dim..];
            row.iter().zip(w).map(move |(v, g)| v * inv * g)
        })
        .collect()
}

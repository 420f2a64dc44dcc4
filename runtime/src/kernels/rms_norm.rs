//! RMSNorm: `x / sqrt(mean(x²) + eps) * w`, one workgroup per row.

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
    _p: u32,
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
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        _p: 0,
    };
    kernel!("rms_norm").dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[x, w, out],
        gpu.grid(rows as u32),
    )
}

pub fn reference(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * inv * g)
        })
        .collect()
}

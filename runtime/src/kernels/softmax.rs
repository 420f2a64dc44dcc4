//! Row-wise softmax (used by routers and available to any graph).

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
    _p: [u32; 2],
}

pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
) -> Result<Dispatch> {
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        _p: [0; 2],
    };
    kernel!("softmax").dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[x, out],
        gpu.grid(rows as u32),
    )
}

pub fn reference(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - m).exp()).sum();
            row.iter().map(move |v| (v - m).exp() / sum)
        })
        .collect()
}

//! Matrix-vector product for decode (one token): `y = W x + b`, W [N, K] in f32 or packed f16.

use bytemuck::{Pod, Zeroable};

use super::{kernel, weight_defs, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;
use crate::tensor::GpuWeight;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    k: u32,
    n: u32,
    col_offset: u32,
    _p: u32,
}

/// One dispatch per weight chunk, each writing its rows of `y` [N].
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let defs = weight_defs(ShaderDefs::new(), w.dtype).bool("HAS_BIAS", bias.is_some());
    let bias = bias.unwrap_or(&gpu.dummy);
    w.chunks
        .iter()
        .map(|c| {
            let params = Params {
                k: w.cols as u32,
                n: c.rows as u32,
                col_offset: c.row_start as u32,
                _p: 0,
            };
            kernel!("matvec").dispatch(
                gpu,
                &defs,
                &params,
                &[x, &c.buffer, bias, y],
                gpu.grid((c.rows as u32).div_ceil(8)),
            )
        })
        .collect()
}

/// `y[n] = sum_k w[n, k] x[k] + b[n]`.
pub fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|r| {
            let dot: f32 = w[r * k..(r + 1) * k]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum();
            dot + bias.map_or(0.0, |b| b[r])
        })
        .collect()
}

//! Embedding gather from an f32, packed-f16 or ggml-block table (dequantized inside the
//! kernel, shaders/quant.wgsl), split by rows when the table is larger than one storage binding.

use bytemuck::{Pod, Zeroable};

use super::{kernel, weight_defs, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;
use crate::tensor::{DType, GpuWeight};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_tokens: u32,
    dim: u32,
    row_start: u32,
    rows: u32,
}

/// One dispatch per chunk of the table; together they write every row of `out` [n_tokens, dim].
pub fn launch(
    gpu: &Gpu,
    ids: &wgpu::Buffer,
    table: &GpuWeight,
    out: &wgpu::Buffer,
    n_tokens: usize,
) -> Result<Vec<Dispatch>> {
    let defs = weight_defs(ShaderDefs::new(), table, "embedding")?;
    // One invocation per value, or per 32-value group of a quantized table.
    let per_invocation = if matches!(table.dtype, DType::Quant(_)) {
        32
    } else {
        1
    };
    let n = (n_tokens * table.cols / per_invocation) as u32;
    table
        .chunks
        .iter()
        .map(|c| {
            let params = Params {
                n_tokens: n_tokens as u32,
                dim: table.cols as u32,
                row_start: c.row_start as u32,
                rows: c.rows as u32,
            };
            kernel!("embedding").dispatch(
                gpu,
                &defs,
                &params,
                &[ids, &c.buffer, out],
                gpu.grid(n.div_ceil(256)),
            )
        })
        .collect()
}

pub fn reference(ids: &[u32], table: &[f32], dim: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| {
            table[id as usize * dim..(id as usize + 1) * dim]
                .iter()
                .copied()
        })
        .collect()
}

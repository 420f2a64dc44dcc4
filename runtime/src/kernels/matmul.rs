//! Register-blocked tiled matmul for prefill: `Y = X Wᵀ + b`, X [M, K], W [N, K] in f32,
//! packed f16 or a ggml block format (dequantized inside the kernel, shaders/quant.wgsl),
//! 64×64 tiles per workgroup of 64 invocations, 8×8 outputs per invocation.

use bytemuck::{Pod, Zeroable};

use super::{dtype_defs, kernel, weight_defs, weight_dtypes, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;
use crate::tensor::GpuWeight;

pub const KERNEL: Kernel = kernel!("matmul", variants);

/// The specialisation after the weight's constants: bias, or `grouped` (Some(gather): a
/// mixture of experts' rows, gathered at their tokens or not; never with a bias).
fn defs(weight: ShaderDefs, bias: bool, grouped: Option<bool>) -> ShaderDefs {
    weight
        .bool("HAS_BIAS", bias)
        .bool("GROUPED", grouped.is_some())
        .bool("GATHER", grouped == Some(true))
}

/// Every weight dtype: plain with and without bias, and grouped with and without gathering.
pub fn variants() -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    for dtype in weight_dtypes() {
        let Some(weight) = dtype_defs(ShaderDefs::new(), dtype) else {
            continue;
        };
        for (bias, grouped) in [
            (false, None),
            (true, None),
            (false, Some(false)),
            (false, Some(true)),
        ] {
            out.push(defs(weight.clone(), bias, grouped));
        }
    }
    out
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    ldy: u32,
    col_offset: u32,
    _p: [u32; 3],
}

/// One dispatch per weight chunk, each writing its columns of `y` [M, N].
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    m: usize,
) -> Result<Vec<Dispatch>> {
    let defs = defs(
        weight_defs(ShaderDefs::new(), w, "matmul")?,
        bias.is_some(),
        None,
    );
    let bias = bias.unwrap_or(&gpu.dummy);
    let groups_m = (m as u32).div_ceil(64);
    if groups_m > gpu.caps.max_workgroups_per_dim {
        return Err(Error::LimitExceeded {
            what: "matmul rows".into(),
            needed: m as u64,
            allowed: gpu.caps.max_workgroups_per_dim as u64 * 64,
        });
    }
    w.chunks
        .iter()
        .map(|c| {
            let params = Params {
                m: m as u32,
                n: c.rows as u32,
                k: w.cols as u32,
                ldy: w.rows as u32,
                col_offset: c.row_start as u32,
                _p: [0; 3],
            };
            let groups_n = (c.rows as u32).div_ceil(64);
            KERNEL.dispatch(
                gpu,
                &defs,
                &params,
                &[x, &c.buffer, bias, y, &gpu.dummy],
                [groups_n, groups_m, 1],
            )
        })
        .collect()
}

/// A mixture of experts' matmul over the rows that `perm` (kernels::moe::permute) sorted by
/// expert: y [R, N] row r = x row (its token's with `gather`, else row r) times its expert's
/// [N, K] matrix out of `w`, stacked experts. Each workgroup runs one 64-row tile of one
/// expert; `max_tiles` bounds the tiles perm may list. One dispatch per weight chunk.
#[allow(clippy::too_many_arguments)]
pub fn launch_grouped(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    perm: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: usize,
    tiles_offset: usize,
    max_tiles: usize,
    gather: bool,
) -> Result<Vec<Dispatch>> {
    let defs = defs(
        weight_defs(ShaderDefs::new(), w, "matmul")?,
        false,
        Some(gather),
    );
    let n = w.rows / w.experts;
    if max_tiles as u32 > gpu.caps.max_workgroups_per_dim {
        return Err(Error::LimitExceeded {
            what: "grouped matmul tiles".into(),
            needed: max_tiles as u64,
            allowed: gpu.caps.max_workgroups_per_dim as u64,
        });
    }
    w.chunks
        .iter()
        .map(|c| {
            let params = Params {
                m: rows as u32,
                n: n as u32,
                k: w.cols as u32,
                ldy: n as u32,
                col_offset: 0,
                _p: [
                    (c.row_start / n) as u32,
                    (c.rows / n) as u32,
                    tiles_offset as u32,
                ],
            };
            KERNEL.dispatch(
                gpu,
                &defs,
                &params,
                &[x, &c.buffer, &gpu.dummy, y, perm],
                [(n as u32).div_ceil(64), max_tiles as u32, 1],
            )
        })
        .collect()
}

/// `y[i, n] = sum_k x[i, k] w[n, k] + b[n]`.
pub fn reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
            y[i * n + j] = dot + bias.map_or(0.0, |b| b[j]);
        }
    }
    y
}

//! Matrix-vector product for decode (one token): `y = W x + b`, W [N, K] in f32, packed f16
//! or a ggml block format (dequantized inside the kernel, shaders/quant.wgsl).

use bytemuck::{Pod, Zeroable};

use super::{dtype_defs, kernel, weight_defs, weight_dtypes, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;
use crate::tensor::{DType, GpuWeight};

pub const KERNEL: Kernel = kernel!("matvec", variants);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    k: u32,
    n: u32,
    col_offset: u32,
    e0: u32,
    ne: u32,
    _p: [u32; 3],
}

/// How shaders/matvec.wgsl spreads rows over the 64 invocations of a workgroup: `lanes`
/// invocations share a row (each reading every `lanes`-th word, vec4 or 32-value group of it),
/// and each handles `rows_per_lane` rows, reusing every value of x it loads for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub lanes: u32,
    pub rows_per_lane: u32,
}

impl Layout {
    /// For CPU drivers (lavapipe, llvmpipe), which pay per value loaded: 8 lanes per row and 8
    /// rows per lane load x once per 8 rows (64 rows per workgroup).
    pub const CPU: Layout = Layout {
        lanes: 8,
        rows_per_lane: 8,
    };
    /// For GPUs, which want many workgroups and wide, coalesced reads: 32 lanes per row and 2
    /// rows per lane (4 rows per workgroup).
    pub const GPU: Layout = Layout {
        lanes: 32,
        rows_per_lane: 2,
    };

    /// The layout for `gpu`'s kind of device.
    pub fn for_device(gpu: &Gpu) -> Layout {
        if gpu.info.device_type == wgpu::DeviceType::Cpu {
            Layout::CPU
        } else {
            Layout::GPU
        }
    }

    /// Rows per workgroup.
    pub fn rows(self) -> u32 {
        64 / self.lanes * self.rows_per_lane
    }
}

/// Whether rows of `w` can be read as whole vec4s (the kernel's VEC4 paths; every row then
/// starts on a 16-byte boundary and the buffers are whole vec4s).
fn vec4_rows(w: &GpuWeight) -> bool {
    match w.dtype {
        DType::F32 => w.cols.is_multiple_of(4),
        DType::F16 => w.cols.is_multiple_of(8),
        DType::Quant(_) => true,
        DType::U32 => false,
    }
}

/// One dispatch per weight chunk, each writing its rows of `y` [N], in the layout for `gpu`.
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    launch_with(gpu, x, w, bias, y, Layout::for_device(gpu))
}

/// [`launch`] with a given layout: `lanes` a power of two up to 64, `rows_per_lane` from 1 to
/// `lanes` (at most 64 rows per workgroup).
pub fn launch_with(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    layout: Layout,
) -> Result<Vec<Dispatch>> {
    launch_inner(gpu, x, w, bias, y, layout, None)
}

/// A mixture of experts' matvecs at decode: for each of the `rows` rows that `perm`
/// (kernels::moe::permute) sorted by expert, y [rows, N] row r = its expert's [N, K] matrix
/// (out of `w`, stacked experts) times x row r, or its token's row with `gather`. Reads only
/// the listed experts' weights. One dispatch per weight chunk.
pub fn launch_grouped(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    perm: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: usize,
    gather: bool,
) -> Result<Vec<Dispatch>> {
    let layout = Layout::for_device(gpu);
    launch_inner(gpu, x, w, None, y, layout, Some((perm, rows, gather)))
}

fn launch_inner(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    layout: Layout,
    grouped: Option<(&wgpu::Buffer, usize, bool)>,
) -> Result<Vec<Dispatch>> {
    let Layout {
        lanes,
        rows_per_lane,
    } = layout;
    if !lanes.is_power_of_two() || lanes > 64 || rows_per_lane == 0 || rows_per_lane > lanes {
        return Err(Error::Graph(format!(
            "matvec: unsupported layout {layout:?}"
        )));
    }
    let vec4 = vec4_rows(w);
    let grouping = grouped.map(|g| g.2);
    let defs = defs(
        weight_defs(ShaderDefs::new(), w, "matvec")?,
        bias.is_some(),
        vec4,
        layout,
        grouping,
    );
    let bias = bias.unwrap_or(&gpu.dummy);
    // x4 and w4 alias x and the chunk when the kernel reads them (a 16-byte dummy otherwise).
    let x4: &wgpu::Buffer = if vec4 { x } else { &gpu.dummy };
    let plain = matches!(w.dtype, DType::F32 | DType::F16);
    let n = w.rows / w.experts;
    let (perm, rows): (&wgpu::Buffer, usize) = match grouped {
        Some((perm, rows, _)) => (perm, rows),
        None => (&gpu.dummy, 1),
    };
    if rows as u32 > gpu.caps.max_workgroups_per_dim {
        return Err(Error::LimitExceeded {
            what: "grouped matvec rows".into(),
            needed: rows as u64,
            allowed: gpu.caps.max_workgroups_per_dim as u64,
        });
    }
    w.chunks
        .iter()
        .map(|c| {
            // Grouped: each chunk holds whole experts and every row runs one expert's matrix.
            let params = match grouped {
                Some(_) => Params {
                    k: w.cols as u32,
                    n: n as u32,
                    col_offset: 0,
                    e0: (c.row_start / n) as u32,
                    ne: (c.rows / n) as u32,
                    _p: [0; 3],
                },
                None => Params {
                    k: w.cols as u32,
                    n: c.rows as u32,
                    col_offset: c.row_start as u32,
                    e0: 0,
                    ne: 0,
                    _p: [0; 3],
                },
            };
            let w4 = if vec4 && plain { &c.buffer } else { &gpu.dummy };
            let mut grid = gpu.grid((params.n).div_ceil(layout.rows()));
            grid[2] = rows as u32;
            KERNEL.dispatch(
                gpu,
                &defs,
                &params,
                &[x, &c.buffer, bias, y, x4, w4, perm],
                grid,
            )
        })
        .collect()
}

/// The specialisation after the weight's constants: bias, vec4 reads, layout, and
/// `grouped` (Some(gather) for a mixture of experts' rows).
fn defs(
    weight: ShaderDefs,
    bias: bool,
    vec4: bool,
    layout: Layout,
    grouped: Option<bool>,
) -> ShaderDefs {
    weight
        .bool("HAS_BIAS", bias)
        .bool("VEC4", vec4)
        .u32("LANES", layout.lanes)
        .u32("ROWS_PER_LANE", layout.rows_per_lane)
        .bool("GROUPED", grouped.is_some())
        .bool("GATHER", grouped == Some(true))
}

/// Every weight dtype, with and without bias and vec4 reads, in the CPU and the GPU layout,
/// plain and grouped (gathering token rows or not).
pub fn variants() -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    for dtype in weight_dtypes() {
        let Some(weight) = dtype_defs(ShaderDefs::new(), dtype) else {
            continue;
        };
        for bias in [false, true] {
            for vec4 in [false, true] {
                for layout in [Layout::CPU, Layout::GPU] {
                    for grouped in [None, Some(false), Some(true)] {
                        out.push(defs(weight.clone(), bias, vec4, layout, grouped));
                    }
                }
            }
        }
    }
    out
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

//! Matmul for prefill: `Y = X Wᵀ + b`, X [M, K], W [N, K] in f32, packed f16 or bf16, or a
//! ggml block format (dequantized inside the kernel, shaders/quant.wgsl), in one of two layouts:
//! * [`Layout::Tiles`] (shaders/matmul_tiles.wgsl), for GPUs and any adapter: output tiles of
//!   64 columns and 64 rows (8, 16 or 32 for fewer rows of X, [`Layout::for_rows`]) per
//!   workgroup of 64 invocations, 8 columns of 1 to 8 rows per invocation, vec4 loads of X and
//!   f32/f16/bf16 weights where K allows, the weight tile dequantized once per tile into
//!   workgroup memory; the tiles in f32 (shaders/matmul.wgsl) or, on adapters with
//!   shader-f16, in f16 (shaders/matmul_f16.wgsl, f32 sums).
//! * [`Layout::Rows`] (shaders/matmul_rows.wgsl), for CPU adapters with subgroups of at least
//!   8 lanes (lavapipe): 16 or 32 rows per workgroup, up to 4 columns per invocation, each
//!   weight group dequantized once per workgroup in registers, X shared across a subgroup by
//!   broadcasts.

use bytemuck::{Pod, Zeroable};

use super::{kernel, weight4_binding, weight_binding, weight_defs, weight_specs, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;
use crate::tensor::{DType, GpuWeight, WeightChunk};

pub const KERNEL: Kernel = kernel!("matmul", variants);
pub const KERNEL_F16: Kernel = kernel!("matmul_f16", variants);
pub const ROWS: Kernel = kernel!("matmul_rows", rows_variants);

/// How a matmul spreads its outputs over workgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// shaders/matmul_tiles.wgsl: tiles of `rows` rows (8, 16, 32 or 64; 64 for a mixture of
    /// experts) by 64 columns through workgroup memory, in f16 (`f16`: needs shader-f16) or f32.
    Tiles { f16: bool, rows: u32 },
    /// shaders/matmul_rows.wgsl: `rows` rows (a divisor of 64) per workgroup; needs subgroups
    /// of at least 8 lanes.
    Rows { rows: u32 },
}

impl Layout {
    /// The layout for `gpu`'s kind of device and a weight of `dtype`. CPU drivers pay per value
    /// loaded (a load is a loop over the SIMD lanes) and little per arithmetic instruction, so
    /// where they have subgroups they take the rows layout, with [`rows_for`] rows.
    /// `bench --tune`'s choice, where it made one, comes first (rows only where they run).
    pub fn for_device(gpu: &Gpu, dtype: DType) -> Layout {
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let rows = gpu.tuning().matmul_rows.unwrap_or(cpu);
        if rows && runs_rows(gpu) {
            Layout::Rows {
                rows: rows_for(dtype),
            }
        } else {
            Layout::Tiles {
                f16: F16_TILES && gpu.caps.shader_f16,
                rows: 64,
            }
        }
    }

    /// The layout for `m` rows of X: no more rows per workgroup than there are (rounded up
    /// to a power of two; tiles at least 8), so a few rows (a short prompt, a batched decode
    /// step, a speculative verification) do not pay for a prefill's 64 (tiles) or 16 or 32
    /// (rows).
    pub fn for_rows(self, m: usize) -> Layout {
        match self {
            Layout::Rows { rows } => Layout::Rows {
                rows: rows.min(m.max(1).next_power_of_two() as u32),
            },
            Layout::Tiles { f16, rows } => Layout::Tiles {
                f16,
                rows: rows.min(m.clamp(8, 64).next_power_of_two() as u32),
            },
        }
    }

    /// Rows of Y per workgroup.
    fn rows(self) -> u32 {
        match self {
            Layout::Tiles { rows, .. } | Layout::Rows { rows } => rows,
        }
    }
}

/// Whether the tiled layout takes f16 tiles where the adapter has shader-f16. Not by default:
/// with them forced on lavapipe the llama_gqa fixture's prefill logits are off by 1.4e-3
/// (relative), against the fixtures' 1e-4; they stay a variant (`Layout::Tiles { f16: true }`,
/// checked by the kernel cases) for a tuner to offer.
const F16_TILES: bool = false;

/// The tiled layout's rows per workgroup (TM in the shader). Its 8 × 8 invocations take 8
/// columns of rows / 8 rows each, so at least 8 rows; 64 is a long prefill's.
const TILE_ROWS: [u32; 4] = [8, 16, 32, 64];

/// The tiled layout's rows per workgroup in a mode: a grouped workgroup takes one whole tile
/// of perm's, 64 rows.
fn tile_heights(grouped: Option<bool>) -> &'static [u32] {
    match grouped {
        Some(_) => &TILE_ROWS[3..],
        None => &TILE_ROWS,
    }
}

/// Whether `gpu` can run the rows layout: subgroups of at least 8 lanes.
pub fn runs_rows(gpu: &Gpu) -> bool {
    gpu.caps.subgroups && gpu.caps.subgroup_min_size >= 8
}

/// Rows per workgroup of the rows layout for a weight of `dtype`: every weight group an
/// invocation dequantizes serves this many rows. On lavapipe (2 cores, 128 rows) 16 rows ran
/// 1.1-1.4x faster than 4 or 8 for f16 and the 32-value formats, and the K-quants, whose groups
/// take more loads, gained 1.1-1.3x more from 32.
fn rows_for(dtype: DType) -> u32 {
    match dtype {
        DType::Quant(q) if q.block_elems() == 256 => 32,
        _ => 16,
    }
}

/// Columns per invocation of the rows layout for `n` columns: the most (up to 4) that pads
/// `n` to whole workgroups (64 invocations) the least, so SmolLM2's 576 takes 3 and 1536 4.
fn columns_per_invocation(n: usize) -> u32 {
    (1..=4u32)
        .rev()
        .min_by_key(|&c| n.div_ceil(64 * c as usize) * 64 * c as usize)
        .unwrap_or(1)
}

/// The specialisation after the weight's constants: bias, or `grouped` (Some(gather): a
/// mixture of experts' rows, gathered at their tokens or not; never with a bias).
fn defs(weight: ShaderDefs, bias: bool, grouped: Option<bool>) -> ShaderDefs {
    weight
        .bool("HAS_BIAS", bias)
        .bool("GROUPED", grouped.is_some())
        .bool("GATHER", grouped == Some(true))
}

/// The rows layout's constants after [`defs`]': rows per workgroup, columns per invocation,
/// and whether X and the weight rows are read as vec4s.
fn rows_defs(defs: ShaderDefs, rows: u32, columns: u32, x_vec4: bool, w_vec4: bool) -> ShaderDefs {
    defs.u32("RB", rows)
        .u32("C", columns)
        .bool("X_VEC4", x_vec4)
        .bool("W_VEC4", w_vec4)
}

/// The bias and grouping modes: plain with and without bias, grouped with and without
/// gathering.
const MODES: [(bool, Option<bool>); 4] = [
    (false, None),
    (true, None),
    (false, Some(false)),
    (false, Some(true)),
];

/// The tiled layout's constants after [`defs`]': rows per workgroup (one of [`TILE_ROWS`]),
/// whether the inner loop reads them as vec4s (4 or 8 rows per invocation), and whether X and
/// the (f32, f16 or bf16) weight rows are read as vec4s.
fn tiles_defs(defs: ShaderDefs, rows: u32, x_vec4: bool, w_vec4: bool) -> ShaderDefs {
    defs.u32("TM", rows)
        .bool("A_VEC4", rows >= 32)
        .bool("X_VEC4", x_vec4)
        .bool("W_VEC4", w_vec4)
}

/// Whether X rows of `k` values, and rows of a weight of `dtype`, are read as vec4s (of
/// words for the weight: 4 f32 or 8 16-bit values).
fn vec4_loads(dtype: DType, k: usize) -> (bool, bool) {
    let w_vec4 = match dtype {
        DType::F32 => k.is_multiple_of(4),
        DType::F16 | DType::BF16 => k.is_multiple_of(8),
        _ => false,
    };
    (k.is_multiple_of(4), w_vec4)
}

/// Every weight dtype in every mode with every tile height (grouped: 64), X read as vec4s or
/// not, and (f32, f16 and bf16) weights read as vec4s or not.
pub fn variants() -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    for (dtype, weight) in weight_specs() {
        let plain = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
        for (bias, grouped) in MODES {
            for &rows in tile_heights(grouped) {
                for x_vec4 in [false, true] {
                    for w_vec4 in [false, plain] {
                        let d = defs(weight.clone(), bias, grouped);
                        out.push(tiles_defs(d, rows, x_vec4, w_vec4));
                    }
                }
            }
        }
    }
    out.dedup();
    out
}

/// Every weight dtype in every mode with its rows per workgroup, 1 to 4 columns per
/// invocation, X read as vec4s or not, and (f32, f16 and bf16) weights read as vec4s or not.
pub fn rows_variants() -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    for (dtype, weight) in weight_specs() {
        let plain = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
        for (bias, grouped) in MODES {
            // Fewer rows per workgroup for fewer rows of X ([`Layout::for_rows`]); grouped
            // tiles always have 64.
            let most = rows_for(dtype);
            let rows = match grouped {
                Some(_) => vec![most],
                None => (0..=most.ilog2()).map(|i| 1 << i).collect(),
            };
            for rows in rows {
                for columns in 1..=4 {
                    for x_vec4 in [false, true] {
                        for w_vec4 in [false, plain] {
                            let d = defs(weight.clone(), bias, grouped);
                            out.push(rows_defs(d, rows, columns, x_vec4, w_vec4));
                        }
                    }
                }
            }
        }
    }
    out.dedup();
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

/// One dispatch per weight chunk, each writing its columns of `y` [M, N], in the layout for
/// `gpu` and the weight's dtype.
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    m: usize,
) -> Result<Vec<Dispatch>> {
    launch_with(
        gpu,
        x,
        w,
        bias,
        y,
        m,
        Layout::for_device(gpu, w.dtype).for_rows(m),
    )
}

/// [`launch`] in a given layout (tiles: 8, 16, 32 or 64 rows; rows: a divisor of 64, and an
/// adapter with subgroups of at least 8 lanes).
pub fn launch_with(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    m: usize,
    layout: Layout,
) -> Result<Vec<Dispatch>> {
    // First, so that a layout it refuses is refused before its rows are used.
    let kernel = Launch::new(gpu, x, w, layout, w.rows, bias.is_some(), None)?;
    let groups_m = (m as u32).div_ceil(layout.rows());
    if groups_m > gpu.caps.max_workgroups_per_dim {
        return Err(Error::LimitExceeded {
            what: "matmul rows".into(),
            needed: m as u64,
            allowed: gpu.caps.max_workgroups_per_dim as u64 * layout.rows() as u64,
        });
    }
    let bias = bias.unwrap_or(&gpu.dummy);
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
            let groups_n = (c.rows as u32).div_ceil(kernel.columns);
            kernel.dispatch(
                gpu,
                &params,
                c,
                bias,
                y,
                &gpu.dummy,
                [groups_n, groups_m, 1],
            )
        })
        .collect()
}

/// A mixture of experts' matmul over the rows that `perm` (kernels::moe::permute) sorted by
/// expert: y [R, N] row r = x row (its token's with `gather`, else row r) times its expert's
/// [N, K] matrix out of `w`, stacked experts. Each tile perm lists holds 64 rows of one
/// expert (`moe::TILE`): one workgroup of 64-row tiles, or several of the rows layout's;
/// `max_tiles` bounds the tiles perm may list. One dispatch per weight chunk.
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
    let layout = Layout::for_device(gpu, w.dtype);
    let n = w.rows / w.experts;
    // Workgroups per perm tile.
    let parts = 64 / layout.rows();
    let groups_m = max_tiles as u64 * parts as u64;
    if groups_m > gpu.caps.max_workgroups_per_dim as u64 {
        return Err(Error::LimitExceeded {
            what: "grouped matmul tiles".into(),
            needed: max_tiles as u64,
            allowed: (gpu.caps.max_workgroups_per_dim / parts) as u64,
        });
    }
    let kernel = Launch::new(gpu, x, w, layout, n, false, Some(gather))?;
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
            let groups_n = (n as u32).div_ceil(kernel.columns);
            let grid = [groups_n, groups_m as u32, 1];
            kernel.dispatch(gpu, &params, c, &gpu.dummy, y, perm, grid)
        })
        .collect()
}

/// The kernel, specialisation and bindings a layout uses for one weight.
struct Launch<'a> {
    kernel: Kernel,
    defs: ShaderDefs,
    /// Columns of Y per workgroup.
    columns: u32,
    x: &'a wgpu::Buffer,
    /// X as vec4s (X itself where K % 4 == 0, else a dummy), and whether the weight chunk is
    /// bound a second time as vec4s (f32, f16, bf16).
    vec4s: (&'a wgpu::Buffer, bool),
}

impl<'a> Launch<'a> {
    /// For weight `w` with `n` columns of Y per matrix (per expert when grouped).
    fn new(
        gpu: &'a Gpu,
        x: &'a wgpu::Buffer,
        w: &GpuWeight,
        layout: Layout,
        n: usize,
        bias: bool,
        grouped: Option<bool>,
    ) -> Result<Launch<'a>> {
        let defs = defs(weight_defs(ShaderDefs::new(), w, "matmul")?, bias, grouped);
        let (x_vec4, w_vec4) = vec4_loads(w.dtype, w.cols);
        Ok(match layout {
            Layout::Tiles { f16, rows } => {
                if f16 && !gpu.caps.shader_f16 {
                    return Err(Error::Graph(
                        "matmul: f16 tiles need an adapter with shader-f16".into(),
                    ));
                }
                if !tile_heights(grouped).contains(&rows) {
                    return Err(Error::Graph(format!(
                        "matmul: tiles of {rows} rows (they take 8, 16, 32 or 64; grouped, 64)"
                    )));
                }
                Launch {
                    kernel: if f16 { KERNEL_F16 } else { KERNEL },
                    defs: tiles_defs(defs, rows, x_vec4, w_vec4),
                    columns: 64,
                    vec4s: (if x_vec4 { x } else { &gpu.dummy }, w_vec4),
                    x,
                }
            }
            Layout::Rows { rows } => {
                if !(64 % rows == 0 && runs_rows(gpu)) {
                    return Err(Error::Graph(format!(
                        "matmul: the rows layout ({rows} rows) needs a divisor of 64 and \
                         subgroups of at least 8 lanes"
                    )));
                }
                let columns = columns_per_invocation(n);
                Launch {
                    kernel: ROWS,
                    defs: rows_defs(defs, rows, columns, x_vec4, w_vec4),
                    columns: 64 * columns,
                    vec4s: (if x_vec4 { x } else { &gpu.dummy }, w_vec4),
                    x,
                }
            }
        })
    }

    /// The dispatch for weight chunk `c`.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        gpu: &Gpu,
        params: &Params,
        c: &WeightChunk,
        bias: &wgpu::Buffer,
        y: &wgpu::Buffer,
        perm: &wgpu::Buffer,
        grid: [u32; 3],
    ) -> Result<Dispatch> {
        let (x4, w4) = self.vec4s;
        let resources = [
            Some(self.x.as_entire_binding()),
            weight_binding(c),
            Some(bias.as_entire_binding()),
            Some(y.as_entire_binding()),
            Some(perm.as_entire_binding()),
            Some(x4.as_entire_binding()),
            weight4_binding(c, w4, &gpu.dummy),
        ];
        self.kernel
            .dispatch_resources(gpu, &self.defs, params, &resources, grid)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shader::Def;

    #[test]
    fn few_rows_take_small_tiles() {
        let tiles = |rows| Layout::Tiles { f16: false, rows };
        for (m, rows) in [(0, 8), (1, 8), (2, 8), (8, 8), (9, 16), (31, 32), (33, 64)] {
            assert_eq!(tiles(64).for_rows(m), tiles(rows), "{m} rows");
        }
        for m in [64, 65, 1000, usize::MAX] {
            assert_eq!(tiles(64).for_rows(m), tiles(64), "{m} rows");
        }
        // Never more than the layout had, and the rows layout as before.
        assert_eq!(tiles(16).for_rows(100), tiles(16));
        assert_eq!(
            Layout::Rows { rows: 16 }.for_rows(3),
            Layout::Rows { rows: 4 }
        );
        // Every height the layouts take is compiled: 8 to 64 rows, grouped 64 only.
        let heights = |grouped: bool| {
            let mut h: Vec<u32> = variants()
                .iter()
                .filter(|d| d.get("GROUPED") == Some(Def::Bool(grouped)))
                .filter_map(|d| match d.get("TM") {
                    Some(Def::U32(rows)) => Some(rows),
                    _ => None,
                })
                .collect();
            h.sort_unstable();
            h.dedup();
            h
        };
        assert_eq!(heights(false), TILE_ROWS);
        assert_eq!(heights(true), [64]);
    }
}

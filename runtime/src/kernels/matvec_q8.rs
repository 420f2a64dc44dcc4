//! The int8 decode matvec, an opt-in precision (`--matvec-precision int8`,
//! [`MatvecPrecision`]): x quantized to int8 blocks of 32 by [`super::quantize_q8`], then per
//! weight block `d_x * (a.x * sum(q_w q_x) + a.y * sum(q_x))` with exact integer sums by
//! WGSL's `dot4I8Packed` (SPIR-V's OpSDot where the Vulkan device has
//! shaderIntegerDotProduct, else naga's bit-field polyfill; GLSL always the polyfill), for the
//! 32-value ggml formats. See shaders/matvec_q8.wgsl. Results differ from the f32 matvec by x's
//! quantization (relative error about 1e-2 per product), hence opt-in.

use bytemuck::{Pod, Zeroable};

use super::elementwise::Gate;
use super::matvec::{Epilogue, Layout};
use super::quantize_q8::{Block, BLOCK_WORDS};
use super::{kernel, weight_binding, weight_defs, weight_specs_of, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::quant::{self, QuantFormat};
use crate::shader::ShaderDefs;
use crate::tensor::{DType, GpuWeight};

pub const KERNEL: Kernel = kernel!("matvec_q8", variants);

/// The arithmetic of the decode matvec (the Linear op at one token), chosen when running
/// ([`Gpu::set_matvec_precision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatvecPrecision {
    /// x and products in f32 (the default; every other path is checked against it).
    #[default]
    F32,
    /// x quantized to int8 per 32-value block, integer dot products with the weights' quants,
    /// for weights in [`FORMATS`]; other weights, and fusions this kernel lacks, keep f32.
    Int8,
    /// x, weights and products in f16, sums in f32 ([`super::matvec_f16`]), for f16 weights
    /// and those in [`FORMATS`]; other weights keep f32. Needs an adapter with shader-f16.
    F16,
}

impl MatvecPrecision {
    pub fn name(self) -> &'static str {
        match self {
            MatvecPrecision::F32 => "f32",
            MatvecPrecision::Int8 => "int8",
            MatvecPrecision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for MatvecPrecision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(MatvecPrecision::F32),
            "int8" => Ok(MatvecPrecision::Int8),
            "f16" => Ok(MatvecPrecision::F16),
            _ => Err(Error::InputOutOfRange(format!(
                "matvec precision '{s}' (expected f32, int8 or f16)"
            ))),
        }
    }
}

/// The weight formats the int8 matvec reads: ggml's 32-value blocks.
pub const FORMATS: [QuantFormat; 5] = [
    QuantFormat::Q4_0,
    QuantFormat::Q4_1,
    QuantFormat::Q5_0,
    QuantFormat::Q5_1,
    QuantFormat::Q8_0,
];

/// Whether the int8 matvec reads `w` (one of [`FORMATS`]; rows are then whole blocks).
pub fn reads(w: &GpuWeight) -> bool {
    matches!(w.dtype, DType::Quant(q) if FORMATS.contains(&q)) && w.experts == 1
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    k: u32,
    n: u32,
    col_offset: u32,
}

/// The constants of the int8 and f16 matvecs' layout and of the row stores they share with
/// the f32 matvec (shaders/matvec_store.wgsl): lanes summed through workgroup memory.
pub(crate) fn store_defs(
    weight: ShaderDefs,
    bias: bool,
    layout: Layout,
    epilogue: Epilogue,
) -> ShaderDefs {
    weight
        .bool("HAS_BIAS", bias)
        .u32("LANES", layout.lanes)
        .u32("ROWS_PER_LANE", layout.rows_per_lane)
        .bool("SUBGROUP", false)
        .bool("WORKGROUP_SUMS", true)
        .bool("ACCUM", epilogue == Epilogue::Accumulate)
        .bool("GLU", matches!(epilogue, Epilogue::Glu(_)))
        .bool("GELU_TANH", epilogue == Epilogue::Glu(Gate::GeluTanh))
}

fn defs(weight: ShaderDefs, bias: bool, layout: Layout, epilogue: Epilogue) -> ShaderDefs {
    store_defs(weight, bias, layout, epilogue).u32("Q8_WORDS", BLOCK_WORDS as u32)
}

/// Every format, with and without bias, in the default layouts, with every epilogue.
pub fn variants() -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    let dtypes = FORMATS.map(DType::Quant);
    for (_, weight) in weight_specs_of(&dtypes) {
        for bias in [false, true] {
            for layout in Layout::DEFAULTS {
                for epilogue in Epilogue::ALL {
                    out.push(defs(weight.clone(), bias, layout, epilogue));
                }
            }
        }
    }
    out
}

/// `y = W x + b` for `xq` the quantized x ([`super::quantize_q8::launch`]), one dispatch per
/// weight chunk, in `layout` or the f32 matvec's for `gpu`. SwiGLU needs whole (gate, up)
/// pairs in every chunk and workgroup and no bias, as the f32 matvec.
pub fn launch(
    gpu: &Gpu,
    xq: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    epilogue: Epilogue,
    layout: Option<Layout>,
) -> Result<Vec<Dispatch>> {
    let layout = layout.unwrap_or_else(|| Layout::for_weight(gpu, w));
    let bad = |why: &str| Err(Error::Graph(format!("int8 matvec of {}: {why}", w.name)));
    if !reads(w) {
        return bad(&format!("{} weights are not read in int8", w.dtype.name()));
    }
    if let Some(why) = layout.refusal(w, bias.is_some(), epilogue) {
        return bad(&why);
    }
    let defs = defs(
        weight_defs(ShaderDefs::new(), w, "matvec_q8")?,
        bias.is_some(),
        layout,
        epilogue,
    );
    let bias = bias.unwrap_or(&gpu.dummy);
    w.chunks
        .iter()
        .map(|c| {
            let params = Params {
                k: w.cols as u32,
                n: c.rows as u32,
                col_offset: c.row_start as u32,
            };
            let grid = gpu.grid(params.n.div_ceil(layout.rows()));
            let resources = [
                Some(xq.as_entire_binding()),
                weight_binding(c),
                Some(bias.as_entire_binding()),
                Some(y.as_entire_binding()),
            ];
            KERNEL.dispatch_resources(gpu, &defs, &params, &resources, grid)
        })
        .collect()
}

/// `y[r] = sum over blocks of d_x (a.x sum(q_w q_x) + a.y sum(q_x)) + b[r]` for a weight
/// [n, k] of `format` in file layout and x's blocks: the kernel's arithmetic, each block's
/// term as the kernel forms it (integer sums exact), the terms summed in f64.
pub fn reference(
    format: QuantFormat,
    blocks: &[u8],
    x: &[Block],
    bias: Option<&[f32]>,
    n: usize,
) -> Vec<f32> {
    let per_row = x.len();
    let bytes = format.block_bytes();
    (0..n)
        .map(|r| {
            let sum: f64 = x
                .iter()
                .enumerate()
                .map(|(i, xb)| {
                    let wb = &blocks[(r * per_row + i) * bytes..][..bytes];
                    let (q, ax, ay) = quant::block32_ints(format, wb)
                        .expect("the int8 matvec's FORMATS are 32-value formats");
                    let dot: i32 = q.iter().zip(&xb.q).map(|(&w, &x)| w * x as i32).sum();
                    (xb.d * (ax * dot as f32 + ay * xb.sum() as f32)) as f64
                })
                .sum();
            sum as f32 + bias.map_or(0.0, |b| b[r])
        })
        .collect()
}

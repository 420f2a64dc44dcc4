//! The f16 decode matvec, an opt-in precision (`--matvec-precision f16`,
//! [`MatvecPrecision::F16`]) for adapters with shader-f16: x rounded to f16 once, each weight
//! value rounded to f16 (f16 weights exactly; ggml's 32-value blocks dequantized in f32 as the
//! f32 matvec does, then rounded), each product an f16 multiplication, and every sum in f32
//! (per 32-value block, then over blocks and lanes). See shaders/matvec_f16.wgsl. Results
//! differ from the f32 matvec by the f16 roundings (about 3e-4 relative per product on random
//! data), hence opt-in. The row stores are the other matvecs' (shaders/matvec_store.wgsl).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::matvec::{Epilogue, Layout};
use super::matvec_q8::{store_defs, MatvecPrecision, FORMATS};
use super::{kernel, weight_binding, weight_defs, weight_specs_of, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;
use crate::tensor::{DType, GpuWeight};

pub const KERNEL: Kernel = kernel!("matvec_f16", variants);

/// Values per block: the f16 kernel's unit of work and of f32 partial sums.
pub const BLOCK: usize = 32;

/// Whether the f16 matvec reads `w`: f16 weights whose rows are whole 32-value blocks, or one
/// of the 32-value ggml formats ([`FORMATS`]). Others (bf16, f32, the K-quants, stacked
/// experts) keep the f32 matvec.
pub fn reads(w: &GpuWeight) -> bool {
    let dtype = match w.dtype {
        DType::F16 => w.cols.is_multiple_of(BLOCK),
        DType::Quant(q) => FORMATS.contains(&q),
        _ => false,
    };
    dtype && w.experts == 1
}

/// The typed refusal of the f16 precision on an adapter without shader-f16 (WGSL's `enable
/// f16;`): never a silent f32 fallback for the whole mode.
pub fn check_adapter(gpu: &Gpu) -> Result<()> {
    if gpu.caps.shader_f16 {
        return Ok(());
    }
    Err(Error::MissingFeature {
        option: format!(
            "matvec precision {} (--matvec-precision, or createEngine's matvecPrecision)",
            MatvecPrecision::F16.name()
        ),
        feature: "shader-f16",
        // Browsers may hide the adapter's name.
        adapter: match gpu.info.name.trim() {
            "" => format!("this {} adapter", gpu.backend_name()),
            name => format!("{name} ({})", gpu.backend_name()),
        },
    })
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    k: u32,
    n: u32,
    col_offset: u32,
    eps: f32,
}

fn defs(
    weight: ShaderDefs,
    bias: bool,
    layout: Layout,
    epilogue: Epilogue,
    norm: bool,
) -> ShaderDefs {
    store_defs(weight, bias, layout, epilogue).bool("NORM", norm)
}

/// f16 and every 32-value format, with and without bias and norm, in the default layouts,
/// with every epilogue.
pub fn variants() -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    let dtypes: Vec<DType> = std::iter::once(DType::F16)
        .chain(FORMATS.map(DType::Quant))
        .collect();
    for (_, weight) in weight_specs_of(&dtypes) {
        for bias in [false, true] {
            for norm in [false, true] {
                for layout in Layout::DEFAULTS {
                    for epilogue in Epilogue::ALL {
                        out.push(defs(weight.clone(), bias, layout, epilogue, norm));
                    }
                }
            }
        }
    }
    out
}

/// `y = W x + b` in f16 products, x optionally RMS-normed with `norm` (weight [K], eps), one
/// dispatch per weight chunk, in `layout` or the f32 matvec's for `gpu`. Refused without
/// shader-f16 ([`check_adapter`]); SwiGLU needs whole (gate, up) pairs in every chunk and
/// workgroup and no bias, as the f32 matvec.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    norm: Option<(&wgpu::Buffer, f32)>,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    epilogue: Epilogue,
    layout: Option<Layout>,
) -> Result<Vec<Dispatch>> {
    check_adapter(gpu)?;
    let layout = layout.unwrap_or_else(|| Layout::for_weight(gpu, w));
    let bad = |why: &str| Err(Error::Graph(format!("f16 matvec of {}: {why}", w.name)));
    if !reads(w) {
        return bad(&format!(
            "{} weights of {} columns are not read in f16",
            w.dtype.name(),
            w.cols
        ));
    }
    if let Some(why) = layout.refusal(w, bias.is_some(), epilogue) {
        return bad(&why);
    }
    let defs = defs(
        weight_defs(ShaderDefs::new(), w, "matvec_f16")?,
        bias.is_some(),
        layout,
        epilogue,
        norm.is_some(),
    );
    let bias = bias.unwrap_or(&gpu.dummy);
    let (nw, eps) = norm.unwrap_or((&gpu.dummy, 0.0));
    w.chunks
        .iter()
        .map(|c| {
            let params = Params {
                k: w.cols as u32,
                n: c.rows as u32,
                col_offset: c.row_start as u32,
                eps,
            };
            let grid = gpu.grid(params.n.div_ceil(layout.rows()));
            let resources = [
                Some(x.as_entire_binding()),
                weight_binding(c),
                Some(bias.as_entire_binding()),
                Some(y.as_entire_binding()),
                Some(nw.as_entire_binding()),
            ];
            KERNEL.dispatch_resources(gpu, &defs, &params, &resources, grid)
        })
        .collect()
}

/// x as the kernel rounds it: RMSNorm'd first with `norm` (weight, eps: x * nw * inverse RMS
/// in f32, the kernel's order), then each value rounded to f16 (nearest, ties to even).
pub fn round_x(x: &[f32], norm: Option<(&[f32], f32)>) -> Vec<f16> {
    let inv = norm.map(|(_, eps)| {
        let sq: f32 = x.iter().map(|v| v * v).sum();
        1.0 / (sq / x.len() as f32 + eps).sqrt()
    });
    x.iter()
        .enumerate()
        .map(|(i, &v)| match (norm, inv) {
            (Some((nw, _)), Some(inv)) => f16::from_f32(v * nw[i] * inv),
            _ => f16::from_f32(v),
        })
        .collect()
}

/// `y[r] = sum over blocks of (f32 sum of the block's f16 products x16 * f16(w)) + b[r]` for
/// `w` [n, k] the weight's values in f32 (f16 weights widened, blocks dequantized by
/// `quant::dequantize`: the GPU's values) and `x16` from [`round_x`]: the kernel's arithmetic.
/// An f16 product of two f16 values is their exact f32 product rounded once, as here; the
/// blocks' sums are added in f64 (the GPU's order differs: f32 sums, see the cases).
pub fn reference(x16: &[f16], w: &[f32], bias: Option<&[f32]>, n: usize) -> Vec<f32> {
    let k = x16.len();
    (0..n)
        .map(|r| {
            let row = &w[r * k..(r + 1) * k];
            let sum: f64 = row
                .chunks(BLOCK)
                .zip(x16.chunks(BLOCK))
                .map(|(wb, xb)| {
                    let block: f32 = wb
                        .iter()
                        .zip(xb)
                        .map(|(&w, &x)| {
                            f16::from_f32(f16::from_f32(w).to_f32() * x.to_f32()).to_f32()
                        })
                        .sum();
                    block as f64
                })
                .sum();
            sum as f32 + bias.map_or(0.0, |b| b[r])
        })
        .collect()
}

//! Random weights of every kind a kernel reads (f32, f16, bf16, each ggml block format), with
//! the values the GPU sees, and views of a device whose binding limit splits them into chunks.

use std::sync::Arc;

use half::{bf16, f16};

use crate::device::Gpu;
use crate::error::Result;
use crate::quant::{self, QuantFormat};
use crate::rng::Rng;
use crate::tensor::{DType, GpuWeight, HostData};

/// Byte offsets of the f16 fields (d, and m or dmin) in a block of `format`.
fn f16_fields(format: QuantFormat) -> &'static [usize] {
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => &[0],
        QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4_K | QuantFormat::Q5_K => &[0, 2],
        QuantFormat::Q6_K => &[208],
    }
}

/// Random but valid blocks for a [rows, cols] weight in file layout: random bytes, with each
/// f16 scale field set to a finite normal f16 of either sign (magnitude 2^-9 .. 2^-3), so
/// values are O(0.01 .. 10) and never NaN or infinite.
pub fn random_blocks(format: QuantFormat, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..format.file_bytes(rows * cols))
        .map(|_| rng.next_u32() as u8)
        .collect();
    for block in bytes.chunks_exact_mut(format.block_bytes()) {
        for &off in f16_fields(format) {
            let v =
                (2.0f32).powf(-9.0 + 6.0 * (rng.uniform() * 0.5 + 0.5)) * rng.uniform().signum();
            block[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

/// Round to f16: the bit patterns to upload and the values the GPU will read.
pub fn to_f16(v: &[f32]) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = v.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
    let rounded = bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    (bits, rounded)
}

/// Round to bf16 (to nearest, ties to even): the bit patterns to upload and the values the
/// GPU will read (a bf16 widens to f32 exactly, on the GPU by a shift).
pub fn to_bf16(v: &[f32]) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
    let rounded = bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
    (bits, rounded)
}

/// A random [rows, cols] weight of `dtype` (values in [-1, 1) unless quantized), uploaded as
/// `experts` stacked matrices; returns it with the values the GPU sees.
pub fn random(
    gpu: &Gpu,
    dtype: DType,
    experts: usize,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
) -> Result<(Arc<GpuWeight>, Vec<f32>)> {
    let name = dtype.name();
    match dtype {
        DType::Quant(q) => {
            let bytes = random_blocks(q, rows, cols, rng);
            let data = HostData::Quant(q, &bytes);
            let w = GpuWeight::upload_experts(gpu, name, experts, rows, cols, data)?;
            Ok((w, quant::dequantize(q, &bytes)))
        }
        _ => upload(gpu, dtype, experts, rows, cols, rng.vec(rows * cols, 1.0)),
    }
}

/// `values` [rows, cols] uploaded as an f32, f16 or bf16 weight (any other dtype: f32) of
/// `experts` stacked matrices; returns it with the values the GPU sees.
pub fn upload(
    gpu: &Gpu,
    dtype: DType,
    experts: usize,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
) -> Result<(Arc<GpuWeight>, Vec<f32>)> {
    let up = |data: HostData<'_>| {
        GpuWeight::upload_experts(gpu, dtype.name(), experts, rows, cols, data)
    };
    Ok(match dtype {
        DType::F16 => {
            let (bits, seen) = to_f16(&values);
            (up(HostData::F16(&bits))?, seen)
        }
        DType::BF16 => {
            let (bits, seen) = to_bf16(&values);
            (up(HostData::BF16(&bits))?, seen)
        }
        _ => (up(HostData::F32(&values))?, values),
    })
}

/// `gpu`, or a view of it whose binding limit splits a weight of `dtype` with rows of `cols`
/// values into chunks of `split_rows` rows.
pub fn limited(gpu: &Arc<Gpu>, split_rows: Option<usize>, dtype: DType, cols: usize) -> Arc<Gpu> {
    match split_rows {
        Some(r) => gpu.with_max_binding(r as u64 * dtype.bytes(cols)),
        None => gpu.clone(),
    }
}

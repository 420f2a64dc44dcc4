//! GPU tensors: activations and states (one buffer), and weights (row chunks, so that a
//! tensor larger than the adapter's storage-binding limit is split and each chunk bound alone).

use std::sync::Arc;

use crate::buffer::{GpuBuffer, GpuTexture};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::quant::{to_gpu, QuantFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    /// IEEE half, stored packed two per u32 word.
    F16,
    /// bfloat16 (the top half of an f32), stored packed two per u32 word like [`DType::F16`].
    BF16,
    U32,
    /// ggml blocks in the GPU layout of [`crate::quant`] (tiles of fields apart, or blocks
    /// padded to whole words).
    Quant(QuantFormat),
}

impl DType {
    /// Bytes for `n` elements, rounded up to whole u32 words.
    pub fn bytes(self, n: usize) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4 * n as u64,
            DType::F16 | DType::BF16 => (2 * n as u64).next_multiple_of(4),
            DType::Quant(q) => q.gpu_bytes(n) as u64,
        }
    }
    /// 16-bit floats packed two per word (f16 or bf16).
    pub fn is_half(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::Quant(q) => q.name(),
        }
    }
}

/// A tensor that lives in one GPU buffer (activations, inputs, outputs, states).
#[derive(Debug, Clone)]
pub struct GpuTensor {
    pub buffer: GpuBuffer,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl GpuTensor {
    pub fn new(gpu: &Gpu, label: &str, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let bytes = shape_bytes(shape, dtype);
        check_binding(gpu, label, bytes)?;
        Ok(GpuTensor {
            buffer: gpu.storage_buffer(label, bytes),
            shape: shape.to_vec(),
            dtype,
        })
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        self.dtype.bytes(self.numel())
    }
}

/// The bytes of a tensor of `shape`, u64::MAX when the product overflows (so an absurd shape
/// fails the binding check instead of wrapping).
pub fn shape_bytes(shape: &[usize], dtype: DType) -> u64 {
    match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(n) if n <= (u64::MAX / 8) as usize => dtype.bytes(n),
        _ => u64::MAX,
    }
}

pub fn check_binding(gpu: &Gpu, what: &str, bytes: u64) -> Result<()> {
    if bytes > gpu.caps.max_storage_binding {
        return Err(Error::LimitExceeded {
            what: format!("tensor {what} ({bytes} bytes)"),
            needed: bytes,
            allowed: gpu.caps.max_storage_binding,
        });
    }
    Ok(())
}

/// Where a weight chunk's bytes live.
#[derive(Debug, Clone)]
pub enum ChunkData {
    Buffer(GpuBuffer),
    /// A texture of `rgba32uint` texels (weight matrices on CPU adapters,
    /// [`crate::Caps::weight_texture_bytes`]); kernels read it with `W_TEXTURE` (shaders/quant.wgsl).
    Texture(GpuTexture),
}

impl ChunkData {
    pub fn size(&self) -> u64 {
        match self {
            ChunkData::Buffer(b) => b.size(),
            ChunkData::Texture(t) => t.size(),
        }
    }
}

/// A contiguous block of rows of a weight, in its own buffer or texture.
#[derive(Debug, Clone)]
pub struct WeightChunk {
    pub data: ChunkData,
    pub row_start: usize,
    pub rows: usize,
}

/// A weight matrix [rows, cols] (a vector is [1, n]), split by rows into chunks that each fit
/// one storage binding. A mixture of experts' weights are `experts` matrices stacked by rows
/// (expert e owns rows e * rows / experts ..); chunks then hold whole experts.
#[derive(Debug)]
pub struct GpuWeight {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub experts: usize,
    pub dtype: DType,
    pub chunks: Vec<WeightChunk>,
}

/// Host-side weight data handed to [`GpuWeight::upload`].
pub enum HostData<'a> {
    F32(&'a [f32]),
    /// f16 bit patterns.
    F16(&'a [u16]),
    /// bf16 bit patterns.
    BF16(&'a [u16]),
    /// ggml blocks in file layout; each row is a whole number of blocks.
    Quant(QuantFormat, &'a [u8]),
}

impl GpuWeight {
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        rows: usize,
        cols: usize,
        data: HostData<'_>,
    ) -> Result<Arc<GpuWeight>> {
        Self::upload_experts(gpu, name, 1, rows, cols, data)
    }

    /// `experts` matrices of [rows / experts, cols] stacked by rows, chunked on expert
    /// boundaries.
    pub fn upload_experts(
        gpu: &Gpu,
        name: &str,
        experts: usize,
        rows: usize,
        cols: usize,
        data: HostData<'_>,
    ) -> Result<Arc<GpuWeight>> {
        if experts == 0 || !rows.is_multiple_of(experts) {
            return Err(Error::ShapeMismatch {
                context: format!("weight {name}: {rows} rows for {experts} experts"),
                expected: vec![rows.next_multiple_of(experts.max(1)), cols],
                got: vec![rows, cols],
            });
        }
        let (dtype, n) = match &data {
            HostData::F32(d) => (DType::F32, d.len()),
            HostData::F16(d) => (DType::F16, d.len()),
            HostData::BF16(d) => (DType::BF16, d.len()),
            HostData::Quant(q, d) => {
                if !cols.is_multiple_of(q.block_elems()) || !d.len().is_multiple_of(q.block_bytes())
                {
                    return Err(Error::ShapeMismatch {
                        context: format!(
                            "{} weight {name}: rows must be whole {}-value blocks",
                            q.name(),
                            q.block_elems()
                        ),
                        expected: vec![rows, cols.next_multiple_of(q.block_elems())],
                        got: vec![rows, cols],
                    });
                }
                (
                    DType::Quant(*q),
                    d.len() / q.block_bytes() * q.block_elems(),
                )
            }
        };
        if n != rows * cols {
            return Err(Error::ShapeMismatch {
                context: format!("weight {name}"),
                expected: vec![rows, cols],
                got: vec![n],
            });
        }
        let row_bytes = dtype.bytes(cols).max(1);
        // Matrices go to textures where the device keeps them there; vectors stay buffers.
        let textured = rows > 1 && gpu.caps.weight_texture_bytes > 0;
        let mut limit = gpu.caps.max_storage_binding.min(gpu.caps.max_buffer_size);
        if textured {
            limit = limit.min(gpu.caps.weight_texture_bytes);
        }
        let mut per_chunk = ((limit / row_bytes) as usize).max(1);
        // Packed 16-bit chunks must start on a word boundary: keep rows*cols even.
        if dtype.is_half() && cols % 2 == 1 && per_chunk > 1 {
            per_chunk -= per_chunk % 2;
        }
        if row_bytes > limit {
            return Err(Error::LimitExceeded {
                what: format!("one row of weight {name}"),
                needed: row_bytes,
                allowed: limit,
            });
        }
        // A grouped kernel binds one chunk at a time: each expert must fit in one.
        let expert_rows = rows / experts;
        if experts > 1 {
            if per_chunk < expert_rows {
                return Err(Error::LimitExceeded {
                    what: format!("one expert of weight {name}"),
                    needed: row_bytes * expert_rows as u64,
                    allowed: limit,
                });
            }
            per_chunk -= per_chunk % expert_rows;
        }
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows {
            let count = per_chunk.min(rows - start);
            let (a, b) = (start * cols, (start + count) * cols);
            let padded;
            let bytes: &[u8] = match &data {
                HostData::F32(d) => bytemuck::cast_slice(&d[a..b]),
                HostData::F16(d) | HostData::BF16(d) => bytemuck::cast_slice(&d[a..b]),
                HostData::Quant(q, d) => {
                    padded = to_gpu(*q, &d[q.file_bytes(a)..q.file_bytes(b)]);
                    &padded
                }
            };
            let data = match textured {
                true => ChunkData::Texture(gpu.weight_texture(name, bytes)),
                false => ChunkData::Buffer(gpu.storage_buffer_init(name, bytes)),
            };
            chunks.push(WeightChunk {
                data,
                row_start: start,
                rows: count,
            });
            start += count;
        }
        Ok(Arc::new(GpuWeight {
            name: name.to_string(),
            rows,
            cols,
            experts,
            dtype,
            chunks,
        }))
    }

    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.data.size()).sum()
    }

    /// Whether the chunks are textures (then every one is).
    pub fn textured(&self) -> bool {
        self.chunks
            .iter()
            .any(|c| matches!(c.data, ChunkData::Texture(_)))
    }

    /// The single buffer of a weight that is never split (norm weights, biases, tables of
    /// frequencies, small matrices such as RWKV's token-shift mixes). A weight held in a
    /// texture gets a buffer copy the first time (kept with it).
    pub fn single<'a>(&'a self, gpu: &Gpu) -> Result<&'a wgpu::Buffer> {
        match self.chunks.as_slice() {
            [c] => Ok(match &c.data {
                ChunkData::Buffer(b) => b,
                ChunkData::Texture(t) => gpu.texture_as_buffer(t),
            }),
            _ => Err(Error::LimitExceeded {
                what: format!("vector weight {}", self.name),
                needed: self.bytes(),
                allowed: 0,
            }),
        }
    }
}

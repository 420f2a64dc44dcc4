//! Kernels. Each module pairs a WGSL file in shaders/ of the same name with its Rust launcher
//! (`launch`, which builds a [`Dispatch`]), its CPU reference (`reference`), the ops that use
//! it (their parameters, the `Graph` builder that validates them, and their lowering: see
//! [`crate::op::Op`]), and `variants()`: every specialisation of its shader the runtime
//! creates. [`ALL`] lists every kernel; the shader-validation test compiles each variant.
//!
//! Adding a kernel: its WGSL file, its module here, and one line in [`ALL`] (and its cases in
//! the table of kernel cases, `crate::cases`).
//!
//! Binding convention for every kernel: binding 0 is the kernel's own uniform parameters,
//! binding 1 the shared [`Step`] uniform where the kernel reads it, then storage buffers.

pub mod attention;
pub mod cache_write;
pub mod conv1d;
pub mod copy;
pub mod decode_attention;
pub mod decode_gate;
pub mod delta_ab;
pub mod elementwise;
pub mod elementwise_fused;
pub mod embedding;
pub mod head_concat;
pub mod head_dot;
pub mod linear;
pub mod linear_scan;
pub mod matmul;
pub mod matvec;
pub mod matvec_f16;
pub mod matvec_q8;
pub mod moe;
pub mod quantize_q8;
pub mod rms_norm;
pub mod rope;
pub mod rope_cache_write;
pub mod sample;
pub mod softmax;
pub mod token_mix;
pub mod unmask;
pub mod wkv4;

use bytemuck::{Pod, Zeroable};

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;
use crate::tensor::{ChunkData, DType, GpuWeight, WeightChunk};

/// Per-step uniform shared by every kernel of a plan; mirrors `Step` in shaders/common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct Step {
    pub pos: u32,
    pub n_tokens: u32,
    pub seed: u32,
    pub top_k: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// Diffusion sampling: the absolute positions [window_start, window_end) whose masks may
    /// be committed in this step (the current block).
    pub window_start: u32,
    pub window_end: u32,
    /// Diffusion sampling: how many masked positions to commit (0 = every one whose
    /// confidence reaches `threshold`, at least one).
    pub unmask_k: u32,
    pub threshold: f32,
    /// The request's own seed, before it is mixed with the position into `seed`: a pass
    /// that samples every row (speculative verification) draws row r with the seed the
    /// decode step at `pos + r` would have (see `kernels::sample`).
    pub seed_base: u32,
    /// Pads the uniform to a multiple of 16 bytes.
    pub _pad: u32,
}

/// One recorded kernel launch: replayable as long as its buffers live.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// The parameters uniform the bind group holds: kept here so it stays on the device's
    /// byte count as long as the dispatch can run.
    _params: GpuBuffer,
}

/// One kernel: its name (the WGSL file's), its source and its specialisations.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    /// Every specialisation of the shader the runtime creates (at representative sizes where
    /// a constant is a size, such as `HEAD_DIM`).
    pub variants: fn() -> Vec<ShaderDefs>,
}

/// Every kernel, one line each: the WGSL files of shaders/ other than the prelude and the
/// snippets they include ([`crate::shader::INCLUDES`]).
pub const ALL: &[Kernel] = &[
    attention::KERNEL,
    cache_write::KERNEL,
    conv1d::KERNEL,
    copy::KERNEL,
    decode_attention::KERNEL,
    decode_attention::MERGE,
    decode_attention::LANES,
    decode_gate::KERNEL,
    delta_ab::KERNEL,
    elementwise::KERNEL,
    elementwise_fused::KERNEL,
    embedding::KERNEL,
    head_concat::KERNEL,
    head_dot::KERNEL,
    head_dot::LANES,
    linear_scan::KERNEL,
    linear_scan::LOCAL,
    linear_scan::CARRY,
    linear_scan::LANES,
    linear_scan::MM_LOCAL,
    linear_scan::MM,
    linear_scan::MM_DELTA_LOCAL,
    linear_scan::MM_DELTA,
    matmul::KERNEL,
    matmul::KERNEL_F16,
    matmul::ROWS,
    matvec::KERNEL,
    matvec_f16::KERNEL,
    matvec_q8::KERNEL,
    moe::ROUTE,
    moe::PERMUTE,
    moe::COMBINE,
    quantize_q8::KERNEL,
    rms_norm::KERNEL,
    rms_norm::LANES,
    rope::KERNEL,
    rope_cache_write::KERNEL,
    sample::KERNEL,
    softmax::KERNEL,
    token_mix::KERNEL,
    unmask::KERNEL,
    wkv4::KERNEL,
    wkv4::LOCAL,
    wkv4::CARRY,
];

/// The variants of a kernel with no specialisation constants.
pub fn no_variants() -> Vec<ShaderDefs> {
    vec![ShaderDefs::new()]
}

impl Kernel {
    /// Build a dispatch: `params` becomes binding 0, then `buffers` in order.
    pub fn dispatch<P: Pod>(
        &self,
        gpu: &Gpu,
        defs: &ShaderDefs,
        params: &P,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let resources: Vec<_> = buffers
            .iter()
            .map(|b| Some(b.as_entire_binding()))
            .collect();
        self.dispatch_resources(gpu, defs, params, &resources, workgroups)
    }

    /// Build a dispatch: `params` becomes binding 0, then `resources` in order from binding
    /// 1, a None leaving its binding out (a binding the specialisation does not declare).
    pub fn dispatch_resources<P: Pod>(
        &self,
        gpu: &Gpu,
        defs: &ShaderDefs,
        params: &P,
        resources: &[Option<wgpu::BindingResource<'_>>],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let pipeline = gpu.pipeline(self.name, self.source, defs)?;
        let params_buf = gpu.uniform_buffer_init(self.name, bytemuck::bytes_of(params));
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params_buf.as_entire_binding(),
        }];
        for (i, r) in resources.iter().enumerate() {
            if let Some(r) = r {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: r.clone(),
                });
            }
        }
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Dispatch {
            name: self.name,
            pipeline,
            bind_group,
            workgroups,
            _params: params_buf,
        })
    }
}

/// How a kernel binds weight chunk `c` (shaders/quant.wgsl): its buffer, or its texture with
/// `W_TEXTURE` ([`weight_defs`]).
pub fn weight_binding(c: &WeightChunk) -> Option<wgpu::BindingResource<'_>> {
    Some(match &c.data {
        ChunkData::Buffer(b) => b.as_entire_binding(),
        ChunkData::Texture(t) => wgpu::BindingResource::TextureView(&t.view),
    })
}

/// The binding of a kernel's vec4 view of chunk `c` (`w4`): the chunk's buffer where the
/// kernel reads it as vec4s (`reads`), else `dummy`; none for a texture, which `w_quad` reads
/// (the specialisation declares no `w4`).
pub fn weight4_binding<'a>(
    c: &'a WeightChunk,
    reads: bool,
    dummy: &'a wgpu::Buffer,
) -> Option<wgpu::BindingResource<'a>> {
    match &c.data {
        ChunkData::Buffer(b) if reads => Some(b.as_entire_binding()),
        ChunkData::Buffer(_) => Some(dummy.as_entire_binding()),
        ChunkData::Texture(_) => None,
    }
}

/// `kernel!("name", variants)`: the kernel of shaders/name.wgsl.
macro_rules! kernel {
    ($name:literal, $variants:expr) => {
        $crate::kernels::Kernel {
            name: $name,
            source: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
            variants: $variants,
        }
    };
}
pub(crate) use kernel;

/// Record dispatches into one compute pass and submit them.
pub fn submit(gpu: &Gpu, dispatches: &[Dispatch]) {
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("kestrel"),
        });
    record(&mut enc, dispatches);
    gpu.queue.submit([enc.finish()]);
    gpu.work.submit(dispatches.len());
}

/// Record dispatches into one compute pass of `enc`.
pub fn record(enc: &mut wgpu::CommandEncoder, dispatches: &[Dispatch]) {
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("kestrel"),
        timestamp_writes: None,
    });
    for d in dispatches {
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind_group, &[]);
        pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
    }
}

/// Record `gate` and then `dispatches` with indirect arguments (three words each, in order,
/// in `args`, which the gate writes) into one compute pass of `enc`.
pub fn record_gated(
    enc: &mut wgpu::CommandEncoder,
    gate: &Dispatch,
    dispatches: &[Dispatch],
    args: &wgpu::Buffer,
) {
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("kestrel gated"),
        timestamp_writes: None,
    });
    pass.set_pipeline(&gate.pipeline);
    pass.set_bind_group(0, &gate.bind_group, &[]);
    pass.dispatch_workgroups(gate.workgroups[0], gate.workgroups[1], gate.workgroups[2]);
    for (i, d) in dispatches.iter().enumerate() {
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind_group, &[]);
        pass.dispatch_workgroups_indirect(args, 12 * i as u64);
    }
}

/// The dtypes a kernel may read as a weight: f32, f16, bf16 and every ggml block format.
pub fn weight_dtypes() -> Vec<DType> {
    [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .chain(crate::quant::ALL.map(DType::Quant))
        .collect()
}

/// Every weight dtype's constants ([`dtype_defs`]) for weights in storage buffers and in
/// textures (`W_TEXTURE`): what a weight kernel's `variants()` specialise.
pub fn weight_specs() -> Vec<(DType, ShaderDefs)> {
    weight_specs_of(&weight_dtypes())
}

/// [`weight_specs`] for `dtypes` only (kernels that read some weight types).
pub fn weight_specs_of(dtypes: &[DType]) -> Vec<(DType, ShaderDefs)> {
    let mut out = Vec::new();
    for &dtype in dtypes {
        for textured in [false, true] {
            if let Some(d) = dtype_defs_tex(ShaderDefs::new(), dtype, textured) {
                out.push((dtype, d));
            }
        }
    }
    out
}

/// The constants that tell a kernel how to read a weight of `dtype` (an `array<u32>`
/// binding): `W_HALF` (two 16-bit floats per word) with `W_BF16` (bf16 rather than f16), and
/// `QFORMAT`, `QK`, `QWORDS` for ggml blocks (the shader id, values per block and, for the
/// untiled formats, words per padded block; QFORMAT 0 for f32, f16 and bf16), and `Q_TILE`,
/// the blocks of a tile ([`crate::quant::TILE_BLOCKS`]; see shaders/quant.wgsl).
/// None for a dtype no kernel reads as a weight.
pub fn dtype_defs(defs: ShaderDefs, dtype: DType) -> Option<ShaderDefs> {
    dtype_defs_tex(defs, dtype, false)
}

/// [`dtype_defs`] for a weight in a texture (`textured`, see [`crate::tensor::ChunkData`]) or
/// in storage buffers.
pub fn dtype_defs_tex(defs: ShaderDefs, dtype: DType, textured: bool) -> Option<ShaderDefs> {
    let (qformat, qk, qwords) = match dtype {
        DType::F32 | DType::F16 | DType::BF16 => (0, 32, 1),
        // Tiled formats have no words per block (shaders/quant.wgsl finds a block's fields).
        DType::Quant(q) if q.tiled() => (q.shader_id(), q.block_elems(), 0),
        DType::Quant(q) => (q.shader_id(), q.block_elems(), q.gpu_block_bytes() / 4),
        DType::U32 => return None,
    };
    Some(
        defs.bool("W_HALF", dtype.is_half())
            .bool("W_BF16", dtype == DType::BF16)
            .u32("QFORMAT", qformat)
            .u32("QK", qk as u32)
            .u32("QWORDS", qwords as u32)
            .u32("Q_TILE", crate::quant::TILE_BLOCKS as u32)
            .bool("W_TEXTURE", textured)
            .u32("TEX_WIDTH", crate::device::WEIGHT_TEXTURE_WIDTH as u32),
    )
}

/// [`dtype_defs`] for weight `w`. Fails for a dtype no kernel reads as a weight, and for a
/// quantized weight whose rows are not whole blocks.
pub(crate) fn weight_defs(defs: ShaderDefs, w: &GpuWeight, kernel: &str) -> Result<ShaderDefs> {
    if let DType::Quant(q) = w.dtype {
        let qk = q.block_elems();
        if !w.cols.is_multiple_of(qk) {
            return Err(Error::ShapeMismatch {
                context: format!(
                    "{kernel}: {} weight {}: rows must be whole {qk}-value blocks",
                    w.dtype.name(),
                    w.name
                ),
                expected: vec![w.rows, w.cols.next_multiple_of(qk)],
                got: vec![w.rows, w.cols],
            });
        }
    }
    dtype_defs_tex(defs, w.dtype, w.textured()).ok_or_else(|| {
        Error::Graph(format!(
            "{kernel}: weight {} is u32; weights must be f32, f16, bf16 or a quantized format",
            w.name
        ))
    })
}

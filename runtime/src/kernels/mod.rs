//! Kernels. Each module pairs a WGSL file in shaders/ of the same name with its Rust launcher
//! (`launch`, which builds a [`Dispatch`]) and its CPU reference (`reference`).
//!
//! Binding convention for every kernel: binding 0 is the kernel's own uniform parameters,
//! binding 1 the shared [`Step`] uniform where the kernel reads it, then storage buffers.

pub mod attention;
pub mod copy;
pub mod decode_attention;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod matvec;
pub mod rms_norm;
pub mod rope;
pub mod sample;
pub mod softmax;

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

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
    pub _pad0: u32,
    pub _pad1: u32,
}

/// One recorded kernel launch: replayable as long as its buffers live.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

/// A kernel family: its name (the WGSL file's) and source.
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
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
        let pipeline = gpu.pipeline(self.name, self.source, defs)?;
        let params_buf = gpu.uniform_buffer_init(self.name, bytemuck::bytes_of(params));
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params_buf.as_entire_binding(),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
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
        })
    }
}

macro_rules! kernel {
    ($name:literal) => {
        $crate::kernels::Kernel {
            name: $name,
            source: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
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

/// The WGSL read of weight element `i` from a `array<u32>` binding named `w`, f32 or packed f16.
pub(crate) fn weight_defs(defs: ShaderDefs, dtype: crate::tensor::DType) -> ShaderDefs {
    defs.bool("W_F16", dtype == crate::tensor::DType::F16)
}

//! Copy a run of f32 values with offsets; the destination offset may advance with `Step::pos`
//! (appending to a KV cache).

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct CopyParams {
    pub n: u32,
    pub src_offset: u32,
    pub dst_offset: u32,
    /// Added to the destination offset per cached position (`Step::pos`).
    pub dst_pos_stride: u32,
}

pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    p: CopyParams,
) -> Result<Dispatch> {
    kernel!("copy").dispatch(
        gpu,
        &ShaderDefs::new(),
        &p,
        &[step, src, dst],
        gpu.grid(p.n.div_ceil(256)),
    )
}

pub fn reference(src: &[f32], dst: &mut [f32], p: CopyParams, pos: u32) {
    let d = (p.dst_offset + pos * p.dst_pos_stride) as usize;
    let s = p.src_offset as usize;
    let n = p.n as usize;
    dst[d..d + n].copy_from_slice(&src[s..s + n]);
}

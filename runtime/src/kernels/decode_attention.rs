//! Decode attention: one query per head over the whole KV cache. Its CPU reference is
//! `attention::reference` with one token.

use bytemuck::{Pod, Zeroable};

use super::attention::AttnShape;
use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

pub use super::attention::reference;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    scratch_stride: u32,
    scale: f32,
    _p: [u32; 2],
}

/// `scratch` holds `heads * capacity` floats (the scores of each head).
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    q: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    scratch: &wgpu::Buffer,
    out: &wgpu::Buffer,
    shape: AttnShape,
    capacity: usize,
) -> Result<Dispatch> {
    shape.validate()?;
    let defs = ShaderDefs::new().u32("HEAD_DIM", shape.head_dim as u32);
    let params = Params {
        heads: shape.heads as u32,
        kv_heads: shape.kv_heads as u32,
        q_stride: (shape.heads * shape.head_dim) as u32,
        kv_stride: (shape.kv_heads * shape.head_dim) as u32,
        scratch_stride: capacity as u32,
        scale: shape.scale,
        _p: [0; 2],
    };
    kernel!("decode_attention").dispatch(
        gpu,
        &defs,
        &params,
        &[step, q, k_cache, v_cache, scratch, out],
        [shape.heads as u32, 1, 1],
    )
}

//! Append new key or value rows to a layer's cache at the rows its [`KvLayout`] assigns
//! (linear, ring, or sinks + ring), positions from `Step::pos`.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::kv::KvLayout;
use crate::shader::ShaderDefs;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    width: u32,
    n: u32,
    sinks: u32,
    ring: u32,
}

/// Write `src` [n_tokens, width] into `cache` [layout.rows, width].
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    src: &wgpu::Buffer,
    cache: &wgpu::Buffer,
    layout: KvLayout,
    n_tokens: usize,
    width: usize,
) -> Result<Dispatch> {
    let params = Params {
        width: width as u32,
        n: (n_tokens * width) as u32,
        sinks: layout.sinks as u32,
        ring: layout.ring() as u32,
    };
    kernel!("cache_write").dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[step, src, cache],
        gpu.grid(params.n.div_ceil(256)),
    )
}

pub fn reference(src: &[f32], cache: &mut [f32], layout: KvLayout, pos: usize, width: usize) {
    for (t, row) in src.chunks(width).enumerate() {
        let r = layout.row(pos + t);
        cache[r * width..][..width].copy_from_slice(row);
    }
}

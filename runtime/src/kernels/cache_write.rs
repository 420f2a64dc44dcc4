//! Append new key or value rows to a layer's cache at the rows its [`KvLayout`] assigns
//! (linear, ring, or sinks + ring), positions from `Step::pos`.

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::kv::KvLayout;
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("cache_write", no_variants);

/// Append the rows of `src` [T, W] to `cache` [layout.rows, W] at the current position.
#[derive(Debug)]
pub struct CacheWrite {
    pub src: TensorId,
    pub cache: TensorId,
    pub layout: KvLayout,
}

impl Graph {
    pub fn cache_write(&mut self, src: TensorId, cache: TensorId, layout: KvLayout) -> Result<()> {
        let (s, c) = (self.shape(src), self.shape(cache));
        if s[1] != c[1] || c[0] != layout.rows {
            return Err(mismatch("cache write", &[layout.rows, s[1]], c));
        }
        if let Some(n) = layout.max_chunk.filter(|&n| s[0] > n) {
            return Err(Error::Graph(format!(
                "cache write of {} rows exceeds the ring cache's chunk of {n}",
                s[0]
            )));
        }
        self.push(CacheWrite { src, cache, layout });
        Ok(())
    }
}

impl Op for CacheWrite {
    fn name(&self) -> &'static str {
        "cache_write"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.src], vec![self.cache])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.src);
        let (src, cache) = (cx.buf(self.src)?, cx.buf(self.cache)?);
        let d = launch(cx.gpu(), cx.step(), src, cache, self.layout, s[0], s[1])?;
        cx.push([d]);
        Ok(())
    }
}

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
    KERNEL.dispatch(
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

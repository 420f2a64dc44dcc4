//! Copy a run of f32 values with offsets; the destination offset may advance with `Step::pos`
//! (appending to a KV cache).

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("copy", variants);

/// Plain copies, and the gather of a batched step's pick rows.
pub fn variants() -> Vec<ShaderDefs> {
    [false, true].map(defs).to_vec()
}

fn defs(gather: bool) -> ShaderDefs {
    ShaderDefs::new().bool("GATHER", gather)
}

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
    KERNEL.dispatch(
        gpu,
        &defs(false),
        &p,
        &[step, src, dst],
        gpu.grid(p.n.div_ceil(256)),
    )
}

/// Rows `picks[s].x` of `src` [rows, width] into `dst` [picks, width] (shaders/batch.wgsl).
pub fn launch_gather(
    gpu: &Gpu,
    batch: &wgpu::Buffer,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    picks: usize,
    width: usize,
) -> Result<Dispatch> {
    let p = CopyParams {
        n: (picks * width) as u32,
        src_offset: 0,
        dst_offset: 0,
        dst_pos_stride: width as u32,
    };
    // The gather does not read the step uniform (binding 1 left out).
    let buffers = [None, Some(src), Some(dst), Some(batch)];
    KERNEL.dispatch_resources(
        gpu,
        &defs(true),
        &p,
        &buffers.map(|b| b.map(|b| b.as_entire_binding())),
        gpu.grid(p.n.div_ceil(256)),
    )
}

/// What [`launch_gather`] computes: rows `rows[s]` of `src` [.., width].
pub fn reference_gather(src: &[f32], rows: &[u32], width: usize) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| src[r as usize * width..][..width].iter().copied())
        .collect()
}

pub fn reference(src: &[f32], dst: &mut [f32], p: CopyParams, pos: u32) {
    let d = (p.dst_offset + pos * p.dst_pos_stride) as usize;
    let s = p.src_offset as usize;
    let n = p.n as usize;
    dst[d..d + n].copy_from_slice(&src[s..s + n]);
}

/// The last row of `x` [T, W]: out [1, W].
#[derive(Debug)]
pub struct LastRow {
    pub x: TensorId,
    pub out: TensorId,
}

impl Graph {
    pub fn last_row(&mut self, x: TensorId) -> Result<TensorId> {
        let w = self.shape(x)[1];
        let out = self.activation(vec![1, w]);
        self.push(LastRow { x, out });
        Ok(out)
    }
}

impl Op for LastRow {
    fn name(&self) -> &'static str {
        "last_row"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.x], vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.x);
        let p = CopyParams {
            n: s[1] as u32,
            src_offset: ((s[0] - 1) * s[1]) as u32,
            dst_offset: 0,
            dst_pos_stride: 0,
        };
        let (x, out) = (cx.buf(self.x)?, cx.buf(self.out)?);
        cx.push([launch(cx.gpu(), cx.step(), x, out, p)?]);
        Ok(())
    }
}

/// The rows a batched step samples, one per sequence (see [`Graph::gather_picks`]).
#[derive(Debug)]
pub struct GatherPicks {
    pub x: TensorId,
    pub out: TensorId,
}

impl Graph {
    /// In a batched graph, the pick row of each sequence of `x` [rows, W]: [picks, W].
    pub fn gather_picks(&mut self, x: TensorId) -> Result<TensorId> {
        let picks = match self.batch {
            Some(b) => b.shape.picks,
            None => return Err(Error::Graph("gather_picks outside a batched graph".into())),
        };
        let w = self.shape(x)[1];
        let out = self.activation(vec![picks, w]);
        self.push(GatherPicks { x, out });
        Ok(out)
    }
}

impl Op for GatherPicks {
    fn name(&self) -> &'static str {
        "gather_picks"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.x], vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.out);
        let (x, out) = (cx.buf(self.x)?, cx.buf(self.out)?);
        let d = launch_gather(cx.gpu(), cx.batch()?, x, out, s[0], s[1])?;
        cx.push([d]);
        Ok(())
    }
}

//! Copy a run of f32 values with offsets; the destination offset may advance with `Step::pos`
//! (appending to a KV cache).

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::{Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("copy", no_variants);

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

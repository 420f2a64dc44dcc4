//! Row-wise softmax (used by routers and available to any graph).

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::{Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("softmax", no_variants);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    _p: [u32; 2],
}

pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
) -> Result<Dispatch> {
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        _p: [0; 2],
    };
    KERNEL.dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[x, out],
        gpu.grid(rows as u32),
    )
}

pub fn reference(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - m).exp()).sum();
            row.iter().map(move |v| (v - m).exp() / sum)
        })
        .collect()
}

/// Softmax of each row of `x`.
#[derive(Debug)]
pub struct Softmax {
    pub x: TensorId,
    pub out: TensorId,
}

impl Graph {
    pub fn softmax(&mut self, x: TensorId) -> Result<TensorId> {
        let out = self.activation(self.shape(x).to_vec());
        self.push(Softmax { x, out });
        Ok(out)
    }
}

impl Op for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.x], vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.x);
        let (x, out) = (cx.buf(self.x)?, cx.buf(self.out)?);
        cx.push([launch(cx.gpu(), x, out, s[0], s[1])?]);
        Ok(())
    }
}

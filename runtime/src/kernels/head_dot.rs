//! Per head, a value vector scaled by a dot product: `out[t, h, :] = (a[t, h, :] . b[t, h, :])
//! * v[t, h, :]` with a, b [rows, heads, dk] and v [rows, heads, dv] (RWKV-7's bonus term
//! `((r * r_k) . k) v`).
//!
//! Where [`linear_scan::lanes_on`] (CPU adapters with subgroups of at least 8 lanes),
//! shaders/head_dot_lanes.wgsl forms each product once per (row, head).

use bytemuck::{Pod, Zeroable};

use super::{kernel, linear_scan, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("head_dot", no_variants);
pub const LANES: Kernel = kernel!("head_dot_lanes", no_variants);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    heads: u32,
    dk: u32,
    dv: u32,
}

/// On the lanes kernel where [`linear_scan::lanes_on`].
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    heads: usize,
    dk: usize,
    dv: usize,
) -> Result<Dispatch> {
    let lanes = linear_scan::lanes_on(gpu);
    launch_with(gpu, lanes, a, b, v, out, rows, heads, dk, dv)
}

/// [`launch`] on the lanes kernel or not; the lanes kernel is an error where the adapter
/// lacks subgroups of at least 8 lanes.
#[allow(clippy::too_many_arguments)]
pub fn launch_with(
    gpu: &Gpu,
    lanes: bool,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    heads: usize,
    dk: usize,
    dv: usize,
) -> Result<Dispatch> {
    let n = rows * heads * dv;
    let params = Params {
        n: n as u32,
        heads: heads as u32,
        dk: dk as u32,
        dv: dv as u32,
    };
    if lanes && !linear_scan::runs_lanes(gpu) {
        return Err(Error::Graph(
            "head_dot: the lanes kernel needs subgroups of at least 8 lanes".into(),
        ));
    }
    let (kernel, workgroups) = match lanes {
        true => (LANES, (rows * heads) as u32),
        false => (KERNEL, (n as u32).div_ceil(256)),
    };
    kernel.dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[a, b, v, out],
        gpu.grid(workgroups),
    )
}

/// The same on the CPU (f32 sums in order, as each GPU invocation forms them).
pub fn reference(a: &[f32], b: &[f32], v: &[f32], dk: usize, dv: usize) -> Vec<f32> {
    v.chunks(dv)
        .enumerate()
        .flat_map(|(g, vs)| {
            let s: f32 = (0..dk).map(|j| a[g * dk + j] * b[g * dk + j]).sum();
            vs.iter().map(move |x| s * x)
        })
        .collect()
}

/// Per head, `v` [T, heads * dv] scaled by the dot product of `a` and `b` [T, heads * dk].
#[derive(Debug)]
pub struct HeadDot {
    pub a: TensorId,
    pub b: TensorId,
    pub v: TensorId,
    pub out: TensorId,
    pub heads: usize,
}

impl Graph {
    /// Per head, `v` [T, heads * dv] scaled by the dot product of `a` and `b`
    /// [T, heads * dk] (RWKV-7's `((r * r_k) . k) v`).
    pub fn head_dot(
        &mut self,
        a: TensorId,
        b: TensorId,
        v: TensorId,
        heads: usize,
    ) -> Result<TensorId> {
        let (sa, sv) = (self.shape(a).to_vec(), self.shape(v).to_vec());
        if self.shape(b) != sa.as_slice() {
            return Err(mismatch("head dot", &sa, self.shape(b)));
        }
        if heads == 0
            || sa.len() != 2
            || sv.len() != 2
            || sa[0] != sv[0]
            || !sa[1].is_multiple_of(heads)
            || !sv[1].is_multiple_of(heads)
        {
            return Err(Error::Graph(format!(
                "head dot: {sa:?} and {sv:?} do not split into {heads} heads of the same rows"
            )));
        }
        let out = self.activation(sv);
        self.push(HeadDot {
            a,
            b,
            v,
            out,
            heads,
        });
        Ok(out)
    }
}

impl Op for HeadDot {
    fn name(&self) -> &'static str {
        "head_dot"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.a, self.b, self.v], vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let rows = cx.shape(self.a)[0];
        let dk = cx.shape(self.a)[1] / self.heads;
        let dv = cx.shape(self.v)[1] / self.heads;
        let (a, b, v) = (cx.buf(self.a)?, cx.buf(self.b)?, cx.buf(self.v)?);
        let out = cx.buf(self.out)?;
        cx.push([launch(cx.gpu(), a, b, v, out, rows, self.heads, dk, dv)?]);
        Ok(())
    }
}

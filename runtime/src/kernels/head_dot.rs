//! Per head, a value vector scaled by a dot product: `out[t, h, :] = (a[t, h, :] . b[t, h, :])
//! * v[t, h, :]` with a, b [rows, heads, dk] and v [rows, heads, dv] (RWKV-7's bonus term
//! `((r * r_k) . k) v`).

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    heads: u32,
    dk: u32,
    dv: u32,
}

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
    let n = rows * heads * dv;
    let params = Params {
        n: n as u32,
        heads: heads as u32,
        dk: dk as u32,
        dv: dv as u32,
    };
    kernel!("head_dot").dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[a, b, v, out],
        gpu.grid((n as u32).div_ceil(256)),
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

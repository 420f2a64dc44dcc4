//! Elementwise binary ops: residual add, SwiGLU (`silu(gate) * up`), multiply.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elementwise {
    Add = 0,
    SwiGlu = 1,
    Mul = 2,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _p: [u32; 3],
}

pub fn launch(
    gpu: &Gpu,
    op: Elementwise,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n: usize,
) -> Result<Dispatch> {
    let defs = ShaderDefs::new().u32("OP", op as u32);
    let params = Params {
        n: n as u32,
        _p: [0; 3],
    };
    kernel!("elementwise").dispatch(
        gpu,
        &defs,
        &params,
        &[a, b, out],
        gpu.grid((n as u32).div_ceil(256)),
    )
}

pub fn reference(op: Elementwise, a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| match op {
            Elementwise::Add => x + y,
            Elementwise::SwiGlu => x / (1.0 + (-x).exp()) * y,
            Elementwise::Mul => x * y,
        })
        .collect()
}

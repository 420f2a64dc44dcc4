//! Elementwise ops `out[i] = f(a[i], b[i % b_len])`: b is a's shape or a row vector
//! broadcast over a's rows. Residual add, SwiGLU (`silu(gate) * up`), multiply, subtract,
//! softplus of a sum (Mamba's dt + bias), sigmoid gating, and unary ops (b unused): squared
//! ReLU, tanh, sigmoid, -exp (RWKV-6's log decay), logsigmoid (GLA's log gate).

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
    Sub = 3,
    SoftplusAdd = 4,
    SigmoidMul = 5,
    ReluSquare = 6,
    Tanh = 7,
    Sigmoid = 8,
    NegExp = 9,
    LogSigmoid = 10,
    /// GeGLU: gelu(a) * b with the exact (erf) GELU.
    GeluMul = 11,
}

impl Elementwise {
    pub const ALL: [Elementwise; 12] = [
        Elementwise::Add,
        Elementwise::SwiGlu,
        Elementwise::Mul,
        Elementwise::Sub,
        Elementwise::SoftplusAdd,
        Elementwise::SigmoidMul,
        Elementwise::ReluSquare,
        Elementwise::Tanh,
        Elementwise::Sigmoid,
        Elementwise::NegExp,
        Elementwise::LogSigmoid,
        Elementwise::GeluMul,
    ];

    /// Ops whose b is not read.
    pub fn unary(self) -> bool {
        matches!(
            self,
            Elementwise::ReluSquare
                | Elementwise::Tanh
                | Elementwise::Sigmoid
                | Elementwise::NegExp
                | Elementwise::LogSigmoid
        )
    }

    fn apply(self, x: f32, y: f32) -> f32 {
        match self {
            Elementwise::Add => x + y,
            Elementwise::SwiGlu => x / (1.0 + (-x).exp()) * y,
            Elementwise::Mul => x * y,
            Elementwise::Sub => x - y,
            Elementwise::SoftplusAdd => {
                let z = x + y;
                if z > 20.0 {
                    z
                } else {
                    (1.0 + z.exp()).ln()
                }
            }
            Elementwise::SigmoidMul => y / (1.0 + (-x).exp()),
            Elementwise::ReluSquare => x.max(0.0) * x.max(0.0),
            Elementwise::Tanh => x.tanh(),
            Elementwise::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Elementwise::NegExp => -x.exp(),
            Elementwise::LogSigmoid => x.min(0.0) - (1.0 + (-x.abs()).exp()).ln(),
            Elementwise::GeluMul => {
                let x = x as f64;
                (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32 * y
            }
        }
    }
}

/// erf in f64 for the reference: its Taylor series below 4 (alternating terms up to ~1e7,
/// so about 1e-9 absolute after cancellation), else ±1 (erfc(4) = 1.5e-8).
fn erf(z: f64) -> f64 {
    if z.abs() >= 4.0 {
        return z.signum();
    }
    let (mut term, mut sum) = (z, z);
    for n in 1..200 {
        term *= -z * z / n as f64;
        let next = term / (2 * n + 1) as f64;
        sum += next;
        if next.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    b_len: u32,
    _p: [u32; 2],
}

pub fn launch(
    gpu: &Gpu,
    op: Elementwise,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n: usize,
    b_len: usize,
) -> Result<Dispatch> {
    let defs = ShaderDefs::new().u32("OP", op as u32);
    let params = Params {
        n: n as u32,
        b_len: b_len.max(1) as u32,
        _p: [0; 2],
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
        .enumerate()
        .map(|(i, &x)| op.apply(x, b.get(i % b.len().max(1)).copied().unwrap_or(0.0)))
        .collect()
}

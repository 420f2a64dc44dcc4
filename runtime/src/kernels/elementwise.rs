//! Elementwise ops `out[i] = f(a[i], b[i % b_len])`: b is a's shape or a row vector
//! broadcast over a's rows. Residual add, SwiGLU (`silu(gate) * up`), multiply, subtract,
//! softplus of a sum (Mamba's dt + bias), sigmoid gating, and unary ops (b unused): squared
//! ReLU, tanh, sigmoid, -exp (RWKV-6's log decay), logsigmoid (GLA's log gate). Three more
//! are the epilogues of a prefill Linear op ([`Elementwise::LINEAR_EPILOGUES`]), which no
//! graph builds on its own.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("elementwise", variants);

fn defs(op: Elementwise) -> ShaderDefs {
    ShaderDefs::new().u32("OP", op as u32)
}

/// Every op.
pub fn variants() -> Vec<ShaderDefs> {
    Elementwise::ALL
        .into_iter()
        .chain(Elementwise::LINEAR_EPILOGUES)
        .map(defs)
        .collect()
}

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
    /// SwiGLU of a's interleaved (gate, up) pairs: `out[i] = silu(a[2i]) * a[2i + 1]`, n =
    /// out's length (b unused).
    GluPairs = 12,
    /// `out[i] += a[i]` (b unused).
    Accumulate = 13,
    /// GeGLU of a's interleaved (gate, up) pairs with the tanh GELU (Gemma's
    /// `gelu_pytorch_tanh`): `out[i] = gelu_tanh(a[2i]) * a[2i + 1]`, as GluPairs.
    GeluTanhPairs = 14,
    /// GeGLU with the tanh GELU: `gelu_tanh(a) * b`.
    GeluTanhMul = 15,
    /// Soft-capping to ±b (Gemma 2's final logits): `b * tanh(a / b)`.
    SoftCap = 16,
}

/// The activation of a GLU's gate: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// SwiGLU (Llama, Qwen, ...).
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma).
    GeluTanh,
}

impl Gate {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Gate::Silu => x / (1.0 + (-x).exp()),
            Gate::GeluTanh => {
                // In f64: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
                let x = x as f64;
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                (0.5 * x * (1.0 + inner.tanh())) as f32
            }
        }
    }

    /// The prefill Linear op's epilogue over row pairs.
    pub fn pairs(self) -> Elementwise {
        match self {
            Gate::Silu => Elementwise::GluPairs,
            Gate::GeluTanh => Elementwise::GeluTanhPairs,
        }
    }

    /// `act(a) * b` for a gate and an up tensor apart.
    pub fn mul(self) -> Elementwise {
        match self {
            Gate::Silu => Elementwise::SwiGlu,
            Gate::GeluTanh => Elementwise::GeluTanhMul,
        }
    }
}

impl Elementwise {
    pub const ALL: [Elementwise; 14] = [
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
        Elementwise::GeluTanhMul,
        Elementwise::SoftCap,
    ];

    /// The ops only kernels::linear launches (not in [`Elementwise::ALL`]: their operands
    /// are not a and b of one shape).
    pub const LINEAR_EPILOGUES: [Elementwise; 3] = [
        Elementwise::GluPairs,
        Elementwise::Accumulate,
        Elementwise::GeluTanhPairs,
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

    pub(crate) fn apply(self, x: f32, y: f32) -> f32 {
        match self {
            Elementwise::Add => x + y,
            Elementwise::SwiGlu => Gate::Silu.apply(x) * y,
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
            // Per pair or in place: see reference_glu_pairs and the accumulate case.
            Elementwise::GluPairs => Elementwise::SwiGlu.apply(x, y),
            Elementwise::GeluTanhPairs | Elementwise::GeluTanhMul => Gate::GeluTanh.apply(x) * y,
            Elementwise::SoftCap => (y as f64 * (x as f64 / y as f64).tanh()) as f32,
            Elementwise::Accumulate => x + y,
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
    let params = Params {
        n: n as u32,
        b_len: b_len.max(1) as u32,
        _p: [0; 2],
    };
    KERNEL.dispatch(
        gpu,
        &defs(op),
        &params,
        &[a, b, out],
        gpu.grid((n as u32).div_ceil(256)),
    )
}

/// [`Elementwise::GluPairs`] (or [`Elementwise::GeluTanhPairs`]: `gate`) of `a`.
pub fn reference_glu_pairs(a: &[f32], gate: Gate) -> Vec<f32> {
    a.chunks(2).map(|p| gate.apply(p[0]) * p[1]).collect()
}

pub fn reference(op: Elementwise, a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter()
        .enumerate()
        .map(|(i, &x)| op.apply(x, b.get(i % b.len().max(1)).copied().unwrap_or(0.0)))
        .collect()
}

/// `out = kind(a, b)`, b of a's shape or a row vector of its width.
#[derive(Debug)]
pub struct ElementwiseOp {
    pub kind: Elementwise,
    pub a: TensorId,
    pub b: TensorId,
    pub out: TensorId,
}

impl Graph {
    /// `op` of a and b, where b has a's shape or is a row vector of a's width (broadcast
    /// over a's rows).
    pub fn elementwise(&mut self, op: Elementwise, a: TensorId, b: TensorId) -> Result<TensorId> {
        if Elementwise::LINEAR_EPILOGUES.contains(&op) {
            return Err(Error::Graph(format!("{op:?} is a Linear op's epilogue")));
        }
        let width = *self.shape(a).last().unwrap_or(&0);
        let row_vector = self.numel(b) == width;
        if self.shape(a) != self.shape(b) && !row_vector {
            return Err(mismatch(&format!("{op:?}"), self.shape(a), self.shape(b)));
        }
        let out = self.activation(self.shape(a).to_vec());
        self.push(ElementwiseOp {
            kind: op,
            a,
            b,
            out,
        });
        Ok(out)
    }

    /// A unary op ([`Elementwise::unary`]) of a.
    pub fn unary(&mut self, op: Elementwise, a: TensorId) -> Result<TensorId> {
        if !op.unary() {
            return Err(Error::Graph(format!("{op:?} takes two inputs")));
        }
        self.elementwise(op, a, a)
    }

    pub fn add_tensors(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.elementwise(Elementwise::Add, a, b)
    }

    pub fn swiglu(&mut self, gate: TensorId, up: TensorId) -> Result<TensorId> {
        self.elementwise(Elementwise::SwiGlu, gate, up)
    }
}

impl Op for ElementwiseOp {
    fn name(&self) -> &'static str {
        "elementwise"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.a, self.b], vec![self.out])
    }

    fn as_elementwise(&self) -> Option<&ElementwiseOp> {
        Some(self)
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let (n, b_len) = (cx.numel(self.a), cx.numel(self.b));
        let (a, b, out) = (cx.buf(self.a)?, cx.buf(self.b)?, cx.buf(self.out)?);
        cx.push([launch(cx.gpu(), self.kind, a, b, out, n, b_len)?]);
        Ok(())
    }
}

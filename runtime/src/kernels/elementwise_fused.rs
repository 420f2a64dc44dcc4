//! A chain of elementwise ops in one dispatch (shaders/elementwise_fused.wgsl): the ops a
//! graph builds one by one (an RWKV token-shift mix is a multiply then an add; a gate is a
//! sigmoid, a subtract, a multiply and an add) run as one pass that keeps the intermediate
//! values in registers. The graph's fusion pass (runtime/src/fusion.rs) builds these from
//! [`ElementwiseOp`](super::elementwise::ElementwiseOp)s; each step is the same WGSL function
//! the plain kernel runs.

use bytemuck::{Pod, Zeroable};

use super::elementwise::Elementwise;
use super::{kernel, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::TensorId;
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("elementwise_fused", variants);

/// Inputs one chain may read (storage bindings: with the output, 7 of the 8 WebGPU
/// guarantees per stage).
pub const MAX_INPUTS: usize = 6;
/// Steps one chain may hold.
pub const MAX_STEPS: usize = 8;

/// Where a step's operand comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// Input j of the chain (the output's length, or a row vector broadcast over its rows).
    Input(usize),
    /// The value of an earlier step.
    Step(usize),
}

/// `op(a, b)` for every element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusedStep {
    pub op: Elementwise,
    pub a: Operand,
    pub b: Operand,
}

const OP: [&str; MAX_STEPS] = ["OP0", "OP1", "OP2", "OP3", "OP4", "OP5", "OP6", "OP7"];
const A: [&str; MAX_STEPS] = ["A0", "A1", "A2", "A3", "A4", "A5", "A6", "A7"];
const B: [&str; MAX_STEPS] = ["B0", "B1", "B2", "B3", "B4", "B5", "B6", "B7"];

fn code(o: Operand) -> u32 {
    match o {
        Operand::Input(j) => j as u32,
        Operand::Step(k) => 8 + k as u32,
    }
}

fn defs(steps: &[FusedStep]) -> ShaderDefs {
    let mut d = ShaderDefs::new().u32("STEPS", steps.len() as u32);
    for k in 0..MAX_STEPS {
        // Steps past the last are never run; their constants only have to exist.
        let s = steps.get(k).copied().unwrap_or(FusedStep {
            op: Elementwise::Add,
            a: Operand::Input(0),
            b: Operand::Input(0),
        });
        d = d
            .u32(OP[k], s.op as u32)
            .u32(A[k], code(s.a))
            .u32(B[k], code(s.b));
    }
    d
}

/// Representative chains: each op, then an add of another input to its value.
pub fn variants() -> Vec<ShaderDefs> {
    Elementwise::ALL
        .into_iter()
        .map(|op| {
            defs(&[
                FusedStep {
                    op,
                    a: Operand::Input(0),
                    b: Operand::Input(1),
                },
                FusedStep {
                    op: Elementwise::Add,
                    a: Operand::Step(0),
                    b: Operand::Input(2),
                },
            ])
        })
        .collect()
}

/// Check a chain: 1..=MAX_STEPS steps of the plain ops, operands that exist (earlier steps,
/// inputs below `inputs`), at most MAX_INPUTS inputs.
pub fn check(steps: &[FusedStep], inputs: usize) -> Result<()> {
    let bad = |why: String| Err(Error::Graph(format!("fused elementwise chain: {why}")));
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return bad(format!("{} steps (1 to {MAX_STEPS})", steps.len()));
    }
    if inputs == 0 || inputs > MAX_INPUTS {
        return bad(format!("{inputs} inputs (1 to {MAX_INPUTS})"));
    }
    for (k, s) in steps.iter().enumerate() {
        if !Elementwise::ALL.contains(&s.op) {
            return bad(format!(
                "step {k} is {:?}, not a plain elementwise op",
                s.op
            ));
        }
        for o in [s.a, s.b] {
            let ok = match o {
                Operand::Input(j) => j < inputs,
                Operand::Step(j) => j < k,
            };
            if !ok {
                return bad(format!("step {k} reads {o:?}"));
            }
        }
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _p: [u32; 3],
    lens: [u32; 8],
}

/// `out[i]` = the last step's value at element i < n; `inputs` are buffers with their
/// lengths (n, or a row width that divides n).
pub fn launch(
    gpu: &Gpu,
    steps: &[FusedStep],
    inputs: &[(&wgpu::Buffer, usize)],
    out: &wgpu::Buffer,
    n: usize,
) -> Result<Dispatch> {
    check(steps, inputs.len())?;
    let mut lens = [1u32; 8];
    let mut buffers = Vec::with_capacity(MAX_INPUTS + 1);
    for (j, slot) in lens.iter_mut().take(MAX_INPUTS).enumerate() {
        // Unused bindings repeat the first input (never read).
        let (b, len) = inputs.get(j).copied().unwrap_or(inputs[0]);
        *slot = len.max(1) as u32;
        buffers.push(b);
    }
    buffers.push(out);
    let params = Params {
        n: n as u32,
        _p: [0; 3],
        lens,
    };
    KERNEL.dispatch(
        gpu,
        &defs(steps),
        &params,
        &buffers,
        gpu.grid((n as u32).div_ceil(256)),
    )
}

/// The chain on the CPU, step by step with [`Elementwise::apply`]: what the plain ops give.
pub fn reference(steps: &[FusedStep], inputs: &[&[f32]], n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut v = [0.0f32; MAX_STEPS];
            for (k, s) in steps.iter().enumerate() {
                let get = |o: Operand| match o {
                    Operand::Input(j) => inputs[j][i % inputs[j].len()],
                    Operand::Step(m) => v[m],
                };
                v[k] = s.op.apply(get(s.a), get(s.b));
            }
            v[steps.len() - 1]
        })
        .collect()
}

/// A chain of elementwise ops over `inputs`, written to `out`.
#[derive(Debug)]
pub struct FusedElementwiseOp {
    pub inputs: Vec<TensorId>,
    pub steps: Vec<FusedStep>,
    pub out: TensorId,
}

impl Op for FusedElementwiseOp {
    fn name(&self) -> &'static str {
        "elementwise_fused"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (self.inputs.clone(), vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let n = cx.numel(self.out);
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for &t in &self.inputs {
            inputs.push((cx.buf(t)?, cx.numel(t)));
        }
        let out = cx.buf(self.out)?;
        cx.push([launch(cx.gpu(), &self.steps, &inputs, out, n)?]);
        Ok(())
    }
}

//! Linear layers and the gated MLP of Llama-style blocks.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::GResult;
use crate::error::Result;
use crate::vars::Vars;

/// `x @ w^T (+ bias)` with weights from the model.
pub(crate) fn lin(
    g: &mut Graph,
    x: TensorId,
    w: &Arc<GpuWeight>,
    bias: Option<&Arc<GpuWeight>>,
) -> GResult<TensorId> {
    let w = g.weight(w);
    let b = bias.map(|b| g.weight(b));
    g.linear(x, w, b)
}

/// The gate, up and down projections' tensor names in a checkpoint.
pub type MlpNames = [&'static str; 3];

/// Hugging Face's names (Llama, Qwen2, GLA, Qwen2-MoE's shared expert, ...).
pub const MLP: MlpNames = ["gate_proj.weight", "up_proj.weight", "down_proj.weight"];

/// The SwiGLU MLP `down(silu(gate(h)) * up(h))`.
#[derive(Clone)]
pub struct Mlp {
    gate: Arc<GpuWeight>,
    up: Arc<GpuWeight>,
    down: Arc<GpuWeight>,
}

impl Mlp {
    /// The three projections in scope `vb`, named `names`.
    pub fn load(vb: &Vars<'_>, names: MlpNames, intermediate: usize, hidden: usize) -> Result<Mlp> {
        let [gate, up, down] = names;
        Ok(Mlp {
            gate: vb.matrix(gate, intermediate, hidden)?,
            up: vb.matrix(up, intermediate, hidden)?,
            down: vb.matrix(down, hidden, intermediate)?,
        })
    }

    pub fn apply(&self, g: &mut Graph, h: TensorId) -> GResult<TensorId> {
        let gate = lin(g, h, &self.gate, None)?;
        let up = lin(g, h, &self.up, None)?;
        let act = g.swiglu(gate, up)?;
        lin(g, act, &self.down, None)
    }
}

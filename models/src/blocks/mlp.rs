//! Linear layers and the gated MLP of Llama-style blocks.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Gate;
use kestrel_runtime::kernels::linear::{LinearInput, LinearOutput};
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::norm::RmsNorm;
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

/// `residual += x @ w^T`, in place (the residual stream; at decode the add runs in the
/// matvec's epilogue). Returns `residual`.
pub(crate) fn lin_into(
    g: &mut Graph,
    x: TensorId,
    w: &Arc<GpuWeight>,
    residual: TensorId,
) -> GResult<TensorId> {
    let w = g.weight(w);
    g.linear_fused(
        x,
        w,
        None,
        LinearInput::Plain,
        LinearOutput::AddTo(residual),
    )
}

/// The gate, up and down projections' tensor names in a checkpoint.
pub type MlpNames = [&'static str; 3];

/// Hugging Face's names (Llama, Qwen2, GLA, Qwen2-MoE's shared expert, ...).
pub const MLP: MlpNames = ["gate_proj.weight", "up_proj.weight", "down_proj.weight"];

/// The gate and up projections.
#[derive(Clone)]
enum GateUp {
    /// One weight of interleaved (gate row i, up row i) pairs: one matvec with SwiGLU in its
    /// epilogue at decode.
    Pairs(Arc<GpuWeight>),
    /// Apart (the file stores them in different dtypes).
    Apart(Arc<GpuWeight>, Arc<GpuWeight>),
}

/// The gated MLP `down(act(gate(h)) * up(h))`: SwiGLU, or GeGLU with the tanh GELU.
#[derive(Clone)]
pub struct Mlp {
    gate_up: GateUp,
    down: Arc<GpuWeight>,
    act: Gate,
}

impl Mlp {
    /// The three projections in scope `vb`, named `names`.
    pub fn load(vb: &Vars<'_>, names: MlpNames, intermediate: usize, hidden: usize) -> Result<Mlp> {
        let [gate, up, down] = names;
        let parts = [(gate, intermediate), (up, intermediate)];
        let pairs = vb.concat_matrices("gate_up.weight", &parts, hidden, true)?;
        // A weight split into chunks must keep each pair in one (the matvec's epilogue).
        let pairs = pairs.filter(|w| w.chunks.iter().all(|c| c.row_start % 2 + c.rows % 2 == 0));
        let gate_up = match pairs {
            Some(w) => GateUp::Pairs(w),
            None => GateUp::Apart(
                vb.matrix(gate, intermediate, hidden)?,
                vb.matrix(up, intermediate, hidden)?,
            ),
        };
        Ok(Mlp {
            gate_up,
            down: vb.matrix(down, hidden, intermediate)?,
            act: Gate::Silu,
        })
    }

    /// The same MLP with `act` as its gate's activation.
    pub fn with_gate(self, act: Gate) -> Mlp {
        Mlp { act, ..self }
    }

    /// The MLP of `h` [T, hidden].
    pub fn apply(&self, g: &mut Graph, h: TensorId) -> GResult<TensorId> {
        self.forward(g, h, LinearInput::Plain, LinearOutput::New)
    }

    /// `mlp(norm(x))` as a new tensor (no norm: of x itself), for blocks that normalise the
    /// output before the residual add.
    pub fn normed(&self, g: &mut Graph, x: TensorId, norm: Option<&RmsNorm>) -> GResult<TensorId> {
        let (h, input) = match norm {
            Some(n) => n.for_linears(g, x, self.projections())?,
            None => (x, LinearInput::Plain),
        };
        self.forward(g, h, input, LinearOutput::New)
    }

    fn projections(&self) -> usize {
        match self.gate_up {
            GateUp::Pairs(_) => 1,
            GateUp::Apart(..) => 2,
        }
    }

    /// `x + mlp(norm(x))`, added into the residual stream `x` in place; returns x.
    pub fn residual(&self, g: &mut Graph, x: TensorId, norm: &RmsNorm) -> GResult<TensorId> {
        let (h, input) = norm.for_linears(g, x, self.projections())?;
        self.forward(g, h, input, LinearOutput::AddTo(x))
    }

    fn forward(
        &self,
        g: &mut Graph,
        h: TensorId,
        input: LinearInput,
        output: LinearOutput,
    ) -> GResult<TensorId> {
        let act = match &self.gate_up {
            GateUp::Pairs(w) => {
                let w = g.weight(w);
                g.linear_fused(h, w, None, input, LinearOutput::Glu(self.act))?
            }
            GateUp::Apart(gate, up) => {
                let (gate, up) = (g.weight(gate), g.weight(up));
                let gate = g.linear_fused(h, gate, None, input, LinearOutput::New)?;
                let up = g.linear_fused(h, up, None, input, LinearOutput::New)?;
                g.elementwise(self.act.mul(), gate, up)?
            }
        };
        let down = g.weight(&self.down);
        g.linear_fused(act, down, None, LinearInput::Plain, output)
    }
}

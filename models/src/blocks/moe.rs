//! The sparse mixture-of-experts feed-forward block, shared by every MoE network (Mixtral,
//! Qwen2-MoE, Jamba): a router, top-k experts that are SwiGLU MLPs, and optionally a shared
//! expert gated by a sigmoid (Qwen2-MoE). On the GPU: router linear, `moe_route` (softmax,
//! top-k, renormalisation), `moe_permute` (rows sorted by expert), grouped matmuls that read
//! only experts with tokens, `moe_combine`. Each layer counts its tokens per expert in a
//! counter state (`moe.{layer}.counts`) that `kestrel bench` reports.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Gate;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::mlp::{lin, Mlp, MlpNames, MLP};
use super::norm::RmsNorm;
use super::GResult;
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::vars::Vars;

/// How a family configures its experts.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub experts: usize,
    pub top_k: usize,
    /// Each expert's intermediate size.
    pub intermediate: usize,
    /// Divide the chosen experts' probabilities by their sum.
    pub renormalize: bool,
    /// The shared expert's intermediate size (Qwen2-MoE).
    pub shared: Option<usize>,
}

impl MoeConfig {
    /// Read the expert count from `experts_key`, `num_experts_per_tok`, and check them.
    pub fn from_json(
        c: &JsonConfig,
        experts_key: &str,
        intermediate: usize,
        renormalize: bool,
        shared: Option<usize>,
    ) -> Result<MoeConfig> {
        let experts = c.dim(experts_key, Dim::Experts)?;
        let top_k = c.dim("num_experts_per_tok", Dim::Experts)?;
        if top_k > experts {
            return Err(ModelError::BadConfigValue {
                file: c.path.clone(),
                key: "num_experts_per_tok".into(),
                message: format!("({top_k}) is larger than {experts_key} ({experts})"),
            });
        }
        Ok(MoeConfig {
            experts,
            top_k,
            intermediate,
            renormalize,
            shared,
        })
    }
}

/// Tensor names of a family's MoE block in its scope (e.g. `model.layers.3.mlp`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeNames {
    pub router: &'static str,
    /// Per expert (in scope `experts.{e}`, or stacked in scope `experts`): gate, up and down.
    pub projections: MlpNames,
}

/// Mixtral: `block_sparse_moe.gate`, `experts.{e}.w1/w3/w2`.
pub const MIXTRAL: MoeNames = MoeNames {
    router: "gate.weight",
    projections: ["w1.weight", "w3.weight", "w2.weight"],
};
/// Qwen2-MoE: `mlp.gate`, `experts.{e}.gate_proj/up_proj/down_proj`.
pub const QWEN2_MOE: MoeNames = MoeNames {
    router: "gate.weight",
    projections: MLP,
};
/// Jamba: `feed_forward.router`, `experts.{e}.gate_proj/up_proj/down_proj`.
pub const JAMBA: MoeNames = MoeNames {
    router: "router.weight",
    projections: MLP,
};

struct SharedExpert {
    mlp: Mlp,
    gate: Arc<GpuWeight>,
}

/// One layer's experts on the GPU.
pub struct MoeBlock {
    config: MoeConfig,
    layer: usize,
    router: Arc<GpuWeight>,
    /// Gate, up and down, each every expert's matrix stacked by rows.
    experts: [Arc<GpuWeight>; 3],
    shared: Option<SharedExpert>,
}

/// The counter state of layer `layer`'s tokens per expert.
pub fn counts_name(layer: usize) -> String {
    format!("moe.{layer}.counts")
}

impl MoeBlock {
    /// The block in scope `vb` (e.g. `model.layers.3.mlp`).
    pub fn load(
        vb: &Vars<'_>,
        config: &MoeConfig,
        names: MoeNames,
        layer: usize,
        hidden: usize,
    ) -> Result<MoeBlock> {
        let c = config;
        let [gate, up, down] = names.projections;
        let e = vb.pp("experts");
        let experts = [
            e.experts(gate, c.experts, c.intermediate, hidden)?,
            e.experts(up, c.experts, c.intermediate, hidden)?,
            e.experts(down, c.experts, hidden, c.intermediate)?,
        ];
        // After the experts, so a config with more experts than the file names the missing one.
        let router = vb.matrix(names.router, c.experts, hidden)?;
        let shared = match c.shared {
            None => None,
            Some(n) => Some(SharedExpert {
                mlp: Mlp::load(&vb.pp("shared_expert"), MLP, n, hidden)?,
                gate: vb.matrix("shared_expert_gate.weight", 1, hidden)?,
            }),
        };
        Ok(MoeBlock {
            config: c.clone(),
            layer,
            router,
            experts,
            shared,
        })
    }

    /// Bytes of expert weights one token does not read: (experts - k) / experts of them.
    pub fn unread_bytes_per_token(&self) -> u64 {
        let all: u64 = self.experts.iter().map(|w| w.bytes()).sum();
        let c = &self.config;
        all / c.experts as u64 * (c.experts - c.top_k) as u64
    }

    /// The block's counter state.
    pub fn state(&self) -> StateSpec {
        StateSpec::counters(counts_name(self.layer), self.config.experts)
    }

    /// The block over `h` [T, hidden]: [T, hidden], or added into `residual` in place.
    pub fn build(
        &self,
        g: &mut Graph,
        h: TensorId,
        residual: Option<TensorId>,
    ) -> GResult<TensorId> {
        let c = &self.config;
        let t = g.shape(h)[0];
        let logits = lin(g, h, &self.router, None)?;
        let route = g.moe_route(logits, c.top_k, c.renormalize)?;
        let counts = g.counters(&counts_name(self.layer), c.experts);
        let perm = g.moe_permute(route, c.experts, counts)?;
        let [gw, uw, dw] = self.experts.each_ref().map(|w| g.weight(w));
        let gate = g.moe_linear(h, gw, perm, t, c.top_k, true)?;
        let up = g.moe_linear(h, uw, perm, t, c.top_k, true)?;
        let act = g.swiglu(gate, up)?;
        let y = g.moe_linear(act, dw, perm, t, c.top_k, false)?;
        let shared = match &self.shared {
            None => None,
            Some(s) => Some((s.mlp.apply(g, h)?, lin(g, h, &s.gate, None)?)),
        };
        match residual {
            Some(x) => g.moe_combine_into(y, route, perm, shared, x),
            None => g.moe_combine(y, route, perm, shared),
        }
    }
}

/// A layer's feed-forward block: a dense SwiGLU MLP or sparse experts.
#[derive(Clone)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(Arc<MoeBlock>),
}

impl FeedForward {
    /// Experts named `names` when `moe` is given, else the dense MLP named `dense`, in scope
    /// `vb`.
    pub fn load(
        vb: &Vars<'_>,
        moe: Option<(&MoeConfig, MoeNames)>,
        dense: MlpNames,
        layer: usize,
        [hidden, intermediate]: [usize; 2],
    ) -> Result<FeedForward> {
        Ok(match moe {
            Some((c, names)) => {
                FeedForward::Moe(Arc::new(MoeBlock::load(vb, c, names, layer, hidden)?))
            }
            None => FeedForward::Dense(Mlp::load(vb, dense, intermediate, hidden)?),
        })
    }

    pub fn build(&self, g: &mut Graph, h: TensorId) -> GResult<TensorId> {
        match self {
            FeedForward::Dense(mlp) => mlp.apply(g, h),
            FeedForward::Moe(m) => m.build(g, h, None),
        }
    }

    /// `block(norm(x))` as a new tensor (no norm: of x itself).
    pub fn normed(&self, g: &mut Graph, x: TensorId, norm: Option<&RmsNorm>) -> GResult<TensorId> {
        match self {
            FeedForward::Dense(mlp) => mlp.normed(g, x, norm),
            FeedForward::Moe(m) => {
                let h = match norm {
                    Some(n) => n.apply(g, x)?,
                    None => x,
                };
                m.build(g, h, None)
            }
        }
    }

    /// The dense MLP's gate activation (experts keep SwiGLU).
    pub fn with_gate(self, act: Gate) -> FeedForward {
        match self {
            FeedForward::Dense(mlp) => FeedForward::Dense(mlp.with_gate(act)),
            moe => moe,
        }
    }

    /// `x + block(norm(x))`, in place into the residual stream `x`: a dense MLP's
    /// projections take the norm and the add ([`Mlp::residual`]); experts' combine takes the
    /// add.
    pub fn residual(&self, g: &mut Graph, x: TensorId, norm: &RmsNorm) -> GResult<TensorId> {
        match self {
            FeedForward::Dense(mlp) => mlp.residual(g, x, norm),
            FeedForward::Moe(m) => {
                let h = norm.apply(g, x)?;
                m.build(g, h, Some(x))
            }
        }
    }

    pub fn unread_bytes_per_token(&self) -> u64 {
        match self {
            FeedForward::Dense(_) => 0,
            FeedForward::Moe(m) => m.unread_bytes_per_token(),
        }
    }

    /// The expert counters, for a sparse block.
    pub fn state(&self) -> Option<StateSpec> {
        match self {
            FeedForward::Dense(_) => None,
            FeedForward::Moe(m) => Some(m.state()),
        }
    }
}

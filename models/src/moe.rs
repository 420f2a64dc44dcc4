//! The sparse mixture-of-experts feed-forward block, shared by every MoE network (Mixtral,
//! Qwen2-MoE, Jamba): a router, top-k experts that are SwiGLU MLPs, and optionally a shared
//! expert gated by a sigmoid (Qwen2-MoE). On the GPU: router linear, `moe_route` (softmax,
//! top-k, renormalisation), `moe_permute` (rows sorted by expert), grouped matmuls that read
//! only experts with tokens, `moe_combine`. Each layer counts its tokens per expert in a
//! counter state (`moe.{layer}.counts`) that `kestrel bench` reports.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use crate::config::JsonConfig;
use crate::error::{ModelError, Result};
use crate::weights::Uploader;

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
        let experts = c.positive(experts_key)?;
        let top_k = c.positive("num_experts_per_tok")?;
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

/// Tensor names of a family's MoE block under its prefix (e.g. `model.layers.3.mlp`).
#[derive(Debug, Clone, Copy)]
pub struct MoeNames {
    pub router: &'static str,
    /// Per expert: gate, up and down projections (`experts.{e}.{name}.weight`).
    pub projections: [&'static str; 3],
}

/// Mixtral: `block_sparse_moe.gate`, `experts.{e}.w1/w3/w2`.
pub const MIXTRAL: MoeNames = MoeNames {
    router: "gate",
    projections: ["w1", "w3", "w2"],
};
/// Qwen2-MoE: `mlp.gate`, `experts.{e}.gate_proj/up_proj/down_proj`.
pub const QWEN2_MOE: MoeNames = MoeNames {
    router: "gate",
    projections: ["gate_proj", "up_proj", "down_proj"],
};
/// Jamba: `feed_forward.router`, `experts.{e}.gate_proj/up_proj/down_proj`.
pub const JAMBA: MoeNames = MoeNames {
    router: "router",
    projections: ["gate_proj", "up_proj", "down_proj"],
};

struct SharedExpert {
    mlp: [Arc<GpuWeight>; 3],
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
    pub fn load(
        up: &mut Uploader<'_>,
        config: &MoeConfig,
        names: MoeNames,
        prefix: &str,
        layer: usize,
        hidden: usize,
    ) -> Result<MoeBlock> {
        let c = config;
        let [gate, upp, down] = names.projections;
        let mut load = |proj: &str, rows: usize, cols: usize| {
            up.experts(
                &format!("{prefix}.experts.{proj}.weight"),
                |e| format!("{prefix}.experts.{e}.{proj}.weight"),
                c.experts,
                rows,
                cols,
            )
        };
        let experts = [
            load(gate, c.intermediate, hidden)?,
            load(upp, c.intermediate, hidden)?,
            load(down, hidden, c.intermediate)?,
        ];
        // After the experts, so a config with more experts than the file names the missing one.
        let router = up.matrix(
            &format!("{prefix}.{}.weight", names.router),
            c.experts,
            hidden,
        )?;
        let shared = match c.shared {
            None => None,
            Some(n) => {
                let p = format!("{prefix}.shared_expert");
                Some(SharedExpert {
                    mlp: [
                        up.matrix(&format!("{p}.gate_proj.weight"), n, hidden)?,
                        up.matrix(&format!("{p}.up_proj.weight"), n, hidden)?,
                        up.matrix(&format!("{p}.down_proj.weight"), hidden, n)?,
                    ],
                    gate: up.matrix(&format!("{prefix}.shared_expert_gate.weight"), 1, hidden)?,
                })
            }
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

    /// The block over `h` [T, hidden]: [T, hidden].
    pub fn build(&self, g: &mut Graph, h: TensorId) -> kestrel_runtime::Result<TensorId> {
        let c = &self.config;
        let t = g.shape(h)[0];
        let logits = crate::lin(g, h, &self.router, None)?;
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
            Some(s) => {
                let [a, b, d] = &s.mlp;
                let out = crate::swiglu_mlp(g, h, [a, b, d])?;
                Some((out, crate::lin(g, h, &s.gate, None)?))
            }
        };
        g.moe_combine(y, route, perm, shared)
    }
}

/// A layer's feed-forward block: a dense SwiGLU MLP or sparse experts.
#[derive(Clone)]
pub(crate) enum FeedForward {
    /// gate, up, down.
    Dense([Arc<GpuWeight>; 3]),
    Moe(Arc<MoeBlock>),
}

impl FeedForward {
    /// Experts when `moe` is given, else the dense MLP under `{prefix}.{dense_name}`.
    pub fn load(
        up: &mut Uploader<'_>,
        moe: Option<(&MoeConfig, MoeNames)>,
        prefix: &str,
        layer: usize,
        hidden: usize,
        intermediate: usize,
    ) -> Result<FeedForward> {
        Ok(match moe {
            Some((c, names)) => FeedForward::Moe(Arc::new(MoeBlock::load(
                up, c, names, prefix, layer, hidden,
            )?)),
            None => FeedForward::Dense(crate::dense_mlp(up, prefix, intermediate, hidden)?),
        })
    }

    pub fn build(&self, g: &mut Graph, h: TensorId) -> kestrel_runtime::Result<TensorId> {
        match self {
            FeedForward::Dense([gate, up, down]) => crate::swiglu_mlp(g, h, [gate, up, down]),
            FeedForward::Moe(m) => m.build(g, h),
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

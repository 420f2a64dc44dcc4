//! Gated linear attention (fla's `GLAForCausalLM`, config model_type `gla`): per layer
//! RMSNorm, the GLA mixer, RMSNorm and a SwiGLU MLP. The mixer projects q, k, v, an output
//! gate g and a low-rank forget gate gk; the recurrence (kernels::linear_scan, one decay per
//! key dim) runs with `log w = logsigmoid(gk) / 16` and q scaled by 1/sqrt(head_k_dim); each
//! head's output is RMS-normalised, gated by swish(g) and projected back.
//!
//! Options fla offers that change the network (short convolutions, a feature map, clamped
//! gates, grouped k/v heads, value gates, hybrid attention layers) are refused with a clear
//! error rather than run wrongly.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::linear_scan::{Decay, ScanShape};
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};
use kestrel_runtime::TensorId;

use super::{Family, Network, NetworkConfig};
use crate::blocks::lm_head::LmHead;
use crate::blocks::mlp::{lin, Mlp, MLP};
use crate::blocks::norm::RmsNorm;
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::formats::config::keys::{why, ConfigKey};
use crate::model::ModelConfig;
use crate::vars::Vars;

pub const ARCHITECTURE: &str = "GLAForCausalLM";

pub const FAMILY: Family = Family {
    classes: &[ARCHITECTURE],
    model_types: &["gla"],
    gguf: &[],
    parse: Some(|c| Ok(Box::new(GlaConfig::from_json(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys fla's GLAConfig and GLAForCausalLM read.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("num_hidden_layers", "1"),
    ConfigKey::honoured("num_heads", "2"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("expand_k", "1.0"),
    ConfigKey::honoured("expand_v", "0.5"),
    ConfigKey::honoured("hidden_ratio", "8"),
    ConfigKey::honoured("intermediate_size", "64"),
    ConfigKey::honoured("gate_low_rank_dim", "8"),
    ConfigKey::honoured("norm_eps", "0.001"),
    ConfigKey::honoured("use_output_gate", "false"),
    // Names the output norm (g_norm_swish_gate fused with the gate, else g_norm): the same
    // function either way.
    ConfigKey::honoured("fuse_norm", "false"),
    ConfigKey::honoured("tie_word_embeddings", "true"),
    // Grouped k/v heads: only as many as the heads.
    ConfigKey::refused("num_kv_heads", "2"),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    ConfigKey::refused("use_short_conv", "true"),
    ConfigKey::refused("use_gv", "true"),
    ConfigKey::refused("use_gk", "false"),
    ConfigKey::refused("feature_map", "\"relu\""),
    ConfigKey::refused("clamp_min", "-5.0"),
    ConfigKey::refused("attn", r#"{"layers": [1], "num_heads": 4}"#),
    ConfigKey::refused("attnres_block_size", "4"),
    ConfigKey::refused("elementwise_affine", "false"),
    ConfigKey::inert("conv_size", "read only with use_short_conv, which is refused"),
    ConfigKey::inert("attn_mode", why::FUSED),
    ConfigKey::inert("fuse_swiglu", why::FUSED),
    ConfigKey::inert("fuse_cross_entropy", why::TRAINING),
    ConfigKey::inert("fuse_linear_cross_entropy", why::TRAINING),
    ConfigKey::inert("use_l2warp", why::TRAINING),
    ConfigKey::inert("max_position_embeddings", why::POSITIONS),
];


/// fla's default: gate logits are divided by this before use as log-decays.
const GATE_LOGIT_NORMALIZER: f32 = 16.0;

#[derive(Debug, Clone, PartialEq)]
pub struct GlaConfig {
    pub model: ModelConfig,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    pub gate_rank: usize,
    pub intermediate: usize,
    pub eps: f32,
    pub output_gate: bool,
    /// The per-head output norm's name: fla's GatedLinearAttention fuses it with the gate
    /// (`g_norm_swish_gate`) when fuse_norm and use_output_gate, else keeps `g_norm`; the
    /// function is the same.
    pub out_norm: &'static str,
    pub tie_embeddings: bool,
}

impl GlaConfig {
    pub fn from_json(c: &JsonConfig) -> Result<GlaConfig> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.dim("hidden_size", Dim::Hidden)?;
        let heads = c.dim("num_heads", Dim::Heads)?;
        if let Some(kv) = c.opt_usize("num_kv_heads")? {
            if kv != heads {
                return Err(bad(
                    "num_kv_heads",
                    format!("{kv} k/v heads for {heads} query heads are not supported"),
                ));
            }
        }
        for (key, wanted) in [
            ("use_short_conv", false),
            ("use_gv", false),
            ("use_gk", true),
        ] {
            if let Some(v) = c.opt_bool(key)? {
                if v != wanted {
                    return Err(bad(key, format!("{v} is not supported")));
                }
            }
        }
        if !c.opt_bool("elementwise_affine")?.unwrap_or(true) {
            return Err(bad("elementwise_affine", "false is not supported".into()));
        }
        for key in ["feature_map", "clamp_min", "attn", "attnres_block_size"] {
            if c.get(key).is_some() {
                return Err(bad(key, "is not supported (must be null)".into()));
            }
        }
        let act = c
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("swish");
        if act != "swish" && act != "silu" {
            return Err(bad("hidden_act", format!("'{act}' is not supported")));
        }
        let dim = |key: &str, default: f64| -> Result<usize> {
            let e = c.opt_f64(key)?.unwrap_or(default);
            let d = c.scaled(key, Dim::Intermediate, hidden, e)?;
            if d.fract() != 0.0 || !(d as usize).is_multiple_of(heads) {
                return Err(bad(
                    key,
                    format!(
                        "hidden_size * {key} = {d} is not a positive multiple of {heads} heads"
                    ),
                ));
            }
            Ok(d as usize)
        };
        let ratio = c.opt_dim("hidden_ratio", Dim::Size)?.unwrap_or(4);
        // fla's GatedMLP: 2/3 of hidden * ratio, rounded up to a multiple of 256.
        let intermediate = match c.opt_dim("intermediate_size", Dim::Intermediate)? {
            Some(n) => n,
            None => {
                let n = c.product("hidden_ratio", Dim::Intermediate, &[hidden, ratio, 2])?;
                (n / 3).next_multiple_of(256)
            }
        };
        let layers = c.dim("num_hidden_layers", Dim::Layers)?;
        let output_gate = c.opt_bool("use_output_gate")?.unwrap_or(true);
        let (key_dim, value_dim) = (dim("expand_k", 0.5)?, dim("expand_v", 1.0)?);
        let gate_rank = c.opt_dim("gate_low_rank_dim", Dim::Size)?.unwrap_or(16);
        let config = GlaConfig {
            model: ModelConfig::recurrent(ARCHITECTURE, c.dim("vocab_size", Dim::Vocab)?)
                .with_config(c),
            hidden,
            layers,
            heads,
            key_dim,
            value_dim,
            gate_rank,
            intermediate,
            eps: c.opt_f64("norm_eps")?.unwrap_or(1e-6) as f32,
            output_gate,
            out_norm: match output_gate && c.opt_bool("fuse_norm")?.unwrap_or(true) {
                true => "g_norm_swish_gate",
                false => "g_norm",
            },
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        };
        config
            .scan_shape()
            .validate()
            .map_err(|e| bad("expand_k", e.to_string()))?;
        Ok(config)
    }

    fn head_k(&self) -> usize {
        self.key_dim / self.heads
    }

    fn head_v(&self) -> usize {
        self.value_dim / self.heads
    }

    fn scan_shape(&self) -> ScanShape {
        ScanShape {
            heads: self.heads,
            qk_heads: self.heads,
            dk: self.head_k(),
            dv: self.head_v(),
            decay: Decay::Gate { per_key: true },
            delta: false,
            bonus: false,
        }
    }
}

impl NetworkConfig for GlaConfig {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        Ok(Arc::new(Gla::load(*self, vb)?))
    }
}

struct Layer {
    attn_norm: RmsNorm,
    q: Arc<GpuWeight>,
    k: Arc<GpuWeight>,
    v: Arc<GpuWeight>,
    g: Option<Arc<GpuWeight>>,
    gk_down: Arc<GpuWeight>,
    gk_up: Arc<GpuWeight>,
    gk_bias: Arc<GpuWeight>,
    /// The per-head output norm's weight, repeated over the heads.
    out_norm: Arc<GpuWeight>,
    o: Arc<GpuWeight>,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

pub struct Gla {
    config: GlaConfig,
    embed: Arc<GpuWeight>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: LmHead,
    /// 1/sqrt(head_k_dim) per key column (q's scale), and 1/16 (the gate normaliser).
    q_scale: Arc<GpuWeight>,
    gate_scale: Arc<GpuWeight>,
}

impl Gla {
    fn load(config: GlaConfig, vb: &Vars<'_>) -> Result<Gla> {
        let c = &config;
        let (h, kd, vd) = (c.hidden, c.key_dim, c.value_dim);
        let body = vb.pp("model");
        let embed = body.matrix("embeddings.weight", c.model.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = body.pp("layers").pp(l);
            let a = p.pp("attn");
            let norm_name = c.out_norm;
            let head_norm = a.pp(norm_name).host("weight", &[c.head_v()])?;
            let out_norm: Vec<f32> = (0..c.heads).flat_map(|_| head_norm.clone()).collect();
            layers.push(Layer {
                attn_norm: RmsNorm::load(&p.pp("attn_norm"), h, c.eps)?,
                q: a.matrix("q_proj.weight", kd, h)?,
                k: a.matrix("k_proj.weight", kd, h)?,
                v: a.matrix("v_proj.weight", vd, h)?,
                g: match c.output_gate {
                    true => Some(a.matrix("g_proj.weight", vd, h)?),
                    false => None,
                },
                gk_down: a.matrix("gk_proj.0.weight", c.gate_rank, h)?,
                gk_up: a.matrix("gk_proj.1.weight", kd, c.gate_rank)?,
                gk_bias: a.vector("gk_proj.1.bias", kd)?,
                out_norm: a.pp(norm_name).computed_vector("weight.per_head", &out_norm)?,
                o: a.matrix("o_proj.weight", h, vd)?,
                mlp_norm: RmsNorm::load(&p.pp("mlp_norm"), h, c.eps)?,
                mlp: Mlp::load(&p.pp("mlp"), MLP, c.intermediate, h)?,
            });
        }
        let norm = RmsNorm::load(&body.pp("norm"), h, c.eps)?;
        let lm_head = LmHead::load(vb, "lm_head.weight", &embed, c.tie_embeddings, [c.model.vocab, h])?;
        let scales = vb.pp("gla");
        let q_scale = scales.computed_vector("q_scale", &vec![1.0 / (c.head_k() as f32).sqrt(); kd])?;
        let gate_scale =
            scales.computed_vector("gate_scale", &vec![1.0 / GATE_LOGIT_NORMALIZER; kd])?;
        Ok(Gla {
            config,
            embed,
            layers,
            norm,
            lm_head,
            q_scale,
            gate_scale,
        })
    }

    fn state_name(l: usize) -> String {
        format!("layer.{l}.gla")
    }

    fn mixer(&self, g: &mut Graph, l: usize, x: TensorId) -> kestrel_runtime::Result<TensorId> {
        let c = &self.config;
        let layer = &self.layers[l];
        let proj = |g: &mut Graph, x, w| lin(g, x, w, None);
        let q = proj(g, x, &layer.q)?;
        let q_scale = g.weight(&self.q_scale);
        let q = g.elementwise(Elementwise::Mul, q, q_scale)?;
        let k = proj(g, x, &layer.k)?;
        let v = proj(g, x, &layer.v)?;
        let gk = proj(g, x, &layer.gk_down)?;
        let gk_up = g.weight(&layer.gk_up);
        let gk_bias = g.weight(&layer.gk_bias);
        let gk = g.linear(gk, gk_up, Some(gk_bias))?;
        let gk = g.unary(Elementwise::LogSigmoid, gk)?;
        let gate_scale = g.weight(&self.gate_scale);
        let log_decay = g.elementwise(Elementwise::Mul, gk, gate_scale)?;
        let shape = c.scan_shape();
        let state = g.recurrent_state(&Self::state_name(l), &[shape.heads * shape.dv, shape.dk]);
        let o = g.linear_scan(q, k, v, Some(log_decay), None, None, state, shape)?;
        let norm = g.weight(&layer.out_norm);
        let o = g.rms_norm_grouped(o, norm, c.eps, c.heads)?;
        let o = match &layer.g {
            Some(gw) => {
                let gate = proj(g, x, gw)?;
                g.swiglu(gate, o)?
            }
            None => o,
        };
        proj(g, o, &layer.o)
    }
}

impl Network for Gla {
    fn config(&self) -> &ModelConfig {
        &self.config.model
    }
}

impl Architecture for Gla {
    fn vocab_size(&self) -> usize {
        self.config.model.vocab
    }

    /// No position limit: the state is the same size at any length.
    fn max_context(&self) -> usize {
        u32::MAX as usize
    }

    fn states(&self, _capacity: usize) -> Vec<StateSpec> {
        let s = self.config.scan_shape();
        (0..self.config.layers)
            .map(|l| StateSpec::recurrent(Self::state_name(l), vec![s.heads * s.dv, s.dk]))
            .collect()
    }

    fn build(&self, n: usize, _capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let mut g = Graph::for_head(head);
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.apply(&mut g, x)?;
            let o = self.mixer(&mut g, l, h)?;
            x = g.add_tensors(x, o)?;
            let h = layer.mlp_norm.apply(&mut g, x)?;
            let down = layer.mlp.apply(&mut g, h)?;
            x = g.add_tensors(x, down)?;
        }
        let x = self.norm.apply(&mut g, x)?;
        self.lm_head.apply(&mut g, x, head)?;
        Ok(g)
    }
}

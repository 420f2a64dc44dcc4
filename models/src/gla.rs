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

use crate::config::JsonConfig;
use crate::error::{ModelError, Result};
use crate::weights::Uploader;

pub const ARCHITECTURE: &str = "GLAForCausalLM";

/// fla's default: gate logits are divided by this before use as log-decays.
const GATE_LOGIT_NORMALIZER: f32 = 16.0;

pub fn is_gla(c: &JsonConfig) -> bool {
    c.architecture()
        .is_ok_and(|a| a == ARCHITECTURE || a == "gla")
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlaConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    pub gate_rank: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub eps: f32,
    pub output_gate: bool,
    pub tie_embeddings: bool,
    pub bos: Vec<u32>,
    pub eos: Vec<u32>,
}

impl GlaConfig {
    pub fn from_json(c: &JsonConfig) -> Result<GlaConfig> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.positive("hidden_size")?;
        let heads = c.positive("num_heads")?;
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
            let d = hidden as f64 * e;
            if d.fract() != 0.0 || d < 1.0 || !(d as usize).is_multiple_of(heads) {
                return Err(bad(
                    key,
                    format!(
                        "hidden_size * {key} = {d} is not a positive multiple of {heads} heads"
                    ),
                ));
            }
            Ok(d as usize)
        };
        let ratio = c.opt_usize("hidden_ratio")?.unwrap_or(4);
        // fla's GatedMLP: 2/3 of hidden * ratio, rounded up to a multiple of 256.
        let intermediate = match c.opt_usize("intermediate_size")? {
            Some(n) => n,
            None => (hidden * ratio * 2 / 3).next_multiple_of(256),
        };
        let config = GlaConfig {
            hidden,
            layers: c.positive("num_hidden_layers")?,
            heads,
            key_dim: dim("expand_k", 0.5)?,
            value_dim: dim("expand_v", 1.0)?,
            gate_rank: c.opt_usize("gate_low_rank_dim")?.unwrap_or(16),
            intermediate,
            vocab: c.positive("vocab_size")?,
            eps: c.opt_f64("norm_eps")?.unwrap_or(1e-6) as f32,
            output_gate: c.opt_bool("use_output_gate")?.unwrap_or(true),
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos: c.opt_token_ids("bos_token_id"),
            eos: c.opt_token_ids("eos_token_id"),
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

#[derive(Clone)]
struct Layer {
    attn_norm: Arc<GpuWeight>,
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
    mlp_norm: Arc<GpuWeight>,
    gate: Arc<GpuWeight>,
    up: Arc<GpuWeight>,
    down: Arc<GpuWeight>,
}

#[derive(Clone)]
pub struct Gla {
    pub config: GlaConfig,
    embed: Arc<GpuWeight>,
    layers: Vec<Layer>,
    norm: Arc<GpuWeight>,
    lm_head: Arc<GpuWeight>,
    /// 1/sqrt(head_k_dim) per key column (q's scale), and 1/16 (the gate normaliser).
    q_scale: Arc<GpuWeight>,
    gate_scale: Arc<GpuWeight>,
    pub weight_bytes: u64,
    pub file_bytes: u64,
}

impl Gla {
    pub fn load(config: GlaConfig, up: &mut Uploader<'_>) -> Result<Gla> {
        let c = &config;
        let (h, kd, vd) = (c.hidden, c.key_dim, c.value_dim);
        let embed = up.matrix("model.embeddings.weight", c.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.attn");
            let norm_name = match c.output_gate {
                true => format!("{a}.g_norm_swish_gate.weight"),
                false => format!("{a}.g_norm.weight"),
            };
            let head_norm = up.host(&norm_name, &[c.head_v()])?;
            let out_norm: Vec<f32> = (0..c.heads).flat_map(|_| head_norm.clone()).collect();
            layers.push(Layer {
                attn_norm: up.vector(&format!("{p}.attn_norm.weight"), h)?,
                q: up.matrix(&format!("{a}.q_proj.weight"), kd, h)?,
                k: up.matrix(&format!("{a}.k_proj.weight"), kd, h)?,
                v: up.matrix(&format!("{a}.v_proj.weight"), vd, h)?,
                g: match c.output_gate {
                    true => Some(up.matrix(&format!("{a}.g_proj.weight"), vd, h)?),
                    false => None,
                },
                gk_down: up.matrix(&format!("{a}.gk_proj.0.weight"), c.gate_rank, h)?,
                gk_up: up.matrix(&format!("{a}.gk_proj.1.weight"), kd, c.gate_rank)?,
                gk_bias: up.vector(&format!("{a}.gk_proj.1.bias"), kd)?,
                out_norm: up.vector_from(&format!("{norm_name}.per_head"), &out_norm)?,
                o: up.matrix(&format!("{a}.o_proj.weight"), h, vd)?,
                mlp_norm: up.vector(&format!("{p}.mlp_norm.weight"), h)?,
                gate: up.matrix(&format!("{p}.mlp.gate_proj.weight"), c.intermediate, h)?,
                up: up.matrix(&format!("{p}.mlp.up_proj.weight"), c.intermediate, h)?,
                down: up.matrix(&format!("{p}.mlp.down_proj.weight"), h, c.intermediate)?,
            });
        }
        let norm = up.vector("model.norm.weight", h)?;
        let lm_head = up.lm_head(&embed, c.tie_embeddings, c.vocab, h)?;
        let q_scale = up.vector_from("gla.q_scale", &vec![1.0 / (c.head_k() as f32).sqrt(); kd])?;
        let gate_scale =
            up.vector_from("gla.gate_scale", &vec![1.0 / GATE_LOGIT_NORMALIZER; kd])?;
        Ok(Gla {
            weight_bytes: up.gpu_bytes,
            file_bytes: up.file_bytes,
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
        let lin = |g: &mut Graph, x, w| crate::lin(g, x, w, None);
        let q = lin(g, x, &layer.q)?;
        let q_scale = g.weight(&self.q_scale);
        let q = g.elementwise(Elementwise::Mul, q, q_scale)?;
        let k = lin(g, x, &layer.k)?;
        let v = lin(g, x, &layer.v)?;
        let gk = lin(g, x, &layer.gk_down)?;
        let gk_up = g.weight(&layer.gk_up);
        let gk_bias = g.weight(&layer.gk_bias);
        let gk = g.linear(gk, gk_up, Some(gk_bias))?;
        let gk = g.unary(Elementwise::LogSigmoid, gk)?;
        let gate_scale = g.weight(&self.gate_scale);
        let log_decay = g.elementwise(Elementwise::Mul, gk, gate_scale)?;
        let shape = c.scan_shape();
        let state = g.state(&Self::state_name(l), &[shape.heads * shape.dv, shape.dk]);
        let o = g.linear_scan(q, k, v, Some(log_decay), None, None, state, shape)?;
        let norm = g.weight(&layer.out_norm);
        let o = g.rms_norm_grouped(o, norm, c.eps, c.heads)?;
        let o = match &layer.g {
            Some(gw) => {
                let gate = lin(g, x, gw)?;
                g.swiglu(gate, o)?
            }
            None => o,
        };
        lin(g, o, &layer.o)
    }
}

impl Architecture for Gla {
    fn vocab_size(&self) -> usize {
        self.config.vocab
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
        let c = &self.config;
        let mut g = Graph::new();
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let w = g.weight(&layer.attn_norm);
            let h = g.rms_norm(x, w, c.eps)?;
            let o = self.mixer(&mut g, l, h)?;
            x = g.add_tensors(x, o)?;
            let w = g.weight(&layer.mlp_norm);
            let h = g.rms_norm(x, w, c.eps)?;
            let down = crate::swiglu_mlp(&mut g, h, [&layer.gate, &layer.up, &layer.down])?;
            x = g.add_tensors(x, down)?;
        }
        let norm = g.weight(&self.norm);
        let x = g.rms_norm(x, norm, c.eps)?;
        let lm_head = g.weight(&self.lm_head);
        crate::lm_head(&mut g, x, lm_head, head)?;
        Ok(g)
    }
}

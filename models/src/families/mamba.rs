//! Mamba (MambaForCausalLM) and Mamba-2 (Mamba2ForCausalLM): per layer an RMSNorm and the
//! Mamba mixer (`blocks::mamba`, where the two versions differ), a final RMSNorm and the LM
//! head. Only recurrent states: a sequence may be as long as the caller wants.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};

use super::{Family, Network, NetworkConfig};
use crate::blocks::lm_head::LmHead;
use crate::blocks::mamba::{MambaMixer, MixerConfig};
use crate::blocks::norm::RmsNorm;
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::formats::config::keys::{why, ConfigKey};
use crate::model::ModelConfig;
use crate::vars::Vars;

const CLASSES: [&str; 2] = ["MambaForCausalLM", "Mamba2ForCausalLM"];

pub const FAMILY: Family = Family {
    classes: &CLASSES,
    model_types: &["mamba", "mamba2"],
    gguf: &[("mamba", "MambaForCausalLM"), ("mamba2", "Mamba2ForCausalLM")],
    parse: Some(|c| Ok(Box::new(MambaConfig::from_json(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers' MambaConfig / Mamba2Config and their models read.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("num_hidden_layers", "1"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("expand", "4"),
    ConfigKey::honoured("state_size", "8"),
    ConfigKey::honoured("time_step_rank", "2"),
    ConfigKey::honoured("conv_kernel", "2"),
    ConfigKey::honoured("layer_norm_epsilon", "0.001"),
    ConfigKey::honoured("use_conv_bias", "false"),
    ConfigKey::honoured("tie_word_embeddings", "true"),
    // Mamba: an in_proj/out_proj bias; Mamba-2: refused.
    ConfigKey::limited("use_bias", "true", "true"),
    // Mamba-2.
    ConfigKey::honoured("num_heads", "8"),
    ConfigKey::honoured("head_dim", "64"),
    ConfigKey::honoured("n_groups", "1"),
    ConfigKey::refused("time_step_limit", "[0.001, 0.1]"),
    ConfigKey::refused("norm_before_gate", "true"),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    ConfigKey::inert(
        "residual_in_fp32",
        "Kestrel keeps the residual stream in f32 always",
    ),
    ConfigKey::inert("rescale_prenorm_residual", why::TRAINING),
    ConfigKey::inert("time_step_floor", why::TRAINING),
    ConfigKey::inert("time_step_init_scheme", why::TRAINING),
    ConfigKey::inert("time_step_max", why::TRAINING),
    ConfigKey::inert("time_step_min", why::TRAINING),
    ConfigKey::inert("time_step_scale", why::TRAINING),
    ConfigKey::inert("use_associative_scan", why::RUNTIME),
    ConfigKey::inert("use_mambapy", why::RUNTIME),
    ConfigKey::inert("chunk_size", why::RUNTIME),
    ConfigKey::inert("layer_types", why::DERIVED),
    ConfigKey::inert("intermediate_size", why::DERIVED),
];


#[derive(Debug, Clone, PartialEq)]
pub struct MambaConfig {
    pub model: ModelConfig,
    pub mixer: MixerConfig,
    pub layers: usize,
    pub tie_embeddings: bool,
}

impl MambaConfig {
    pub fn from_json(c: &JsonConfig) -> Result<MambaConfig> {
        let arch = c.architecture()?;
        let version = if arch.starts_with("Mamba2") || arch == "mamba2" {
            2
        } else {
            1
        };
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.dim("hidden_size", Dim::Hidden)?;
        let expand = c.opt_dim("expand", Dim::Size)?.unwrap_or(2);
        // transformers derives the inner width from expand (a stored intermediate_size is
        // overwritten).
        let inner = c.product("expand", Dim::Intermediate, &[expand, hidden])?;
        let state = c.opt_dim("state_size", Dim::Size)?.unwrap_or(16);
        let dt_rank = match c.get("time_step_rank") {
            Some(serde_json::Value::String(s)) if s == "auto" => hidden.div_ceil(16),
            _ => c
                .opt_usize("time_step_rank")?
                .unwrap_or(hidden.div_ceil(16)),
        };
        let (heads, groups) = if version == 2 {
            let heads = c.dim("num_heads", Dim::Heads)?;
            let head_dim = c.dim("head_dim", Dim::HeadDim)?;
            if heads * head_dim != inner {
                return Err(bad(
                    "num_heads",
                    format!(
                        "{heads} heads of head_dim {head_dim} do not make the {inner} channels \
                         of expand * hidden_size"
                    ),
                ));
            }
            let groups = c.opt_dim("n_groups", Dim::Heads)?.unwrap_or(1);
            if groups == 0 || !heads.is_multiple_of(groups) {
                return Err(bad(
                    "n_groups",
                    format!("{groups} groups do not divide {heads} heads"),
                ));
            }
            // Inference clamps dt to time_step_limit; only the default (no clamp) is supported.
            if let Some(serde_json::Value::Array(limit)) = c.get("time_step_limit") {
                let lo = limit.first().and_then(|v| v.as_f64()).unwrap_or(0.0);
                let hi_is_inf = limit.get(1).is_some_and(|v| {
                    v.as_f64().is_some_and(f64::is_infinite)
                        || v.get("__float__").and_then(|s| s.as_str()) == Some("Infinity")
                });
                if lo != 0.0 || !hi_is_inf {
                    return Err(bad(
                        "time_step_limit",
                        "is supported only as [0, inf] (no clamping of dt)".into(),
                    ));
                }
            }
            if c.opt_bool("norm_before_gate")?.unwrap_or(false) {
                return Err(bad("norm_before_gate", "true is not supported".into()));
            }
            (heads, groups)
        } else {
            (inner, 1)
        };
        let act = c
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("silu");
        if act != "silu" {
            return Err(bad(
                "hidden_act",
                format!("'{act}' is not supported (silu is)"),
            ));
        }
        let mixer = MixerConfig {
            version,
            hidden,
            inner,
            state,
            conv_kernel: c.opt_dim("conv_kernel", Dim::Size)?.unwrap_or(4),
            dt_rank,
            heads,
            groups,
            eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
            conv_bias: c.opt_bool("use_conv_bias")?.unwrap_or(true),
            proj_bias: c.opt_bool("use_bias")?.unwrap_or(false),
            inner_norms: false,
        };
        let layers = c.dim("num_hidden_layers", Dim::Layers)?;
        let model = ModelConfig::recurrent(CLASSES[version as usize - 1], c.dim("vocab_size", Dim::Vocab)?)
            .with_config(c);
        let tie_embeddings = c.opt_bool("tie_word_embeddings")?.unwrap_or(true);
        mixer.validate(c)?;
        Ok(MambaConfig {
            model,
            mixer,
            layers,
            tie_embeddings,
        })
    }
}

impl NetworkConfig for MambaConfig {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        Ok(Arc::new(Mamba::load(*self, vb)?))
    }
}

pub struct Mamba {
    config: MambaConfig,
    embed: Arc<GpuWeight>,
    /// Per layer: its RMSNorm and its mixer.
    layers: Vec<(RmsNorm, MambaMixer)>,
    norm: RmsNorm,
    lm_head: LmHead,
}

impl Mamba {
    fn load(config: MambaConfig, vb: &Vars<'_>) -> Result<Mamba> {
        let c = &config;
        let (h, eps) = (c.mixer.hidden, c.mixer.eps);
        let body = vb.pp("backbone");
        let embed = body.matrix("embeddings.weight", c.model.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = body.pp("layers").pp(l);
            let norm = RmsNorm::load(&p.pp("norm"), h, eps)?;
            layers.push((norm, MambaMixer::load(&c.mixer, &p.pp("mixer"))?));
        }
        let norm = RmsNorm::load(&body.pp("norm_f"), h, eps)?;
        let lm_head = LmHead::load(vb, "lm_head.weight", &embed, c.tie_embeddings, [c.model.vocab, h])?;
        Ok(Mamba {
            config,
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

impl Network for Mamba {
    fn config(&self) -> &ModelConfig {
        &self.config.model
    }
}

impl Architecture for Mamba {
    fn vocab_size(&self) -> usize {
        self.config.model.vocab
    }

    /// No position limit: the state is the same size at any length.
    fn max_context(&self) -> usize {
        u32::MAX as usize
    }

    fn states(&self, _capacity: usize) -> Vec<StateSpec> {
        (0..self.config.layers)
            .flat_map(|l| self.config.mixer.layer_states(l))
            .collect()
    }

    fn build(&self, n: usize, _capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let mut g = Graph::for_head(head);
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        for (l, (norm, mixer)) in self.layers.iter().enumerate() {
            let h = norm.apply(&mut g, x)?;
            let out = mixer.build(&mut g, &self.config.mixer, l, h)?;
            x = g.add_tensors(x, out)?;
        }
        let x = self.norm.apply(&mut g, x)?;
        self.lm_head.apply(&mut g, x, head)?;
        Ok(g)
    }
}

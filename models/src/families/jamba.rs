//! Jamba (JambaForCausalLM): a hybrid of Mamba and attention layers, with sparse experts on
//! some layers, built from the shared blocks: the Mamba mixer (with Jamba's RMSNorms on dt, B
//! and C), attention (no positional encoding: Jamba's attention has no RoPE) and
//! `FeedForward`. Layer l attends when l % attn_layer_period == attn_layer_offset and has
//! experts when l % expert_layer_period == expert_layer_offset. A sequence carries a KV cache
//! for each attention layer and conv/scan states for each Mamba layer, side by side.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::attention::AttnShape;
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};

use super::{Family, Network, NetworkConfig};
use crate::blocks::attention::{AttentionRun, AttentionWeights, KvCache, ATTENTION};
use crate::blocks::lm_head::LmHead;
use crate::blocks::mamba::{MambaMixer, MixerConfig};
use crate::blocks::mlp::MLP;
use crate::blocks::moe::{FeedForward, MoeConfig, JAMBA};
use crate::blocks::norm::RmsNorm;
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::formats::config::keys::{why, ConfigKey};
use crate::model::ModelConfig;
use crate::vars::Vars;

pub const ARCHITECTURE: &str = "JambaForCausalLM";

pub const FAMILY: Family = Family {
    classes: &[ARCHITECTURE],
    model_types: &["jamba"],
    gguf: &[("jamba", "JambaForCausalLM")],
    parse: Some(|c| Ok(Box::new(JambaConfig::from_json(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers' JambaConfig and JambaForCausalLM read.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("num_hidden_layers", "8"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("num_attention_heads", "8"),
    ConfigKey::honoured("num_key_value_heads", "1"),
    ConfigKey::honoured("intermediate_size", "64"),
    ConfigKey::honoured("rms_norm_eps", "0.001"),
    ConfigKey::honoured("max_position_embeddings", "64"),
    ConfigKey::honoured("tie_word_embeddings", "true"),
    ConfigKey::honoured("attn_layer_period", "2"),
    ConfigKey::honoured("attn_layer_offset", "0"),
    ConfigKey::honoured("expert_layer_period", "3"),
    ConfigKey::honoured("expert_layer_offset", "0"),
    ConfigKey::honoured("num_experts", "3"),
    ConfigKey::honoured("num_local_experts", "3"),
    ConfigKey::honoured("num_experts_per_tok", "1"),
    ConfigKey::honoured("mamba_d_state", "8"),
    ConfigKey::honoured("mamba_d_conv", "2"),
    ConfigKey::honoured("mamba_expand", "4"),
    ConfigKey::honoured("mamba_dt_rank", "2"),
    ConfigKey::honoured("mamba_conv_bias", "false"),
    ConfigKey::honoured("mamba_proj_bias", "true"),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    ConfigKey::inert("layers_block_type", why::DERIVED),
    ConfigKey::inert("layer_types", why::DERIVED),
    ConfigKey::inert("layers_num_experts", why::DERIVED),
    ConfigKey::inert("attention_dropout", why::TRAINING),
    ConfigKey::inert("router_aux_loss_coef", why::TRAINING),
    ConfigKey::inert("output_router_logits", why::RUNTIME),
    ConfigKey::inert("use_associative_scan", why::RUNTIME),
    ConfigKey::inert("use_mamba_kernels", why::RUNTIME),
    ConfigKey::inert("use_mambapy", why::RUNTIME),
];


#[derive(Debug, Clone, PartialEq)]
pub struct JambaConfig {
    pub model: ModelConfig,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub eps: f32,
    pub attn: AttnShape,
    /// Per layer: (attention rather than Mamba, experts rather than a dense MLP).
    pub kinds: Vec<(bool, bool)>,
    pub mamba: MixerConfig,
    pub moe: Option<MoeConfig>,
    pub tie_embeddings: bool,
}

impl JambaConfig {
    pub fn from_json(c: &JsonConfig) -> Result<JambaConfig> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.dim("hidden_size", Dim::Hidden)?;
        let layers = c.dim("num_hidden_layers", Dim::Layers)?;
        let heads = c.dim("num_attention_heads", Dim::Heads)?;
        let kv_heads = c.opt_dim("num_key_value_heads", Dim::Heads)?.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!("{kv_heads} kv heads, {heads} heads and hidden_size {hidden} do not fit"),
            ));
        }
        let head_dim = hidden / heads;
        let period = |key: &str, default: usize| -> Result<usize> {
            let p = c.opt_usize(key)?.unwrap_or(default);
            if p == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
            Ok(p)
        };
        let (ap, ao) = (
            period("attn_layer_period", 8)?,
            c.opt_usize("attn_layer_offset")?.unwrap_or(4),
        );
        let (ep, eo) = (
            period("expert_layer_period", 2)?,
            c.opt_usize("expert_layer_offset")?.unwrap_or(1),
        );
        // transformers maps the legacy num_local_experts onto num_experts.
        let experts_key = match c.get("num_experts") {
            None if c.get("num_local_experts").is_some() => "num_local_experts",
            _ => "num_experts",
        };
        let experts = c.opt_dim(experts_key, Dim::Experts)?.unwrap_or(16);
        let intermediate = c.dim("intermediate_size", Dim::Intermediate)?;
        let moe = match experts {
            1 => None,
            _ => Some(MoeConfig::from_json(
                c,
                experts_key,
                intermediate,
                false,
                None,
            )?),
        };
        let kinds = (0..layers)
            .map(|l| (l % ap == ao, moe.is_some() && l % ep == eo))
            .collect();
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
        let eps = c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32;
        let vocab = c.dim("vocab_size", Dim::Vocab)?;
        let dt_rank = match c.get("mamba_dt_rank") {
            Some(serde_json::Value::String(s)) if s == "auto" => hidden.div_ceil(16),
            _ => c.opt_dim("mamba_dt_rank", Dim::Size)?.unwrap_or(hidden.div_ceil(16)),
        };
        let expand = c.opt_dim("mamba_expand", Dim::Size)?.unwrap_or(2);
        let inner = c.product("mamba_expand", Dim::Intermediate, &[expand, hidden])?;
        let mamba = MixerConfig {
            version: 1,
            hidden,
            inner,
            state: c.opt_dim("mamba_d_state", Dim::Size)?.unwrap_or(16),
            conv_kernel: c.opt_dim("mamba_d_conv", Dim::Size)?.unwrap_or(4),
            dt_rank,
            heads: inner,
            groups: 1,
            eps,
            conv_bias: c.opt_bool("mamba_conv_bias")?.unwrap_or(true),
            proj_bias: c.opt_bool("mamba_proj_bias")?.unwrap_or(false),
            inner_norms: true,
        };
        mamba.validate(c)?;
        let max_positions = c.dim("max_position_embeddings", Dim::Context)?;
        Ok(JambaConfig {
            model: ModelConfig::causal(ARCHITECTURE, vocab, max_positions).with_config(c),
            hidden,
            intermediate,
            layers,
            eps,
            attn: AttnShape {
                softcap: None,
                heads,
                kv_heads,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
            },
            kinds,
            mamba,
            moe,
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        })
    }
}

impl NetworkConfig for JambaConfig {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        Ok(Arc::new(Jamba::load(*self, vb)?))
    }
}

enum Mixer {
    Attention(AttentionWeights),
    Mamba(MambaMixer),
}

struct Layer {
    input_norm: RmsNorm,
    mixer: Mixer,
    ff_norm: RmsNorm,
    ffn: FeedForward,
}

pub struct Jamba {
    config: JambaConfig,
    embed: Arc<GpuWeight>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: LmHead,
}

impl Jamba {
    fn load(config: JambaConfig, vb: &Vars<'_>) -> Result<Jamba> {
        let c = &config;
        let (h, eps) = (c.hidden, c.eps);
        let body = vb.pp("model");
        let embed = body.matrix("embed_tokens.weight", c.model.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for (l, &(attention, experts)) in c.kinds.iter().enumerate() {
            let p = body.pp("layers").pp(l);
            let mixer = match attention {
                true => Mixer::Attention(AttentionWeights::load(
                    &p.pp("self_attn"),
                    ATTENTION,
                    [h, h],
                    &c.attn,
                    false,
                )?),
                false => Mixer::Mamba(MambaMixer::load(&c.mamba, &p.pp("mamba"))?),
            };
            let moe = c.moe.as_ref().filter(|_| experts);
            layers.push(Layer {
                input_norm: RmsNorm::load(&p.pp("input_layernorm"), h, eps)?,
                mixer,
                ff_norm: RmsNorm::load(&p.pp("pre_ff_layernorm"), h, eps)?,
                ffn: FeedForward::load(
                    &p.pp("feed_forward"),
                    moe.map(|m| (m, JAMBA)),
                    MLP,
                    l,
                    [h, c.intermediate],
                )?,
            });
        }
        let norm = RmsNorm::load(&body.pp("final_layernorm"), h, eps)?;
        let lm_head = LmHead::load(vb, "lm_head.weight", &embed, c.tie_embeddings, [c.model.vocab, h])?;
        Ok(Jamba {
            config,
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

impl Network for Jamba {
    fn config(&self) -> &ModelConfig {
        &self.config.model
    }

    fn unread_expert_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.ffn.unread_bytes_per_token())
            .sum()
    }

    fn attention_windows(&self) -> Vec<Option<usize>> {
        let attention = self.config.kinds.iter().filter(|k| k.0).count();
        vec![None; attention]
    }
}

impl Architecture for Jamba {
    fn vocab_size(&self) -> usize {
        self.config.model.vocab
    }

    fn max_context(&self) -> usize {
        self.config.model.max_positions
    }

    fn kv_layouts(&self, capacity: usize) -> Vec<KvLayout> {
        let attention = self.config.kinds.iter().filter(|k| k.0).count();
        vec![KvLayout::linear(capacity); attention]
    }

    /// KV caches for the attention layers, conv and scan states for the Mamba layers, expert
    /// counters for the sparse ones.
    fn states(&self, capacity: usize) -> Vec<StateSpec> {
        let c = &self.config;
        let kvd = c.attn.kv_heads * c.attn.head_dim;
        let layout = KvLayout::linear(capacity);
        let mut states = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            match layer.mixer {
                Mixer::Attention(_) => states.extend(KvCache { layer: l }.states(&layout, kvd)),
                Mixer::Mamba(_) => states.extend(c.mamba.layer_states(l)),
            }
            states.extend(layer.ffn.state());
        }
        states
    }

    fn build(&self, n: usize, capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let c = &self.config;
        let mut g = Graph::for_head(head);
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        // Every attention layer keeps every position.
        let layout = g.kv_layouts(capacity, |c| Ok(vec![KvLayout::linear(c)]))?[0];
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.apply(&mut g, x)?;
            let o = match &layer.mixer {
                Mixer::Attention(a) => {
                    let cache = KvCache { layer: l };
                    let run = AttentionRun {
                        cache: &cache,
                        layout,
                        shape: c.attn,
                        causal: true,
                        inv_freq: None,
                        rope_scale: 1.0,
                        qk_norm: None,
                        mask: None,
                    };
                    a.build(&mut g, h, run)?
                }
                Mixer::Mamba(m) => m.build(&mut g, &c.mamba, l, h)?,
            };
            x = g.add_tensors(x, o)?;
            let h = layer.ff_norm.apply(&mut g, x)?;
            let f = layer.ffn.build(&mut g, h)?;
            x = g.add_tensors(x, f)?;
        }
        let x = self.norm.apply(&mut g, x)?;
        self.lm_head.apply(&mut g, x, head)?;
        Ok(g)
    }
}

//! Jamba (JambaForCausalLM): a hybrid of Mamba and attention layers, with sparse experts on
//! some layers, built from the shared blocks: `mamba::MambaMixer` (with Jamba's RMSNorms on dt,
//! B and C), `llama::AttentionWeights` (no positional encoding: Jamba's attention has no RoPE)
//! and `moe::FeedForward`. Layer l attends when l % attn_layer_period == attn_layer_offset
//! and has experts when l % expert_layer_period == expert_layer_offset. A sequence carries a
//! KV cache for each attention layer and conv/scan states for each Mamba layer, side by side.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::attention::AttnShape;
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};

use crate::config::JsonConfig;
use crate::error::{ModelError, Result};
use crate::llama::{cache_states, AttentionWeights};
use crate::mamba::{MambaConfig, MambaMixer};
use crate::moe::{FeedForward, MoeConfig};
use crate::weights::Uploader;

pub const ARCHITECTURE: &str = "JambaForCausalLM";

pub fn is_jamba(c: &JsonConfig) -> bool {
    c.architecture()
        .is_ok_and(|a| a == ARCHITECTURE || a == "jamba")
}

#[derive(Debug, Clone, PartialEq)]
pub struct JambaConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub eps: f32,
    pub attn: AttnShape,
    /// Per layer: (attention rather than Mamba, experts rather than a dense MLP).
    pub kinds: Vec<(bool, bool)>,
    pub mamba: MambaConfig,
    pub moe: Option<MoeConfig>,
    pub tie_embeddings: bool,
    pub bos: Vec<u32>,
    pub eos: Vec<u32>,
}

impl JambaConfig {
    pub fn from_json(c: &JsonConfig) -> Result<JambaConfig> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.positive("hidden_size")?;
        let layers = c.positive("num_hidden_layers")?;
        let heads = c.positive("num_attention_heads")?;
        let kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(heads);
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
        let experts = c.opt_usize("num_experts")?.unwrap_or(16);
        let intermediate = c.positive("intermediate_size")?;
        let moe = match experts {
            0 => return Err(bad("num_experts", "must be at least 1".into())),
            1 => None,
            _ => Some(MoeConfig::from_json(
                c,
                "num_experts",
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
        let vocab = c.positive("vocab_size")?;
        let dt_rank = match c.get("mamba_dt_rank") {
            Some(serde_json::Value::String(s)) if s == "auto" => hidden.div_ceil(16),
            _ => c.opt_usize("mamba_dt_rank")?.unwrap_or(hidden.div_ceil(16)),
        };
        let inner = c.opt_usize("mamba_expand")?.unwrap_or(2) * hidden;
        let mamba = MambaConfig {
            version: 1,
            hidden,
            inner,
            layers,
            vocab,
            state: c.opt_usize("mamba_d_state")?.unwrap_or(16),
            conv_kernel: c.opt_usize("mamba_d_conv")?.unwrap_or(4),
            dt_rank,
            heads: inner,
            groups: 1,
            eps,
            conv_bias: c.opt_bool("mamba_conv_bias")?.unwrap_or(true),
            proj_bias: c.opt_bool("mamba_proj_bias")?.unwrap_or(false),
            inner_norms: true,
            tie_embeddings: false,
            bos: Vec::new(),
            eos: Vec::new(),
        };
        mamba.validate(c)?;
        Ok(JambaConfig {
            hidden,
            intermediate,
            layers,
            vocab,
            max_positions: c.positive("max_position_embeddings")?,
            eps,
            attn: AttnShape {
                heads,
                kv_heads,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
            },
            kinds,
            mamba,
            moe,
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos: c.opt_token_ids("bos_token_id"),
            eos: c.opt_token_ids("eos_token_id"),
        })
    }
}

enum Mixer {
    Attention(AttentionWeights),
    Mamba(MambaMixer),
}

struct Layer {
    input_norm: Arc<GpuWeight>,
    mixer: Mixer,
    ff_norm: Arc<GpuWeight>,
    ffn: FeedForward,
}

pub struct Jamba {
    pub config: JambaConfig,
    embed: Arc<GpuWeight>,
    layers: Vec<Layer>,
    norm: Arc<GpuWeight>,
    lm_head: Arc<GpuWeight>,
    pub weight_bytes: u64,
    pub file_bytes: u64,
}

impl Jamba {
    pub fn load(config: JambaConfig, up: &mut Uploader<'_>) -> Result<Jamba> {
        let c = &config;
        let h = c.hidden;
        let embed = up.matrix("model.embed_tokens.weight", c.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for (l, &(attention, experts)) in c.kinds.iter().enumerate() {
            let p = format!("model.layers.{l}");
            let mixer = match attention {
                true => Mixer::Attention(AttentionWeights::load(
                    up,
                    &format!("{p}.self_attn"),
                    [h, h],
                    &c.attn,
                    false,
                )?),
                false => Mixer::Mamba(MambaMixer::load(&c.mamba, up, &format!("{p}.mamba"))?),
            };
            let moe = c.moe.as_ref().filter(|_| experts);
            layers.push(Layer {
                input_norm: up.vector(&format!("{p}.input_layernorm.weight"), h)?,
                mixer,
                ff_norm: up.vector(&format!("{p}.pre_ff_layernorm.weight"), h)?,
                ffn: FeedForward::load(
                    up,
                    moe.map(|m| (m, crate::moe::JAMBA)),
                    &format!("{p}.feed_forward"),
                    l,
                    h,
                    c.intermediate,
                )?,
            });
        }
        let norm = up.vector("model.final_layernorm.weight", h)?;
        let lm_head = up.lm_head(&embed, c.tie_embeddings, c.vocab, h)?;
        Ok(Jamba {
            weight_bytes: up.gpu_bytes,
            file_bytes: up.file_bytes,
            config,
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

impl Jamba {
    /// Bytes of expert weights a decoded token does not read (0 for a dense model).
    pub fn unread_expert_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.ffn.unread_bytes_per_token())
            .sum()
    }
}

impl Architecture for Jamba {
    fn vocab_size(&self) -> usize {
        self.config.vocab
    }

    fn max_context(&self) -> usize {
        self.config.max_positions
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
                Mixer::Attention(_) => {
                    states.extend(cache_states(&format!("layer.{l}"), &layout, kvd))
                }
                Mixer::Mamba(_) => states.extend(c.mamba.layer_states(l)),
            }
            states.extend(layer.ffn.state());
        }
        states
    }

    fn build(&self, n: usize, capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let c = &self.config;
        let mut g = Graph::new();
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let norm = g.weight(&layer.input_norm);
            let h = g.rms_norm(x, norm, c.eps)?;
            let o = match &layer.mixer {
                Mixer::Attention(a) => {
                    let layout = KvLayout::linear(capacity);
                    let cache = format!("layer.{l}");
                    a.build(&mut g, h, &cache, layout, c.attn, true, None, None)?
                }
                Mixer::Mamba(m) => m.build(&mut g, &c.mamba, l, h)?,
            };
            x = g.add_tensors(x, o)?;
            let norm = g.weight(&layer.ff_norm);
            let h = g.rms_norm(x, norm, c.eps)?;
            let f = layer.ffn.build(&mut g, h)?;
            x = g.add_tensors(x, f)?;
        }
        let norm = g.weight(&self.norm);
        let x = g.rms_norm(x, norm, c.eps)?;
        let lm_head = g.weight(&self.lm_head);
        crate::lm_head(&mut g, x, lm_head, head)?;
        Ok(g)
    }
}

//! RWKV-6 and RWKV-7 in flash-linear-attention's format (`RWKV6ForCausalLM` /
//! `RWKV7ForCausalLM`; BlinkDL's RWKV-7 checkpoints load through `rwkv7_blink.rs`): per
//! layer (layer 0 first normalising the embeddings with `pre_norm`) a LayerNorm, the
//! version's time mix (`blocks::rwkv::time_mix6` / `time_mix7`), a residual, a LayerNorm,
//! the channel mix and a residual; a final LayerNorm and the LM head. Token shifts and the
//! recurrence are session states, so nothing depends on a position. llama.cpp's `rwkv6` and
//! `rwkv7` GGUF files read as these (formats::gguf_hf_recurrent); `rescale_every`, which
//! fla's config does not have, comes from an `rwkv6` file.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};
use kestrel_runtime::TensorId;

use super::{Family, Network, NetworkConfig};
use crate::blocks::lm_head::LmHead;
use crate::blocks::norm::LayerNorm;
use crate::blocks::rwkv::{
    shift_weights, time_mix6, time_mix7, token_shift, ChannelMix, Halving, LayerConfig, MixInput,
};
use crate::blocks::GResult;
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::formats::config::keys::{why, ConfigKey};
use crate::model::ModelConfig;
use crate::vars::Vars;

pub const FAMILY: Family = Family {
    classes: &["RWKV6ForCausalLM", "RWKV7ForCausalLM"],
    model_types: &["rwkv6", "rwkv7"],
    // llama.cpp's RWKV-6 and RWKV-7 files (see formats::gguf_hf_recurrent).
    gguf: &[("rwkv6", "RWKV6ForCausalLM"), ("rwkv7", "RWKV7ForCausalLM")],
    parse: Some(|c| Ok(Box::new(RwkvConfig::from_json(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys fla's RWKV6Config / RWKV7Config and their models read.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("num_hidden_layers", "1"),
    ConfigKey::honoured("num_heads", "2"),
    ConfigKey::honoured("head_dim", "32"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("hidden_ratio", "2.0"),
    ConfigKey::honoured("intermediate_size", "64"),
    ConfigKey::honoured("norm_eps", "0.001"),
    ConfigKey::honoured("norm_bias", "false"),
    ConfigKey::honoured("norm_first", "false"),
    ConfigKey::honoured("tie_word_embeddings", "true"),
    // Not fla's: an `rwkv6` GGUF's rescale_every_n_layers.
    ConfigKey::honoured("rescale_every", "1"),
    // RWKV-6.
    ConfigKey::honoured("expand_k", "1.0"),
    ConfigKey::honoured("expand_v", "0.5"),
    ConfigKey::honoured("proj_low_rank_dim", "16"),
    // RWKV-6 and -7.
    ConfigKey::honoured("gate_low_rank_dim", "8"),
    // RWKV-7.
    ConfigKey::limited("value_dim", "32", "[64, 32]"),
    ConfigKey::honoured("decay_low_rank_dim", "8"),
    ConfigKey::honoured("a_low_rank_dim", "8"),
    ConfigKey::honoured("v_low_rank_dim", "16"),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    ConfigKey::refused("attn", r#"{"layers": [1], "num_heads": 4}"#),
    ConfigKey::inert(
        "fuse_norm",
        "picks fla's fused GroupNorm kernel; the norm (g_norm) is the same",
    ),
    ConfigKey::inert("attn_mode", why::FUSED),
    ConfigKey::inert("fuse_cross_entropy", why::TRAINING),
    ConfigKey::inert("fuse_linear_cross_entropy", why::TRAINING),
    ConfigKey::inert("use_l2warp", why::TRAINING),
    ConfigKey::inert("max_position_embeddings", why::POSITIONS),
];

#[derive(Debug, Clone, PartialEq)]
pub struct RwkvConfig {
    pub model: ModelConfig,
    pub layer: LayerConfig,
    pub layers: usize,
    /// LayerNorm eps (attn/ffn/pre/final norms).
    pub norm_eps: f32,
    /// Layer 0 normalises the embeddings first (fla's norm_first; BlinkDL's ln0).
    pub pre_norm: bool,
    pub tie_embeddings: bool,
    /// Halve the hidden states after every n-th layer (0: never; see `blocks::rwkv::Halving`).
    pub rescale_every: usize,
}

impl RwkvConfig {
    pub fn from_json(c: &JsonConfig) -> Result<RwkvConfig> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let version = match c.architecture()?.as_str() {
            "RWKV6ForCausalLM" | "rwkv6" => 6,
            _ => 7,
        };
        let hidden = c.dim("hidden_size", Dim::Hidden)?;
        let act = c
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("sqrelu");
        if act != "sqrelu" {
            return Err(bad(
                "hidden_act",
                format!("'{act}' is not supported (sqrelu is)"),
            ));
        }
        let ratio =
            |default: f64| -> Result<f64> { Ok(c.opt_f64("hidden_ratio")?.unwrap_or(default)) };
        let intermediate = |default_ratio: f64| -> Result<usize> {
            Ok(match c.opt_dim("intermediate_size", Dim::Intermediate)? {
                Some(n) => n,
                None => {
                    let n = c.scaled("hidden_ratio", Dim::Intermediate, hidden, ratio(default_ratio)?)?;
                    (n as usize).next_multiple_of(32)
                }
            })
        };
        let norm_eps = c.opt_f64("norm_eps")?.unwrap_or(1e-5) as f32;
        let divide = |key: &str, dim: usize, heads: usize| -> Result<usize> {
            if heads == 0 || dim == 0 || !dim.is_multiple_of(heads) {
                return Err(bad(
                    key,
                    format!("{dim} channels do not split into {heads} heads"),
                ));
            }
            Ok(dim / heads)
        };
        let (heads, head_k, head_v, ranks, ffn, ln_x_eps) = if version == 6 {
            let heads = c.dim("num_heads", Dim::Heads)?;
            let dim = |key: &str, default: f64| -> Result<usize> {
                let e = c.opt_f64(key)?.unwrap_or(default);
                let d = c.scaled(key, Dim::Intermediate, hidden, e)?;
                if d.round() != d {
                    return Err(bad(
                        key,
                        format!("{e} * hidden_size {hidden} is not a whole number of channels"),
                    ));
                }
                Ok(d as usize)
            };
            let head_k = divide("expand_k", dim("expand_k", 0.5)?, heads)?;
            let head_v = divide("expand_v", dim("expand_v", 1.0)?, heads)?;
            let mix = c.opt_dim("proj_low_rank_dim", Dim::Size)?.unwrap_or(32);
            let decay = c.opt_dim("gate_low_rank_dim", Dim::Size)?.unwrap_or(64);
            (
                heads,
                head_k,
                head_v,
                [mix, decay, 0, 0, 0],
                intermediate(3.5)?,
                norm_eps,
            )
        } else {
            let (heads, head_k) = match (c.opt_dim("head_dim", Dim::HeadDim)?, c.opt_dim("num_heads", Dim::Heads)?) {
                (Some(d), _) => (divide("head_dim", hidden, d)?, d),
                (None, Some(h)) => (h, divide("num_heads", hidden, h)?),
                (None, None) => return Err(bad("head_dim", "or num_heads must be set".into())),
            };
            let value_dim = match c.get("value_dim") {
                Some(serde_json::Value::Array(dims)) => {
                    let dims: Vec<Option<u64>> = dims.iter().map(|v| v.as_u64()).collect();
                    match dims.first() {
                        Some(Some(d)) if dims.iter().all(|x| *x == Some(*d)) => *d as usize,
                        _ => {
                            return Err(bad(
                                "value_dim",
                                "must list one value dim for every layer".into(),
                            ))
                        }
                    }
                }
                Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0) as usize,
                _ => hidden,
            };
            let value_dim = Dim::Intermediate
                .check(value_dim)
                .map_err(|m| bad("value_dim", m))?;
            let head_v = divide("value_dim", value_dim, heads)?;
            // fla's defaults (RWKV7Attention): multiples of 32 from sqrt(hidden).
            let factor = head_k as f64 / 64.0;
            let sq = (hidden as f64).sqrt();
            let default =
                |scale: f64, f: f64| 32.max(((scale * sq * f / 32.0).round() as usize) * 32);
            let rank = |key: &str, scale: f64, f: f64| -> Result<usize> {
                Ok(c.opt_usize(key)?.unwrap_or(default(scale, f)))
            };
            (
                heads,
                head_k,
                head_v,
                [
                    0,
                    rank("decay_low_rank_dim", 2.5, factor)?,
                    rank("a_low_rank_dim", 2.5, factor)?,
                    rank("v_low_rank_dim", 1.7, factor)?,
                    rank("gate_low_rank_dim", 5.0, 1.0)?,
                ],
                intermediate(4.0)?,
                head_k as f32 * norm_eps,
            )
        };
        if c.get("attn").is_some() {
            return Err(bad(
                "attn",
                "(hybrid attention layers) is not supported (must be null)".into(),
            ));
        }
        let layers = c.dim("num_hidden_layers", Dim::Layers)?;
        let architecture = FAMILY.classes[if version == 6 { 0 } else { 1 }];
        let model = ModelConfig::recurrent(architecture, c.dim("vocab_size", Dim::Vocab)?);
        let layer = LayerConfig {
            version,
            hidden,
            heads,
            head_k,
            head_v,
            intermediate: ffn,
            mix_rank: ranks[0],
            decay_rank: ranks[1],
            a_rank: ranks[2],
            v_rank: ranks[3],
            gate_rank: ranks[4],
            ln_x_eps,
            l2_eps: 1e-6,
            norm_bias: c.opt_bool("norm_bias")?.unwrap_or(true),
        };
        let config = RwkvConfig {
            model: model.with_config(c),
            layer,
            layers,
            norm_eps,
            pre_norm: c.opt_bool("norm_first")?.unwrap_or(true),
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            rescale_every: c.opt_usize("rescale_every")?.unwrap_or(0),
        };
        config
            .layer
            .scan_shape()
            .validate()
            .map_err(|e| bad("head_dim", e.to_string()))?;
        Ok(config)
    }
}

impl NetworkConfig for RwkvConfig {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        Ok(Arc::new(Rwkv::load(*self, vb)?))
    }
}

/// A version's time mix.
enum TimeMix {
    V6(time_mix6::TimeMix),
    V7(time_mix7::TimeMix),
}

struct Layer {
    pre_norm: Option<LayerNorm>,
    attn_norm: LayerNorm,
    ffn_norm: LayerNorm,
    time: TimeMix,
    ffn: ChannelMix,
}

pub struct Rwkv {
    config: RwkvConfig,
    embed: Arc<GpuWeight>,
    layers: Vec<Layer>,
    norm: LayerNorm,
    lm_head: LmHead,
    /// The token-shift conv weights: [1, -1] per channel (delta = x_prev - x).
    shift: Arc<GpuWeight>,
    halving: Option<Halving>,
}

impl Rwkv {
    /// Load from fla's tensor names in scope `vb`.
    pub fn load(config: RwkvConfig, vb: &Vars<'_>) -> Result<Rwkv> {
        let c = &config;
        let (h, bias) = (c.layer.hidden, c.layer.norm_bias);
        let body = vb.pp("model");
        let embed = body.matrix("embeddings.weight", c.model.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = body.pp("layers").pp(l);
            let pre_norm = match c.pre_norm && l == 0 {
                true => Some(LayerNorm::load(&p.pp("pre_norm"), h, bias)?),
                false => None,
            };
            let attn = p.pp("attn");
            let time = match c.layer.version {
                6 => TimeMix::V6(time_mix6::TimeMix::load(&attn, &c.layer)?),
                _ => TimeMix::V7(time_mix7::TimeMix::load(&attn, &c.layer, l)?),
            };
            layers.push(Layer {
                pre_norm,
                attn_norm: LayerNorm::load(&p.pp("attn_norm"), h, bias)?,
                ffn_norm: LayerNorm::load(&p.pp("ffn_norm"), h, bias)?,
                time,
                ffn: ChannelMix::load(&p.pp("ffn"), &c.layer)?,
            });
        }
        let norm = LayerNorm::load(&body.pp("norm"), h, bias)?;
        let lm_head = LmHead::load(vb, "lm_head.weight", &embed, c.tie_embeddings, [c.model.vocab, h])?;
        let shift = shift_weights(&vb.pp("rwkv"), h)?;
        let halving = Halving::load(vb, h, c.rescale_every)?;
        Ok(Rwkv {
            config,
            embed,
            layers,
            norm,
            lm_head,
            shift,
            halving,
        })
    }

    fn shift_state(&self, l: usize, which: &str) -> String {
        format!("layer.{l}.{which}_shift")
    }

    fn wkv_state(&self, l: usize) -> String {
        format!("layer.{l}.wkv")
    }

    fn token_shift(&self, g: &mut Graph, x: TensorId, state: &str) -> GResult<TensorId> {
        token_shift(g, &self.shift, x, state, self.config.layer.hidden)
    }
}

impl Network for Rwkv {
    fn config(&self) -> &ModelConfig {
        &self.config.model
    }
}

impl Architecture for Rwkv {
    fn vocab_size(&self) -> usize {
        self.config.model.vocab
    }

    /// No position limit: the state is the same size at any length.
    fn max_context(&self) -> usize {
        u32::MAX as usize
    }

    fn states(&self, _capacity: usize) -> Vec<StateSpec> {
        let c = &self.config;
        let (shape, hidden) = (c.layer.scan_shape(), c.layer.hidden);
        (0..c.layers)
            .flat_map(|l| {
                [
                    StateSpec::recurrent(self.shift_state(l, "attn"), vec![1, hidden]),
                    StateSpec::recurrent(self.shift_state(l, "ffn"), vec![1, hidden]),
                    StateSpec::recurrent(self.wkv_state(l), vec![shape.heads * shape.dv, shape.dk]),
                ]
            })
            .collect()
    }

    fn build(&self, n: usize, _capacity: usize, head: Head) -> GResult<Graph> {
        let c = &self.config;
        let mut g = Graph::for_head(head);
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        let shape = c.layer.scan_shape();
        // RWKV-7's value residual: layer 0's values.
        let mut v_first = None;
        for (l, layer) in self.layers.iter().enumerate() {
            if let Some(norm) = &layer.pre_norm {
                x = norm.apply(&mut g, x, c.norm_eps, 1)?;
            }
            let h = layer.attn_norm.apply(&mut g, x, c.norm_eps, 1)?;
            let delta = self.token_shift(&mut g, h, &self.shift_state(l, "attn"))?;
            let state = g.recurrent_state(&self.wkv_state(l), &[shape.heads * shape.dv, shape.dk]);
            let input = MixInput {
                x: h,
                delta,
                residual: x,
                state,
                shape,
            };
            // Both mixes add into the residual stream x in place.
            x = match &layer.time {
                TimeMix::V6(t) => t.apply(&mut g, &c.layer, &input)?,
                TimeMix::V7(t) => t.apply(&mut g, &c.layer, &input, &mut v_first)?,
            };
            let h = layer.ffn_norm.apply(&mut g, x, c.norm_eps, 1)?;
            let delta = self.token_shift(&mut g, h, &self.shift_state(l, "ffn"))?;
            x = layer.ffn.apply_into(&mut g, h, delta, x)?;
            if let Some(halving) = &self.halving {
                x = halving.apply(&mut g, x, l)?;
            }
        }
        let x = self.norm.apply(&mut g, x, c.norm_eps, 1)?;
        self.lm_head.apply(&mut g, x, head)?;
        Ok(g)
    }
}

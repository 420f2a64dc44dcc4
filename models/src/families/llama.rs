//! The Llama family as one configurable decoder: LlamaForCausalLM (GQA, tied or untied
//! embeddings, Llama-3 RoPE scaling), MistralForCausalLM (sliding-window attention) and
//! Qwen2ForCausalLM (q/k/v biases, per-layer sliding windows), and their sparse
//! mixture-of-experts variants MixtralForCausalLM and Qwen2MoeForCausalLM (experts in place
//! of the MLP). LLaDA (`llada.rs`) runs the same decoder bidirectionally. Attention can
//! further be switched, at load time, to StreamingLLM sinks or block-sparse patterns.
//! Other families configure the same decoder through [`DecoderOptions`]
//! (`decoder_options.rs`): `qwen3.rs`, `gemma.rs`, `smollm3.rs`, `olmo2.rs`, `phi3.rs`.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::block_mask::{BlockMask, SparsePattern};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::attention::{mask_blocks, AttnShape};
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::rope::{self, Llama3Scaling};
use kestrel_runtime::kernels::rope_cache_write::{QkNorm, QkSpan};
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};
use kestrel_runtime::TensorId;

use super::decoder_options::{DecoderOptions, LayerRope, LongRope, NormPlacement};
use super::{Family, Network, NetworkConfig};
use crate::blocks::attention::{
    AttentionNames, AttentionRun, AttentionWeights, KvCache, ATTENTION,
};
use crate::blocks::attention_options::{AttentionError, AttentionOptions};
use crate::blocks::lm_head::LmHead;
use crate::blocks::mlp::{MlpNames, MLP};
use crate::blocks::moe::{FeedForward, MoeConfig, MoeNames, MIXTRAL, QWEN2_MOE};
use crate::blocks::norm::RmsNorm;
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::formats::config::keys::{why, ConfigKey};
use crate::model::ModelConfig;
use crate::vars::Vars;

pub const FAMILY: Family = Family {
    classes: &[
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "MixtralForCausalLM",
        "Qwen2MoeForCausalLM",
    ],
    model_types: &["llama", "mistral", "qwen2", "mixtral", "qwen2_moe"],
    gguf: &[
        ("llama", "LlamaForCausalLM"),
        ("qwen2", "Qwen2ForCausalLM"),
        ("qwen2moe", "Qwen2MoeForCausalLM"),
    ],
    parse: Some(|c| Ok(Box::new(DecoderConfig::from_json(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers 5's Llama, Mistral, Qwen2, Mixtral and Qwen2-MoE configs and
/// modeling code read (a key one class reads is ignored by the others' reference, and so
/// here).
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("intermediate_size", "64"),
    ConfigKey::honoured("num_hidden_layers", "1"),
    ConfigKey::honoured("num_attention_heads", "8"),
    ConfigKey::honoured("num_key_value_heads", "1"),
    ConfigKey::honoured("head_dim", "32"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("max_position_embeddings", "64"),
    ConfigKey::honoured("rms_norm_eps", "0.001"),
    ConfigKey::honoured("tie_word_embeddings", "true"),
    ConfigKey::honoured("rope_theta", "500000.0"),
    ConfigKey::limited(
        "rope_parameters",
        r#"{"rope_type": "default", "rope_theta": 1234.0}"#,
        r#"{"rope_type": "yarn", "factor": 4.0}"#,
    ),
    ConfigKey::limited(
        "rope_scaling",
        r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}"#,
        r#"{"type": "linear", "factor": 2.0}"#,
    ),
    ConfigKey::limited("is_causal", "false", "\"no\""),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    // Llama: biases on q, k, v and o (Kestrel has no o_proj bias) / on the MLP.
    ConfigKey::refused("attention_bias", "true"),
    ConfigKey::refused("mlp_bias", "true"),
    ConfigKey::inert(
        "pretraining_tp",
        "transformers 5 no longer reads it (it split matmuls, same result)",
    ),
    ConfigKey::refused("partial_rotary_factor", "0.5"),
    ConfigKey::inert("attention_dropout", why::TRAINING),
    // Sliding windows (Mistral, Mixtral, Qwen2, Qwen2-MoE).
    ConfigKey::honoured("sliding_window", "2"),
    ConfigKey::honoured("use_sliding_window", "false"),
    ConfigKey::honoured("max_window_layers", "2"),
    ConfigKey::limited(
        "layer_types",
        r#"["full_attention", "sliding_attention"]"#,
        r#"["full_attention", "chunked_attention"]"#,
    ),
    // Experts (Mixtral, Qwen2-MoE); Qwen2-MoE's attention biases.
    ConfigKey::honoured("num_local_experts", "3"),
    ConfigKey::honoured("num_experts", "6"),
    ConfigKey::honoured("num_experts_per_tok", "1"),
    ConfigKey::honoured("moe_intermediate_size", "16"),
    ConfigKey::honoured("shared_expert_intermediate_size", "16"),
    ConfigKey::honoured("norm_topk_prob", "true"),
    ConfigKey::honoured("decoder_sparse_step", "2"),
    ConfigKey::honoured("mlp_only_layers", "[0]"),
    ConfigKey::honoured("qkv_bias", "false"),
    ConfigKey::inert("router_aux_loss_coef", why::TRAINING),
    ConfigKey::inert("router_jitter_noise", why::TRAINING),
    ConfigKey::inert("output_router_logits", why::RUNTIME),
    // Kestrel's own (LLaDA-style diffusion over a Llama config).
    ConfigKey::honoured("mask_token_id", "5"),
];

/// Where a decoder's tensors are in its checkpoints. Scopes may be empty (the enclosing
/// scope itself).
#[derive(Debug, PartialEq)]
pub struct DecoderNames {
    /// The scope of the embedding, the layers and the final norm.
    pub body: &'static str,
    pub embed: &'static str,
    pub layers: &'static str,
    /// In a layer: the norms, the attention and the MLP.
    pub attn_norm: &'static str,
    pub attention: &'static str,
    pub projections: AttentionNames,
    pub mlp_norm: &'static str,
    pub mlp: &'static str,
    pub mlp_projections: MlpNames,
    /// Norms of the attention's and the MLP's outputs (sandwich and post-norm blocks).
    pub post_attn_norm: &'static str,
    pub post_mlp_norm: &'static str,
    /// In the attention: q's and k's norms (QK-norm).
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    /// In the body.
    pub norm: &'static str,
    /// From the root.
    pub lm_head: &'static str,
}

/// Hugging Face's names (`model.layers.3.self_attn.q_proj.weight`).
pub const HF: DecoderNames = DecoderNames {
    body: "model",
    embed: "embed_tokens.weight",
    layers: "layers",
    attn_norm: "input_layernorm",
    attention: "self_attn",
    projections: ATTENTION,
    mlp_norm: "post_attention_layernorm",
    mlp: "mlp",
    mlp_projections: MLP,
    post_attn_norm: "",
    post_mlp_norm: "",
    q_norm: "q_norm",
    k_norm: "k_norm",
    norm: "norm",
    lm_head: "lm_head.weight",
};

/// A layer's sparse experts: their config, their names and their scope in the layer.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderExperts {
    pub config: MoeConfig,
    pub names: MoeNames,
    pub scope: &'static str,
    /// The layers that have experts (the others a dense MLP).
    pub layers: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub model: ModelConfig,
    pub names: &'static DecoderNames,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub rope_theta: f64,
    pub llama3: Option<Llama3Scaling>,
    pub longrope: Option<LongRope>,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    /// Each layer's sliding window (positions a query sees, itself included), if any.
    pub layer_windows: Vec<Option<usize>>,
    pub experts: Option<DecoderExperts>,
    pub options: DecoderOptions,
}

impl DecoderConfig {
    /// A Hugging Face config of one of the family's classes.
    pub fn from_json(c: &JsonConfig) -> Result<DecoderConfig> {
        let architecture = c.architecture()?;
        let qwen2_moe = matches!(architecture.as_str(), "Qwen2MoeForCausalLM" | "qwen2_moe");
        let qwen2 = qwen2_moe || matches!(architecture.as_str(), "Qwen2ForCausalLM" | "qwen2");
        // Qwen3 and Qwen3-MoE pick sliding layers by Qwen2's rule.
        let qwen_windows = qwen2
            || matches!(
                architecture.as_str(),
                "Qwen3ForCausalLM" | "qwen3" | "Qwen3MoeForCausalLM" | "qwen3_moe"
            );
        let llama = matches!(architecture.as_str(), "LlamaForCausalLM" | "llama");
        let hidden = c.dim("hidden_size", Dim::Hidden)?;
        let heads = c.dim("num_attention_heads", Dim::Heads)?;
        let kv_heads = c.opt_dim("num_key_value_heads", Dim::Heads)?.unwrap_or(heads);
        let head_dim = match c.opt_dim("head_dim", Dim::HeadDim)? {
            Some(d) => d,
            None => c.divide("num_attention_heads", hidden, heads)?,
        };
        check_heads(
            c,
            ["num_attention_heads", "num_key_value_heads", "head_dim"],
            [heads, kv_heads, head_dim],
        )?;
        let bad = |key: &str, message: String| bad(c, key, message);
        // transformers' Gemma reads hidden_activation (its own check); Gemma 2 configs on the
        // Hub carry a hidden_act beside it that nothing reads.
        let gemma = matches!(
            architecture.as_str(),
            "Gemma2ForCausalLM" | "gemma2" | "Gemma3ForCausalLM" | "gemma3_text"
        );
        let act = c.get("hidden_act").and_then(|v| v.as_str());
        if !gemma && !matches!(act, None | Some("silu")) {
            return Err(bad("hidden_act", format!("{} is not supported (silu)", c.value["hidden_act"])));
        }
        // Llama's attention_bias also biases o_proj, which Kestrel does not implement;
        // mlp_bias biases the MLP. The other classes' references read neither.
        for key in ["attention_bias", "mlp_bias"] {
            if llama && c.opt_bool(key)?.unwrap_or(false) {
                return Err(bad(key, "true is not supported".into()));
            }
        }
        // transformers 5 reads RoPE settings from rope_scaling when set, else from
        // rope_parameters; a top-level rope_theta is the default of the dict's own.
        let (rope_key, rope) = match c.get("rope_scaling") {
            Some(s) => ("rope_scaling", Some(s)),
            None => ("rope_parameters", c.get("rope_parameters")),
        };
        let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
            Some(t) => t.as_f64().ok_or_else(|| {
                bad(&format!("{rope_key}.rope_theta"), "must be a number".into())
            })?,
            None => c.opt_f64("rope_theta")?.unwrap_or(10000.0),
        };
        // RoPE over part of each head: Phi-3's (the other classes refuse it).
        let partial = "partial_rotary_factor";
        let factor = rope.and_then(|r| r.get(partial)).or(c.get(partial));
        let phi3 = matches!(architecture.as_str(), "Phi3ForCausalLM" | "phi3");
        let rotary_dims = match factor.map(|f| (f.as_f64(), f)) {
            None | Some((Some(1.0), _)) => head_dim,
            Some((Some(f), _)) if phi3 && f > 0.0 && f < 1.0 => {
                // transformers: int(head_dim * factor), rotated in pairs.
                let dims = (head_dim as f64 * f) as usize;
                if dims == 0 || !dims.is_multiple_of(2) {
                    return Err(bad(partial, format!("gives {dims} rotated dims (not even)")));
                }
                dims
            }
            Some((_, f)) => {
                return Err(bad(partial, format!("{f} is not supported (1.0)")));
            }
        };
        let kind = rope
            .and_then(|s| s.get("rope_type").or(s.get("type")))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        // transformers' Phi-3 reads "su" (and "yarn") as LongRoPE.
        let longrope = match (rope, kind) {
            (Some(s), "longrope" | "su" | "yarn") if phi3 => {
                Some(LongRope::from_json(c, rope_key, s, rotary_dims)?)
            }
            _ => None,
        };
        let llama3 = match rope {
            None => None,
            Some(_) if longrope.is_some() => None,
            Some(s) => {
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| {
                            s.get(k)
                                .and_then(|v| v.as_f64())
                                .map(|v| v as f32)
                                .ok_or_else(|| {
                                    bad(
                                        &format!("{rope_key}.{k}"),
                                        "is missing or not a number".into(),
                                    )
                                })
                        };
                        Some(Llama3Scaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position: f("original_max_position_embeddings")?,
                        })
                    }
                    other => {
                        return Err(bad(
                            rope_key,
                            format!("type '{other}' is not supported (default, llama3)"),
                        ))
                    }
                }
            }
        };
        let layers = c.dim("num_hidden_layers", Dim::Layers)?;
        let layer_windows = layer_windows(c, &architecture, qwen_windows, layers)?;
        let experts = experts(c, &architecture, layers)?;
        let intermediate = c.dim("intermediate_size", Dim::Intermediate)?;
        let vocab = c.dim("vocab_size", Dim::Vocab)?;
        // transformers 5 makes a decoder bidirectional with `is_causal: false`
        // (masking_utils.create_causal_mask); LLaDA's path runs it.
        let causal = c.opt_bool("is_causal")?.unwrap_or(true);
        if !causal && layer_windows.iter().any(Option::is_some) {
            return Err(bad(
                "is_causal",
                "false with sliding-window layers (bidirectional windows) is not supported"
                    .into(),
            ));
        }
        let mask_token = match c.opt_usize("mask_token_id")? {
            Some(m) if m >= vocab => {
                return Err(bad(
                    "mask_token_id",
                    format!("({m}) is not below vocab_size"),
                ))
            }
            m => m.map(|m| m as u32),
        };
        let model = ModelConfig {
            mask_token,
            causal,
            ..ModelConfig::causal(
                &architecture,
                vocab,
                c.dim("max_position_embeddings", Dim::Context)?,
            )
            .with_config(c)
        };
        Ok(DecoderConfig {
            model,
            names: &HF,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            llama3,
            longrope,
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            // Qwen2 always biases q, k and v; Qwen2-MoE as its qkv_bias says (default true).
            qkv_bias: match qwen2_moe {
                true => c.opt_bool("qkv_bias")?.unwrap_or(true),
                false => qwen2,
            },
            layer_windows,
            experts,
            options: DecoderOptions {
                rotary_dims,
                ..DecoderOptions::default()
            },
        })
    }

    pub(crate) fn attn_shape(&self) -> AttnShape {
        AttnShape {
            softcap: self.options.attn_softcap,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: self
                .options
                .attn_scale
                .unwrap_or(1.0 / (self.head_dim as f32).sqrt()),
        }
    }

    /// Layer `l`'s RoPE.
    fn layer_rope(&self, l: usize) -> LayerRope {
        self.options
            .layer_rope
            .get(l)
            .copied()
            .unwrap_or(LayerRope::Default)
    }
}

impl NetworkConfig for DecoderConfig {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        Ok(Arc::new(Decoder::load(*self, vb)?))
    }
}

/// Layer scope `attention`'s q and k norm weights as one vector (q's, then k's; see
/// `QkNorm`), with the norm offset folded in.
fn qk_norm_weights(
    c: &DecoderConfig,
    attention: &Vars<'_>,
    span: QkSpan,
) -> Result<Arc<GpuWeight>> {
    let (n, hd) = (c.names, c.head_dim);
    let [q, k] = match span {
        QkSpan::Head => [hd, hd],
        QkSpan::Whole => [c.heads * hd, c.kv_heads * hd],
    };
    let mut w = attention.pp(n.q_norm).host("weight", &[q])?;
    w.extend(attention.pp(n.k_norm).host("weight", &[k])?);
    for v in &mut w {
        *v += c.options.norm_offset;
    }
    attention.computed_vector("qk_norm.weight", &w)
}

pub(crate) fn bad(c: &JsonConfig, key: &str, message: String) -> ModelError {
    ModelError::BadConfigValue {
        file: c.path.clone(),
        key: key.into(),
        message,
    }
}

/// Refuse, naming the key, any of `keys` set to true: options the family does not implement.
pub(crate) fn refuse_true(c: &JsonConfig, keys: &[&str]) -> Result<()> {
    for &key in keys {
        if c.opt_bool(key)?.unwrap_or(false) {
            return Err(bad(c, key, "true is not supported".into()));
        }
    }
    Ok(())
}

/// Check attention heads against each other: kv heads divide heads, the head dim is even
/// (RoPE rotates pairs). `keys` name heads, kv heads and the head dim in errors.
pub(crate) fn check_heads(
    c: &JsonConfig,
    [heads_key, kv_key, dim_key]: [&str; 3],
    [heads, kv_heads, head_dim]: [usize; 3],
) -> Result<()> {
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(bad(
            c,
            kv_key,
            format!("({kv_heads}) must divide {heads_key} ({heads})"),
        ));
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(bad(
            c,
            dim_key,
            format!("({head_dim}) must be positive and even"),
        ));
    }
    // The q projection's width.
    c.product(heads_key, Dim::Hidden, &[heads, head_dim])?;
    Ok(())
}

/// The experts of Mixtral (every layer; probabilities renormalised over the top k) and
/// Qwen2-MoE (layers where (l + 1) % decoder_sparse_step == 0 and not in mlp_only_layers;
/// norm_topk_prob; a sigmoid-gated shared expert).
fn experts(c: &JsonConfig, architecture: &str, layers: usize) -> Result<Option<DecoderExperts>> {
    match architecture {
        "MixtralForCausalLM" | "mixtral" => {
            let inter = c.dim("intermediate_size", Dim::Intermediate)?;
            Ok(Some(DecoderExperts {
                config: MoeConfig::from_json(c, "num_local_experts", inter, true, None)?,
                names: MIXTRAL,
                scope: "block_sparse_moe",
                layers: vec![true; layers],
            }))
        }
        "Qwen2MoeForCausalLM" | "qwen2_moe" | "Qwen3MoeForCausalLM" | "qwen3_moe" => {
            let inter = c.dim("moe_intermediate_size", Dim::Intermediate)?;
            // 0: no shared expert.
            let shared = match c.opt_usize("shared_expert_intermediate_size")? {
                Some(0) | None => None,
                Some(_) => c.opt_dim("shared_expert_intermediate_size", Dim::Intermediate)?,
            };
            let renorm = c.opt_bool("norm_topk_prob")?.unwrap_or(false);
            // transformers 5 writes Qwen3-MoE's count as num_local_experts, 4 as num_experts.
            let count = match c.get("num_local_experts").filter(|v| !v.is_null()) {
                Some(_) => "num_local_experts",
                None => "num_experts",
            };
            let config = MoeConfig::from_json(c, count, inter, renorm, shared)?;
            let step = c.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1);
            let dense: Vec<usize> = c
                .get("mlp_only_layers")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as usize)
                        .collect()
                })
                .unwrap_or_default();
            Ok(Some(DecoderExperts {
                config,
                names: QWEN2_MOE,
                scope: "mlp",
                layers: (0..layers)
                    .map(|l| !dense.contains(&l) && (l + 1) % step == 0)
                    .collect(),
            }))
        }
        _ => Ok(None),
    }
}

/// Sliding windows per layer (none for Llama). `layer_types` ("sliding_attention" /
/// "full_attention") when the config lists them; else Qwen2's rule (with
/// `use_sliding_window`, layers from `max_window_layers` on slide); else Mistral's
/// `sliding_window` for every layer.
fn layer_windows(
    c: &JsonConfig,
    architecture: &str,
    qwen2: bool,
    layers: usize,
) -> Result<Vec<Option<usize>>> {
    let mistral = matches!(architecture, "MistralForCausalLM" | "mistral");
    // transformers' Llama reads neither sliding_window nor layer_types: full attention.
    if matches!(architecture, "LlamaForCausalLM" | "llama") {
        return Ok(vec![None; layers]);
    }
    let bad = |key: &str, message: String| bad(c, key, message);
    // transformers' MistralConfig defaults a missing sliding_window to 4096 (null: none).
    let window = match c.get("sliding_window") {
        None if mistral => Some(4096),
        _ => c.opt_usize("sliding_window")?.map(|w| w.min(Dim::Context.max())),
    };
    let enabled = !qwen2 || c.opt_bool("use_sliding_window")?.unwrap_or(false);
    let window = window.filter(|_| enabled);
    if window == Some(0) {
        return Err(bad("sliding_window", "must be at least 1".into()));
    }
    if let Some(types) = c.get("layer_types").and_then(|v| v.as_array()) {
        if types.len() != layers {
            return Err(bad(
                "layer_types",
                format!("lists {} layers, the model has {layers}", types.len()),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                // Without a window (unset, or Qwen2's use_sliding_window false) transformers
                // runs a sliding_attention layer with full attention.
                Some("sliding_attention") => Ok(window),
                _ => Err(bad("layer_types", format!("entry {t} is not supported"))),
            })
            .collect();
    }
    let first_sliding = if qwen2 {
        c.opt_usize("max_window_layers")?.unwrap_or(0)
    } else {
        0
    };
    Ok((0..layers)
        .map(|l| window.filter(|_| l >= first_sliding))
        .collect())
}

#[derive(Clone)]
struct Layer {
    /// Pre- and post-norms of the attention and the MLP, as the placement has them.
    attn_norm: Option<RmsNorm>,
    post_attn_norm: Option<RmsNorm>,
    attn: AttentionWeights,
    /// q's then k's norm weights (QK-norm).
    qk_norm: Option<Arc<GpuWeight>>,
    /// Index into the decoder's RoPE frequencies; None: no RoPE.
    rope: Option<usize>,
    mlp_norm: Option<RmsNorm>,
    post_mlp_norm: Option<RmsNorm>,
    ffn: FeedForward,
}

impl Layer {
    /// `x + post(f(pre(x)))` with the norms this layer has: the pre-norm and the add fused
    /// into the projections when there is no post-norm (`residual`), else `normed` (f of the
    /// pre-normed x as a new tensor), its norm and an add.
    fn block(
        g: &mut Graph,
        x: TensorId,
        [pre, post]: [Option<&RmsNorm>; 2],
        residual: impl FnOnce(&mut Graph, &RmsNorm) -> kestrel_runtime::Result<TensorId>,
        normed: impl FnOnce(&mut Graph, Option<&RmsNorm>) -> kestrel_runtime::Result<TensorId>,
    ) -> kestrel_runtime::Result<TensorId> {
        match (pre, post) {
            (Some(pre), None) => residual(g, pre),
            (pre, post) => {
                let mut y = normed(g, pre)?;
                if let Some(post) = post {
                    y = post.apply(g, y)?;
                }
                g.add_tensors(x, y)
            }
        }
    }
}

/// LongRoPE's frequencies on the GPU: `inv_freqs[index]` holds the short ones.
#[derive(Clone)]
struct LongRopeFreqs {
    index: usize,
    long: Arc<GpuWeight>,
    original_max: usize,
    scale: f32,
}

/// The decoder with its weights on the GPU.
#[derive(Clone)]
pub struct Decoder {
    config: DecoderConfig,
    attention: AttentionOptions,
    embed: Arc<GpuWeight>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: LmHead,
    /// The distinct RoPE frequencies of the layers.
    inv_freqs: Vec<Arc<GpuWeight>>,
    longrope: Option<LongRopeFreqs>,
    /// [hidden] copies of the embedding scale.
    embed_scale: Option<Arc<GpuWeight>>,
}

impl Decoder {
    /// Upload the weights, named as `config.names` says, from the root scope `vb`.
    pub fn load(config: DecoderConfig, vb: &Vars<'_>) -> Result<Decoder> {
        let c = &config;
        let (n, h, o) = (c.names, c.hidden, &c.options);
        let body = vb.pp(n.body);
        let embed = body.matrix(n.embed, c.model.vocab, h)?;
        let norm = |scope: &Vars<'_>, name: &str| {
            RmsNorm::load_offset(&scope.pp(name), h, c.eps, o.norm_offset)
        };
        let (pre, post) = match o.norms {
            NormPlacement::Pre => (true, false),
            NormPlacement::Sandwich => (true, true),
            NormPlacement::Post => (false, true),
        };
        // Distinct RoPE frequencies, by (theta, scaled).
        let mut ropes: Vec<(f64, bool)> = Vec::new();
        let mut inv_freqs = Vec::new();
        let mut longrope = None;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = body.pp(n.layers).pp(l);
            let experts = c.experts.as_ref().filter(|e| e.layers[l]);
            let ffn_scope = p.pp(experts.map_or(n.mlp, |e| e.scope));
            let attention = p.pp(n.attention);
            let rope = match c.layer_rope(l) {
                LayerRope::NoPe => None,
                LayerRope::Default => Some((c.rope_theta, true)),
                LayerRope::Theta(t) => Some((t, false)),
            };
            let rope = match rope {
                None => None,
                Some(key) => Some(match ropes.iter().position(|r| *r == key) {
                    Some(i) => i,
                    None => {
                        let scaling = if key.1 { c.llama3 } else { None };
                        let dims = match o.rotary_dims {
                            0 => c.head_dim,
                            d => d,
                        };
                        let label = format!("rope.inv_freq.{}", ropes.len());
                        let freqs = match c.longrope.as_ref().filter(|_| key.1) {
                            // The short factors here, the long ones beside.
                            Some(lr) => {
                                let long = rope::longrope_inv_freq(key.0, &lr.long);
                                longrope = Some(LongRopeFreqs {
                                    index: ropes.len(),
                                    long: vb.computed_vector(&format!("{label}.long"), &long)?,
                                    original_max: lr.original_max,
                                    scale: lr.attention_factor,
                                });
                                rope::longrope_inv_freq(key.0, &lr.short)
                            }
                            None => rope::inv_freq(key.0, dims, scaling),
                        };
                        inv_freqs.push(vb.computed_vector(&label, &freqs)?);
                        ropes.push(key);
                        ropes.len() - 1
                    }
                }),
            };
            let qk_norm = match o.qk_norm {
                None => None,
                Some(span) => Some(qk_norm_weights(c, &attention, span)?),
            };
            let ffn = FeedForward::load(
                &ffn_scope,
                experts.map(|e| (&e.config, e.names)),
                n.mlp_projections,
                l,
                [h, c.intermediate],
            )?;
            layers.push(Layer {
                attn_norm: pre.then(|| norm(&p, n.attn_norm)).transpose()?,
                post_attn_norm: post.then(|| norm(&p, n.post_attn_norm)).transpose()?,
                attn: AttentionWeights::load(
                    &attention,
                    n.projections,
                    [h, h],
                    &c.attn_shape(),
                    c.qkv_bias,
                )?,
                qk_norm,
                rope,
                mlp_norm: pre.then(|| norm(&p, n.mlp_norm)).transpose()?,
                post_mlp_norm: post.then(|| norm(&p, n.post_mlp_norm)).transpose()?,
                ffn: ffn.with_gate(o.act),
            });
        }
        let norm = norm(&body, n.norm)?;
        let mut lm_head =
            LmHead::load(vb, n.lm_head, &embed, c.tie_embeddings, [c.model.vocab, h])?;
        if let Some(cap) = o.final_softcap {
            lm_head = lm_head.with_softcap(vb, cap)?;
        }
        let embed_scale = match o.embed_scale {
            Some(s) => Some(vb.computed_vector("embed_scale", &vec![s; h])?),
            None => None,
        };
        Ok(Decoder {
            attention: AttentionOptions::default(),
            config,
            embed,
            layers,
            norm,
            lm_head,
            inv_freqs,
            longrope,
            embed_scale,
        })
    }

    /// The KV cache states for caches laid out as `layouts`, and the experts' counters.
    fn states_of(&self, layouts: &[KvLayout]) -> Vec<StateSpec> {
        let kvd = self.config.kv_heads * self.config.head_dim;
        let mut states: Vec<StateSpec> = (layouts.iter().enumerate())
            .flat_map(|(l, layout)| KvCache { layer: l }.states(layout, kvd))
            .collect();
        states.extend(self.layers.iter().filter_map(|l| l.ffn.state()));
        states
    }

    fn sparse_pattern(&self, l: usize) -> Option<SparsePattern> {
        self.attention.sparse.as_ref().and_then(|s| s.for_layer(l))
    }

    /// The cache layout of layer `l` for a sequence of up to `capacity` tokens.
    fn layout(&self, l: usize, capacity: usize) -> kestrel_runtime::Result<KvLayout> {
        Ok(
            match (self.attention.streaming, self.config.layer_windows[l]) {
                (Some((sinks, window)), _) => KvLayout::streaming(sinks, window)?,
                (None, Some(w)) => KvLayout::sliding(w, capacity)?,
                (None, None) => KvLayout::linear(capacity),
            },
        )
    }

    /// The decoder over token ids `ids` [n]: embedding and the layers (writing their KV
    /// caches); returns the hidden states [n, hidden] before the final norm.
    fn forward(
        &self,
        g: &mut Graph,
        ids: TensorId,
        capacity: usize,
    ) -> kestrel_runtime::Result<TensorId> {
        let c = &self.config;
        let embed = g.weight(&self.embed);
        let mut inv_freqs: Vec<TensorId> = self.inv_freqs.iter().map(|f| g.weight(f)).collect();
        // LongRoPE: the long factors for a session longer than the pretraining context
        // (llama.cpp's rule; fixed for the session, as the cache holds rotated keys).
        let mut scaled = None;
        if let Some(lr) = &self.longrope {
            if capacity > lr.original_max {
                inv_freqs[lr.index] = g.weight(&lr.long);
            }
            scaled = Some((lr.index, lr.scale));
        }
        let mut x = g.embedding(embed, ids)?;
        if let Some(s) = &self.embed_scale {
            let s = g.weight(s);
            x = g.elementwise(Elementwise::Mul, x, s)?;
        }
        let layouts = g.kv_layouts(capacity, |c| {
            (0..self.layers.len())
                .map(|l| self.layout(l, c))
                .collect()
        })?;
        for (l, layer) in self.layers.iter().enumerate() {
            let layout = layouts[l];
            let mask = self.sparse_pattern(l).map(|pattern| {
                let blocks = mask_blocks(layout.rows);
                g.block_mask(&BlockMask::causal(&pattern, c.heads, blocks, l))
            });
            let run = AttentionRun {
                cache: &KvCache { layer: l },
                layout,
                shape: c.attn_shape(),
                causal: c.model.causal,
                inv_freq: layer.rope.map(|i| inv_freqs[i]),
                rope_scale: match (layer.rope, scaled) {
                    (Some(i), Some((j, scale))) if i == j => scale,
                    _ => 1.0,
                },
                qk_norm: match (&layer.qk_norm, c.options.qk_norm) {
                    (Some(w), Some(span)) => Some(QkNorm {
                        weight: g.weight(w),
                        eps: c.eps,
                        span,
                    }),
                    _ => None,
                },
                mask,
            };
            // Without post-norms each block's norm and residual add live in its projections
            // (kernels/linear.rs).
            let (attn, ffn) = (&layer.attn, &layer.ffn);
            let norms = [layer.attn_norm.as_ref(), layer.post_attn_norm.as_ref()];
            x = Layer::block(
                g,
                x,
                norms,
                |g, pre| attn.residual(g, x, pre, run),
                |g, pre| attn.normed(g, x, pre, run),
            )?;
            let norms = [layer.mlp_norm.as_ref(), layer.post_mlp_norm.as_ref()];
            x = Layer::block(
                g,
                x,
                norms,
                |g, pre| ffn.residual(g, x, pre),
                |g, pre| ffn.normed(g, x, pre),
            )?;
        }
        Ok(x)
    }
}

impl Network for Decoder {
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
        self.config.layer_windows.clone()
    }

    fn with_attention(
        &self,
        options: &AttentionOptions,
    ) -> Result<Arc<dyn Network>, AttentionError> {
        let c = &self.config;
        options.check(&c.layer_windows, c.model.max_positions)?;
        if options.streaming.is_some() && self.longrope.is_some() {
            return Err(AttentionError::SinksWithLongRope);
        }
        Ok(Arc::new(Decoder {
            attention: options.clone(),
            ..self.clone()
        }))
    }
}

impl Architecture for Decoder {
    fn vocab_size(&self) -> usize {
        self.config.model.vocab
    }

    /// With attention sinks positions stay inside the cache, so a sequence may grow without
    /// bound; otherwise the model's position limit.
    fn max_context(&self) -> usize {
        match self.attention.streaming {
            Some(_) => u32::MAX as usize,
            None => self.config.model.max_positions,
        }
    }

    fn kv_layouts(&self, capacity: usize) -> Vec<KvLayout> {
        (0..self.config.layers)
            .map(|l| {
                self.layout(l, capacity)
                    .unwrap_or(KvLayout::linear(capacity))
            })
            .collect()
    }

    fn states(&self, capacity: usize) -> Vec<StateSpec> {
        self.states_of(&self.kv_layouts(capacity))
    }

    /// Every layer's caches are the pool.
    fn batch_states(&self, pool_rows: usize, _slots: usize) -> Vec<StateSpec> {
        self.states_of(&vec![KvLayout::linear(pool_rows); self.config.layers])
    }

    fn batch_refusal(&self) -> Option<String> {
        let why = if !self.config.model.causal {
            "its attention is bidirectional"
        } else if self.attention.sparse.is_some() {
            "block-sparse masks are not paged"
        } else if self.longrope.is_some() {
            "LongRoPE picks its factors by each sequence's context"
        } else {
            return None;
        };
        Some(why.into())
    }

    fn build(&self, n: usize, capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let mut g = Graph::for_head(head);
        let ids = g.input("tokens", &[n], DType::U32);
        let x = self.forward(&mut g, ids, capacity)?;
        match head {
            Head::AllLogits | Head::Sample | Head::Verify | Head::Batch(_) => {
                self.lm_head.apply_normed(&mut g, x, &self.norm, head)?
            }
            Head::Unmask(u) => {
                let x = self.norm.apply(&mut g, x)?;
                let logits = self.lm_head.logits(&mut g, x)?;
                // Classifier-free guidance: the prompt-masked sequence's forward runs after the
                // conditional one in the same graph, over the same KV state (every guided step
                // is a full forward, so no cache has to survive it).
                let uncond = if u.cfg_scale() != 0.0 {
                    let ids = g.input("uncond_tokens", &[n], DType::U32);
                    let x = self.forward(&mut g, ids, capacity)?;
                    let x = self.norm.apply(&mut g, x)?;
                    Some(self.lm_head.logits(&mut g, x)?)
                } else {
                    None
                };
                let chosen = g.unmask(
                    logits,
                    uncond,
                    ids,
                    u.mask_id,
                    u.cfg_scale(),
                    u.random_remasking,
                )?;
                g.output(chosen);
            }
        }
        Ok(g)
    }
}

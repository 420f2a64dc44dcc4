//! Gemma 2 and Gemma 3 (text) on the shared decoder (`llama.rs`): sandwich norms (a norm
//! before and after the attention and the MLP, the second before the residual add), `1 + w`
//! RMSNorms (the 1 folded into the weights at load), embeddings scaled by sqrt(hidden),
//! GeGLU with the tanh GELU, the attention scale `query_pre_attn_scalar^-0.5`, local
//! (sliding-window) and global layers, tied embeddings, and soft-capped attention scores and
//! logits where the config sets them (Gemma 2's defaults). Gemma 3 adds QK-norm per head and
//! a RoPE base of their own for the local layers; Gemma 2 alternates local and global layers.

use kestrel_runtime::kernels::elementwise::Gate;
use kestrel_runtime::kernels::rope_cache_write::QkSpan;
use serde_json::Value;

use super::decoder_options::{LayerRope, NormPlacement};
use super::llama::{bad, refuse_true, DecoderConfig, DecoderNames, HF};
use super::Family;
use crate::error::Result;
use crate::formats::config::keys::{why, ConfigKey};
use crate::formats::config::JsonConfig;

pub const FAMILY: Family = Family {
    classes: &["Gemma3ForCausalLM", "Gemma2ForCausalLM"],
    model_types: &["gemma3_text", "gemma2"],
    gguf: &[
        ("gemma3", "Gemma3ForCausalLM"),
        ("gemma2", "Gemma2ForCausalLM"),
    ],
    parse: Some(|c| Ok(Box::new(config(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers 5's Gemma3TextConfig, Gemma2Config and their modeling code read.
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
    ConfigKey::honoured("tie_word_embeddings", "false"),
    ConfigKey::honoured("query_pre_attn_scalar", "64"),
    ConfigKey::honoured("sliding_window", "2"),
    ConfigKey::limited(
        "layer_types",
        r#"["full_attention", "full_attention", "full_attention", "full_attention", "full_attention", "full_attention"]"#,
        r#"["chunked_attention", "full_attention", "full_attention", "full_attention", "full_attention", "full_attention"]"#,
    ),
    ConfigKey::limited(
        "rope_parameters",
        r#"{"full_attention": {"rope_type": "default", "rope_theta": 1234.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}"#,
        r#"{"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}"#,
    ),
    ConfigKey::refused("hidden_activation", "\"gelu\""),
    ConfigKey::inert(
        "hidden_act",
        "Gemma 2 configs carry it beside hidden_activation, which transformers reads",
    ),
    // transformers 4's spellings (Hub checkpoints), read when rope_parameters and
    // layer_types are absent.
    ConfigKey::honoured("rope_theta", "1234.0"),
    ConfigKey::honoured("rope_local_base_freq", "1234.0"),
    ConfigKey::honoured("sliding_window_pattern", "3"),
    ConfigKey::inert("cache_implementation", why::RUNTIME),
    ConfigKey::inert(
        "_sliding_window_pattern",
        "transformers' copy of the pattern it built layer_types from; layer_types decide",
    ),
    ConfigKey::refused("attention_bias", "true"),
    ConfigKey::honoured("attn_logit_softcapping", "20.0"),
    ConfigKey::honoured("final_logit_softcapping", "10.0"),
    ConfigKey::refused("use_bidirectional_attention", "true"),
    ConfigKey::inert("attention_dropout", why::TRAINING),
];

/// Gemma's names: the MLP's pre-norm and the two post-norms besides Llama's.
pub const GEMMA: DecoderNames = DecoderNames {
    mlp_norm: "pre_feedforward_layernorm",
    post_attn_norm: "post_attention_layernorm",
    post_mlp_norm: "post_feedforward_layernorm",
    ..HF
};

fn config(c: &JsonConfig) -> Result<DecoderConfig> {
    let mut d = DecoderConfig::from_json(c)?;
    let gemma2 = matches!(
        c.architecture()?.as_str(),
        "Gemma2ForCausalLM" | "gemma2"
    );
    refuse_true(c, &["attention_bias", "use_bidirectional_attention"])?;
    // Gemma 2 caps by default (50 and 30), Gemma 3 not; null: no cap.
    let cap = |key: &str, default: f64| -> Result<Option<f32>> {
        let cap = match c.get(key) {
            None if gemma2 => Some(default),
            None | Some(Value::Null) => None,
            Some(_) => c.opt_f64(key)?,
        };
        match cap {
            Some(v) if v.is_nan() || v <= 0.0 => Err(bad(c, key, "must be positive or null".into())),
            v => Ok(v.map(|v| v as f32)),
        }
    };
    d.options.attn_softcap = cap("attn_logit_softcapping", 50.0)?;
    d.options.final_softcap = cap("final_logit_softcapping", 30.0)?;
    let act = c.get("hidden_activation").and_then(Value::as_str);
    if !matches!(act, None | Some("gelu_pytorch_tanh")) {
        let message = "other than gelu_pytorch_tanh is not supported".into();
        return Err(bad(c, "hidden_activation", message));
    }
    // Local layers: layer_types, else every layer but each `sliding_window_pattern`-th.
    let sliding: Vec<bool> = match c.get("layer_types").and_then(Value::as_array) {
        // Checked by the shared parser (full or sliding, one per layer).
        Some(types) => types
            .iter()
            .map(|t| t.as_str() == Some("sliding_attention"))
            .collect(),
        None => {
            let default = if gemma2 { 2 } else { 6 };
            let pattern = c.opt_usize("sliding_window_pattern")?.unwrap_or(default).max(1);
            (0..d.layers).map(|l| (l + 1) % pattern != 0).collect()
        }
    };
    // transformers defaults the window to 4096; null: local layers attend to everything.
    let window = match c.get("sliding_window") {
        None => Some(4096),
        Some(_) => c.opt_usize("sliding_window")?,
    };
    if window == Some(0) {
        return Err(bad(c, "sliding_window", "must be at least 1".into()));
    }
    d.layer_windows = sliding.iter().map(|&s| window.filter(|_| s)).collect();
    // Gemma 2: one RoPE (the shared parser's) for every layer. Gemma 3: RoPE per layer type
    // (transformers 5), or the legacy rope_theta / rope_local_base_freq.
    let params = c.get("rope_parameters").filter(|_| !gemma2);
    let theta = |kind: &str, legacy: &str, default: f64| -> Result<f64> {
        let key = format!("rope_parameters.{kind}");
        match params.and_then(|p| p.get(kind)) {
            Some(p) => {
                let t = p.get("rope_type").and_then(Value::as_str).unwrap_or("default");
                if t != "default" {
                    return Err(bad(c, &key, format!("type '{t}' is not supported (default)")));
                }
                match p.get("rope_theta") {
                    None => Ok(default),
                    Some(v) => v
                        .as_f64()
                        .ok_or_else(|| bad(c, &format!("{key}.rope_theta"), "must be a number".into())),
                }
            }
            None => Ok(c.opt_f64(legacy)?.unwrap_or(default)),
        }
    };
    if !gemma2 {
        d.rope_theta = theta("full_attention", "rope_theta", 1_000_000.0)?;
        d.llama3 = None;
        let local = theta("sliding_attention", "rope_local_base_freq", 10_000.0)?;
        d.options.layer_rope = sliding
            .iter()
            .map(|&s| match s {
                true => LayerRope::Theta(local),
                false => LayerRope::Default,
            })
            .collect();
        d.options.qk_norm = Some(QkSpan::Head);
    }
    let o = &mut d.options;
    o.norms = NormPlacement::Sandwich;
    o.act = Gate::GeluTanh;
    o.embed_scale = Some((d.hidden as f32).sqrt());
    let scalar = c.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0);
    if scalar.is_nan() || scalar <= 0.0 {
        return Err(bad(c, "query_pre_attn_scalar", "must be positive".into()));
    }
    o.attn_scale = Some(scalar.powf(-0.5) as f32);
    o.norm_offset = 1.0;
    d.names = &GEMMA;
    d.qkv_bias = false;
    d.tie_embeddings = c.opt_bool("tie_word_embeddings")?.unwrap_or(true);
    Ok(d)
}

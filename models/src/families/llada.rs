//! LLaDA (masked diffusion LM): the Llama decoder (`llama.rs`) without the causal mask,
//! stored with OLMo-style config keys and tensor names, which this file reads. The sampler
//! (runtime `diffusion`) finds the mask token in `ModelConfig::mask_token`.

use super::llama::{check_heads, DecoderConfig, DecoderNames};
use super::Family;
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::formats::config::keys::{why, ConfigKey};
use crate::model::ModelConfig;

pub const ARCHITECTURE: &str = "LLaDAModelLM";

pub const FAMILY: Family = Family {
    classes: &[ARCHITECTURE],
    model_types: &["llada"],
    gguf: &[],
    parse: Some(|c| Ok(Box::new(config(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys LLaDA's remote code (configuration_llada.py, modeling_llada.py: OLMo's config)
/// reads.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("d_model", "128"),
    ConfigKey::honoured("n_heads", "8"),
    ConfigKey::honoured("n_kv_heads", "1"),
    ConfigKey::honoured("n_layers", "1"),
    ConfigKey::honoured("mlp_hidden_size", "64"),
    ConfigKey::honoured("vocab_size", "300"),
    ConfigKey::honoured("embedding_size", "4096"),
    ConfigKey::honoured("max_sequence_length", "64"),
    ConfigKey::honoured("rms_norm_eps", "0.001"),
    ConfigKey::honoured("rope_theta", "500000.0"),
    ConfigKey::honoured("weight_tying", "true"),
    ConfigKey::refused("include_bias", "true"),
    ConfigKey::honoured("include_qkv_bias", "true"),
    ConfigKey::honoured("mask_token_id", "5"),
    ConfigKey::refused("block_type", "\"sequential\""),
    ConfigKey::refused("activation_type", "\"gelu\""),
    ConfigKey::refused("layer_norm_type", "\"default\""),
    ConfigKey::refused("alibi", "true"),
    ConfigKey::refused("rope", "false"),
    ConfigKey::refused("attention_layer_norm", "true"),
    ConfigKey::refused("layer_norm_with_affine", "false"),
    ConfigKey::refused("bias_for_layer_norm", "true"),
    ConfigKey::refused("input_emb_norm", "true"),
    ConfigKey::refused("scale_logits", "true"),
    ConfigKey::refused("multi_query_attention", "true"),
    ConfigKey::refused("block_group_size", "2"),
    ConfigKey::inert("mlp_ratio", "mlp_hidden_size, when set, overrides it"),
    ConfigKey::inert("alibi_bias_max", "read only with alibi, which is refused"),
    ConfigKey::inert(
        "attention_layer_norm_with_affine",
        "read only with attention_layer_norm, which is refused",
    ),
    ConfigKey::inert("rope_full_precision", "Kestrel computes RoPE in f32 always"),
    ConfigKey::inert("precision", why::RUNTIME),
    ConfigKey::inert("flash_attention", why::RUNTIME),
    ConfigKey::inert("init_device", why::RUNTIME),
    ConfigKey::inert("attention_dropout", why::TRAINING),
    ConfigKey::inert("residual_dropout", why::TRAINING),
    ConfigKey::inert("embedding_dropout", why::TRAINING),
    ConfigKey::inert("init_fn", why::TRAINING),
    ConfigKey::inert("init_std", why::TRAINING),
    ConfigKey::inert("init_cutoff_factor", why::TRAINING),
];


/// OLMo's names (`model.transformer.blocks.3.ff_proj.weight`).
pub const NAMES: DecoderNames = DecoderNames {
    body: "model.transformer",
    embed: "wte.weight",
    layers: "blocks",
    attn_norm: "attn_norm",
    attention: "",
    projections: ["q_proj", "k_proj", "v_proj", "attn_out"],
    mlp_norm: "ff_norm",
    mlp: "",
    mlp_projections: ["ff_proj.weight", "up_proj.weight", "ff_out.weight"],
    post_attn_norm: "",
    post_mlp_norm: "",
    q_norm: "",
    k_norm: "",
    norm: "ln_f",
    lm_head: "model.transformer.ff_out.weight",
};

/// LLaDA's config as the bidirectional decoder's.
fn config(c: &JsonConfig) -> Result<DecoderConfig> {
    let bad = |key: &str, message: String| ModelError::BadConfigValue {
        file: c.path.clone(),
        key: key.into(),
        message,
    };
    let text = |key: &str, default: &str| -> String {
        c.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .to_string()
    };
    // Only the Llama-style OLMo block is supported.
    for (key, want, default) in [
        ("block_type", "llama", "llama"),
        ("activation_type", "silu", "silu"),
        ("layer_norm_type", "rms", "rms"),
    ] {
        let got = text(key, default);
        if got != want {
            return Err(bad(key, format!("is '{got}'; only '{want}' is supported")));
        }
    }
    if c.opt_bool("alibi")?.unwrap_or(false) {
        return Err(bad("alibi", "true is not supported (rotary embeddings are)".into()));
    }
    if !c.opt_bool("rope")?.unwrap_or(true) {
        return Err(bad("rope", "false is not supported (rotary embeddings are)".into()));
    }
    // OLMo options that change the block, each supported at its default only.
    for (key, default) in [
        ("attention_layer_norm", false),
        ("layer_norm_with_affine", true),
        ("bias_for_layer_norm", false),
        ("input_emb_norm", false),
        ("scale_logits", false),
        ("multi_query_attention", false),
        // OLMo's include_bias biases every linear layer; only q/k/v biases are implemented.
        ("include_bias", false),
    ] {
        if c.opt_bool(key)?.is_some_and(|v| v != default) {
            return Err(bad(key, format!("{} is not supported", !default)));
        }
    }
    if c.opt_usize("block_group_size")?.is_some_and(|g| g != 1) {
        return Err(bad("block_group_size", "other than 1 is not supported".into()));
    }
    let mask = c.usize("mask_token_id")?;
    let heads = c.dim("n_heads", Dim::Heads)?;
    // embedding_size may pad vocab_size; the embedding and the LM head have that many rows.
    let vocab_size = c.dim("vocab_size", Dim::Vocab)?;
    let vocab = match c.opt_dim("embedding_size", Dim::Vocab)? {
        Some(n) if n < vocab_size => {
            return Err(bad(
                "embedding_size",
                format!("({n}) is below vocab_size ({vocab_size})"),
            ))
        }
        Some(n) => n,
        None => vocab_size,
    };
    if mask >= vocab {
        return Err(bad(
            "mask_token_id",
            format!("({mask}) is not below the vocabulary size ({vocab})"),
        ));
    }
    let qkv_bias = c.opt_bool("include_qkv_bias")?.unwrap_or(false);
    let hidden = c.dim("d_model", Dim::Hidden)?;
    let kv_heads = c.opt_dim("n_kv_heads", Dim::Heads)?.unwrap_or(heads);
    let head_dim = c.divide("n_heads", hidden, heads)?;
    check_heads(c, ["n_heads", "n_kv_heads", "d_model"], [heads, kv_heads, head_dim])?;
    let layers = c.dim("n_layers", Dim::Layers)?;
    Ok(DecoderConfig {
        model: ModelConfig {
            causal: false,
            mask_token: Some(mask as u32),
            ..ModelConfig::causal(
                ARCHITECTURE,
                vocab,
                c.dim("max_sequence_length", Dim::Context)?,
            )
                .with_config(c)
        },
        names: &NAMES,
        hidden,
        intermediate: c.dim("mlp_hidden_size", Dim::Intermediate)?,
        layers,
        heads,
        kv_heads,
        head_dim,
        eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-5) as f32,
        rope_theta: c.opt_f64("rope_theta")?.unwrap_or(10000.0),
        llama3: None,
        longrope: None,
        tie_embeddings: c.opt_bool("weight_tying")?.unwrap_or(false),
        qkv_bias,
        layer_windows: vec![None; layers],
        experts: None,
        options: Default::default(),
    })
}

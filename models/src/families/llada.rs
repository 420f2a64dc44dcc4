//! LLaDA (masked diffusion LM): the Llama decoder (`llama.rs`) without the causal mask,
//! stored with OLMo-style config keys and tensor names, which this file reads. The sampler
//! (runtime `diffusion`) finds the mask token in `ModelConfig::mask_token`.

use super::llama::{check_heads, DecoderConfig, DecoderNames};
use super::Family;
use crate::error::{ModelError, Result};
use crate::formats::config::JsonConfig;
use crate::model::ModelConfig;

pub const ARCHITECTURE: &str = "LLaDAModelLM";

pub const FAMILY: Family = Family {
    classes: &[ARCHITECTURE],
    model_types: &["llada"],
    gguf: &[],
    parse: Some(|c| Ok(Box::new(config(c)?))),
    from_tensors: None,
};

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
    if c.opt_bool("alibi")?.unwrap_or(false) || !c.opt_bool("rope")?.unwrap_or(true) {
        return Err(bad(
            "rope",
            "only rotary position embeddings are supported".into(),
        ));
    }
    let mask = c.usize("mask_token_id")?;
    let heads = c.positive("n_heads")?;
    // embedding_size may pad vocab_size; the embedding and the LM head have that many rows.
    let vocab = match c.opt_usize("embedding_size")? {
        Some(n) => n,
        None => c.positive("vocab_size")?,
    };
    if mask >= vocab {
        return Err(bad(
            "mask_token_id",
            format!("({mask}) is not below the vocabulary size ({vocab})"),
        ));
    }
    let qkv_bias = c.opt_bool("include_bias")?.unwrap_or(false)
        || c.opt_bool("include_qkv_bias")?.unwrap_or(false);
    let hidden = c.positive("d_model")?;
    let kv_heads = c.opt_usize("n_kv_heads")?.unwrap_or(heads);
    let head_dim = hidden / heads;
    check_heads(c, ["n_heads", "n_kv_heads", "d_model"], [heads, kv_heads, head_dim])?;
    let layers = c.positive("n_layers")?;
    if layers > 4096 {
        return Err(bad("n_layers", format!("({layers}) is beyond the limit of 4096 layers")));
    }
    Ok(DecoderConfig {
        model: ModelConfig {
            causal: false,
            mask_token: Some(mask as u32),
            ..ModelConfig::causal(ARCHITECTURE, vocab, c.positive("max_sequence_length")?)
                .with_special_tokens(c)
        },
        names: &NAMES,
        hidden,
        intermediate: c.positive("mlp_hidden_size")?,
        layers,
        heads,
        kv_heads,
        head_dim,
        eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-5) as f32,
        rope_theta: c.opt_f64("rope_theta")?.unwrap_or(10000.0),
        llama3: None,
        tie_embeddings: c.opt_bool("weight_tying")?.unwrap_or(false),
        qkv_bias,
        layer_windows: vec![None; layers],
        experts: None,
    })
}

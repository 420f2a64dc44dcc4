//! OLMo-2 on the shared decoder (`llama.rs`): post-norms only (the attention's and the MLP's
//! outputs normalised before the residual add, their inputs not) and QK-norm over the whole
//! q and k projections (weights [heads * head_dim] and [kv_heads * head_dim]), not per head.

use kestrel_runtime::kernels::rope_cache_write::QkSpan;

use super::decoder_options::NormPlacement;
use super::llama::{refuse_true, DecoderConfig, DecoderNames, HF};
use super::Family;
use crate::error::Result;
use crate::formats::config::keys::{why, ConfigKey};
use crate::formats::config::JsonConfig;

pub const FAMILY: Family = Family {
    classes: &["Olmo2ForCausalLM"],
    model_types: &["olmo2"],
    gguf: &[("olmo2", "Olmo2ForCausalLM")],
    parse: Some(|c| Ok(Box::new(config(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers 5's OLMo-2 config and modeling code read.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("intermediate_size", "64"),
    ConfigKey::honoured("num_hidden_layers", "1"),
    ConfigKey::honoured("num_attention_heads", "8"),
    ConfigKey::honoured("num_key_value_heads", "1"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("max_position_embeddings", "32"),
    ConfigKey::honoured("rms_norm_eps", "0.001"),
    ConfigKey::honoured("tie_word_embeddings", "true"),
    ConfigKey::limited(
        "rope_parameters",
        r#"{"rope_type": "default", "rope_theta": 1234.0}"#,
        r#"{"rope_type": "yarn", "factor": 4.0}"#,
    ),
    // transformers 4's spelling (and the GGUF metadata's), read without rope_parameters.
    ConfigKey::honoured("rope_theta", "1234.0"),
    ConfigKey::honoured("head_dim", "32"),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    // Biases on q, k, v and o (Kestrel has no o_proj bias).
    ConfigKey::refused("attention_bias", "true"),
    ConfigKey::inert("attention_dropout", why::TRAINING),
];

/// OLMo-2's names: the two post-norms.
pub const OLMO2: DecoderNames = DecoderNames {
    post_attn_norm: "post_attention_layernorm",
    post_mlp_norm: "post_feedforward_layernorm",
    ..HF
};

fn config(c: &JsonConfig) -> Result<DecoderConfig> {
    let mut d = DecoderConfig::from_json(c)?;
    refuse_true(c, &["attention_bias"])?;
    d.qkv_bias = false;
    d.names = &OLMO2;
    d.options.norms = NormPlacement::Post;
    d.options.qk_norm = Some(QkSpan::Whole);
    Ok(d)
}

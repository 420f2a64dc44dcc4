//! Qwen3 and Qwen3-MoE on the shared decoder (`llama.rs`): Qwen2's decoder without q/k/v
//! biases, with an RMSNorm of every q and k head before RoPE (QK-norm) and an explicit
//! head_dim; Qwen3-MoE puts Qwen2-MoE's experts (without a shared expert) in place of the
//! MLP.

use kestrel_runtime::kernels::rope_cache_write::QkSpan;

use super::llama::{refuse_true, DecoderConfig};
use super::Family;
use crate::error::Result;
use crate::formats::config::keys::{why, ConfigKey};
use crate::formats::config::JsonConfig;

pub const FAMILY: Family = Family {
    classes: &["Qwen3ForCausalLM", "Qwen3MoeForCausalLM"],
    model_types: &["qwen3", "qwen3_moe"],
    gguf: &[
        ("qwen3", "Qwen3ForCausalLM"),
        ("qwen3moe", "Qwen3MoeForCausalLM"),
    ],
    parse: Some(|c| Ok(Box::new(config(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers 5's Qwen3 and Qwen3-MoE configs and modeling code read.
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
    ConfigKey::limited(
        "rope_parameters",
        r#"{"rope_type": "default", "rope_theta": 1234.0}"#,
        r#"{"rope_type": "yarn", "factor": 4.0}"#,
    ),
    // transformers 4's spelling (and the GGUF metadata's), read without rope_parameters.
    ConfigKey::honoured("rope_theta", "1234.0"),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    // Biases on q, k, v and o (Kestrel has no o_proj bias).
    ConfigKey::refused("attention_bias", "true"),
    ConfigKey::inert("attention_dropout", why::TRAINING),
    ConfigKey::honoured("sliding_window", "2"),
    ConfigKey::honoured("use_sliding_window", "false"),
    ConfigKey::honoured("max_window_layers", "2"),
    ConfigKey::limited(
        "layer_types",
        r#"["sliding_attention", "sliding_attention", "sliding_attention"]"#,
        r#"["full_attention", "chunked_attention", "full_attention"]"#,
    ),
    // Qwen3-MoE.
    ConfigKey::honoured("num_local_experts", "6"),
    // transformers 4's spelling of num_local_experts.
    ConfigKey::honoured("num_experts", "6"),
    ConfigKey::honoured("num_experts_per_tok", "1"),
    ConfigKey::honoured("moe_intermediate_size", "16"),
    ConfigKey::honoured("norm_topk_prob", "false"),
    ConfigKey::honoured("decoder_sparse_step", "2"),
    ConfigKey::honoured("mlp_only_layers", "[0]"),
    ConfigKey::inert("router_aux_loss_coef", why::TRAINING),
    ConfigKey::inert("output_router_logits", why::RUNTIME),
];

fn config(c: &JsonConfig) -> Result<DecoderConfig> {
    let mut d = DecoderConfig::from_json(c)?;
    // transformers' Qwen3 biases q, k, v and o alike by attention_bias.
    refuse_true(c, &["attention_bias"])?;
    d.qkv_bias = false;
    d.options.qk_norm = Some(QkSpan::Head);
    Ok(d)
}

//! SmolLM3 on the shared decoder (`llama.rs`): Llama's decoder with NoPE layers, which skip
//! RoPE (`no_rope_layers`, 1 for a layer with RoPE; else every `no_rope_layer_interval`-th
//! layer without).

use serde_json::Value;

use super::decoder_options::LayerRope;
use super::llama::{bad, refuse_true, DecoderConfig};
use super::Family;
use crate::error::Result;
use crate::formats::config::keys::{why, ConfigKey};
use crate::formats::config::JsonConfig;

pub const FAMILY: Family = Family {
    classes: &["SmolLM3ForCausalLM"],
    model_types: &["smollm3"],
    gguf: &[("smollm3", "SmolLM3ForCausalLM")],
    parse: Some(|c| Ok(Box::new(config(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// Sliding windows are not implemented for SmolLM3 (its checkpoints have none).
const NO_WINDOWS: &str = "read only with use_sliding_window, which is refused";

/// The keys transformers 5's SmolLM3 config and modeling code read.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("intermediate_size", "64"),
    ConfigKey::honoured("num_hidden_layers", "1"),
    ConfigKey::honoured("num_attention_heads", "8"),
    ConfigKey::honoured("num_key_value_heads", "1"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("max_position_embeddings", "32"),
    ConfigKey::honoured("rms_norm_eps", "0.001"),
    ConfigKey::honoured("tie_word_embeddings", "false"),
    ConfigKey::limited(
        "rope_parameters",
        r#"{"rope_type": "default", "rope_theta": 1234.0}"#,
        r#"{"rope_type": "yarn", "factor": 4.0}"#,
    ),
    ConfigKey::honoured("no_rope_layers", "[1, 1, 1, 1]"),
    ConfigKey::honoured("no_rope_layer_interval", "2"),
    // transformers 4's spelling (and the GGUF metadata's), read without rope_parameters.
    ConfigKey::honoured("rope_theta", "1234.0"),
    ConfigKey::honoured("head_dim", "32"),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    ConfigKey::refused("attention_bias", "true"),
    ConfigKey::refused("mlp_bias", "true"),
    ConfigKey::refused("use_sliding_window", "true"),
    ConfigKey::inert("sliding_window", NO_WINDOWS),
    ConfigKey::inert("max_window_layers", NO_WINDOWS),
    ConfigKey::inert("layer_types", NO_WINDOWS),
    ConfigKey::inert("attention_dropout", why::TRAINING),
];

fn config(c: &JsonConfig) -> Result<DecoderConfig> {
    let mut d = DecoderConfig::from_json(c)?;
    refuse_true(c, &["attention_bias", "mlp_bias", "use_sliding_window"])?;
    // transformers reads sliding layers only with use_sliding_window.
    d.layer_windows = vec![None; d.layers];
    d.qkv_bias = false;
    d.tie_embeddings = c.opt_bool("tie_word_embeddings")?.unwrap_or(true);
    let rope: Vec<bool> = match c.get("no_rope_layers") {
        Some(Value::Array(flags)) => {
            if flags.len() != d.layers {
                return Err(bad(
                    c,
                    "no_rope_layers",
                    format!("lists {} layers, the model has {}", flags.len(), d.layers),
                ));
            }
            flags.iter().map(|f| f.as_u64() != Some(0)).collect()
        }
        Some(other) => {
            return Err(bad(c, "no_rope_layers", format!("{other} is not a list")));
        }
        None => {
            let step = c.opt_usize("no_rope_layer_interval")?.unwrap_or(4);
            if step == 0 {
                return Err(bad(c, "no_rope_layer_interval", "must be at least 1".into()));
            }
            (0..d.layers).map(|l| (l + 1) % step != 0).collect()
        }
    };
    d.options.layer_rope = rope
        .into_iter()
        .map(|r| match r {
            true => LayerRope::Default,
            false => LayerRope::NoPe,
        })
        .collect();
    Ok(d)
}

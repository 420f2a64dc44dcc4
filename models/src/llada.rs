//! LLaDA (masked diffusion LM): a Llama block stack without the causal mask, stored with
//! OLMo-style config keys and tensor names. Both are translated here, so the network is the
//! shared Llama decoder run bidirectionally (`LlamaConfig::causal` false) and the sampler
//! (runtime `diffusion`) finds the mask token in `LlamaConfig::mask_token`.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::config::JsonConfig;
use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, TensorSource};

pub const ARCHITECTURE: &str = "LLaDAModelLM";

/// Whether a config.json is LLaDA's.
pub fn is_llada(c: &JsonConfig) -> bool {
    c.architecture()
        .is_ok_and(|a| a == ARCHITECTURE || a == "llada")
}

/// LLaDA's config as the Hugging Face Llama keys the shared parser reads.
pub fn to_hf_config(c: &JsonConfig) -> Result<JsonConfig> {
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
    let bias = c.opt_bool("include_bias")?.unwrap_or(false)
        || c.opt_bool("include_qkv_bias")?.unwrap_or(false);
    let mut v = Map::new();
    let mut set = |k: &str, value: Value| {
        v.insert(k.to_string(), value);
    };
    set("architectures", json!([ARCHITECTURE]));
    set("hidden_size", json!(c.positive("d_model")?));
    set("num_attention_heads", json!(heads));
    set(
        "num_key_value_heads",
        json!(c.opt_usize("n_kv_heads")?.unwrap_or(heads)),
    );
    set("num_hidden_layers", json!(c.positive("n_layers")?));
    set("intermediate_size", json!(c.positive("mlp_hidden_size")?));
    set("vocab_size", json!(vocab));
    set(
        "max_position_embeddings",
        json!(c.positive("max_sequence_length")?),
    );
    set(
        "rope_theta",
        json!(c.opt_f64("rope_theta")?.unwrap_or(10000.0)),
    );
    set(
        "rms_norm_eps",
        json!(c.opt_f64("rms_norm_eps")?.unwrap_or(1e-5)),
    );
    set(
        "tie_word_embeddings",
        json!(c.opt_bool("weight_tying")?.unwrap_or(false)),
    );
    set("attention_bias", json!(bias));
    set("mask_token_id", json!(mask));
    for key in ["eos_token_id", "bos_token_id", "pad_token_id"] {
        if let Some(x) = c.get(key) {
            set(key, x.clone());
        }
    }
    Ok(JsonConfig {
        path: c.path.clone(),
        value: Value::Object(v),
    })
}

/// LLaDA's name for a tensor the Llama loader asks for by its Hugging Face name.
pub fn tensor_name(hf: &str) -> Option<String> {
    let t = "model.transformer";
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let (layer, part) = rest.split_once('.')?;
        let (module, kind) = part.rsplit_once('.')?;
        let name = match module {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ff_norm",
            "self_attn.q_proj" => "q_proj",
            "self_attn.k_proj" => "k_proj",
            "self_attn.v_proj" => "v_proj",
            "self_attn.o_proj" => "attn_out",
            "mlp.gate_proj" => "ff_proj",
            "mlp.up_proj" => "up_proj",
            "mlp.down_proj" => "ff_out",
            _ => return None,
        };
        return Some(format!("{t}.blocks.{layer}.{name}.{kind}"));
    }
    Some(match hf {
        "model.embed_tokens.weight" => format!("{t}.wte.weight"),
        "model.norm.weight" => format!("{t}.ln_f.weight"),
        "lm_head.weight" => format!("{t}.ff_out.weight"),
        _ => return None,
    })
}

/// A tensor source whose tensors carry LLaDA's names, answering to Hugging Face names.
pub struct LladaSource<'a>(pub &'a dyn TensorSource);

impl TensorSource for LladaSource<'_> {
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        match tensor_name(name) {
            Some(n) => self.0.tensor(&n),
            None => Err(ModelError::MissingTensor {
                file: self.0.origin().to_path_buf(),
                name: name.to_string(),
            }),
        }
    }
    fn contains(&self, name: &str) -> bool {
        tensor_name(name).is_some_and(|n| self.0.contains(&n))
    }
    fn origin(&self) -> &Path {
        self.0.origin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_olmo() {
        assert_eq!(
            tensor_name("model.layers.3.mlp.gate_proj.weight").as_deref(),
            Some("model.transformer.blocks.3.ff_proj.weight")
        );
        assert_eq!(
            tensor_name("model.layers.0.self_attn.o_proj.weight").as_deref(),
            Some("model.transformer.blocks.0.attn_out.weight")
        );
        assert_eq!(
            tensor_name("lm_head.weight").as_deref(),
            Some("model.transformer.ff_out.weight")
        );
        assert_eq!(tensor_name("model.layers.0.nonsense.weight"), None);
    }
}

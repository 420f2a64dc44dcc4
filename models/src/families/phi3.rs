//! Phi-3 (and Phi-3.5/4-mini's layout) on the shared decoder (`llama.rs`): q, k and v in one
//! fused `qkv_proj` and gate and up in one `gate_up_proj` (gate's rows, then up's), read
//! through a view that answers to Llama's separate names with row ranges of the fused
//! tensors (the decoder then fuses them its own way); RoPE over part of each head
//! (`partial_rotary_factor`); a sliding window on every layer when the config sets one.
//! LongRoPE (`rope_parameters` type `longrope`, Phi-3.5/4-mini): short or long per-pair
//! factors chosen by the session's context, fixed for the session (`LongRope`).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use super::llama::{bad, Decoder, DecoderConfig};
use super::{Family, Network, NetworkConfig};
use crate::error::Result;
use crate::formats::config::keys::{why, ConfigKey};
use crate::formats::config::JsonConfig;
use crate::formats::host::{HostTensor, TensorSource};
use crate::vars::Vars;

pub const FAMILY: Family = Family {
    classes: &["Phi3ForCausalLM"],
    model_types: &["phi3"],
    gguf: &[("phi3", "Phi3ForCausalLM")],
    parse: Some(|c| Ok(Box::new(Phi3Config(config(c)?)))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers 5's Phi-3 config and modeling code read.
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
    ConfigKey::honoured("sliding_window", "2"),
    ConfigKey::limited("partial_rotary_factor", "0.5", "1.5"),
    ConfigKey::limited(
        "rope_parameters",
        r#"{"rope_type": "default", "rope_theta": 1234.0}"#,
        r#"{"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}"#,
    ),
    // transformers 4's spelling (Phi-3.5's Hub configs: `type` longrope; the GGUF
    // metadata's), read in preference to rope_parameters as transformers 5 does.
    ConfigKey::limited(
        "rope_scaling",
        r#"{"rope_type": "default", "rope_theta": 1234.0}"#,
        r#"{"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}"#,
    ),
    // transformers 4's spelling (and the GGUF metadata's), read without rope_parameters.
    ConfigKey::honoured("rope_theta", "1234.0"),
    ConfigKey::honoured("head_dim", "32"),
    ConfigKey::refused("hidden_act", "\"gelu\""),
    // Read by LongRoPE only (the pretraining context that picks short or long factors).
    ConfigKey::honoured("original_max_position_embeddings", "8"),
    ConfigKey::inert("resid_pdrop", why::TRAINING),
    ConfigKey::inert("embd_pdrop", why::TRAINING),
    ConfigKey::inert("attention_dropout", why::TRAINING),
];

fn config(c: &JsonConfig) -> Result<DecoderConfig> {
    let mut d = DecoderConfig::from_json(c)?;
    d.qkv_bias = false;
    if d.options.rotary_dims == 0 {
        return Err(bad(c, "partial_rotary_factor", "leaves no rotated dims".into()));
    }
    Ok(d)
}

/// Phi-3's decoder config; loads through [`FusedNames`].
#[derive(Debug)]
struct Phi3Config(DecoderConfig);

impl NetworkConfig for Phi3Config {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        let c = &self.0;
        let view = FusedNames {
            inner: vb.source(),
            qkv: [c.heads, c.kv_heads, c.kv_heads].map(|h| h * c.head_dim),
            intermediate: c.intermediate,
        };
        let vb = vb.with_source(&view);
        Ok(Arc::new(Decoder::load(self.0, &vb)?))
    }
}

/// A view of a Phi-3 checkpoint under Llama's names: `self_attn.{q,k,v}_proj.weight` are
/// row ranges of `self_attn.qkv_proj.weight` and `mlp.{gate,up}_proj.weight` of
/// `mlp.gate_up_proj.weight`; every other name is the checkpoint's own.
struct FusedNames<'a> {
    inner: &'a dyn TensorSource,
    /// Rows of q, k and v.
    qkv: [usize; 3],
    intermediate: usize,
}

impl FusedNames<'_> {
    /// The fused tensor's name and the row range that `name` stands for.
    fn part(&self, name: &str) -> Option<(String, usize, usize)> {
        let [q, k, v] = self.qkv;
        let i = self.intermediate;
        let fused = |suffix: &str, fused: &str, start, rows| {
            let prefix = name.strip_suffix(suffix)?;
            Some((format!("{prefix}{fused}"), start, rows))
        };
        fused("self_attn.q_proj.weight", "self_attn.qkv_proj.weight", 0, q)
            .or_else(|| fused("self_attn.k_proj.weight", "self_attn.qkv_proj.weight", q, k))
            .or_else(|| fused("self_attn.v_proj.weight", "self_attn.qkv_proj.weight", q + k, v))
            .or_else(|| fused("mlp.gate_proj.weight", "mlp.gate_up_proj.weight", 0, i))
            .or_else(|| fused("mlp.up_proj.weight", "mlp.gate_up_proj.weight", i, i))
    }
}

impl TensorSource for FusedNames<'_> {
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let Some((fused, start, rows)) = self.part(name) else {
            return self.inner.tensor(name);
        };
        let t = self.inner.tensor(&fused)?;
        let total = t.shape.first().copied().unwrap_or(0);
        let cols = t.shape.get(1).copied().unwrap_or(0);
        let row_bytes = t.bytes.len() / total.max(1);
        if t.shape.len() != 2 || start + rows > total || row_bytes * total != t.bytes.len() {
            return Err(crate::error::ModelError::TensorShape {
                file: t.file,
                name: t.name,
                expected: vec![start + rows, cols],
                got: t.shape,
            });
        }
        let range = start * row_bytes..(start + rows) * row_bytes;
        let bytes = match t.bytes {
            Cow::Borrowed(b) => Cow::Borrowed(&b[range]),
            Cow::Owned(b) => Cow::Owned(b[range].to_vec()),
        };
        Ok(HostTensor {
            name: format!("{}[{start}..{}]", t.name, start + rows),
            shape: vec![rows, cols],
            bytes,
            ..t
        })
    }

    fn contains(&self, name: &str) -> bool {
        match self.part(name) {
            Some((fused, _, _)) => self.inner.contains(&fused),
            None => self.inner.contains(name),
        }
    }

    fn origin(&self) -> &Path {
        self.inner.origin()
    }
}

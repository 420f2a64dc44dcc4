//! What families other than Llama's change in the shared decoder (`llama.rs`): QK-norm, where
//! the norms sit, the MLP gate's activation, embedding and attention scales, norm weights
//! stored as w for a scale of 1 + w, each layer's RoPE, partial rotary, LongRoPE and soft-capping.

use kestrel_runtime::kernels::elementwise::Gate;
use kestrel_runtime::kernels::rope_cache_write::QkSpan;
use serde_json::Value;

use super::llama::bad;
use crate::error::Result;
use crate::formats::config::{Dim, JsonConfig};

/// Where a layer's norms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormPlacement {
    /// Before the attention and the MLP (Llama): `x + f(norm(x))`.
    #[default]
    Pre,
    /// Before and after (Gemma): `x + post(f(pre(x)))`.
    Sandwich,
    /// After only (OLMo-2): `x + post(f(x))`.
    Post,
}

/// A layer's RoPE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerRope {
    /// The model's (`rope_theta` and its scaling).
    Default,
    /// Its own base, unscaled (Gemma's sliding layers).
    Theta(f64),
    /// None (SmolLM3's NoPE layers).
    NoPe,
}

/// LongRoPE (Phi-3.5, Phi-4-mini): frequencies divided per rotated pair by `short` factors
/// for a context (the session's capacity) of at most `original_max` positions, else by
/// `long` ones, fixed for the session as llama.cpp does (the KV cache holds rotated keys;
/// transformers switches by the current length instead); cos and sin times
/// `attention_factor`.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
    pub original_max: usize,
    pub attention_factor: f32,
}

impl LongRope {
    /// LongRoPE from `rope` (the config's `rope_key` dict) for `rotary_dims` rotated dims, as
    /// transformers' `_compute_longrope_parameters` reads it: the pretraining context from the
    /// top-level `original_max_position_embeddings` (Phi-3's spelling, preferred), else the
    /// dict's, else Phi3Config's default 4096; the attention factor given, else
    /// sqrt(1 + ln(s) / ln(original)) for s = `factor` or max_position_embeddings / original
    /// above 1, else 1.
    pub fn from_json(
        c: &JsonConfig,
        rope_key: &str,
        rope: &Value,
        rotary_dims: usize,
    ) -> Result<LongRope> {
        let bad = |key: &str, message: String| bad(c, &format!("{rope_key}.{key}"), message);
        let factors = |key: &str| -> Result<Vec<f32>> {
            let list = rope.get(key).and_then(|v| v.as_array());
            let f: Option<Vec<f32>> = list.and_then(|l| {
                l.iter()
                    .map(|v| v.as_f64().filter(|f| *f > 0.0).map(|f| f as f32))
                    .collect()
            });
            match f {
                Some(f) if f.len() == rotary_dims / 2 => Ok(f),
                _ => Err(bad(
                    key,
                    format!(
                        "must be {} positive numbers (one per rotated pair)",
                        rotary_dims / 2
                    ),
                )),
            }
        };
        let key = "original_max_position_embeddings";
        let original_max = match (c.opt_usize(key)?, rope.get(key)) {
            (Some(n), _) => n,
            (None, Some(v)) => v
                .as_u64()
                .ok_or_else(|| bad(key, "must be a whole number".into()))?
                as usize,
            (None, None) => 4096,
        };
        if original_max < 2 {
            return Err(bad(key, format!("({original_max}) must be at least 2")));
        }
        let number = |key: &str| match rope.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(Some)
                .ok_or_else(|| bad(key, "must be a positive number".into())),
        };
        let max_positions = c.dim("max_position_embeddings", Dim::Context)?;
        let factor = number("factor")?.unwrap_or(max_positions as f64 / original_max as f64);
        let attention_factor = match number("attention_factor")? {
            Some(a) => a,
            None if factor <= 1.0 => 1.0,
            None => (1.0 + factor.ln() / (original_max as f64).ln()).sqrt(),
        };
        Ok(LongRope {
            short: factors("short_factor")?,
            long: factors("long_factor")?,
            original_max,
            attention_factor: attention_factor as f32,
        })
    }
}

/// What families other than Llama's change in the shared decoder. The default is Llama.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderOptions {
    /// RMSNorm of q and k before RoPE, per head or over the whole projection.
    pub qk_norm: Option<QkSpan>,
    pub norms: NormPlacement,
    /// The MLP gate's activation.
    pub act: Gate,
    /// The embeddings multiplied by this (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f32>,
    /// The attention's scale when not 1/sqrt(head_dim) (Gemma's query_pre_attn_scalar).
    pub attn_scale: Option<f32>,
    /// Norm weights stored as `w` for a scale of `norm_offset + w` (Gemma: 1), folded into
    /// the weights at load.
    pub norm_offset: f32,
    /// Each layer's RoPE; empty: every layer the default.
    pub layer_rope: Vec<LayerRope>,
    /// Dims of each head RoPE rotates (0: all; Phi-3's partial rotary factor).
    pub rotary_dims: usize,
    /// Soft-capping of the attention scores and of the final logits (Gemma 2).
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
}

impl Default for DecoderOptions {
    fn default() -> DecoderOptions {
        DecoderOptions {
            qk_norm: None,
            norms: NormPlacement::Pre,
            act: Gate::Silu,
            embed_scale: None,
            attn_scale: None,
            norm_offset: 0.0,
            layer_rope: Vec::new(),
            rotary_dims: 0,
            attn_softcap: None,
            final_softcap: None,
        }
    }
}

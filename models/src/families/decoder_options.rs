//! What families other than Llama's change in the shared decoder (`llama.rs`): QK-norm, where
//! the norms sit, the MLP gate's activation, embedding and attention scales, norm weights
//! stored as w for a scale of 1 + w, each layer's RoPE, partial rotary and soft-capping.

use kestrel_runtime::kernels::elementwise::Gate;
use kestrel_runtime::kernels::rope_cache_write::QkSpan;

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

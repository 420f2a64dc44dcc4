//! The Llama family as one configurable decoder: LlamaForCausalLM (GQA, tied or untied
//! embeddings, Llama-3 RoPE scaling), MistralForCausalLM (sliding-window attention) and
//! Qwen2ForCausalLM (q/k/v biases, per-layer sliding windows), and their sparse
//! mixture-of-experts variants MixtralForCausalLM and Qwen2MoeForCausalLM (crate::moe in
//! place of the MLP). Attention can further be switched, at load time, to StreamingLLM sinks
//! or block-sparse patterns.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::block_mask::{BlockMask, SparseConfig};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::attention::{mask_blocks, AttnShape};
use kestrel_runtime::kernels::rope::{self, Llama3Scaling};
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};
use kestrel_runtime::TensorId;

use crate::config::JsonConfig;
use crate::error::{ModelError, Result};
use crate::moe::{FeedForward, MoeConfig};
use crate::weights::Uploader;

pub const SUPPORTED: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "LLaDAModelLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
];

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub eps: f32,
    pub rope_theta: f64,
    pub llama3: Option<Llama3Scaling>,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    /// Each layer's sliding window (positions a query sees, itself included), if any.
    pub layer_windows: Vec<Option<usize>>,
    /// False for bidirectional networks (diffusion LMs): every position sees every other.
    pub causal: bool,
    /// The token a diffusion LM predicts (LLaDA's `mask_token_id`).
    pub mask_token: Option<u32>,
    pub bos: Vec<u32>,
    pub eos: Vec<u32>,
    /// Sparse experts in place of the MLP on the layers `moe_layers` marks.
    pub moe: Option<MoeConfig>,
    pub moe_layers: Vec<bool>,
}

impl LlamaConfig {
    pub fn from_json(c: &JsonConfig) -> Result<LlamaConfig> {
        let architecture = c.architecture()?;
        let (qwen2, causal) = match architecture.as_str() {
            "LlamaForCausalLM" | "llama" | "MistralForCausalLM" | "mistral" => (false, true),
            "MixtralForCausalLM" | "mixtral" => (false, true),
            "Qwen2ForCausalLM" | "qwen2" | "Qwen2MoeForCausalLM" | "qwen2_moe" => (true, true),
            // Configs in LLaDA's own format arrive translated by `llada::to_hf_config`.
            crate::llada::ARCHITECTURE => (false, false),
            _ => {
                return Err(ModelError::UnsupportedArchitecture {
                    file: c.path.clone(),
                    arch: architecture,
                    supported: crate::supported_architectures(),
                })
            }
        };
        let hidden = c.positive("hidden_size")?;
        let heads = c.positive("num_attention_heads")?;
        let kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.into(),
            message,
        };
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!("({kv_heads}) must divide num_attention_heads ({heads})"),
            ));
        }
        let head_dim = c.opt_usize("head_dim")?.unwrap_or(hidden / heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(
                "head_dim",
                format!("({head_dim}) must be positive and even"),
            ));
        }
        // transformers 5 nests RoPE settings under rope_parameters; older configs keep them
        // at the top level (rope_theta, rope_scaling).
        let nested = c.get("rope_parameters");
        let rope_theta = match c.opt_f64("rope_theta")? {
            Some(t) => t,
            None => nested
                .and_then(|r| r.get("rope_theta"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0),
        };
        let scaling = c.get("rope_scaling").or(nested);
        let llama3 = match scaling {
            None => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or(s.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| {
                            s.get(k)
                                .and_then(|v| v.as_f64())
                                .map(|v| v as f32)
                                .ok_or_else(|| {
                                    bad(
                                        &format!("rope_scaling.{k}"),
                                        "is missing or not a number".into(),
                                    )
                                })
                        };
                        Some(Llama3Scaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position: f("original_max_position_embeddings")?,
                        })
                    }
                    other => {
                        return Err(bad(
                            "rope_scaling",
                            format!("type '{other}' is not supported (default, llama3)"),
                        ))
                    }
                }
            }
        };
        let layers = c.positive("num_hidden_layers")?;
        let layer_windows = layer_windows(c, qwen2, layers)?;
        let (moe, moe_layers) = moe_config(c, &architecture, layers)?;
        Ok(LlamaConfig {
            moe,
            moe_layers,
            hidden,
            intermediate: c.positive("intermediate_size")?,
            layers,
            layer_windows,
            causal,
            mask_token: match c.opt_usize("mask_token_id")? {
                Some(m) if m >= c.positive("vocab_size")? => {
                    return Err(bad(
                        "mask_token_id",
                        format!("({m}) is not below vocab_size"),
                    ))
                }
                m => m.map(|m| m as u32),
            },
            heads,
            kv_heads,
            head_dim,
            vocab: c.positive("vocab_size")?,
            max_positions: c.positive("max_position_embeddings")?,
            eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            llama3,
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias: qwen2 || c.opt_bool("attention_bias")?.unwrap_or(false),
            bos: c.opt_token_ids("bos_token_id"),
            eos: c.opt_token_ids("eos_token_id"),
            architecture,
        })
    }

    /// The smallest sliding window any layer has.
    pub fn min_window(&self) -> Option<usize> {
        self.layer_windows.iter().flatten().copied().min()
    }

    pub(crate) fn attn_shape(&self) -> AttnShape {
        AttnShape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        }
    }
}

/// The experts of Mixtral (every layer; probabilities renormalised over the top k) and
/// Qwen2-MoE (layers where (l + 1) % decoder_sparse_step == 0 and not in mlp_only_layers;
/// norm_topk_prob; a sigmoid-gated shared expert).
fn moe_config(
    c: &JsonConfig,
    architecture: &str,
    layers: usize,
) -> Result<(Option<MoeConfig>, Vec<bool>)> {
    match architecture {
        "MixtralForCausalLM" | "mixtral" => {
            let inter = c.positive("intermediate_size")?;
            let moe = MoeConfig::from_json(c, "num_local_experts", inter, true, None)?;
            Ok((Some(moe), vec![true; layers]))
        }
        "Qwen2MoeForCausalLM" | "qwen2_moe" => {
            let inter = c.positive("moe_intermediate_size")?;
            let shared = c
                .opt_usize("shared_expert_intermediate_size")?
                .filter(|&n| n > 0);
            let renorm = c.opt_bool("norm_topk_prob")?.unwrap_or(false);
            let moe = MoeConfig::from_json(c, "num_experts", inter, renorm, shared)?;
            let step = c.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1);
            let dense: Vec<usize> = c
                .get("mlp_only_layers")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as usize)
                        .collect()
                })
                .unwrap_or_default();
            let sparse = (0..layers)
                .map(|l| !dense.contains(&l) && (l + 1) % step == 0)
                .collect();
            Ok((Some(moe), sparse))
        }
        _ => Ok((None, vec![false; layers])),
    }
}

/// Sliding windows per layer. `layer_types` ("sliding_attention" / "full_attention") when the
/// config lists them; else Qwen2's rule (with `use_sliding_window`, layers from
/// `max_window_layers` on slide); else Mistral's `sliding_window` for every layer.
fn layer_windows(c: &JsonConfig, qwen2: bool, layers: usize) -> Result<Vec<Option<usize>>> {
    let mistral = matches!(c.architecture()?.as_str(), "MistralForCausalLM" | "mistral");
    let bad = |key: &str, message: String| ModelError::BadConfigValue {
        file: c.path.clone(),
        key: key.into(),
        message,
    };
    // transformers' MistralConfig defaults a missing sliding_window to 4096 (null: none).
    let window = match c.get("sliding_window") {
        None if mistral => Some(4096),
        _ => c.opt_usize("sliding_window")?,
    };
    let enabled = !qwen2 || c.opt_bool("use_sliding_window")?.unwrap_or(false);
    let window = window.filter(|_| enabled);
    if window == Some(0) {
        return Err(bad("sliding_window", "must be at least 1".into()));
    }
    if let Some(types) = c.get("layer_types").and_then(|v| v.as_array()) {
        if types.len() != layers {
            return Err(bad(
                "layer_types",
                format!("lists {} layers, the model has {layers}", types.len()),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => match window {
                    Some(w) => Ok(Some(w)),
                    None => Err(bad(
                        "layer_types",
                        "names a sliding_attention layer but sliding_window is not set".into(),
                    )),
                },
                _ => Err(bad("layer_types", format!("entry {t} is not supported"))),
            })
            .collect();
    }
    let first_sliding = if qwen2 {
        c.opt_usize("max_window_layers")?.unwrap_or(0)
    } else {
        0
    };
    Ok((0..layers)
        .map(|l| window.filter(|_| l >= first_sliding))
        .collect())
}

/// Attention choices made when running a model rather than stored in its checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttentionOptions {
    /// StreamingLLM: keep the first `sinks` tokens and the last `window` (keys cached before
    /// RoPE, positions counted inside the cache).
    pub streaming: Option<(usize, usize)>,
    /// Block-sparse attention patterns per layer.
    pub sparse: Option<SparseConfig>,
}

/// The projections of a self-attention block (Llama, Jamba's attention layers).
#[derive(Clone)]
pub(crate) struct AttentionWeights {
    q: Arc<GpuWeight>,
    k: Arc<GpuWeight>,
    v: Arc<GpuWeight>,
    q_bias: Option<Arc<GpuWeight>>,
    k_bias: Option<Arc<GpuWeight>>,
    v_bias: Option<Arc<GpuWeight>>,
    o: Arc<GpuWeight>,
}

impl AttentionWeights {
    /// `{prefix}.{q,k,v,o}_proj.weight` and q/k/v biases (required when `bias`, else
    /// loaded when present), for inputs of width `hidden` and outputs of width `out`.
    pub fn load(
        up: &mut Uploader<'_>,
        prefix: &str,
        [hidden, out]: [usize; 2],
        shape: &AttnShape,
        bias: bool,
    ) -> Result<AttentionWeights> {
        let (qd, kvd) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let b = |up: &mut Uploader<'_>, name: &str, n: usize| -> Result<Option<Arc<GpuWeight>>> {
            let name = format!("{prefix}.{name}.bias");
            match bias {
                true => up.vector(&name, n).map(Some),
                false => up.optional_vector(&name, n),
            }
        };
        Ok(AttentionWeights {
            q: up.matrix(&format!("{prefix}.q_proj.weight"), qd, hidden)?,
            k: up.matrix(&format!("{prefix}.k_proj.weight"), kvd, hidden)?,
            v: up.matrix(&format!("{prefix}.v_proj.weight"), kvd, hidden)?,
            q_bias: b(up, "q_proj", qd)?,
            k_bias: b(up, "k_proj", kvd)?,
            v_bias: b(up, "v_proj", kvd)?,
            o: up.matrix(&format!("{prefix}.o_proj.weight"), out, qd)?,
        })
    }

    /// Self-attention over `h` [T, hidden] through the KV cache states `{cache}.k` and
    /// `{cache}.v` laid out as `layout`; RoPE with `inv_freq` when given (inside attention
    /// for caches that keep keys before RoPE). Returns the output projection [T, hidden].
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &self,
        g: &mut Graph,
        h: TensorId,
        cache: &str,
        layout: KvLayout,
        shape: AttnShape,
        causal: bool,
        inv_freq: Option<TensorId>,
        mask: Option<TensorId>,
    ) -> kestrel_runtime::Result<TensorId> {
        let qkv = self.qkv(g, h)?;
        self.attend(g, qkv, cache, layout, shape, causal, inv_freq, mask)
    }

    /// The q, k and v projections of `h`.
    pub fn qkv(&self, g: &mut Graph, h: TensorId) -> kestrel_runtime::Result<[TensorId; 3]> {
        Ok([
            crate::lin(g, h, &self.q, self.q_bias.as_ref())?,
            crate::lin(g, h, &self.k, self.k_bias.as_ref())?,
            crate::lin(g, h, &self.v, self.v_bias.as_ref())?,
        ])
    }

    /// [`AttentionWeights::build`] from projections already made.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        g: &mut Graph,
        [q, k, v]: [TensorId; 3],
        cache: &str,
        layout: KvLayout,
        shape: AttnShape,
        causal: bool,
        inv_freq: Option<TensorId>,
        mask: Option<TensorId>,
    ) -> kestrel_runtime::Result<TensorId> {
        let kvd = shape.kv_heads * shape.head_dim;
        // Keys cached before RoPE (attention sinks) are rotated inside attention.
        let (q, k, rope) = match inv_freq {
            Some(f) if layout.rope_in_attention => (q, k, Some(f)),
            Some(f) => {
                let q = g.rope(q, f, shape.heads, shape.head_dim)?;
                (q, g.rope(k, f, shape.kv_heads, shape.head_dim)?, None)
            }
            None => (q, k, None),
        };
        let k_cache = g.state(&format!("{cache}.k"), &[layout.rows, kvd]);
        let v_cache = g.state(&format!("{cache}.v"), &[layout.rows, kvd]);
        g.cache_write(k, k_cache, layout)?;
        g.cache_write(v, v_cache, layout)?;
        let a = g.attention(q, k_cache, v_cache, shape, causal, layout, rope, mask)?;
        crate::lin(g, a, &self.o, None)
    }
}

/// The K and V cache states of an attention layer named `cache`.
pub(crate) fn cache_states(cache: &str, layout: &KvLayout, kv_dim: usize) -> [StateSpec; 2] {
    ["k", "v"].map(|kind| StateSpec::cache(format!("{cache}.{kind}"), vec![layout.rows, kv_dim]))
}

#[derive(Clone)]
struct Layer {
    attn_norm: Arc<GpuWeight>,
    attn: AttentionWeights,
    mlp_norm: Arc<GpuWeight>,
    ffn: FeedForward,
}

#[derive(Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    attention: AttentionOptions,
    embed: Arc<GpuWeight>,
    layers: Vec<Layer>,
    norm: Arc<GpuWeight>,
    lm_head: Arc<GpuWeight>,
    inv_freq: Arc<GpuWeight>,
    /// Bytes of weights on the GPU.
    pub weight_bytes: u64,
    /// Bytes the same tensors take in the model file.
    pub file_bytes: u64,
}

impl Llama {
    /// Upload the weights named as in Hugging Face checkpoints.
    pub fn load(config: LlamaConfig, up: &mut Uploader<'_>) -> Result<Llama> {
        let c = &config;
        let h = c.hidden;
        let embed = up.matrix("model.embed_tokens.weight", c.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = format!("model.layers.{l}");
            let attn_shape = c.attn_shape();
            layers.push(Layer {
                attn_norm: up.vector(&format!("{p}.input_layernorm.weight"), h)?,
                attn: AttentionWeights::load(
                    up,
                    &format!("{p}.self_attn"),
                    [h, h],
                    &attn_shape,
                    c.qkv_bias,
                )?,
                mlp_norm: up.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                ffn: {
                    let mixtral =
                        matches!(c.architecture.as_str(), "MixtralForCausalLM" | "mixtral");
                    let (names, block) = match mixtral {
                        true => (crate::moe::MIXTRAL, "block_sparse_moe"),
                        false => (crate::moe::QWEN2_MOE, "mlp"),
                    };
                    let moe = c.moe.as_ref().filter(|_| c.moe_layers[l]);
                    let block = if moe.is_some() { block } else { "mlp" };
                    let prefix = format!("{p}.{block}");
                    FeedForward::load(up, moe.map(|m| (m, names)), &prefix, l, h, c.intermediate)?
                },
            });
        }
        let norm = up.vector("model.norm.weight", h)?;
        let lm_head = up.lm_head(&embed, c.tie_embeddings, c.vocab, h)?;
        let inv_freq = up.vector_from(
            "rope.inv_freq",
            &rope::inv_freq(c.rope_theta, c.head_dim, c.llama3),
        )?;
        Ok(Llama {
            attention: AttentionOptions::default(),
            weight_bytes: up.gpu_bytes,
            file_bytes: up.file_bytes,
            config,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }
}

impl Llama {
    /// Switch attention to StreamingLLM sinks or block-sparse patterns, after checking them
    /// against the model.
    pub fn set_attention(&mut self, options: AttentionOptions) -> Result<()> {
        let c = &self.config;
        let bad = |m: String| Err(ModelError::BadOption(m));
        if let Some((sinks, window)) = options.streaming {
            if sinks == 0 || window == 0 {
                return bad(format!(
                    "--attention-sinks ({sinks}) and --kv-window ({window}) must be at least 1"
                ));
            }
            if sinks + window > c.max_positions {
                return bad(format!(
                    "--attention-sinks {sinks} plus --kv-window {window} exceed the model's context of {} positions",
                    c.max_positions
                ));
            }
            if let Some(w) = c.min_window().filter(|&w| window > w) {
                return bad(format!(
                    "--kv-window {window} is larger than the model's own sliding window of {w}"
                ));
            }
            if options.sparse.is_some() {
                return bad("attention sinks and block-sparse attention cannot be combined".into());
            }
        }
        if let Some(sparse) = &options.sparse {
            sparse.validate(c.layers)?;
            if let Some(l) = (0..c.layers)
                .find(|&l| sparse.for_layer(l).is_some() && c.layer_windows[l].is_some())
            {
                return bad(format!(
                    "layer {l} has a sliding window; block-sparse patterns apply to full-attention layers"
                ));
            }
        }
        self.attention = options;
        Ok(())
    }

    fn sparse_pattern(&self, l: usize) -> Option<kestrel_runtime::block_mask::SparsePattern> {
        self.attention.sparse.as_ref().and_then(|s| s.for_layer(l))
    }

    /// The cache layout of layer `l` for a sequence of up to `capacity` tokens.
    fn layout(&self, l: usize, capacity: usize) -> kestrel_runtime::Result<KvLayout> {
        Ok(
            match (self.attention.streaming, self.config.layer_windows[l]) {
                (Some((sinks, window)), _) => KvLayout::streaming(sinks, window)?,
                (None, Some(w)) => KvLayout::sliding(w, capacity)?,
                (None, None) => KvLayout::linear(capacity),
            },
        )
    }
}

impl Llama {
    /// Bytes of expert weights a decoded token does not read (0 for a dense model).
    pub fn unread_expert_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.ffn.unread_bytes_per_token())
            .sum()
    }
}

impl Architecture for Llama {
    fn vocab_size(&self) -> usize {
        self.config.vocab
    }

    /// With attention sinks positions stay inside the cache, so a sequence may grow without
    /// bound; otherwise the model's position limit.
    fn max_context(&self) -> usize {
        match self.attention.streaming {
            Some(_) => u32::MAX as usize,
            None => self.config.max_positions,
        }
    }

    fn kv_layouts(&self, capacity: usize) -> Vec<KvLayout> {
        (0..self.config.layers)
            .map(|l| {
                self.layout(l, capacity)
                    .unwrap_or(KvLayout::linear(capacity))
            })
            .collect()
    }

    fn states(&self, capacity: usize) -> Vec<StateSpec> {
        let kvd = self.config.kv_heads * self.config.head_dim;
        let mut states: Vec<StateSpec> = self
            .kv_layouts(capacity)
            .iter()
            .enumerate()
            .flat_map(|(l, layout)| cache_states(&format!("layer.{l}"), layout, kvd))
            .collect();
        states.extend(self.layers.iter().filter_map(|l| l.ffn.state()));
        states
    }

    fn build(&self, n: usize, capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let mut g = Graph::new();
        let ids = g.input("tokens", &[n], DType::U32);
        let x = self.forward(&mut g, ids, capacity)?;
        let lm_head = g.weight(&self.lm_head);
        match head {
            Head::AllLogits | Head::Sample => crate::lm_head(&mut g, x, lm_head, head)?,
            Head::Unmask(u) => {
                let logits = g.linear(x, lm_head, None)?;
                // Classifier-free guidance: the prompt-masked sequence's forward runs after the
                // conditional one in the same graph, over the same KV state (every guided step
                // is a full forward, so no cache has to survive it).
                let uncond = if u.cfg_scale() != 0.0 {
                    let ids = g.input("uncond_tokens", &[n], DType::U32);
                    let x = self.forward(&mut g, ids, capacity)?;
                    let lm_head = g.weight(&self.lm_head);
                    Some(g.linear(x, lm_head, None)?)
                } else {
                    None
                };
                let chosen = g.unmask(
                    logits,
                    uncond,
                    ids,
                    u.mask_id,
                    u.cfg_scale(),
                    u.random_remasking,
                )?;
                g.output(chosen);
            }
        }
        Ok(g)
    }
}

impl Llama {
    /// The decoder over token ids `ids` [n]: embedding, the layers (writing their KV caches)
    /// and the final norm; returns the normalised hidden states [n, hidden].
    fn forward(
        &self,
        g: &mut Graph,
        ids: kestrel_runtime::TensorId,
        capacity: usize,
    ) -> kestrel_runtime::Result<kestrel_runtime::TensorId> {
        let c = &self.config;
        let embed = g.weight(&self.embed);
        let inv_freq = g.weight(&self.inv_freq);
        let mut x = g.embedding(embed, ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let w = |g: &mut Graph, w: &Arc<GpuWeight>| g.weight(w);
            let norm = w(g, &layer.attn_norm);
            let h = g.rms_norm(x, norm, c.eps)?;
            let layout = self.layout(l, capacity)?;
            let mask = self.sparse_pattern(l).map(|pattern| {
                let blocks = mask_blocks(layout.rows);
                g.block_mask(&BlockMask::causal(&pattern, c.heads, blocks, l))
            });
            let o = layer.attn.build(
                g,
                h,
                &format!("layer.{l}"),
                layout,
                c.attn_shape(),
                c.causal,
                Some(inv_freq),
                mask,
            )?;
            x = g.add_tensors(x, o)?;
            let norm = w(g, &layer.mlp_norm);
            let h = g.rms_norm(x, norm, c.eps)?;
            let down = layer.ffn.build(g, h)?;
            x = g.add_tensors(x, down)?;
        }
        let norm = g.weight(&self.norm);
        g.rms_norm(x, norm, c.eps)
    }
}

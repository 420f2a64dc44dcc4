//! Zamba2 (Zamba2ForCausalLM): Mamba-2 layers (`mamba::MambaMixer`), and on the "hybrid"
//! layers a transformer block whose weights are shared: `num_mem_blocks` blocks used in turn.
//! A hybrid layer feeds the block the concatenation of its input and the token embeddings
//! [T, 2 * hidden]: RMSNorm, attention (`llama::AttentionWeights`, head_dim = 2 * hidden /
//! heads, scale 1/sqrt(head_dim / 2), RoPE when use_mem_rope), RMSNorm, a GeGLU (or SwiGLU)
//! MLP, with per-use LoRA adapters on q, k, v (use_shared_attention_adapter) and on the MLP's
//! gate/up projection, then the layer's own linear; the result is added to the Mamba layer's
//! input (not to its residual). Each hybrid layer has its own KV cache; every layer has its
//! conv and scan states.
//!
//! Not done: the reference clamps dt to time_step_min in its chunked prefill only (its
//! decode does not); Kestrel never clamps, which matches both while dt stays above it.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::attention::AttnShape;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::rope;
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};
use kestrel_runtime::TensorId;

use crate::config::JsonConfig;
use crate::error::{ModelError, Result};
use crate::llama::{cache_states, AttentionWeights};
use crate::mamba::{MambaConfig, MambaMixer};
use crate::weights::Uploader;

pub const ARCHITECTURE: &str = "Zamba2ForCausalLM";

pub fn is_zamba2(c: &JsonConfig) -> bool {
    c.architecture()
        .is_ok_and(|a| a == ARCHITECTURE || a == "zamba2")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zamba2Config {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub eps: f32,
    /// The layers with a shared transformer block.
    pub hybrid: Vec<usize>,
    pub mem_blocks: usize,
    pub attn: AttnShape,
    pub attention_adapters: bool,
    pub adapter_rank: usize,
    /// RoPE base when use_mem_rope.
    pub rope_theta: Option<f64>,
    /// GeGLU (gelu) or SwiGLU (silu).
    pub mlp_act: Elementwise,
    pub mamba: MambaConfig,
    pub tie_embeddings: bool,
    pub bos: Vec<u32>,
    pub eos: Vec<u32>,
}

impl Zamba2Config {
    pub fn from_json(c: &JsonConfig) -> Result<Zamba2Config> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.positive("hidden_size")?;
        let layers = c.positive("num_hidden_layers")?;
        let kinds = c
            .get("layers_block_type")
            .or(c.get("layer_types"))
            .and_then(|v| v.as_array())
            .ok_or_else(|| ModelError::MissingConfigKey {
                file: c.path.clone(),
                key: "layers_block_type".into(),
            })?;
        if kinds.len() != layers {
            return Err(bad(
                "layers_block_type",
                format!("lists {} layers, the model has {layers}", kinds.len()),
            ));
        }
        let mut hybrid = Vec::new();
        for (l, k) in kinds.iter().enumerate() {
            match k.as_str() {
                Some("hybrid") => hybrid.push(l),
                Some("mamba" | "linear_attention") => {}
                _ => {
                    return Err(bad(
                        "layers_block_type",
                        format!("entry {k} is not supported"),
                    ))
                }
            }
        }
        let heads = c.positive("num_attention_heads")?;
        let kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        let attention_adapters = c.opt_bool("use_shared_attention_adapter")?.unwrap_or(false);
        if 2 * hidden % heads != 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(bad(
                "num_attention_heads",
                format!("{heads} heads ({kv_heads} kv) do not divide 2 * hidden_size"),
            ));
        }
        if attention_adapters && kv_heads != heads {
            return Err(bad(
                "num_key_value_heads",
                "must equal num_attention_heads with use_shared_attention_adapter".into(),
            ));
        }
        let head_dim = 2 * hidden / heads;
        let mlp_act = match c
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("gelu")
        {
            "gelu" => Elementwise::GeluMul,
            "silu" => Elementwise::SwiGlu,
            other => {
                return Err(bad(
                    "hidden_act",
                    format!("'{other}' is not supported (gelu, silu are)"),
                ))
            }
        };
        if c.opt_bool("add_bias_linear")?.unwrap_or(false) {
            return Err(bad("add_bias_linear", "true is not supported".into()));
        }
        if c.opt_bool("use_long_context")?.unwrap_or(false) {
            return Err(bad("use_long_context", "true is not supported".into()));
        }
        let rope_theta = match c.opt_bool("use_mem_rope")?.unwrap_or(false) {
            false => None,
            true => Some(match c.opt_f64("rope_theta")? {
                Some(t) => t,
                None => c
                    .get("rope_parameters")
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(|v| v.as_f64())
                    .unwrap_or(10000.0),
            }),
        };
        let vocab = c.positive("vocab_size")?;
        let inner = c.opt_usize("mamba_expand")?.unwrap_or(2) * hidden;
        let m_heads = c.opt_usize("n_mamba_heads")?.unwrap_or(8);
        let groups = c.opt_usize("mamba_ngroups")?.unwrap_or(1);
        if m_heads == 0 || inner % m_heads != 0 || groups == 0 || m_heads % groups != 0 {
            return Err(bad(
                "n_mamba_heads",
                format!("{m_heads} heads in {groups} groups do not fit {inner} channels"),
            ));
        }
        let mamba = MambaConfig {
            version: 2,
            hidden,
            inner,
            layers,
            vocab,
            state: c.opt_usize("mamba_d_state")?.unwrap_or(64),
            conv_kernel: c.opt_usize("mamba_d_conv")?.unwrap_or(4),
            dt_rank: 0,
            heads: m_heads,
            groups,
            // Zamba2RMSNormGated's fixed eps.
            eps: 1e-5,
            conv_bias: c.opt_bool("use_conv_bias")?.unwrap_or(true),
            proj_bias: false,
            inner_norms: false,
            tie_embeddings: false,
            bos: Vec::new(),
            eos: Vec::new(),
        };
        mamba.validate(c)?;
        Ok(Zamba2Config {
            hidden,
            intermediate: c.opt_usize("intermediate_size")?.unwrap_or(4 * hidden),
            layers,
            vocab,
            max_positions: c.positive("max_position_embeddings")?,
            eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-5) as f32,
            hybrid,
            mem_blocks: c.opt_usize("num_mem_blocks")?.unwrap_or(1).max(1),
            attn: AttnShape {
                heads,
                kv_heads,
                head_dim,
                scale: 1.0 / (head_dim as f32 / 2.0).sqrt(),
            },
            attention_adapters,
            adapter_rank: c.opt_usize("adapter_rank")?.unwrap_or(128),
            rope_theta,
            mlp_act,
            mamba,
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            bos: c.opt_token_ids("bos_token_id"),
            eos: c.opt_token_ids("eos_token_id"),
        })
    }
}

/// A low-rank adapter: x -> b(a(x)).
struct Lora {
    a: Arc<GpuWeight>,
    b: Arc<GpuWeight>,
}

impl Lora {
    fn build(&self, g: &mut Graph, x: TensorId) -> kestrel_runtime::Result<TensorId> {
        let low = crate::lin(g, x, &self.a, None)?;
        crate::lin(g, low, &self.b, None)
    }
}

/// A shared transformer block.
struct SharedBlock {
    input_norm: Arc<GpuWeight>,
    attn: AttentionWeights,
    pre_ff_norm: Arc<GpuWeight>,
    gate: Arc<GpuWeight>,
    up: Arc<GpuWeight>,
    down: Arc<GpuWeight>,
}

/// One use of a shared block by a hybrid layer: its block, its adapters and its linear.
struct HybridUse {
    block: usize,
    qkv_adapters: Option<[Lora; 3]>,
    /// The gate/up adapter: one down-projection, its up-projection split into gate and up.
    mlp_a: Arc<GpuWeight>,
    mlp_b: [Arc<GpuWeight>; 2],
    linear: Arc<GpuWeight>,
}

struct Layer {
    norm: Arc<GpuWeight>,
    mixer: MambaMixer,
    hybrid: Option<HybridUse>,
}

pub struct Zamba2 {
    pub config: Zamba2Config,
    embed: Arc<GpuWeight>,
    blocks: Vec<SharedBlock>,
    layers: Vec<Layer>,
    norm: Arc<GpuWeight>,
    lm_head: Arc<GpuWeight>,
    inv_freq: Option<Arc<GpuWeight>>,
    pub weight_bytes: u64,
    pub file_bytes: u64,
}

impl Zamba2 {
    pub fn load(config: Zamba2Config, up: &mut Uploader<'_>) -> Result<Zamba2> {
        let c = &config;
        let (h, i, r) = (c.hidden, c.intermediate, c.adapter_rank);
        let embed = up.matrix("model.embed_tokens.weight", c.vocab, h)?;
        // Block b's weights are stored with its first user, hybrid layer b.
        let source = |b: usize| format!("model.layers.{}.shared_transformer", c.hybrid[b]);
        let mut blocks = Vec::new();
        for b in 0..c.mem_blocks.min(c.hybrid.len()) {
            let p = source(b);
            let gate_up = format!("{p}.feed_forward.gate_up_proj.weight");
            blocks.push(SharedBlock {
                input_norm: up.vector(&format!("{p}.input_layernorm.weight"), 2 * h)?,
                attn: AttentionWeights::load(
                    up,
                    &format!("{p}.self_attn"),
                    [2 * h, h],
                    &c.attn,
                    false,
                )?,
                pre_ff_norm: up.vector(&format!("{p}.pre_ff_layernorm.weight"), h)?,
                gate: up.matrix_rows(&gate_up, 2 * i, h, 0, i)?,
                up: up.matrix_rows(&gate_up, 2 * i, h, i, i)?,
                down: up.matrix(&format!("{p}.feed_forward.down_proj.weight"), h, i)?,
            });
        }
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = format!("model.layers.{l}");
            let use_of = c.hybrid.iter().position(|&x| x == l);
            let m = match use_of {
                Some(_) => format!("{p}.mamba_decoder"),
                None => p.clone(),
            };
            let hybrid = match use_of {
                None => None,
                Some(n) => {
                    let block = n % c.mem_blocks;
                    let s = source(block);
                    let ad = |up: &mut Uploader<'_>, list: &str, out: usize, inp: usize| {
                        Ok::<_, ModelError>(Lora {
                            a: up.matrix(&format!("{s}.self_attn.{list}.{n}.0.weight"), r, inp)?,
                            b: up.matrix(&format!("{s}.self_attn.{list}.{n}.1.weight"), out, r)?,
                        })
                    };
                    let qkv_adapters = match c.attention_adapters {
                        true => Some([
                            ad(up, "linear_q_adapter_list", 2 * h, 2 * h)?,
                            ad(up, "linear_k_adapter_list", 2 * h, 2 * h)?,
                            ad(up, "linear_v_adapter_list", 2 * h, 2 * h)?,
                        ]),
                        false => None,
                    };
                    let mlp = format!("{s}.feed_forward.gate_up_proj_adapter_list.{n}");
                    let b_name = format!("{mlp}.1.weight");
                    Some(HybridUse {
                        block,
                        qkv_adapters,
                        mlp_a: up.matrix(&format!("{mlp}.0.weight"), r, h)?,
                        mlp_b: [
                            up.matrix_rows(&b_name, 2 * i, r, 0, i)?,
                            up.matrix_rows(&b_name, 2 * i, r, i, i)?,
                        ],
                        linear: up.matrix(&format!("{p}.linear.weight"), h, h)?,
                    })
                }
            };
            layers.push(Layer {
                norm: up.vector(&format!("{m}.input_layernorm.weight"), h)?,
                mixer: MambaMixer::load(&c.mamba, up, &format!("{m}.mamba"))?,
                hybrid,
            });
        }
        let norm = up.vector("model.final_layernorm.weight", h)?;
        let lm_head = up.lm_head(&embed, c.tie_embeddings, c.vocab, h)?;
        let inv_freq = match c.rope_theta {
            Some(theta) => Some(up.vector_from(
                "rope.inv_freq",
                &rope::inv_freq(theta, c.attn.head_dim, None),
            )?),
            None => None,
        };
        Ok(Zamba2 {
            weight_bytes: up.gpu_bytes,
            file_bytes: up.file_bytes,
            config,
            embed,
            blocks,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// Hybrid layer `l`'s shared block over its input `x` and the embeddings `emb`: the
    /// block's output after the layer's linear [T, hidden].
    fn shared_block(
        &self,
        g: &mut Graph,
        l: usize,
        u: &HybridUse,
        x: TensorId,
        emb: TensorId,
        capacity: usize,
    ) -> kestrel_runtime::Result<TensorId> {
        let c = &self.config;
        let blk = &self.blocks[u.block];
        let cat = g.head_concat(x, emb, 1)?;
        let norm = g.weight(&blk.input_norm);
        let hn = g.rms_norm(cat, norm, c.eps)?;
        let mut qkv = blk.attn.qkv(g, hn)?;
        if let Some(adapters) = &u.qkv_adapters {
            for (t, a) in qkv.iter_mut().zip(adapters) {
                let delta = a.build(g, hn)?;
                *t = g.add_tensors(*t, delta)?;
            }
        }
        let inv_freq = self.inv_freq.as_ref().map(|f| g.weight(f));
        let layout = KvLayout::linear(capacity);
        let cache = format!("layer.{l}");
        let a = blk
            .attn
            .attend(g, qkv, &cache, layout, c.attn, true, inv_freq, None)?;
        let norm = g.weight(&blk.pre_ff_norm);
        let f = g.rms_norm(a, norm, c.eps)?;
        let low = crate::lin(g, f, &u.mlp_a, None)?;
        let mut gate_up = [0; 2];
        for (j, w) in [&blk.gate, &blk.up].into_iter().enumerate() {
            let full = crate::lin(g, f, w, None)?;
            let delta = crate::lin(g, low, &u.mlp_b[j], None)?;
            gate_up[j] = g.add_tensors(full, delta)?;
        }
        let act = g.elementwise(c.mlp_act, gate_up[0], gate_up[1])?;
        let m = crate::lin(g, act, &blk.down, None)?;
        crate::lin(g, m, &u.linear, None)
    }
}

impl Architecture for Zamba2 {
    fn vocab_size(&self) -> usize {
        self.config.vocab
    }

    fn max_context(&self) -> usize {
        self.config.max_positions
    }

    fn kv_layouts(&self, capacity: usize) -> Vec<KvLayout> {
        vec![KvLayout::linear(capacity); self.config.hybrid.len()]
    }

    /// A KV cache per hybrid layer, conv and scan states per layer.
    fn states(&self, capacity: usize) -> Vec<StateSpec> {
        let c = &self.config;
        let kvd = c.attn.kv_heads * c.attn.head_dim;
        let layout = KvLayout::linear(capacity);
        let mut states = Vec::new();
        for l in 0..c.layers {
            if c.hybrid.contains(&l) {
                states.extend(cache_states(&format!("layer.{l}"), &layout, kvd));
            }
            states.extend(c.mamba.layer_states(l));
        }
        states
    }

    fn build(&self, n: usize, capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let c = &self.config;
        let mut g = Graph::new();
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let emb = g.embedding(embed, ids)?;
        let mut x = emb;
        for (l, layer) in self.layers.iter().enumerate() {
            let input = match &layer.hybrid {
                Some(u) => {
                    let t = self.shared_block(&mut g, l, u, x, emb, capacity)?;
                    g.add_tensors(x, t)?
                }
                None => x,
            };
            let norm = g.weight(&layer.norm);
            let h = g.rms_norm(input, norm, c.eps)?;
            let out = layer.mixer.build(&mut g, &c.mamba, l, h)?;
            x = g.add_tensors(x, out)?;
        }
        let norm = g.weight(&self.norm);
        let x = g.rms_norm(x, norm, c.eps)?;
        let lm_head = g.weight(&self.lm_head);
        crate::lm_head(&mut g, x, lm_head, head)?;
        Ok(g)
    }
}

//! Zamba2 (Zamba2ForCausalLM): Mamba-2 layers (the shared Mamba mixer), and on the "hybrid"
//! layers a transformer block whose weights are shared: `num_mem_blocks` blocks used in turn.
//! A hybrid layer feeds the block the concatenation of its input and the token embeddings
//! [T, 2 * hidden]: RMSNorm, attention (the shared block, head_dim = 2 * hidden / heads,
//! scale 1/sqrt(head_dim / 2), RoPE when use_mem_rope), RMSNorm, a GeGLU (or SwiGLU)
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

use super::{Family, Network, NetworkConfig};
use crate::blocks::attention::{AttentionRun, AttentionWeights, KvCache, ATTENTION};
use kestrel_runtime::kernels::linear::LinearOutput;
use crate::blocks::lm_head::LmHead;
use crate::blocks::mamba::{MambaMixer, MixerConfig};
use crate::blocks::mlp::lin;
use crate::blocks::norm::RmsNorm;
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::formats::config::keys::{why, ConfigKey};
use crate::model::ModelConfig;
use crate::vars::Vars;

pub const ARCHITECTURE: &str = "Zamba2ForCausalLM";

pub const FAMILY: Family = Family {
    classes: &[ARCHITECTURE],
    model_types: &["zamba2"],
    gguf: &[],
    parse: Some(|c| Ok(Box::new(Zamba2Config::from_json(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers' Zamba2Config and Zamba2ForCausalLM read.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("num_hidden_layers", "4"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("num_attention_heads", "8"),
    ConfigKey::honoured("num_key_value_heads", "1"),
    ConfigKey::honoured("intermediate_size", "32"),
    ConfigKey::honoured("rms_norm_eps", "0.001"),
    ConfigKey::honoured("max_position_embeddings", "64"),
    ConfigKey::honoured("tie_word_embeddings", "true"),
    ConfigKey::limited(
        "layers_block_type",
        r#"["mamba", "mamba", "mamba", "mamba", "hybrid"]"#,
        r#"["mamba", "attention", "mamba", "mamba", "mamba"]"#,
    ),
    // An alias of layers_block_type (read when that is absent, refused when they disagree).
    ConfigKey::refused(
        "layer_types",
        r#"["mamba", "mamba", "mamba", "mamba", "mamba", "mamba"]"#,
    ),
    ConfigKey::honoured("num_mem_blocks", "1"),
    ConfigKey::honoured("use_shared_attention_adapter", "false"),
    ConfigKey::honoured("adapter_rank", "4"),
    ConfigKey::honoured("use_mem_rope", "false"),
    ConfigKey::honoured("rope_theta", "500.0"),
    ConfigKey::honoured("rope_parameters", r#"{"rope_type": "default", "rope_theta": 500.0}"#),
    ConfigKey::honoured("mamba_d_state", "8"),
    ConfigKey::honoured("mamba_d_conv", "2"),
    ConfigKey::honoured("mamba_expand", "4"),
    ConfigKey::honoured("n_mamba_heads", "8"),
    ConfigKey::honoured("mamba_ngroups", "1"),
    ConfigKey::honoured("use_conv_bias", "false"),
    ConfigKey::limited("hidden_act", "\"silu\"", "\"relu\""),
    ConfigKey::refused("add_bias_linear", "true"),
    ConfigKey::refused("use_long_context", "true"),
    ConfigKey::inert("attention_hidden_size", why::DERIVED),
    ConfigKey::inert("attention_head_dim", why::DERIVED),
    ConfigKey::inert("head_dim", why::DERIVED),
    ConfigKey::inert("kv_channels", why::DERIVED),
    ConfigKey::inert("num_query_groups", why::DERIVED),
    ConfigKey::inert("hybrid_layer_ids", why::DERIVED),
    ConfigKey::inert("mamba_headdim", why::DERIVED),
    ConfigKey::inert("attention_dropout", why::TRAINING),
    ConfigKey::inert("time_step_floor", why::TRAINING),
    ConfigKey::inert("time_step_max", why::TRAINING),
    ConfigKey::inert("time_step_min", why::TRAINING),
    ConfigKey::inert("time_step_limit", "Zamba2 clamps dt to (0, inf) whatever it says"),
    ConfigKey::inert("chunk_size", why::RUNTIME),
    ConfigKey::inert("use_mamba_kernels", why::RUNTIME),
    ConfigKey::inert("use_mem_eff_path", why::RUNTIME),
    ConfigKey::inert("num_logits_to_keep", why::RUNTIME),
];


#[derive(Debug, Clone, PartialEq)]
pub struct Zamba2Config {
    pub model: ModelConfig,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
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
    pub mamba: MixerConfig,
    pub tie_embeddings: bool,
}

impl Zamba2Config {
    pub fn from_json(c: &JsonConfig) -> Result<Zamba2Config> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.dim("hidden_size", Dim::Hidden)?;
        let layers = c.dim("num_hidden_layers", Dim::Layers)?;
        // transformers maps layer_types onto layers_block_type: either may be given, and
        // when both are they must agree.
        let (key, kinds) = match (c.get("layers_block_type"), c.get("layer_types")) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(
                    "layer_types",
                    "disagrees with layers_block_type".into(),
                ))
            }
            (Some(a), _) => ("layers_block_type", a),
            (None, Some(b)) => ("layer_types", b),
            (None, None) => {
                return Err(ModelError::MissingConfigKey {
                    file: c.path.clone(),
                    key: "layers_block_type".into(),
                })
            }
        };
        let kinds = kinds
            .as_array()
            .ok_or_else(|| bad(key, "must be a list".into()))?;
        if kinds.len() != layers {
            return Err(bad(
                key,
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
                        key,
                        format!("entry {k} is not supported"),
                    ))
                }
            }
        }
        let heads = c.dim("num_attention_heads", Dim::Heads)?;
        let kv_heads = c.opt_dim("num_key_value_heads", Dim::Heads)?.unwrap_or(heads);
        let attention_adapters = c.opt_bool("use_shared_attention_adapter")?.unwrap_or(false);
        if !heads.is_multiple_of(kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!("({kv_heads}) must divide num_attention_heads ({heads})"),
            ));
        }
        if !(2 * hidden).is_multiple_of(heads) {
            return Err(bad(
                "num_attention_heads",
                format!("({heads}) must divide 2 * hidden_size ({})", 2 * hidden),
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
        let vocab = c.dim("vocab_size", Dim::Vocab)?;
        let expand = c.opt_dim("mamba_expand", Dim::Size)?.unwrap_or(2);
        let inner = c.product("mamba_expand", Dim::Intermediate, &[expand, hidden])?;
        let m_heads = c.opt_dim("n_mamba_heads", Dim::Heads)?.unwrap_or(8);
        let groups = c.opt_dim("mamba_ngroups", Dim::Heads)?.unwrap_or(1);
        if m_heads == 0 || inner % m_heads != 0 || groups == 0 || m_heads % groups != 0 {
            return Err(bad(
                "n_mamba_heads",
                format!("{m_heads} heads in {groups} groups do not fit {inner} channels"),
            ));
        }
        let mamba = MixerConfig {
            version: 2,
            hidden,
            inner,
            state: c.opt_dim("mamba_d_state", Dim::Size)?.unwrap_or(64),
            conv_kernel: c.opt_dim("mamba_d_conv", Dim::Size)?.unwrap_or(4),
            dt_rank: 0,
            heads: m_heads,
            groups,
            // Zamba2RMSNormGated's fixed eps.
            eps: 1e-5,
            conv_bias: c.opt_bool("use_conv_bias")?.unwrap_or(true),
            proj_bias: false,
            inner_norms: false,
        };
        mamba.validate(c)?;
        let intermediate = c.opt_dim("intermediate_size", Dim::Intermediate)?.unwrap_or(4 * hidden);
        let max_positions = c.dim("max_position_embeddings", Dim::Context)?;
        Ok(Zamba2Config {
            model: ModelConfig::causal(ARCHITECTURE, vocab, max_positions).with_config(c),
            hidden,
            intermediate,
            layers,
            eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-5) as f32,
            hybrid,
            mem_blocks: c.opt_dim("num_mem_blocks", Dim::Size)?.unwrap_or(1).max(1),
            attn: AttnShape {
                softcap: None,
                heads,
                kv_heads,
                head_dim,
                scale: 1.0 / (head_dim as f32 / 2.0).sqrt(),
            },
            attention_adapters,
            adapter_rank: c.opt_dim("adapter_rank", Dim::Size)?.unwrap_or(128),
            rope_theta,
            mlp_act,
            mamba,
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        })
    }
}

impl NetworkConfig for Zamba2Config {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        Ok(Arc::new(Zamba2::load(*self, vb)?))
    }
}

/// A low-rank adapter: x -> b(a(x)).
struct Lora {
    a: Arc<GpuWeight>,
    b: Arc<GpuWeight>,
}

impl Lora {
    /// `{list}.{n}.0.weight` [rank, input] and `{list}.{n}.1.weight` [output, rank] in
    /// scope `vb` (the adapter list's entry n).
    fn load(vb: &Vars<'_>, rank: usize, [output, input]: [usize; 2]) -> Result<Lora> {
        Ok(Lora {
            a: vb.matrix("0.weight", rank, input)?,
            b: vb.matrix("1.weight", output, rank)?,
        })
    }

    fn build(&self, g: &mut Graph, x: TensorId) -> kestrel_runtime::Result<TensorId> {
        let low = lin(g, x, &self.a, None)?;
        lin(g, low, &self.b, None)
    }
}

/// A shared transformer block.
struct SharedBlock {
    input_norm: RmsNorm,
    attn: AttentionWeights,
    pre_ff_norm: RmsNorm,
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
    norm: RmsNorm,
    mixer: MambaMixer,
    hybrid: Option<HybridUse>,
}

pub struct Zamba2 {
    config: Zamba2Config,
    embed: Arc<GpuWeight>,
    blocks: Vec<SharedBlock>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: LmHead,
    inv_freq: Option<Arc<GpuWeight>>,
}

impl Zamba2 {
    fn load(config: Zamba2Config, vb: &Vars<'_>) -> Result<Zamba2> {
        let c = &config;
        let (h, i, r, eps) = (c.hidden, c.intermediate, c.adapter_rank, c.eps);
        let body = vb.pp("model");
        let embed = body.matrix("embed_tokens.weight", c.model.vocab, h)?;
        // Block b's weights are stored with its first user, hybrid layer b.
        let source = |b: usize| body.pp("layers").pp(c.hybrid[b]).pp("shared_transformer");
        let mut blocks = Vec::new();
        for b in 0..c.mem_blocks.min(c.hybrid.len()) {
            let p = source(b);
            let ff = p.pp("feed_forward");
            let gate_up = |start| ff.matrix_rows("gate_up_proj.weight", [2 * i, h], start, i);
            blocks.push(SharedBlock {
                input_norm: RmsNorm::load(&p.pp("input_layernorm"), 2 * h, eps)?,
                attn: AttentionWeights::load_apart(
                    &p.pp("self_attn"),
                    ATTENTION,
                    [2 * h, h],
                    &c.attn,
                    false,
                )?,
                pre_ff_norm: RmsNorm::load(&p.pp("pre_ff_layernorm"), h, eps)?,
                gate: gate_up(0)?,
                up: gate_up(i)?,
                down: ff.matrix("down_proj.weight", h, i)?,
            });
        }
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = body.pp("layers").pp(l);
            let use_of = c.hybrid.iter().position(|&x| x == l);
            let m = match use_of {
                Some(_) => p.pp("mamba_decoder"),
                None => p.clone(),
            };
            let hybrid = match use_of {
                None => None,
                Some(n) => {
                    let block = n % c.mem_blocks;
                    let s = source(block);
                    let attn = s.pp("self_attn");
                    let ad = |list: &str| Lora::load(&attn.pp(list).pp(n), r, [2 * h, 2 * h]);
                    let qkv_adapters = match c.attention_adapters {
                        true => Some([
                            ad("linear_q_adapter_list")?,
                            ad("linear_k_adapter_list")?,
                            ad("linear_v_adapter_list")?,
                        ]),
                        false => None,
                    };
                    let mlp = s.pp("feed_forward.gate_up_proj_adapter_list").pp(n);
                    let mlp_b = |start| mlp.matrix_rows("1.weight", [2 * i, r], start, i);
                    Some(HybridUse {
                        block,
                        qkv_adapters,
                        mlp_a: mlp.matrix("0.weight", r, h)?,
                        mlp_b: [mlp_b(0)?, mlp_b(i)?],
                        linear: p.matrix("linear.weight", h, h)?,
                    })
                }
            };
            layers.push(Layer {
                norm: RmsNorm::load(&m.pp("input_layernorm"), h, eps)?,
                mixer: MambaMixer::load(&c.mamba, &m.pp("mamba"))?,
                hybrid,
            });
        }
        let norm = RmsNorm::load(&body.pp("final_layernorm"), h, eps)?;
        let lm_head = LmHead::load(vb, "lm_head.weight", &embed, c.tie_embeddings, [c.model.vocab, h])?;
        let inv_freq = match c.rope_theta {
            Some(theta) => Some(vb.computed_vector(
                "rope.inv_freq",
                &rope::inv_freq(theta, c.attn.head_dim, None),
            )?),
            None => None,
        };
        Ok(Zamba2 {
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
        let hn = blk.input_norm.apply(g, cat)?;
        let mut qkv = blk.attn.qkv(g, hn)?;
        if let Some(adapters) = &u.qkv_adapters {
            for (t, a) in qkv.iter_mut().zip(adapters) {
                let delta = a.build(g, hn)?;
                *t = g.add_tensors(*t, delta)?;
            }
        }
        let inv_freq = self.inv_freq.as_ref().map(|f| g.weight(f));
        // Every attention use keeps every position.
        let layout = g.kv_layouts(capacity, |c| Ok(vec![KvLayout::linear(c)]))?[0];
        let cache = KvCache { layer: l };
        let run = AttentionRun {
            cache: &cache,
            layout,
            shape: c.attn,
            causal: true,
            inv_freq,
            rope_scale: 1.0,
            qk_norm: None,
            mask: None,
        };
        let a = blk.attn.attend(g, &qkv, LinearOutput::New, run)?;
        let f = blk.pre_ff_norm.apply(g, a)?;
        let low = lin(g, f, &u.mlp_a, None)?;
        let mut gate_up = [0; 2];
        for (j, w) in [&blk.gate, &blk.up].into_iter().enumerate() {
            let full = lin(g, f, w, None)?;
            let delta = lin(g, low, &u.mlp_b[j], None)?;
            gate_up[j] = g.add_tensors(full, delta)?;
        }
        let act = g.elementwise(c.mlp_act, gate_up[0], gate_up[1])?;
        let m = lin(g, act, &blk.down, None)?;
        lin(g, m, &u.linear, None)
    }
}

impl Network for Zamba2 {
    fn config(&self) -> &ModelConfig {
        &self.config.model
    }

    fn attention_windows(&self) -> Vec<Option<usize>> {
        vec![None; self.config.hybrid.len()]
    }
}

impl Architecture for Zamba2 {
    fn vocab_size(&self) -> usize {
        self.config.model.vocab
    }

    fn max_context(&self) -> usize {
        self.config.model.max_positions
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
                states.extend(KvCache { layer: l }.states(&layout, kvd));
            }
            states.extend(c.mamba.layer_states(l));
        }
        states
    }

    fn build(&self, n: usize, capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let c = &self.config;
        let mut g = Graph::for_head(head);
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
            let h = layer.norm.apply(&mut g, input)?;
            let out = layer.mixer.build(&mut g, &c.mamba, l, h)?;
            x = g.add_tensors(x, out)?;
        }
        let x = self.norm.apply(&mut g, x)?;
        self.lm_head.apply(&mut g, x, head)?;
        Ok(g)
    }
}

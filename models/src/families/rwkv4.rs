//! RWKV-4 (transformers' RwkvForCausalLM), following modeling_rwkv.py: embeddings, the first
//! block's `pre_ln`, then per block
//! * ln1 → attention: token shift (the previous token's ln1 output), key / value /
//!   receptance inputs as time-mix lerps `x + (shifted - x) * (1 - mix)` (HF's
//!   `x * mix + shifted * (1 - mix)`, up to rounding), the key, value and
//!   receptance projections, the WKV recurrence (kernels::wkv4 with w = -exp(time_decay),
//!   u = time_first), `output(sigmoid(r) * wkv)`, residual add;
//! * ln2 → feed-forward: token shift, `value(relu(key(xk))^2)` gated by
//!   `sigmoid(receptance(xr))` (RWKV-6's channel mix), residual add;
//!
//! then `ln_out` (nn.LayerNorm's default eps, 1e-5, as in HF) and `head`.
//!
//! LayerNorms, the token shift (`x_prev - x` from a kernel-2 conv1d whose state [1, C] is the
//! previous token's input), the lerps and the channel mix are the blocks RWKV-6/7 use
//! (`blocks::rwkv`); only the WKV recurrence and the rescaling are RWKV-4's own. The shift
//! inputs and the WKV state [3, C] (aa, bb, pp; zero = empty, see kernels::wkv4) are
//! recurrent session states, so nothing depends on a position.
//!
//! `rescale_every` (r > 0): in inference HF divides `attention.output` and
//! `feed_forward.value` of block l by 2^(l / r) at load and halves the hidden states after
//! every r-th block. A power of two commutes exactly with f32 rounding (barring subnormals),
//! so here the two projections' outputs are scaled by 2^-(l / r) instead, which gives HF's
//! numbers for weights stored in any format, and the hidden states are halved the same way.

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::wkv4::STATE_ROWS;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};
use kestrel_runtime::TensorId;

use super::{Family, Network, NetworkConfig};
use crate::blocks::lm_head::LmHead;
use crate::blocks::mlp::lin;
use crate::blocks::norm::LayerNorm;
use crate::blocks::rwkv::{mix_w, shift_weights, token_shift, ChannelMix, Halving};
use crate::error::{ModelError, Result};
use crate::formats::config::{Dim, JsonConfig};
use crate::formats::config::keys::ConfigKey;
use crate::model::ModelConfig;
use crate::vars::Vars;

pub const ARCHITECTURE: &str = "RwkvForCausalLM";

pub const FAMILY: Family = Family {
    classes: &[ARCHITECTURE],
    model_types: &["rwkv"],
    gguf: &[],
    parse: Some(|c| Ok(Box::new(Rwkv4Config::from_json(c)?))),
    from_tensors: None,
    keys: KEYS,
};

/// The keys transformers' RwkvConfig and RwkvForCausalLM read.
const KEYS: &[ConfigKey] = &[
    ConfigKey::honoured("hidden_size", "128"),
    ConfigKey::honoured("num_hidden_layers", "1"),
    ConfigKey::honoured("vocab_size", "4096"),
    ConfigKey::honoured("intermediate_size", "64"),
    ConfigKey::honoured("layer_norm_epsilon", "0.001"),
    ConfigKey::honoured("rescale_every", "1"),
    ConfigKey::honoured("tie_word_embeddings", "true"),
    ConfigKey::refused("attention_hidden_size", "16"),
    ConfigKey::inert(
        "context_length",
        "sizes transformers' CUDA kernel; the recurrence has no position limit",
    ),
];


#[derive(Debug, Clone, PartialEq)]
pub struct Rwkv4Config {
    pub model: ModelConfig,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub eps: f32,
    /// 0: off.
    pub rescale_every: usize,
    pub tie_embeddings: bool,
}

impl Rwkv4Config {
    pub fn from_json(c: &JsonConfig) -> Result<Rwkv4Config> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.dim("hidden_size", Dim::Hidden)?;
        // HF's cached state is [hidden_size] per layer for the WKV triple too, so its
        // recurrent form only works when the attention width equals the hidden size.
        if let Some(att) = c.opt_dim("attention_hidden_size", Dim::Hidden)? {
            if att != hidden {
                return Err(bad(
                    "attention_hidden_size",
                    format!(
                        "{att} differs from hidden_size {hidden}; RWKV-4 with a different \
                         attention width is not supported"
                    ),
                ));
            }
        }
        let intermediate = match c.opt_dim("intermediate_size", Dim::Intermediate)? {
            Some(0) => return Err(bad("intermediate_size", "must be positive".into())),
            Some(n) => n,
            None => 4 * hidden,
        };
        let layers = c.dim("num_hidden_layers", Dim::Layers)?;
        let model = ModelConfig::recurrent(ARCHITECTURE, c.dim("vocab_size", Dim::Vocab)?)
            .with_config(c);
        Ok(Rwkv4Config {
            model,
            hidden,
            intermediate,
            layers,
            eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
            // HF: 0 or a negative number means no rescaling; the default is 6.
            rescale_every: match c.get("rescale_every") {
                None | Some(serde_json::Value::Null) => 6,
                Some(v) => match v.as_i64() {
                    Some(n) => n.max(0) as usize,
                    None => return Err(bad("rescale_every", format!("{v} is not an integer"))),
                },
            },
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        })
    }

    /// The power of two block `l`'s output projections are divided by in inference.
    fn rescale_exponent(&self, l: usize) -> i32 {
        match self.rescale_every {
            0 => 0,
            r => (l / r) as i32,
        }
    }
}

impl NetworkConfig for Rwkv4Config {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        Ok(Arc::new(Rwkv4::load(*self, vb)?))
    }
}

struct Block {
    pre_ln: Option<LayerNorm>,
    ln1: LayerNorm,
    ln2: LayerNorm,
    /// Lerp weights (1 - time_mix) of key, value, receptance.
    att_mix: [Arc<GpuWeight>; 3],
    att_key: Arc<GpuWeight>,
    att_value: Arc<GpuWeight>,
    att_receptance: Arc<GpuWeight>,
    att_output: Arc<GpuWeight>,
    /// -exp(time_decay) and time_first.
    w: Arc<GpuWeight>,
    u: Arc<GpuWeight>,
    ffn: ChannelMix,
    /// 2^-(l / rescale_every) as a row vector, when not 1.
    rescale: Option<Arc<GpuWeight>>,
}

pub struct Rwkv4 {
    config: Rwkv4Config,
    embed: Arc<GpuWeight>,
    blocks: Vec<Block>,
    ln_out: LayerNorm,
    head: LmHead,
    /// The token shift's conv weights (`blocks::rwkv::shift_weights`).
    shift: Arc<GpuWeight>,
    halving: Option<Halving>,
}

impl Rwkv4 {
    fn load(config: Rwkv4Config, vb: &Vars<'_>) -> Result<Rwkv4> {
        let c = &config;
        let (h, f) = (c.hidden, c.intermediate);
        let body = vb.pp("rwkv");
        let embed = body.matrix("embeddings.weight", c.model.vocab, h)?;
        let norm = |vb: &Vars<'_>| LayerNorm::load(vb, h, true);
        // HF's `x * m + shifted * (1 - m)` is the shared lerp `x + (shifted - x) * mu` with
        // mu = 1 - m.
        let mix = |vb: &Vars<'_>, leaf: &str| -> Result<Arc<GpuWeight>> {
            let mu: Vec<f32> = vb.host(leaf, &[1, 1, h])?.iter().map(|m| 1.0 - m).collect();
            vb.computed_vector(&format!("(1 - {leaf})"), &mu)
        };
        let mut blocks = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = body.pp("blocks").pp(l);
            let (a, ff) = (p.pp("attention"), p.pp("feed_forward"));
            let decay = a.host("time_decay", &[h])?;
            let w: Vec<f32> = decay.iter().map(|x| -x.exp()).collect();
            let e = c.rescale_exponent(l);
            blocks.push(Block {
                pre_ln: match l {
                    0 => Some(norm(&p.pp("pre_ln"))?),
                    _ => None,
                },
                ln1: norm(&p.pp("ln1"))?,
                ln2: norm(&p.pp("ln2"))?,
                att_mix: [
                    mix(&a, "time_mix_key")?,
                    mix(&a, "time_mix_value")?,
                    mix(&a, "time_mix_receptance")?,
                ],
                att_key: a.matrix("key.weight", h, h)?,
                att_value: a.matrix("value.weight", h, h)?,
                att_receptance: a.matrix("receptance.weight", h, h)?,
                att_output: a.matrix("output.weight", h, h)?,
                w: a.computed_vector("-exp(time_decay)", &w)?,
                u: a.vector("time_first", h)?,
                ffn: ChannelMix {
                    x_k: mix(&ff, "time_mix_key")?,
                    key: ff.matrix("key.weight", f, h)?,
                    value: ff.matrix("value.weight", h, f)?,
                    receptance: Some((
                        mix(&ff, "time_mix_receptance")?,
                        ff.matrix("receptance.weight", h, h)?,
                    )),
                },
                rescale: match e {
                    0 => None,
                    e => Some(p.computed_vector(&format!("rescale 2^-{e}"), &vec![0.5f32.powi(e); h])?),
                },
            });
        }
        let ln_out = norm(&body.pp("ln_out"))?;
        let head = LmHead::load(vb, "head.weight", &embed, c.tie_embeddings, [c.model.vocab, h])?;
        let shift = shift_weights(&body, h)?;
        let halving = Halving::load(vb, h, c.rescale_every)?;
        Ok(Rwkv4 {
            config,
            embed,
            blocks,
            ln_out,
            head,
            shift,
            halving,
        })
    }

    fn shift_state(&self, l: usize, part: &str) -> String {
        format!("layer.{l}.{part}.shift")
    }

    fn wkv_state(&self, l: usize) -> String {
        format!("layer.{l}.wkv")
    }

    /// One block over the hidden states `x` [T, hidden].
    fn block(&self, g: &mut Graph, l: usize, x: TensorId) -> kestrel_runtime::Result<TensorId> {
        let c = &self.config;
        let b = &self.blocks[l];
        let shift = |g: &mut Graph, x, part: &str| {
            token_shift(g, &self.shift, x, &self.shift_state(l, part), c.hidden)
        };
        let rescale = |g: &mut Graph, y| match &b.rescale {
            Some(s) => {
                let s = g.weight(s);
                g.elementwise(Elementwise::Mul, y, s)
            }
            None => Ok(y),
        };
        let x = match &b.pre_ln {
            Some(n) => n.apply(g, x, c.eps, 1)?,
            None => x,
        };
        // Attention.
        let xa = b.ln1.apply(g, x, c.eps, 1)?;
        let delta = shift(g, xa, "att")?;
        let xk = mix_w(g, xa, delta, &b.att_mix[0])?;
        let xv = mix_w(g, xa, delta, &b.att_mix[1])?;
        let xr = mix_w(g, xa, delta, &b.att_mix[2])?;
        let k = lin(g, xk, &b.att_key, None)?;
        let v = lin(g, xv, &b.att_value, None)?;
        let r = lin(g, xr, &b.att_receptance, None)?;
        let (w, u) = (g.weight(&b.w), g.weight(&b.u));
        let state = g.state(&self.wkv_state(l), &[STATE_ROWS, c.hidden]);
        let wkv = g.wkv4(k, v, w, u, state)?;
        let rw = g.elementwise(Elementwise::SigmoidMul, r, wkv)?;
        let att = lin(g, rw, &b.att_output, None)?;
        let att = rescale(g, att)?;
        let x = g.add_tensors(x, att)?;
        // Feed-forward.
        let xf = b.ln2.apply(g, x, c.eps, 1)?;
        let delta = shift(g, xf, "ffn")?;
        let ffn = b.ffn.apply(g, xf, delta)?;
        let ffn = rescale(g, ffn)?;
        let x = g.add_tensors(x, ffn)?;
        match &self.halving {
            Some(h) => h.apply(g, x, l),
            None => Ok(x),
        }
    }
}

impl Network for Rwkv4 {
    fn config(&self) -> &ModelConfig {
        &self.config.model
    }
}

impl Architecture for Rwkv4 {
    fn vocab_size(&self) -> usize {
        self.config.model.vocab
    }

    /// No position limit: the state is the same size at any length.
    fn max_context(&self) -> usize {
        u32::MAX as usize
    }

    fn states(&self, _capacity: usize) -> Vec<StateSpec> {
        let h = self.config.hidden;
        (0..self.config.layers)
            .flat_map(|l| {
                [
                    StateSpec::recurrent(self.shift_state(l, "att"), vec![1, h]),
                    StateSpec::recurrent(self.wkv_state(l), vec![STATE_ROWS, h]),
                    StateSpec::recurrent(self.shift_state(l, "ffn"), vec![1, h]),
                ]
            })
            .collect()
    }

    fn batch_refusal(&self) -> Option<String> {
        Some("RWKV-4's wkv kernel has no batched form".into())
    }

    fn build(&self, n: usize, _capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let mut g = Graph::new();
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        for l in 0..self.blocks.len() {
            x = self.block(&mut g, l, x)?;
        }
        // nn.LayerNorm(hidden_size) in HF: the default eps, not layer_norm_epsilon.
        let x = self.ln_out.apply(&mut g, x, 1e-5, 1)?;
        self.head.apply(&mut g, x, head)?;
        Ok(g)
    }
}

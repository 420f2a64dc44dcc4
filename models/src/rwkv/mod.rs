//! RWKV-6 and RWKV-7 (flash-linear-attention's `RWKV6ForCausalLM` / `RWKV7ForCausalLM`, and
//! RWKV-7 checkpoints in BlinkDL's own naming, see [`blink`]) as configurations of shared
//! blocks over graph ops:
//! * the block: (layer 0) `pre_norm` of the embeddings, LayerNorm, time mix, residual,
//!   LayerNorm, channel mix, residual; a final LayerNorm and the LM head;
//! * token shift: a kernel-2 depthwise conv1d with weights [1, -1] per channel gives
//!   `delta = x_prev - x` straight away, continuing from the previous call's last row (a
//!   recurrent session state);
//! * mixes `x + delta * mu` (mu a learnt vector, or RWKV-6's data-dependent one);
//! * LoRAs `up(act(down(x))) + bias`;
//! * the channel mix: `value(relu(key(mix))^2)`, gated by `sigmoid(receptance(mix))` in RWKV-6;
//! * the time-mix skeleton: the linear recurrence (kernels::linear_scan with per-key
//!   log-decays) followed by the per-head LayerNorm `ln_x`.
//!
//! What differs lives in [`v6`] (ddlerp mixes, `-exp` decays, the bonus u, silu gate) and
//! [`v7`] (decay `-0.6065 * sigmoid`, the delta rule with normalised kk, v-first value
//! residual, the r_k bonus term, sigmoid-LoRA gate).

pub mod blink;
pub mod v6;
pub mod v7;

use std::sync::Arc;

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::linear_scan::{Decay, ScanShape};
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};
use kestrel_runtime::TensorId;

use crate::config::JsonConfig;
use crate::error::{ModelError, Result};
pub(crate) use crate::lin;
use crate::weights::Uploader;

pub const ARCHITECTURES: &[&str] = &["RWKV6ForCausalLM", "RWKV7ForCausalLM"];

type GResult<T> = kestrel_runtime::Result<T>;

/// Whether the config is an fla RWKV-6 or RWKV-7 model.
pub fn is_rwkv(c: &JsonConfig) -> bool {
    version_of(c).is_some()
}

fn version_of(c: &JsonConfig) -> Option<u32> {
    match c.architecture().ok()?.as_str() {
        "RWKV6ForCausalLM" | "rwkv6" => Some(6),
        "RWKV7ForCausalLM" | "rwkv7" => Some(7),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RwkvConfig {
    /// 6 or 7.
    pub version: u32,
    pub hidden: usize,
    pub layers: usize,
    pub vocab: usize,
    pub heads: usize,
    /// Key (and receptance, decay) dim per head.
    pub head_k: usize,
    /// Value dim per head.
    pub head_v: usize,
    /// The channel mix's hidden width.
    pub intermediate: usize,
    /// LoRA ranks. RWKV-6: `mix` (token-shift LoRA, proj_low_rank_dim) and `decay`
    /// (gate_low_rank_dim); RWKV-7: `decay`, `a`, `v`, `gate`.
    pub mix_rank: usize,
    pub decay_rank: usize,
    pub a_rank: usize,
    pub v_rank: usize,
    pub gate_rank: usize,
    /// LayerNorm eps (attn/ffn/pre/final norms).
    pub norm_eps: f32,
    /// eps of the per-head `ln_x` GroupNorm: RWKV-6 norm_eps; fla RWKV-7 head_k * norm_eps;
    /// BlinkDL's RWKV-7 a fixed 64e-5.
    pub ln_x_eps: f32,
    /// RWKV-7: eps added to the squared norm when kk is L2-normalised (fla 1e-6; BlinkDL's
    /// F.normalize clamps the norm at 1e-12, i.e. about 1e-24 here).
    pub l2_eps: f32,
    /// Layer 0 normalises the embeddings first (fla's norm_first; BlinkDL's ln0).
    pub pre_norm: bool,
    pub norm_bias: bool,
    pub tie_embeddings: bool,
    pub bos: Vec<u32>,
    pub eos: Vec<u32>,
}

impl RwkvConfig {
    pub fn from_json(c: &JsonConfig) -> Result<RwkvConfig> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let version =
            version_of(c).ok_or_else(|| bad("model_type", "is not rwkv6/rwkv7".into()))?;
        let hidden = c.positive("hidden_size")?;
        let act = c
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("sqrelu");
        if act != "sqrelu" {
            return Err(bad(
                "hidden_act",
                format!("'{act}' is not supported (sqrelu is)"),
            ));
        }
        let ratio =
            |default: f64| -> Result<f64> { Ok(c.opt_f64("hidden_ratio")?.unwrap_or(default)) };
        let intermediate = |default_ratio: f64| -> Result<usize> {
            Ok(match c.opt_usize("intermediate_size")? {
                Some(n) => n,
                None => ((hidden as f64 * ratio(default_ratio)?) as usize).next_multiple_of(32),
            })
        };
        let norm_eps = c.opt_f64("norm_eps")?.unwrap_or(1e-5) as f32;
        let divide = |key: &str, dim: usize, heads: usize| -> Result<usize> {
            if heads == 0 || dim == 0 || !dim.is_multiple_of(heads) {
                return Err(bad(
                    key,
                    format!("{dim} channels do not split into {heads} heads"),
                ));
            }
            Ok(dim / heads)
        };
        let (heads, head_k, head_v, ranks, ffn, ln_x_eps) = if version == 6 {
            let heads = c.positive("num_heads")?;
            let dim = |key: &str, default: f64| -> Result<usize> {
                let e = c.opt_f64(key)?.unwrap_or(default);
                let d = hidden as f64 * e;
                if d.round() != d || d < 1.0 {
                    return Err(bad(
                        key,
                        format!("{e} * hidden_size {hidden} is not a whole number of channels"),
                    ));
                }
                Ok(d as usize)
            };
            let head_k = divide("expand_k", dim("expand_k", 0.5)?, heads)?;
            let head_v = divide("expand_v", dim("expand_v", 1.0)?, heads)?;
            let mix = c.opt_usize("proj_low_rank_dim")?.unwrap_or(32);
            let decay = c.opt_usize("gate_low_rank_dim")?.unwrap_or(64);
            (
                heads,
                head_k,
                head_v,
                [mix, decay, 0, 0, 0],
                intermediate(3.5)?,
                norm_eps,
            )
        } else {
            let (heads, head_k) = match (c.opt_usize("head_dim")?, c.opt_usize("num_heads")?) {
                (Some(d), _) => (divide("head_dim", hidden, d)?, d),
                (None, Some(h)) => (h, divide("num_heads", hidden, h)?),
                (None, None) => return Err(bad("head_dim", "or num_heads must be set".into())),
            };
            let value_dim = match c.get("value_dim") {
                Some(serde_json::Value::Array(dims)) => {
                    let dims: Vec<Option<u64>> = dims.iter().map(|v| v.as_u64()).collect();
                    match dims.first() {
                        Some(Some(d)) if dims.iter().all(|x| *x == Some(*d)) => *d as usize,
                        _ => {
                            return Err(bad(
                                "value_dim",
                                "must list one value dim for every layer".into(),
                            ))
                        }
                    }
                }
                Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0) as usize,
                _ => hidden,
            };
            let head_v = divide("value_dim", value_dim, heads)?;
            // fla's defaults (RWKV7Attention): multiples of 32 from sqrt(hidden).
            let factor = head_k as f64 / 64.0;
            let sq = (hidden as f64).sqrt();
            let default =
                |scale: f64, f: f64| 32.max(((scale * sq * f / 32.0).round() as usize) * 32);
            let rank = |key: &str, scale: f64, f: f64| -> Result<usize> {
                Ok(c.opt_usize(key)?.unwrap_or(default(scale, f)))
            };
            (
                heads,
                head_k,
                head_v,
                [
                    0,
                    rank("decay_low_rank_dim", 2.5, factor)?,
                    rank("a_low_rank_dim", 2.5, factor)?,
                    rank("v_low_rank_dim", 1.7, factor)?,
                    rank("gate_low_rank_dim", 5.0, 1.0)?,
                ],
                intermediate(4.0)?,
                head_k as f32 * norm_eps,
            )
        };
        let config = RwkvConfig {
            version,
            hidden,
            layers: c.positive("num_hidden_layers")?,
            vocab: c.positive("vocab_size")?,
            heads,
            head_k,
            head_v,
            intermediate: ffn,
            mix_rank: ranks[0],
            decay_rank: ranks[1],
            a_rank: ranks[2],
            v_rank: ranks[3],
            gate_rank: ranks[4],
            norm_eps,
            ln_x_eps,
            l2_eps: 1e-6,
            pre_norm: c.opt_bool("norm_first")?.unwrap_or(true),
            norm_bias: c.opt_bool("norm_bias")?.unwrap_or(true),
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos: c.opt_token_ids("bos_token_id"),
            eos: c.opt_token_ids("eos_token_id"),
        };
        config
            .scan_shape()
            .validate()
            .map_err(|e| bad("head_dim", e.to_string()))?;
        Ok(config)
    }

    pub fn architecture(&self) -> &'static str {
        ARCHITECTURES[if self.version == 6 { 0 } else { 1 }]
    }

    fn key_dim(&self) -> usize {
        self.heads * self.head_k
    }

    fn value_dim(&self) -> usize {
        self.heads * self.head_v
    }

    fn scan_shape(&self) -> ScanShape {
        ScanShape {
            heads: self.heads,
            qk_heads: self.heads,
            dk: self.head_k,
            dv: self.head_v,
            decay: Decay::Gate { per_key: true },
            delta: self.version == 7,
            bonus: self.version == 6,
        }
    }
}

/// Check a per-head tensor's exact shape (its element count alone would not show a config
/// whose head size disagrees with the file).
pub(crate) fn expect_shape(up: &Uploader<'_>, name: &str, shape: &[usize]) -> Result<()> {
    let t = up.source.tensor(name)?;
    if t.shape != shape {
        return Err(ModelError::TensorShape {
            file: t.file.clone(),
            name: name.to_string(),
            expected: shape.to_vec(),
            got: t.shape.clone(),
        });
    }
    Ok(())
}

/// A LayerNorm's weight and bias (zeros when the model has no biases).
#[derive(Clone)]
pub(crate) struct Norm {
    w: Arc<GpuWeight>,
    b: Arc<GpuWeight>,
}

impl Norm {
    /// A LayerNorm `name` with `.weight` and `.bias` of `n` values.
    pub(crate) fn layer_norm(up: &mut Uploader<'_>, name: &str, n: usize) -> Result<Norm> {
        Ok(Norm {
            w: up.vector(&format!("{name}.weight"), n)?,
            b: up.vector(&format!("{name}.bias"), n)?,
        })
    }

    fn load(up: &mut Uploader<'_>, c: &RwkvConfig, name: &str, n: usize) -> Result<Norm> {
        let w = up.vector(&format!("{name}.weight"), n)?;
        let b = if c.norm_bias {
            up.vector(&format!("{name}.bias"), n)?
        } else {
            up.vector_from(&format!("{name}.bias(zero)"), &vec![0.0; n])?
        };
        Ok(Norm { w, b })
    }

    pub(crate) fn apply(
        &self,
        g: &mut Graph,
        x: TensorId,
        eps: f32,
        groups: usize,
    ) -> GResult<TensorId> {
        let (w, b) = (g.weight(&self.w), g.weight(&self.b));
        g.group_norm(x, w, b, eps, groups)
    }
}

/// `x + delta * mu`: mu a learnt row vector or a tensor of x's shape (RWKV's lerp towards the
/// previous token, with delta = x_prev - x).
pub(crate) fn mix(g: &mut Graph, x: TensorId, delta: TensorId, mu: TensorId) -> GResult<TensorId> {
    let d = g.elementwise(Elementwise::Mul, delta, mu)?;
    g.add_tensors(x, d)
}

/// [`mix`] with a learnt vector.
pub(crate) fn mix_w(
    g: &mut Graph,
    x: TensorId,
    delta: TensorId,
    mu: &Arc<GpuWeight>,
) -> GResult<TensorId> {
    let mu = g.weight(mu);
    mix(g, x, delta, mu)
}

/// A low-rank projection `up(act(down(x))) + bias`.
#[derive(Clone)]
pub(crate) struct Lora {
    down: Arc<GpuWeight>,
    up: Arc<GpuWeight>,
    bias: Option<Arc<GpuWeight>>,
    act: Option<Elementwise>,
}

impl Lora {
    /// fla's `LoRA` module at `name` (`lora.0.weight` [rank, input], `lora.2.weight`
    /// [output, rank], `lora.2.bias`).
    fn load(
        up: &mut Uploader<'_>,
        name: &str,
        dims: (usize, usize, usize),
        bias: bool,
        act: Option<Elementwise>,
    ) -> Result<Lora> {
        let (input, rank, output) = dims;
        Ok(Lora {
            down: up.matrix(&format!("{name}.lora.0.weight"), rank, input)?,
            up: up.matrix(&format!("{name}.lora.2.weight"), output, rank)?,
            bias: match bias {
                true => Some(up.vector(&format!("{name}.lora.2.bias"), output)?),
                false => None,
            },
            act,
        })
    }

    fn apply(&self, g: &mut Graph, x: TensorId) -> GResult<TensorId> {
        let mut h = lin(g, x, &self.down, None)?;
        if let Some(op) = self.act {
            h = g.unary(op, h)?;
        }
        lin(g, h, &self.up, self.bias.as_ref())
    }
}

/// The channel mix (FFN): `value(relu(key(x + delta * x_k))^2)`, times
/// `sigmoid(receptance(x + delta * x_r))` in RWKV-6.
#[derive(Clone)]
pub(crate) struct ChannelMix {
    pub x_k: Arc<GpuWeight>,
    pub key: Arc<GpuWeight>,
    pub value: Arc<GpuWeight>,
    /// (x_r, receptance): RWKV-4 and RWKV-6 gate the output, RWKV-7 does not.
    pub receptance: Option<(Arc<GpuWeight>, Arc<GpuWeight>)>,
}

impl ChannelMix {
    fn load(up: &mut Uploader<'_>, c: &RwkvConfig, p: &str) -> Result<ChannelMix> {
        let (h, f) = (c.hidden, c.intermediate);
        let value = up.matrix(&format!("{p}.value.weight"), h, f)?;
        if c.version == 6 {
            Ok(ChannelMix {
                x_k: up.vector(&format!("{p}.key.mu"), h)?,
                key: up.matrix(&format!("{p}.key.linear.weight"), f, h)?,
                value,
                receptance: Some((
                    up.vector(&format!("{p}.receptance.mu"), h)?,
                    up.matrix(&format!("{p}.receptance.linear.weight"), h, h)?,
                )),
            })
        } else {
            Ok(ChannelMix {
                x_k: up.vector(&format!("{p}.x_k"), h)?,
                key: up.matrix(&format!("{p}.key.weight"), f, h)?,
                value,
                receptance: None,
            })
        }
    }

    pub(crate) fn apply(&self, g: &mut Graph, x: TensorId, delta: TensorId) -> GResult<TensorId> {
        let xk = mix_w(g, x, delta, &self.x_k)?;
        let k = lin(g, xk, &self.key, None)?;
        let k = g.unary(Elementwise::ReluSquare, k)?;
        let v = lin(g, k, &self.value, None)?;
        match &self.receptance {
            Some((mu, w)) => {
                let xr = mix_w(g, x, delta, mu)?;
                let r = lin(g, xr, w, None)?;
                g.elementwise(Elementwise::SigmoidMul, r, v)
            }
            None => Ok(v),
        }
    }
}

/// A version's time mix.
#[derive(Clone)]
enum TimeMix {
    V6(v6::TimeMix),
    V7(v7::TimeMix),
}

#[derive(Clone)]
struct Layer {
    pre_norm: Option<Norm>,
    attn_norm: Norm,
    ffn_norm: Norm,
    time: TimeMix,
    ffn: ChannelMix,
}

#[derive(Clone)]
pub struct Rwkv {
    pub config: RwkvConfig,
    embed: Arc<GpuWeight>,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Arc<GpuWeight>,
    /// The token-shift conv weights: [1, -1] per channel (delta = x_prev - x).
    shift: Arc<GpuWeight>,
    pub weight_bytes: u64,
    pub file_bytes: u64,
}

/// What a version's time mix reads from the graph being built.
pub(crate) struct MixInput {
    /// The normalised input [T, hidden] and its token shift.
    pub x: TensorId,
    pub delta: TensorId,
    /// The recurrence's state and shape.
    pub state: TensorId,
    pub shape: ScanShape,
}

impl Rwkv {
    /// Load from fla tensor names (BlinkDL checkpoints are renamed by [`blink`]).
    pub fn load(config: RwkvConfig, up: &mut Uploader<'_>) -> Result<Rwkv> {
        let c = &config;
        let h = c.hidden;
        let embed = up.matrix("model.embeddings.weight", c.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = format!("model.layers.{l}");
            let pre_norm = match c.pre_norm && l == 0 {
                true => Some(Norm::load(up, c, &format!("{p}.pre_norm"), h)?),
                false => None,
            };
            let time = match c.version {
                6 => TimeMix::V6(v6::TimeMix::load(up, c, l, &format!("{p}.attn"))?),
                _ => TimeMix::V7(v7::TimeMix::load(up, c, l, &format!("{p}.attn"))?),
            };
            layers.push(Layer {
                pre_norm,
                attn_norm: Norm::load(up, c, &format!("{p}.attn_norm"), h)?,
                ffn_norm: Norm::load(up, c, &format!("{p}.ffn_norm"), h)?,
                time,
                ffn: ChannelMix::load(up, c, &format!("{p}.ffn"))?,
            });
        }
        let norm = Norm::load(up, c, "model.norm", h)?;
        let lm_head = if up.source.contains("lm_head.weight") || !c.tie_embeddings {
            up.matrix("lm_head.weight", c.vocab, h)?
        } else {
            embed.clone()
        };
        let shift = shift_weights(up, h)?;
        Ok(Rwkv {
            weight_bytes: up.gpu_bytes,
            file_bytes: up.file_bytes,
            config,
            embed,
            layers,
            norm,
            lm_head,
            shift,
        })
    }

    fn shift_state(&self, l: usize, which: &str) -> String {
        format!("layer.{l}.{which}_shift")
    }

    fn wkv_state(&self, l: usize) -> String {
        format!("layer.{l}.wkv")
    }

    fn token_shift(&self, g: &mut Graph, x: TensorId, state: &str) -> GResult<TensorId> {
        token_shift(g, &self.shift, x, state, self.config.hidden)
    }
}

/// The token shift's conv weights, [1, -1] per channel: `delta = x_prev - x`.
pub(crate) fn shift_weights(up: &mut Uploader<'_>, hidden: usize) -> Result<Arc<GpuWeight>> {
    let shift: Vec<f32> = (0..hidden).flat_map(|_| [1.0, -1.0]).collect();
    up.vector_from("rwkv.token_shift", &shift)
}

/// `x_prev - x` per row of `x` [T, hidden], continuing from the last row of the previous
/// call (the recurrent state `state`).
pub(crate) fn token_shift(
    g: &mut Graph,
    shift: &Arc<GpuWeight>,
    x: TensorId,
    state: &str,
    hidden: usize,
) -> GResult<TensorId> {
    let w = g.weight(shift);
    let s = g.state(state, &[1, hidden]);
    g.conv1d(x, w, None, s, 2, false)
}

/// The recurrence over r, k, v with log-decays `decay` (+ RWKV-6's u or RWKV-7's ab), then
/// the per-head LayerNorm `ln_x`: the part of the time mix both versions share.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recurrence(
    g: &mut Graph,
    c: &RwkvConfig,
    input: &MixInput,
    (r, k, v): (TensorId, TensorId, TensorId),
    decay: TensorId,
    bonus: Option<TensorId>,
    ab: Option<TensorId>,
    ln_x: &Norm,
) -> GResult<TensorId> {
    let o = g.linear_scan(r, k, v, Some(decay), bonus, ab, input.state, input.shape)?;
    ln_x.apply(g, o, c.ln_x_eps, c.heads)
}

impl Architecture for Rwkv {
    fn vocab_size(&self) -> usize {
        self.config.vocab
    }

    /// No position limit: the state is the same size at any length.
    fn max_context(&self) -> usize {
        u32::MAX as usize
    }

    fn states(&self, _capacity: usize) -> Vec<StateSpec> {
        let c = &self.config;
        let shape = c.scan_shape();
        (0..c.layers)
            .flat_map(|l| {
                [
                    StateSpec::recurrent(self.shift_state(l, "attn"), vec![1, c.hidden]),
                    StateSpec::recurrent(self.shift_state(l, "ffn"), vec![1, c.hidden]),
                    StateSpec::recurrent(self.wkv_state(l), vec![shape.heads * shape.dv, shape.dk]),
                ]
            })
            .collect()
    }

    fn build(&self, n: usize, _capacity: usize, head: Head) -> GResult<Graph> {
        let c = &self.config;
        let mut g = Graph::new();
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        let shape = c.scan_shape();
        // RWKV-7's value residual: layer 0's values.
        let mut v_first = None;
        for (l, layer) in self.layers.iter().enumerate() {
            if let Some(norm) = &layer.pre_norm {
                x = norm.apply(&mut g, x, c.norm_eps, 1)?;
            }
            let h = layer.attn_norm.apply(&mut g, x, c.norm_eps, 1)?;
            let delta = self.token_shift(&mut g, h, &self.shift_state(l, "attn"))?;
            let state = g.state(&self.wkv_state(l), &[shape.heads * shape.dv, shape.dk]);
            let input = MixInput {
                x: h,
                delta,
                state,
                shape,
            };
            let out = match &layer.time {
                TimeMix::V6(t) => t.apply(&mut g, c, &input)?,
                TimeMix::V7(t) => t.apply(&mut g, c, &input, &mut v_first)?,
            };
            x = g.add_tensors(x, out)?;
            let h = layer.ffn_norm.apply(&mut g, x, c.norm_eps, 1)?;
            let delta = self.token_shift(&mut g, h, &self.shift_state(l, "ffn"))?;
            let out = layer.ffn.apply(&mut g, h, delta)?;
            x = g.add_tensors(x, out)?;
        }
        let x = self.norm.apply(&mut g, x, c.norm_eps, 1)?;
        let lm_head = g.weight(&self.lm_head);
        crate::lm_head(&mut g, x, lm_head, head)?;
        Ok(g)
    }
}

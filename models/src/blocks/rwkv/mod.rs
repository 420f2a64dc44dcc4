//! RWKV's blocks, over graph ops:
//! * token shift: a kernel-2 depthwise conv1d with weights [1, -1] per channel gives
//!   `delta = x_prev - x` straight away, continuing from the previous call's last row (a
//!   recurrent session state);
//! * mixes `x + delta * mu` (mu a learnt vector, or RWKV-6's data-dependent one);
//! * LoRAs `up(act(down(x))) + bias`;
//! * the channel mix: `value(relu(key(mix))^2)`, gated by `sigmoid(receptance(mix))` in
//!   RWKV-4 and RWKV-6;
//! * the time-mix skeleton: the linear recurrence (kernels::linear_scan with per-key
//!   log-decays) followed by the per-head LayerNorm `ln_x`; the time mixes of RWKV-6
//!   ([`time_mix6`]) and RWKV-7 ([`time_mix7`]) around it.
//!
//! RWKV-4, RWKV-6 and RWKV-7 (fla's and BlinkDL's) use them.

pub mod time_mix6;
pub mod time_mix7;

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::linear_scan::{Decay, ScanShape};
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::mlp::{lin, lin_into};
use super::norm::LayerNorm;
use super::GResult;
use crate::error::Result;
use crate::vars::Vars;

/// The shape of an RWKV-6 or RWKV-7 layer (time mix and channel mix).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerConfig {
    /// 6 or 7.
    pub version: u32,
    pub hidden: usize,
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
    /// eps of the per-head `ln_x` GroupNorm: RWKV-6 norm_eps; fla RWKV-7 head_k * norm_eps;
    /// BlinkDL's RWKV-7 a fixed 64e-5.
    pub ln_x_eps: f32,
    /// RWKV-7: eps added to the squared norm when kk is L2-normalised (fla 1e-6; BlinkDL's
    /// F.normalize clamps the norm at 1e-12, i.e. about 1e-24 here).
    pub l2_eps: f32,
    /// LayerNorms have biases (else zero biases).
    pub norm_bias: bool,
}

impl LayerConfig {
    pub fn key_dim(&self) -> usize {
        self.heads * self.head_k
    }

    pub fn value_dim(&self) -> usize {
        self.heads * self.head_v
    }

    pub fn scan_shape(&self) -> ScanShape {
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

/// `x + delta * mu`: mu a learnt row vector or a tensor of x's shape (RWKV's lerp towards the
/// previous token, with delta = x_prev - x).
pub fn mix(g: &mut Graph, x: TensorId, delta: TensorId, mu: TensorId) -> GResult<TensorId> {
    let d = g.elementwise(Elementwise::Mul, delta, mu)?;
    g.add_tensors(x, d)
}

/// [`mix`] with a learnt vector.
pub fn mix_w(
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
pub struct Lora {
    down: Arc<GpuWeight>,
    up: Arc<GpuWeight>,
    bias: Option<Arc<GpuWeight>>,
    act: Option<Elementwise>,
}

impl Lora {
    /// fla's `LoRA` module in scope `vb` (`lora.0.weight` [rank, input], `lora.2.weight`
    /// [output, rank], `lora.2.bias`).
    pub fn load(
        vb: &Vars<'_>,
        (input, rank, output): (usize, usize, usize),
        bias: bool,
        act: Option<Elementwise>,
    ) -> Result<Lora> {
        Ok(Lora {
            down: vb.matrix("lora.0.weight", rank, input)?,
            up: vb.matrix("lora.2.weight", output, rank)?,
            bias: match bias {
                true => Some(vb.vector("lora.2.bias", output)?),
                false => None,
            },
            act,
        })
    }

    pub fn apply(&self, g: &mut Graph, x: TensorId) -> GResult<TensorId> {
        let mut h = lin(g, x, &self.down, None)?;
        if let Some(op) = self.act {
            h = g.unary(op, h)?;
        }
        lin(g, h, &self.up, self.bias.as_ref())
    }
}

/// The channel mix (FFN): `value(relu(key(x + delta * x_k))^2)`, times
/// `sigmoid(receptance(x + delta * x_r))` in RWKV-4 and RWKV-6.
#[derive(Clone)]
pub struct ChannelMix {
    pub x_k: Arc<GpuWeight>,
    pub key: Arc<GpuWeight>,
    pub value: Arc<GpuWeight>,
    /// (x_r, receptance): RWKV-4 and RWKV-6 gate the output, RWKV-7 does not.
    pub receptance: Option<(Arc<GpuWeight>, Arc<GpuWeight>)>,
}

impl ChannelMix {
    /// fla's RWKV-6 or RWKV-7 channel mix in scope `vb`.
    pub fn load(vb: &Vars<'_>, c: &LayerConfig) -> Result<ChannelMix> {
        let (h, f) = (c.hidden, c.intermediate);
        let value = vb.matrix("value.weight", h, f)?;
        if c.version == 6 {
            Ok(ChannelMix {
                x_k: vb.vector("key.mu", h)?,
                key: vb.matrix("key.linear.weight", f, h)?,
                value,
                receptance: Some((
                    vb.vector("receptance.mu", h)?,
                    vb.matrix("receptance.linear.weight", h, h)?,
                )),
            })
        } else {
            Ok(ChannelMix {
                x_k: vb.vector("x_k", h)?,
                key: vb.matrix("key.weight", f, h)?,
                value,
                receptance: None,
            })
        }
    }

    pub fn apply(&self, g: &mut Graph, x: TensorId, delta: TensorId) -> GResult<TensorId> {
        let k = self.key(g, x, delta)?;
        let v = lin(g, k, &self.value, None)?;
        match &self.receptance {
            Some((mu, w)) => self.gated(g, x, delta, (mu, w), v),
            None => Ok(v),
        }
    }

    /// `residual + apply(x, delta)`, in place into `residual` (the value projection's
    /// epilogue adds it when there is no receptance gate); returns `residual`.
    pub fn apply_into(
        &self,
        g: &mut Graph,
        x: TensorId,
        delta: TensorId,
        residual: TensorId,
    ) -> GResult<TensorId> {
        let k = self.key(g, x, delta)?;
        match &self.receptance {
            Some((mu, w)) => {
                let v = lin(g, k, &self.value, None)?;
                let out = self.gated(g, x, delta, (mu, w), v)?;
                g.add_tensors(residual, out)
            }
            None => lin_into(g, k, &self.value, residual),
        }
    }

    /// relu(key(mix_k(x)))².
    fn key(&self, g: &mut Graph, x: TensorId, delta: TensorId) -> GResult<TensorId> {
        let xk = mix_w(g, x, delta, &self.x_k)?;
        let k = lin(g, xk, &self.key, None)?;
        g.unary(Elementwise::ReluSquare, k)
    }

    /// sigmoid(receptance(mix_r(x))) * v.
    fn gated(
        &self,
        g: &mut Graph,
        x: TensorId,
        delta: TensorId,
        (mu, w): (&Arc<GpuWeight>, &Arc<GpuWeight>),
        v: TensorId,
    ) -> GResult<TensorId> {
        let xr = mix_w(g, x, delta, mu)?;
        let r = lin(g, xr, w, None)?;
        g.elementwise(Elementwise::SigmoidMul, r, v)
    }
}

/// `rescale_every` (r > 0) of Hugging Face's RWKV-4/6 and llama.cpp's `rwkv6`: the hidden
/// states are halved after every r-th layer (layer l's output projections being divided by
/// 2^(l / r), in the file or by the family).
pub struct Halving {
    every: usize,
    /// 0.5 per channel.
    half: Arc<GpuWeight>,
}

impl Halving {
    /// `None` when `every` is 0 (no rescaling).
    pub fn load(vb: &Vars<'_>, hidden: usize, every: usize) -> Result<Option<Halving>> {
        Ok(match every {
            0 => None,
            every => Some(Halving {
                every,
                half: vb.computed_vector("rescale 0.5", &vec![0.5; hidden])?,
            }),
        })
    }

    /// The hidden states `x` after layer `l`.
    pub fn apply(&self, g: &mut Graph, x: TensorId, l: usize) -> GResult<TensorId> {
        if !(l + 1).is_multiple_of(self.every) {
            return Ok(x);
        }
        let half = g.weight(&self.half);
        g.elementwise(Elementwise::Mul, x, half)
    }
}

/// The token shift's conv weights, [1, -1] per channel (`delta = x_prev - x`), labelled in
/// scope `vb`.
pub fn shift_weights(vb: &Vars<'_>, hidden: usize) -> Result<Arc<GpuWeight>> {
    let shift: Vec<f32> = (0..hidden).flat_map(|_| [1.0, -1.0]).collect();
    vb.computed_vector("token_shift", &shift)
}

/// `x_prev - x` per row of `x` [T, hidden], continuing from the last row of the previous
/// call (the recurrent state `state`).
pub fn token_shift(
    g: &mut Graph,
    shift: &Arc<GpuWeight>,
    x: TensorId,
    state: &str,
    hidden: usize,
) -> GResult<TensorId> {
    let w = g.weight(shift);
    let s = g.recurrent_state(state, &[1, hidden]);
    g.conv1d(x, w, None, s, 2, false)
}

/// What a time mix reads from the graph being built.
pub struct MixInput {
    /// The normalised input [T, hidden] and its token shift.
    pub x: TensorId,
    pub delta: TensorId,
    /// The residual stream the mix's output projection adds into, in place.
    pub residual: TensorId,
    /// The recurrence's state and shape.
    pub state: TensorId,
    pub shape: ScanShape,
}

/// The recurrence over r, k, v with log-decays `decay` (+ RWKV-6's u or RWKV-7's ab), then
/// the per-head LayerNorm `ln_x`: the part of the time mix both versions share.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recurrence(
    g: &mut Graph,
    c: &LayerConfig,
    input: &MixInput,
    (r, k, v): (TensorId, TensorId, TensorId),
    decay: TensorId,
    bonus: Option<TensorId>,
    ab: Option<TensorId>,
    ln_x: &LayerNorm,
) -> GResult<TensorId> {
    let o = g.linear_scan(r, k, v, Some(decay), bonus, ab, input.state, input.shape)?;
    ln_x.apply(g, o, c.ln_x_eps, c.heads)
}

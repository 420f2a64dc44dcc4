//! RWKV-7's time mix (fla's `RWKV7Attention`), per token and head:
//! `w = -0.6065 * sigmoid(w_lora(xw))` (log-decay), `a = sigmoid(a_lora(xa))`,
//! `g = g_lora(xg)` (sigmoid inside), `kk = normalize(k * k_k)`, `k = k * (1 + (a - 1) k_a)`,
//! layers >= 1: `v = lerp(v, v_first, sigmoid(v_lora(xv)))`; the delta-rule recurrence with
//! `a = -kk`, `b = kk * a`; then ln_x, `+ ((r * r_k) . k) v`, `* g`, output projection.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::{Error, TensorId};

use super::{recurrence, LayerConfig, Lora, MixInput};
use crate::blocks::mlp::{lin, lin_into};
use crate::blocks::norm::LayerNorm;
use crate::blocks::GResult;
use crate::error::Result;
use crate::vars::Vars;

/// fla's and BlinkDL's bound on the log-decay: -exp(-0.5).
const DECAY_SCALE: f32 = -0.606_530_66;

#[derive(Clone)]
pub struct TimeMix {
    /// Token-shift mixes of r, w, k, v, a, g: [6, hidden] (one `Graph::token_mix`).
    x: Arc<GpuWeight>,
    r: Arc<GpuWeight>,
    k: Arc<GpuWeight>,
    v: Arc<GpuWeight>,
    o: Arc<GpuWeight>,
    w_lora: Lora,
    a_lora: Lora,
    /// Layers >= 1.
    v_lora: Option<Lora>,
    g_lora: Lora,
    k_k: Arc<GpuWeight>,
    k_a: Arc<GpuWeight>,
    /// 1 - k_a.
    one_minus_k_a: Arc<GpuWeight>,
    r_k: Arc<GpuWeight>,
    ln_x: LayerNorm,
    /// DECAY_SCALE per key channel.
    decay_scale: Arc<GpuWeight>,
}

impl TimeMix {
    /// fla's `RWKV7Attention` of layer `l` in scope `vb` (e.g. `model.layers.3.attn`).
    pub fn load(vb: &Vars<'_>, c: &LayerConfig, l: usize) -> Result<TimeMix> {
        let (h, dk, dv) = (c.hidden, c.key_dim(), c.value_dim());
        let mut mixes = Vec::with_capacity(6 * h);
        for name in ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"] {
            mixes.extend(vb.host(name, &[h])?);
        }
        let x = vb.computed_matrix("x_rwkvag", 6, h, &mixes)?;
        vb.expect_shape("r_k", &[c.heads, c.head_k])?;
        let k_a_host = vb.host("k_a", &[dk])?;
        let one_minus: Vec<f32> = k_a_host.iter().map(|v| 1.0 - v).collect();
        Ok(TimeMix {
            x,
            r: vb.matrix("r_proj.weight", dk, h)?,
            k: vb.matrix("k_proj.weight", dk, h)?,
            v: vb.matrix("v_proj.weight", dv, h)?,
            o: vb.matrix("o_proj.weight", h, dv)?,
            w_lora: Lora::load(
                &vb.pp("w_lora"),
                (h, c.decay_rank, dk),
                true,
                Some(Elementwise::Tanh),
            )?,
            a_lora: Lora::load(&vb.pp("a_lora"), (h, c.a_rank, dk), true, None)?,
            v_lora: match l {
                0 => None,
                _ => Some(Lora::load(&vb.pp("v_lora"), (h, c.v_rank, dv), true, None)?),
            },
            g_lora: Lora::load(
                &vb.pp("g_lora"),
                (h, c.gate_rank, dv),
                false,
                Some(Elementwise::Sigmoid),
            )?,
            k_k: vb.vector("k_k", dk)?,
            k_a: vb.computed_vector("k_a", &k_a_host)?,
            one_minus_k_a: vb.computed_vector("k_a(1-)", &one_minus)?,
            r_k: vb.vector("r_k", dk)?,
            ln_x: LayerNorm::load(&vb.pp("g_norm"), dv, c.norm_bias)?,
            decay_scale: vb.computed_vector("decay_scale", &vec![DECAY_SCALE; dk])?,
        })
    }

    pub fn apply(
        &self,
        g: &mut Graph,
        c: &LayerConfig,
        input: &MixInput,
        v_first: &mut Option<TensorId>,
    ) -> GResult<TensorId> {
        let mu = g.weight(&self.x);
        let mixes = g.token_mix(input.x, input.delta, mu)?;
        let &[xr, xw, xk, xv, xa, xg] = mixes.as_slice() else {
            return Err(Error::Graph(format!(
                "{} token mixes, 6 expected",
                mixes.len()
            )));
        };
        let r = lin(g, xr, &self.r, None)?;
        let w = self.w_lora.apply(g, xw)?;
        let w = g.unary(Elementwise::Sigmoid, w)?;
        let scale = g.weight(&self.decay_scale);
        let decay = g.elementwise(Elementwise::Mul, w, scale)?;
        let k = lin(g, xk, &self.k, None)?;
        let mut v = lin(g, xv, &self.v, None)?;
        match (&self.v_lora, *v_first) {
            (Some(lora), Some(first)) => {
                let s = lora.apply(g, xv)?;
                let s = g.unary(Elementwise::Sigmoid, s)?;
                let d = g.elementwise(Elementwise::Sub, first, v)?;
                let d = g.elementwise(Elementwise::Mul, d, s)?;
                v = g.add_tensors(v, d)?;
            }
            _ => *v_first = Some(v),
        }
        let a = self.a_lora.apply(g, xa)?;
        let a = g.unary(Elementwise::Sigmoid, a)?;
        let gate = self.g_lora.apply(g, xg)?;
        // kk = normalize(k * k_k) per head; the delta rule's a = -kk, b = kk * a.
        let k_k = g.weight(&self.k_k);
        let ab = g.delta_ab(k, k_k, a, c.heads, c.l2_eps)?;
        // k = k * (1 + (a - 1) * k_a) = k * (a * k_a + (1 - k_a)).
        let k_a = g.weight(&self.k_a);
        let t = g.elementwise(Elementwise::Mul, a, k_a)?;
        let one_minus = g.weight(&self.one_minus_k_a);
        let t = g.elementwise(Elementwise::Add, t, one_minus)?;
        let k = g.elementwise(Elementwise::Mul, k, t)?;
        let o = recurrence(g, c, input, (r, k, v), decay, None, Some(ab), &self.ln_x)?;
        let r_k = g.weight(&self.r_k);
        let rr = g.elementwise(Elementwise::Mul, r, r_k)?;
        let bonus = g.head_dot(rr, k, v, c.heads)?;
        let o = g.add_tensors(o, bonus)?;
        let o = g.elementwise(Elementwise::Mul, o, gate)?;
        lin_into(g, o, &self.o, input.residual)
    }
}

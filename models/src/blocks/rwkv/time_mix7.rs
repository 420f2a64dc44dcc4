//! RWKV-7's time mix (fla's `RWKV7Attention`), per token and head:
//! `w = -0.6065 * sigmoid(w_lora(xw))` (log-decay), `a = sigmoid(a_lora(xa))`,
//! `g = g_lora(xg)` (sigmoid inside), `kk = normalize(k * k_k)`, `k = k * (1 + (a - 1) k_a)`,
//! layers >= 1: `v = lerp(v, v_first, sigmoid(v_lora(xv)))`; the delta-rule recurrence with
//! `a = -kk`, `b = kk * a`; then ln_x, `+ ((r * r_k) . k) v`, `* g`, output projection.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::{mix_w, recurrence, LayerConfig, Lora, MixInput};
use crate::blocks::mlp::{lin, lin_into};
use crate::blocks::norm::LayerNorm;
use crate::blocks::GResult;
use crate::error::Result;
use crate::vars::Vars;

/// fla's and BlinkDL's bound on the log-decay: -exp(-0.5).
const DECAY_SCALE: f32 = -0.606_530_66;

#[derive(Clone)]
pub struct TimeMix {
    /// Token-shift mixes of r, w, k, v, a, g.
    x: [Arc<GpuWeight>; 6],
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
    /// Constants: DECAY_SCALE per key channel; +-1/sqrt(head_k) (L2 norm as grouped RMSNorm).
    decay_scale: Arc<GpuWeight>,
    l2: [Arc<GpuWeight>; 2],
}

impl TimeMix {
    /// fla's `RWKV7Attention` of layer `l` in scope `vb` (e.g. `model.layers.3.attn`).
    pub fn load(vb: &Vars<'_>, c: &LayerConfig, l: usize) -> Result<TimeMix> {
        let (h, dk, dv) = (c.hidden, c.key_dim(), c.value_dim());
        let x = [
            vb.vector("x_r", h)?,
            vb.vector("x_w", h)?,
            vb.vector("x_k", h)?,
            vb.vector("x_v", h)?,
            vb.vector("x_a", h)?,
            vb.vector("x_g", h)?,
        ];
        vb.expect_shape("r_k", &[c.heads, c.head_k])?;
        let k_a_host = vb.host("k_a", &[dk])?;
        let one_minus: Vec<f32> = k_a_host.iter().map(|v| 1.0 - v).collect();
        let inv = 1.0 / (c.head_k as f32).sqrt();
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
            l2: [
                vb.computed_vector("l2(+)", &vec![inv; dk])?,
                vb.computed_vector("l2(-)", &vec![-inv; dk])?,
            ],
        })
    }

    pub fn apply(
        &self,
        g: &mut Graph,
        c: &LayerConfig,
        input: &MixInput,
        v_first: &mut Option<TensorId>,
    ) -> GResult<TensorId> {
        let (x, delta) = (input.x, input.delta);
        let mut mixed = |i: usize| mix_w(g, x, delta, &self.x[i]);
        let (xr, xw, xk) = (mixed(0)?, mixed(1)?, mixed(2)?);
        let (xv, xa, xg) = (mixed(3)?, mixed(4)?, mixed(5)?);
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
        let kk = g.elementwise(Elementwise::Mul, k, k_k)?;
        let l2_eps = c.l2_eps / c.head_k as f32;
        let (pos, neg) = (g.weight(&self.l2[0]), g.weight(&self.l2[1]));
        let kk_pos = g.rms_norm_grouped(kk, pos, l2_eps, c.heads)?;
        let kk_neg = g.rms_norm_grouped(kk, neg, l2_eps, c.heads)?;
        let b = g.elementwise(Elementwise::Mul, kk_pos, a)?;
        let ab = g.head_concat(kk_neg, b, c.heads)?;
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

//! RWKV-6's time mix (fla's `RWKV6Attention`): data-dependent token shift (ddlerp) — a shared
//! mix `x + delta * mu` through a tanh LoRA per target (r, w, k, v, g) plus `x_bias` gives each
//! target its own mix vector per token; `w = -exp(w_lora(xw))` (log-decay); the recurrence with
//! the bonus u; then ln_x, `* silu(g)`, output projection.
//!
//! fla stores the five LoRAs fused: `x_proj.0.linear.weight` [5 * rank, hidden] (the downs,
//! one block of rows each) and `x_proj.2.weight` [hidden, 5 * rank] (the ups, one block of
//! columns each); they are split at load time.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::{mix, mix_w, recurrence, LayerConfig, Lora, MixInput};
use crate::blocks::mlp::{lin, lin_into};
use crate::blocks::norm::LayerNorm;
use crate::blocks::GResult;
use crate::error::Result;
use crate::vars::Vars;

#[derive(Clone)]
pub struct TimeMix {
    /// The shared first mix's vector.
    mu: Arc<GpuWeight>,
    /// The data-dependent mixes of r, w, k, v, g (tanh LoRAs with x_bias rows as bias).
    ddlerp: Vec<Lora>,
    r: Arc<GpuWeight>,
    w_lora: Lora,
    k: Arc<GpuWeight>,
    v: Arc<GpuWeight>,
    g: Arc<GpuWeight>,
    bonus: Arc<GpuWeight>,
    ln_x: LayerNorm,
    o: Arc<GpuWeight>,
}

impl TimeMix {
    /// fla's `RWKV6Attention` in scope `vb` (e.g. `model.layers.3.attn`).
    pub fn load(vb: &Vars<'_>, c: &LayerConfig) -> Result<TimeMix> {
        let (h, dk, dv, rank) = (c.hidden, c.key_dim(), c.value_dim(), c.mix_rank);
        vb.expect_shape("bonus", &[c.heads, c.head_k])?;
        let downs = "x_proj.0.linear.weight";
        let ups = vb.host("x_proj.2.weight", &[h, 5 * rank])?;
        let bias = vb.host("x_bias", &[5, h])?;
        let mut ddlerp = Vec::with_capacity(5);
        for n in 0..5 {
            let cols: Vec<f32> = ups
                .chunks(5 * rank)
                .flat_map(|row| &row[n * rank..(n + 1) * rank])
                .copied()
                .collect();
            let part = vb.pp("ddlerp").pp(n);
            ddlerp.push(Lora {
                down: vb.matrix_rows(downs, [5 * rank, h], n * rank, rank)?,
                up: part.computed_matrix("up", h, rank, &cols)?,
                bias: Some(part.computed_vector("bias", &bias[n * h..(n + 1) * h])?),
                act: Some(Elementwise::Tanh),
            });
        }
        Ok(TimeMix {
            mu: vb.vector("x_proj.0.mu", h)?,
            ddlerp,
            r: vb.matrix("r_proj.linear.weight", dk, h)?,
            w_lora: Lora::load(
                &vb.pp("w_proj.linear"),
                (h, c.decay_rank, dk),
                true,
                Some(Elementwise::Tanh),
            )?,
            k: vb.matrix("k_proj.linear.weight", dk, h)?,
            v: vb.matrix("v_proj.linear.weight", dv, h)?,
            g: vb.matrix("g_proj.linear.weight", dv, h)?,
            bonus: vb.vector("bonus", dk)?,
            ln_x: LayerNorm::load(&vb.pp("g_norm"), dv, c.norm_bias)?,
            o: vb.matrix("o_proj.weight", h, dv)?,
        })
    }

    pub fn apply(&self, g: &mut Graph, c: &LayerConfig, input: &MixInput) -> GResult<TensorId> {
        let (x, delta) = (input.x, input.delta);
        let shared = mix_w(g, x, delta, &self.mu)?;
        let mut mixed = |i: usize| -> GResult<TensorId> {
            let mu = self.ddlerp[i].apply(g, shared)?;
            mix(g, x, delta, mu)
        };
        let (xr, xw, xk, xv, xg) = (mixed(0)?, mixed(1)?, mixed(2)?, mixed(3)?, mixed(4)?);
        let r = lin(g, xr, &self.r, None)?;
        let w = self.w_lora.apply(g, xw)?;
        let decay = g.unary(Elementwise::NegExp, w)?;
        let k = lin(g, xk, &self.k, None)?;
        let v = lin(g, xv, &self.v, None)?;
        let gate = lin(g, xg, &self.g, None)?;
        let u = g.weight(&self.bonus);
        let o = recurrence(g, c, input, (r, k, v), decay, Some(u), None, &self.ln_x)?;
        let o = g.swiglu(gate, o)?;
        lin_into(g, o, &self.o, input.residual)
    }
}

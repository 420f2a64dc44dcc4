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

use super::{expect_shape, lin, mix, mix_w, recurrence, GResult, Lora, MixInput, Norm, RwkvConfig};
use crate::error::Result;
use crate::weights::Uploader;

#[derive(Clone)]
pub(crate) struct TimeMix {
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
    ln_x: Norm,
    o: Arc<GpuWeight>,
}

impl TimeMix {
    pub(crate) fn load(
        up: &mut Uploader<'_>,
        c: &RwkvConfig,
        _l: usize,
        p: &str,
    ) -> Result<TimeMix> {
        let (h, dk, dv, rank) = (c.hidden, c.key_dim(), c.value_dim(), c.mix_rank);
        expect_shape(up, &format!("{p}.bonus"), &[c.heads, c.head_k])?;
        let downs = format!("{p}.x_proj.0.linear.weight");
        let ups_name = format!("{p}.x_proj.2.weight");
        let ups = up.host(&ups_name, &[h, 5 * rank])?;
        let bias_name = format!("{p}.x_bias");
        let bias = up.host(&bias_name, &[5, h])?;
        let mut ddlerp = Vec::with_capacity(5);
        for n in 0..5 {
            let cols: Vec<f32> = ups
                .chunks(5 * rank)
                .flat_map(|row| &row[n * rank..(n + 1) * rank])
                .copied()
                .collect();
            ddlerp.push(Lora {
                down: up.matrix_rows(&downs, 5 * rank, h, n * rank, rank)?,
                up: up.matrix_from(&format!("{ups_name}[:, {n}]"), h, rank, &cols)?,
                bias: Some(
                    up.vector_from(&format!("{bias_name}[{n}]"), &bias[n * h..(n + 1) * h])?,
                ),
                act: Some(Elementwise::Tanh),
            });
        }
        let proj = |up: &mut Uploader<'_>, n: &str, rows| {
            up.matrix(&format!("{p}.{n}_proj.linear.weight"), rows, h)
        };
        Ok(TimeMix {
            mu: up.vector(&format!("{p}.x_proj.0.mu"), h)?,
            ddlerp,
            r: proj(up, "r", dk)?,
            w_lora: Lora::load(
                up,
                &format!("{p}.w_proj.linear"),
                (h, c.decay_rank, dk),
                true,
                Some(Elementwise::Tanh),
            )?,
            k: proj(up, "k", dk)?,
            v: proj(up, "v", dv)?,
            g: proj(up, "g", dv)?,
            bonus: up.vector(&format!("{p}.bonus"), dk)?,
            ln_x: Norm::load(up, c, &format!("{p}.g_norm"), dv)?,
            o: up.matrix(&format!("{p}.o_proj.weight"), h, dv)?,
        })
    }

    pub(crate) fn apply(
        &self,
        g: &mut Graph,
        c: &RwkvConfig,
        input: &MixInput,
    ) -> GResult<TensorId> {
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
        lin(g, o, &self.o, None)
    }
}

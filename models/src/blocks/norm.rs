//! Norms with learnt weights: RMSNorm (Llama-style blocks, Mamba, GLA) and LayerNorm (RWKV),
//! each applied per row or per group of channels.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::linear::LinearInput;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::GResult;
use crate::error::Result;
use crate::vars::Vars;

/// RMSNorm: `weight` of `n` values in scope `vb`, with its eps.
#[derive(Clone)]
pub struct RmsNorm {
    w: Arc<GpuWeight>,
    eps: f32,
}

impl RmsNorm {
    pub fn load(vb: &Vars<'_>, n: usize, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            w: vb.vector("weight", n)?,
            eps,
        })
    }

    /// A norm whose checkpoint stores `w` for a scale of `offset + w` (Gemma's `1 + w`): the
    /// offset added once here, so the kernels see the scale itself.
    pub fn load_offset(vb: &Vars<'_>, n: usize, eps: f32, offset: f32) -> Result<RmsNorm> {
        if offset == 0.0 {
            return Self::load(vb, n, eps);
        }
        let w: Vec<f32> = vb
            .host("weight", &[n])?
            .iter()
            .map(|w| w + offset)
            .collect();
        Ok(RmsNorm {
            w: vb.computed_vector("weight", &w)?,
            eps,
        })
    }

    pub fn apply(&self, g: &mut Graph, x: TensorId) -> GResult<TensorId> {
        let w = g.weight(&self.w);
        g.rms_norm(x, w, self.eps)
    }

    /// What `projections` linear ops read for the norm of `x`: x with the norm fused into
    /// each when there is one, or x is one row (decode: fused costs no dispatch); else the
    /// norm once, as a dispatch of its own, and the plain result.
    pub fn for_linears(
        &self,
        g: &mut Graph,
        x: TensorId,
        projections: usize,
    ) -> GResult<(TensorId, LinearInput)> {
        if projections == 1 || g.shape(x)[0] == 1 {
            let weight = g.weight(&self.w);
            let eps = self.eps;
            return Ok((x, LinearInput::Norm { weight, eps }));
        }
        Ok((self.apply(g, x)?, LinearInput::Plain))
    }
}

/// LayerNorm: `weight` and `bias` of `n` values in scope `vb` (a zero bias for models
/// without biases).
#[derive(Clone)]
pub struct LayerNorm {
    w: Arc<GpuWeight>,
    b: Arc<GpuWeight>,
}

impl LayerNorm {
    pub fn load(vb: &Vars<'_>, n: usize, bias: bool) -> Result<LayerNorm> {
        let w = vb.vector("weight", n)?;
        let b = match bias {
            true => vb.vector("bias", n)?,
            false => vb.computed_vector("bias(zero)", &vec![0.0; n])?,
        };
        Ok(LayerNorm { w, b })
    }

    /// Normalise each row of `x`, or each of its `groups` groups of channels.
    pub fn apply(&self, g: &mut Graph, x: TensorId, eps: f32, groups: usize) -> GResult<TensorId> {
        let (w, b) = (g.weight(&self.w), g.weight(&self.b));
        g.group_norm(x, w, b, eps, groups)
    }
}

//! The output projection of a language model and the head its graph ends in.

use std::sync::Arc;

use kestrel_runtime::arch::Head;
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::linear::{LinearInput, LinearOutput};
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::norm::RmsNorm;
use super::GResult;
use crate::error::Result;
use crate::vars::Vars;

#[derive(Clone)]
pub struct LmHead {
    w: Arc<GpuWeight>,
    /// Soft-capping of the logits (Gemma 2): [vocab] copies of the cap.
    softcap: Option<Arc<GpuWeight>>,
}

impl LmHead {
    /// The matrix `leaf` [vocab, hidden] in scope `vb`, or the embedding table when the
    /// embeddings are tied and the file has no separate head.
    pub fn load(
        vb: &Vars<'_>,
        leaf: &str,
        embed: &Arc<GpuWeight>,
        tie: bool,
        [vocab, hidden]: [usize; 2],
    ) -> Result<LmHead> {
        let w = match tie && !vb.contains(leaf) {
            true => embed.clone(),
            false => vb.matrix(leaf, vocab, hidden)?,
        };
        Ok(LmHead { w, softcap: None })
    }

    /// The same head with its logits soft-capped to ±`cap` (`cap * tanh(logit / cap)`).
    pub fn with_softcap(self, vb: &Vars<'_>, cap: f32) -> Result<LmHead> {
        let caps = vec![cap; self.w.rows];
        Ok(LmHead {
            softcap: Some(vb.computed_vector("lm_head.softcap", &caps)?),
            ..self
        })
    }

    /// Logits [T, vocab] of the hidden states `x` [T, hidden].
    pub fn logits(&self, g: &mut Graph, x: TensorId) -> GResult<TensorId> {
        let w = g.weight(&self.w);
        let logits = g.linear(x, w, None)?;
        self.cap(g, logits)
    }

    /// `logits` soft-capped when the head caps them.
    fn cap(&self, g: &mut Graph, logits: TensorId) -> GResult<TensorId> {
        match &self.softcap {
            Some(caps) => {
                let caps = g.weight(caps);
                g.elementwise(Elementwise::SoftCap, logits, caps)
            }
            None => Ok(logits),
        }
    }

    /// The output of an autoregressive network from its final hidden states `x`: logits for
    /// every row, one token sampled from the last, or one sampled from every row.
    pub fn apply(&self, g: &mut Graph, x: TensorId, head: Head) -> GResult<()> {
        self.head(g, x, None, head)
    }

    /// [`LmHead::apply`] to `norm(x)`, the norm inside the projection.
    pub fn apply_normed(
        &self,
        g: &mut Graph,
        x: TensorId,
        norm: &RmsNorm,
        head: Head,
    ) -> GResult<()> {
        self.head(g, x, Some(norm), head)
    }

    fn head(&self, g: &mut Graph, x: TensorId, norm: Option<&RmsNorm>, head: Head) -> GResult<()> {
        let logits = |g: &mut Graph, x| -> GResult<TensorId> {
            let (x, input) = match norm {
                Some(n) => n.for_linears(g, x, 1)?,
                None => (x, LinearInput::Plain),
            };
            let w = g.weight(&self.w);
            let logits = g.linear_fused(x, w, None, input, LinearOutput::New)?;
            self.cap(g, logits)
        };
        match head {
            Head::AllLogits => {
                let logits = logits(g, x)?;
                g.output(logits);
            }
            Head::Sample => {
                let last = g.last_row(x)?;
                let logits = logits(g, last)?;
                let token = g.sample(logits)?;
                g.output(token);
            }
            Head::Verify => {
                let logits = logits(g, x)?;
                let tokens = g.sample_rows(logits)?;
                g.output(tokens);
            }
            Head::Batch(_) => {
                // Each sequence's last row only, with its own settings; the logits too
                // (output 1) for whoever checks them.
                let picked = g.gather_picks(x)?;
                let logits = logits(g, picked)?;
                let tokens = g.sample_picks(logits)?;
                g.output(tokens);
                g.output(logits);
            }
            Head::Unmask(_) => {
                return Err(kestrel_runtime::Error::Graph(
                    "an autoregressive network has no diffusion head".into(),
                ))
            }
        }
        Ok(())
    }
}

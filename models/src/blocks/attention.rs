//! Self-attention with a KV cache: the q, k, v (optional biases) and output projections, RoPE
//! (before the cache, or inside attention for caches that keep keys before RoPE), the cache
//! writes and the attention kernel. Llama-style decoders, Jamba's attention layers and
//! Zamba2's shared blocks all use it.
//!
//! Fused where it can be: q, k and v as one projection over concatenated rows (when the
//! file stores them in one dtype), RoPE and both cache writes as one kernel, and at decode
//! the attention's split-K pieces merged inside the output projection, which may also add
//! into the residual stream and take its input's RMSNorm ([`AttentionWeights::residual`]).

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::attention::AttnShape;
use kestrel_runtime::kernels::linear::{LinearInput, LinearOutput};
use kestrel_runtime::kernels::rope_cache_write::{Heads, QkNorm, Rotary};
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::norm::RmsNorm;
use super::GResult;
use crate::error::Result;
use crate::vars::Vars;

/// The q, k, v and output projections' scopes in a checkpoint (each holds `weight` and,
/// for q, k and v, maybe `bias`).
pub type AttentionNames = [&'static str; 4];

/// Hugging Face's names.
pub const ATTENTION: AttentionNames = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// A weight and its optional bias.
type Projection = (Arc<GpuWeight>, Option<Arc<GpuWeight>>);

/// The projections of a self-attention block.
#[derive(Clone)]
pub struct AttentionWeights {
    /// q, k and v as one projection [qd + 2 kvd, hidden], or three when their dtypes differ.
    qkv: Vec<Projection>,
    o: Arc<GpuWeight>,
}

/// The attention's query and cache: which layer's cache, laid out how, the heads, whether
/// causal, RoPE frequencies (applied inside attention for caches that keep keys before
/// RoPE; none: a layer without RoPE) and the factor on rotated dims (LongRoPE's attention
/// factor, else 1), an RMSNorm of q and k before RoPE and a block mask.
#[derive(Clone, Copy)]
pub struct AttentionRun<'a> {
    pub cache: &'a KvCache,
    pub layout: KvLayout,
    pub shape: AttnShape,
    pub causal: bool,
    pub inv_freq: Option<TensorId>,
    pub rope_scale: f32,
    pub qk_norm: Option<QkNorm>,
    pub mask: Option<TensorId>,
}

impl AttentionWeights {
    /// The projections in scope `vb`, named `names`, for inputs of width `hidden` and
    /// outputs of width `out`; q/k/v biases required when `bias`, else loaded when present.
    /// q, k and v become one projection when stored in one dtype.
    pub fn load(
        vb: &Vars<'_>,
        names: AttentionNames,
        dims: [usize; 2],
        shape: &AttnShape,
        bias: bool,
    ) -> Result<AttentionWeights> {
        Self::load_with(vb, names, dims, shape, bias, true)
    }

    /// [`AttentionWeights::load`] with q, k and v kept apart (for a model that adapts each).
    pub fn load_apart(
        vb: &Vars<'_>,
        names: AttentionNames,
        dims: [usize; 2],
        shape: &AttnShape,
        bias: bool,
    ) -> Result<AttentionWeights> {
        Self::load_with(vb, names, dims, shape, bias, false)
    }

    fn load_with(
        vb: &Vars<'_>,
        names: AttentionNames,
        [hidden, out]: [usize; 2],
        shape: &AttnShape,
        bias: bool,
        fuse: bool,
    ) -> Result<AttentionWeights> {
        let (qd, kvd) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let [q, k, v, o] = names;
        let widths = [qd, kvd, kvd];
        let weights = [q, k, v].map(|n| format!("{n}.weight"));
        let biases = [q, k, v].map(|n| format!("{n}.bias"));
        fn parts(leaves: &[String; 3], widths: [usize; 3]) -> Vec<(&str, usize)> {
            leaves.iter().map(String::as_str).zip(widths).collect()
        }
        let fused = match fuse {
            true => vb.concat_matrices("qkv.weight", &parts(&weights, widths), hidden, false)?,
            false => None,
        };
        let qkv = match fused {
            Some(w) => vec![(
                w,
                vb.concat_vectors("qkv.bias", &parts(&biases, widths), bias)?,
            )],
            None => {
                let mut qkv = Vec::with_capacity(3);
                for (n, width) in [q, k, v].into_iter().zip(widths) {
                    let p = vb.pp(n);
                    let b = match bias {
                        true => p.vector("bias", width).map(Some),
                        false => p.optional_vector("bias", width),
                    }?;
                    qkv.push((p.matrix("weight", width, hidden)?, b));
                }
                qkv
            }
        };
        Ok(AttentionWeights {
            qkv,
            o: vb.pp(o).matrix("weight", out, qd)?,
        })
    }

    /// Self-attention over `h` [T, hidden] (see [`AttentionRun`]). Returns the output
    /// projection [T, out].
    pub fn build(&self, g: &mut Graph, h: TensorId, run: AttentionRun) -> GResult<TensorId> {
        let qkv = self.project(g, h, None)?;
        self.attend(g, &qkv, LinearOutput::New, run)
    }

    /// `attention(norm(x))` as a new tensor [T, out] (no norm: of x itself), for blocks that
    /// normalise the output before the residual add.
    pub fn normed(
        &self,
        g: &mut Graph,
        x: TensorId,
        norm: Option<&RmsNorm>,
        run: AttentionRun,
    ) -> GResult<TensorId> {
        let qkv = self.project(g, x, norm)?;
        self.attend(g, &qkv, LinearOutput::New, run)
    }

    /// `x + attention(norm(x))`, added into the residual stream `x` [T, hidden] in place
    /// (out = hidden); returns x.
    pub fn residual(
        &self,
        g: &mut Graph,
        x: TensorId,
        norm: &RmsNorm,
        run: AttentionRun,
    ) -> GResult<TensorId> {
        let qkv = self.project(g, x, Some(norm))?;
        self.attend(g, &qkv, LinearOutput::AddTo(x), run)
    }

    /// The q, k and v projections of `h`: one tensor [T, qd + 2 kvd], or three.
    pub fn qkv(&self, g: &mut Graph, h: TensorId) -> GResult<Vec<TensorId>> {
        self.project(g, h, None)
    }

    fn project(
        &self,
        g: &mut Graph,
        x: TensorId,
        norm: Option<&RmsNorm>,
    ) -> GResult<Vec<TensorId>> {
        let (x, input) = match norm {
            Some(n) => n.for_linears(g, x, self.qkv.len())?,
            None => (x, LinearInput::Plain),
        };
        let mut qkv = Vec::with_capacity(3);
        for (w, b) in &self.qkv {
            let (w, b) = (g.weight(w), b.as_ref().map(|b| g.weight(b)));
            qkv.push(g.linear_fused(x, w, b, input, LinearOutput::New)?);
        }
        Ok(qkv)
    }

    /// Attention from projections already made ([`AttentionWeights::qkv`]), with the output
    /// projection writing `output`.
    pub fn attend(
        &self,
        g: &mut Graph,
        qkv: &[TensorId],
        output: LinearOutput,
        run: AttentionRun,
    ) -> GResult<TensorId> {
        let shape = run.shape;
        let kvd = shape.kv_heads * shape.head_dim;
        let [k_name, v_name] = run.cache.names();
        let k_cache = g.state(&k_name, &[run.layout.cache_rows(), kvd]);
        let v_cache = g.state(&v_name, &[run.layout.cache_rows(), kvd]);
        // Keys cached before RoPE (attention sinks) are rotated inside attention, which has
        // no factor on rotated dims (the decoder refuses sinks with LongRoPE).
        let (before, inside) = match run.layout.rope_in_attention {
            true if run.rope_scale != 1.0 => {
                return Err(kestrel_runtime::Error::Graph(
                    "RoPE rotated inside attention (attention sinks) has no attention factor"
                        .into(),
                ))
            }
            true => (None, run.inv_freq),
            false => (run.inv_freq, None),
        };
        let before = before.map(|inv_freq| Rotary {
            inv_freq,
            scale: run.rope_scale,
        });
        let heads = Heads {
            heads: shape.heads,
            kv_heads: shape.kv_heads,
            head_dim: shape.head_dim,
        };
        let caches = [k_cache, v_cache];
        let q = g.rope_cache_write(qkv, before, run.qk_norm, caches, run.layout, heads)?;
        let o = g.weight(&self.o);
        // One causal query: attention's pieces, merged inside the output projection (a
        // batched step's rows are of several sequences: attention row-wise).
        if g.shape(q)[0] == 1 && run.causal && g.batch.is_none() {
            let (pieces, splits) =
                g.attention_pieces(q, k_cache, v_cache, shape, run.layout, inside, run.mask)?;
            let input = LinearInput::Merged {
                head_dim: shape.head_dim,
                splits,
            };
            return g.linear_fused(pieces, o, None, input, output);
        }
        let a = g.attention(
            q, k_cache, v_cache, shape, run.causal, run.layout, inside, run.mask,
        )?;
        g.linear_fused(a, o, None, LinearInput::Plain, output)
    }
}

/// The K and V cache states of the attention in layer `layer` (`layer.{l}.k`, `layer.{l}.v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCache {
    pub layer: usize,
}

impl KvCache {
    fn names(&self) -> [String; 2] {
        ["k", "v"].map(|kind| format!("layer.{}.{kind}", self.layer))
    }

    /// The two states, for caches of `kv_dim` channels laid out as `layout`.
    pub fn states(&self, layout: &KvLayout, kv_dim: usize) -> [StateSpec; 2] {
        self.names()
            .map(|name| StateSpec::cache(name, vec![layout.cache_rows(), kv_dim]))
    }
}

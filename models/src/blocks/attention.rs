//! Self-attention with a KV cache: the q, k, v (optional biases) and output projections, RoPE
//! (before the cache, or inside attention for caches that keep keys before RoPE), the cache
//! writes and the attention kernel. Llama-style decoders, Jamba's attention layers and
//! Zamba2's shared blocks all use it.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::attention::AttnShape;
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::mlp::lin;
use super::GResult;
use crate::error::Result;
use crate::vars::Vars;

/// The q, k, v and output projections' scopes in a checkpoint (each holds `weight` and,
/// for q, k and v, maybe `bias`).
pub type AttentionNames = [&'static str; 4];

/// Hugging Face's names.
pub const ATTENTION: AttentionNames = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// The projections of a self-attention block.
#[derive(Clone)]
pub struct AttentionWeights {
    q: Arc<GpuWeight>,
    k: Arc<GpuWeight>,
    v: Arc<GpuWeight>,
    q_bias: Option<Arc<GpuWeight>>,
    k_bias: Option<Arc<GpuWeight>>,
    v_bias: Option<Arc<GpuWeight>>,
    o: Arc<GpuWeight>,
}

impl AttentionWeights {
    /// The projections in scope `vb`, named `names`, for inputs of width `hidden` and
    /// outputs of width `out`; q/k/v biases required when `bias`, else loaded when present.
    pub fn load(
        vb: &Vars<'_>,
        names: AttentionNames,
        [hidden, out]: [usize; 2],
        shape: &AttnShape,
        bias: bool,
    ) -> Result<AttentionWeights> {
        let (qd, kvd) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let [q, k, v, o] = names.map(|n| vb.pp(n));
        let b = |vb: &Vars<'_>, n: usize| match bias {
            true => vb.vector("bias", n).map(Some),
            false => vb.optional_vector("bias", n),
        };
        Ok(AttentionWeights {
            q: q.matrix("weight", qd, hidden)?,
            k: k.matrix("weight", kvd, hidden)?,
            v: v.matrix("weight", kvd, hidden)?,
            q_bias: b(&q, qd)?,
            k_bias: b(&k, kvd)?,
            v_bias: b(&v, kvd)?,
            o: o.matrix("weight", out, qd)?,
        })
    }

    /// Self-attention over `h` [T, hidden] through the KV cache states of `cache` laid out
    /// as `layout`; RoPE with `inv_freq` when given (inside attention for caches that keep
    /// keys before RoPE). Returns the output projection [T, out].
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &self,
        g: &mut Graph,
        h: TensorId,
        cache: &KvCache,
        layout: KvLayout,
        shape: AttnShape,
        causal: bool,
        inv_freq: Option<TensorId>,
        mask: Option<TensorId>,
    ) -> GResult<TensorId> {
        let qkv = self.qkv(g, h)?;
        self.attend(g, qkv, cache, layout, shape, causal, inv_freq, mask)
    }

    /// The q, k and v projections of `h`.
    pub fn qkv(&self, g: &mut Graph, h: TensorId) -> GResult<[TensorId; 3]> {
        Ok([
            lin(g, h, &self.q, self.q_bias.as_ref())?,
            lin(g, h, &self.k, self.k_bias.as_ref())?,
            lin(g, h, &self.v, self.v_bias.as_ref())?,
        ])
    }

    /// [`AttentionWeights::build`] from projections already made.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        g: &mut Graph,
        [q, k, v]: [TensorId; 3],
        cache: &KvCache,
        layout: KvLayout,
        shape: AttnShape,
        causal: bool,
        inv_freq: Option<TensorId>,
        mask: Option<TensorId>,
    ) -> GResult<TensorId> {
        let kvd = shape.kv_heads * shape.head_dim;
        // Keys cached before RoPE (attention sinks) are rotated inside attention.
        let (q, k, rope) = match inv_freq {
            Some(f) if layout.rope_in_attention => (q, k, Some(f)),
            Some(f) => {
                let q = g.rope(q, f, shape.heads, shape.head_dim)?;
                (q, g.rope(k, f, shape.kv_heads, shape.head_dim)?, None)
            }
            None => (q, k, None),
        };
        let [k_name, v_name] = cache.names();
        let k_cache = g.state(&k_name, &[layout.rows, kvd]);
        let v_cache = g.state(&v_name, &[layout.rows, kvd]);
        g.cache_write(k, k_cache, layout)?;
        g.cache_write(v, v_cache, layout)?;
        let a = g.attention(q, k_cache, v_cache, shape, causal, layout, rope, mask)?;
        lin(g, a, &self.o, None)
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
            .map(|name| StateSpec::cache(name, vec![layout.rows, kv_dim]))
    }
}

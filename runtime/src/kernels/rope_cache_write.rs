//! RoPE of q and k and the K/V cache writes as one kernel: between a layer's projections and
//! its attention, for any number of tokens. Reads q, k and v from one fused projection or
//! three tensors; writes rotated q to a new tensor and rotated k and v into the cache rows
//! their [`KvLayout`] assigns. Caches that keep keys before RoPE get them unrotated. q and k
//! may first be RMS-normalised ([`QkNorm`]: per head as Qwen3 and Gemma 3, or over the whole
//! projection as OLMo-2).

use bytemuck::{Pod, Zeroable};

use super::{cache_write, kernel, rope, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::kv::KvLayout;
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("rope_cache_write", variants);

/// Positions from the step, and from a batched step's rows (PAGED).
pub fn variants() -> Vec<ShaderDefs> {
    [false, true]
        .map(|paged| ShaderDefs::new().bool("PAGED", paged))
        .to_vec()
}

/// Where q, k and v come from: columns `offset..` of rows of `stride` floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    pub tensor: TensorId,
    pub stride: usize,
    pub offset: usize,
}

/// The heads of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The span an RMSNorm of q and k normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkSpan {
    /// Each head's `head_dim` values (Qwen3, Gemma 3): weights [head_dim] for q, then for k.
    Head,
    /// A token's whole projection (OLMo-2): weights [heads * head_dim] for q, then [kv_heads *
    /// head_dim] for k.
    Whole,
}

/// RMSNorm of q and k before RoPE: `weight` holds q's weights then k's (one binding, to stay
/// within WebGPU's 8 storage buffers per stage).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QkNorm {
    pub weight: TensorId,
    pub eps: f32,
    pub span: QkSpan,
}

impl QkNorm {
    /// The weight's length for these heads.
    pub fn len(span: QkSpan, heads: Heads) -> usize {
        match span {
            QkSpan::Head => 2 * heads.head_dim,
            QkSpan::Whole => (heads.heads + heads.kv_heads) * heads.head_dim,
        }
    }
}

/// A layer's RoPE: `inv_freq` (rotated pairs per head) and a factor on the rotated dims
/// (cos and sin times `scale`: LongRoPE's attention factor; 1 otherwise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rotary {
    pub inv_freq: TensorId,
    pub scale: f32,
}

/// See the module doc; `rope` None copies q and k unrotated.
#[derive(Debug)]
pub struct RopeCacheWrite {
    pub qkv: [Columns; 3],
    pub rope: Option<Rotary>,
    pub qk_norm: Option<QkNorm>,
    pub q_out: TensorId,
    pub k_cache: TensorId,
    pub v_cache: TensorId,
    /// Paged (`KvLayout::pages`) in a batched graph: positions and cache rows then come from
    /// the batch's rows.
    pub layout: KvLayout,
    pub heads: Heads,
}

impl Graph {
    /// Rotate q (into a new tensor [T, heads * head_dim], returned) and k by RoPE with
    /// `rope` (None: not rotated), and write k and v to their caches [layout.rows,
    /// kv_heads * head_dim]. `qkv`: the projections, either one tensor [T, qd + 2 kvd] or
    /// three. `qk_norm`: an RMSNorm of q and k before RoPE.
    pub fn rope_cache_write(
        &mut self,
        qkv: &[TensorId],
        rope: Option<Rotary>,
        qk_norm: Option<QkNorm>,
        [k_cache, v_cache]: [TensorId; 2],
        layout: KvLayout,
        heads: Heads,
    ) -> Result<TensorId> {
        let qd = heads.heads * heads.head_dim;
        let kvd = heads.kv_heads * heads.head_dim;
        let t = self.shape(qkv[0])[0];
        let widths = [qd, kvd, kvd];
        let qkv = match *qkv {
            [fused] => {
                if self.shape(fused) != [t, qd + 2 * kvd] {
                    return Err(mismatch(
                        "fused q/k/v",
                        &[t, qd + 2 * kvd],
                        self.shape(fused),
                    ));
                }
                let at = |offset| Columns {
                    tensor: fused,
                    stride: qd + 2 * kvd,
                    offset,
                };
                [at(0), at(qd), at(qd + kvd)]
            }
            [q, k, v] => {
                let mut cols = [q, k, v].map(|tensor| Columns {
                    tensor,
                    stride: 0,
                    offset: 0,
                });
                for (c, w) in cols.iter_mut().zip(widths) {
                    if self.shape(c.tensor) != [t, w] {
                        return Err(mismatch("q, k or v", &[t, w], self.shape(c.tensor)));
                    }
                    c.stride = w;
                }
                cols
            }
            _ => return Err(Error::Graph("rope_cache_write takes 1 or 3 tensors".into())),
        };
        if !heads.head_dim.is_multiple_of(2) {
            return Err(Error::Graph(format!(
                "rope_cache_write: odd head_dim {}",
                heads.head_dim
            )));
        }
        if let Some(Rotary { inv_freq: f, .. }) = rope {
            if 2 * self.numel(f) > heads.head_dim {
                return Err(mismatch(
                    "RoPE frequencies",
                    &[heads.head_dim / 2],
                    self.shape(f),
                ));
            }
        }
        if let Some(n) = qk_norm {
            self.expect_vector(n.weight, QkNorm::len(n.span, heads), "q/k norm weights")?;
        }
        for cache in [k_cache, v_cache] {
            if self.shape(cache) != [layout.cache_rows(), kvd] {
                return Err(mismatch(
                    "cache write",
                    &[layout.cache_rows(), kvd],
                    self.shape(cache),
                ));
            }
        }
        if self.batch.is_some() != layout.pages() {
            return Err(Error::Graph(
                "a batched step's caches, and only theirs, are paged (KvLayout::paged)".into(),
            ));
        }
        // A batched step's rows are of several sequences, each within the chunk
        // (crate::batch::MAX_SEQ_ROWS).
        if let Some(n) = layout.max_chunk.filter(|&n| t > n && !layout.pages()) {
            return Err(Error::Graph(format!(
                "cache write of {t} rows exceeds the ring cache's chunk of {n}"
            )));
        }
        let q_out = self.activation(vec![t, qd]);
        self.push(RopeCacheWrite {
            qkv,
            rope,
            qk_norm,
            q_out,
            k_cache,
            v_cache,
            layout,
            heads,
        });
        Ok(q_out)
    }
}

impl Op for RopeCacheWrite {
    fn name(&self) -> &'static str {
        "rope_cache_write"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r: Vec<TensorId> = self.qkv.iter().map(|c| c.tensor).collect();
        r.extend(self.rope.map(|r| r.inv_freq));
        r.extend(self.qk_norm.map(|n| n.weight));
        (r, vec![self.q_out, self.k_cache, self.v_cache])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let n = cx.shape(self.q_out)[0];
        let [q, k, v] = self.qkv.map(|c| cx.buf(c.tensor));
        let freq = match self.rope {
            Some(r) => Some((cx.buf(r.inv_freq)?, cx.numel(r.inv_freq))),
            None => None,
        };
        let qk_norm = match self.qk_norm {
            Some(n) => Some((cx.buf(n.weight)?, n.eps, n.span)),
            None => None,
        };
        let io = Io {
            src: [q?, k?, v?],
            inv_freq: freq,
            rope_scale: self.rope.map_or(1.0, |r| r.scale),
            qk_norm,
            q_out: cx.buf(self.q_out)?,
            caches: [cx.buf(self.k_cache)?, cx.buf(self.v_cache)?],
            batch: match self.layout.pages() {
                true => Some(cx.batch()?),
                false => None,
            },
        };
        let cols = self.qkv.map(|c| (c.stride, c.offset));
        let d = launch(cx.gpu(), cx.step(), &io, cols, n, self.heads, self.layout)?;
        cx.push([d]);
        Ok(())
    }
}

/// The kernel's buffers: q, k and v sources, RoPE frequencies and their count with the
/// factor on rotated dims ([`Rotary::scale`]), the q/k norm weights with eps and span,
/// rotated q's destination and the K and V caches.
pub struct Io<'a> {
    pub src: [&'a wgpu::Buffer; 3],
    pub inv_freq: Option<(&'a wgpu::Buffer, usize)>,
    pub rope_scale: f32,
    pub qk_norm: Option<(&'a wgpu::Buffer, f32, QkSpan)>,
    pub q_out: &'a wgpu::Buffer,
    pub caches: [&'a wgpu::Buffer; 2],
    /// A batched step's rows (shaders/batch.wgsl): each token's position and cache row.
    pub batch: Option<&'a wgpu::Buffer>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rot_half: u32,
    sinks: u32,
    ring: u32,
    /// 0: no q/k norm, 1: per head, 2: over the whole projection.
    norm: u32,
    /// (stride, offset) of q, k and v.
    cols: [[u32; 2]; 3],
    eps: f32,
    rope_scale: f32,
}

/// One dispatch for `n_tokens` tokens; `cols` the (row stride, column offset) of q, k and v
/// in their sources.
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    io: &Io,
    cols: [(usize, usize); 3],
    n_tokens: usize,
    heads: Heads,
    layout: KvLayout,
) -> Result<Dispatch> {
    let Heads {
        heads: h,
        kv_heads,
        head_dim,
    } = heads;
    let params = Params {
        n_tokens: n_tokens as u32,
        heads: h as u32,
        kv_heads: kv_heads as u32,
        head_dim: head_dim as u32,
        rot_half: io.inv_freq.map_or(0, |(_, n)| n) as u32,
        sinks: layout.sinks as u32,
        ring: layout.ring() as u32,
        norm: match io.qk_norm {
            None => 0,
            Some((_, _, QkSpan::Head)) => 1,
            Some((_, _, QkSpan::Whole)) => 2,
        },
        cols: cols.map(|(s, o)| [s as u32, o as u32]),
        eps: io.qk_norm.map_or(0.0, |(_, eps, _)| eps),
        rope_scale: io.rope_scale,
    };
    let items = n_tokens * ((h + kv_heads) * head_dim / 2 + kv_heads * head_dim);
    let [q, k, v] = io.src;
    let [k_cache, v_cache] = io.caches;
    let freq: &wgpu::Buffer = io.inv_freq.map_or(&gpu.dummy, |(b, _)| b);
    let norm: &wgpu::Buffer = io.qk_norm.map_or(&gpu.dummy, |(b, _, _)| b);
    let defs = ShaderDefs::new().bool("PAGED", io.batch.is_some());
    let mut buffers = vec![step, q, k, v, freq, io.q_out, k_cache, v_cache, norm];
    buffers.extend(io.batch);
    KERNEL.dispatch(
        gpu,
        &defs,
        &params,
        &buffers,
        gpu.grid((items as u32).div_ceil(256)),
    )
}

/// The CPU reference: rotated q [T, qd] (returned) and the caches written, from separate q
/// [T, qd], k and v [T, kvd] at positions `pos..`; `inv_freq` empty: no rotation, else
/// rotated dims times `rope_scale`; `qk_norm`: q's and k's norm weights (as [`QkNorm`]), eps
/// and span.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    [q, k, v]: [&[f32]; 3],
    (inv_freq, rope_scale): (&[f32], f32),
    qk_norm: Option<(&[f32], f32, QkSpan)>,
    [k_cache, v_cache]: [&mut [f32]; 2],
    layout: KvLayout,
    pos: usize,
    heads: Heads,
) -> Vec<f32> {
    let Heads {
        heads: h,
        kv_heads,
        head_dim,
    } = heads;
    let kvd = kv_heads * head_dim;
    let (q, k) = match qk_norm {
        None => (q.to_vec(), k.to_vec()),
        Some((w, eps, span)) => {
            let group = |width: usize| match span {
                QkSpan::Head => head_dim,
                QkSpan::Whole => width,
            };
            let (wq, wk) = w.split_at(group(h * head_dim));
            (
                reference_norm(q, wq, eps, group(h * head_dim)),
                reference_norm(k, wk, eps, group(kvd)),
            )
        }
    };
    let (q, k) = (&q[..], &k[..]);
    let rotated = 2 * inv_freq.len();
    let scaled = |mut x: Vec<f32>| {
        for head in x.chunks_mut(head_dim) {
            head[..rotated].iter_mut().for_each(|v| *v *= rope_scale);
        }
        x
    };
    let k = scaled(rope::reference(k, inv_freq, pos, kv_heads, head_dim));
    cache_write::reference(&k, k_cache, layout, pos, kvd);
    cache_write::reference(v, v_cache, layout, pos, kvd);
    scaled(rope::reference(q, inv_freq, pos, h, head_dim))
}

/// RMSNorm of each group of `n` values of `x` (in f64), times `w` [n].
fn reference_norm(x: &[f32], w: &[f32], eps: f32, n: usize) -> Vec<f32> {
    x.chunks(n)
        .flat_map(|g| {
            let ms = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            g.iter()
                .zip(w)
                .map(move |(&v, &w)| (v as f64 * inv) as f32 * w)
        })
        .collect()
}

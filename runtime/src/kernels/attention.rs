//! Tiled attention with online softmax for prefill, and the shared CPU reference for
//! attention over a KV cache (also used by `decode_attention`). Which keys a query sees and
//! where they live in the cache follow its [`KvLayout`]; optionally a [`BlockMask`] restricts
//! it to listed 64x64 blocks (block-sparse attention).

use bytemuck::{Pod, Zeroable};

use super::{decode_attention, kernel, rope, Dispatch, Kernel};
use crate::block_mask::{BlockMask, BLOCK};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::kv::KvLayout;
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("attention", variants);

/// Head dims the shader-validation test compiles every mode at.
pub const HEAD_DIMS: [usize; 7] = [16, 32, 64, 80, 96, 128, 256];

/// Head layout of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Score scale, usually 1/sqrt(head_dim).
    pub scale: f32,
    /// Logit soft-capping (Gemma 2): each scaled score s becomes `cap * tanh(s / cap)`.
    pub softcap: Option<f32>,
}

impl AttnShape {
    pub fn validate(&self) -> Result<()> {
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) || self.head_dim == 0 {
            return Err(Error::Graph(format!(
                "attention heads {} must be a positive multiple of kv heads {}",
                self.heads, self.kv_heads
            )));
        }
        Ok(())
    }
}

/// The buffers of one attention launch. `inv_freq` (with its length, the rotated pairs per
/// head) is given exactly when the layout rotates keys inside attention; `mask` (with its
/// query blocks per head) selects block-sparse attention.
#[derive(Clone, Copy)]
pub struct AttnBuffers<'a> {
    pub q: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub inv_freq: Option<(&'a wgpu::Buffer, usize)>,
    pub mask: Option<(&'a wgpu::Buffer, usize)>,
    /// A batched step's queries (decode_attention's kernels only).
    pub paged: Option<Paged<'a>>,
}

/// A batched step's queries (shaders/batch.wgsl): `rows`, the batch uniform, gives each
/// query's position and sequence; keys are read through the block table `table`, `width`
/// blocks per sequence.
#[derive(Clone, Copy)]
pub struct Paged<'a> {
    pub rows: &'a wgpu::Buffer,
    pub table: &'a wgpu::Buffer,
    pub width: usize,
}

/// Check that a layout, causality and the optional RoPE / mask inputs fit together.
pub fn validate_mode(
    shape: &AttnShape,
    layout: &KvLayout,
    causal: bool,
    rope_half: Option<usize>,
    sparse: bool,
) -> Result<()> {
    shape.validate()?;
    if layout.rope_in_attention != rope_half.is_some() {
        return Err(Error::Graph(
            "attention: in-attention RoPE needs inv_freq exactly when keys are cached before RoPE"
                .into(),
        ));
    }
    if rope_half.is_some_and(|h| h == 0 || 2 * h > shape.head_dim) {
        return Err(Error::Graph(format!(
            "attention: {rope_half:?} rotated pairs do not fit head_dim {}",
            shape.head_dim
        )));
    }
    if (!causal || sparse) && *layout != KvLayout::linear(layout.rows) {
        return Err(Error::Graph(
            "attention: windows and sinks need causal, dense attention".into(),
        ));
    }
    if sparse && !causal {
        return Err(Error::Graph("block-sparse attention is causal".into()));
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    causal: u32,
    scale: f32,
    sinks: u32,
    window: u32,
    ring: u32,
    rot_half: u32,
    blocks: u32,
    softcap: f32,
    _p: [u32; 3],
}

/// Query positions per workgroup of one head; also the block size of block-sparse masks.
const BQ: u32 = BLOCK as u32;

/// The most queries (threads) per workgroup.
const MAX_QUERIES: u32 = 256;

/// How a prefill workgroup's queries are laid out: `positions` query positions of `heads`
/// query heads that share one KV head, one thread each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryTile {
    pub positions: u32,
    pub heads: u32,
}

impl QueryTile {
    /// Every query head of a KV head in one workgroup (GQA groups of up to 32 heads), with as
    /// many positions as fit [`MAX_QUERIES`] (at most [`BQ`]), so each K/V tile serves all of
    /// them; one head of [`BQ`] positions for block-sparse attention (masks are per head and
    /// per 64-position block) and larger groups.
    pub fn for_shape(shape: &AttnShape, sparse: bool) -> QueryTile {
        let group = (shape.heads / shape.kv_heads) as u32;
        if sparse || group > 32 {
            return QueryTile {
                positions: BQ,
                heads: 1,
            };
        }
        QueryTile {
            positions: (MAX_QUERIES / group).min(BQ),
            heads: group,
        }
    }
}

/// Keys per tile: K and V tiles together stay within 16 KiB of workgroup memory, less a
/// few words for the block-sparse loop.
pub fn keys_per_tile(head_dim: usize) -> u32 {
    ((2048 - 8) / head_dim as u32).clamp(1, 64)
}

/// `q` [T, heads*D] (queries at positions `step.pos..`) attends over the caches
/// [layout.rows, kv_heads*D]; writes `out` [T, heads*D].
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    io: &AttnBuffers,
    shape: AttnShape,
    layout: KvLayout,
    n_tokens: usize,
    causal: bool,
) -> Result<Dispatch> {
    let rope_half = io.inv_freq.map(|(_, h)| h);
    validate_mode(&shape, &layout, causal, rope_half, io.mask.is_some())?;
    if !shape.head_dim.is_multiple_of(16) {
        return Err(Error::Graph(format!(
            "tiled attention needs head_dim a multiple of 16, not {} (use decode_attention)",
            shape.head_dim
        )));
    }
    let tile = QueryTile::for_shape(&shape, io.mask.is_some());
    let defs = defs(shape.head_dim, rope_half.is_some(), io.mask.is_some(), tile);
    let params = Params {
        n_tokens: n_tokens as u32,
        heads: shape.heads as u32,
        kv_heads: shape.kv_heads as u32,
        q_stride: (shape.heads * shape.head_dim) as u32,
        kv_stride: (shape.kv_heads * shape.head_dim) as u32,
        causal: causal as u32,
        scale: shape.scale,
        sinks: layout.sinks as u32,
        window: layout.window_param(),
        ring: layout.ring() as u32,
        rot_half: rope_half.unwrap_or(0) as u32,
        blocks: io.mask.map_or(0, |(_, b)| b as u32),
        softcap: shape.softcap.unwrap_or(0.0),
        _p: [0; 3],
    };
    // Block-sparse workgroups cover whole query blocks, so a chunk not starting on a block
    // boundary needs one more.
    let groups_x = (n_tokens as u32).div_ceil(tile.positions) + io.mask.is_some() as u32;
    let dummy = &gpu.dummy;
    KERNEL.dispatch(
        gpu,
        &defs,
        &params,
        &[
            step,
            io.q,
            io.k_cache,
            io.v_cache,
            io.out,
            io.inv_freq.map_or(dummy, |(b, _)| b),
            io.mask.map_or(dummy, |(b, _)| b),
        ],
        [groups_x, shape.heads as u32 / tile.heads, 1],
    )
}

/// The tiled kernel for `head_dim`: `tile`'s queries per workgroup, keys per tile within 16 KiB
/// of K/V tiles; keys rotated in attention (`rope`, sinks) or a block mask (`sparse`).
fn defs(head_dim: usize, rope: bool, sparse: bool, tile: QueryTile) -> ShaderDefs {
    ShaderDefs::new()
        .u32("HEAD_DIM", head_dim as u32)
        .u32("QP", tile.positions)
        .u32("HG", tile.heads)
        .u32("BK", keys_per_tile(head_dim))
        .bool("ROPE", rope)
        .u32("SINK_DIM", if rope { head_dim as u32 } else { 1 })
        .bool("SPARSE", sparse)
}

/// Dense, in-attention RoPE and block-sparse, at each of [`HEAD_DIMS`]; dense and RoPE for
/// GQA groups of 1, 3, 4 and 7 query heads (64, 64, 64 and 36 positions).
pub fn variants() -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    for hd in HEAD_DIMS {
        for group in [1, 3, 4, 7] {
            let shape = AttnShape {
                heads: group,
                kv_heads: 1,
                head_dim: hd,
                scale: 1.0,
                softcap: None,
            };
            for (rope, sparse) in [(false, false), (true, false), (false, true)] {
                let d = defs(hd, rope, sparse, QueryTile::for_shape(&shape, sparse));
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Whether the tiled kernel serves a head_dim and, on CPU adapters, queries that may each see
/// up to `max_keys` keys: llvmpipe ends an invocation after 65535 loop iterations in all,
/// and a tiled thread loops about 3 + head_dim / 8 times per key (kept under 60000).
pub fn tiled_fits(gpu: &Gpu, head_dim: usize, max_keys: usize) -> bool {
    head_dim.is_multiple_of(16)
        && (gpu.info.device_type != wgpu::DeviceType::Cpu
            || max_keys <= cpu_tiled_key_limit(head_dim))
}

/// Whether a prefill runs the row-wise kernel (decode_attention's, a workgroup per query and
/// group of heads) rather than the tiled one: where the tiled kernel does not fit
/// ([`tiled_fits`]), and without a block-sparse mask on adapters that run decode attention's
/// lanes kernel, faster there at every length (lavapipe, 8 heads of 64 over 2 KV heads,
/// 1024 tokens: full 81 against 185 ms, a 256 window 34 against 85; block-sparse, one head
/// per workgroup, 139 against 121: `kestrel bench --attention`).
pub fn prefill_rowwise(
    gpu: &Gpu,
    shape: &AttnShape,
    rope_half: Option<usize>,
    sparse: bool,
    max_keys: usize,
) -> bool {
    let lanes = decode_attention::Kernels::for_device(gpu, shape, rope_half);
    !tiled_fits(gpu, shape.head_dim, max_keys)
        || (!sparse && lanes == decode_attention::Kernels::Lanes)
}

/// The most keys per query the tiled kernel takes on a CPU adapter.
pub fn cpu_tiled_key_limit(head_dim: usize) -> usize {
    60_000 / (3 + head_dim / 8)
}

/// The most keys a tiled workgroup's queries stream: every row of a linear cache; a window
/// (plus the 63 positions its 64 queries span, plus sinks); or the longest row of a block
/// mask (`mask`: its words, as uploaded) in positions.
pub fn prefill_key_span(layout: &KvLayout, heads: usize, mask: Option<&[u32]>) -> usize {
    let span = match (mask, layout.window) {
        (Some(words), _) => {
            let rows = heads * mask_blocks(layout.rows);
            let longest = words
                .get(..=rows)
                .and_then(|offsets| offsets.windows(2).map(|w| w[1].saturating_sub(w[0])).max())
                .unwrap_or(0);
            longest as usize * BLOCK
        }
        (None, Some(w)) => layout.sinks + w + BQ as usize - 1,
        (None, None) => layout.rows,
    };
    span.min(layout.rows)
}

/// A layer's cache as the CPU reference reads it: rows as [`KvLayout::row`] assigns them.
#[derive(Clone, Copy)]
pub struct CacheView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub layout: KvLayout,
}

/// Attention of `q` [T, heads*D] (queries at positions pos..pos+T) over `cache`, in f64
/// accumulation, written from the definitions rather than the kernels' tricks: each query
/// gathers the positions it sees ([`KvLayout::visible_positions`], or every cache row when
/// not causal, or those a block mask allows); with `inv_freq` (keys cached before RoPE) key
/// number i of that list is rotated by position i and the query by the list's length - 1.
pub fn reference(
    q: &[f32],
    cache: CacheView,
    shape: AttnShape,
    pos: usize,
    causal: bool,
    inv_freq: Option<&[f32]>,
    mask: Option<&BlockMask>,
) -> Vec<f32> {
    let d = shape.head_dim;
    let t_count = q.len() / (shape.heads * d);
    let group = shape.heads / shape.kv_heads;
    let mut out = vec![0.0; q.len()];
    for t in 0..t_count {
        let p = pos + t;
        for h in 0..shape.heads {
            let kvh = h / group;
            let keys: Vec<usize> = match (causal, mask) {
                (false, _) => (0..cache.layout.rows).collect(),
                (true, Some(m)) => (0..=p).filter(|&j| m.allows(h, p, j)).collect(),
                (true, None) => cache.layout.visible_positions(p),
            };
            let row = |data: &[f32], j: usize| -> Vec<f32> {
                data[(cache.layout.row(j) * shape.kv_heads + kvh) * d..][..d].to_vec()
            };
            let mut qrow = q[(t * shape.heads + h) * d..][..d].to_vec();
            if let Some(f) = inv_freq {
                qrow = rope::reference(&qrow, f, keys.len() - 1, 1, d);
            }
            let scores: Vec<f64> = keys
                .iter()
                .enumerate()
                .map(|(i, &j)| {
                    let mut krow = row(cache.k, j);
                    if let Some(f) = inv_freq {
                        krow = rope::reference(&krow, f, i, 1, d);
                    }
                    let s = qrow
                        .iter()
                        .zip(&krow)
                        .map(|(a, b)| (*a as f64) * (*b as f64))
                        .sum::<f64>()
                        * shape.scale as f64;
                    match shape.softcap {
                        Some(cap) => cap as f64 * (s / cap as f64).tanh(),
                        None => s,
                    }
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let mut acc = vec![0f64; d];
            for (w, &j) in e.iter().zip(&keys) {
                for (a, v) in acc.iter_mut().zip(row(cache.v, j)) {
                    *a += w * v as f64;
                }
            }
            for (i, a) in acc.iter().enumerate() {
                out[(t * shape.heads + h) * d + i] = (a / sum) as f32;
            }
        }
    }
    out
}

/// Query blocks per head for a mask over `rows` positions.
pub fn mask_blocks(rows: usize) -> usize {
    rows.div_ceil(BLOCK)
}

/// Attention of `q` [T, heads * head_dim] over a layer's caches, into `out` (see
/// [`Graph::attention`]).
#[derive(Debug)]
pub struct Attention {
    pub q: TensorId,
    pub k_cache: TensorId,
    pub v_cache: TensorId,
    pub out: TensorId,
    pub shape: AttnShape,
    pub causal: bool,
    pub layout: KvLayout,
    /// RoPE frequencies when keys are cached before RoPE (`layout.rope_in_attention`).
    pub inv_freq: Option<TensorId>,
    /// A block mask (constant u32 words) for block-sparse attention.
    pub mask: Option<TensorId>,
    /// In a batched graph: the block table (the graph's "block_table") and its width; queries
    /// take their positions and sequences from the batch's rows.
    pub paged: Option<(TensorId, usize)>,
}

impl Graph {
    /// A block mask as a constant for [`Graph::attention`].
    pub fn block_mask(&mut self, mask: &BlockMask) -> TensorId {
        self.constant(mask.to_words())
    }

    /// Attention of `q` over a layer's caches laid out by `layout` (not `causal`: over every
    /// row of the cache, which must then be linear). `inv_freq`: RoPE
    /// frequencies for a layout that caches keys before RoPE (q is then un-rotated too).
    /// `mask`: a [`Graph::block_mask`] over the cache's rows.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: TensorId,
        k_cache: TensorId,
        v_cache: TensorId,
        shape: AttnShape,
        causal: bool,
        layout: KvLayout,
        inv_freq: Option<TensorId>,
        mask: Option<TensorId>,
    ) -> Result<TensorId> {
        let rope_half = inv_freq.map(|f| self.numel(f));
        validate_mode(&shape, &layout, causal, rope_half, mask.is_some())?;
        let paged = self.batch.map(|b| (b.table, b.shape.table_width));
        if paged.is_some() != layout.pages() || (paged.is_some() && (mask.is_some() || !causal)) {
            return Err(Error::Graph(
                "a batched step's attention is causal and dense over paged caches".into(),
            ));
        }
        if self.shape(k_cache)[0] != layout.cache_rows() {
            return Err(mismatch(
                "attention KV cache rows",
                &[layout.cache_rows(), shape.kv_heads * shape.head_dim],
                self.shape(k_cache),
            ));
        }
        if let Some(m) = mask {
            let blocks = mask_blocks(layout.rows);
            let words = self.numel(m);
            if words < shape.heads * blocks + 1 {
                return Err(mismatch(
                    "block mask",
                    &[shape.heads * blocks + 1],
                    &[words],
                ));
            }
        }
        let qs = self.shape(q).to_vec();
        if qs[1] != shape.heads * shape.head_dim {
            return Err(mismatch(
                "attention queries",
                &[qs[0], shape.heads * shape.head_dim],
                &qs,
            ));
        }
        let kv = shape.kv_heads * shape.head_dim;
        if self.shape(k_cache)[1] != kv || self.shape(v_cache)[1] != kv {
            return Err(mismatch(
                "attention KV cache",
                &[self.shape(k_cache)[0], kv],
                self.shape(k_cache),
            ));
        }
        let out = self.activation(qs);
        self.push(Attention {
            q,
            k_cache,
            v_cache,
            out,
            shape,
            causal,
            layout,
            inv_freq,
            mask,
            paged,
        });
        Ok(out)
    }
}

impl Op for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.q, self.k_cache, self.v_cache];
        r.extend(self.inv_freq);
        r.extend(self.mask);
        r.extend(self.paged.map(|(table, _)| table));
        (r, vec![self.out])
    }

    /// The tiled kernel for prefill where it fits; else (and for decode) the split-K kernel
    /// of decode_attention, whose partial results share one scratch across layers.
    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let gpu = cx.gpu();
        let (shape, layout, causal) = (self.shape, self.layout, self.causal);
        let n = cx.shape(self.q)[0];
        // The tiled kernel must fit the keys its queries stream (CPU adapters cap an
        // invocation's loop iterations) and be the faster; else one workgroup per query.
        let mask_words = self.mask.and_then(|m| cx.constant(m));
        let max_keys = prefill_key_span(&layout, shape.heads, mask_words);
        // Decode splits the cache across workgroups; a row-wise prefill already has a
        // workgroup per query and head, and keeps one piece each.
        let decode = n == 1 && causal;
        let rope_half = self.inv_freq.map(|f| cx.numel(f));
        // A batched step's queries are of several sequences: row-wise, one piece each.
        let partial = if decode
            || self.paged.is_some()
            || prefill_rowwise(gpu, &shape, rope_half, self.mask.is_some(), max_keys)
        {
            let splits = match decode && self.paged.is_none() {
                true => {
                    decode_attention::splits_on(gpu, decode_attention::max_splits_for(layout.rows))
                }
                false => 1,
            };
            let floats = decode_attention::partial_floats(&shape, splits, n);
            Some((cx.scratch("attention partials", floats)?, splits))
        } else {
            None
        };
        let io = AttnBuffers {
            q: cx.buf(self.q)?,
            k_cache: cx.buf(self.k_cache)?,
            v_cache: cx.buf(self.v_cache)?,
            out: cx.buf(self.out)?,
            inv_freq: match self.inv_freq {
                Some(f) => Some((cx.buf(f)?, cx.numel(f))),
                None => None,
            },
            mask: match self.mask {
                Some(m) => Some((cx.buf(m)?, mask_blocks(layout.rows))),
                None => None,
            },
            paged: match self.paged {
                Some((table, width)) => Some(Paged {
                    rows: cx.batch()?,
                    table: cx.buf(table)?,
                    width,
                }),
                None => None,
            },
        };
        let step = cx.step();
        match &partial {
            Some((buffer, splits)) => cx.push(decode_attention::launch(
                gpu, step, &io, buffer, shape, layout, *splits, n, causal,
            )?),
            None => cx.push([launch(gpu, step, &io, shape, layout, n, causal)?]),
        }
        Ok(())
    }
}

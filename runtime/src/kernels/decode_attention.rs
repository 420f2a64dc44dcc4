//! Decode attention, split-K (flash-decoding): one query per head over the cache, cut along
//! the sequence into pieces that run as separate workgroups and are merged by the
//! online-softmax rule. With one piece per head the pieces pass writes the output itself and
//! no merge runs. It also takes several queries (one workgroup each): the prefill path
//! where the tiled kernel does not fit (see `attention::tiled_fits`). Its CPU reference is
//! `attention::reference`. A decoder's attention block at decode runs the pieces alone
//! ([`Graph::attention_pieces`]) and leaves the merge, when there is one, to the output
//! projection's Linear op (kernels::linear's `LinearInput::Merged`).

use bytemuck::{Pod, Zeroable};

use super::attention::{mask_blocks, validate_mode, AttnBuffers, AttnShape};
use super::{kernel, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::kv::KvLayout;
use crate::op::Op;
use crate::shader::ShaderDefs;

/// The pieces pass and the merge pass.
pub const KERNEL: Kernel = kernel!("decode_attention", variants);
pub const MERGE: Kernel = kernel!("decode_attention_merge", merge_variants);
/// The pieces pass for CPU adapters with subgroups (see [`Kernels::Lanes`]).
pub const LANES: Kernel = kernel!("decode_attention_lanes", lanes_variants);

/// Head dims the shader-validation test compiles every mode at.
pub const HEAD_DIMS: [usize; 6] = [16, 32, 64, 80, 128, 256];

fn defs(head_dim: usize, rope: bool, sparse: bool, group: usize, paged: bool) -> ShaderDefs {
    ShaderDefs::new()
        .u32("HEAD_DIM", head_dim as u32)
        .bool("ROPE", rope)
        .bool("SPARSE", sparse)
        .u32("GROUP", group as u32)
        .bool("PAGED", paged)
}

/// Workgroup memory the pieces kernel may use: WebGPU's guaranteed minimum.
const WORKGROUP_BYTES: usize = 16384;
/// Keys per tile and invocations per workgroup (TILE and WG in the shader).
const TILE: usize = 256;
const WG: usize = 64;
/// The most query heads one workgroup serves.
const MAX_GROUP: usize = 8;

/// Query heads per workgroup: the largest divisor of the heads sharing a KV head (at most
/// [`MAX_GROUP`]) whose query rows and tile weights fit the workgroup memory; 1 with a
/// block-sparse mask (each head has its own mask rows).
pub fn group(shape: &AttnShape, sparse: bool) -> usize {
    let share = shape.heads / shape.kv_heads.max(1);
    // Per head: its query row, tile weights and reduction slots; then the tile's rows and
    // two flags.
    let fits = |g: usize| g * (shape.head_dim + TILE + WG) * 4 + (TILE + 2) * 4 <= WORKGROUP_BYTES;
    match sparse {
        true => 1,
        false => (1..=share.min(MAX_GROUP))
            .rev()
            .find(|&g| share.is_multiple_of(g) && fits(g))
            .unwrap_or(1),
    }
}

/// Which pieces kernel runs on an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// shaders/decode_attention.wgsl: 64 invocations over a tile of keys, then over dims.
    Tiles,
    /// shaders/decode_attention_lanes.wgsl: one subgroup of 8 lanes, each taking every
    /// eighth key for all the group's query heads with its own online softmax, the lanes'
    /// states merged once at the end; every loop over dims and heads unrolled in the source.
    /// CPU drivers pay for a reduction across lanes per key and keep private arrays indexed
    /// in loops in memory; this form has neither (lavapipe: 3.2x the earlier lanes-over-dims
    /// form at 1024 keys). Needs subgroups of at least 8 lanes, head dims and rotated pairs
    /// in multiples of 4.
    Lanes,
}

impl Kernels {
    /// The pieces kernel for `gpu` and heads of this shape (`rope_half`: pairs rotated inside
    /// attention).
    pub fn for_device(gpu: &Gpu, shape: &AttnShape, rope_half: Option<usize>) -> Kernels {
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let lanes = gpu.caps.subgroups && gpu.caps.subgroup_min_size >= 8;
        let fours =
            shape.head_dim.is_multiple_of(4) && rope_half.is_none_or(|h| h.is_multiple_of(4));
        match cpu && lanes && fours {
            true => Kernels::Lanes,
            false => Kernels::Tiles,
        }
    }
}

/// Query heads per workgroup of the lanes kernel: the largest divisor of the heads sharing a
/// KV head (at most [`MAX_GROUP`]) whose queries and outputs (2 * group * head_dim floats,
/// each lane holding all of them) stay within 1024 floats, which bounds the unrolled
/// kernel's size; 1 with a block-sparse mask.
pub fn lanes_group(shape: &AttnShape, sparse: bool) -> usize {
    let share = shape.heads / shape.kv_heads.max(1);
    match sparse {
        true => 1,
        false => (1..=share.min(MAX_GROUP))
            .rev()
            .find(|&g| share.is_multiple_of(g) && g * shape.head_dim <= 512)
            .unwrap_or(1),
    }
}

/// The lanes kernel dense and with in-attention RoPE serving 1, 3, 7 or 8 query heads (where
/// they fit), for one sequence and paged, and block-sparse, at each of [`HEAD_DIMS`].
pub fn lanes_variants() -> Vec<ShaderDefs> {
    variants_serving(&[1, 3, 7, 8], lanes_group)
}

/// Dense and in-attention RoPE serving each of `groups` query heads per workgroup where
/// `fits` (the kernel's group size for a shape) allows it, for one sequence and paged, and
/// block-sparse (one head), at each of [`HEAD_DIMS`].
fn variants_serving(groups: &[usize], fits: fn(&AttnShape, bool) -> usize) -> Vec<ShaderDefs> {
    let mut out = Vec::new();
    for hd in HEAD_DIMS {
        for rope in [false, true] {
            for &g in groups {
                let shape = AttnShape {
                    softcap: None,
                    heads: g,
                    kv_heads: 1,
                    head_dim: hd,
                    scale: 1.0,
                };
                if fits(&shape, false) == g {
                    // One sequence, and a batched step's (paged).
                    for paged in [false, true] {
                        out.push(defs(hd, rope, false, g, paged));
                    }
                }
            }
        }
        out.push(defs(hd, false, true, 1, false));
    }
    out
}

fn merge_defs(head_dim: usize) -> ShaderDefs {
    ShaderDefs::new().u32("HEAD_DIM", head_dim as u32)
}

/// Dense and in-attention RoPE serving 1, 3 or 8 query heads per workgroup (where they fit),
/// and block-sparse (one head), at each of [`HEAD_DIMS`].
pub fn variants() -> Vec<ShaderDefs> {
    variants_serving(&[1, 3, 8], group)
}

pub fn merge_variants() -> Vec<ShaderDefs> {
    HEAD_DIMS.map(merge_defs).to_vec()
}

pub use super::attention::reference;

/// Keys per piece below which a piece is not split further (SPLIT_KEYS in the shader).
pub const SPLIT_KEYS: usize = 256;
/// Most pieces per head.
pub const MAX_SPLITS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    kv_stride: u32,
    scale: f32,
    sinks: u32,
    window: u32,
    ring: u32,
    rot_half: u32,
    max_splits: u32,
    blocks: u32,
    causal: u32,
    softcap: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MergeParams {
    heads: u32,
    max_splits: u32,
    _p: [u32; 2],
}

/// Pieces per head worth dispatching for a cache of `rows` rows: enough that the longest
/// cache keeps about SPLIT_KEYS keys per piece. 1 turns flash-decoding off.
pub fn max_splits_for(rows: usize) -> usize {
    rows.div_ceil(SPLIT_KEYS).clamp(1, MAX_SPLITS)
}

/// The pieces per head a decode step dispatches on this adapter, for a graph that allows up
/// to `max_splits`. A CPU adapter (lavapipe, SwiftShader) runs workgroups on a few threads:
/// more pieces could balance them better at long contexts (SmolLM2's 3 head groups on
/// lavapipe's 2 threads leave one idle part of the time), but would add the merge dispatch
/// and its work at every length, so it takes one and the pieces pass writes the output
/// (6 dispatches per Llama layer). GPUs keep split-K.
pub fn splits_on(gpu: &Gpu, max_splits: usize) -> usize {
    match gpu.info.device_type {
        wgpu::DeviceType::Cpu => 1,
        _ => max_splits.clamp(1, MAX_SPLITS),
    }
}

/// Floats of the `partial` scratch buffer for `max_splits` pieces of `n_queries` queries.
pub fn partial_floats(shape: &AttnShape, max_splits: usize, n_queries: usize) -> usize {
    n_queries * shape.heads * max_splits * (shape.head_dim + 2)
}

/// The dispatches of decode attention for `n_queries` queries at positions `step.pos..`:
/// `io.q` [n_queries, heads*D] over the caches into `io.out`, with `partial` holding
/// [`partial_floats`] floats: pieces, then merge; with one piece (`max_splits` 1) the pieces
/// pass alone, writing `io.out` (`partial` unused). Not `causal`: every query sees every row
/// of the cache.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    io: &AttnBuffers,
    partial: &wgpu::Buffer,
    shape: AttnShape,
    layout: KvLayout,
    max_splits: usize,
    n_queries: usize,
    causal: bool,
) -> Result<Vec<Dispatch>> {
    let max_splits = max_splits.clamp(1, MAX_SPLITS);
    let into = match max_splits {
        1 => io.out,
        _ => partial,
    };
    let pieces = launch_pieces(
        gpu, step, io, into, shape, layout, max_splits, n_queries, causal,
    )?;
    if max_splits == 1 {
        return Ok(vec![pieces]);
    }
    let merge = launch_merge(gpu, partial, io.out, shape, max_splits, n_queries)?;
    Ok(vec![pieces, merge])
}

/// The merge pass of [`launch`]: `partial` ([`launch_pieces`]) into `out` [n_queries,
/// heads * head_dim].
pub fn launch_merge(
    gpu: &Gpu,
    partial: &wgpu::Buffer,
    out: &wgpu::Buffer,
    shape: AttnShape,
    max_splits: usize,
    n_queries: usize,
) -> Result<Dispatch> {
    MERGE.dispatch(
        gpu,
        &merge_defs(shape.head_dim),
        &MergeParams {
            heads: shape.heads as u32,
            max_splits: max_splits.clamp(1, MAX_SPLITS) as u32,
            _p: [0; 2],
        },
        &[partial, out],
        [shape.heads as u32, n_queries as u32, 1],
    )
}

/// The pieces pass of [`launch`] alone (`io.out` unused): `partial` [n_queries, heads,
/// max_splits, head_dim + 2] holds each piece's (reference max, denominator, unnormalised
/// output); with `max_splits` 1 it is the output itself, [n_queries, heads * head_dim].
#[allow(clippy::too_many_arguments)]
pub fn launch_pieces(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    io: &AttnBuffers,
    partial: &wgpu::Buffer,
    shape: AttnShape,
    layout: KvLayout,
    max_splits: usize,
    n_queries: usize,
    causal: bool,
) -> Result<Dispatch> {
    let rope_half = io.inv_freq.map(|(_, h)| h);
    let sparse = io.mask.is_some();
    validate_mode(&shape, &layout, causal, rope_half, sparse)?;
    let max_splits = max_splits.clamp(1, MAX_SPLITS);
    if io.paged.is_some() && (max_splits != 1 || sparse || !layout.pages()) {
        return Err(crate::error::Error::Graph(
            "paged attention takes one piece per dense query over a paged cache".into(),
        ));
    }
    let (kernel, group) = match Kernels::for_device(gpu, &shape, rope_half) {
        Kernels::Tiles => (KERNEL, group(&shape, sparse)),
        Kernels::Lanes => (LANES, lanes_group(&shape, sparse)),
    };
    let defs = defs(
        shape.head_dim,
        rope_half.is_some(),
        sparse,
        group,
        io.paged.is_some(),
    );
    let params = Params {
        heads: shape.heads as u32,
        kv_heads: shape.kv_heads as u32,
        kv_stride: (shape.kv_heads * shape.head_dim) as u32,
        scale: shape.scale,
        sinks: layout.sinks as u32,
        window: layout.window_param(),
        ring: layout.ring() as u32,
        rot_half: rope_half.unwrap_or(0) as u32,
        max_splits: max_splits as u32,
        // The mask's query blocks per head, or the block table's width (the same parameter).
        blocks: match (io.mask, io.paged) {
            (Some((_, blocks)), _) => blocks as u32,
            (None, Some(p)) => p.width as u32,
            (None, None) => 0,
        },
        causal: causal as u32,
        softcap: shape.softcap.unwrap_or(0.0),
    };
    let dummy = &gpu.dummy;
    kernel.dispatch(
        gpu,
        &defs,
        &params,
        &[
            step,
            io.q,
            io.k_cache,
            io.v_cache,
            partial,
            io.inv_freq.map_or(dummy, |(b, _)| b),
            // The mask binding holds a paged step's block table.
            io.mask
                .map(|(b, _)| b)
                .or(io.paged.map(|p| p.table))
                .unwrap_or(dummy),
        ]
        .into_iter()
        .chain(io.paged.map(|p| p.rows))
        .collect::<Vec<_>>(),
        [
            (shape.heads / group) as u32,
            max_splits as u32,
            n_queries as u32,
        ],
    )
}

/// One causal query's split-K attention pieces over a layer's caches (see
/// [`Graph::attention_pieces`]).
#[derive(Debug)]
pub struct AttentionPieces {
    pub q: TensorId,
    pub k_cache: TensorId,
    pub v_cache: TensorId,
    pub partial: TensorId,
    pub shape: AttnShape,
    pub layout: KvLayout,
    pub splits: usize,
    pub inv_freq: Option<TensorId>,
    pub mask: Option<TensorId>,
}

impl Graph {
    /// Decode attention of one causal query `q` [1, heads * head_dim] over a layer's caches
    /// without the merge: returns the pieces [1, heads * splits * (head_dim + 2)] and
    /// `splits`, the most pieces per head, for a `LinearInput::Merged` projection. Where the
    /// adapter takes one piece ([`splits_on`]) the tensor's first heads * head_dim floats
    /// are the attention output itself. `inv_freq` and `mask` as for [`Graph::attention`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_pieces(
        &mut self,
        q: TensorId,
        k_cache: TensorId,
        v_cache: TensorId,
        shape: AttnShape,
        layout: KvLayout,
        inv_freq: Option<TensorId>,
        mask: Option<TensorId>,
    ) -> Result<(TensorId, usize)> {
        if self.batch.is_some() {
            return Err(crate::error::Error::Graph(
                "a batched step's attention takes Graph::attention".into(),
            ));
        }
        validate_mode(
            &shape,
            &layout,
            true,
            inv_freq.map(|f| self.numel(f)),
            mask.is_some(),
        )?;
        let (qd, kvd) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        if self.shape(q) != [1, qd] {
            return Err(mismatch("attention pieces' query", &[1, qd], self.shape(q)));
        }
        for cache in [k_cache, v_cache] {
            if self.shape(cache) != [layout.rows, kvd] {
                return Err(mismatch(
                    "attention KV cache",
                    &[layout.rows, kvd],
                    self.shape(cache),
                ));
            }
        }
        if let Some(m) = mask {
            let words = shape.heads * mask_blocks(layout.rows) + 1;
            if self.numel(m) < words {
                return Err(mismatch("block mask", &[words], &[self.numel(m)]));
            }
        }
        let splits = max_splits_for(layout.rows);
        let partial = self.activation(vec![1, partial_floats(&shape, splits, 1)]);
        self.push(AttentionPieces {
            q,
            k_cache,
            v_cache,
            partial,
            shape,
            layout,
            splits,
            inv_freq,
            mask,
        });
        Ok((partial, splits))
    }
}

impl Op for AttentionPieces {
    fn name(&self) -> &'static str {
        "attention_pieces"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.q, self.k_cache, self.v_cache];
        r.extend(self.inv_freq);
        r.extend(self.mask);
        (r, vec![self.partial])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let partial = cx.buf(self.partial)?;
        let io = AttnBuffers {
            q: cx.buf(self.q)?,
            k_cache: cx.buf(self.k_cache)?,
            v_cache: cx.buf(self.v_cache)?,
            out: partial,
            inv_freq: match self.inv_freq {
                Some(f) => Some((cx.buf(f)?, cx.numel(f))),
                None => None,
            },
            mask: match self.mask {
                Some(m) => Some((cx.buf(m)?, mask_blocks(self.layout.rows))),
                None => None,
            },
            paged: None,
        };
        let (gpu, step) = (cx.gpu(), cx.step());
        let d = launch_pieces(
            gpu,
            step,
            &io,
            partial,
            self.shape,
            self.layout,
            splits_on(gpu, self.splits),
            1,
            true,
        )?;
        cx.push([d]);
        Ok(())
    }
}

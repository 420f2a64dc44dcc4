//! The attention family over every KV layout, against `attention::reference` (f64):
//! * prefill, tiled and row-wise (one workgroup per query, as CPU adapters prefill; unsplit
//!   and split in two), over linear caches (causal or not), sliding-window rings and
//!   StreamingLLM sinks (in-attention RoPE, full and partial rotation), with caches filled
//!   chunk by chunk as a session fills them, and over caches of 1,000-3,000 keys;
//! * decode (split-K), split and unsplit, over linear caches of many lengths and over rings
//!   far past their size;
//! * block-sparse prefill and decode for every kind of `SparsePattern`;
//! * `cache_write` (exact), rows it must not touch staying poisoned.
//!
//! Cache rows no query of a case may read hold NaN (a kernel that reads one produces NaN),
//! or, where the whole history was written, the stale keys of evicted positions (a kernel
//! that reads one gives a wrong, finite result).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{
    bad_case, poisoned, step, step_buffer, upload_f32, upload_u32, Case, Output, Prepared,
    ATTN_TOL, BACKEND_TOL,
};
use crate::block_mask::{BlockMask, SparsePattern};
use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::Result;
use crate::kernels::attention::{self, mask_blocks, AttnBuffers, AttnShape, CacheView};
use crate::kernels::{cache_write, decode_attention, rope, Dispatch};
use crate::kv::KvLayout;
use crate::rng::Rng;

const THETA: f64 = 10000.0;
/// Rows of the block-sparse cases' caches: 5 blocks of 64, the last one partial.
const SPARSE_CAPACITY: usize = 300;

/// Which cache rows a case writes before its chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    /// Every position 0..pos in chunks of the layout's `max_chunk`, as a session does: ring
    /// rows of evicted positions hold their stale keys and values.
    History,
    /// Only the positions some query of the chunk sees; every other row stays NaN. With a
    /// block mask: per KV head, only the positions one of its query heads may see.
    Visible,
}

/// One attention call: `t` queries at positions `pos..pos + t` of one layer.
#[derive(Debug, Clone, Copy)]
struct Spec {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    layout: KvLayout,
    pos: usize,
    t: usize,
    fill: Fill,
    /// Rotated dims per head when the layout rotates keys in attention.
    rot_dims: usize,
    causal: bool,
    /// A block-sparse pattern: Some(None) is `BlockMask::dense_causal`.
    sparse: Option<Option<SparsePattern>>,
    /// Logit soft-capping (Gemma 2).
    softcap: Option<f32>,
}

fn spec(heads: usize, kv_heads: usize, hd: usize, layout: KvLayout, pos: usize, t: usize) -> Spec {
    Spec {
        heads,
        kv_heads,
        hd,
        layout,
        pos,
        t,
        fill: Fill::History,
        rot_dims: hd,
        causal: true,
        sparse: None,
        softcap: None,
    }
}

fn sliding(window: usize, capacity: usize) -> KvLayout {
    KvLayout::sliding(window, capacity).expect("a valid sliding window")
}

fn streaming(sinks: usize, window: usize) -> KvLayout {
    KvLayout::streaming(sinks, window).expect("a valid sink + window layout")
}

impl Spec {
    fn visible(self) -> Spec {
        Spec {
            fill: Fill::Visible,
            ..self
        }
    }

    fn rot(self, rot_dims: usize) -> Spec {
        Spec { rot_dims, ..self }
    }

    fn softcap(self, cap: f32) -> Spec {
        Spec {
            softcap: Some(cap),
            ..self
        }
    }

    fn describe(&self) -> String {
        let l = &self.layout;
        let kind = match (l.window, l.rope_in_attention) {
            (None, _) => format!("linear rows={}", l.rows),
            (Some(w), false) => {
                format!("sliding window={w} rows={} chunk={:?}", l.rows, l.max_chunk)
            }
            (Some(w), true) => format!(
                "streaming sinks={} window={w} rows={} rot_dims={}",
                l.sinks, l.rows, self.rot_dims
            ),
        };
        let mode = match (self.causal, self.sparse) {
            (false, _) => " bidirectional".to_string(),
            (true, Some(Some(p))) => format!(" sparse {}", pattern_name(&p)),
            (true, Some(None)) => " sparse dense_causal".to_string(),
            (true, None) => String::new(),
        };
        let cap = self
            .softcap
            .map_or(String::new(), |c| format!(" softcap={c}"));
        format!(
            "heads={}/{} hd={} {kind}{mode}{cap} pos={} T={} fill={:?}",
            self.heads, self.kv_heads, self.hd, self.pos, self.t, self.fill
        )
    }
}

fn pattern_name(p: &SparsePattern) -> String {
    format!(
        "local={},dilation={},global={},random={},seed={}",
        p.local, p.dilation, p.global, p.random, p.seed
    )
}

/// The host side of a case: queries, caches as the session left them, RoPE frequencies and
/// block mask where the case uses them.
struct Scene {
    spec: Spec,
    shape: AttnShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    inv_freq: Option<Vec<f32>>,
    mask: Option<BlockMask>,
    /// Rows holding a written position that no query of the chunk sees.
    stale_rows: usize,
    /// (head, query, earlier key) pairs the block mask drops.
    dropped: usize,
}

/// Every position some query at `pos..pos + t` sees.
fn needed_positions(layout: &KvLayout, pos: usize, t: usize) -> BTreeSet<usize> {
    (pos..pos + t)
        .flat_map(|p| layout.visible_positions(p))
        .collect()
}

impl Scene {
    fn new(c: &Spec, seed: u64) -> Result<Scene> {
        let (layout, width, end) = (c.layout, c.kv_heads * c.hd, c.pos + c.t);
        match layout.max_chunk {
            Some(chunk) if c.t > chunk => {
                return Err(bad_case(format!("{}: chunk exceeds {chunk}", c.describe())))
            }
            None if end > layout.rows => {
                return Err(bad_case(format!("{}: past the cache", c.describe())))
            }
            _ => {}
        }
        let shape = AttnShape {
            softcap: c.softcap,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.hd,
            scale: 1.0 / (c.hd as f32).sqrt(),
        };
        let mut rng = Rng::new(seed);
        // Queries scaled up so the softmax is peaked and the online rescaling matters.
        let q = rng.vec(c.t * c.heads * c.hd, 3.0);
        let keys = rng.vec(end * width, 1.0);
        let values = rng.vec(end * width, 1.0);
        let mut k = vec![f32::NAN; layout.rows * width];
        let mut v = vec![f32::NAN; layout.rows * width];
        let mut owner = vec![None; layout.rows];
        let mut write = |from: usize, to: usize| {
            let span = from * width..to * width;
            cache_write::reference(&keys[span.clone()], &mut k, layout, from, width);
            cache_write::reference(&values[span], &mut v, layout, from, width);
            for j in from..to {
                owner[layout.row(j)] = Some(j);
            }
        };
        let needed = needed_positions(&layout, c.pos, c.t);
        // A block mask poisons per KV head below, after a history fill.
        match (c.fill, c.sparse) {
            (Fill::History, _) | (_, Some(_)) => {
                let chunk = layout.max_chunk.unwrap_or(c.pos.max(1));
                for from in (0..c.pos).step_by(chunk) {
                    write(from, (from + chunk).min(c.pos));
                }
                write(c.pos, end);
            }
            (Fill::Visible, None) => {
                for &j in &needed {
                    write(j, j + 1);
                }
            }
        }
        let stale_rows = owner
            .iter()
            .filter(|o| o.is_some_and(|j| !needed.contains(&j)))
            .count();
        if c.fill == Fill::History && end > layout.rows && stale_rows == 0 {
            // Every row was written and the ring has wrapped: some row must hold an old key.
            return Err(bad_case(format!("{}: no stale row", c.describe())));
        }
        let mut scene = Scene {
            spec: *c,
            shape,
            q,
            k,
            v,
            inv_freq: layout
                .rope_in_attention
                .then(|| rope::inv_freq(THETA, c.rot_dims, None)),
            mask: None,
            stale_rows,
            dropped: 0,
        };
        if let Some(pattern) = c.sparse {
            scene.add_mask(pattern)?;
        }
        Ok(scene)
    }

    /// The block mask of `pattern` (None: dense causal). A `Fill::Visible` case then poisons,
    /// per KV head, every cache row none of its query heads may see under the mask.
    fn add_mask(&mut self, pattern: Option<SparsePattern>) -> Result<()> {
        let c = self.spec;
        if c.layout != KvLayout::linear(c.layout.rows) {
            return Err(bad_case("block masks go with linear caches".into()));
        }
        let blocks = mask_blocks(c.layout.rows);
        let mask = match pattern {
            Some(p) => BlockMask::causal(&p, c.heads, blocks, 3),
            None => BlockMask::dense_causal(c.heads, blocks),
        };
        let (end, group) = (c.pos + c.t, c.heads / c.kv_heads);
        for g in 0..c.kv_heads {
            let mut needed = vec![false; end];
            for h in g * group..(g + 1) * group {
                for p in c.pos..end {
                    for (j, need) in needed.iter_mut().enumerate().take(p + 1) {
                        let allowed = mask.allows(h, p, j);
                        *need |= allowed;
                        self.dropped += !allowed as usize;
                    }
                }
            }
            if c.fill == Fill::Visible {
                for j in (0..end).filter(|&j| !needed[j]) {
                    let at = (j * c.kv_heads + g) * c.hd..(j * c.kv_heads + g + 1) * c.hd;
                    self.k[at.clone()].fill(f32::NAN);
                    self.v[at].fill(f32::NAN);
                }
            }
        }
        self.mask = Some(mask);
        Ok(())
    }

    fn reference(&self) -> Vec<f32> {
        let cache = CacheView {
            k: &self.k,
            v: &self.v,
            layout: self.spec.layout,
        };
        attention::reference(
            &self.q,
            cache,
            self.shape,
            self.spec.pos,
            self.spec.causal,
            self.inv_freq.as_deref(),
            self.mask.as_ref(),
        )
    }
}

/// The scene's buffers on one GPU.
struct Bound {
    q: GpuBuffer,
    k: GpuBuffer,
    v: GpuBuffer,
    inv_freq: Option<(GpuBuffer, usize)>,
    mask: Option<GpuBuffer>,
    step: GpuBuffer,
}

impl Bound {
    fn new(gpu: &Gpu, s: &Scene) -> Bound {
        Bound {
            q: upload_f32(gpu, &s.q),
            k: upload_f32(gpu, &s.k),
            v: upload_f32(gpu, &s.v),
            inv_freq: s.inv_freq.as_ref().map(|f| (upload_f32(gpu, f), f.len())),
            mask: s.mask.as_ref().map(|m| upload_u32(gpu, &m.to_words())),
            step: step_buffer(gpu, &step(s.spec.pos as u32, s.spec.t as u32)),
        }
    }

    /// The buffers of one launch writing `out`; `masked` false leaves a scene's mask out.
    fn io<'a>(&'a self, s: &Scene, out: &'a wgpu::Buffer, masked: bool) -> AttnBuffers<'a> {
        AttnBuffers {
            q: &self.q,
            k_cache: &self.k,
            v_cache: &self.v,
            out,
            inv_freq: self.inv_freq.as_ref().map(|(b, n)| (&**b, *n)),
            mask: match (masked, &self.mask) {
                (true, Some(b)) => Some((b, mask_blocks(s.spec.layout.rows))),
                _ => None,
            },
            paged: None,
        }
    }

    /// The tiled prefill kernel into a new poisoned output.
    fn tiled(&self, gpu: &Gpu, s: &Scene, masked: bool) -> Result<(Dispatch, GpuBuffer)> {
        let out = poisoned(gpu, s.q.len());
        let c = &s.spec;
        let io = self.io(s, &out, masked);
        let d = attention::launch(gpu, &self.step, &io, s.shape, c.layout, c.t, c.causal)?;
        Ok((d, out))
    }

    /// The split-K kernel (decode, or the row-wise prefill) in up to `splits` pieces.
    fn split_k(&self, gpu: &Gpu, s: &Scene, splits: usize) -> Result<(Vec<Dispatch>, GpuBuffer)> {
        let c = &s.spec;
        let out = poisoned(gpu, s.q.len());
        let partial = poisoned(gpu, decode_attention::partial_floats(&s.shape, splits, c.t));
        let io = self.io(s, &out, true);
        let d = decode_attention::launch(
            gpu, &self.step, &io, &partial, s.shape, c.layout, splits, c.t, c.causal,
        )?;
        Ok((d.to_vec(), out))
    }
}

/// Score work of a scene: 4 flops (q.k and p.v) per head, query, visible key and head dim;
/// not declared (0) for a block mask.
fn flops(s: &Scene) -> f64 {
    let c = &s.spec;
    if c.sparse.is_some() {
        return 0.0;
    }
    let keys: usize = (c.pos..c.pos + c.t)
        .map(|p| match c.causal {
            true => c.layout.visible_positions(p).len(),
            false => c.layout.rows,
        })
        .sum();
    4.0 * (c.heads * keys * c.hd) as f64
}

/// A prefill case: the tiled kernel, then the row-wise one unsplit and in `splits` pieces,
/// each against the reference; a dense causal mask also against the tiled dense kernel.
/// `must_fit`: the executor would take the tiled kernel for this cache on any adapter.
fn prefill_case(c: Spec, seed: u64, splits: usize, must_fit: bool) -> Case {
    Case::new("attention", c.describe(), move |gpu: &Arc<Gpu>| {
        let s = Scene::new(&c, seed)?;
        let keys = c.pos + c.t;
        if must_fit && !attention::tiled_fits(gpu, c.hd, keys) {
            return Err(bad_case(format!(
                "tiled attention does not fit {keys} keys"
            )));
        }
        let want = s.reference();
        let b = Bound::new(gpu, &s);
        let (tiled, tiled_out) = b.tiled(gpu, &s, true)?;
        let (mut d, mut outputs) = (
            vec![tiled],
            vec![Output::close("tiled", &tiled_out, want.clone(), ATTN_TOL)],
        );
        for n in [1, splits] {
            let (rowwise, out) = b.split_k(gpu, &s, n)?;
            d.extend(rowwise);
            let label = format!("row-wise in {n}");
            outputs.push(Output::close(&label, &out, want.clone(), ATTN_TOL));
        }
        if c.sparse == Some(None) {
            // The dense causal mask is dense causal attention.
            let (dense, out) = b.tiled(gpu, &s, false)?;
            d.push(dense);
            outputs.push(Output::like(
                "tiled unmasked",
                &out,
                s.q.len(),
                0,
                BACKEND_TOL,
            ));
        }
        Ok(Prepared::new(gpu, d, outputs).work(flops(&s), 0.0))
    })
    .agree()
}

/// A decode case: split-K in as many pieces as the cache asks for, and in one, each against
/// the reference and against each other.
fn decode_case(c: Spec, seed: u64) -> Case {
    Case::new("decode_attention", c.describe(), move |gpu: &Arc<Gpu>| {
        let s = Scene::new(&c, seed)?;
        let want = s.reference();
        let b = Bound::new(gpu, &s);
        let splits = decode_attention::max_splits_for(c.layout.rows);
        let (mut d, split) = b.split_k(gpu, &s, splits)?;
        let (single_d, single) = b.split_k(gpu, &s, 1)?;
        d.extend(single_d);
        let outputs = vec![
            Output::close(&format!("in {splits}"), &split, want.clone(), ATTN_TOL),
            Output::close("in 1", &single, want, ATTN_TOL),
            Output::like(
                &format!("in {splits} vs 1"),
                &split,
                s.q.len(),
                1,
                BACKEND_TOL,
            ),
        ];
        Ok(Prepared::new(gpu, d, outputs).work(flops(&s), 0.0))
    })
    .agree()
}

/// Prefill chunks over sliding-window rings and StreamingLLM sinks.
fn ring_prefill_specs() -> Vec<Spec> {
    vec![
        // Sliding windows; rings of window + chunk rows (16, 74, 200) that have wrapped.
        spec(4, 2, 16, sliding(8, 4096), 301, 5),
        spec(4, 2, 16, sliding(8, 4096), 77, 8), // a full chunk: one stale row left
        spec(4, 1, 16, sliding(8, 4096), 1001, 1).visible(),
        spec(4, 1, 64, sliding(37, 4096), 130, 29),
        spec(4, 1, 64, sliding(37, 4096), 1000, 5).visible(),
        spec(4, 2, 64, sliding(37, 4096), 3, 29), // before the window fills
        spec(4, 2, 64, sliding(37, 4096), 2990, 37).visible(),
        spec(4, 2, 128, sliding(100, 4096), 450, 70),
        spec(4, 1, 128, sliding(100, 4096), 199, 1).visible(),
        spec(4, 2, 128, sliding(100, 4096), 0, 70),
        spec(4, 2, 16, sliding(100, 4096), 3001, 100).visible(), // two query blocks
        // A window shorter than a cache too small to need a ring: one row per position.
        spec(4, 2, 64, sliding(37, 60), 10, 29),
        spec(4, 1, 16, sliding(37, 60), 0, 60).visible(),
        // StreamingLLM in the transition region (pos < sinks + window) ...
        spec(4, 2, 16, streaming(1, 5), 0, 5),
        spec(4, 2, 16, streaming(1, 5), 2, 5),
        spec(4, 1, 64, streaming(4, 37), 20, 29),
        spec(4, 1, 64, streaming(4, 37), 1, 29).visible(),
        spec(4, 2, 128, streaming(2, 100), 50, 70),
        spec(4, 2, 64, streaming(3, 64), 30, 64).rot(32),
        // ... and far beyond it.
        spec(4, 2, 16, streaming(1, 5), 3001, 5).visible(),
        spec(4, 2, 16, streaming(1, 5), 2999, 3),
        spec(4, 1, 64, streaming(4, 37), 2999, 29),
        spec(4, 1, 64, streaming(4, 37), 3001, 1).visible().rot(32),
        spec(4, 2, 128, streaming(2, 100), 3000, 70).visible(),
        spec(4, 2, 128, streaming(2, 100), 3003, 100).rot(64),
        spec(4, 1, 16, streaming(3, 64), 3030, 64).rot(8),
    ]
}

/// Decode steps over sliding-window rings and StreamingLLM sinks.
fn ring_decode_specs() -> Vec<Spec> {
    vec![
        spec(4, 2, 64, sliding(37, 4096), 1000, 1),
        spec(4, 1, 64, sliding(37, 4096), 1000, 1).visible(),
        spec(4, 2, 16, sliding(8, 4096), 77, 1),
        spec(4, 2, 16, sliding(8, 4096), 5, 1), // before the window fills
        spec(4, 1, 128, sliding(100, 4096), 3000, 1),
        // Windows longer than a decode piece: the ring's visible keys are split.
        spec(4, 2, 64, sliding(300, 8192), 3000, 1),
        spec(4, 1, 64, sliding(300, 8192), 2999, 1).visible(),
        spec(4, 2, 16, streaming(1, 5), 100, 1),
        spec(4, 2, 16, streaming(1, 5), 3, 1), // pos < sinks + window
        spec(4, 1, 64, streaming(4, 37), 2, 1).visible(), // pos < sinks
        spec(4, 1, 64, streaming(4, 37), 3001, 1),
        spec(4, 1, 64, streaming(4, 37), 3001, 1).visible().rot(32),
        spec(4, 2, 128, streaming(2, 100), 60, 1),
        spec(4, 2, 128, streaming(2, 100), 3000, 1).rot(64),
        spec(4, 2, 64, streaming(4, 500), 2999, 1),
        spec(4, 1, 64, streaming(4, 500), 5000, 1).visible(),
    ]
}

/// A pattern's name, the pattern (None: `BlockMask::dense_causal`), and (heads, kv_heads, hd).
type SparseKind = (&'static str, Option<SparsePattern>, (usize, usize, usize));

/// The block-sparse patterns, each with the head layout it runs with.
fn sparse_patterns() -> Vec<SparseKind> {
    let p = |local, dilation, global, random, seed| SparsePattern {
        local,
        dilation,
        global,
        random,
        seed,
    };
    vec![
        ("local=2", Some(p(2, 1, 0, 0, 0)), (4, 2, 64)),
        ("local=2,global=1", Some(p(2, 1, 1, 0, 0)), (4, 1, 16)),
        (
            "local=1,random=2,seed=7",
            Some(p(1, 1, 0, 2, 7)),
            (4, 2, 128),
        ),
        ("local=3,dilation=2", Some(p(3, 2, 0, 0, 0)), (4, 2, 64)),
        ("dense_causal", None, (4, 1, 64)),
    ]
}

/// A block-sparse case: its pattern's name, its spec and its seed.
type SparseCase = (&'static str, Spec, u64);

/// Every block-sparse case, for prefill, then for decode.
fn sparse_specs() -> (Vec<SparseCase>, Vec<SparseCase>) {
    let layout = KvLayout::linear(SPARSE_CAPACITY);
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let (mut p_seed, mut d_seed) = (5000, 6000);
    for (name, pattern, (heads, kv_heads, hd)) in sparse_patterns() {
        let base = Spec {
            sparse: Some(pattern),
            ..spec(heads, kv_heads, hd, layout, 0, 1)
        };
        for (pos, t, fill) in [
            (0, 100, Fill::History),
            (70, 100, Fill::Visible),
            (130, 170, Fill::History),
            (130, 170, Fill::Visible),
        ] {
            p_seed += 1;
            prefill.push((
                name,
                Spec {
                    pos,
                    t,
                    fill,
                    ..base
                },
                p_seed,
            ));
        }
        // Mid-block, at a block's last key, and at the cache's last row. Mid-block, the
        // diagonal block lists keys past pos: unwritten rows (NaN) and, at pos 299, rows past
        // the end of the 300-row cache; their zero weights must never meet those rows.
        for pos in [0, 69, 130, 255, 299] {
            for fill in [Fill::History, Fill::Visible] {
                d_seed += 1;
                decode.push((name, Spec { pos, fill, ..base }, d_seed));
            }
        }
    }
    (prefill, decode)
}

pub fn prefill() -> Vec<Case> {
    let mut cases = Vec::new();
    // Linear caches, causal (rows past the sequence NaN) and bidirectional (every row of
    // the cache seen, so it ends with the sequence). (heads, kv_heads, head_dim, T, pos,
    // causal, in the browser)
    let linear = [
        (4, 2, 16, 29, 0, true, true),
        (4, 2, 16, 29, 40, true, false),
        (4, 1, 64, 29, 0, true, false),
        (4, 1, 64, 29, 45, true, true),
        (4, 2, 64, 70, 13, true, true), // two query blocks of 64
        (2, 2, 128, 29, 20, true, false),
        (3, 3, 16, 1, 9, true, true), // one query (prefill of a single token)
        (4, 2, 16, 29, 0, false, false),
        (4, 1, 64, 70, 0, false, false),
        (4, 2, 64, 29, 10, false, false),
    ];
    for (i, (h, kvh, hd, t, pos, causal, browser)) in linear.into_iter().enumerate() {
        let capacity = pos + t + if causal { 3 } else { 0 };
        let c = Spec {
            causal,
            ..spec(h, kvh, hd, KvLayout::linear(capacity), pos, t)
        };
        cases.push(prefill_case(c, 1100 + i as u64, 2, false).browser(browser));
    }
    for (i, c) in ring_prefill_specs().into_iter().enumerate() {
        cases.push(prefill_case(c, 2000 + i as u64, 2, false));
    }
    for (_, c, seed) in sparse_specs().0 {
        cases.push(prefill_case(c, seed, 2, false));
    }
    // Soft-capped scores (Gemma 2): caps below the scores' spread (queries are scaled by 3),
    // so tanh saturates for some keys; a sliding window as Gemma 2's local layers.
    for (i, c) in softcap_specs(29).into_iter().enumerate() {
        cases.push(prefill_case(c, 4100 + i as u64, 2, false));
    }
    // Queries that each see 1000-3000 keys: the row-wise kernel, and the tiled one within
    // the key count `attention::tiled_fits` allows on CPU adapters (llvmpipe ends an
    // invocation after 65535 loop iterations).
    for (i, (pos, t, hd)) in [(1000, 24, 64), (2950, 20, 128)].into_iter().enumerate() {
        let c = spec(4, 2, hd, KvLayout::linear(pos + t + 5), pos, t);
        cases.push(prefill_case(c, 4000 + i as u64, 3, true));
    }
    cases
}

pub fn decode() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 1200;
    for len in [1, 37, 300] {
        // Query heads per KV head 2, 4, 1, 2, then SmolLM2's 3, Qwen2.5-0.5B's 7 and 8 (each a
        // workgroup's whole group, decode_attention::group).
        for (h, kvh, hd) in [
            (4, 2, 16),
            (4, 1, 64),
            (2, 2, 128),
            (6, 3, 64),
            (9, 3, 64),
            (14, 2, 64),
            (16, 2, 128),
        ] {
            seed += 1;
            let browser = matches!(
                (len, h, kvh, hd),
                (1, 4, 2, 16) | (37, 4, 1, 64) | (300, 6, 3, 64)
            );
            let c = spec(h, kvh, hd, KvLayout::linear(len + 5), len - 1, 1);
            cases.push(decode_case(c, seed).browser(browser));
        }
    }
    let lens = [1, 2, 63, 64, 255, 256, 257, 1000, 3000, 5000, 8500];
    for (i, len) in lens.into_iter().enumerate() {
        // GQA in a cache just long enough; MQA in a session-sized cache of 9000 rows, whose
        // max_splits_for (32, the most) leaves most pieces empty for short sequences.
        for (heads, kv_heads, hd, capacity) in [(4, 2, 64, len + 3), (4, 1, 128, 9000)] {
            let c = spec(heads, kv_heads, hd, KvLayout::linear(capacity), len - 1, 1);
            cases.push(decode_case(c, 3000 + 2 * i as u64 + kv_heads as u64));
        }
    }
    for (i, c) in ring_decode_specs().into_iter().enumerate() {
        cases.push(decode_case(c, 4000 + i as u64));
    }
    for (_, c, seed) in sparse_specs().1 {
        cases.push(decode_case(c, seed));
    }
    for (i, c) in softcap_specs(1).into_iter().enumerate() {
        cases.push(decode_case(c, 4200 + i as u64));
    }
    cases
}

/// Soft-capped attention over `t` queries: a linear cache and a sliding window.
fn softcap_specs(t: usize) -> Vec<Spec> {
    vec![
        spec(4, 2, 16, KvLayout::linear(300), 40, t).softcap(2.0),
        // At most the ring's chunk of queries.
        spec(4, 1, 64, sliding(8, 4096), 77, t.min(8)).softcap(5.0),
    ]
}

pub fn cache_write() -> Vec<Case> {
    // (layout, width, pos, T)
    let specs = [
        (KvLayout::linear(50), 37, 7, 13),
        (KvLayout::linear(50), 64, 0, 50),
        (sliding(8, 4096), 32, 29, 8), // rows 13, 14, 15, 0..5 of 16
        (sliding(8, 4096), 37, 1003, 3),
        (sliding(37, 4096), 128, 1000, 29),
        (sliding(37, 60), 48, 40, 20), // no ring: the last rows of the cache
        (streaming(3, 10), 16, 1, 10), // positions 1, 2 in sink rows, then the ring
        (streaming(2, 5), 64, 103, 5),
        (streaming(4, 37), 64, 0, 37),
    ];
    let mut cases = Vec::new();
    for (i, (layout, width, pos, t)) in specs.into_iter().enumerate() {
        let what = format!("{layout:?} width={width} pos={pos} T={t}");
        let seed = 7000 + i as u64;
        cases.push(Case::new("cache_write", what, move |gpu| {
            if layout.max_chunk.is_some_and(|chunk| t > chunk) {
                return Err(bad_case(format!("{t} rows exceed the ring's chunk")));
            }
            let written: BTreeSet<usize> = (pos..pos + t).map(|j| layout.row(j)).collect();
            if written.len() != t || (written.len() == layout.rows && layout.rows != t) {
                return Err(bad_case("rows collide, or none is left untouched".into()));
            }
            let src = Rng::new(seed).vec(t * width, 1.0);
            let (sb, cache) = (upload_f32(gpu, &src), poisoned(gpu, layout.rows * width));
            let stb = step_buffer(gpu, &step(pos as u32, t as u32));
            let d = cache_write::launch(gpu, &stb, &sb, &cache, layout, t, width)?;
            // Rows not written stay NaN, bit for bit.
            let mut want = vec![f32::NAN; layout.rows * width];
            cache_write::reference(&src, &mut want, layout, pos, width);
            Ok(Prepared::new(
                gpu,
                vec![d],
                vec![Output::bits("", &cache, want)],
            ))
        }));
    }
    cases
}

/// How many ring prefill and ring decode cases leave stale rows (evicted positions' keys)
/// in the cache: the cases must include enough of them to catch a kernel reading one.
pub fn ring_stale_cases() -> Result<(usize, usize)> {
    let count = |specs: Vec<Spec>, seed: u64| -> Result<usize> {
        let mut n = 0;
        for (i, c) in specs.iter().enumerate() {
            n += (Scene::new(c, seed + i as u64)?.stale_rows > 0) as usize;
        }
        Ok(n)
    };
    Ok((
        count(ring_prefill_specs(), 2000)?,
        count(ring_decode_specs(), 4000)?,
    ))
}

/// What the block-sparse cases of one pattern exercise, on the CPU.
pub struct SparseScene {
    pub pattern: &'static str,
    pub dense: bool,
    /// (head, query, earlier key) pairs the mask drops, over all cases of the pattern.
    pub dropped: usize,
    /// Whether heads get different masks (in the last query block of the first case).
    pub heads_differ: bool,
    /// Whether each case's reference equals dense causal attention's, bit for bit.
    pub same_as_dense: bool,
}

/// The block-sparse cases' scenes, per pattern.
pub fn sparse_scenes() -> Result<Vec<SparseScene>> {
    let (prefill, decode) = sparse_specs();
    let mut out: Vec<SparseScene> = Vec::new();
    for (name, c, seed) in prefill.into_iter().chain(decode) {
        let s = Scene::new(&c, seed)?;
        let mask = s.mask.as_ref().ok_or_else(|| bad_case("no mask".into()))?;
        let last = mask_blocks(c.layout.rows) - 1;
        let heads_differ = (1..c.heads).any(|h| mask.row(h, last) != mask.row(0, last));
        let dense = Scene {
            mask: None,
            ..Scene::new(&c, seed)?
        };
        let same = s
            .reference()
            .iter()
            .zip(dense.reference())
            .all(|(a, b)| a.to_bits() == b.to_bits());
        match out.iter_mut().find(|p| p.pattern == name) {
            Some(p) => {
                p.dropped += s.dropped;
                p.same_as_dense &= same;
            }
            None => out.push(SparseScene {
                pattern: name,
                dense: c.sparse == Some(None),
                dropped: s.dropped,
                heads_differ,
                same_as_dense: same,
            }),
        }
    }
    Ok(out)
}

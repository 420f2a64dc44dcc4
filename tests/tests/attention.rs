//! The attention family over every KV layout, against `attention::reference` on every backend
//! of `kestrel_tests::gpus()`:
//! * prefill (`attention`) over sliding-window rings and StreamingLLM sinks (in-attention RoPE,
//!   full and partial rotation), with caches filled chunk by chunk as a session fills them;
//! * decode (`decode_attention`, split-K) over linear caches of many lengths, split and unsplit,
//!   and over rings far past their size;
//! * block-sparse prefill and decode for every kind of `SparsePattern`;
//! * `cache_write` against its reference, rows it must not touch staying poisoned;
//! * the graph builder rejecting layouts and inputs that do not fit together.
//!
//! Cache rows no query of a case may read hold NaN (a kernel that reads one produces NaN), or,
//! where the whole history was written, the stale keys of evicted positions (a kernel that
//! reads one gives a wrong, finite result).
//!
//! Tolerances as in kernels.rs: `ATTN_TOL` = 1e-5 relative error against the f64 reference
//! (f32 dot products of head_dim terms, f32 exp, one online-softmax rescale per key or tile,
//! and with in-attention RoPE the GPU's sin/cos of f32 angles), `BACKEND_TOL` = 1e-5 between
//! backends and between split and unsplit decode (the same terms summed in another order).

use std::collections::BTreeSet;
use std::sync::Arc;

use kestrel_runtime::block_mask::{BlockMask, SparsePattern};
use kestrel_runtime::kernels::attention::{self, mask_blocks, AttnBuffers, AttnShape, CacheView};
use kestrel_runtime::kernels::{cache_write, decode_attention, rope};
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::rng::Rng;
use kestrel_runtime::{DType, Error, Gpu, Graph};
use kestrel_tests::*;

const ATTN_TOL: f64 = 1e-5;
const BACKEND_TOL: f64 = 1e-5;
const THETA: f64 = 10000.0;

// ---------------------------------------------------------------- cases and host data

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
struct Case {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    layout: KvLayout,
    pos: usize,
    t: usize,
    fill: Fill,
    /// Rotated dims per head when the layout rotates keys in attention.
    rot_dims: usize,
}

fn case(heads: usize, kv_heads: usize, hd: usize, layout: KvLayout, pos: usize, t: usize) -> Case {
    Case {
        heads,
        kv_heads,
        hd,
        layout,
        pos,
        t,
        fill: Fill::History,
        rot_dims: hd,
    }
}

impl Case {
    fn visible(self) -> Case {
        Case {
            fill: Fill::Visible,
            ..self
        }
    }

    fn rot(self, rot_dims: usize) -> Case {
        Case { rot_dims, ..self }
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
        format!(
            "heads={}/{} hd={} {kind} pos={} T={} fill={:?}",
            self.heads, self.kv_heads, self.hd, self.pos, self.t, self.fill
        )
    }
}

/// The host side of a case: queries, caches as the session left them, RoPE frequencies and
/// block mask where the case uses them.
struct Scene {
    shape: AttnShape,
    layout: KvLayout,
    pos: usize,
    t: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    inv_freq: Option<Vec<f32>>,
    mask: Option<BlockMask>,
    /// Rows holding a written position that no query of the chunk sees.
    stale_rows: usize,
}

/// Every position some query at `pos..pos + t` sees.
fn needed_positions(layout: &KvLayout, pos: usize, t: usize) -> BTreeSet<usize> {
    (pos..pos + t)
        .flat_map(|p| layout.visible_positions(p))
        .collect()
}

fn scene(c: &Case, seed: u64) -> Scene {
    let (layout, width, end) = (c.layout, c.kv_heads * c.hd, c.pos + c.t);
    match layout.max_chunk {
        Some(chunk) => assert!(c.t <= chunk, "{}: chunk exceeds {chunk}", c.describe()),
        None => assert!(end <= layout.rows, "{}: past the cache", c.describe()),
    }
    let shape = AttnShape {
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
    match c.fill {
        Fill::History => {
            let chunk = layout.max_chunk.unwrap_or(c.pos.max(1));
            for from in (0..c.pos).step_by(chunk) {
                write(from, (from + chunk).min(c.pos));
            }
            write(c.pos, end);
        }
        Fill::Visible => {
            for &j in &needed {
                write(j, j + 1);
            }
        }
    }
    let stale_rows = owner
        .iter()
        .filter(|o| o.is_some_and(|j| !needed.contains(&j)))
        .count();
    if c.fill == Fill::History && end > layout.rows {
        // Every row was written and the ring has wrapped: some row must hold an evicted key.
        assert!(stale_rows > 0, "{}: no stale row", c.describe());
    }
    Scene {
        shape,
        layout,
        pos: c.pos,
        t: c.t,
        q,
        k,
        v,
        inv_freq: layout
            .rope_in_attention
            .then(|| rope::inv_freq(THETA, c.rot_dims, None)),
        mask: None,
        stale_rows,
    }
}

impl Scene {
    fn reference(&self) -> Vec<f32> {
        let cache = CacheView {
            k: &self.k,
            v: &self.v,
            layout: self.layout,
        };
        attention::reference(
            &self.q,
            cache,
            self.shape,
            self.pos,
            true,
            self.inv_freq.as_deref(),
            self.mask.as_ref(),
        )
    }
}

/// The scene's buffers on one GPU, the output poisoned.
struct Bound {
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    out: wgpu::Buffer,
    inv_freq: Option<wgpu::Buffer>,
    mask: Option<wgpu::Buffer>,
    step: wgpu::Buffer,
}

impl Bound {
    fn new(gpu: &Gpu, s: &Scene) -> Bound {
        Bound {
            q: upload_f32(gpu, &s.q),
            k: upload_f32(gpu, &s.k),
            v: upload_f32(gpu, &s.v),
            out: poisoned(gpu, s.q.len()),
            inv_freq: s.inv_freq.as_ref().map(|f| upload_f32(gpu, f)),
            mask: s.mask.as_ref().map(|m| upload_u32(gpu, &m.to_words())),
            step: step_buffer(gpu, &step(s.pos as u32, s.t as u32)),
        }
    }

    fn io<'a>(&'a self, s: &Scene) -> AttnBuffers<'a> {
        AttnBuffers {
            q: &self.q,
            k_cache: &self.k,
            v_cache: &self.v,
            out: &self.out,
            inv_freq: self
                .inv_freq
                .as_ref()
                .zip(s.inv_freq.as_ref())
                .map(|(b, f)| (b, f.len())),
            mask: self.mask.as_ref().map(|b| (b, mask_blocks(s.layout.rows))),
        }
    }
}

/// Prefill attention of the scene's chunk on `gpu`.
fn prefill_gpu(gpu: &Arc<Gpu>, s: &Scene) -> Vec<f32> {
    let b = Bound::new(gpu, s);
    let d = attention::launch(gpu, &b.step, &b.io(s), s.shape, s.layout, s.t, true).unwrap();
    run(gpu, &[d]);
    read(gpu, &b.out, s.q.len())
}

/// Decode attention of the scene's queries (one in decode; several for the row-wise prefill
/// path) on `gpu` with up to `max_splits` pieces.
fn decode_gpu(gpu: &Arc<Gpu>, s: &Scene, max_splits: usize) -> Vec<f32> {
    let b = Bound::new(gpu, s);
    let partial = poisoned(
        gpu,
        decode_attention::partial_floats(&s.shape, max_splits, s.t),
    );
    let d = decode_attention::launch(
        gpu,
        &b.step,
        &b.io(s),
        &partial,
        s.shape,
        s.layout,
        max_splits,
        s.t,
        true,
    )
    .unwrap();
    run(gpu, &d);
    read(gpu, &b.out, s.q.len())
}

/// Prefill on every backend against the reference; the backends' outputs must agree too.
fn check_prefill(what: &str, s: &Scene, reference: &[f32]) -> Vec<(String, Vec<f32>)> {
    let outs: Vec<_> = gpus()
        .iter()
        .map(|g| {
            let out = prefill_gpu(g, s);
            assert_close(
                &format!("{what} on {}", g.backend_name()),
                &out,
                reference,
                ATTN_TOL,
            );
            // The row-wise path (one workgroup per query, as CPU adapters prefill), unsplit
            // and split in two.
            for splits in [1, 2] {
                assert_close(
                    &format!("{what} row-wise in {splits} on {}", g.backend_name()),
                    &decode_gpu(g, s, splits),
                    reference,
                    ATTN_TOL,
                );
            }
            (g.backend_name(), out)
        })
        .collect();
    assert_backends_agree(what, &outs, BACKEND_TOL);
    outs
}

/// Decode on every backend with `max_splits` pieces and unsplit, each against the reference
/// and against each other.
fn check_decode(what: &str, s: &Scene, reference: &[f32], max_splits: usize) {
    let outs: Vec<_> = gpus()
        .iter()
        .map(|g| {
            let name = g.backend_name();
            let split = decode_gpu(g, s, max_splits);
            let single = decode_gpu(g, s, 1);
            assert_close(
                &format!("{what} max_splits={max_splits} on {name}"),
                &split,
                reference,
                ATTN_TOL,
            );
            assert_close(
                &format!("{what} max_splits=1 on {name}"),
                &single,
                reference,
                ATTN_TOL,
            );
            assert_close(
                &format!("{what} max_splits={max_splits} vs 1 on {name}"),
                &split,
                &single,
                BACKEND_TOL,
            );
            (name, split)
        })
        .collect();
    assert_backends_agree(what, &outs, BACKEND_TOL);
}

fn sliding(window: usize, capacity: usize) -> KvLayout {
    KvLayout::sliding(window, capacity).unwrap()
}

fn streaming(sinks: usize, window: usize) -> KvLayout {
    KvLayout::streaming(sinks, window).unwrap()
}

// ---------------------------------------------------------------- prefill over rings

fn ring_cases() -> Vec<Case> {
    vec![
        // Sliding windows; rings of window + chunk rows (16, 74, 200) that have wrapped.
        case(4, 2, 16, sliding(8, 4096), 301, 5),
        case(4, 2, 16, sliding(8, 4096), 77, 8), // a full chunk: one stale row left
        case(4, 1, 16, sliding(8, 4096), 1001, 1).visible(),
        case(4, 1, 64, sliding(37, 4096), 130, 29),
        case(4, 1, 64, sliding(37, 4096), 1000, 5).visible(),
        case(4, 2, 64, sliding(37, 4096), 3, 29), // before the window fills
        case(4, 2, 64, sliding(37, 4096), 2990, 37).visible(),
        case(4, 2, 128, sliding(100, 4096), 450, 70),
        case(4, 1, 128, sliding(100, 4096), 199, 1).visible(),
        case(4, 2, 128, sliding(100, 4096), 0, 70),
        case(4, 2, 16, sliding(100, 4096), 3001, 100).visible(), // two query blocks
        // A window shorter than a cache too small to need a ring: one row per position.
        case(4, 2, 64, sliding(37, 60), 10, 29),
        case(4, 1, 16, sliding(37, 60), 0, 60).visible(),
        // StreamingLLM in the transition region (pos < sinks + window) ...
        case(4, 2, 16, streaming(1, 5), 0, 5),
        case(4, 2, 16, streaming(1, 5), 2, 5),
        case(4, 1, 64, streaming(4, 37), 20, 29),
        case(4, 1, 64, streaming(4, 37), 1, 29).visible(),
        case(4, 2, 128, streaming(2, 100), 50, 70),
        case(4, 2, 64, streaming(3, 64), 30, 64).rot(32),
        // ... and far beyond it.
        case(4, 2, 16, streaming(1, 5), 3001, 5).visible(),
        case(4, 2, 16, streaming(1, 5), 2999, 3),
        case(4, 1, 64, streaming(4, 37), 2999, 29),
        case(4, 1, 64, streaming(4, 37), 3001, 1).visible().rot(32),
        case(4, 2, 128, streaming(2, 100), 3000, 70).visible(),
        case(4, 2, 128, streaming(2, 100), 3003, 100).rot(64),
        case(4, 1, 16, streaming(3, 64), 3030, 64).rot(8),
    ]
}

#[test]
fn prefill_over_ring_layouts() {
    let cases = ring_cases();
    let mut stale_cases = 0;
    for (i, c) in cases.iter().enumerate() {
        let s = scene(c, 2000 + i as u64);
        stale_cases += (s.stale_rows > 0) as usize;
        let what = format!(
            "prefill case {i}: {} ({} stale rows)",
            c.describe(),
            s.stale_rows
        );
        check_prefill(&what, &s, &s.reference());
    }
    assert!(
        stale_cases >= 8,
        "only {stale_cases} cases with stale ring rows"
    );
}

// ---------------------------------------------------------------- decode

#[test]
fn decode_split_k_over_linear_caches() {
    let lens = [1, 2, 63, 64, 255, 256, 257, 1000, 3000, 5000, 8500];
    for (i, &len) in lens.iter().enumerate() {
        // GQA in a cache just long enough; MQA in a session-sized cache of 9000 rows, whose
        // max_splits_for (32, the most) leaves most pieces empty for short sequences.
        for (heads, kv_heads, hd, capacity) in [(4, 2, 64, len + 3), (4, 1, 128, 9000)] {
            let c = case(heads, kv_heads, hd, KvLayout::linear(capacity), len - 1, 1);
            let s = scene(&c, 3000 + 2 * i as u64 + kv_heads as u64);
            let splits = decode_attention::max_splits_for(capacity);
            check_decode(
                &format!("decode len={len}: {}", c.describe()),
                &s,
                &s.reference(),
                splits,
            );
        }
    }
}

#[test]
fn decode_over_ring_layouts() {
    let cases = [
        case(4, 2, 64, sliding(37, 4096), 1000, 1),
        case(4, 1, 64, sliding(37, 4096), 1000, 1).visible(),
        case(4, 2, 16, sliding(8, 4096), 77, 1),
        case(4, 2, 16, sliding(8, 4096), 5, 1), // before the window fills
        case(4, 1, 128, sliding(100, 4096), 3000, 1),
        // Windows longer than a decode piece: the ring's visible keys are split.
        case(4, 2, 64, sliding(300, 8192), 3000, 1),
        case(4, 1, 64, sliding(300, 8192), 2999, 1).visible(),
        case(4, 2, 16, streaming(1, 5), 100, 1),
        case(4, 2, 16, streaming(1, 5), 3, 1), // pos < sinks + window
        case(4, 1, 64, streaming(4, 37), 2, 1).visible(), // pos < sinks
        case(4, 1, 64, streaming(4, 37), 3001, 1),
        case(4, 1, 64, streaming(4, 37), 3001, 1).visible().rot(32),
        case(4, 2, 128, streaming(2, 100), 60, 1),
        case(4, 2, 128, streaming(2, 100), 3000, 1).rot(64),
        case(4, 2, 64, streaming(4, 500), 2999, 1),
        case(4, 1, 64, streaming(4, 500), 5000, 1).visible(),
    ];
    let mut stale_cases = 0;
    for (i, c) in cases.iter().enumerate() {
        let s = scene(c, 4000 + i as u64);
        stale_cases += (s.stale_rows > 0) as usize;
        let splits = decode_attention::max_splits_for(c.layout.rows);
        let what = format!(
            "decode case {i}: {} ({} stale rows)",
            c.describe(),
            s.stale_rows
        );
        check_decode(&what, &s, &s.reference(), splits);
    }
    assert!(
        stale_cases >= 6,
        "only {stale_cases} cases with stale ring rows"
    );
}

// ---------------------------------------------------------------- block-sparse

/// A pattern's name, the pattern (None: `BlockMask::dense_causal`), and (heads, kv_heads, hd).
type SparseCase = (&'static str, Option<SparsePattern>, (usize, usize, usize));

/// The block-sparse patterns under test, each with the head layout it runs with.
fn sparse_patterns() -> Vec<SparseCase> {
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

const SPARSE_CAPACITY: usize = 300; // 5 blocks of 64, the last one partial

/// The scene of a case with the block mask of `pattern` (None: dense causal), and how many
/// (head, query, earlier key) pairs the mask drops. `Fill::Visible` here poisons, per KV head,
/// every cache row none of its query heads may see under the mask.
fn sparse_scene(name: &str, pattern: Option<SparsePattern>, c: &Case, seed: u64) -> (Scene, usize) {
    assert_eq!(c.layout, KvLayout::linear(c.layout.rows));
    let mut s = scene(
        &Case {
            fill: Fill::History,
            ..*c
        },
        seed,
    );
    let blocks = mask_blocks(c.layout.rows);
    let mask = match pattern {
        Some(p) => BlockMask::causal(&p, c.heads, blocks, 3),
        None => BlockMask::dense_causal(c.heads, blocks),
    };
    if name.contains("dilation") || name.contains("random") {
        let last = blocks - 1;
        assert!(
            (1..c.heads).any(|h| mask.row(h, last) != mask.row(0, last)),
            "{name}: heads should differ"
        );
    }
    let (end, group) = (c.pos + c.t, c.heads / c.kv_heads);
    let mut dropped = 0;
    for g in 0..c.kv_heads {
        let mut needed = vec![false; end];
        for h in g * group..(g + 1) * group {
            for p in c.pos..end {
                for (j, need) in needed.iter_mut().enumerate().take(p + 1) {
                    let allowed = mask.allows(h, p, j);
                    *need |= allowed;
                    dropped += !allowed as usize;
                }
            }
        }
        if c.fill == Fill::Visible {
            for j in (0..end).filter(|&j| !needed[j]) {
                let at = (j * c.kv_heads + g) * c.hd..(j * c.kv_heads + g + 1) * c.hd;
                s.k[at.clone()].fill(f32::NAN);
                s.v[at].fill(f32::NAN);
            }
        }
    }
    s.mask = Some(mask);
    (s, dropped)
}

#[test]
fn block_sparse_prefill() {
    let layout = KvLayout::linear(SPARSE_CAPACITY);
    let mut seed = 5000;
    for (name, pattern, (heads, kv_heads, hd)) in sparse_patterns() {
        let mut dropped = 0;
        for (pos, t, fill) in [
            (0, 100, Fill::History),
            (70, 100, Fill::Visible),
            (130, 170, Fill::History),
            (130, 170, Fill::Visible),
        ] {
            seed += 1;
            let c = Case {
                fill,
                ..case(heads, kv_heads, hd, layout, pos, t)
            };
            let (s, d) = sparse_scene(name, pattern, &c, seed);
            dropped += d;
            let what = format!("sparse prefill {name}: {}", c.describe());
            let reference = s.reference();
            let outs = check_prefill(&what, &s, &reference);
            if pattern.is_none() {
                // The dense causal mask is dense causal attention: same reference, and the
                // GPU's mask path agrees with its dense path.
                let dense = Scene { mask: None, ..s };
                assert_same_bits(
                    &format!("{what}: references"),
                    &reference,
                    &dense.reference(),
                );
                for (g, (name, masked)) in gpus().iter().zip(&outs) {
                    let plain = prefill_gpu(g, &dense);
                    assert_close(
                        &format!("{what}: mask vs dense on {name}"),
                        masked,
                        &plain,
                        BACKEND_TOL,
                    );
                }
            }
        }
        assert_eq!(
            dropped == 0,
            pattern.is_none(),
            "{name}: {dropped} keys dropped"
        );
    }
}

#[test]
fn block_sparse_decode() {
    let layout = KvLayout::linear(SPARSE_CAPACITY);
    let mut seed = 6000;
    for (name, pattern, (heads, kv_heads, hd)) in sparse_patterns() {
        // Mid-block, at a block's last key, and at the cache's last row. Mid-block, the
        // diagonal block lists keys past pos: unwritten rows (NaN) and, at pos 299, rows past
        // the end of the 300-row cache; their zero weights must never meet those rows.
        let mut dropped = 0;
        for pos in [0, 69, 130, 255, 299] {
            for fill in [Fill::History, Fill::Visible] {
                seed += 1;
                let c = Case {
                    fill,
                    ..case(heads, kv_heads, hd, layout, pos, 1)
                };
                let (s, d) = sparse_scene(name, pattern, &c, seed);
                dropped += d;
                let reference = s.reference();
                let what = format!("sparse decode {name}: {}", c.describe());
                check_decode(
                    &what,
                    &s,
                    &reference,
                    decode_attention::max_splits_for(layout.rows),
                );
                if pattern.is_none() {
                    let dense = Scene { mask: None, ..s };
                    assert_same_bits(
                        &format!("{what}: references"),
                        &reference,
                        &dense.reference(),
                    );
                }
            }
        }
        assert_eq!(
            dropped == 0,
            pattern.is_none(),
            "{name}: {dropped} keys dropped"
        );
    }
}

// ---------------------------------------------------------------- cache_write

#[test]
fn cache_write_matches_reference() {
    // (layout, width, pos, T)
    let cases = [
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
    for gpu in gpus() {
        for (i, &(layout, width, pos, t)) in cases.iter().enumerate() {
            if let Some(chunk) = layout.max_chunk {
                assert!(t <= chunk);
            }
            let mut rng = Rng::new(7000 + i as u64);
            let src = rng.vec(t * width, 1.0);
            let (sb, cache) = (upload_f32(&gpu, &src), poisoned(&gpu, layout.rows * width));
            let stb = step_buffer(&gpu, &step(pos as u32, t as u32));
            let d = cache_write::launch(&gpu, &stb, &sb, &cache, layout, t, width).unwrap();
            run(&gpu, &[d]);
            let got = read(&gpu, &cache, layout.rows * width);
            let mut reference = vec![f32::NAN; layout.rows * width];
            cache_write::reference(&src, &mut reference, layout, pos, width);
            let what = format!(
                "cache_write {layout:?} width={width} pos={pos} T={t} on {}",
                gpu.backend_name()
            );
            let written: BTreeSet<usize> = (pos..pos + t).map(|j| layout.row(j)).collect();
            assert_eq!(written.len(), t, "{what}: rows collide");
            let untouched: Vec<usize> = (0..layout.rows).filter(|r| !written.contains(r)).collect();
            for &r in &untouched {
                let row = &got[r * width..][..width];
                assert!(
                    row.iter().all(|x| x.to_bits() == f32::NAN.to_bits()),
                    "{what}: row {r} (not written) was changed"
                );
            }
            assert_same_bits(&what, &got, &reference);
            assert!(
                !untouched.is_empty() || layout.rows == t,
                "{what}: the case leaves no row untouched"
            );
        }
    }
}

// ---------------------------------------------------------------- graph checks

/// Panic unless `r` is a graph error.
fn rejected<T>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Graph(msg)) => eprintln!("{what}: rejected: {msg}"),
        Err(e) => panic!("{what}: expected a graph error, got {e}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn graph_rejects_mismatched_attention_modes() {
    let (heads, kv_heads, hd) = (4, 2, 64);
    let shape = AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        scale: 0.125,
    };
    let kvw = kv_heads * hd;
    // A graph with queries of `t` rows, caches for `layout`, and optional inv_freq / mask.
    let build = |layout: KvLayout, t: usize, rope_half: Option<usize>, mask: bool| {
        let mut g = Graph::new();
        let q = g.input("q", &[t, heads * hd], DType::F32);
        let k = g.state("k", &[layout.rows, kvw]);
        let v = g.state("v", &[layout.rows, kvw]);
        let f = rope_half.map(|h| g.input("inv_freq", &[h], DType::F32));
        let m = mask.then(|| {
            let blocks = mask_blocks(layout.rows);
            g.block_mask(&BlockMask::dense_causal(heads, blocks))
        });
        (g, q, k, v, f, m)
    };
    let attend = |layout: KvLayout, causal: bool, rope_half: Option<usize>, mask: bool| {
        let (mut g, q, k, v, f, m) = build(layout, 5, rope_half, mask);
        g.attention(q, k, v, shape, causal, layout, f, m)
    };
    let linear = KvLayout::linear(300);
    let ring = sliding(37, 4096);
    let sinks = streaming(4, 37);
    let half = Some(hd / 2);

    // What fits together is accepted ...
    for (what, layout, causal, rope_half, mask) in [
        ("linear causal", linear, true, None, false),
        ("linear not causal", linear, false, None, false),
        ("linear with mask", linear, true, None, true),
        ("sliding causal", ring, true, None, false),
        ("streaming with inv_freq", sinks, true, half, false),
        (
            "streaming, partial rotation",
            sinks,
            true,
            Some(hd / 4),
            false,
        ),
    ] {
        attend(layout, causal, rope_half, mask).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // ... and what does not is rejected, by the graph and by validate_mode alike.
    for (what, layout, causal, rope_half, mask) in [
        ("streaming without inv_freq", sinks, true, None, false),
        ("inv_freq with a linear layout", linear, true, half, false),
        ("inv_freq with a sliding layout", ring, true, half, false),
        (
            "inv_freq longer than head_dim / 2",
            sinks,
            true,
            Some(hd / 2 + 1),
            false,
        ),
        ("mask with a sliding layout", ring, true, None, true),
        ("mask with a streaming layout", sinks, true, half, true),
        ("mask, not causal", linear, false, None, true),
        ("not causal with a window", ring, false, None, false),
        ("not causal with sinks", sinks, false, half, false),
        (
            "sliding window without a ring, not causal",
            sliding(37, 60),
            false,
            None,
            false,
        ),
    ] {
        rejected(what, attend(layout, causal, rope_half, mask));
        rejected(
            &format!("validate_mode: {what}"),
            attention::validate_mode(&shape, &layout, causal, rope_half, mask),
        );
    }

    // cache_write: up to the ring's chunk, never more.
    for layout in [ring, sinks, sliding(8, 4096)] {
        let chunk = layout.max_chunk.unwrap();
        for (t, ok) in [(1, true), (chunk, true), (chunk + 1, false)] {
            let (mut g, _, k, _, _, _) = build(layout, t, None, false);
            let src = g.input("k_new", &[t, kvw], DType::F32);
            let r = g.cache_write(src, k, layout);
            let what = format!("cache_write of {t} rows into {layout:?}");
            match ok {
                true => r.unwrap_or_else(|e| panic!("{what}: {e}")),
                false => rejected(&what, r),
            }
        }
    }
    // A linear cache takes any chunk.
    let (mut g, _, k, _, _, _) = build(linear, 300, None, false);
    let src = g.input("k_new", &[300, kvw], DType::F32);
    g.cache_write(src, k, linear).unwrap();
}

#[test]
fn prefill_over_long_caches() {
    // Queries that each see 1000-3000 keys: the row-wise kernel, and the tiled one within
    // the key count attention::tiled_fits allows on CPU adapters (llvmpipe ends an
    // invocation after 65535 loop iterations).
    for (i, (pos, t, hd)) in [(1000, 24, 64), (2950, 20, 128)].into_iter().enumerate() {
        let c = case(4, 2, hd, KvLayout::linear(pos + t + 5), pos, t);
        let s = scene(&c, 4000 + i as u64);
        let reference = s.reference();
        for g in gpus() {
            assert!(attention::tiled_fits(&g, hd, pos + t));
            assert_close(
                &format!("tiled prefill {} on {}", c.describe(), g.backend_name()),
                &prefill_gpu(&g, &s),
                &reference,
                ATTN_TOL,
            );
            for splits in [1, 3] {
                assert_close(
                    &format!(
                        "row-wise prefill {} in {splits} on {}",
                        c.describe(),
                        g.backend_name()
                    ),
                    &decode_gpu(&g, &s, splits),
                    &reference,
                    ATTN_TOL,
                );
            }
        }
    }
}

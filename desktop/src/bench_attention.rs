//! `kestrel bench --attention`: kernel-level attention figures on the adapter, no model needed.
//!
//! - Prefill attention over a whole sequence for full causal attention (linear cache), a
//!   sliding window (ring cache, run in the chunks a session cuts a prefill into, one `Step`
//!   uniform per chunk) and a block-sparse pattern, with the 64x64 score blocks each computes,
//!   so time can be set against work: full grows with the square of the length, the other two
//!   linearly.
//! - Decode attention per token over caches of growing length, split-K (flash-decoding) and
//!   with one piece per head.
//! - KV cache bytes of a reference model shape for linear, sliding-window and sink caches.
//!
//! Every timed kernel's output (prefill: the last 64 query rows) is checked against the CPU
//! reference and a figure whose output is wrong is marked so, since its time then measures
//! something other than the attention asked for.

use std::sync::Arc;
use std::time::Instant;

use kestrel_runtime::block_mask::{BlockMask, SparsePattern, BLOCK};
use kestrel_runtime::cases::rel_err;
use kestrel_runtime::kernels::attention::{self, mask_blocks, AttnBuffers, AttnShape, CacheView};
use kestrel_runtime::kernels::{self, decode_attention, Dispatch, Step};
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::readback::read_f32;
use kestrel_runtime::rng::Rng;
use kestrel_runtime::Gpu;
use serde_json::{json, Value};

use crate::stdout::outln;

const HEADS: usize = 8;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const PREFILL_LENS: [usize; 6] = [128, 256, 512, 1024, 2048, 4096];
const DECODE_LENS: [usize; 6] = [256, 512, 1024, 2048, 4096, 8192];
/// Sliding window of the windowed prefill.
const WINDOW: usize = 256;
const PATTERN: SparsePattern = SparsePattern {
    local: 4,
    dilation: 1,
    global: 1,
    random: 1,
    seed: 0,
};
/// Decode steps recorded back to back in one submission, so the figure is the kernels' time
/// rather than the cost of a submission.
const DECODE_REPS: usize = 16;
/// Seconds of timed calls to aim for per figure after the warm-up call.
const BUDGET_S: f64 = 0.5;
/// Relative error against the CPU reference above which a result is flagged wrong (the kernel
/// tests hold these kernels to 1e-5; this leaves room for the longer sums here).
const CHECK_TOL: f64 = 1e-4;
/// Query rows of the last chunk checked against the CPU reference.
const CHECK_ROWS: usize = 64;

/// Reference model shape for the cache sizes: SmolLM2-135M, f32 K and V.
const REF_MODEL: &str = "SmolLM2-135M";
const REF_LAYERS: usize = 30;
const REF_KV_HEADS: usize = 3;
const REF_HEAD_DIM: usize = 64;
const REF_TOKENS: [usize; 3] = [1024, 8192, 65536];

fn shape() -> AttnShape {
    AttnShape {
        softcap: None,
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
    }
}

fn rt(e: kestrel_runtime::Error) -> String {
    e.to_string()
}

/// Seconds per call of `f` (which submits GPU work) and the calls timed: after an untimed
/// warm-up call when `warm_up`, calls one after another until `BUDGET_S` has passed or
/// `max_iters` calls are done (at least one).
fn time_adaptive(
    gpu: &Gpu,
    warm_up: bool,
    max_iters: usize,
    mut f: impl FnMut(),
) -> Result<(f64, usize), String> {
    let wait = || gpu.wait().map_err(|e| e.to_string());
    if warm_up {
        f();
        wait()?;
    }
    let t = Instant::now();
    let mut iters = 0;
    while iters < max_iters.max(1) {
        f();
        wait()?;
        iters += 1;
        if t.elapsed().as_secs_f64() >= BUDGET_S {
            break;
        }
    }
    Ok((t.elapsed().as_secs_f64() / iters as f64, iters))
}

/// `floats` random values in [-1, 1).
fn random(floats: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).vec(floats.max(1), 1.0)
}

/// Longest sequence the forced row-wise comparison runs.
const ROWWISE_MAX_LEN: usize = 1024;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Full,
    /// Full attention through the row-wise kernel (one workgroup per query), which the
    /// executor takes where the tiled one does not fit.
    FullRowwise,
    Window,
    Sparse,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::FullRowwise => "rowwise",
            Kind::Window => "window",
            Kind::Sparse => "sparse",
        }
    }
}

struct Prefill {
    secs: f64,
    iters: usize,
    chunks: usize,
    /// 64x64 score blocks at or below the diagonal the kind computes, over all heads.
    blocks: usize,
    /// Relative error of the last `CHECK_ROWS` query rows against the CPU reference.
    err: f64,
}

/// Causal 64x64 blocks a query block sees under a window of `WINDOW` positions, all heads.
fn window_blocks(len: usize) -> usize {
    let per_head: usize = (0..mask_blocks(len))
        .map(|qb| {
            let lo = (qb * BLOCK + 1).saturating_sub(WINDOW) / BLOCK;
            qb - lo + 1
        })
        .sum();
    HEADS * per_head
}

/// Time the prefill attention of `kind` over `len` tokens; `warm_up` first runs it untimed.
fn prefill(gpu: &Arc<Gpu>, kind: Kind, len: usize, warm_up: bool) -> Result<Prefill, String> {
    let shape = shape();
    let (layout, mask) = match kind {
        Kind::Full | Kind::FullRowwise => (KvLayout::linear(len), None),
        Kind::Window => (KvLayout::sliding(WINDOW, len).map_err(rt)?, None),
        Kind::Sparse => (
            KvLayout::linear(len),
            Some(BlockMask::causal(&PATTERN, HEADS, mask_blocks(len), 0)),
        ),
    };
    let blocks = match (&mask, kind) {
        (Some(m), _) => m.nonzero(),
        (None, Kind::Window) => window_blocks(len),
        (None, _) => {
            let b = mask_blocks(len);
            HEADS * b * (b + 1) / 2
        }
    };
    let chunk = layout.max_chunk.unwrap_or(len);
    let (qd, kd, vd) = (
        random(chunk * HEADS * HEAD_DIM, 11),
        random(layout.rows * KV_HEADS * HEAD_DIM, 12),
        random(layout.rows * KV_HEADS * HEAD_DIM, 13),
    );
    let q = gpu.storage_buffer_init("bench q", bytemuck::cast_slice(&qd));
    let k = gpu.storage_buffer_init("bench k", bytemuck::cast_slice(&kd));
    let v = gpu.storage_buffer_init("bench v", bytemuck::cast_slice(&vd));
    let out = gpu.storage_buffer("bench out", (chunk * HEADS * HEAD_DIM * 4) as u64);
    // The kernel a session's plan would run (see Plan lowering), unless forced row-wise.
    let words = mask.as_ref().map(|m| m.to_words());
    let max_keys = attention::prefill_key_span(&layout, HEADS, words.as_deref());
    let rowwise = kind == Kind::FullRowwise
        || attention::prefill_rowwise(gpu, &shape, None, mask.is_some(), max_keys);
    let partial = gpu.storage_buffer(
        "bench partial",
        (decode_attention::partial_floats(&shape, 1, chunk) * 4) as u64,
    );
    let mask_buf = words
        .as_ref()
        .map(|w| gpu.storage_buffer_init("bench mask", bytemuck::cast_slice(w)));
    let io = AttnBuffers {
        q: &q,
        k_cache: &k,
        v_cache: &v,
        out: &out,
        inv_freq: None,
        mask: mask_buf.as_deref().map(|b| (b, mask_blocks(layout.rows))),
        paged: None,
    };
    // One Step uniform per chunk, as a session writes one per pass.
    let mut steps = Vec::new();
    let mut dispatches: Vec<Dispatch> = Vec::new();
    for start in (0..len).step_by(chunk) {
        let n = chunk.min(len - start);
        let step = Step {
            pos: start as u32,
            n_tokens: n as u32,
            ..Step::default()
        };
        let buf = gpu.uniform_buffer_init("bench step", bytemuck::bytes_of(&step));
        if rowwise {
            let d = decode_attention::launch(gpu, &buf, &io, &partial, shape, layout, 1, n, true)
                .map_err(rt)?;
            dispatches.extend(d);
        } else {
            dispatches.push(attention::launch(gpu, &buf, &io, shape, layout, n, true).map_err(rt)?);
        }
        steps.push(buf);
    }
    let max_iters = if len >= 2048 { 3 } else { 10 };
    let (secs, iters) = time_adaptive(gpu, warm_up, max_iters, || {
        kernels::submit(gpu, &dispatches)
    })?;
    // `out` holds the last chunk's queries: check its last rows (every query there sees the
    // most keys) against the CPU reference over the same cache rows.
    let last_start = (len - 1) / chunk * chunk;
    let n_last = len - last_start;
    let rows = CHECK_ROWS.min(n_last);
    let width = HEADS * HEAD_DIM;
    let got = pollster::block_on(read_f32(
        gpu,
        &out,
        ((n_last - rows) * width * 4) as u64,
        rows * width,
    ))
    .map_err(rt)?;
    let cache = CacheView {
        k: &kd,
        v: &vd,
        layout,
    };
    let want = attention::reference(
        &qd[(n_last - rows) * width..n_last * width],
        cache,
        shape,
        len - rows,
        true,
        None,
        mask.as_ref(),
    );
    Ok(Prefill {
        secs,
        iters,
        chunks: steps.len(),
        blocks,
        err: rel_err(&got, &want),
    })
}

/// Seconds per decode step over a cache of `len` keys with `splits` pieces per head, and the
/// relative error of its output against the CPU reference.
fn decode(gpu: &Arc<Gpu>, len: usize, splits: usize) -> Result<(f64, f64), String> {
    let shape = shape();
    let layout = KvLayout::linear(len);
    let (qd, kd, vd) = (
        random(HEADS * HEAD_DIM, 21),
        random(len * KV_HEADS * HEAD_DIM, 22),
        random(len * KV_HEADS * HEAD_DIM, 23),
    );
    let q = gpu.storage_buffer_init("bench q", bytemuck::cast_slice(&qd));
    let k = gpu.storage_buffer_init("bench k", bytemuck::cast_slice(&kd));
    let v = gpu.storage_buffer_init("bench v", bytemuck::cast_slice(&vd));
    let out = gpu.storage_buffer("bench out", (HEADS * HEAD_DIM * 4) as u64);
    let partial = gpu.storage_buffer(
        "bench partial",
        (decode_attention::partial_floats(&shape, splits, 1) * 4) as u64,
    );
    // The new token is the last of the cache: it sees all `len` keys.
    let step = Step {
        pos: (len - 1) as u32,
        n_tokens: 1,
        ..Step::default()
    };
    let step = gpu.uniform_buffer_init("bench step", bytemuck::bytes_of(&step));
    let io = AttnBuffers {
        q: &q,
        k_cache: &k,
        v_cache: &v,
        out: &out,
        inv_freq: None,
        mask: None,
        paged: None,
    };
    let d = decode_attention::launch(gpu, &step, &io, &partial, shape, layout, splits, 1, true)
        .map_err(rt)?;
    let batch: Vec<Dispatch> = (0..DECODE_REPS).flat_map(|_| d.clone()).collect();
    let (secs, _) = time_adaptive(gpu, true, 20, || kernels::submit(gpu, &batch))?;
    let got = pollster::block_on(read_f32(gpu, &out, 0, HEADS * HEAD_DIM)).map_err(rt)?;
    let cache = CacheView {
        k: &kd,
        v: &vd,
        layout,
    };
    let want = attention::reference(&qd, cache, shape, len - 1, true, None, None);
    Ok((secs / DECODE_REPS as f64, rel_err(&got, &want)))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// KV cache bytes of the reference model for each cache kind and length.
fn kv_reference(text: bool) -> Result<Value, String> {
    let width = REF_KV_HEADS * REF_HEAD_DIM;
    let per_token = KvLayout::linear(1).bytes(width) * REF_LAYERS as u64;
    type LayoutFn = fn(usize) -> kestrel_runtime::Result<KvLayout>;
    let kinds: [(&str, LayoutFn); 3] = [
        ("linear", |n| Ok(KvLayout::linear(n))),
        ("sliding(4096)", |n| KvLayout::sliding(4096, n)),
        ("sinks(4, 2044)", |_| KvLayout::streaming(4, 2044)),
    ];
    if text {
        outln!(
            "KV cache of {REF_MODEL} ({REF_LAYERS} layers, {REF_KV_HEADS} kv heads x {REF_HEAD_DIM}, f32 K and V): \
             linear {per_token} bytes ({:.1} KiB) per token; sliding and sinks fixed",
            per_token as f64 / 1024.0
        );
        outln!(
            "  {:<16}{:>14}{:>14}{:>14}",
            "kind",
            "1k tokens",
            "8k tokens",
            "64k tokens"
        );
    }
    let mut rows = Vec::new();
    for (name, layout) in kinds {
        let mut line = format!("  {name:<16}");
        let mut totals = Vec::new();
        for n in REF_TOKENS {
            let l = layout(n).map_err(rt)?;
            let bytes = l.bytes(width) * REF_LAYERS as u64;
            line += &format!("{:>10.2} MiB", mib(bytes));
            totals.push(json!({"tokens": n, "rows": l.rows, "bytes": bytes}));
        }
        if text {
            outln!("{line}");
        }
        rows.push(json!({"kind": name, "totals": totals}));
    }
    Ok(json!({
        "model": REF_MODEL,
        "layers": REF_LAYERS,
        "kv_heads": REF_KV_HEADS,
        "head_dim": REF_HEAD_DIM,
        "dtype": "f32",
        "linear_bytes_per_token": per_token,
        "kinds": rows,
    }))
}

/// Run the attention kernel figures; print them as they come when `text`. Returns the
/// "attention" section of the JSON report.
pub fn run(gpu: &Arc<Gpu>, max_len: usize, text: bool) -> Result<Value, String> {
    let lens: Vec<usize> = PREFILL_LENS
        .iter()
        .copied()
        .filter(|&n| n <= max_len)
        .collect();
    let sparse_spec = PATTERN.to_string();
    if text {
        outln!(
            "attention kernels: heads {HEADS}, kv_heads {KV_HEADS}, head_dim {HEAD_DIM}, f32 \
             (window {WINDOW}; block-sparse {sparse_spec}, {BLOCK}x{BLOCK} blocks)"
        );
        outln!(
            "prefill path: the tiled kernel where it fits (on CPU adapters up to {} keys per \
             query at this head_dim) and is the faster, else row-wise ({}); 'rowwise' rows \
             force the row-wise kernel",
            attention::cpu_tiled_key_limit(HEAD_DIM),
            // A dense prompt short enough for the tiled kernel: row-wise only by choice.
            match attention::prefill_rowwise(gpu, &shape(), None, false, 1) {
                true => "this adapter's dense prefill",
                false => "none here",
            }
        );
        outln!(
            "prefill attention, whole sequence (window: chunks of up to {} tokens through the ring, \
             one dispatch each, as a session runs it):",
            KvLayout::sliding(WINDOW, usize::MAX)
                .map_err(rt)?
                .max_chunk
                .unwrap_or(0)
        );
        outln!(
            "  {:<7}{:>6}{:>11}{:>8}{:>9}{:>10}{:>9}{:>8}{:>6}  rel err (last rows vs CPU)",
            "kind",
            "len",
            "ms",
            "x prev",
            "blocks",
            "us/block",
            "GFLOP/s",
            "chunks",
            "iters"
        );
    }
    let mut wrong = 0;
    let mut prefill_rows = Vec::new();
    let mut scaling = serde_json::Map::new();
    let mut scaling_text = Vec::new();
    let kinds = [Kind::Full, Kind::FullRowwise, Kind::Window, Kind::Sparse];
    for kind in kinds {
        let mut prev: Option<(usize, f64)> = None;
        for &len in &lens {
            // The forced row-wise comparison is slow on CPU adapters; its trend shows by 1024.
            if kind == Kind::FullRowwise && len > ROWWISE_MAX_LEN {
                continue;
            }
            // Next to a call of a quarter second or more, the first-use costs a warm-up would
            // hide are negligible.
            let warm_up = prev.is_none_or(|(_, s)| s < 0.25);
            let p = prefill(gpu, kind, len, warm_up)?;
            let ratio = prev.filter(|&(n, _)| 2 * n == len).map(|(_, s)| p.secs / s);
            // Full causal attention: QK^T and PV over the lower triangle.
            let flops = 4.0 * (len * len) as f64 / 2.0 * (HEAD_DIM * HEADS) as f64;
            let full = matches!(kind, Kind::Full | Kind::FullRowwise);
            let gflops = full.then(|| flops / p.secs / 1e9);
            let ok = p.err <= CHECK_TOL;
            wrong += !ok as usize;
            if text {
                outln!(
                    "  {:<7}{:>6}{:>11.3}{:>8}{:>9}{:>10.3}{:>9}{:>8}{:>6}  {:.1e}{}",
                    kind.name(),
                    len,
                    p.secs * 1e3,
                    ratio.map_or("-".into(), |r| format!("{r:.2}")),
                    p.blocks,
                    p.secs * 1e6 / p.blocks as f64,
                    gflops.map_or("-".into(), |g| format!("{g:.2}")),
                    p.chunks,
                    p.iters,
                    p.err,
                    if ok { "" } else { " WRONG" }
                );
            }
            prefill_rows.push(json!({
                "kind": kind.name(),
                "len": len,
                "ms": p.secs * 1e3,
                "ratio_to_half_len": ratio,
                "blocks": p.blocks,
                "us_per_block": p.secs * 1e6 / p.blocks as f64,
                "gflops": gflops,
                "chunks": p.chunks,
                "iters": p.iters,
                "rel_err": p.err,
                "correct": ok,
            }));
            if let (Some(r), true) = (ratio, Some(&len) == lens.last()) {
                scaling.insert(kind.name().into(), json!(r));
                scaling_text.push(format!("{} {r:.2}x", kind.name()));
            }
            prev = Some((len, p.secs));
        }
    }
    if let (true, Some(n)) = (text && !scaling_text.is_empty(), lens.last()) {
        outln!(
            "  time({n})/time({}): {} (quadratic: 4x, linear: 2x)",
            n / 2,
            scaling_text.join(", ")
        );
    }

    if text {
        outln!(
            "decode attention per token (one query per head; {DECODE_REPS} steps per submission):"
        );
        outln!(
            "  {:>7}{:>8}{:>14}{:>14}{:>10}  rel err (split-K, 1 piece)",
            "cache",
            "splits",
            "split-K us",
            "1 piece us",
            "speed-up"
        );
    }
    let mut decode_rows = Vec::new();
    for len in DECODE_LENS {
        let splits = decode_attention::max_splits_for(len);
        let (flash, flash_err) = decode(gpu, len, splits)?;
        let (single, single_err) = decode(gpu, len, 1)?;
        let ok = flash_err <= CHECK_TOL && single_err <= CHECK_TOL;
        wrong += !ok as usize;
        if text {
            outln!(
                "  {:>7}{:>8}{:>14.1}{:>14.1}{:>9.2}x  {:.1e}, {:.1e}{}",
                len,
                splits,
                flash * 1e6,
                single * 1e6,
                single / flash,
                flash_err,
                single_err,
                if ok { "" } else { " WRONG" }
            );
        }
        decode_rows.push(json!({
            "cache_len": len,
            "splits": splits,
            "split_k_us_per_token": flash * 1e6,
            "single_us_per_token": single * 1e6,
            "speedup": single / flash,
            "split_k_rel_err": flash_err,
            "single_rel_err": single_err,
            "correct": ok,
        }));
    }
    if text && wrong > 0 {
        outln!(
            "  {wrong} figure(s) marked WRONG: the output differs from the CPU reference (relative \
             error over {CHECK_TOL:e}), so those times do not measure the whole computation"
        );
    }

    let kv = kv_reference(text)?;
    Ok(json!({
        "kernel_shape": {
            "heads": HEADS,
            "kv_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "dtype": "f32",
            "window": WINDOW,
            "block_sparse": sparse_spec,
            "block": BLOCK,
        },
        "prefill": prefill_rows,
        "prefill_scaling": {
            "len": lens.last(),
            "half_len": lens.last().map(|n| n / 2),
            "ratios": scaling,
        },
        "decode_per_token": decode_rows,
        "decode_steps_per_submission": DECODE_REPS,
        "check_tolerance": CHECK_TOL,
        "wrong_results": wrong,
        "kv_cache_reference": kv,
    }))
}

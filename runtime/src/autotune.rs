//! The quick kernel tuner (issue 17's tuning on first use): for each kernel class with
//! variants — the decode matvec's layouts (the [`tuning::MATVEC_CANDIDATES`] the adapter
//! runs: those summed by subgroup only where its subgroups hold their lanes) and prefill's rows or
//! tiled matmul — time every candidate on the model's own weights, and choose the one with
//! the least estimated time per token.
//!
//! The weights come from the model's graphs: the Linear ops of a decode step (one row) and
//! of a prefill chunk ([`PREFILL_ROWS`] rows). Of each weight dtype the largest matrix is
//! timed, and its time is scaled by the bytes of that dtype a pass reads, so a model's mix
//! of quant types weighs as it does in a real token. Candidates are timed in interleaved
//! rounds (each round times every candidate once, so load on a shared machine falls on all
//! alike) and each keeps its best round; after the first round a candidate at over [`DROP`]
//! times the best is out, and the adapter kind's default stays unless a candidate beats it
//! by [`MARGIN`]. Times come from timestamp queries where the adapter has them, else
//! from the wall clock around a submit and wait. A class's rounds stop at [`ROUNDS`] or after
//! [`BUDGET`] from its warm-up, whichever is first (at least one round). Most of a tuning's
//! time on a CPU adapter is making the candidates' pipelines (2 dtypes × 5 to 9 matvec layouts and
//! 2 × 2 matmuls), not timing them.
//!
//! Native only: the wall-clock fallback and the wait need a blocking device poll, which the
//! browser has not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arch::{Architecture, Head};
use crate::device::Gpu;
use crate::error::Result;
use crate::graph::{Graph, Source};
use crate::kernels::{self, matmul, matvec, Dispatch};
use crate::profile;
use crate::tensor::{DType, GpuWeight, WeightChunk};
use crate::tuning::{self, Tuning};

/// Rows of the prefill chunk whose matmuls are timed.
pub const PREFILL_ROWS: usize = 32;

/// Per kernel class, the time after its warm-up after which no new round starts.
pub const BUDGET: Duration = Duration::from_millis(400);

/// The most bytes of one weight timed (see [`leading_rows`]).
const SAMPLE_BYTES: u64 = 2 << 20;

/// After the first round, candidates slower than this times the best are timed no more.
const DROP: f64 = 2.0;

/// How much faster than the adapter's default a candidate must be to be chosen instead.
const MARGIN: f64 = 1.15;

/// The weight dtypes timed: the ones with the most bytes.
const DTYPES: usize = 2;

/// The most rounds (each candidate's best of these is kept).
const ROUNDS: usize = 5;

/// One timed weight: the largest matrix of its dtype, and how many times its bytes the
/// pass reads in all weights of that dtype.
struct Sample {
    weight: Arc<GpuWeight>,
    scale: f64,
}

/// What the tuner chose and what it timed.
#[derive(Debug, Clone)]
pub struct Report {
    pub tuning: Tuning,
    /// Each matvec candidate's estimated decode matvec time per token, ms.
    pub matvec_ms: Vec<(matvec::Layout, f64)>,
    /// The tiled (false) and rows (true) matmul's estimated prefill time per chunk of
    /// [`PREFILL_ROWS`] tokens, ms (rows only where the adapter runs it).
    pub matmul_ms: Vec<(bool, f64)>,
    /// Rounds timed, and the whole tuning's wall time.
    pub rounds: usize,
    pub seconds: f64,
}

/// The weight dtypes the tuner times for a model (the [`DTYPES`] that its decode's Linear
/// ops read the most bytes of), named and sorted, e.g. `Q4_1+Q8_0`: what a tuning depends on
/// besides the adapter.
pub fn dtype_class(arch: &dyn Architecture) -> Result<String> {
    let mut names: Vec<&str> = samples(&decode_graph(arch)?, 1)
        .iter()
        .map(|s| s.weight.dtype.name())
        .collect();
    names.sort_unstable();
    Ok(names.join("+"))
}

fn decode_graph(arch: &dyn Architecture) -> Result<Graph> {
    arch.build(1, PREFILL_ROWS.min(arch.max_context()), Head::Sample)
}

/// Time the candidates on `arch`'s weights; `gpu` is left with the chosen tuning.
pub async fn tune(gpu: &Arc<Gpu>, arch: &dyn Architecture) -> Result<Report> {
    let start = Instant::now();
    // A handle of its own on the same device, sharing the tuning: the candidates' pipelines
    // stay out of the model's list of pipelines to make ahead (`Gpu::pipeline_keys`).
    let gpu = &gpu.with_max_binding(gpu.caps.max_storage_binding);
    // The adapter kind's defaults, which a candidate must beat by [`MARGIN`].
    gpu.set_tuning(Tuning::default());
    // The decode graph's largest weight names the matvec's default layout (on CPU drivers
    // it depends on the weight type; the tuner then chooses one for all).
    let decode = samples(&decode_graph(arch)?, 1);
    let main_dtype = decode
        .iter()
        .max_by_key(|s| s.weight.bytes())
        .map_or(DType::F32, |s| s.weight.dtype);
    let default_layout = matvec::Layout::for_device(gpu, main_dtype);
    let default_rows = matches!(
        matmul::Layout::for_device(gpu, DType::F32),
        matmul::Layout::Rows { .. }
    );
    let rows = PREFILL_ROWS.min(arch.max_context());
    let prefill = samples(&arch.build(rows, rows, Head::Sample)?, rows);
    let mut chosen = Tuning::default();

    // Decode: one matvec per sampled weight, in each layout.
    let x = scratch(gpu, &decode, 1, |w| w.cols)?;
    let y = scratch(gpu, &decode, 1, |w| w.rows)?;
    let candidates = tuning::matvec_candidates(gpu);
    let matvec_sets: Vec<Vec<Vec<Dispatch>>> = candidates
        .iter()
        .map(|&layout| {
            decode
                .iter()
                .map(|s| matvec::launch_with(gpu, &x, &s.weight, None, &y, layout))
                .collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    let (matvec_ms, mut rounds) = time_candidates(gpu, &matvec_sets, &decode).await?;
    // Nothing timed (no matrix), no choice: the adapter's kind decides.
    if !decode.is_empty() {
        let default = candidates.iter().position(|&l| l == default_layout);
        chosen.matvec = Some(candidates[choose(&matvec_ms, default)]);
    }

    // Prefill: the tiled matmul, and the rows matmul where the adapter runs it.
    let kinds: Vec<bool> = if matmul::runs_rows(gpu) {
        vec![false, true]
    } else {
        vec![false]
    };
    let x = scratch(gpu, &prefill, rows, |w| w.cols)?;
    let y = scratch(gpu, &prefill, rows, |w| w.rows)?;
    let mut matmul_sets = Vec::new();
    for &kind in &kinds {
        gpu.set_tuning(Tuning {
            matmul_rows: Some(kind),
            ..chosen
        });
        matmul_sets.push(
            prefill
                .iter()
                .map(|s| matmul::launch(gpu, &x, &s.weight, None, &y, rows))
                .collect::<Result<Vec<_>>>()?,
        );
    }
    let (matmul_ms, r) = time_candidates(gpu, &matmul_sets, &prefill).await?;
    rounds = rounds.min(r);
    if !prefill.is_empty() {
        let default = kinds.iter().position(|&rows| rows == default_rows);
        chosen.matmul_rows = Some(kinds[choose(&matmul_ms, default)]);
    }
    gpu.set_tuning(chosen);
    Ok(Report {
        tuning: chosen,
        matvec_ms: candidates.into_iter().zip(matvec_ms).collect(),
        matmul_ms: kinds.into_iter().zip(matmul_ms).collect(),
        rounds,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The largest matrix of each dtype among the Linear ops of `graph` whose input has `rows`
/// rows, with the bytes of that dtype read over its bytes. Expert stacks are left out (the
/// grouped kernels read only the routed experts) as are vectors.
fn samples(graph: &Graph, rows: usize) -> Vec<Sample> {
    let mut by_dtype: Vec<(DType, Arc<GpuWeight>, u64)> = Vec::new();
    for op in graph.ops.iter().filter(|op| op.name() == "linear") {
        let (reads, _) = op.reads_writes();
        let x_rows = reads.first().map(|&x| graph.shape(x)[0]);
        if x_rows != Some(rows) {
            continue;
        }
        for &t in &reads {
            let Source::Weight(w) = &graph.tensors[t].source else {
                continue;
            };
            if w.rows < 2 || w.experts != 1 {
                continue;
            }
            match by_dtype.iter_mut().find(|e| e.0 == w.dtype) {
                Some(e) => {
                    e.2 += w.bytes();
                    if w.bytes() > e.1.bytes() {
                        e.1 = w.clone();
                    }
                }
                None => by_dtype.push((w.dtype, w.clone(), w.bytes())),
            }
        }
    }
    // The dtypes that carry the most bytes (a model's odd tensors in a third format are
    // not worth their pipelines' creation).
    by_dtype.sort_by_key(|e| std::cmp::Reverse(e.2));
    by_dtype.truncate(DTYPES);
    by_dtype
        .into_iter()
        .map(|(_, weight, total)| {
            let weight = leading_rows(&weight);
            let bytes = weight.dtype.bytes(weight.rows * weight.cols);
            Sample {
                scale: total as f64 / bytes.max(1) as f64,
                weight,
            }
        })
        .collect()
}

/// The first rows of `w`'s first chunk, up to [`SAMPLE_BYTES`]: a matrix's rows are
/// independent work, so a large one (an LM head) is timed on a slice and scaled.
fn leading_rows(w: &Arc<GpuWeight>) -> Arc<GpuWeight> {
    let row_bytes = w.dtype.bytes(w.cols).max(1);
    let rows = (SAMPLE_BYTES / row_bytes).max(1) as usize;
    let Some(first) = w.chunks.first() else {
        return w.clone();
    };
    if first.rows <= rows && w.chunks.len() == 1 {
        return w.clone();
    }
    let rows = rows.min(first.rows);
    Arc::new(GpuWeight {
        name: w.name.clone(),
        rows,
        cols: w.cols,
        experts: 1,
        dtype: w.dtype,
        chunks: vec![WeightChunk {
            data: first.data.clone(),
            row_start: 0,
            rows,
        }],
    })
}

/// A zeroed f32 buffer for `rows` rows of the longest `dim` of the samples.
fn scratch(
    gpu: &Gpu,
    samples: &[Sample],
    rows: usize,
    dim: impl Fn(&GpuWeight) -> usize,
) -> Result<crate::GpuBuffer> {
    let n = samples.iter().map(|s| dim(&s.weight)).max().unwrap_or(1);
    let bytes = (rows * n * 4).max(16) as u64;
    crate::tensor::check_binding(gpu, "tuning scratch", bytes)?;
    Ok(gpu.storage_buffer("tuning scratch", bytes))
}

/// Each candidate's estimated time (ms): its dispatch lists (one per sample) timed in
/// interleaved rounds, each list's best round, scaled by its sample's weight. And the
/// rounds timed.
async fn time_candidates(
    gpu: &Arc<Gpu>,
    sets: &[Vec<Vec<Dispatch>>],
    samples: &[Sample],
) -> Result<(Vec<f64>, usize)> {
    // A warm-up run touches the weights.
    {
        for set in sets {
            for d in set {
                kernels::submit(gpu, d);
            }
        }
        gpu.wait()?;
    }
    let start = Instant::now();
    let mut best = vec![vec![f64::INFINITY; samples.len()]; sets.len()];
    let estimate = |b: &[f64]| -> f64 { b.iter().zip(samples).map(|(ms, s)| ms * s.scale).sum() };
    let mut rounds = 0;
    while rounds < ROUNDS && (rounds == 0 || start.elapsed() < BUDGET) {
        let least = best
            .iter()
            .map(|b| estimate(b))
            .fold(f64::INFINITY, f64::min);
        for (c, set) in sets.iter().enumerate() {
            // After the first round, a candidate at over twice the best is out.
            if estimate(&best[c]) > DROP * least {
                continue;
            }
            for (i, d) in set.iter().enumerate() {
                let ms = time_ms(gpu, d).await?;
                best[c][i] = best[c][i].min(ms);
            }
        }
        rounds += 1;
    }
    Ok((best.iter().map(|b| estimate(b)).collect(), rounds))
}

/// The GPU time of `dispatches`, ms: from timestamp queries where the adapter has them, else
/// the wall clock around one submit and wait.
async fn time_ms(gpu: &Arc<Gpu>, dispatches: &[Dispatch]) -> Result<f64> {
    if let Some(ms) = profile::once_ms(gpu, dispatches).await? {
        return Ok(ms);
    }
    let t = Instant::now();
    kernels::submit(gpu, dispatches);
    gpu.wait()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The index of the least time (the first of equals), or `default`'s unless the least beats
/// it by [`MARGIN`]: timings on a busy machine move by more than the gap between close
/// candidates, and the defaults were chosen by whole-model A/B runs.
fn choose(ms: &[f64], default: Option<usize>) -> usize {
    let mut best = 0;
    for (i, &m) in ms.iter().enumerate() {
        if m < ms[best] {
            best = i;
        }
    }
    match default {
        Some(d) if ms[best] * MARGIN >= ms[d] => d,
        _ => best,
    }
}

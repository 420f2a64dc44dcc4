//! One table of kernel cases, after llama.cpp's `test-backend-ops`: every kernel against its
//! CPU reference on seeded random inputs, at sizes that are deliberately not multiples of
//! tiles or workgroups, for every weight kind it reads (f32, f16, each ggml block format),
//! with every output buffer poisoned with NaN before the run so an unwritten element fails.
//! A [`Case`] builds its inputs and reference, runs once on any [`Gpu`], and reports each
//! output's relative error `||gpu - ref|| / ||ref||` ([`rel_err`]) against its tolerance.
//!
//! Consumers: the native tests (tests/tests/*.rs) run each kernel family on every backend of
//! `KESTREL_TEST_BACKENDS`; the browser's kernel check (web/src/kernel_check.rs) runs the
//! cases marked [`Case::browser`]; `kestrel bench --kernels` times every case. Readback is a
//! future, so the browser awaits it and native callers block on it.
//!
//! Tolerances, none widened to make a case pass:
//! * exact (0): copies, gathers, cache writes, add, mul, sub and squared ReLU (one correctly
//!   rounded f32 op each), integer bookkeeping (routes, permutations, chosen positions).
//!   Bits must match, NaN included ([`Expect::Bits`]), except for quantized gathers, which
//!   compare values ([`Expect::Equal`]): each value is a scale times a small integer (exact
//!   in f32) and at most one rounding after it, so any order or fusing gives the same number,
//!   but lavapipe's compiler does not preserve the sign of a zero.
//! * [`SUM_TOL`] = 1e-5: matmul, matvec (f32, f16 and quantized), rms_norm, softmax, the
//!   elementwise ops with exp or log, conv1d, head_dot, the MoE block. The GPU sums up to
//!   about a thousand f32 terms in another order than the CPU's sequential f32 sum (tiles,
//!   tree reductions, partial sums per quant group); for random data each side is off by
//!   about sqrt(K) * 2^-24 < 2e-6, so 1e-5 has headroom, while any indexing or masking error
//!   (a wrong nibble, scale or block offset for quantized weights) gives errors of 1e-2 or
//!   more. f16 weights are rounded to f16 for the reference too, and quantized weights are
//!   dequantized by `quant::dequantize`: the GPU widens both exactly.
//! * [`ATTN_TOL`] = 1e-5: attention against the f64 reference: f32 dot products of head_dim
//!   terms, f32 exp, and an online-softmax rescale per key or tile, all O(1e-6); with
//!   in-attention RoPE also the GPU's sin/cos of f32 angles.
//! * [`ROPE_TOL`] = 1e-5: the rotation angle is the same f32 product on both sides; only the
//!   GPU's sin/cos differ from Rust's, by a few ulp of the angle (|angle| <= ~130 here).
//! * [`SCAN_TOL`] = 1e-5 for the linear recurrences (see `linear_scan.rs` and `wkv4.rs`).
//! * [`BACKEND_TOL`] = 1e-5 between two GPU paths that must agree (split and unsplit decode,
//!   a block mask that is dense and dense attention, chunked and recurrent scans) and
//!   between backends: the same terms summed in another order.

mod attention;
mod conv1d;
mod copy;
mod decode_gate;
mod elementwise;
mod embedding;
mod heads;
mod linear;
mod linear_scan;
mod matmul;
pub mod matvec_f16;
pub mod matvec_q8;
mod moe;
mod norm;
mod rope;
mod sample;
mod token_mix;
mod unmask;
pub mod weights;
mod wkv4;

pub use attention::{ring_stale_cases, sparse_scenes, SparseScene};
pub use unmask::{draw as unmask_draw, robust as unmask_robust, UnmaskCase, UnmaskSpec};

use std::sync::Arc;

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::{self, Dispatch, Step};
use crate::readback;

pub const SUM_TOL: f64 = 1e-5;
pub const ATTN_TOL: f64 = 1e-5;
pub const ROPE_TOL: f64 = 1e-5;
pub const SCAN_TOL: f64 = 1e-5;
pub const BACKEND_TOL: f64 = 1e-5;

/// Every case of the table, family by family.
pub fn all() -> Vec<Case> {
    [
        linear::matmul(),
        matmul::cases(),
        linear::matvec(),
        matvec_q8::cases(),
        matvec_f16::cases(),
        embedding::cases(),
        elementwise::cases(),
        norm::rms_norm(),
        norm::softmax(),
        conv1d::cases(),
        heads::head_concat(),
        heads::head_dot(),
        token_mix::cases(),
        token_mix::delta_ab(),
        rope::cases(),
        rope::rope_cache_write(),
        copy::cases(),
        decode_gate::cases(),
        sample::cases(),
        attention::prefill(),
        attention::decode(),
        attention::cache_write(),
        linear_scan::cases(),
        wkv4::cases(),
        moe::cases(),
        unmask::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The cases of one kernel family (`Case::kernel`).
pub fn family(kernel: &str) -> Vec<Case> {
    all().into_iter().filter(|c| c.kernel == kernel).collect()
}

/// `||out - reference|| / ||reference||` in f64 (the plain norm of `out - reference` when the
/// reference is zero). NaN when `out` holds a NaN or the lengths differ, so `err <= tol`
/// fails on either.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    if out.len() != reference.len() {
        return f64::NAN;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        let d = o as f64 - r as f64;
        diff += d * d;
        norm += r as f64 * r as f64;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// One entry of the table: a kernel run on inputs it draws from a fixed seed.
pub struct Case {
    /// The kernel family (one native test and one browser summary line each).
    pub kernel: &'static str,
    pub what: String,
    /// In the browser's representative subset (the browser runs on SwiftShader: keep it quick).
    pub browser: bool,
    /// It reads quantized weights (tests/tests/quant.rs runs these).
    pub quantized: bool,
    /// Its outputs are compared between backends too (within [`BACKEND_TOL`]).
    pub agree: bool,
    prepare: Box<PrepareFn>,
}

/// What a case does to be run: draw, reference, upload, record.
type PrepareFn = dyn Fn(&Arc<Gpu>) -> Result<Prepared>;

/// Picks or transforms the words read from an output before the comparison.
type DeriveFn = dyn Fn(&[u32]) -> Vec<u32>;

impl Case {
    pub fn new(
        kernel: &'static str,
        what: String,
        prepare: impl Fn(&Arc<Gpu>) -> Result<Prepared> + 'static,
    ) -> Case {
        Case {
            kernel,
            what,
            browser: false,
            quantized: false,
            agree: false,
            prepare: Box::new(prepare),
        }
    }

    pub fn browser(self, browser: bool) -> Case {
        Case { browser, ..self }
    }

    pub fn quantized(self, quantized: bool) -> Case {
        Case { quantized, ..self }
    }

    pub fn agree(self) -> Case {
        Case {
            agree: true,
            ..self
        }
    }

    /// Draw the inputs, compute the reference, upload, poison the outputs and record the
    /// dispatches on `gpu` (nothing is submitted yet).
    pub fn prepare(&self, gpu: &Arc<Gpu>) -> Result<Prepared> {
        (self.prepare)(gpu).map_err(|e| self.context(e))
    }

    /// Prepare, run once and compare every output with its reference.
    pub async fn run(&self, gpu: &Arc<Gpu>) -> Result<Vec<Outcome>> {
        let p = self.prepare(gpu)?;
        p.submit();
        p.check(self).await.map_err(|e| self.context(e))
    }

    /// An error of this case, naming it.
    fn context(&self, e: Error) -> Error {
        Error::Graph(format!("kernel case {} {}: {e}", self.kernel, self.what))
    }
}

/// A case ready to run: its dispatches (one run, in one compute pass) and its outputs.
pub struct Prepared {
    /// The device it runs on: the one given, or a view of it with a smaller binding limit
    /// (cases of weights split into several bindings).
    pub gpu: Arc<Gpu>,
    pub dispatches: Vec<Dispatch>,
    /// The work of one run, when the case declares it (for GFLOP/s and GB/s).
    pub work: Work,
    outputs: Vec<Output>,
}

/// Floating-point operations and bytes moved by one run of a case; 0 = not declared.
#[derive(Debug, Clone, Copy, Default)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
}

impl Prepared {
    pub fn new(gpu: &Arc<Gpu>, dispatches: Vec<Dispatch>, outputs: Vec<Output>) -> Prepared {
        Prepared {
            gpu: gpu.clone(),
            dispatches,
            work: Work::default(),
            outputs,
        }
    }

    pub fn work(self, flops: f64, bytes: f64) -> Prepared {
        Prepared {
            work: Work { flops, bytes },
            ..self
        }
    }

    /// Submit one run (it does not wait).
    pub fn submit(&self) {
        kernels::submit(&self.gpu, &self.dispatches);
    }

    /// Read every output (after a run) and compare it with its reference.
    pub async fn check(&self, case: &Case) -> Result<Vec<Outcome>> {
        let mut read = Vec::with_capacity(self.outputs.len());
        for o in &self.outputs {
            let words = readback::read_u32(&self.gpu, &o.buffer, 0, o.words).await?;
            read.push(match &o.derive {
                Some(f) => f(&words),
                None => words,
            });
        }
        self.gpu.check()?;
        Ok(self
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| o.judge(case, &read, i))
            .collect())
    }
}

/// What one output must equal.
pub enum Expect {
    /// `rel_err(values, want) <= tol`.
    Close(Vec<f32>, f64),
    /// The same bits, NaN included.
    Bits(Vec<f32>),
    /// Equal values (-0 equals +0; NaN equals nothing).
    Equal(Vec<f32>),
    /// The same u32 words.
    Words(Vec<u32>),
    /// Every value within `tol * (1 + |want|)`: for values of order 1 that may cancel to
    /// near 0, where a relative norm over few values would measure only that cancellation.
    Near(Vec<f32>, f64),
    /// Every value within `tol * |want|`, and the same bits where `want` is not finite.
    Each(Vec<f32>, f64),
    /// `rel_err` against the values of output `i` of the same case (two GPU paths that
    /// must agree).
    Like(usize, f64),
}

/// One output buffer of a case and what it must hold.
pub struct Output {
    label: String,
    buffer: GpuBuffer,
    /// u32 words read from the start of the buffer.
    words: usize,
    /// Picks or transforms the words read before the comparison.
    derive: Option<Box<DeriveFn>>,
    expect: Expect,
}

impl Output {
    /// `buffer` read as `words` words, compared by `expect`. With [`Expect::Like`] give
    /// the words to read.
    pub fn new(label: &str, buffer: &GpuBuffer, expect: Expect) -> Output {
        let words = match &expect {
            Expect::Close(w, _)
            | Expect::Bits(w)
            | Expect::Equal(w)
            | Expect::Near(w, _)
            | Expect::Each(w, _) => w.len(),
            Expect::Words(w) => w.len(),
            Expect::Like(..) => 0,
        };
        Output {
            label: label.to_string(),
            buffer: buffer.clone(),
            words,
            derive: None,
            expect,
        }
    }

    pub fn close(label: &str, buffer: &GpuBuffer, want: Vec<f32>, tol: f64) -> Output {
        Output::new(label, buffer, Expect::Close(want, tol))
    }

    pub fn bits(label: &str, buffer: &GpuBuffer, want: Vec<f32>) -> Output {
        Output::new(label, buffer, Expect::Bits(want))
    }

    /// `words` values of `buffer` within `tol` of those of output `other` of the same case.
    pub fn like(label: &str, buffer: &GpuBuffer, words: usize, other: usize, tol: f64) -> Output {
        Output {
            words,
            ..Output::new(label, buffer, Expect::Like(other, tol))
        }
    }

    /// Read `words` words and compare `derive(words)` instead.
    pub fn derived(self, words: usize, derive: impl Fn(&[u32]) -> Vec<u32> + 'static) -> Output {
        Output {
            words,
            derive: Some(Box::new(derive)),
            ..self
        }
    }

    fn judge(&self, case: &Case, read: &[Vec<u32>], index: usize) -> Outcome {
        let got = &read[index];
        let values: Vec<f32> = got.iter().map(|&w| f32::from_bits(w)).collect();
        let (err, tol, note) = match &self.expect {
            Expect::Close(want, tol) => (rel_err(&values, want), *tol, worst(&values, want)),
            Expect::Like(other, tol) => {
                let want: Vec<f32> = read[*other].iter().map(|&w| f32::from_bits(w)).collect();
                (rel_err(&values, &want), *tol, worst(&values, &want))
            }
            Expect::Bits(want) => {
                let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits();
                exact(&values, want, same)
            }
            Expect::Equal(want) => exact(&values, want, |a, b| a == b),
            Expect::Words(want) => {
                let bad = got.iter().zip(want).filter(|(a, b)| a != b).count();
                let first = got.iter().zip(want).position(|(a, b)| a != b);
                let err = match (got.len() == want.len(), bad) {
                    (false, _) => f64::NAN,
                    (true, 0) => 0.0,
                    (true, n) => n as f64 / want.len() as f64,
                };
                let note = first.map_or(String::new(), |i| {
                    format!(
                        "{bad} words differ; first at {i}: gpu {}, want {}",
                        got[i], want[i]
                    )
                });
                (err, 0.0, note)
            }
            Expect::Near(want, tol) => elementwise(&values, want, *tol, |w| 1.0 + w.abs()),
            Expect::Each(want, tol) => elementwise(&values, want, *tol, |w| w.abs()),
        };
        let agreeable = matches!(self.expect, Expect::Close(..) | Expect::Like(..));
        Outcome {
            kernel: case.kernel,
            what: match self.label.as_str() {
                "" => case.what.clone(),
                label => format!("{} {label}", case.what),
            },
            err,
            tol,
            ok: err <= tol,
            note,
            values: if agreeable { values } else { Vec::new() },
        }
    }
}

/// (error, tolerance 0, note) of an exact comparison: 0 when every value matches, else the
/// relative error (at least the smallest positive number), NaN for a length mismatch.
fn exact(got: &[f32], want: &[f32], same: impl Fn(&f32, &f32) -> bool) -> (f64, f64, String) {
    if got.len() != want.len() {
        return (
            f64::NAN,
            0.0,
            format!("{} values, want {}", got.len(), want.len()),
        );
    }
    match got.iter().zip(want).position(|(a, b)| !same(a, b)) {
        None => (0.0, 0.0, String::new()),
        Some(i) => {
            let bad = got.iter().zip(want).filter(|(a, b)| !same(a, b)).count();
            let note = format!(
                "{bad} of {} values differ; first at {i}: gpu {:e}, want {:e}",
                want.len(),
                got[i],
                want[i]
            );
            (rel_err(got, want).max(f64::MIN_POSITIVE), 0.0, note)
        }
    }
}

/// (worst error, tol, note) of a per-value comparison where value i may differ from want[i]
/// by `tol * scale(want[i])` (the same bits where want[i] is not finite).
fn elementwise(
    got: &[f32],
    want: &[f32],
    tol: f64,
    scale: impl Fn(f64) -> f64,
) -> (f64, f64, String) {
    if got.len() != want.len() {
        return (
            f64::NAN,
            tol,
            format!("{} values, want {}", got.len(), want.len()),
        );
    }
    let mut worst = (0.0f64, None);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if !w.is_finite() {
            if g.to_bits() == w.to_bits() {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (g as f64 - w as f64).abs() / scale(w as f64).max(1e-30)
        };
        if e.is_nan() || e > worst.0 {
            worst = (if e.is_nan() { f64::NAN } else { e }, Some(i));
            if e.is_nan() {
                break;
            }
        }
    }
    let note = worst.1.map_or(String::new(), |i| {
        format!("worst at {i}: gpu {:e}, want {:e}", got[i], want[i])
    });
    (worst.0, tol, note)
}

/// Where a close comparison is worst: the first non-finite output and the largest difference.
fn worst(got: &[f32], want: &[f32]) -> String {
    let nan = got.iter().position(|v| !v.is_finite());
    let (i, diff) = got
        .iter()
        .zip(want)
        .map(|(&o, &r)| (o as f64 - r as f64).abs())
        .enumerate()
        .filter(|(_, d)| !d.is_nan())
        .fold((0, 0.0), |b, (i, d)| if d > b.1 { (i, d) } else { b });
    match (got.get(i), want.get(i)) {
        (Some(g), Some(w)) => format!(
            "first non-finite output at {nan:?}; largest difference {diff:.3e} at {i} (gpu {g}, reference {w})"
        ),
        _ => format!("first non-finite output at {nan:?}"),
    }
}

/// The comparison of one output of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kernel: &'static str,
    /// The case and the output.
    pub what: String,
    pub err: f64,
    pub tol: f64,
    pub ok: bool,
    /// Where it went wrong, when it did.
    pub note: String,
    /// The values compared, for outputs with a tolerance (backends must agree on them).
    pub values: Vec<f32>,
}

/// A storage buffer holding `data`.
pub fn upload_f32(gpu: &Gpu, data: &[f32]) -> GpuBuffer {
    gpu.storage_buffer_init("case f32", bytemuck::cast_slice(data))
}

/// A storage buffer holding `data`.
pub fn upload_u32(gpu: &Gpu, data: &[u32]) -> GpuBuffer {
    gpu.storage_buffer_init("case u32", bytemuck::cast_slice(data))
}

/// A batched step's uniform (shaders/batch.wgsl) whose sequences, given as (rows, slot), take
/// consecutive rows from row 0; picks after them are unused (0 rows). Each row's position is
/// its index in its sequence and its pool row 0 (the recurrent kernels read neither).
pub fn batch_uniform(gpu: &Gpu, seqs: &[(usize, usize)]) -> GpuBuffer {
    use crate::batch::BatchRows;
    let mut b = <BatchRows as bytemuck::Zeroable>::zeroed();
    let mut first = 0;
    for (s, &(n, slot)) in seqs.iter().enumerate() {
        for pos in 0..n {
            b.rows[first + pos] = [pos as u32, 0, slot as u32, 0];
        }
        b.picks[s] = [(first + n).saturating_sub(1) as u32, 0, 0, 0];
        b.pick_p[s] = [0, first as u32, n as u32, slot as u32];
        first += n;
    }
    gpu.uniform_buffer_init("case batch", bytemuck::bytes_of(&b))
}

/// A storage buffer of `n` f32 values, all NaN: whatever a kernel fails to write stays NaN
/// and makes the comparison fail.
pub fn poisoned(gpu: &Gpu, n: usize) -> GpuBuffer {
    upload_f32(gpu, &vec![f32::NAN; n.max(1)])
}

/// A [`Step`] at `pos` with `n_tokens` tokens and greedy sampling settings.
pub fn step(pos: u32, n_tokens: u32) -> Step {
    Step {
        pos,
        n_tokens,
        top_p: 1.0,
        ..Step::default()
    }
}

/// The uniform buffer of a [`Step`].
pub fn step_buffer(gpu: &Gpu, step: &Step) -> GpuBuffer {
    gpu.uniform_buffer_init("step", bytemuck::bytes_of(step))
}

/// Words of f32 values.
pub(crate) fn f32s(words: &[u32]) -> Vec<f32> {
    words.iter().map(|&w| f32::from_bits(w)).collect()
}

/// f32 values as words.
pub(crate) fn words(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// A case-definition error (a case whose inputs do not have the property it is about).
pub(crate) fn bad_case(msg: String) -> Error {
    Error::Graph(msg)
}

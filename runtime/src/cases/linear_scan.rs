//! The gated linear recurrence (kernels::linear_scan) against its f64 CPU reference, in every
//! form — token by token (decode) with an invocation per state row or on the lanes kernel
//! (CPU adapters; on an adapter without subgroups of 8 its cases check that it is refused,
//! then run the rows form), the chunked scan (prefill) and its matmul form (prefill on
//! non-CPU adapters; forced here on every adapter; with the delta term its WY form, chunks of
//! up to 16) — for every kind the linear-time models use: GLA (per-key gate), Mamba (dt * A
//! per key, one value per head, q/k shared by all heads), Mamba-2 (dt * A per head, grouped
//! q/k), RWKV-6 (per-key decay and the bonus u), RWKV-7 (per-key decay and the delta term,
//! a = -kk, b = kk * rate), gated DeltaNet (one decay per head and the delta term, a =
//! -beta k, b = k with k unit), the delta term with unrelated random a and b, and plain
//! linear attention.
//! Sizes are ragged (token counts not multiples of the chunk, key dims not multiples of 64),
//! the sequence starts from a random non-zero state, outputs and scratch start as NaN, and
//! the final state is compared as well as the outputs.
//!
//! Tolerance [`SCAN_TOL`] = 1e-5 relative: each output is an f32 dot product of dk terms
//! over an f32 state that took one multiply-add per token; decays are <= 1 so old rounding
//! errors shrink, and with no decay (linear attention) they add up like a random walk: about
//! sqrt(T) * 2^-24 ~ 3e-6 after 2,048 tokens. Any indexing, ordering or chunk-boundary error
//! is of order 1. The 2,048-token runs also cover decays from 1 - 1e-4 (long memory) to
//! e^-20 (none), where a form that divided by cumulative decays would overflow.
//!
//! The matmul form keeps the same tolerance: it reorders the sums (a chunk's outputs are
//! dot products over keys, then over the chunk's tokens, each term weighted by e^(a sum of
//! at most 31 log-decays) computed directly, never as a difference of cumulative sums), so
//! its rounding is of the same 2^-24 per term as the token-by-token forms', and the state
//! between chunks still takes one multiply-add per chunk in the carry pass.
//!
//! So does the delta kind's WY form: within a chunk of 16 it sums the same terms through
//! T = (I - Aab)^-1, found by forward substitution, whose entries stay O(1) for the models'
//! contractions (|a| |b| <= 1), so each of its products adds a few 2^-24 relative; the
//! carry applies the chunk's transition in WY form with its diagonal as expm1 of the summed
//! log-decays, so long memories keep their precision across chunk boundaries. Measured on lavapipe, llvmpipe GL
//! and SwiftShader: <= 5.4e-7 for the models' a/b at 2,048 tokens of long memory, 2.3e-6
//! for random a/b (a transition that is no contraction grows rounding errors instead of
//! shrinking them; the token-by-token forms reach 7.5e-7 there) — under the 1e-5 kept.

use super::{batch_uniform, poisoned, upload_f32, Case, Output, Prepared, SCAN_TOL};
use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::linear_scan::{
    self, Decay, ScanBuffers, ScanInputs, ScanShape, CHUNK, MM_CHUNK, MM_DELTA_CHUNK,
};
use crate::kernels::Dispatch;
use crate::rng::Rng;

/// How a case runs the recurrence.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// Token by token, an invocation per state row (linear_scan.wgsl).
    Rows,
    /// Token by token on linear_scan_lanes.wgsl.
    Lanes,
    /// The chunked scan with chunks of this many tokens.
    Chunked(usize),
    /// Its matmul form with chunks of this many tokens.
    Matmul(usize),
    /// A batched step of the sequences [`PAGED_SEQS`] (PAGED), on the lanes kernel (where
    /// the adapter has subgroups of 8; elsewhere checked to be refused, then linear_scan.wgsl)
    /// or on linear_scan.wgsl.
    Paged { lanes: bool },
}

/// A batched step's sequences as (rows, slot) in a pool of [`PAGED_SLOTS`] states, and its
/// picks (the last unused): slots 1 and 4 are named by none and must keep their state.
const PAGED_SEQS: [(usize, usize); 3] = [(3, 2), (1, 0), (5, 3)];
const PAGED_SLOTS: usize = 5;
const PAGED_PICKS: usize = 4;

/// How a case draws the delta term's a and b.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AbDraw {
    /// RWKV-7: a = -kk, b = kk * rate, kk a unit vector and rate in (0, 1) per key.
    Rwkv7,
    /// Gated DeltaNet: a = -beta kn, b = kn, kn the token's key made unit, beta in (0, 1).
    DeltaNet,
    /// a and b in independent random directions, each of norm 0.7: a transition that is no
    /// contraction, unlike the models' (|s . a| |b| may exceed |s| by half).
    Random,
}

impl AbDraw {
    /// The draw of a kind, by its name in [`kinds`].
    fn of(name: &str) -> AbDraw {
        if name.contains("deltanet") {
            AbDraw::DeltaNet
        } else if name.contains("random a/b") {
            AbDraw::Random
        } else {
            AbDraw::Rwkv7
        }
    }
}

/// A random vector of n values with Euclidean norm `norm`.
fn direction(rng: &mut Rng, n: usize, norm: f32) -> Vec<f32> {
    let x = rng.vec(n, 1.0);
    let len = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
    x.iter().map(|v| v * norm / len).collect()
}

/// Random inputs of one recurrence kind, drawn the way its models produce them.
struct Draw {
    shape: ScanShape,
    tokens: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    decay: Vec<f32>,
    consts: Vec<f32>,
    ab: Vec<f32>,
    state: Vec<f32>,
}

/// Log-decays between `lo` and `hi` (both <= 0).
fn log_decays(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| lo + (hi - lo) * (rng.uniform() + 1.0) / 2.0)
        .collect()
}

impl Draw {
    fn new(
        shape: ScanShape,
        tokens: usize,
        seed: u64,
        decay_range: (f32, f32),
        ab_draw: AbDraw,
    ) -> Draw {
        let mut rng = Rng::new(seed);
        let ScanShape {
            heads,
            qk_heads,
            dk,
            dv,
            ..
        } = shape;
        let positive = matches!(shape.decay, Decay::None);
        let mut feature = |n: usize| -> Vec<f32> {
            let x = rng.vec(n, 1.0);
            // Linear attention's feature maps (elu + 1) are positive.
            if positive {
                x.iter().map(|v| v.abs() + 0.05).collect()
            } else {
                x
            }
        };
        let q = feature(tokens * qk_heads * dk);
        let k = feature(tokens * qk_heads * dk);
        let v = rng.vec(tokens * heads * dv, 1.0);
        let (lo, hi) = decay_range;
        let gk = shape.gk();
        let (decay, consts) = match shape.decay {
            Decay::None => (vec![], vec![]),
            Decay::Gate { .. } => (log_decays(&mut rng, tokens * heads * gk, lo, hi), vec![]),
            // dt in (0, 1]; A = -exp(uniform) so dt * A spans the range asked for.
            Decay::DtA { .. } => {
                let dt = (0..tokens * heads)
                    .map(|_| 0.5 * (rng.uniform() + 1.0) + 1e-3)
                    .collect();
                (dt, log_decays(&mut rng, heads * gk, lo, hi))
            }
        };
        let consts = if shape.bonus {
            rng.vec(heads * dk, 1.0)
        } else {
            consts
        };
        // RWKV-7 and DeltaNet draw a transition diag(w) + a b^T that stays a contraction
        // as in their models (see AbDraw).
        let mut ab = Vec::new();
        if shape.delta {
            for t in 0..tokens {
                for h in 0..heads {
                    match ab_draw {
                        AbDraw::Rwkv7 => {
                            let kk = direction(&mut rng, dk, 1.0);
                            let rate: Vec<f32> =
                                (0..dk).map(|_| (rng.uniform() + 1.0) / 2.0).collect();
                            ab.extend(kk.iter().map(|x| -x));
                            ab.extend(kk.iter().zip(&rate).map(|(x, r)| x * r));
                        }
                        AbDraw::DeltaNet => {
                            let qk = (t * qk_heads + h / (heads / qk_heads)) * dk;
                            let key = &k[qk..qk + dk];
                            let len = key.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                            let beta = (rng.uniform() + 1.0) / 2.0;
                            ab.extend(key.iter().map(|x| -beta * x / len));
                            ab.extend(key.iter().map(|x| x / len));
                        }
                        AbDraw::Random => {
                            ab.extend(direction(&mut rng, dk, 0.7));
                            ab.extend(direction(&mut rng, dk, 0.7));
                        }
                    }
                }
            }
        }
        let state = rng.vec(heads * dv * dk, 0.5);
        Draw {
            shape,
            tokens,
            q,
            k,
            v,
            decay,
            consts,
            ab,
            state,
        }
    }

    /// The f64 reference: outputs and the final state.
    fn reference(&self) -> (Vec<f32>, Vec<f32>) {
        let inputs = ScanInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            decay: &self.decay,
            consts: &self.consts,
            ab: &self.ab,
        };
        let mut state: Vec<f64> = self.state.iter().map(|&x| x as f64).collect();
        let out = linear_scan::reference(&inputs, &self.shape, self.tokens, &mut state);
        (
            out.iter().map(|&x| x as f32).collect(),
            state.iter().map(|&x| x as f32).collect(),
        )
    }

    /// Tokens t0..t1 of the draw, from `state` (a GPU buffer the run updates): the
    /// dispatches in `form`, and the outputs.
    fn launch(
        &self,
        gpu: &Gpu,
        state: &wgpu::Buffer,
        (t0, t1): (usize, usize),
        form: Form,
    ) -> Result<(Vec<Dispatch>, GpuBuffer)> {
        let s = self.shape;
        let tokens = t1 - t0;
        let rows = |x: &[f32], per: usize| upload_f32(gpu, &x[t0 * per..t1 * per]);
        let opt = |x: &[f32], per: usize| (!x.is_empty()).then(|| rows(x, per));
        let qk = s.qk_heads * s.dk;
        let (q, k, v) = (
            rows(&self.q, qk),
            rows(&self.k, qk),
            rows(&self.v, s.heads * s.dv),
        );
        let decay = opt(&self.decay, self.decay.len() / self.tokens.max(1));
        let consts = (!self.consts.is_empty()).then(|| upload_f32(gpu, &self.consts));
        let ab = opt(&self.ab, s.heads * 2 * s.dk);
        let out = poisoned(gpu, tokens * s.heads * s.dv);
        let b = ScanBuffers {
            q: &q,
            k: &k,
            v: &v,
            decay: decay.as_deref(),
            consts: consts.as_deref(),
            ab: ab.as_deref(),
            state,
            out: &out,
        };
        let d = match form {
            Form::Rows => linear_scan::launch_rows(gpu, &b, &s, tokens)?,
            Form::Lanes if linear_scan::runs_lanes(gpu) => {
                linear_scan::launch_lanes(gpu, &b, &s, tokens)?
            }
            Form::Lanes => match linear_scan::launch_lanes(gpu, &b, &s, tokens) {
                Err(Error::Graph(_)) => linear_scan::launch_rows(gpu, &b, &s, tokens)?,
                other => {
                    return Err(super::bad_case(format!(
                        "the lanes kernel was not refused without subgroups: {:?}",
                        other.map(|d| d.len())
                    )))
                }
            },
            Form::Chunked(c) => {
                let scratch = poisoned(gpu, linear_scan::scratch_floats(&s, tokens, c));
                linear_scan::launch_chunked(gpu, &b, &scratch, &s, tokens, c)?.to_vec()
            }
            Form::Matmul(c) => {
                let floats = linear_scan::matmul_scratch_floats(&s, tokens, c);
                let scratch = poisoned(gpu, floats);
                linear_scan::launch_matmul(gpu, &b, &scratch, &s, tokens, c)?.to_vec()
            }
            Form::Paged { lanes } => {
                let batch = batch_uniform(gpu, &PAGED_SEQS);
                let launch =
                    |lanes| linear_scan::launch_paged(gpu, &b, &batch, &s, PAGED_PICKS, lanes);
                match (lanes, linear_scan::runs_lanes(gpu)) {
                    (true, false) => match launch(true) {
                        Err(Error::Graph(_)) => vec![launch(false)?],
                        other => {
                            return Err(super::bad_case(format!(
                                "the paged lanes kernel was not refused without subgroups: {}",
                                other.is_ok()
                            )))
                        }
                    },
                    _ => vec![launch(lanes)?],
                }
            }
        };
        Ok((d, out))
    }
}

fn shape(heads: usize, qk_heads: usize, dk: usize, dv: usize, decay: Decay) -> ScanShape {
    ScanShape {
        heads,
        qk_heads,
        dk,
        dv,
        decay,
        delta: false,
        bonus: false,
    }
}

/// Every kind, named, at small ragged sizes.
fn kinds() -> Vec<(&'static str, ScanShape)> {
    let gate = Decay::Gate { per_key: true };
    vec![
        ("gla", shape(4, 4, 16, 24, gate)),
        ("mamba", shape(40, 1, 16, 1, Decay::DtA { per_key: true })),
        ("mamba2", shape(4, 2, 16, 32, Decay::DtA { per_key: false })),
        (
            "rwkv6",
            ScanShape {
                bonus: true,
                ..shape(3, 3, 16, 16, gate)
            },
        ),
        (
            "rwkv7",
            ScanShape {
                delta: true,
                ..shape(2, 2, 16, 16, gate)
            },
        ),
        ("linear attention", shape(2, 2, 8, 8, Decay::None)),
        (
            "gla scalar gate, dk 100",
            shape(2, 1, 100, 3, Decay::Gate { per_key: false }),
        ),
        (
            "rwkv7 dk 72",
            ScanShape {
                delta: true,
                ..shape(1, 1, 72, 5, gate)
            },
        ),
        // Gated DeltaNet: the delta term with one decay per head, dk past a key tile.
        (
            "gated deltanet",
            ScanShape {
                delta: true,
                ..shape(3, 3, 24, 20, Decay::Gate { per_key: false })
            },
        ),
        // The delta term with a and b unrelated to each other (AbDraw::Random), several
        // key and value tiles of the delta kind's matmul form, both ragged.
        (
            "rwkv7 random a/b dk 40 dv 24",
            ScanShape {
                delta: true,
                ..shape(2, 2, 40, 24, gate)
            },
        ),
        // Several key and value tiles of the matmul form, both ragged.
        ("gla dk 72 dv 40", shape(2, 1, 72, 40, gate)),
        (
            "rwkv6 dk 40 dv 70",
            ScanShape {
                bonus: true,
                ..shape(1, 1, 40, 70, gate)
            },
        ),
    ]
}

/// One run of a draw in one form: outputs and final state against the reference.
fn case(
    name: &str,
    shape: ScanShape,
    tokens: usize,
    seed: u64,
    decays: (f32, f32),
    form: Form,
) -> Case {
    let what = format!("{name} T={tokens} decays {decays:?} {form:?}");
    let ab_draw = AbDraw::of(name);
    Case::new("linear_scan", what, move |gpu| {
        let draw = Draw::new(shape, tokens, seed, decays, ab_draw);
        let (want_out, want_state) = draw.reference();
        let state = upload_f32(gpu, &draw.state);
        let (d, out) = draw.launch(gpu, &state, (0, tokens), form)?;
        let outputs = vec![
            Output::close("outputs", &out, want_out, SCAN_TOL),
            Output::close("final state", &state, want_state, SCAN_TOL),
        ];
        Ok(Prepared::new(gpu, d, outputs))
    })
}

/// A batched step ([`Form::Paged`]) over the rows of a draw, then two padding rows no
/// sequence owns (not compared: left unwritten): each sequence's outputs, and its slot of a
/// pool of random states, against the reference run from that slot's state alone.
fn paged_case(name: &'static str, shape: ScanShape, seed: u64, lanes: bool) -> Case {
    let what = format!("{name} batched {PAGED_SEQS:?} lanes {lanes}");
    Case::new("linear_scan", what, move |gpu| {
        let rows: usize = PAGED_SEQS.iter().map(|s| s.0).sum();
        let draw = Draw::new(shape, rows + 2, seed, (-3.0, 0.0), AbDraw::of(name));
        let per_slot = shape.heads * shape.dv * shape.dk;
        let pool = Rng::new(seed + 1).vec(PAGED_SLOTS * per_slot, 0.5);
        let mut want_state = pool.clone();
        let mut want_out = Vec::new();
        let mut first = 0;
        for &(n, slot) in &PAGED_SEQS {
            // Rows first..first + n of an input laid out row by row (whole when constant).
            let rows_of = |x: &'_ [f32]| -> Vec<f32> {
                let per = x.len() / draw.tokens;
                x[first * per..(first + n) * per].to_vec()
            };
            let (q, k, v) = (rows_of(&draw.q), rows_of(&draw.k), rows_of(&draw.v));
            let (decay, ab) = (rows_of(&draw.decay), rows_of(&draw.ab));
            let inputs = ScanInputs {
                q: &q,
                k: &k,
                v: &v,
                decay: &decay,
                consts: &draw.consts,
                ab: &ab,
            };
            let st = &mut want_state[slot * per_slot..][..per_slot];
            let mut s64: Vec<f64> = st.iter().map(|&x| x as f64).collect();
            let out = linear_scan::reference(&inputs, &shape, n, &mut s64);
            want_out.extend(out.iter().map(|&x| x as f32));
            st.iter_mut().zip(&s64).for_each(|(d, s)| *d = *s as f32);
            first += n;
        }
        let state = upload_f32(gpu, &pool);
        let (d, out) = draw.launch(gpu, &state, (0, draw.tokens), Form::Paged { lanes })?;
        let outputs = vec![
            Output::close("outputs", &out, want_out, SCAN_TOL),
            Output::close("slots' states", &state, want_state, SCAN_TOL),
        ];
        Ok(Prepared::new(gpu, d, outputs))
    })
}

/// `others`, then the matmul form with chunks of each length in `matmul` (lengths up to
/// [`MM_CHUNK`]; for the delta kind, whose chunks are shorter, the same fraction of
/// [`MM_DELTA_CHUNK`]: 31 and 32 become 15 and 16).
fn forms(shape: ScanShape, others: &[Form], matmul: &[usize]) -> Vec<Form> {
    let most = shape.matmul_chunk();
    let mm = matmul.iter().map(|&c| Form::Matmul(c * most / MM_CHUNK));
    let mm: Vec<Form> = match shape.matmul_form() {
        true => mm.collect(),
        false => vec![],
    };
    others.iter().copied().chain(mm).collect()
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (name, shape)) in kinds().into_iter().enumerate() {
        for (j, tokens) in [1usize, 29, 100].into_iter().enumerate() {
            let seed = 100 + 10 * i as u64 + j as u64;
            let all = [
                Form::Rows,
                Form::Lanes,
                Form::Chunked(16),
                Form::Chunked(CHUNK),
            ];
            for form in forms(shape, &all, &[16, MM_CHUNK]) {
                cases.push(case(name, shape, tokens, seed, (-1.0, -0.01), form));
            }
        }
        // The matmul form at 257 tokens (nine chunks, the last of one token), chunks of 31.
        for form in forms(shape, &[], &[31, MM_CHUNK]) {
            cases.push(case(name, shape, 257, 500 + i as u64, (-3.0, 0.0), form));
        }
        // 2,048 tokens with long memory (decays 1 - 1e-4 .. 1 - 1e-2) and decays down to e^-20.
        for (j, decays) in [(-1e-2, -1e-4), (-20.0, -0.5)].into_iter().enumerate() {
            if shape.decay == Decay::None && j == 1 {
                continue; // no decay to vary
            }
            let seed = 900 + 10 * i as u64 + j as u64;
            let all = [Form::Rows, Form::Lanes, Form::Chunked(CHUNK)];
            for form in forms(shape, &all, &[MM_CHUNK]) {
                cases.push(case(name, shape, 2048, seed, decays, form));
            }
        }
    }
    // The browser's: GLA, RWKV-6 and RWKV-7 decoding a few tokens and prefilling a few
    // chunks, token by token and in the matmul form (which a browser adapter may take).
    for (name, shape) in kinds()
        .into_iter()
        .filter(|(n, _)| ["gla", "rwkv6", "rwkv7"].contains(n))
    {
        let others = [Form::Rows, Form::Chunked(CHUNK)];
        for form in forms(shape, &others, &[MM_CHUNK]) {
            let tokens = if form == Form::Rows { 5 } else { 150 };
            cases.push(case(name, shape, tokens, 1300, (-3.0, 0.0), form).browser(true));
        }
    }
    // Model-sized prefills of 512 tokens in each form a prefill may take, for
    // `kestrel bench --kernels`: RWKV-6 0.1B's time mix (12 heads of 64), a Mamba-2
    // mixer (24 heads of 64 values, one group of 128 state dims) and RWKV-7 0.1B's (12
    // heads of 64, the delta term; also at 128 tokens).
    let rwkv7 = ScanShape {
        delta: true,
        ..shape(12, 12, 64, 64, Decay::Gate { per_key: true })
    };
    for form in forms(rwkv7, &[Form::Lanes, Form::Chunked(CHUNK)], &[MM_CHUNK]) {
        cases.push(case("rwkv7 0.1B", rwkv7, 128, 1401, (-0.6, 0.0), form));
        cases.push(case("rwkv7 0.1B", rwkv7, 512, 1400, (-0.6, 0.0), form));
    }
    let model_sized = [
        (
            "rwkv6 0.1B",
            ScanShape {
                bonus: true,
                ..shape(12, 12, 64, 64, Decay::Gate { per_key: true })
            },
        ),
        (
            "mamba2",
            shape(24, 1, 128, 64, Decay::DtA { per_key: false }),
        ),
    ];
    for (name, shape) in model_sized {
        let all = [Form::Lanes, Form::Chunked(CHUNK)];
        for form in forms(shape, &all, &[MM_CHUNK]) {
            cases.push(case(name, shape, 512, 1400, (-3.0, 0.0), form));
        }
    }
    for (i, (name, shape)) in kinds().into_iter().enumerate() {
        for lanes in [false, true] {
            cases.push(paged_case(name, shape, 1500 + i as u64, lanes));
        }
    }
    cases.push(prefill_then_decode(4, Form::Chunked(16)));
    cases.push(prefill_then_decode(3, Form::Matmul(MM_CHUNK)));
    cases.push(prefill_then_decode(4, Form::Matmul(MM_DELTA_CHUNK)));
    cases.push(prefill_then_decode(8, Form::Matmul(MM_DELTA_CHUNK)));
    cases
}

/// A chunked prefill of 37 tokens of kind `kind` in `form`, then 5 single-token steps from
/// its state, in one pass: the same as 42 tokens token by token.
fn prefill_then_decode(kind: usize, form: Form) -> Case {
    let (name, shape) = kinds().swap_remove(kind);
    let what = format!("{name} prefill 37 {form:?} then 5 decode steps");
    Case::new("linear_scan", what, move |gpu| {
        let draw = Draw::new(shape, 42, 7, (-1.0, -0.01), AbDraw::of(name));
        let (want_out, want_state) = draw.reference();
        let state = upload_f32(gpu, &draw.state);
        let (mut d, prefill) = draw.launch(gpu, &state, (0, 37), form)?;
        let split = 37 * shape.heads * shape.dv;
        let mut outputs = vec![Output::close(
            "prefill outputs",
            &prefill,
            want_out[..split].to_vec(),
            SCAN_TOL,
        )];
        for t in 37..42 {
            let (step, out) = draw.launch(gpu, &state, (t, t + 1), Form::Lanes)?;
            d.extend(step);
            let n = shape.heads * shape.dv;
            let want = want_out[t * n..(t + 1) * n].to_vec();
            outputs.push(Output::close(
                &format!("step {t} outputs"),
                &out,
                want,
                SCAN_TOL,
            ));
        }
        outputs.push(Output::close("final state", &state, want_state, SCAN_TOL));
        Ok(Prepared::new(gpu, d, outputs))
    })
}

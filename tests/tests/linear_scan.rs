//! The gated linear recurrence (kernels::linear_scan) against its f64 CPU reference, in both
//! forms — token by token (decode) and the chunked scan (prefill) — for every kind the
//! linear-time models use: GLA (per-key gate), Mamba (dt * A per key, one value per head,
//! q/k shared by all heads), Mamba-2 (dt * A per head, grouped q/k), RWKV-6 (per-key decay and
//! the bonus u), RWKV-7 (per-key decay and the delta term) and plain linear attention.
//! Sizes are ragged (token counts not multiples of the chunk, key dims not multiples of 64),
//! the sequence starts from a random non-zero state, outputs and scratch start as NaN, and
//! the final state is compared as well as the outputs.
//!
//! Tolerance `SCAN_TOL` = 1e-5 relative: each output is an f32 dot product of dk terms over
//! an f32 state that took one multiply-add per token; decays are <= 1 so old rounding errors
//! shrink, and with no decay (linear attention) they add up like a random walk: about
//! sqrt(T) * 2^-24 ~ 3e-6 after 2,048 tokens. Any indexing, ordering or chunk-boundary error
//! is of order 1. The 2,048-token runs also cover decays from 1 - 1e-4 (long memory) to
//! e^-20 (none), where a form that divided by cumulative decays would overflow.

use kestrel_runtime::kernels::linear_scan::{
    self, Decay, ScanBuffers, ScanInputs, ScanShape, CHUNK,
};
use kestrel_runtime::rng::Rng;
use kestrel_tests::*;

const SCAN_TOL: f64 = 1e-5;

/// Random inputs of one recurrence kind, drawn the way its models produce them.
struct Case {
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

impl Case {
    fn draw(shape: ScanShape, tokens: usize, seed: u64, decay_range: (f32, f32)) -> Case {
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
        // RWKV-7: a = -kk, b = kk * rate with kk a unit vector and rate in (0, 1), so the
        // transition diag(w) - kk^T (kk * rate) stays a contraction as in the model.
        let mut ab = Vec::new();
        if shape.delta {
            for _ in 0..tokens * heads {
                let kk = rng.vec(dk, 1.0);
                let norm = kk.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                let rate: Vec<f32> = (0..dk).map(|_| (rng.uniform() + 1.0) / 2.0).collect();
                ab.extend(kk.iter().map(|x| -x / norm));
                ab.extend(kk.iter().zip(&rate).map(|(x, r)| x / norm * r));
            }
        }
        let state = rng.vec(heads * dv * dk, 0.5);
        Case {
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

    fn inputs(&self) -> ScanInputs<'_> {
        ScanInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            decay: &self.decay,
            consts: &self.consts,
            ab: &self.ab,
        }
    }

    /// The f64 reference: outputs and the final state.
    fn reference(&self) -> (Vec<f32>, Vec<f32>) {
        let mut state: Vec<f64> = self.state.iter().map(|&x| x as f64).collect();
        let out = linear_scan::reference(&self.inputs(), &self.shape, self.tokens, &mut state);
        (
            out.iter().map(|&x| x as f32).collect(),
            state.iter().map(|&x| x as f32).collect(),
        )
    }

    /// Run on the GPU, token by token (`chunk` None) or by the chunked scan.
    fn run(
        &self,
        gpu: &std::sync::Arc<kestrel_runtime::Gpu>,
        chunk: Option<usize>,
    ) -> (Vec<f32>, Vec<f32>) {
        let opt = |x: &[f32]| (!x.is_empty()).then(|| upload_f32(gpu, x));
        let (q, k, v) = (
            upload_f32(gpu, &self.q),
            upload_f32(gpu, &self.k),
            upload_f32(gpu, &self.v),
        );
        let (decay, consts, ab) = (opt(&self.decay), opt(&self.consts), opt(&self.ab));
        let state = upload_f32(gpu, &self.state);
        let n_out = self.tokens * self.shape.heads * self.shape.dv;
        let out = poisoned(gpu, n_out);
        let b = ScanBuffers {
            q: &q,
            k: &k,
            v: &v,
            decay: decay.as_ref(),
            consts: consts.as_ref(),
            ab: ab.as_ref(),
            state: &state,
            out: &out,
        };
        let dispatches = match chunk {
            None => linear_scan::launch_recurrent(gpu, &b, &self.shape, self.tokens).unwrap(),
            Some(c) => {
                let scratch = poisoned(
                    gpu,
                    linear_scan::scratch_floats(&self.shape, self.tokens, c),
                );
                linear_scan::launch_chunked(gpu, &b, &scratch, &self.shape, self.tokens, c)
                    .unwrap()
                    .to_vec()
            }
        };
        run(gpu, &dispatches);
        (
            read(gpu, &out, n_out),
            read(gpu, &state, self.shape.state_floats()),
        )
    }

    /// Both forms (the chunked one at each chunk length) against the reference.
    fn check(&self, what: &str, chunks: &[usize]) {
        let (want_out, want_state) = self.reference();
        for gpu in gpus() {
            let b = gpu.backend_name();
            for chunk in std::iter::once(None).chain(chunks.iter().map(|&c| Some(c))) {
                let form = chunk.map_or("recurrent".to_string(), |c| format!("chunked({c})"));
                let (out, state) = self.run(&gpu, chunk);
                let what = format!("{what} T={} {form} [{b}]", self.tokens);
                assert_close(&format!("{what} outputs"), &out, &want_out, SCAN_TOL);
                assert_close(
                    &format!("{what} final state"),
                    &state,
                    &want_state,
                    SCAN_TOL,
                );
            }
        }
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
    ]
}

#[test]
fn both_forms_match_the_reference_for_every_kind() {
    for (i, (name, shape)) in kinds().into_iter().enumerate() {
        for (j, tokens) in [1usize, 29, 100].into_iter().enumerate() {
            let case = Case::draw(shape, tokens, 100 + 10 * i as u64 + j as u64, (-1.0, -0.01));
            case.check(name, &[16, CHUNK]);
        }
    }
}

/// 2,048 tokens through each kind against the f64 reference, with long memory (decays
/// 1 - 1e-4 .. 1 - 1e-2) and with decays down to e^-20.
#[test]
fn two_thousand_tokens_stay_accurate() {
    for (i, (name, shape)) in kinds().into_iter().enumerate() {
        for (j, range) in [(-1e-2, -1e-4), (-20.0, -0.5)].into_iter().enumerate() {
            if shape.decay == Decay::None && j == 1 {
                continue; // no decay to vary
            }
            let case = Case::draw(shape, 2048, 900 + 10 * i as u64 + j as u64, range);
            case.check(&format!("{name} decays {range:?}"), &[CHUNK]);
        }
    }
}

#[test]
fn decode_steps_continue_a_chunked_prefill() {
    // Prefill 37 tokens chunked, then 5 single-token steps: the same as 42 recurrent tokens.
    let (name, shape) = kinds().swap_remove(4);
    let case = Case::draw(shape, 42, 7, (-1.0, -0.01));
    let (want_out, want_state) = case.reference();
    let split = 37;
    for gpu in gpus() {
        let n = shape.heads * shape.dv;
        let sub = |x: &[f32], per: usize, t0: usize, t1: usize| x[t0 * per..t1 * per].to_vec();
        let qk = shape.qk_heads * shape.dk;
        let part = |t0: usize, t1: usize, state: Vec<f32>| Case {
            shape,
            tokens: t1 - t0,
            q: sub(&case.q, qk, t0, t1),
            k: sub(&case.k, qk, t0, t1),
            v: sub(&case.v, n, t0, t1),
            decay: sub(&case.decay, shape.heads * shape.gk(), t0, t1),
            consts: case.consts.clone(),
            ab: sub(&case.ab, shape.heads * 2 * shape.dk, t0, t1),
            state,
        };
        let (mut out, mut state) = part(0, split, case.state.clone()).run(&gpu, Some(16));
        for t in split..42 {
            let (o, s) = part(t, t + 1, state).run(&gpu, None);
            out.extend(o);
            state = s;
        }
        let b = gpu.backend_name();
        assert_close(
            &format!("{name} prefill+decode outputs [{b}]"),
            &out,
            &want_out,
            SCAN_TOL,
        );
        assert_close(
            &format!("{name} prefill+decode state [{b}]"),
            &state,
            &want_state,
            SCAN_TOL,
        );
    }
}

#[test]
fn bad_shapes_are_errors() {
    let gate = Decay::Gate { per_key: true };
    let bad = [
        shape(3, 2, 16, 16, gate),
        shape(2, 2, 300, 16, gate),
        shape(0, 1, 16, 16, gate),
        ScanShape {
            bonus: true,
            ..shape(2, 2, 16, 16, Decay::DtA { per_key: false })
        },
    ];
    for s in bad {
        assert!(s.validate().is_err(), "{s:?} accepted");
    }
    // A missing input is an error, not a read of the dummy buffer.
    let gpu = &gpus()[0];
    let x = upload_f32(gpu, &[0.0; 64]);
    let b = ScanBuffers {
        q: &x,
        k: &x,
        v: &x,
        decay: None,
        consts: None,
        ab: None,
        state: &x,
        out: &x,
    };
    let err = linear_scan::launch_recurrent(gpu, &b, &shape(1, 1, 4, 4, gate), 1)
        .expect_err("a gate decay without its input was accepted");
    assert!(err.to_string().contains("decay"), "{err}");
}

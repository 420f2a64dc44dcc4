//! RWKV-4's WKV (kernels::wkv4) against its f64 CPU reference (transformers'
//! `rwkv_linear_attention_cpu`), in both forms — token by token (decode) and chunked
//! (prefill: chunk-local states, a carry over chunk boundaries, chunk outputs) — and against
//! each other. Sizes are ragged (1, 37, 100 channels; 1, 29, 100 tokens with chunks of 7 and
//! 32 that do not divide them), outputs and scratch start as NaN, sequences start from a
//! random non-empty state or from the session's zero state (which must act as HF's empty
//! state, pp = -1e38), and the final state is compared by its meaning — the weighted mean
//! aa / bb and the log of the total weight pp + ln bb, which do not depend on how a form
//! splits e^pp between pp and (aa, bb) — and by the outputs of three more decode steps from it.
//!
//! Tolerances. `TOL` = 1e-5 relative for keys of order 1: every output is a ratio of two
//! f32 sums whose terms each took a few roundings and an f32 exp; pp drifts by one rounding
//! of pp + w per token, but pp scales numerator and denominator alike, so only the balance
//! between the state and the current token moves (measured on lavapipe and llvmpipe: at most
//! 4.6e-6, 2,048 tokens included). `LARGE_TOL` = 1e-4 for keys up to +-60 and u up to 30:
//! u + k and pp + w are rounded at magnitudes up to 90, where an f32 ulp is 7.6e-6, and e^x
//! turns that absolute error into a relative one of the weights (measured: at most 1.6e-5).
//! Any indexing, ordering or chunk-boundary error is of order 1.

use kestrel_runtime::kernels::wkv4::{self, Wkv4Buffers, CHUNK};
use kestrel_runtime::rng::Rng;
use kestrel_tests::*;

const TOL: f64 = 1e-5;
const LARGE_TOL: f64 = 1e-4;
/// Decode steps run from each final state.
const FOLLOW: usize = 3;

struct Case {
    channels: usize,
    tokens: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    w: Vec<f32>,
    u: Vec<f32>,
    state: Vec<f32>,
    /// Keys and values of the FOLLOW decode steps after the run.
    k2: Vec<f32>,
    v2: Vec<f32>,
}

impl Case {
    /// Keys of scale `k_scale`, u of scale `u_scale`, from a random state or a zero one.
    fn draw(
        channels: usize,
        tokens: usize,
        seed: u64,
        k_scale: f32,
        u_scale: f32,
        zero_state: bool,
    ) -> Case {
        let mut rng = Rng::new(seed);
        let c = channels;
        let k = rng.vec(tokens * c, k_scale);
        let v = rng.vec(tokens * c, 1.0);
        // time_decay in [-5, 2]: w = -exp(.) from -0.0067 (long memory) to -7.4.
        let w = (0..c)
            .map(|_| -(-1.5 + 3.5 * rng.uniform()).exp())
            .collect();
        let u = rng.vec(c, u_scale);
        let state = if zero_state {
            vec![0.0; 3 * c]
        } else {
            let mut s = rng.vec(c, 1.0);
            s.extend((0..c).map(|_| 0.5 + 0.75 * (rng.uniform() + 1.0)));
            s.extend(rng.vec(c, k_scale));
            s
        };
        let k2 = rng.vec(FOLLOW * c, k_scale);
        let v2 = rng.vec(FOLLOW * c, 1.0);
        Case {
            channels,
            tokens,
            k,
            v,
            w,
            u,
            state,
            k2,
            v2,
        }
    }

    /// The f64 reference: outputs, the final state, and the FOLLOW outputs after it.
    fn reference(&self) -> (Vec<f32>, Vec<f64>, Vec<f32>) {
        let mut state: Vec<f64> = self.state.iter().map(|&x| x as f64).collect();
        let c = self.channels;
        let out = wkv4::reference(
            &self.k,
            &self.v,
            &self.w,
            &self.u,
            c,
            self.tokens,
            &mut state,
        );
        let after = state.clone();
        let follow = wkv4::reference(&self.k2, &self.v2, &self.w, &self.u, c, FOLLOW, &mut state);
        (f32s(&out), after, f32s(&follow))
    }

    /// Run on the GPU, token by token (`chunk` None) or chunked; then FOLLOW decode steps.
    fn run(
        &self,
        gpu: &std::sync::Arc<kestrel_runtime::Gpu>,
        chunk: Option<usize>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = self.channels;
        let (k, v, w, u) = (
            upload_f32(gpu, &self.k),
            upload_f32(gpu, &self.v),
            upload_f32(gpu, &self.w),
            upload_f32(gpu, &self.u),
        );
        let state = upload_f32(gpu, &self.state);
        let n_out = self.tokens * c;
        let out = poisoned(gpu, n_out);
        let b = Wkv4Buffers {
            k: &k,
            v: &v,
            w: &w,
            u: &u,
            state: &state,
            out: &out,
        };
        let dispatches = match chunk {
            None => wkv4::launch_recurrent(gpu, &b, c, self.tokens).unwrap(),
            Some(ch) => {
                let scratch = poisoned(gpu, wkv4::scratch_floats(c, self.tokens, ch));
                wkv4::launch_chunked(gpu, &b, &scratch, c, self.tokens, ch).unwrap()
            }
        };
        run(gpu, &dispatches);
        let out_v = read(gpu, &out, n_out);
        let state_v = read(gpu, &state, 3 * c);
        let (k2, v2) = (upload_f32(gpu, &self.k2), upload_f32(gpu, &self.v2));
        let out2 = poisoned(gpu, FOLLOW * c);
        let b2 = Wkv4Buffers {
            k: &k2,
            v: &v2,
            out: &out2,
            ..b
        };
        run(gpu, &wkv4::launch_recurrent(gpu, &b2, c, FOLLOW).unwrap());
        (out_v, state_v, read(gpu, &out2, FOLLOW * c))
    }

    fn check(&self, what: &str, chunks: &[usize], tol: f64) {
        let (want_out, want_state, want_follow) = self.reference();
        let (want_mean, want_logw) = meaning(&want_state, self.channels);
        for gpu in gpus() {
            let b = gpu.backend_name();
            let mut recurrent = None;
            for chunk in std::iter::once(None).chain(chunks.iter().map(|&c| Some(c))) {
                let form = chunk.map_or("recurrent".to_string(), |c| format!("chunked({c})"));
                let what = format!("{what} C={} T={} {form} [{b}]", self.channels, self.tokens);
                let (out, state, follow) = self.run(&gpu, chunk);
                assert_close(&format!("{what} outputs"), &out, &want_out, tol);
                let s: Vec<f64> = state.iter().map(|&x| x as f64).collect();
                let (mean, logw) = meaning(&s, self.channels);
                assert_near(&format!("{what} state aa/bb"), &mean, &want_mean, tol);
                assert_near(&format!("{what} state pp+ln bb"), &logw, &want_logw, tol);
                assert_close(&format!("{what} next steps"), &follow, &want_follow, tol);
                match &recurrent {
                    None => recurrent = Some(out),
                    Some(r) => assert_close(&format!("{what} vs recurrent"), &out, r, tol),
                }
            }
        }
    }
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Panic unless every |out - want| <= tol * (1 + |want|): the weighted mean of values of
/// order 1 may cancel to near 0 in a channel, where a relative norm over few channels would
/// measure only that cancellation.
fn assert_near(what: &str, out: &[f32], want: &[f32], tol: f64) {
    let worst = out
        .iter()
        .zip(want)
        .map(|(&o, &r)| (o as f64 - r as f64).abs() / (1.0 + (r as f64).abs()))
        .fold(0.0f64, |m, e| {
            if e.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(e)
            }
        });
    if std::env::var_os("KESTREL_TEST_VERBOSE").is_some() {
        eprintln!("{what}: error {worst:.2e} (tolerance {tol:.0e})");
    }
    assert!(worst <= tol, "{what}: error {worst:.3e} > {tol:.0e}");
}

/// A state's meaning: per channel the weighted mean aa / bb and the log weight pp + ln bb.
fn meaning(state: &[f64], c: usize) -> (Vec<f32>, Vec<f32>) {
    let mean = (0..c).map(|i| (state[i] / state[c + i]) as f32).collect();
    let logw = (0..c)
        .map(|i| (state[2 * c + i] + state[c + i].ln()) as f32)
        .collect();
    (mean, logw)
}

#[test]
fn wkv4_ragged_both_forms_match_reference() {
    let mut seed = 1;
    for channels in [1, 37, 100] {
        for tokens in [1, 29, 100] {
            for zero in [false, true] {
                seed += 1;
                let case = Case::draw(channels, tokens, seed, 3.0, 1.0, zero);
                let what = if zero { "zero state" } else { "random state" };
                case.check(what, &[7, CHUNK], TOL);
            }
        }
    }
}

#[test]
fn wkv4_large_keys_stay_finite() {
    for (channels, tokens, zero) in [(37, 100, true), (100, 29, false)] {
        let case = Case::draw(channels, tokens, 77 + tokens as u64, 60.0, 30.0, zero);
        case.check("keys +-60, u +-30", &[7, CHUNK], LARGE_TOL);
    }
}

#[test]
fn wkv4_long_sequence() {
    let case = Case::draw(64, 2048, 99, 3.0, 1.0, false);
    case.check("2,048 tokens", &[CHUNK, 100], TOL);
}

/// The session's zero state is an empty one: the first output is v exactly, and the run
/// matches transformers' own start (pp = -1e38 with the formula applied as is).
#[test]
fn wkv4_zero_state_is_empty() {
    let case = Case::draw(37, 29, 5, 3.0, 1.0, true);
    let c = case.channels;
    // HF's formula in f64 from num = den = 0, max = -1e38, with no special case.
    let (mut aa, mut bb, mut pp) = (vec![0.0f64; c], vec![0.0f64; c], vec![-1e38f64; c]);
    let mut hf = vec![0.0f32; case.tokens * c];
    for t in 0..case.tokens {
        for i in 0..c {
            let (kt, vt) = (case.k[t * c + i] as f64, case.v[t * c + i] as f64);
            let (w, u) = (case.w[i] as f64, case.u[i] as f64);
            let p = pp[i].max(u + kt);
            let (e1, e2) = ((pp[i] - p).exp(), (u + kt - p).exp());
            hf[t * c + i] = ((e1 * aa[i] + e2 * vt) / (e1 * bb[i] + e2)) as f32;
            let q = (pp[i] + w).max(kt);
            let (e1, e2) = ((pp[i] + w - q).exp(), (kt - q).exp());
            aa[i] = e1 * aa[i] + e2 * vt;
            bb[i] = e1 * bb[i] + e2;
            pp[i] = q;
        }
    }
    for gpu in gpus() {
        for chunk in [None, Some(7)] {
            let (out, _, _) = case.run(&gpu, chunk);
            let what = format!("zero state {chunk:?} [{}]", gpu.backend_name());
            assert_same_bits(&format!("{what} first token"), &out[..c], &case.v[..c]);
            assert_close(&format!("{what} vs HF start"), &out, &hf, TOL);
        }
    }
}

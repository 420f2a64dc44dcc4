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
//! Tolerances. [`SCAN_TOL`] = 1e-5 relative for keys of order 1: every output is a ratio of
//! two f32 sums whose terms each took a few roundings and an f32 exp; pp drifts by one
//! rounding of pp + w per token, but pp scales numerator and denominator alike, so only the
//! balance between the state and the current token moves (measured on lavapipe and llvmpipe:
//! at most 4.6e-6, 2,048 tokens included). [`LARGE_TOL`] = 1e-4 for keys up to +-60 and u up
//! to 30: u + k and pp + w are rounded at magnitudes up to 90, where an f32 ulp is 7.6e-6,
//! and e^x turns that absolute error into a relative one of the weights (measured: at most
//! 1.6e-5). Any indexing, ordering or chunk-boundary error is of order 1.

use super::{
    f32s, poisoned, step, step_buffer, upload_f32, words, Case, Expect, Output, Prepared, SCAN_TOL,
};
use crate::kernels::copy::{self, CopyParams};
use crate::kernels::wkv4::{self, Wkv4Buffers, CHUNK, STATE_ROWS};
use crate::rng::Rng;

pub const LARGE_TOL: f64 = 1e-4;
/// Decode steps run from each final state.
const FOLLOW: usize = 3;

/// Random inputs: keys of scale `k_scale`, u of scale `u_scale`, from a random state or the
/// session's zero one.
struct Draw {
    k: Vec<f32>,
    v: Vec<f32>,
    w: Vec<f32>,
    u: Vec<f32>,
    state: Vec<f32>,
    /// Keys and values of the FOLLOW decode steps after the run.
    k2: Vec<f32>,
    v2: Vec<f32>,
}

impl Draw {
    fn new(c: usize, tokens: usize, seed: u64, k_scale: f32, u_scale: f32, zero: bool) -> Draw {
        let mut rng = Rng::new(seed);
        let k = rng.vec(tokens * c, k_scale);
        let v = rng.vec(tokens * c, 1.0);
        // time_decay in [-5, 2]: w = -exp(.) from -0.0067 (long memory) to -7.4.
        let w = (0..c)
            .map(|_| -(-1.5 + 3.5 * rng.uniform()).exp())
            .collect();
        let u = rng.vec(c, u_scale);
        let state = if zero {
            vec![0.0; STATE_ROWS * c]
        } else {
            let mut s = rng.vec(c, 1.0);
            s.extend((0..c).map(|_| 0.5 + 0.75 * (rng.uniform() + 1.0)));
            s.extend(rng.vec(c, k_scale));
            s
        };
        let k2 = rng.vec(FOLLOW * c, k_scale);
        let v2 = rng.vec(FOLLOW * c, 1.0);
        Draw {
            k,
            v,
            w,
            u,
            state,
            k2,
            v2,
        }
    }
}

/// A state's meaning: per channel the weighted mean aa / bb, and the log weight pp + ln bb.
fn meaning(state: &[f64], c: usize) -> (Vec<f32>, Vec<f32>) {
    let mean = (0..c).map(|i| (state[i] / state[c + i]) as f32).collect();
    let logw = (0..c)
        .map(|i| (state[2 * c + i] + state[c + i].ln()) as f32)
        .collect();
    (mean, logw)
}

/// The meaning of a GPU state, as words: the means (`logw` false) or the log weights.
fn gpu_meaning(state_words: &[u32], c: usize, logw: bool) -> Vec<u32> {
    let s: Vec<f64> = f32s(state_words).iter().map(|&x| x as f64).collect();
    let (mean, log) = meaning(&s, c);
    words(if logw { &log } else { &mean })
}

/// Every form (token by token, then chunked at each of `chunks`) from the same draw: each
/// form's outputs, final state (by its meaning) and next decode steps against the
/// reference, and each chunked form's outputs against the token-by-token ones.
#[allow(clippy::too_many_arguments)]
fn case(
    what: &str,
    channels: usize,
    tokens: usize,
    seed: u64,
    (k_scale, u_scale): (f32, f32),
    zero: bool,
    chunks: &'static [usize],
    tol: f64,
) -> Case {
    let what = format!("{what} C={channels} T={tokens}");
    Case::new("wkv4", what, move |gpu| {
        let c = channels;
        let draw = Draw::new(c, tokens, seed, k_scale, u_scale, zero);
        let mut state: Vec<f64> = draw.state.iter().map(|&x| x as f64).collect();
        let want = wkv4::reference(&draw.k, &draw.v, &draw.w, &draw.u, c, tokens, &mut state);
        let (want_mean, want_logw) = meaning(&state, c);
        let want_follow =
            wkv4::reference(&draw.k2, &draw.v2, &draw.w, &draw.u, c, FOLLOW, &mut state);
        let to_f32 = |x: Vec<f64>| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (want, want_follow) = (to_f32(want), to_f32(want_follow));
        let (k, v) = (upload_f32(gpu, &draw.k), upload_f32(gpu, &draw.v));
        let (w, u) = (upload_f32(gpu, &draw.w), upload_f32(gpu, &draw.u));
        let (k2, v2) = (upload_f32(gpu, &draw.k2), upload_f32(gpu, &draw.v2));
        let no_step = step_buffer(gpu, &step(0, 1));
        let (mut d, mut outputs) = (Vec::new(), Vec::new());
        for chunk in std::iter::once(None).chain(chunks.iter().map(|&c| Some(c))) {
            let form = chunk.map_or("recurrent".to_string(), |c| format!("chunked({c})"));
            let state = upload_f32(gpu, &draw.state);
            let out = poisoned(gpu, tokens * c);
            let b = Wkv4Buffers {
                k: &k,
                v: &v,
                w: &w,
                u: &u,
                state: &state,
                out: &out,
            };
            match chunk {
                None => d.extend(wkv4::launch_recurrent(gpu, &b, c, tokens)?),
                Some(ch) => {
                    let scratch = poisoned(gpu, wkv4::scratch_floats(c, tokens, ch));
                    d.extend(wkv4::launch_chunked(gpu, &b, &scratch, c, tokens, ch)?);
                }
            }
            // The state after the run, kept before the decode steps move it on.
            let snapshot = poisoned(gpu, STATE_ROWS * c);
            let all = CopyParams {
                n: (STATE_ROWS * c) as u32,
                ..CopyParams::default()
            };
            d.push(copy::launch(gpu, &no_step, &state, &snapshot, all)?);
            let out2 = poisoned(gpu, FOLLOW * c);
            let b2 = Wkv4Buffers {
                k: &k2,
                v: &v2,
                out: &out2,
                ..b
            };
            d.extend(wkv4::launch_recurrent(gpu, &b2, c, FOLLOW)?);
            outputs.push(Output::close(
                &format!("{form} outputs"),
                &out,
                want.clone(),
                tol,
            ));
            let mean = Expect::Near(want_mean.clone(), tol);
            outputs.push(
                Output::new(&format!("{form} state aa/bb"), &snapshot, mean)
                    .derived(STATE_ROWS * c, move |s| gpu_meaning(s, c, false)),
            );
            let logw = Expect::Near(want_logw.clone(), tol);
            outputs.push(
                Output::new(&format!("{form} state pp+ln bb"), &snapshot, logw)
                    .derived(STATE_ROWS * c, move |s| gpu_meaning(s, c, true)),
            );
            let label = format!("{form} next steps");
            outputs.push(Output::close(&label, &out2, want_follow.clone(), tol));
            if chunk.is_some() {
                // Output 0: the token-by-token form's outputs.
                let label = format!("{form} vs recurrent");
                outputs.push(Output::like(&label, &out, tokens * c, 0, tol));
            }
        }
        Ok(Prepared::new(gpu, d, outputs))
    })
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 1;
    for channels in [1, 37, 100] {
        for tokens in [1, 29, 100] {
            for zero in [false, true] {
                seed += 1;
                let what = if zero { "zero state" } else { "random state" };
                let scales = (3.0, 1.0);
                cases.push(case(
                    what,
                    channels,
                    tokens,
                    seed,
                    scales,
                    zero,
                    &[7, CHUNK],
                    SCAN_TOL,
                ));
            }
        }
    }
    for (channels, tokens, zero) in [(37, 100, true), (100, 29, false)] {
        let seed = 77 + tokens as u64;
        let what = "keys +-60, u +-30";
        let scales = (60.0, 30.0);
        cases.push(case(
            what,
            channels,
            tokens,
            seed,
            scales,
            zero,
            &[7, CHUNK],
            LARGE_TOL,
        ));
    }
    let what = "2,048 tokens";
    cases.push(case(
        what,
        64,
        2048,
        99,
        (3.0, 1.0),
        false,
        &[CHUNK, 100],
        SCAN_TOL,
    ));
    cases
}

//! RWKV-4's WKV (kernels::wkv4): both forms — token by token and chunked — against its f64
//! CPU reference (transformers' `rwkv_linear_attention_cpu`) and each other, from random and
//! from zero states, with ragged sizes, large keys and 2,048 tokens: the runtime's table of
//! kernel cases (`kestrel_runtime::cases`, where inputs and tolerances are defined and
//! justified) on every backend. Besides the table: the session's zero state must act as HF's
//! empty state (pp = -1e38), checked against HF's formula applied as is.

use kestrel_runtime::cases::{self, SCAN_TOL};
use kestrel_runtime::kernels::wkv4::{self, Wkv4Buffers};
use kestrel_runtime::rng::Rng;
use kestrel_tests::*;

#[test]
fn wkv4_matches_reference_in_both_forms() {
    check_cases(cases::family("wkv4"));
}

/// The session's zero state is an empty one: the first output is v exactly, and the run
/// matches transformers' own start (pp = -1e38 with the formula applied as is).
#[test]
fn wkv4_zero_state_is_empty() {
    let (c, tokens) = (37, 29);
    let mut rng = Rng::new(5);
    let k = rng.vec(tokens * c, 3.0);
    let v = rng.vec(tokens * c, 1.0);
    // time_decay in [-5, 2]: w = -exp(.) from -0.0067 (long memory) to -7.4.
    let w: Vec<f32> = (0..c)
        .map(|_| -(-1.5 + 3.5 * rng.uniform()).exp())
        .collect();
    let u = rng.vec(c, 1.0);
    // HF's formula in f64 from num = den = 0, max = -1e38, with no special case.
    let (mut aa, mut bb, mut pp) = (vec![0.0f64; c], vec![0.0f64; c], vec![-1e38f64; c]);
    let mut hf = vec![0.0f32; tokens * c];
    for t in 0..tokens {
        for i in 0..c {
            let (kt, vt) = (k[t * c + i] as f64, v[t * c + i] as f64);
            let (wi, ui) = (w[i] as f64, u[i] as f64);
            let p = pp[i].max(ui + kt);
            let (e1, e2) = ((pp[i] - p).exp(), (ui + kt - p).exp());
            hf[t * c + i] = ((e1 * aa[i] + e2 * vt) / (e1 * bb[i] + e2)) as f32;
            let q = (pp[i] + wi).max(kt);
            let (e1, e2) = ((pp[i] + wi - q).exp(), (kt - q).exp());
            aa[i] = e1 * aa[i] + e2 * vt;
            bb[i] = e1 * bb[i] + e2;
            pp[i] = q;
        }
    }
    for gpu in gpus() {
        for chunk in [None, Some(7)] {
            let (kb, vb) = (upload_f32(&gpu, &k), upload_f32(&gpu, &v));
            let (wb, ub) = (upload_f32(&gpu, &w), upload_f32(&gpu, &u));
            let state = upload_f32(&gpu, &vec![0.0; wkv4::STATE_ROWS * c]);
            let out = poisoned(&gpu, tokens * c);
            let b = Wkv4Buffers {
                k: &kb,
                v: &vb,
                w: &wb,
                u: &ub,
                state: &state,
                out: &out,
            };
            let d = match chunk {
                None => wkv4::launch_recurrent(&gpu, &b, c, tokens).unwrap(),
                Some(ch) => {
                    let scratch = poisoned(&gpu, wkv4::scratch_floats(c, tokens, ch));
                    wkv4::launch_chunked(&gpu, &b, &scratch, c, tokens, ch).unwrap()
                }
            };
            run(&gpu, &d);
            let got = read(&gpu, &out, tokens * c);
            let what = format!("zero state {chunk:?} [{}]", gpu.backend_name());
            assert_same_bits(&format!("{what} first token"), &got[..c], &v[..c]);
            assert_close(&format!("{what} vs HF start"), &got, &hf, SCAN_TOL);
        }
    }
}

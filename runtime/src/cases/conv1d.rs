//! The causal depthwise conv1d, which also carries its rolling state (compared exactly: it
//! is a copy of inputs).

use super::{poisoned, upload_f32, Case, Output, Prepared, SUM_TOL};
use crate::kernels::conv1d;
use crate::rng::Rng;

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // (tokens, channels, kernel, silu, bias); 9000 tokens take several dispatches.
    let specs = [
        (29, 70, 4, true, true),
        (1, 70, 4, true, true),
        (5, 3, 2, false, false),
        (9000, 2, 4, false, true),
    ];
    for (i, (tokens, channels, kernel, silu, bias)) in specs.into_iter().enumerate() {
        let seed = 751 + i as u64;
        let what = format!("T={tokens} C={channels} K={kernel} silu={silu} bias={bias}");
        cases.push(Case::new("conv1d", what, move |gpu| {
            let mut rng = Rng::new(seed);
            let x = rng.vec(tokens * channels, 2.0);
            let w = rng.vec(channels * kernel, 1.0);
            let b = rng.vec(channels, 1.0);
            let mut state = rng.vec((kernel - 1) * channels, 1.0);
            let (xb, wb, bb) = (
                upload_f32(gpu, &x),
                upload_f32(gpu, &w),
                upload_f32(gpu, &b),
            );
            let (sb, out) = (upload_f32(gpu, &state), poisoned(gpu, tokens * channels));
            let bias_buf = bias.then_some(&*bb);
            let d = conv1d::launch(
                gpu, &xb, &wb, bias_buf, &sb, &out, tokens, channels, kernel, silu,
            )?;
            let bias_ref = bias.then_some(b.as_slice());
            let want = conv1d::reference(&x, &w, bias_ref, &mut state, channels, kernel, silu);
            let outputs = vec![
                Output::close("outputs", &out, want, SUM_TOL),
                Output::bits("state", &sb, state),
            ];
            Ok(Prepared::new(gpu, d, outputs))
        }));
    }
    cases
}

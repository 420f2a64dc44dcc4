//! RWKV's token-shift mixes (kernels::token_mix) against the CPU reference: 1, 3 (one full
//! pass), 4 and 6 mixes (a full pass and a partial one) at ragged sizes. Each output is one
//! product and one sum per value; a driver may contract them into an FMA, hence SUM_TOL.
//! Also RWKV-7's delta-rule vectors (kernels::delta_ab) against their f64 reference, at key
//! dims that are and are not multiples of 4: a sum of dk squares, SUM_TOL.

use super::{poisoned, upload_f32, Case, Output, Prepared, SUM_TOL};
use crate::kernels::{delta_ab, token_mix};
use crate::rng::Rng;

pub fn cases() -> Vec<Case> {
    // (rows, width, mixes)
    let specs = [(1, 768, 6), (7, 37, 4), (130, 64, 3), (3, 5, 1)];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (rows, width, mixes))| {
            let what = format!("{rows}x{width} mixes={mixes}");
            Case::new("token_mix", what, move |gpu| {
                let mut rng = Rng::new(1500 + i as u64);
                let x = rng.vec(rows * width, 1.0);
                let delta = rng.vec(rows * width, 1.0);
                let mu = rng.vec(mixes * width, 1.0);
                let (xb, db, mb) = (
                    upload_f32(gpu, &x),
                    upload_f32(gpu, &delta),
                    upload_f32(gpu, &mu),
                );
                let outs: Vec<_> = (0..mixes).map(|_| poisoned(gpu, rows * width)).collect();
                let out_refs: Vec<&wgpu::Buffer> = outs.iter().map(|o| &**o).collect();
                let d = token_mix::launch(gpu, &xb, &db, &mb, &out_refs, rows, width)?;
                let want = token_mix::reference(&x, &delta, &mu, width);
                let outputs = outs
                    .iter()
                    .zip(want)
                    .enumerate()
                    .map(|(m, (o, w))| Output::close(&format!("mix {m}"), o, w, SUM_TOL))
                    .collect();
                Ok(Prepared::new(gpu, d, outputs))
            })
        })
        .collect()
}

pub fn delta_ab() -> Vec<Case> {
    // (rows, heads, dk)
    let specs = [(1, 12, 64), (37, 3, 18), (130, 2, 7)];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (rows, heads, dk))| {
            let what = format!("{rows}x{heads}x{dk}");
            Case::new("delta_ab", what, move |gpu| {
                let mut rng = Rng::new(1600 + i as u64);
                let n = rows * heads * dk;
                let k = rng.vec(n, 1.0);
                let k_k = rng.vec(heads * dk, 1.0);
                let rate: Vec<f32> = rng.vec(n, 1.0).iter().map(|x| (x + 1.0) / 2.0).collect();
                let (kb, kkb, rb) = (
                    upload_f32(gpu, &k),
                    upload_f32(gpu, &k_k),
                    upload_f32(gpu, &rate),
                );
                let out = poisoned(gpu, 2 * n);
                let l2_eps = 1e-6;
                let d = delta_ab::launch(gpu, &kb, &kkb, &rb, &out, rows, heads, dk, l2_eps)?;
                let want = delta_ab::reference(&k, &k_k, &rate, heads, dk, l2_eps);
                Ok(Prepared::new(
                    gpu,
                    vec![d],
                    vec![Output::close("", &out, want, SUM_TOL)],
                ))
            })
        })
        .collect()
}

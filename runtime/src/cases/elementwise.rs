//! Every elementwise op, with b of a's shape or a row vector broadcast over a's rows; the
//! prefill Linear op's epilogues (SwiGLU of row pairs, an add in place).

use super::{poisoned, upload_f32, Case, Expect, Output, Prepared, SUM_TOL};
use crate::kernels::elementwise::{self, Elementwise, Gate};
use crate::rng::Rng;

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 600;
    // (rows, width, b a row vector)
    for (rows, width, row_vector) in [
        (10, 100, false),
        (3, 100, false),
        (1, 1, false),
        (7, 37, true),
        (1, 5, true),
        (7, 37, false),
    ] {
        for op in Elementwise::ALL {
            seed += 1;
            let what = format!("{op:?} {rows}x{width} row_vector={row_vector}");
            let case = Case::new("elementwise", what, move |gpu| {
                let n = rows * width;
                let mut rng = Rng::new(seed);
                // Wide enough for softplus's linear branch (a + b > 20) and relu's zero side.
                let a = rng.vec(n, 24.0);
                let b = rng.vec(if row_vector { width } else { n }, 2.0);
                let (ab, bb, out) = (upload_f32(gpu, &a), upload_f32(gpu, &b), poisoned(gpu, n));
                let d = elementwise::launch(gpu, op, &ab, &bb, &out, n, b.len())?;
                let want = elementwise::reference(op, &a, &b);
                let expect = match op {
                    // One correctly rounded f32 op each.
                    Elementwise::Add
                    | Elementwise::Mul
                    | Elementwise::Sub
                    | Elementwise::ReluSquare => Expect::Bits(want),
                    // exp / log differ between the GPU and Rust by a few ulp.
                    _ => Expect::Close(want, SUM_TOL),
                };
                let output = Output::new("", &out, expect);
                Ok(Prepared::new(gpu, vec![d], vec![output]).work(0.0, 12.0 * n as f64))
            });
            cases.push(case.browser((rows, width, row_vector) == (7, 37, false)));
        }
    }
    for (n, seed) in [(1, 700), (259, 701)] {
        for gate in [Gate::Silu, Gate::GeluTanh] {
            cases.push(Case::new(
                "elementwise",
                format!("{:?} n={n}", gate.pairs()),
                move |gpu| {
                    // Scale 8: both tails of the gate (tanh saturated, exp under/overflowing).
                    let a = Rng::new(seed).vec(2 * n, 8.0);
                    let (ab, out) = (upload_f32(gpu, &a), poisoned(gpu, n));
                    let d = elementwise::launch(gpu, gate.pairs(), &ab, &gpu.dummy, &out, n, 1)?;
                    let want = elementwise::reference_glu_pairs(&a, gate);
                    let output = Output::close("", &out, want, SUM_TOL);
                    Ok(Prepared::new(gpu, vec![d], vec![output]).work(0.0, 12.0 * n as f64))
                },
            ));
        }
        cases.push(Case::new(
            "elementwise",
            format!("Accumulate n={n}"),
            move |gpu| {
                let mut rng = Rng::new(seed + 10);
                let (a, r) = (rng.vec(n, 4.0), rng.vec(n, 4.0));
                let (ab, out) = (upload_f32(gpu, &a), upload_f32(gpu, &r));
                let d =
                    elementwise::launch(gpu, Elementwise::Accumulate, &ab, &gpu.dummy, &out, n, 1)?;
                // One correctly rounded add.
                let want = r.iter().zip(&a).map(|(r, a)| r + a).collect();
                let output = Output::new("", &out, Expect::Bits(want));
                Ok(Prepared::new(gpu, vec![d], vec![output]).work(0.0, 12.0 * n as f64))
            },
        ));
    }
    cases
}

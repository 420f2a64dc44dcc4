//! Every elementwise op, with b of a's shape or a row vector broadcast over a's rows; the
//! prefill Linear op's epilogues (SwiGLU of row pairs, an add in place); fused chains of
//! them (kernels/elementwise_fused.rs) with full and broadcast inputs.

use super::{poisoned, upload_f32, Case, Expect, Output, Prepared, SUM_TOL};
use crate::kernels::elementwise::{self, Elementwise, Gate};
use crate::kernels::elementwise_fused::{self, FusedStep, Operand};
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
    cases.extend(fused_cases());
    cases
}

/// Chains as the fusion pass builds them, on full inputs and row vectors. The chain gives
/// the plain ops' values up to rounding: a driver may contract a multiply and an add into
/// one FMA (one rounding fewer), and exp/log differ by a few ulp, hence SUM_TOL.
fn fused_cases() -> Vec<Case> {
    use Elementwise::*;
    use Operand::{Input as I, Step as S};
    let step = |op, a, b| FusedStep { op, a, b };
    // (name, steps, which inputs are row vectors)
    let chains: Vec<(&str, Vec<FusedStep>, Vec<bool>)> = vec![
        // RWKV's token-shift mix: x + delta * mu.
        (
            "mix",
            vec![step(Mul, I(1), I(2)), step(Add, I(0), S(0))],
            vec![false, false, true],
        ),
        // RWKV-7's value residual: v + (first - v) * sigmoid(s).
        (
            "value residual",
            vec![
                step(Sigmoid, I(0), I(0)),
                step(Sub, I(1), I(2)),
                step(Mul, S(1), S(0)),
                step(Add, I(2), S(2)),
            ],
            vec![false, false, false],
        ),
        // Eight steps over six inputs, every kind of operand.
        (
            "long",
            vec![
                step(Tanh, I(0), I(0)),
                step(SigmoidMul, S(0), I(1)),
                step(SoftplusAdd, I(2), I(3)),
                step(Mul, S(1), S(2)),
                step(LogSigmoid, S(3), S(3)),
                step(GeluTanhMul, I(4), S(4)),
                step(Sub, S(5), I(5)),
                step(SwiGlu, S(6), S(1)),
            ],
            vec![false, true, false, true, false, true],
        ),
    ];
    let mut cases = Vec::new();
    let mut seed = 750;
    for (name, steps, rows_of) in chains {
        for (rows, width) in [(7, 37), (1, 5), (3, 100)] {
            seed += 1;
            let (steps, rows_of) = (steps.clone(), rows_of.clone());
            let what = format!("fused {name} {rows}x{width}");
            let browser = (name, rows) == ("value residual", 7);
            let case = Case::new("elementwise", what, move |gpu| {
                let n = rows * width;
                let mut rng = Rng::new(seed);
                let inputs: Vec<Vec<f32>> = rows_of
                    .iter()
                    .map(|&row| rng.vec(if row { width } else { n }, 4.0))
                    .collect();
                let bufs: Vec<_> = inputs.iter().map(|v| upload_f32(gpu, v)).collect();
                let out = poisoned(gpu, n);
                let bound: Vec<_> = bufs
                    .iter()
                    .zip(&inputs)
                    .map(|(b, v)| (&**b, v.len()))
                    .collect();
                let d = elementwise_fused::launch(gpu, &steps, &bound, &out, n)?;
                let slices: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
                let want = elementwise_fused::reference(&steps, &slices, n);
                let output = Output::close("", &out, want, SUM_TOL);
                let bytes = 4.0 * (n + inputs.iter().map(Vec::len).sum::<usize>()) as f64;
                Ok(Prepared::new(gpu, vec![d], vec![output]).work(0.0, bytes))
            });
            cases.push(case.browser(browser));
        }
    }
    cases
}

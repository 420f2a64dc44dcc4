//! Per-head concatenation (exact: a copy) and the per-head dot product scaling values.

use super::{bad_case, poisoned, upload_f32, Case, Output, Prepared, SUM_TOL};
use crate::error::Error;
use crate::kernels::{head_concat, head_dot, linear_scan};
use crate::rng::Rng;

/// (rows, heads, da or dk, db or dv)
const SHAPES: [(usize, usize, usize, usize); 3] = [(7, 3, 5, 9), (1, 4, 16, 16), (300, 2, 64, 33)];

pub fn head_concat() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (rows, heads, da, db)) in SHAPES.into_iter().enumerate() {
        let seed = 700 + i as u64;
        let what = format!("{rows}x{heads}x({da}+{db})");
        cases.push(Case::new("head_concat", what, move |gpu| {
            let mut rng = Rng::new(seed);
            let a = rng.vec(rows * heads * da, 1.0);
            let b = rng.vec(rows * heads * db, 1.0);
            let out = poisoned(gpu, rows * heads * (da + db));
            let (ab, bb) = (upload_f32(gpu, &a), upload_f32(gpu, &b));
            let d = head_concat::launch(gpu, &ab, &bb, &out, rows, heads, da, db)?;
            let want = head_concat::reference(&a, &b, heads, da, db);
            Ok(Prepared::new(
                gpu,
                vec![d],
                vec![Output::bits("", &out, want)],
            ))
        }));
    }
    cases
}

pub fn head_dot() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (rows, heads, dk, dv)) in SHAPES.into_iter().enumerate() {
        for lanes in [false, true] {
            let seed = 710 + i as u64;
            let what = format!("{rows}x{heads}x{dk}->{dv} lanes={lanes}");
            cases.push(Case::new("head_dot", what, move |gpu| {
                let mut rng = Rng::new(seed);
                let a = rng.vec(rows * heads * dk, 1.0);
                let b = rng.vec(rows * heads * dk, 1.0);
                let v = rng.vec(rows * heads * dv, 1.0);
                let out = poisoned(gpu, rows * heads * dv);
                let (ab, bb, vb) = (
                    upload_f32(gpu, &a),
                    upload_f32(gpu, &b),
                    upload_f32(gpu, &v),
                );
                let launch = |lanes| {
                    head_dot::launch_with(gpu, lanes, &ab, &bb, &vb, &out, rows, heads, dk, dv)
                };
                // Without subgroups of 8 the lanes kernel must be refused; the plain one runs.
                let d = match (lanes, linear_scan::runs_lanes(gpu)) {
                    (true, false) => match launch(true) {
                        Err(Error::Graph(_)) => launch(false)?,
                        other => {
                            return Err(bad_case(format!(
                                "head_dot's lanes kernel was not refused without subgroups: {:?}",
                                other.map(|_| ())
                            )))
                        }
                    },
                    _ => launch(lanes)?,
                };
                let want = head_dot::reference(&a, &b, &v, dk, dv);
                Ok(Prepared::new(
                    gpu,
                    vec![d],
                    vec![Output::close("", &out, want, SUM_TOL)],
                ))
            }));
        }
    }
    cases
}

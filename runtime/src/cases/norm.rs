//! RMSNorm, LayerNorm and GroupNorm (grouped, with bias), and the row-wise softmax.

use super::{poisoned, upload_f32, Case, Output, Prepared, SUM_TOL};
use crate::kernels::{rms_norm, softmax};
use crate::rng::Rng;

pub fn rms_norm() -> Vec<Case> {
    let mut cases = Vec::new();
    // (rows, dim per group, groups, eps, layer norm with bias)
    let specs = [
        (3, 64, 1, 1e-5, false),
        (5, 1000, 1, 1e-6, false),
        (1, 37, 1, 1e-5, false),
        (2, 2049, 1, 1e-5, false),
        (3, 24, 4, 1e-5, false),
        (2, 37, 3, 1e-6, false),
        (3, 64, 1, 1e-5, true),
        (2, 1000, 1, 1e-5, true),
        (4, 16, 4, 64e-5, true),
    ];
    let layouts = [rms_norm::Layout::Workgroup, rms_norm::Layout::Lanes];
    for (i, (rows, dim, groups, eps, layer)) in specs.into_iter().enumerate() {
        for layout in layouts {
            let seed = 701 + i as u64;
            let kind = if layer { "layer_norm" } else { "rms_norm" };
            let what = format!("{kind} {rows}x{groups}x{dim} eps={eps:e} {layout:?}");
            let case =
                Case::new("rms_norm", what, move |gpu| {
                    let mut rng = Rng::new(seed);
                    let width = dim * groups;
                    // An offset, so LayerNorm's mean matters.
                    let x: Vec<f32> = rng.vec(rows * width, 3.0).iter().map(|v| v + 1.5).collect();
                    let w = rng.vec(width, 1.5);
                    let b = rng.vec(width, 1.0);
                    let (xb, wb, bb) = (
                        upload_f32(gpu, &x),
                        upload_f32(gpu, &w),
                        upload_f32(gpu, &b),
                    );
                    let out = poisoned(gpu, rows * width);
                    let kind = rms_norm::NormKind {
                        centered: layer,
                        bias: layer.then_some(&bb),
                    };
                    let d = rms_norm::launch_layout(
                        gpu, layout, &xb, &wb, &out, rows, dim, eps, groups, kind,
                    )?;
                    let bias = layer.then_some(b.as_slice());
                    let want = rms_norm::reference_norm(&x, &w, bias, dim, eps, groups, layer);
                    let output = Output::close("", &out, want, SUM_TOL);
                    Ok(Prepared::new(gpu, vec![d], vec![output])
                        .work(0.0, 8.0 * (rows * width) as f64))
                });
            cases.push(case.browser(!layer && groups == 1));
        }
    }
    cases
}

pub fn softmax() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (rows, dim)) in [(4, 1000), (2, 37), (1, 4099), (3, 1)]
        .into_iter()
        .enumerate()
    {
        let seed = 801 + i as u64;
        let case = Case::new("softmax", format!("{rows}x{dim}"), move |gpu| {
            let x = Rng::new(seed).vec(rows * dim, 8.0);
            let (xb, out) = (upload_f32(gpu, &x), poisoned(gpu, rows * dim));
            let d = softmax::launch(gpu, &xb, &out, rows, dim)?;
            let output = Output::close("", &out, softmax::reference(&x, dim), SUM_TOL);
            Ok(Prepared::new(gpu, vec![d], vec![output]).work(0.0, 8.0 * (rows * dim) as f64))
        });
        cases.push(case.browser(dim > 1));
    }
    cases
}

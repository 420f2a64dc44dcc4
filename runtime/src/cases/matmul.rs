//! matmul in each layout, not only the one the adapter picks (runtime/src/cases/linear.rs
//! runs that one): the tiled layout with f32 and f16 tiles of 64 rows and of 8, 16 and 32 (f16:
//! 16), and the rows layout with 4 and 32 rows per workgroup and 1 to 4 columns per
//! invocation, at ragged sizes, for f32 (K a multiple of 4 or not), f16 and
//! bf16 (K a multiple of 8 but not of 32, or odd), a 32-value and a 256-value block format. The rows
//! layout needs subgroups of at least 8 lanes: on an adapter without them (llvmpipe GL) its
//! cases check that it is refused with an error, then run the tiled layout; f16 tiles need
//! shader-f16, and where it is missing (GL) their cases check the same and run f32 tiles.
//!
//! f16 tiles round X and W to f16 and multiply in f16, so their cases take a tolerance
//! computed from the case's own data: see [`f16_tolerance`].

use std::sync::Arc;

use super::{poisoned, upload_f32, weights, Case, Output, Prepared, SUM_TOL};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::matmul::{self, Layout};
use crate::quant::QuantFormat;
use crate::rng::Rng;
use crate::tensor::DType;

/// y [m, n] = x [m, k] times a weight [n, k] of `dtype` (+ a bias) in `layout`.
#[derive(Clone, Copy)]
struct Spec {
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    bias: bool,
    layout: Layout,
    seed: u64,
}

impl Spec {
    fn case(self) -> Case {
        let Spec { m, n, k, .. } = self;
        let what = format!(
            "{m}x{n}x{k} {} bias={} {:?}",
            self.dtype.name(),
            self.bias,
            self.layout
        );
        Case::new("matmul", what, move |gpu| self.prepare(gpu))
            .quantized(matches!(self.dtype, DType::Quant(_)))
    }

    fn prepare(&self, gpu: &Arc<Gpu>) -> Result<Prepared> {
        let Spec { m, n, k, .. } = *self;
        let mut rng = Rng::new(self.seed);
        let x = rng.vec(m * k, 1.0);
        let (w, w_ref) = weights::random(gpu, self.dtype, 1, n, k, &mut rng)?;
        let b = self.bias.then(|| rng.vec(n, 1.0));
        let xb = upload_f32(gpu, &x);
        let bb = b.as_ref().map(|b| upload_f32(gpu, b));
        let y = poisoned(gpu, m * n);
        let launch = |layout| matmul::launch_with(gpu, &xb, &w, bb.as_deref(), &y, m, layout);
        let (runs, fallback) = match self.layout {
            Layout::Rows { .. } => (matmul::runs_rows(gpu), 64),
            Layout::Tiles { f16, rows } => (!f16 || gpu.caps.shader_f16, rows),
        };
        let d = match runs {
            false => match launch(self.layout) {
                Err(Error::Graph(_)) => launch(Layout::Tiles {
                    f16: false,
                    rows: fallback,
                })?,
                other => {
                    return Err(super::bad_case(format!(
                        "{:?} was not refused on this adapter: {:?}",
                        self.layout,
                        other.map(|d| d.len())
                    )))
                }
            },
            true => launch(self.layout)?,
        };
        let want = matmul::reference(&x, &w_ref, b.as_deref(), m, n, k);
        let tol = match (self.layout, runs) {
            (Layout::Tiles { f16: true, .. }, true) => f16_tolerance(&x, &w_ref, &want, m, n, k),
            _ => SUM_TOL,
        };
        let out = Output::close("", &y, want, tol);
        let bytes = w.bytes() as f64 + 4.0 * (m * k + m * n) as f64;
        Ok(Prepared::new(gpu, d, vec![out]).work(2.0 * (m * n * k) as f64, bytes))
    }
}

/// The relative (L2) error f16 tiles may make in `y` = x wᵀ (+ bias), from first-order
/// rounding bounds. Each term x·w becomes f16(f16(x)·f16(w)): three roundings of relative
/// error at most u = 2^-11 (f16's unit roundoff), plus, where a value or the product falls
/// below f16's normal range, an absolute error of at most half its subnormal spacing, 2^-25,
/// each (times the other factor for an input's). So |Δy_ij| <= Σ_k 3u|x_ik w_jk| + 2^-25
/// (1 + |x_ik| + |w_jk|) (the f32 sums add SUM_TOL's share), and the tolerance is the L2 norm
/// of that bound over the L2 norm of y. For random data the real error is about sqrt(K)
/// times smaller (the roundings do not all point the same way); an indexing error in a tile
/// is of the order of y itself.
fn f16_tolerance(x: &[f32], w: &[f32], y: &[f32], m: usize, n: usize, k: usize) -> f64 {
    let u = 2f64.powi(-11);
    let tiny = 2f64.powi(-25);
    let (mut bound, mut norm) = (0.0, 0.0);
    for i in 0..m {
        for j in 0..n {
            let b: f64 = (0..k)
                .map(|t| {
                    let (a, c) = (x[i * k + t].abs() as f64, w[j * k + t].abs() as f64);
                    3.0 * u * a * c + tiny * (1.0 + a + c)
                })
                .sum();
            bound += b * b;
            norm += (y[i * n + j] as f64).powi(2);
        }
    }
    (bound / norm).sqrt() + SUM_TOL
}

pub fn cases() -> Vec<Case> {
    let tiles = |f16, rows| Layout::Tiles { f16, rows };
    let layouts = [
        tiles(false, 64),
        tiles(true, 64),
        Layout::Rows { rows: 4 },
        Layout::Rows { rows: 32 },
    ];
    // N = 37, 70, 150, 200 take 1, 2, 3 and 4 columns per invocation in the rows layout; M = 66
    // spans two 64-row tiles and ragged row groups of 4 and 32.
    let shapes = [
        (DType::F32, (37, 37, 45), true),
        (DType::F32, (66, 150, 64), false),
        (DType::F16, (37, 70, 45), false),
        (DType::F16, (66, 200, 72), true),
        (DType::Quant(QuantFormat::Q4_1), (37, 150, 96), true),
        (DType::Quant(QuantFormat::Q6_K), (66, 70, 512), false),
        (DType::BF16, (37, 150, 45), true),
        (DType::BF16, (66, 200, 72), false),
    ];
    let mut cases = Vec::new();
    let mut seed = 4000;
    for layout in layouts {
        for (dtype, (m, n, k), bias) in shapes {
            seed += 1;
            let spec = Spec {
                m,
                n,
                k,
                dtype,
                bias,
                layout,
                seed,
            };
            // One f16-tile case in the browser (where WebGPU has shader-f16).
            let browser = layout == tiles(true, 64) && seed == 4010;
            cases.push(spec.case().browser(browser));
        }
    }
    // Smaller tiles (a short prompt's, `Layout::for_rows`): each shape at M = 5, 13, 37 or 66,
    // none a multiple of the tile, a different one for each tile height. 8 and 16 rows read
    // a_tile one value at a time, 32 as vec4s (as 64 does).
    let small = [
        tiles(false, 8),
        tiles(false, 16),
        tiles(false, 32),
        tiles(true, 16),
    ];
    for (j, layout) in small.into_iter().enumerate() {
        for (i, &(dtype, (_, n, k), bias)) in shapes.iter().enumerate() {
            seed += 1;
            let spec = Spec {
                m: [5, 13, 37, 66][(i + j) % 4],
                n,
                k,
                dtype,
                bias,
                layout,
                seed,
            };
            cases.push(spec.case());
        }
    }
    cases
}

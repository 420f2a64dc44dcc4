//! The f16 decode matvec (`--matvec-precision f16`) against `matvec_f16::reference`, a CPU
//! reference of the same arithmetic: x (RMS-normed in f32 with the norm) rounded to f16, the
//! weight's values (f16 as stored; ggml blocks dequantized by `quant::dequantize`, which the
//! GPU's dequantization equals) rounded to f16, each product rounded to f16, block sums in f32.
//!
//! Tolerance [`SUM_TOL`]: both sides round the same f32 values to f16 to nearest (an f16
//! product of two f16 values is their exact f32 product rounded once), so every product is
//! the same on both sides and only the f32 sums' order differs, the f32 matvec's argument.
//! With the norm, the GPU's inverse RMS (inverseSqrt of a sum in another order) may differ by
//! a few ulp, which moves x * nw * inv across an f16 rounding boundary for about one value in
//! a few thousand: one product off by 2^-11 of itself, under 1e-6 of the result's norm here.
//! A kernel that kept x or the products in f32 would be off by about 3e-4 and fail, as would
//! a wrong block, row or scale (1e-2 or more).
//!
//! On an adapter without shader-f16 (llvmpipe GL) each case checks the typed refusal instead
//! (`Error::MissingFeature`, its one output a flag set when refused).

use std::sync::Arc;

use super::{poisoned, upload_f32, upload_u32, weights, Case, Expect, Output, Prepared, SUM_TOL};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::elementwise::{reference_glu_pairs, Gate};
use crate::kernels::matvec::{Epilogue, Layout};
use crate::kernels::matvec_f16;
use crate::kernels::matvec_q8::FORMATS;
use crate::quant::QuantFormat;
use crate::rng::Rng;
use crate::tensor::DType;

const NORM_EPS: f32 = 1e-5;

/// One f16 product: y [n] from x [k] and a weight [n, k] of `dtype`.
#[derive(Clone, Copy)]
struct Spec {
    dtype: DType,
    n: usize,
    k: usize,
    bias: bool,
    norm: bool,
    split: Option<usize>,
    layout: Layout,
    epilogue: Epilogue,
    seed: u64,
}

impl Spec {
    fn case(self) -> Case {
        let Spec { n, k, layout, .. } = self;
        let mut what = format!(
            "{n}x{k} {} bias={} norm={} lanes={} rows_per_lane={} {:?}",
            self.dtype.name(),
            self.bias,
            self.norm,
            layout.lanes,
            layout.rows_per_lane,
            self.epilogue
        );
        if let Some(r) = self.split {
            what += &format!(" split={r}");
        }
        let quantized = matches!(self.dtype, DType::Quant(_));
        Case::new("matvec_f16", what, move |gpu| self.prepare(gpu)).quantized(quantized)
    }

    fn prepare(&self, gpu: &Arc<Gpu>) -> Result<Prepared> {
        let Spec { n, k, dtype, .. } = *self;
        let gpu = &weights::limited(gpu, self.split, dtype, k);
        let mut rng = Rng::new(self.seed);
        // x of a residual stream's size where normed (the norm brings it to O(1)).
        let x = rng.vec(k, if self.norm { 8.0 } else { 1.0 });
        let nw = rng.vec(k, 1.0);
        let (w, w_ref) = weights::random(gpu, dtype, 1, n, k, &mut rng)?;
        if self.split.is_some() && w.chunks.len() <= 2 {
            return Err(super::bad_case(format!(
                "weight not split: {} chunk(s)",
                w.chunks.len()
            )));
        }
        let b = self.bias.then(|| rng.vec(n, 1.0));
        let residual = rng.vec(n, 1.0);
        let xb = upload_f32(gpu, &x);
        let nwb = upload_f32(gpu, &nw);
        let bb = b.as_ref().map(|b| upload_f32(gpu, b));
        let y = match self.epilogue {
            Epilogue::Store => poisoned(gpu, n),
            Epilogue::Accumulate => upload_f32(gpu, &residual),
            Epilogue::Glu(_) => poisoned(gpu, n / 2),
        };
        let norm = self.norm.then_some((&*nwb, NORM_EPS));
        let launch = matvec_f16::launch(
            gpu,
            &xb,
            norm,
            &w,
            bb.as_deref(),
            &y,
            self.epilogue,
            Some(self.layout),
        );
        if !gpu.caps.shader_f16 {
            // The refusal is the check: a flag word, 1 when refused with the typed error.
            let refused = matches!(launch, Err(Error::MissingFeature { .. }));
            let flag = upload_u32(gpu, &[u32::from(refused)]);
            let out = Output::new("refused without shader-f16", &flag, Expect::Words(vec![1]));
            return Ok(Prepared::new(gpu, Vec::new(), vec![out]));
        }
        let d = launch?;
        let x16 = matvec_f16::round_x(&x, self.norm.then_some((&nw[..], NORM_EPS)));
        let want = matvec_f16::reference(&x16, &w_ref, b.as_deref(), n);
        let want = match self.epilogue {
            Epilogue::Store => want,
            Epilogue::Accumulate => want.iter().zip(&residual).map(|(a, r)| a + r).collect(),
            Epilogue::Glu(gate) => reference_glu_pairs(&want, gate),
        };
        let bytes_read = w.bytes() as f64 + 4.0 * (k + n) as f64;
        let flops = 2.0 * (n * k) as f64;
        Ok(
            Prepared::new(gpu, d, vec![Output::close("", &y, want, SUM_TOL)])
                .work(flops, bytes_read),
        )
    }
}

/// f16 weights and every 32-value format at two and three blocks and at 576 (18 blocks: more
/// than a row group's lanes), 70 rows (a full CPU-layout workgroup and a ragged one) and 37
/// (one ragged row group), in the layout CPU drivers give each weight type and the GPU layout;
/// the norm with every epilogue; weights
/// split in chunks of 17 rows (34 with SwiGLU, which needs whole pairs per chunk). The browser
/// runs f16 and Q4_1 at 576 and a fused norm + SwiGLU.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 5300;
    let spec = |dtype, (n, k), bias, norm, layout, epilogue, seed| Spec {
        dtype,
        n,
        k,
        bias,
        norm,
        split: None,
        layout,
        epilogue,
        seed,
    };
    for dtype in std::iter::once(DType::F16).chain(FORMATS.map(DType::Quant)) {
        // The layout CPU drivers give the weight type.
        let cpu = Layout::for_cpu(dtype);
        for (shape, bias, layout) in [
            ((70, 64), false, cpu),
            ((37, 96), true, Layout::GPU),
            ((70, 576), true, cpu),
        ] {
            seed += 1;
            let s = spec(dtype, shape, bias, false, layout, Epilogue::Store, seed);
            let browser =
                shape == (70, 576) && matches!(dtype, DType::F16 | DType::Quant(QuantFormat::Q4_1));
            cases.push(s.case().browser(browser));
        }
    }
    let fused = [
        (
            DType::Quant(QuantFormat::Q4_1),
            Epilogue::Accumulate,
            Layout::CPU,
        ),
        (DType::F16, Epilogue::Glu(Gate::Silu), Layout::CPU_STREAM),
        (
            DType::Quant(QuantFormat::Q8_0),
            Epilogue::Glu(Gate::GeluTanh),
            Layout::GPU,
        ),
        (
            DType::Quant(QuantFormat::Q5_1),
            Epilogue::Store,
            Layout::GPU,
        ),
        (
            DType::Quant(QuantFormat::Q5_0),
            Epilogue::Glu(Gate::Silu),
            Layout::GPU,
        ),
    ];
    for (dtype, epilogue, layout) in fused {
        seed += 1;
        let case = spec(dtype, (70, 576), false, true, layout, epilogue, seed).case();
        let browser = dtype == DType::Quant(QuantFormat::Q5_0);
        cases.push(case.browser(browser));
    }
    for (dtype, epilogue, rows) in [
        (DType::Quant(QuantFormat::Q4_0), Epilogue::Store, 17),
        (DType::F16, Epilogue::Glu(Gate::Silu), 34),
    ] {
        seed += 1;
        let s = Spec {
            split: Some(rows),
            ..spec(dtype, (140, 96), false, false, Layout::CPU, epilogue, seed)
        };
        cases.push(s.case());
    }
    cases
}

/// The f16 product's relative error against the exact f32 matvec on random x and weights of
/// `dtype` (the CPU references of both): what the precision costs, for the record.
pub fn error_vs_f32(dtype: DType, n: usize, k: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let x = rng.vec(k, 1.0);
    let w = match dtype {
        DType::Quant(q) => crate::quant::dequantize(q, &weights::random_blocks(q, n, k, &mut rng)),
        _ => weights::to_f16(&rng.vec(n * k, 1.0)).1,
    };
    let exact = crate::kernels::matvec::reference(&x, &w, None, n, k);
    let f16 = matvec_f16::reference(&matvec_f16::round_x(&x, None), &w, None, n);
    super::rel_err(&f16, &exact)
}

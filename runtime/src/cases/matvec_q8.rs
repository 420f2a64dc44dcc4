//! The int8 decode matvec (`--matvec-precision int8`): its two kernels apart, each against a
//! CPU reference of the same quantized arithmetic.
//!
//! * `quantize_q8`: the kernel's blocks against `quantize_q8::reference`. Each q must be the
//!   reference's, except one off by one where the reference's x * (127 / amax) lies within
//!   [`TIE_BAND`] of a rounding tie: WGSL's division is exact only to 2.5 ulp, so the
//!   kernel's 127 / amax may differ from Rust's by a few ulp, which moves x * id (at most 127)
//!   by at most 127 * 4 * 2^-24 < 3.1e-5. Each block's stored sum must be the sum of its own q
//!   (exact). d within 1e-5 relative ([`Expect::Each`]): amax / 127 (2.5 ulp), times, with
//!   the norm, the inverse RMS (inverseSqrt, 2 ulp, of a sum of squares in another order:
//!   about sqrt(K) 2^-24), all well under 1e-5, while a wrong block or index is off by O(1).
//! * `matvec_q8`: a quantized x drawn and uploaded (so both sides have the same q), against
//!   `matvec_q8::reference`: integer sums are exact, each block's term is the same f32
//!   expression (up to a fused multiply-add), and the terms are summed in another order: the
//!   f32 matvec's [`SUM_TOL`] argument holds as it is.

use std::sync::Arc;

use super::{poisoned, upload_f32, upload_u32, weights, Case, Expect, Output, Prepared, SUM_TOL};
use crate::device::Gpu;
use crate::error::Result;
use crate::kernels::elementwise::{reference_glu_pairs, Gate};
use crate::kernels::matvec::{Epilogue, Layout};
use crate::kernels::quantize_q8::{self, BLOCK, BLOCK_WORDS};
use crate::kernels::{matvec, matvec_q8};
use crate::quant::QuantFormat;
use crate::rng::Rng;
use crate::tensor::{DType, GpuWeight, HostData};

/// How close to a rounding tie (in units of q) a q may be off by one; see the module doc.
const TIE_BAND: f32 = 1e-4;

const NORM_EPS: f32 = 1e-5;

/// Every case of both kernels.
pub fn cases() -> Vec<Case> {
    let mut cases = quantize();
    cases.extend(matvec());
    cases
}

/// One block, 18 (a real model's 576), and 257 (more blocks than the workgroup's 256
/// invocations), with and without the norm; block 1 all zeros where there is one.
fn quantize() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (k, norm)) in [(32, false), (576, true), (576, false), (8224, true)]
        .into_iter()
        .enumerate()
    {
        let what = format!("k={k} norm={norm}");
        let seed = 5000 + i as u64;
        let case = Case::new("quantize_q8", what, move |gpu| {
            quantize_case(gpu, k, norm, seed)
        });
        // The browser: a real hidden size with the norm.
        cases.push(case.browser((k, norm) == (576, true)));
    }
    cases
}

fn quantize_case(gpu: &Arc<Gpu>, k: usize, norm: bool, seed: u64) -> Result<Prepared> {
    let mut rng = Rng::new(seed);
    let mut x = rng.vec(k, 1.0);
    if k > BLOCK {
        x[BLOCK..2 * BLOCK].fill(0.0);
    }
    let nw = rng.vec(k, 1.0);
    let blocks = quantize_q8::reference(&x, norm.then_some((&nw[..], NORM_EPS)));
    let xb = upload_f32(gpu, &x);
    let nwb = upload_f32(gpu, &nw);
    let xq = poisoned(gpu, quantize_q8::words(k));
    let d = quantize_q8::launch(gpu, &xb, norm.then_some((&nwb, NORM_EPS)), &xq, k)?;
    // What the reference's x * id was, to tell a tie from a wrong q.
    let scaled: Vec<f32> = x
        .chunks_exact(BLOCK)
        .enumerate()
        .flat_map(|(b, xs)| {
            let v: Vec<f32> = xs
                .iter()
                .zip(&nw[b * BLOCK..])
                .map(|(&x, &w)| if norm { x * w } else { x })
                .collect();
            let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            v.into_iter().map(move |x| x * id)
        })
        .collect();
    let words = quantize_q8::words(k);
    let want = blocks.clone();
    // One word per block: 0 when every q is the reference's or a tie's other side and the
    // stored sum is the sum of the block's q.
    let q_check =
        Output::new("q", &xq, Expect::Words(vec![0; blocks.len()])).derived(words, move |w| {
            quantize_q8::from_words(w)
                .iter()
                .zip(&want)
                .enumerate()
                .map(|(b, ((got, sum), want))| {
                    let own_sum = *sum == got.sum();
                    let each = (0..BLOCK).all(|j| {
                        let (g, r) = (got.q[j] as i32, want.q[j] as i32);
                        let s = scaled[b * BLOCK + j];
                        g == r || ((g - r).abs() == 1 && (s.abs().fract() - 0.5).abs() < TIE_BAND)
                    });
                    u32::from(!(own_sum && each))
                })
                .collect()
        });
    let d_want: Vec<f32> = blocks.iter().map(|b| b.d).collect();
    let d_check = Output::new("d", &xq, Expect::Each(d_want, 1e-5))
        .derived(words, |w| w.iter().step_by(BLOCK_WORDS).copied().collect());
    Ok(Prepared::new(gpu, vec![d], vec![q_check, d_check]))
}

/// One int8 product: y [n] from x [k] and a weight [n, k] of `format`.
#[derive(Clone, Copy)]
struct Spec {
    format: QuantFormat,
    n: usize,
    k: usize,
    bias: bool,
    split: Option<usize>,
    layout: Layout,
    epilogue: Epilogue,
    seed: u64,
}

impl Spec {
    fn case(self) -> Case {
        let Spec { n, k, layout, .. } = self;
        let mut what = format!(
            "{n}x{k} {} bias={} lanes={} rows_per_lane={} {:?}",
            self.format.name(),
            self.bias,
            layout.lanes,
            layout.rows_per_lane,
            self.epilogue
        );
        if let Some(r) = self.split {
            what += &format!(" split={r}");
        }
        Case::new("matvec_q8", what, move |gpu| self.prepare(gpu)).quantized(true)
    }

    fn prepare(&self, gpu: &Arc<Gpu>) -> Result<Prepared> {
        let Spec { n, k, format, .. } = *self;
        let dtype = DType::Quant(format);
        let gpu = &weights::limited(gpu, self.split, dtype, k);
        let mut rng = Rng::new(self.seed);
        let x = quantize_q8::reference(&rng.vec(k, 1.0), None);
        let bytes = weights::random_blocks(format, n, k, &mut rng);
        let w = GpuWeight::upload_experts(
            gpu,
            format.name(),
            1,
            n,
            k,
            HostData::Quant(format, &bytes),
        )?;
        if self.split.is_some() && w.chunks.len() <= 2 {
            return Err(super::bad_case(format!(
                "weight not split: {} chunk(s)",
                w.chunks.len()
            )));
        }
        let b = self.bias.then(|| rng.vec(n, 1.0));
        let residual = rng.vec(n, 1.0);
        let xb = upload_u32(gpu, &quantize_q8::to_words(&x));
        let bb = b.as_ref().map(|b| upload_f32(gpu, b));
        let y = match self.epilogue {
            Epilogue::Store => poisoned(gpu, n),
            Epilogue::Accumulate => upload_f32(gpu, &residual),
            Epilogue::Glu(_) => poisoned(gpu, n / 2),
        };
        let d = matvec_q8::launch(
            gpu,
            &xb,
            &w,
            bb.as_deref(),
            &y,
            self.epilogue,
            Some(self.layout),
        )?;
        let want = matvec_q8::reference(format, &bytes, &x, b.as_deref(), n);
        let want = match self.epilogue {
            Epilogue::Store => want,
            Epilogue::Accumulate => want.iter().zip(&residual).map(|(a, r)| a + r).collect(),
            Epilogue::Glu(gate) => reference_glu_pairs(&want, gate),
        };
        let bytes_read = w.bytes() as f64 + 4.0 * (quantize_q8::words(k) + n) as f64;
        Ok(Prepared::new(gpu, d, vec![Output::close("", &y, want, SUM_TOL)]).work(0.0, bytes_read))
    }
}

/// Every format at two and three blocks and at 576 (18 blocks: more than a row group's
/// lanes), 70 rows (a full CPU-layout workgroup and a ragged one) and 37 (one ragged row
/// group), in the CPU and the GPU layout; every epilogue; weights split in chunks of 17 rows
/// (34 with SwiGLU, which needs whole pairs per chunk).
fn matvec() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 5100;
    let spec = |format, (n, k), bias, layout, epilogue, seed| Spec {
        format,
        n,
        k,
        bias,
        split: None,
        layout,
        epilogue,
        seed,
    };
    for format in matvec_q8::FORMATS {
        // The layout CPU drivers give the weight type.
        let cpu = Layout::for_cpu(DType::Quant(format));
        for (shape, bias, layout) in [
            ((70, 64), false, cpu),
            ((37, 96), true, Layout::GPU),
            ((70, 576), true, cpu),
        ] {
            seed += 1;
            let s = spec(format, shape, bias, layout, Epilogue::Store, seed);
            // The browser: two formats (a 4-bit one with an offset, Q8_0's signed bytes) at a
            // real hidden size.
            let browser =
                shape == (70, 576) && matches!(format, QuantFormat::Q4_1 | QuantFormat::Q8_0);
            cases.push(s.case().browser(browser));
        }
    }
    let fused = [
        (QuantFormat::Q4_1, Epilogue::Accumulate, Layout::CPU),
        (QuantFormat::Q4_0, Epilogue::Glu(Gate::Silu), Layout::CPU),
        (QuantFormat::Q8_0, Epilogue::Accumulate, Layout::CPU_STREAM),
        (
            QuantFormat::Q8_0,
            Epilogue::Glu(Gate::GeluTanh),
            Layout::GPU,
        ),
        (QuantFormat::Q5_1, Epilogue::Accumulate, Layout::GPU),
        (QuantFormat::Q5_0, Epilogue::Glu(Gate::Silu), Layout::GPU),
    ];
    for (format, epilogue, layout) in fused {
        seed += 1;
        let case = spec(format, (70, 576), false, layout, epilogue, seed).case();
        // The browser: the residual add and SwiGLU, in the GPU layout.
        cases
            .push(case.browser(layout == Layout::GPU && epilogue != Epilogue::Glu(Gate::GeluTanh)));
    }
    for (format, epilogue, rows) in [
        (QuantFormat::Q4_1, Epilogue::Store, 17),
        (QuantFormat::Q8_0, Epilogue::Glu(Gate::Silu), 34),
    ] {
        seed += 1;
        let s = Spec {
            split: Some(rows),
            ..spec(format, (140, 96), false, Layout::CPU, epilogue, seed)
        };
        cases.push(s.case());
    }
    cases
}

/// The int8 product's relative error against the exact f32 matvec on random x and weights
/// of each format (the CPU references of both): what the precision costs, for the record.
pub fn error_vs_f32(format: QuantFormat, n: usize, k: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let x = rng.vec(k, 1.0);
    let bytes = weights::random_blocks(format, n, k, &mut rng);
    let exact = matvec::reference(&x, &crate::quant::dequantize(format, &bytes), None, n, k);
    let blocks = quantize_q8::reference(&x, None);
    let int8 = matvec_q8::reference(format, &bytes, &blocks, None, n);
    super::rel_err(&int8, &exact)
}

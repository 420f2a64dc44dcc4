//! matmul (prefill) and matvec (decode) for every weight kind, with and without bias, at
//! ragged sizes; weights split into several bindings (chunk edges inside tiles and row
//! groups); and every matvec layout, the GPU layout included (which CPU adapters never pick),
//! each also with its lanes summed by subgroup shuffles: where the adapter cannot run that
//! (no subgroups, as llvmpipe GL, or fewer lanes in a subgroup than in a row group, as 8 lanes
//! on SwiftShader's subgroups of 4) the case checks that it is refused and runs the layout
//! summed through workgroup memory instead. The same tolerance for both sums: only the
//! order of the f32 additions differs.
//! The matvec's fusions (decode's Linear op): an RMSNorm or a merge of attention pieces as x
//! is loaded, a residual add or SwiGLU of row pairs on the way out.
//!
//! bf16 weights share the f16 paths (two 16-bit values per word, read one at a time for odd K
//! and as vec4s of words for K % 8 == 0); only the unpacking differs, so they get the same
//! shapes, fewer of each: every path once rather than every size twice.

use std::sync::Arc;

use super::{poisoned, upload_f32, weights, Case, Output, Prepared, SUM_TOL};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::elementwise::{reference_glu_pairs, Gate};
use crate::kernels::matvec::{Epilogue, Fusion, Layout, Prologue};
use crate::kernels::Dispatch;
use crate::kernels::{matmul, matvec, rms_norm};
use crate::quant::{self, QuantFormat};
use crate::rng::Rng;
use crate::tensor::DType;
use crate::tuning::MATVEC_CANDIDATES;

/// One product: y [m, n] = x [m, k] times a weight [n, k] of `dtype`.
#[derive(Clone, Copy)]
struct Spec {
    matvec: bool,
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    bias: bool,
    /// Rows per weight chunk, under a binding limit that forces the split.
    split: Option<usize>,
    /// A matvec layout other than the device's own.
    layout: Option<Layout>,
    /// Matvec fusions: the prologue (x's [`Input`]) and the epilogue.
    input: Input,
    epilogue: Epilogue,
    seed: u64,
}

/// What a fused matvec reads as x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Plain,
    /// RMSNorm of x (eps 1e-5).
    Norm,
    /// Attention pieces of heads of `head_dim` values in `splits` pieces.
    Merge {
        head_dim: usize,
        splits: usize,
    },
}

const NORM_EPS: f32 = 1e-5;

/// Random split-K attention pieces [heads, splits, head_dim + 2] and their merge [heads *
/// head_dim] (in f64): head h uses its first splits - h % splits pieces (at least one), the
/// rest unused as shaders/decode_attention.wgsl leaves them (max -3e38, denominator 0).
fn pieces(rng: &mut Rng, heads: usize, head_dim: usize, splits: usize) -> (Vec<f32>, Vec<f32>) {
    let stride = head_dim + 2;
    let mut partial = vec![0.0f32; heads * splits * stride];
    let mut merged = Vec::with_capacity(heads * head_dim);
    for h in 0..heads {
        let used = (splits - h % splits).max(1);
        for s in 0..splits {
            let p = &mut partial[(h * splits + s) * stride..][..stride];
            if s < used {
                let v = rng.vec(stride, 1.0);
                p[0] = 3.0 * v[0];
                p[1] = 1.5 + v[1];
                p[2..].copy_from_slice(&v[2..]);
            } else {
                p[0] = -3.0e38;
            }
        }
        let piece = |s: usize| &partial[(h * splits + s) * stride..][..stride];
        let big = (0..used)
            .map(|s| piece(s)[0] as f64)
            .fold(f64::MIN, f64::max);
        let w = |s: usize| (piece(s)[0] as f64 - big).exp();
        let denom: f64 = (0..used).map(|s| w(s) * piece(s)[1] as f64).sum();
        for d in 0..head_dim {
            let a: f64 = (0..used).map(|s| w(s) * piece(s)[2 + d] as f64).sum();
            merged.push((a / denom) as f32);
        }
    }
    (partial, merged)
}

impl Spec {
    fn new(matvec: bool, (m, n, k): (usize, usize, usize), dtype: DType, seed: u64) -> Spec {
        Spec {
            matvec,
            m,
            n,
            k,
            dtype,
            bias: false,
            split: None,
            layout: None,
            input: Input::Plain,
            epilogue: Epilogue::Store,
            seed,
        }
    }

    fn fused(self, input: Input, epilogue: Epilogue) -> Spec {
        Spec {
            input,
            epilogue,
            ..self
        }
    }

    fn bias(self, bias: bool) -> Spec {
        Spec { bias, ..self }
    }

    fn split(self, rows: usize) -> Spec {
        Spec {
            split: Some(rows),
            ..self
        }
    }

    fn case(self) -> Case {
        let Spec { m, n, k, .. } = self;
        let (kernel, size) = match self.matvec {
            true => ("matvec", format!("{n}x{k}")),
            false => ("matmul", format!("{m}x{n}x{k}")),
        };
        let mut what = format!("{size} {} bias={}", self.dtype.name(), self.bias);
        if let Some(r) = self.split {
            what += &format!(" split={r}");
        }
        if let Some(l) = self.layout {
            what += &format!(" lanes={} rows_per_lane={}", l.lanes, l.rows_per_lane);
            if l.subgroup {
                what += " subgroup";
            }
        }
        if self.input != Input::Plain || self.epilogue != Epilogue::Store {
            what += &format!(" {:?} {:?}", self.input, self.epilogue);
        }
        Case::new(kernel, what, move |gpu| self.prepare(gpu))
            .quantized(matches!(self.dtype, DType::Quant(_)))
    }

    fn prepare(&self, gpu: &Arc<Gpu>) -> Result<Prepared> {
        let Spec { m, n, k, .. } = *self;
        let gpu = &weights::limited(gpu, self.split, self.dtype, k);
        let mut rng = Rng::new(self.seed);
        let x = rng.vec(m * k, 1.0);
        let (w, w_ref) = weights::random(gpu, self.dtype, 1, n, k, &mut rng)?;
        let b = self.bias.then(|| rng.vec(n, 1.0));
        if self.split.is_some() && w.chunks.len() <= 2 {
            return Err(super::bad_case(format!(
                "weight not split: {} chunk(s)",
                w.chunks.len()
            )));
        }
        // x as the kernel reads it (pieces for a merge) and as the product sees it.
        let (x_in, x) = match self.input {
            Input::Merge { head_dim, splits } => pieces(&mut rng, k / head_dim, head_dim, splits),
            _ => (x.clone(), x),
        };
        let norm_w = rng.vec(k, 1.0);
        let x = match self.input {
            Input::Norm => rms_norm::reference(&x, &norm_w, k, NORM_EPS),
            _ => x,
        };
        let residual = rng.vec(m * n, 1.0);
        let xb = upload_f32(gpu, &x_in);
        let bb = b.as_ref().map(|b| upload_f32(gpu, b));
        let nwb = upload_f32(gpu, &norm_w);
        let y = match self.epilogue {
            Epilogue::Store => poisoned(gpu, m * n),
            Epilogue::Accumulate => upload_f32(gpu, &residual),
            Epilogue::Glu(_) => poisoned(gpu, m * n / 2),
        };
        let prologue = match self.input {
            Input::Plain => Prologue::None,
            Input::Norm => Prologue::Norm(&nwb, NORM_EPS),
            Input::Merge { head_dim, splits } => Prologue::Merge { head_dim, splits },
        };
        let fusion = Fusion {
            prologue,
            epilogue: self.epilogue,
        };
        let bias = bb.as_deref();
        let launch = |layout: Option<Layout>| -> Result<Vec<Dispatch>> {
            match (self.matvec, layout) {
                (true, Some(l))
                    if fusion.epilogue == Epilogue::Store && self.input == Input::Plain =>
                {
                    matvec::launch_with(gpu, &xb, &w, bias, &y, l)
                }
                (true, l) => matvec::launch_fused(gpu, &xb, &w, bias, &y, fusion, l),
                (false, _) => matmul::launch(gpu, &xb, &w, bias, &y, m),
            }
        };
        let d = match self.layout {
            // A subgroup reduction this adapter cannot run: refused, then summed through
            // workgroup memory.
            Some(l) if self.matvec && !matvec::runs(gpu, l) => match launch(Some(l)) {
                Err(Error::Graph(_)) => launch(Some(Layout {
                    subgroup: false,
                    ..l
                }))?,
                other => {
                    return Err(super::bad_case(format!(
                        "the subgroup reduction was not refused on this adapter: {:?}",
                        other.map(|d| d.len())
                    )))
                }
            },
            l => launch(l)?,
        };
        let want = match self.matvec {
            true => matvec::reference(&x, &w_ref, b.as_deref(), n, k),
            false => matmul::reference(&x, &w_ref, b.as_deref(), m, n, k),
        };
        let want = match self.epilogue {
            Epilogue::Store => want,
            Epilogue::Accumulate => want.iter().zip(&residual).map(|(a, r)| a + r).collect(),
            Epilogue::Glu(gate) => reference_glu_pairs(&want, gate),
        };
        let out = Output::close("", &y, want, SUM_TOL);
        // A matvec reads each weight once and is bounded by bandwidth: it declares bytes only.
        let flops = if self.matvec {
            0.0
        } else {
            2.0 * (m * n * k) as f64
        };
        let bytes = w.bytes() as f64 + 4.0 * (x_in.len() + m * n) as f64;
        Ok(Prepared::new(gpu, d, vec![out]).work(flops, bytes))
    }
}

/// Row lengths K to test a quantized `format` with: two and three blocks; for the 32-value
/// formats also 576 (18 groups, a real hidden size: more groups than the 8 lanes of a row
/// group), for the K-quants also one superblock (4 pairs of groups: fewer than the lanes of a
/// row group).
fn quant_ks(format: QuantFormat) -> Vec<usize> {
    match format.block_elems() {
        32 => vec![64, 96, 576],
        b => vec![b, 2 * b, 3 * b],
    }
}

/// The quantized formats the browser runs: two 32-value ones and two K-quants.
const BROWSER_QUANTS: [QuantFormat; 4] = [
    QuantFormat::Q4_1,
    QuantFormat::Q8_0,
    QuantFormat::Q4_K,
    QuantFormat::Q6_K,
];

/// A K of 576 (32-value blocks) or 512 (K-quants): a real hidden size.
fn browser_k(format: QuantFormat) -> usize {
    match format.block_elems() {
        32 => 576,
        _ => 512,
    }
}

pub fn matmul() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 100;
    for (m, n, k) in [(37, 70, 45), (65, 130, 64), (1, 67, 33), (130, 9, 200)] {
        for dtype in [DType::F32, DType::F16] {
            for bias in [false, true] {
                seed += 1;
                let browser = bias && n != 9;
                let spec = Spec::new(false, (m, n, k), dtype, seed).bias(bias);
                cases.push(spec.case().agree().browser(browser));
            }
        }
    }
    // bf16: odd K (halves straddling rows), K % 8 == 0 with bias, a single row.
    for (shape, bias, seed) in [
        ((37, 70, 45), false, 151),
        ((65, 130, 64), true, 152),
        ((1, 67, 33), true, 153),
    ] {
        let spec = Spec::new(false, shape, DType::BF16, seed).bias(bias);
        cases.push(spec.case().agree());
    }
    // 70 rows in chunks of 17 (17, 17, 17, 17, 2): chunk edges inside the 64-wide tiles.
    for (dtype, bias, rows, shape, seed) in [
        (DType::F32, true, 17, (37, 70, 45), 201),
        (DType::F16, false, 17, (37, 70, 45), 202),
        (DType::F16, true, 50, (65, 130, 64), 203),
        (DType::BF16, true, 17, (37, 70, 45), 204),
    ] {
        cases.push(
            Spec::new(false, shape, dtype, seed)
                .bias(bias)
                .split(rows)
                .case(),
        );
    }
    for (i, format) in quant::ALL.into_iter().enumerate() {
        let dtype = DType::Quant(format);
        // Half the formats with a bias: each specialisation costs llvmpipe seconds to compile.
        let bias = i % 2 == 1;
        for k in quant_ks(format) {
            // M and N not multiples of the 64x64 tile; M = 65 spills a row into a second tile.
            for (m, n) in [(37, 70), (65, 37)] {
                seed += 1;
                let spec = Spec::new(false, (m, n, k), dtype, 3000 + seed);
                cases.push(spec.bias(bias).case().agree());
            }
        }
        let k = 2 * format.block_elems();
        let spec = Spec::new(false, (37, 70, k), dtype, 3100 + i as u64);
        cases.push(spec.bias(bias).split(17).case());
    }
    for (i, format) in BROWSER_QUANTS.into_iter().enumerate() {
        let shape = (27, 70, browser_k(format));
        let spec = Spec::new(false, shape, DType::Quant(format), 420 + i as u64);
        cases.push(spec.case().browser(true));
    }
    cases
}

pub fn matvec() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 300;
    // Odd K (the f16 path reading halves across words), even K (two halves per word), long K.
    for (n, k) in [(300, 129), (300, 128), (77, 1000), (5, 3)] {
        for dtype in [DType::F32, DType::F16] {
            for bias in [false, true] {
                seed += 1;
                let spec = Spec::new(true, (1, n, k), dtype, seed).bias(bias);
                cases.push(spec.case().agree());
            }
        }
    }
    for (n, k) in [(70, 45), (300, 576), (1, 33)] {
        for dtype in [DType::F32, DType::F16] {
            seed += 1;
            cases.push(Spec::new(true, (1, n, k), dtype, seed).case().browser(true));
        }
    }
    // bf16: odd K, K % 8 == 0, a tiny one; the browser's at a real hidden size.
    for (n, k, bias, seed) in [
        (300, 129, true, 351),
        (300, 128, false, 352),
        (5, 3, true, 353),
    ] {
        cases.push(
            Spec::new(true, (1, n, k), DType::BF16, seed)
                .bias(bias)
                .case()
                .agree(),
        );
    }
    cases.push(
        Spec::new(true, (1, 70, 576), DType::BF16, 354)
            .case()
            .browser(true),
    );
    // Odd K with f16 and bf16: chunks keep an even number of rows.
    for (dtype, bias, (n, k), seed) in [
        (DType::F16, true, (300, 129), 401),
        (DType::F16, false, (300, 128), 402),
        (DType::F32, true, (300, 129), 403),
        (DType::BF16, true, (300, 129), 404),
    ] {
        cases.push(
            Spec::new(true, (1, n, k), dtype, seed)
                .bias(bias)
                .split(37)
                .case(),
        );
    }
    for (i, format) in quant::ALL.into_iter().enumerate() {
        let dtype = DType::Quant(format);
        for k in quant_ks(format) {
            // 70 rows: one full workgroup of 64 and a ragged one; 37: one ragged row group.
            for (n, bias) in [(70, false), (37, true)] {
                seed += 1;
                let spec = Spec::new(true, (1, n, k), dtype, 2000 + seed);
                cases.push(spec.bias(bias).case().agree());
            }
        }
        // 70 rows in chunks of 17: chunk edges inside row groups.
        let k = 2 * format.block_elems();
        let spec = Spec::new(true, (1, 70, k), dtype, 2100 + i as u64);
        cases.push(spec.bias(i % 2 == 0).split(17).case());
    }
    for (i, format) in BROWSER_QUANTS.into_iter().enumerate() {
        let shape = (1, 37, browser_k(format));
        let spec = Spec::new(true, shape, DType::Quant(format), 400 + i as u64);
        cases.push(spec.case().browser(true));
    }
    // Every layout computes the same product: each one `bench --tune` may choose (the CPU
    // and GPU defaults among them) and odd ones, for f32 (any K and K % 4 == 0), f16 (odd K,
    // K % 8 == 0), bf16 (K % 8 == 0) and a 32-value and a 256-value block format, with rows
    // not a multiple of any layout's.
    let odd = [
        Layout {
            lanes: 1,
            rows_per_lane: 1,
            subgroup: false,
        },
        Layout {
            lanes: 64,
            rows_per_lane: 3,
            subgroup: false,
        },
        // One lane per row: nothing to shuffle; an odd row count per lane.
        Layout {
            lanes: 1,
            rows_per_lane: 1,
            subgroup: true,
        },
    ];
    let mut seed = 2200;
    for layout in MATVEC_CANDIDATES.into_iter().chain(odd) {
        let quants =
            [QuantFormat::Q5_1, QuantFormat::Q6_K].map(|f| (DType::Quant(f), 3 * f.block_elems()));
        let plain = [
            (DType::F32, 129),
            (DType::F32, 128),
            (DType::F16, 129),
            (DType::F16, 136),
        ];
        for (dtype, k) in quants.into_iter().chain(plain) {
            seed += 1;
            let spec = Spec {
                layout: Some(layout),
                ..Spec::new(true, (1, 70, k), dtype, seed).bias(true)
            };
            cases.push(spec.case());
        }
        let spec = Spec {
            layout: Some(layout),
            ..Spec::new(true, (1, 70, 136), DType::BF16, seed + 100).bias(true)
        };
        cases.push(spec.case());
    }
    cases.extend(fused_matvec());
    cases
}

/// The matvec's fusions, each a pipeline of its own (CPU drivers take a while to compile
/// each, so the set is small): every fusion in the CPU layouts and the GPU layout with vec4 loads
/// (and two in each other layout `bench --tune` may choose; then every fusion summed by
/// subgroup in the GPU layout and in 8 and 4 lanes, which lavapipe's subgroups of 8 and
/// SwiftShader's of 4 run, and the prologues' other paths in 4 lanes)
/// (f32, K % 4 == 0), and in the CPU layout with bf16 weights (K % 8 == 0: a bf16 checkpoint
/// runs them all at decode); the prologues on the one-value path (K = 130, f32 and bf16) and
/// with a 32-value and a 256-value block format. 70 rows: ragged row groups and workgroups;
/// 48 to 128 heads of 2 to merge, in 3 pieces of which some are unused.
fn fused_matvec() -> Vec<Case> {
    let merge = Input::Merge {
        head_dim: 2,
        splits: 3,
    };
    let all = [
        (Input::Norm, Epilogue::Store, true),
        (merge, Epilogue::Accumulate, false),
        (Input::Norm, Epilogue::Glu(Gate::Silu), false),
        (Input::Plain, Epilogue::Accumulate, true),
        (Input::Plain, Epilogue::Glu(Gate::Silu), false),
        (Input::Norm, Epilogue::Glu(Gate::GeluTanh), false),
    ];
    let prologues = [
        (Input::Norm, Epilogue::Glu(Gate::Silu), false),
        (merge, Epilogue::Accumulate, true),
    ];
    let mut specs = Vec::new();
    let defaults = Layout::DEFAULTS;
    for layout in defaults {
        let takes = |f: &(Input, Epilogue, bool)| {
            !matches!(f.0, Input::Merge { .. }) || layout.takes_merge()
        };
        specs.extend(
            all.into_iter()
                .filter(takes)
                .map(|f| (DType::F32, 128, layout, f)),
        );
    }
    // The other layouts `bench --tune` may choose: a norm prologue with the SwiGLU epilogue
    // (row pairs in every workgroup) and a residual add.
    for layout in MATVEC_CANDIDATES
        .into_iter()
        .filter(|l| !l.subgroup && !defaults.contains(l))
    {
        specs.extend([all[2], all[3]].map(|f| (DType::F32, 128, layout, f)));
    }
    // Each in the layout CPU drivers give its weight type.
    for (dtype, k) in [
        (DType::F32, 130),
        (DType::Quant(QuantFormat::Q4_1), 96),
        (DType::Quant(QuantFormat::Q4_K), 256),
    ] {
        specs.extend(prologues.map(|f| (dtype, k, Layout::for_cpu(dtype), f)));
    }
    let bf16 = Layout::for_cpu(DType::BF16);
    specs.extend(all.map(|f| (DType::BF16, 136, bf16, f)));
    specs.extend(prologues.map(|f| (DType::BF16, 130, bf16, f)));
    let by_subgroup = |lanes, rows_per_lane| Layout {
        lanes,
        rows_per_lane,
        subgroup: true,
    };
    let (lanes8, lanes4) = (by_subgroup(8, 8), by_subgroup(4, 4));
    for layout in [Layout::GPU.by_subgroup(), lanes8, lanes4] {
        specs.extend(all.map(|f| (DType::F32, 128, layout, f)));
    }
    specs.extend([all[2], all[3]].map(|f| (DType::F32, 128, by_subgroup(32, 4), f)));
    for (dtype, k) in [
        (DType::F32, 130),
        (DType::Quant(QuantFormat::Q4_1), 96),
        (DType::Quant(QuantFormat::Q4_K), 256),
        (DType::BF16, 136),
    ] {
        specs.extend(prologues.map(|f| (dtype, k, lanes4, f)));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (dtype, k, layout, (input, epilogue, bias)))| {
            let spec = Spec {
                layout: Some(layout),
                ..Spec::new(true, (1, 70, k), dtype, 2300 + i as u64)
                    .bias(bias)
                    .fused(input, epilogue)
            };
            spec.case()
        })
        .collect()
}

//! The decode matvec's opt-in int8 and f16 precisions (`Gpu::set_matvec_precision`,
//! `--matvec-precision int8|f16`). The int8 kernels are checked against CPU references of the
//! same quantized arithmetic by the kernel cases (tests/tests/quant.rs), the f16 kernel here
//! (`matvec_f16_matches_reference`); then the Linear op's lowering at one token: int8 or f16
//! where the weight allows (int8: one quantize of x, the norm fused, before each such
//! product; f16: one kernel, the norm inside; the residual add and SwiGLU fused as in f32),
//! f32 otherwise, and never unless asked for; f16 refused by name without shader-f16.

use std::sync::Arc;

use kestrel_runtime::cases::{self, weights};
use kestrel_runtime::executor::Plan;
use kestrel_runtime::kernels::elementwise::Gate;
use kestrel_runtime::kernels::linear::{LinearInput, LinearOutput};
use kestrel_runtime::kernels::matvec_q8::{MatvecPrecision, FORMATS};
use kestrel_runtime::kernels::Step;
use kestrel_runtime::quant::QuantFormat;
use kestrel_runtime::rng::Rng;
use kestrel_runtime::state::StateStore;
use kestrel_runtime::tensor::{DType, GpuWeight, HostData};
use kestrel_runtime::Error;
use kestrel_runtime::{Gpu, Graph};
use kestrel_tests::*;

const DIM: usize = 96;
const HIDDEN: usize = 64;

/// A decoder layer's linears at one token, on weights the int8 kernel reads and one it does
/// not (f16): r += Wo(norm(x)); h = SwiGLU(Wgu(norm(r))); r += Wd(h); and head(x) (f16).
fn layer(gpu: &Arc<Gpu>) -> Graph {
    let mut rng = Rng::new(17);
    let mut g = Graph::new();
    let x = g.input("x", &[1, DIM], DType::F32);
    let r = g.input("r", &[1, DIM], DType::F32);
    let mut weight = |g: &mut Graph, dtype, rows, cols| {
        let (w, _) = weights::random(gpu, dtype, 1, rows, cols, &mut rng).expect("weight");
        g.weight(&w)
    };
    let q = DType::Quant;
    let wo = weight(&mut g, q(QuantFormat::Q4_1), DIM, DIM);
    let wgu = weight(&mut g, q(QuantFormat::Q8_0), 2 * HIDDEN, DIM);
    let wd = weight(&mut g, q(QuantFormat::Q5_0), DIM, HIDDEN);
    let head = weight(&mut g, DType::F16, 40, DIM);
    let norm = GpuWeight::upload_experts(gpu, "norm", 1, 1, DIM, HostData::F32(&[1.5; DIM]))
        .expect("norm");
    let norm = g.weight(&norm);
    let normed = LinearInput::Norm {
        weight: norm,
        eps: 1e-5,
    };
    let r = g
        .linear_fused(x, wo, None, normed, LinearOutput::AddTo(r))
        .unwrap();
    let h = g
        .linear_fused(r, wgu, None, normed, LinearOutput::Glu(Gate::Silu))
        .unwrap();
    let r = g
        .linear_fused(h, wd, None, LinearInput::Plain, LinearOutput::AddTo(r))
        .unwrap();
    let logits = g.linear(x, head, None).unwrap();
    g.output(r);
    g.output(logits);
    g
}

/// The plan's outputs and its dispatches' kernel names, with `precision` set.
fn run(gpu: &Arc<Gpu>, precision: MatvecPrecision) -> (Vec<Vec<f32>>, Vec<&'static str>) {
    gpu.set_matvec_precision(precision).expect("precision");
    let g = layer(gpu);
    let plan = Plan::new(gpu, &g, &StateStore::default()).expect("plan");
    gpu.set_matvec_precision(MatvecPrecision::F32).expect("f32");
    let mut rng = Rng::new(5);
    for name in ["x", "r"] {
        let v: Vec<u32> = rng.vec(DIM, 1.0).iter().map(|f| f.to_bits()).collect();
        plan.write_input(name, &v).unwrap();
    }
    plan.run(&Step::default()).unwrap();
    let outputs = (0..2)
        .map(|i| pollster::block_on(plan.read_f32(i)).unwrap())
        .collect();
    (outputs, plan.dispatches().iter().map(|d| d.name).collect())
}

#[test]
fn int8_lowers_where_the_weight_allows_and_only_when_asked() {
    for gpu in gpus() {
        let backend = gpu.backend_name();
        assert_eq!(gpu.matvec_precision(), MatvecPrecision::F32, "the default");
        let (exact, plain) = run(&gpu, MatvecPrecision::F32);
        let (int8, names) = run(&gpu, MatvecPrecision::Int8);
        assert!(
            !plain.iter().any(|n| n.ends_with("q8")),
            "{backend}: {plain:?}"
        );
        // The three quantized products: one quantize each, the same dispatch count besides.
        let count = |ns: &[&str], n: &str| ns.iter().filter(|&&m| m == n).count();
        assert_eq!(count(&names, "quantize_q8"), 3, "{backend}: {names:?}");
        assert_eq!(count(&names, "matvec_q8"), 3, "{backend}: {names:?}");
        assert_eq!(
            names.len(),
            plain.len() + 3,
            "{backend}: {names:?} vs {plain:?}"
        );
        // The f16 head is the f32 matvec either way: the same bits.
        assert_eq!(
            int8[1].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            exact[1].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{backend}: f16 head"
        );
        // The residual stream after three int8 products, each off by x's quantization (about
        // 4e-3, see `int8_error_against_f32`), the later ones on inputs already off: 1.1e-2
        // on lavapipe and llvmpipe GL.
        let err = cases::rel_err(&int8[0], &exact[0]);
        eprintln!("{backend}: int8 layer vs f32: relative error {err:.2e}");
        assert!(err < 3e-2, "{backend}: int8 layer off by {err:.2e}");
    }
}

/// The int8 product's relative error against the exact f32 matvec (CPU references of both) on
/// random x in [-1, 1) and random blocks: what the precision costs. 3.7e-3 to 4.4e-3 here (x's
/// step is amax / 127 per block, an error of step / sqrt(12) per value, 2.3e-3 against an RMS
/// of 0.58, more where a block's offset term adds the errors up); a wrong index or scale would
/// be of order 1.
#[test]
fn int8_error_against_f32() {
    for (i, format) in FORMATS.into_iter().enumerate() {
        let err = cases::matvec_q8::error_vs_f32(format, 64, 576, 40 + i as u64);
        eprintln!("{}: int8 vs f32 relative error {err:.2e}", format.name());
        assert!(err < 1e-2, "{}: {err:.2e}", format.name());
    }
}

/// The f16 kernel against its CPU reference of the same arithmetic on every format it reads,
/// ragged shapes, both layouts, the norm and every epilogue, split weights, NaN-poisoned
/// outputs (runtime/src/cases/matvec_f16.rs); on adapters without shader-f16 the typed refusal.
#[test]
fn matvec_f16_matches_reference() {
    check_cases(cases::family("matvec_f16"));
}

#[test]
fn f16_lowers_where_the_weight_allows_and_is_refused_without_shader_f16() {
    for gpu in gpus() {
        let backend = gpu.backend_name();
        if !gpu.caps.shader_f16 {
            let err = gpu.set_matvec_precision(MatvecPrecision::F16).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::MissingFeature {
                        feature: "shader-f16",
                        ..
                    }
                ) && err.to_string().contains("--matvec-precision"),
                "{backend}: {err}"
            );
            assert_eq!(gpu.matvec_precision(), MatvecPrecision::F32, "{backend}");
            eprintln!("{backend}: f16 refused: {err}");
            continue;
        }
        let (exact, plain) = run(&gpu, MatvecPrecision::F32);
        let (f16, names) = run(&gpu, MatvecPrecision::F16);
        assert!(!plain.contains(&"matvec_f16"), "{backend}: {plain:?}");
        // All four products (Q4_1, Q8_0, Q5_0 and the f16 head) in f16, one dispatch each as
        // in f32: the norm is inside the kernel.
        let count = |ns: &[&str], n: &str| ns.iter().filter(|&&m| m == n).count();
        assert_eq!(count(&names, "matvec_f16"), 4, "{backend}: {names:?}");
        assert_eq!(
            names.len(),
            plain.len(),
            "{backend}: {names:?} vs {plain:?}"
        );
        // Each product off by the f16 roundings of x, the weights and the products (about 3e-4,
        // see `f16_error_against_f32`), the later ones on inputs already off.
        for (i, what) in ["residual stream", "f16 head"].iter().enumerate() {
            let err = cases::rel_err(&f16[i], &exact[i]);
            eprintln!("{backend}: f16 {what} vs f32: relative error {err:.2e}");
            assert!(err < 3e-3, "{backend}: f16 {what} off by {err:.2e}");
        }
    }
}

/// The f16 product's relative error against the exact f32 matvec (CPU references of both) on
/// random x in [-1, 1) and random weights: what the precision costs. x and the weights carry
/// 11 significant bits (a relative rounding error up to 2^-12, about 1.4e-4 RMS each with the
/// product's), so a few 1e-4; a wrong index or scale would be of order 1.
#[test]
fn f16_error_against_f32() {
    let dtypes = std::iter::once(DType::F16).chain(FORMATS.map(DType::Quant));
    for (i, dtype) in dtypes.enumerate() {
        let err = cases::matvec_f16::error_vs_f32(dtype, 64, 576, 60 + i as u64);
        eprintln!("{}: f16 vs f32 relative error {err:.2e}", dtype.name());
        assert!(err < 1e-3, "{}: {err:.2e}", dtype.name());
    }
}

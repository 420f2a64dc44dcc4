//! Quantized weights (ggml block formats), kept quantized on the GPU and dequantized inside
//! matvec, matmul and the embedding gather.
//!
//! * `dequantize_matches_gguf_py` checks the CPU reference itself, `quant::dequantize`, against
//!   gguf-py (llama.cpp's Python package) on random blocks of every format
//!   (tests/fixtures/quant, made by tests/fixtures/quant/generate.py). CPU only.
//! * The GPU tests run every format on every backend of `kestrel_tests::gpus()` against
//!   "dequantize on the CPU, then the f32 reference", with outputs poisoned with NaN, ragged
//!   sizes, split weights, and Vulkan and GL compared with each other.
//!
//! Tolerances:
//! * Exact equality (`assert_equal`: every value equal as an f32, where -0 equals +0) for
//!   `quant::dequantize` against gguf-py and for the embedding gather. Each value is a scale
//!   times a small integer (exact in f32) and at most one rounding after it, so any order or
//!   fusing of the operations gives the same number. Only the sign of a zero may differ:
//!   gguf-py computes (q - 8) * d where the reference computes q * d - 8d, and lavapipe's
//!   compiler does not preserve signed zeros.
//! * `SUM_TOL` = 1e-5 for matvec and matmul: the GPU's dequantized weights equal the
//!   reference's exactly (the gather test checks `dequant_group` value by value; matvec's
//!   `dequant_pair` is built from the same helpers), so the only difference is the order in
//!   which up to 768 f32 products are summed (lanes, tiles, partial sums per group); for random
//!   data that is about sqrt(K) * 2^-24 ≈ 2e-6 relative (measured: at most 9e-7), while a wrong
//!   nibble, scale or block offset gives errors of order 1e-2 or more.
//! * `BACKEND_TOL` = 1e-5: Vulkan and GL run the same WGSL and differ only by that rounding.

use std::path::Path;
use std::sync::Arc;

use half::f16;
use kestrel_runtime::kernels::matvec::Layout;
use kestrel_runtime::kernels::{embedding, matmul, matvec};
use kestrel_runtime::quant::{self, QuantFormat};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::tensor::{DType, GpuWeight, HostData, WeightChunk};
use kestrel_runtime::Gpu;
use kestrel_tests::*;

const SUM_TOL: f64 = 1e-5;
const BACKEND_TOL: f64 = 1e-5;

/// Panic unless `got` and `expected` hold equal values (-0 == +0; NaN equals nothing).
fn assert_equal(what: &str, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths differ");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != expected[i]).collect();
    if let Some(&i) = bad.first() {
        panic!(
            "{what}: {} of {} values differ; first at {i}: got {:e}, expected {:e}",
            bad.len(),
            got.len(),
            got[i],
            expected[i]
        );
    }
}

/// Byte offsets of the f16 fields (d, and m or dmin) in a block of `format`.
fn f16_fields(format: QuantFormat) -> &'static [usize] {
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => &[0],
        QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4_K | QuantFormat::Q5_K => &[0, 2],
        QuantFormat::Q6_K => &[208],
    }
}

/// Random but valid blocks for a [rows, cols] weight in file layout: random bytes, with each
/// f16 scale field set to a finite normal f16 of either sign (magnitude 2^-9 .. 2^-3), so
/// values are O(0.01 .. 10) and never NaN or infinite.
fn random_blocks(format: QuantFormat, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..format.file_bytes(rows * cols))
        .map(|_| rng.next_u32() as u8)
        .collect();
    for block in bytes.chunks_exact_mut(format.block_bytes()) {
        for &off in f16_fields(format) {
            let v =
                (2.0f32).powf(-9.0 + 6.0 * (rng.uniform() * 0.5 + 0.5)) * rng.uniform().signum();
            block[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

/// Upload random blocks as a quantized weight; returns it with the values the GPU should see.
fn quant_weight(
    gpu: &Gpu,
    format: QuantFormat,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
) -> (Arc<GpuWeight>, Vec<f32>) {
    let bytes = random_blocks(format, rows, cols, rng);
    let w = GpuWeight::upload(
        gpu,
        format.name(),
        rows,
        cols,
        HostData::Quant(format, &bytes),
    )
    .unwrap_or_else(|e| panic!("upload {} [{rows}, {cols}]: {e}", format.name()));
    assert_eq!(w.dtype, DType::Quant(format));
    assert_eq!(w.bytes(), format.gpu_bytes(rows * cols) as u64);
    let values = quant::dequantize(format, &bytes);
    assert!(values.iter().all(|v| v.is_finite()));
    (w, values)
}

/// `gpu`, or a view of it whose binding limit splits a [_, cols] weight into chunks of
/// `split_rows` rows.
fn limited(
    gpu: &Arc<Gpu>,
    format: QuantFormat,
    cols: usize,
    split_rows: Option<usize>,
) -> Arc<Gpu> {
    match split_rows {
        Some(r) => gpu.with_max_binding((r * format.gpu_bytes(cols)) as u64),
        None => gpu.clone(),
    }
}

/// Row lengths K to test `format` with: two and three blocks; for the 32-value formats also
/// 576 (18 groups, a real hidden size: more groups than the 8 lanes of a row group), for the
/// K-quants also one superblock (4 pairs of groups: fewer than the lanes of a row group).
fn ks(format: QuantFormat) -> Vec<usize> {
    match format.block_elems() {
        32 => vec![64, 96, 576],
        b => vec![b, 2 * b, 3 * b],
    }
}

// ---------------------------------------------------------------- CPU reference vs gguf-py

#[test]
fn dequantize_matches_gguf_py() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quant");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let (rows, cols) = (
        meta["rows"].as_u64().unwrap() as usize,
        meta["cols"].as_u64().unwrap() as usize,
    );
    for format in quant::ALL {
        let name = format.name();
        let info = &meta["formats"][name];
        assert_eq!(info["block_values"], format.block_elems(), "{name}");
        assert_eq!(info["block_bytes"], format.block_bytes(), "{name}");
        let blocks = std::fs::read(dir.join(format!("{name}.blocks"))).unwrap();
        let expected: Vec<f32> =
            bytemuck::pod_collect_to_vec(&std::fs::read(dir.join(format!("{name}.f32"))).unwrap());
        assert_eq!(
            blocks.len(),
            format.file_bytes(rows * cols),
            "{name}: block bytes"
        );
        assert_eq!(expected.len(), rows * cols, "{name}: values");
        let got = quant::dequantize(format, &blocks);
        assert_equal(
            &format!("{name}: quant::dequantize vs gguf-py"),
            &got,
            &expected,
        );
        // The GPU layout holds the same blocks, each padded with zeros to whole words.
        let padded = quant::pad_blocks(format, &blocks);
        assert_eq!(
            padded.len(),
            format.gpu_bytes(rows * cols),
            "{name}: padded size"
        );
        for (i, (p, b)) in padded
            .chunks_exact(format.gpu_block_bytes())
            .zip(blocks.chunks_exact(format.block_bytes()))
            .enumerate()
        {
            assert_eq!(&p[..b.len()], b, "{name}: padded block {i}");
            assert!(
                p[b.len()..].iter().all(|&z| z == 0),
                "{name}: padding of block {i}"
            );
        }
    }
}

// ---------------------------------------------------------------- matvec

#[allow(clippy::too_many_arguments)]
fn matvec_case(
    gpu: &Arc<Gpu>,
    format: QuantFormat,
    n: usize,
    k: usize,
    bias: bool,
    split_rows: Option<usize>,
    layout: Option<Layout>,
    seed: u64,
) -> Vec<f32> {
    let gpu = &limited(gpu, format, k, split_rows);
    let mut rng = Rng::new(seed);
    let x = rng.vec(k, 1.0);
    let (w, w_ref) = quant_weight(gpu, format, n, k, &mut rng);
    let b = bias.then(|| rng.vec(n, 1.0));
    if split_rows.is_some() {
        assert!(
            w.chunks.len() > 2,
            "weight was not split: {} chunk(s)",
            w.chunks.len()
        );
    }
    let xb = upload_f32(gpu, &x);
    let bb = b.as_ref().map(|b| upload_f32(gpu, b));
    let y = poisoned(gpu, n);
    let layout = layout.unwrap_or_else(|| Layout::for_device(gpu));
    let d = matvec::launch_with(gpu, &xb, &w, bb.as_ref(), &y, layout).unwrap();
    run(gpu, &d);
    let out = read(gpu, &y, n);
    let reference = matvec::reference(&x, &w_ref, b.as_deref(), n, k);
    let what = format!(
        "matvec {} {n}x{k} bias={bias} chunks={} {layout:?} on {}",
        format.name(),
        w.chunks.len(),
        gpu.backend_name()
    );
    assert_close(&what, &out, &reference, SUM_TOL);
    out
}

#[test]
fn matvec_quantized_matches_reference() {
    let mut seed = 2000;
    for format in quant::ALL {
        for k in ks(format) {
            // 70 rows: one full workgroup of 64 and a ragged one; 37: one ragged row group.
            for (n, bias) in [(70, false), (37, true)] {
                seed += 1;
                let outs: Vec<_> = gpus()
                    .iter()
                    .map(|g| {
                        let out = matvec_case(g, format, n, k, bias, None, None, seed);
                        (g.backend_name(), out)
                    })
                    .collect();
                assert_backends_agree(
                    &format!("matvec {} {n}x{k}", format.name()),
                    &outs,
                    BACKEND_TOL,
                );
            }
        }
    }
}

#[test]
fn matvec_quantized_split_weights() {
    for gpu in gpus() {
        for (i, format) in quant::ALL.into_iter().enumerate() {
            // 70 rows in chunks of 17 (17, 17, 17, 17, 2): chunk edges inside row groups.
            let k = 2 * format.block_elems();
            matvec_case(
                &gpu,
                format,
                70,
                k,
                i % 2 == 0,
                Some(17),
                None,
                2100 + i as u64,
            );
        }
    }
}

/// Every matvec layout computes the same product: the GPU layout (which lavapipe's device
/// type never selects) and odd ones, for f32 (any K and K % 4 == 0), f16 (odd K, K % 8 == 0)
/// and a 32-value and a 256-value block format, with rows not a multiple of any layout's.
#[test]
fn matvec_layouts_match_reference() {
    let layouts = [
        Layout::CPU,
        Layout::GPU,
        Layout {
            lanes: 1,
            rows_per_lane: 1,
        },
        Layout {
            lanes: 64,
            rows_per_lane: 3,
        },
        Layout {
            lanes: 4,
            rows_per_lane: 4,
        },
    ];
    let mut seed = 2200;
    for gpu in gpus() {
        for layout in layouts {
            for format in [QuantFormat::Q5_1, QuantFormat::Q6_K] {
                seed += 1;
                let k = 3 * format.block_elems();
                matvec_case(&gpu, format, 70, k, true, None, Some(layout), seed);
            }
            for (k, f16) in [(129, false), (128, false), (129, true), (136, true)] {
                seed += 1;
                let mut rng = Rng::new(seed);
                let n = 70;
                let x = rng.vec(k, 1.0);
                let data = rng.vec(n * k, 1.0);
                let b = rng.vec(n, 1.0);
                let (w, w_ref) = if f16 {
                    let bits: Vec<u16> = data.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
                    let rounded = bits.iter().map(|&h| f16::from_bits(h).to_f32()).collect();
                    (
                        GpuWeight::upload(&gpu, "w16", n, k, HostData::F16(&bits)).unwrap(),
                        rounded,
                    )
                } else {
                    (
                        GpuWeight::upload(&gpu, "w32", n, k, HostData::F32(&data)).unwrap(),
                        data,
                    )
                };
                let (xb, bb, y) = (
                    upload_f32(&gpu, &x),
                    upload_f32(&gpu, &b),
                    poisoned(&gpu, n),
                );
                let d = matvec::launch_with(&gpu, &xb, &w, Some(&bb), &y, layout).unwrap();
                run(&gpu, &d);
                let reference = matvec::reference(&x, &w_ref, Some(&b), n, k);
                let what = format!(
                    "matvec {n}x{k} f16={f16} {layout:?} on {}",
                    gpu.backend_name()
                );
                assert_close(&what, &read(&gpu, &y, n), &reference, SUM_TOL);
            }
        }
        let bad = Layout {
            lanes: 8,
            rows_per_lane: 9,
        };
        let (w, _) = quant_weight(&gpu, QuantFormat::Q4_0, 4, 32, &mut Rng::new(1));
        let (x, y) = (upload_f32(&gpu, &[0.0; 32]), poisoned(&gpu, 4));
        assert!(matvec::launch_with(&gpu, &x, &w, None, &y, bad).is_err());
    }
}

// ---------------------------------------------------------------- matmul

#[allow(clippy::too_many_arguments)]
fn matmul_case(
    gpu: &Arc<Gpu>,
    format: QuantFormat,
    m: usize,
    n: usize,
    k: usize,
    bias: bool,
    split_rows: Option<usize>,
    seed: u64,
) -> Vec<f32> {
    let gpu = &limited(gpu, format, k, split_rows);
    let mut rng = Rng::new(seed);
    let x = rng.vec(m * k, 1.0);
    let (w, w_ref) = quant_weight(gpu, format, n, k, &mut rng);
    let b = bias.then(|| rng.vec(n, 1.0));
    if split_rows.is_some() {
        assert!(
            w.chunks.len() > 2,
            "weight was not split: {} chunk(s)",
            w.chunks.len()
        );
    }
    let xb = upload_f32(gpu, &x);
    let bb = b.as_ref().map(|b| upload_f32(gpu, b));
    let y = poisoned(gpu, m * n);
    let d = matmul::launch(gpu, &xb, &w, bb.as_ref(), &y, m).unwrap();
    run(gpu, &d);
    let out = read(gpu, &y, m * n);
    let reference = matmul::reference(&x, &w_ref, b.as_deref(), m, n, k);
    let what = format!(
        "matmul {} {m}x{n}x{k} bias={bias} chunks={} on {}",
        format.name(),
        w.chunks.len(),
        gpu.backend_name()
    );
    assert_close(&what, &out, &reference, SUM_TOL);
    out
}

#[test]
fn matmul_quantized_matches_reference() {
    let mut seed = 3000;
    for (i, format) in quant::ALL.into_iter().enumerate() {
        for k in ks(format) {
            // M and N not multiples of the 64x64 tile; M = 65 spills one row into a second tile.
            // Half the formats with a bias: each specialisation costs llvmpipe seconds to compile.
            let bias = i % 2 == 1;
            for (m, n) in [(37, 70), (65, 37)] {
                seed += 1;
                let outs: Vec<_> = gpus()
                    .iter()
                    .map(|g| {
                        (
                            g.backend_name(),
                            matmul_case(g, format, m, n, k, bias, None, seed),
                        )
                    })
                    .collect();
                assert_backends_agree(
                    &format!("matmul {} {m}x{n}x{k}", format.name()),
                    &outs,
                    BACKEND_TOL,
                );
            }
        }
    }
}

#[test]
fn matmul_quantized_split_weights() {
    for gpu in gpus() {
        for (i, format) in quant::ALL.into_iter().enumerate() {
            // 70 rows in chunks of 17: chunk edges inside the 64-wide tiles.
            let k = 2 * format.block_elems();
            matmul_case(
                &gpu,
                format,
                37,
                70,
                k,
                i % 2 == 1,
                Some(17),
                3100 + i as u64,
            );
        }
    }
}

// ---------------------------------------------------------------- embedding

fn embedding_case(
    gpu: &Arc<Gpu>,
    format: QuantFormat,
    vocab: usize,
    dim: usize,
    split_rows: Option<usize>,
    seed: u64,
) {
    let gpu = &limited(gpu, format, dim, split_rows);
    let mut rng = Rng::new(seed);
    let (table, table_ref) = quant_weight(gpu, format, vocab, dim, &mut rng);
    if split_rows.is_some() {
        assert!(
            table.chunks.len() > 2,
            "table was not split: {} chunk(s)",
            table.chunks.len()
        );
    }
    // The first and last ids, a repeat, and the first and last rows of chunks of 9 rows.
    let v = vocab as u32;
    let mut ids = vec![0, v - 1, 1, 17, 17, v / 2, v - 2, 8, 9, 18, 26, 27];
    ids.extend((0..5).map(|_| rng.below(v)));
    let idb = upload_u32(gpu, &ids);
    let out = poisoned(gpu, ids.len() * dim);
    let d = embedding::launch(gpu, &idb, &table, &out, ids.len()).unwrap();
    run(gpu, &d);
    let got = read(gpu, &out, ids.len() * dim);
    let reference = embedding::reference(&ids, &table_ref, dim);
    let what = format!(
        "embedding {} {vocab}x{dim} chunks={} on {}",
        format.name(),
        table.chunks.len(),
        gpu.backend_name()
    );
    assert_equal(&what, &got, &reference);
}

#[test]
fn embedding_quantized_matches_reference() {
    for gpu in gpus() {
        for (i, format) in quant::ALL.into_iter().enumerate() {
            let dim = 2 * format.block_elems();
            let seed = 4000 + 10 * i as u64;
            embedding_case(&gpu, format, 103, dim, None, seed);
            embedding_case(&gpu, format, 103, dim, Some(9), seed + 1);
        }
    }
}

// ---------------------------------------------------------------- errors

/// A weight of a dtype no kernel reads as a weight is an error, not a silent misread.
#[test]
fn u32_weight_is_an_error() {
    for gpu in gpus() {
        let w = GpuWeight {
            name: "ids".into(),
            rows: 4,
            cols: 4,
            experts: 1,
            dtype: DType::U32,
            chunks: vec![WeightChunk {
                buffer: gpu.storage_buffer("ids", 64),
                row_start: 0,
                rows: 4,
            }],
        };
        let x = upload_f32(&gpu, &[0.0; 16]);
        let y = poisoned(&gpu, 16);
        let e = matvec::launch(&gpu, &x, &w, None, &y).unwrap_err();
        assert!(e.to_string().contains("u32"), "{e}");
        assert!(matmul::launch(&gpu, &x, &w, None, &y, 4).is_err());
        let ids = upload_u32(&gpu, &[0]);
        assert!(embedding::launch(&gpu, &ids, &w, &y, 1).is_err());
    }
}

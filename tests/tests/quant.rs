//! Quantized weights (ggml block formats), kept quantized on the GPU and dequantized inside
//! matvec, matmul and the embedding gather.
//!
//! * `dequantize_matches_gguf_py` checks the CPU reference itself, `quant::dequantize`, against
//!   gguf-py (llama.cpp's Python package) on random blocks of every format
//!   (tests/fixtures/quant, made by tests/fixtures/quant/generate.py), with exact equality
//!   (every value equal as an f32, where -0 equals +0: each value is a scale times a small
//!   integer and at most one rounding after it; gguf-py computes (q - 8) * d where the
//!   reference computes q * d - 8d). CPU only.
//! * The GPU tests run the quantized cases of the runtime's table of kernel cases
//!   (`kestrel_runtime::cases`: every format, ragged sizes, split weights, outputs poisoned
//!   with NaN, tolerances justified there) on every backend, against "dequantize on the CPU,
//!   then the f32 reference", Vulkan and GL compared with each other.
//! * Weights and layouts the kernels must refuse.

use std::path::Path;

use kestrel_runtime::cases::{self, weights};
use kestrel_runtime::kernels::matvec::Layout;
use kestrel_runtime::kernels::{embedding, matmul, matvec};
use kestrel_runtime::quant::{self, QuantFormat};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::tensor::{ChunkData, DType, GpuWeight, WeightChunk};
use kestrel_tests::*;

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
        // The GPU layout holds the same bytes (the 32-value formats in tiles of fields apart,
        // the last tile filled with zero blocks; the K-quants padded to whole words) and gives
        // them back.
        let n_blocks = rows * cols / format.block_elems();
        let gpu = quant::to_gpu(format, &blocks);
        assert_eq!(gpu.len(), format.gpu_bytes(rows * cols), "{name}: GPU size");
        assert_eq!(
            quant::from_gpu(format, &gpu, n_blocks),
            blocks,
            "{name}: GPU layout round trip"
        );
        if format.tiled() {
            // Tiles are whole vec4s and open with their blocks' quants (the end of each file
            // block: 16 bytes, Q8_0's 32), so every block's quants are whole vec4s.
            assert_eq!(gpu.len() % 16, 0, "{name}: GPU bytes are whole vec4s");
            let b = format.block_bytes();
            let q = if format == QuantFormat::Q8_0 { 32 } else { 16 };
            assert_eq!(&gpu[..q], &blocks[b - q..b], "{name}: block 0's quants");
            assert_eq!(
                &gpu[q..2 * q],
                &blocks[2 * b - q..2 * b],
                "{name}: block 1's quants"
            );
        }
    }
}

// ---------------------------------------------------------------- the table's quantized cases

/// The family's cases that read quantized weights.
fn quantized(kernel: &str) -> Vec<cases::Case> {
    cases::family(kernel)
        .into_iter()
        .filter(|c| c.quantized)
        .collect()
}

#[test]
fn matvec_quantized_matches_reference() {
    check_cases(quantized("matvec"));
}

/// The int8 decode matvec (`--matvec-precision int8`): x's quantization and the integer
/// product, each against a CPU reference of the same arithmetic (runtime/src/cases/matvec_q8.rs).
#[test]
fn quantize_q8_matches_reference() {
    check_cases(cases::family("quantize_q8"));
}

#[test]
fn matvec_q8_matches_reference() {
    check_cases(cases::family("matvec_q8"));
}

#[test]
fn matmul_quantized_matches_reference() {
    check_cases(quantized("matmul"));
}

#[test]
fn embedding_quantized_matches_reference() {
    check_cases(quantized("embedding"));
}

/// A matvec layout outside what the kernel supports is an error: lanes not a power of two,
/// more than 32 rows per lane, or, summed by subgroup, more rows per lane than lanes.
#[test]
fn bad_matvec_layout_is_an_error() {
    let layout = |lanes, rows_per_lane, subgroup| Layout {
        lanes,
        rows_per_lane,
        subgroup,
    };
    for gpu in gpus() {
        let (w, _) = weights::random(
            &gpu,
            DType::Quant(QuantFormat::Q4_0),
            1,
            4,
            32,
            &mut Rng::new(1),
        )
        .unwrap();
        let (x, y) = (upload_f32(&gpu, &[0.0; 32]), poisoned(&gpu, 4));
        for bad in [
            layout(3, 1, false),
            layout(8, 33, false),
            layout(4, 8, true),
        ] {
            assert!(!bad.is_valid(), "{bad:?}");
            assert!(matvec::launch_with(&gpu, &x, &w, None, &y, bad).is_err());
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
                data: ChunkData::Buffer(gpu.storage_buffer("ids", 64)),
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

/// A matvec summed by subgroup runs only where every subgroup holds whole row groups: it is
/// refused without subgroups (llvmpipe GL) or with fewer subgroup lanes than row-group lanes
/// (8 lanes on SwiftShader's subgroups of 4), and the device's own layout is always one it
/// runs.
#[test]
fn subgroup_matvec_is_refused_where_subgroups_cannot_hold_its_lanes() {
    for gpu in gpus() {
        let (w, _) = weights::random(&gpu, DType::F32, 1, 4, 32, &mut Rng::new(1)).unwrap();
        let (x, y) = (upload_f32(&gpu, &[0.0; 32]), poisoned(&gpu, 4));
        for lanes in [4, 8, 32] {
            let layout = Layout {
                lanes,
                rows_per_lane: 2,
                subgroup: true,
            };
            let runs = matvec::runs(&gpu, layout);
            let caps = &gpu.caps;
            eprintln!(
                "{}: subgroups {} ({} to {}): {lanes} lanes by subgroup {}",
                gpu.describe(),
                caps.subgroups,
                caps.subgroup_min_size,
                caps.subgroup_max_size,
                if runs { "runs" } else { "refused" }
            );
            if !caps.subgroups || lanes > caps.subgroup_min_size {
                assert!(!runs);
            }
            let launched = matvec::launch_with(&gpu, &x, &w, None, &y, layout);
            assert_eq!(launched.is_ok(), runs, "{layout:?}");
        }
        for dtype in [
            DType::F32,
            DType::Quant(QuantFormat::Q4_1),
            DType::Quant(QuantFormat::Q4_K),
        ] {
            assert!(matvec::runs(&gpu, Layout::for_device(&gpu, dtype)));
        }
    }
}

//! Every kernel against its CPU reference, on fresh random inputs, on every backend of
//! `kestrel_tests::gpus()`; sizes are deliberately not multiples of tiles or workgroups, and
//! every output buffer starts as NaN so an unwritten element fails the comparison.
//! `shaders_validate_without_gpu` checks every WGSL file with naga on the CPU alone.
//!
//! Tolerances (relative error ||gpu - ref|| / ||ref||), none widened to make a test pass:
//! * `EXACT` (bitwise): copies, gathers, add and mul (one correctly rounded f32 op each).
//! * `SUM_TOL` = 1e-5: matmul, matvec, rms_norm, softmax, swiglu. The GPU sums up to about a
//!   thousand f32 terms in another order than the CPU's sequential f32 sum (tiles, tree
//!   reductions); for random data each side is off by about sqrt(K) * 2^-24 < 2e-6, so 1e-5
//!   has headroom, while any indexing or masking error gives errors of order 1.
//! * `ATTN_TOL` = 1e-5: attention against the f64 reference: f32 dot products of head_dim
//!   terms, f32 exp, and an online-softmax rescale per key; all O(1e-6).
//! * `ROPE_TOL` = 1e-5: the rotation angle is the same f32 product on both sides; only the
//!   GPU's sin/cos differ from Rust's, by a few ulp of the angle (|angle| <= ~130 here).
//! * f16 weights are rounded to f16 (the `half` crate) for the reference too, so they take
//!   the same tolerances as f32: the GPU widens f16 to f32 exactly.

use std::sync::Arc;

use kestrel_runtime::kernels::attention::{self, AttnBuffers, AttnShape, CacheView};
use kestrel_runtime::kernels::copy::{self, CopyParams};
use kestrel_runtime::kernels::elementwise::{self, Elementwise};
use kestrel_runtime::kernels::rope::{self, Llama3Scaling};
use kestrel_runtime::kernels::{
    conv1d, decode_attention, embedding, head_concat, head_dot, matmul, matvec, rms_norm, sample,
    softmax, Step,
};
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::rng::Rng;
use kestrel_runtime::shader::ShaderDefs;
use kestrel_runtime::tensor::{GpuWeight, HostData};
use kestrel_runtime::Gpu;
use kestrel_tests::*;

const SUM_TOL: f64 = 1e-5;
const ATTN_TOL: f64 = 1e-5;
const ROPE_TOL: f64 = 1e-5;
/// Vulkan and GL run the same WGSL; their outputs may differ only by f32 rounding.
const BACKEND_TOL: f64 = 1e-5;

/// Upload `data` [rows, cols] as an f32 or f16 weight; returns it with the values the GPU sees.
fn weight(
    gpu: &Gpu,
    rows: usize,
    cols: usize,
    data: &[f32],
    f16: bool,
) -> (Arc<GpuWeight>, Vec<f32>) {
    if f16 {
        let (bits, rounded) = to_f16(data);
        (
            GpuWeight::upload(gpu, "w16", rows, cols, HostData::F16(&bits)).unwrap(),
            rounded,
        )
    } else {
        (
            GpuWeight::upload(gpu, "w32", rows, cols, HostData::F32(data)).unwrap(),
            data.to_vec(),
        )
    }
}

/// `gpu`, or a view of it whose binding limit splits a weight of `rows` rows of
/// `row_bytes` into chunks of `split_rows` rows.
fn limited(gpu: &Arc<Gpu>, split_rows: Option<usize>, row_bytes: u64) -> Arc<Gpu> {
    match split_rows {
        Some(r) => gpu.with_max_binding(r as u64 * row_bytes),
        None => gpu.clone(),
    }
}

fn f16_row_bytes(cols: usize) -> u64 {
    (2 * cols as u64).next_multiple_of(4)
}

// ---------------------------------------------------------------- matmul / matvec

#[allow(clippy::too_many_arguments)]
fn matmul_case(
    gpu: &Arc<Gpu>,
    m: usize,
    n: usize,
    k: usize,
    f16: bool,
    bias: bool,
    split_rows: Option<usize>,
    seed: u64,
) -> Vec<f32> {
    let row_bytes = if f16 { f16_row_bytes(k) } else { 4 * k as u64 };
    let gpu = &limited(gpu, split_rows, row_bytes);
    let mut rng = Rng::new(seed);
    let x = rng.vec(m * k, 1.0);
    let (w, w_ref) = weight(gpu, n, k, &rng.vec(n * k, 1.0), f16);
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
        "matmul {m}x{n}x{k} f16={f16} bias={bias} chunks={} on {}",
        w.chunks.len(),
        gpu.backend_name()
    );
    assert_close(&what, &out, &reference, SUM_TOL);
    out
}

#[test]
fn matmul_matches_reference() {
    let mut seed = 100;
    for (m, n, k) in [(37, 70, 45), (65, 130, 64), (1, 67, 33), (130, 9, 200)] {
        for f16 in [false, true] {
            for bias in [false, true] {
                seed += 1;
                let outs: Vec<_> = gpus()
                    .iter()
                    .map(|g| {
                        (
                            g.backend_name(),
                            matmul_case(g, m, n, k, f16, bias, None, seed),
                        )
                    })
                    .collect();
                assert_backends_agree(&format!("matmul {m}x{n}x{k} f16={f16}"), &outs, BACKEND_TOL);
            }
        }
    }
}

#[test]
fn matmul_split_weights() {
    for gpu in gpus() {
        // 70 rows in chunks of 17 (17, 17, 17, 17, 2): chunk edges inside the 64-wide tiles.
        matmul_case(&gpu, 37, 70, 45, false, true, Some(17), 201);
        matmul_case(&gpu, 37, 70, 45, true, false, Some(17), 202);
        matmul_case(&gpu, 65, 130, 64, true, true, Some(50), 203);
    }
}

#[allow(clippy::too_many_arguments)]
fn matvec_case(
    gpu: &Arc<Gpu>,
    n: usize,
    k: usize,
    f16: bool,
    bias: bool,
    split_rows: Option<usize>,
    seed: u64,
) -> Vec<f32> {
    let row_bytes = if f16 { f16_row_bytes(k) } else { 4 * k as u64 };
    let gpu = &limited(gpu, split_rows, row_bytes);
    let mut rng = Rng::new(seed);
    let x = rng.vec(k, 1.0);
    let (w, w_ref) = weight(gpu, n, k, &rng.vec(n * k, 1.0), f16);
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
    let d = matvec::launch(gpu, &xb, &w, bb.as_ref(), &y).unwrap();
    run(gpu, &d);
    let out = read(gpu, &y, n);
    let reference = matvec::reference(&x, &w_ref, b.as_deref(), n, k);
    let what = format!(
        "matvec {n}x{k} f16={f16} bias={bias} chunks={} on {}",
        w.chunks.len(),
        gpu.backend_name()
    );
    assert_close(&what, &out, &reference, SUM_TOL);
    out
}

#[test]
fn matvec_matches_reference() {
    let mut seed = 300;
    // Odd K (the f16 path reading halves across words), even K (two halves per word), long K.
    for (n, k) in [(300, 129), (300, 128), (77, 1000), (5, 3)] {
        for f16 in [false, true] {
            for bias in [false, true] {
                seed += 1;
                let outs: Vec<_> = gpus()
                    .iter()
                    .map(|g| {
                        (
                            g.backend_name(),
                            matvec_case(g, n, k, f16, bias, None, seed),
                        )
                    })
                    .collect();
                assert_backends_agree(&format!("matvec {n}x{k} f16={f16}"), &outs, BACKEND_TOL);
            }
        }
    }
}

#[test]
fn matvec_split_weights() {
    for gpu in gpus() {
        matvec_case(&gpu, 300, 129, true, true, Some(37), 401); // odd K, f16: chunks kept even
        matvec_case(&gpu, 300, 128, true, false, Some(37), 402);
        matvec_case(&gpu, 300, 129, false, true, Some(37), 403);
    }
}

// ---------------------------------------------------------------- embedding

fn embedding_case(
    gpu: &Arc<Gpu>,
    vocab: usize,
    dim: usize,
    f16: bool,
    split_rows: Option<usize>,
    seed: u64,
) {
    let row_bytes = if f16 {
        f16_row_bytes(dim)
    } else {
        4 * dim as u64
    };
    let gpu = &limited(gpu, split_rows, row_bytes);
    let mut rng = Rng::new(seed);
    let (table, table_ref) = weight(gpu, vocab, dim, &rng.vec(vocab * dim, 1.0), f16);
    if split_rows.is_some() {
        assert!(
            table.chunks.len() > 2,
            "table was not split: {} chunk(s)",
            table.chunks.len()
        );
    }
    // The first and last ids, a repeat, and the first and last rows of chunks of 8 and 9 rows.
    let v = vocab as u32;
    let mut ids = vec![0, v - 1, 1, 17, 17, v / 2, v - 2, 8, 9, 16, 18, 26, 27];
    ids.extend((0..6).map(|_| rng.below(vocab as u32)));
    let idb = upload_u32(gpu, &ids);
    let out = poisoned(gpu, ids.len() * dim);
    let d = embedding::launch(gpu, &idb, &table, &out, ids.len()).unwrap();
    run(gpu, &d);
    let got = read(gpu, &out, ids.len() * dim);
    let reference = embedding::reference(&ids, &table_ref, dim);
    let what = format!(
        "embedding {vocab}x{dim} f16={f16} chunks={} on {}",
        table.chunks.len(),
        gpu.backend_name()
    );
    assert_same_bits(&what, &got, &reference);
}

#[test]
fn embedding_matches_reference() {
    for gpu in gpus() {
        let mut seed = 500;
        for (vocab, dim) in [(103, 45), (103, 64), (1000, 7)] {
            for f16 in [false, true] {
                seed += 1;
                embedding_case(&gpu, vocab, dim, f16, None, seed);
                // Odd dims with f16 need chunks with an even number of rows.
                embedding_case(&gpu, vocab, dim, f16, Some(9), seed + 50);
            }
        }
    }
}

// ---------------------------------------------------------------- elementwise, norms, softmax

#[test]
fn elementwise_matches_reference() {
    for gpu in gpus() {
        let mut seed = 600;
        // (rows, width, b a row vector)
        for (rows, width, row_vector) in [
            (10, 100, false),
            (3, 100, false),
            (1, 1, false),
            (7, 37, true),
            (1, 5, true),
        ] {
            let n = rows * width;
            for op in Elementwise::ALL {
                seed += 1;
                let mut rng = Rng::new(seed);
                // Wide enough for softplus's linear branch (a + b > 20) and relu's zero side.
                let a = rng.vec(n, 24.0);
                let b = rng.vec(if row_vector { width } else { n }, 2.0);
                let (ab, bb, out) = (
                    upload_f32(&gpu, &a),
                    upload_f32(&gpu, &b),
                    poisoned(&gpu, n),
                );
                run(
                    &gpu,
                    &[elementwise::launch(&gpu, op, &ab, &bb, &out, n, b.len()).unwrap()],
                );
                let got = read(&gpu, &out, n);
                let reference = elementwise::reference(op, &a, &b);
                let what = format!(
                    "{op:?} {rows}x{width} (b {}) on {}",
                    b.len(),
                    gpu.backend_name()
                );
                match op {
                    // One correctly rounded f32 op each.
                    Elementwise::Add
                    | Elementwise::Mul
                    | Elementwise::Sub
                    | Elementwise::ReluSquare => assert_same_bits(&what, &got, &reference),
                    // exp / log differ between the GPU and Rust by a few ulp.
                    _ => assert_close(&what, &got, &reference, SUM_TOL),
                }
            }
        }
    }
}

#[test]
fn rms_norm_matches_reference() {
    for gpu in gpus() {
        let mut seed = 700;
        // (rows, dim per group, groups, eps, layer norm with bias)
        for (rows, dim, groups, eps, layer) in [
            (3, 64, 1, 1e-5, false),
            (5, 1000, 1, 1e-6, false),
            (1, 37, 1, 1e-5, false),
            (2, 2049, 1, 1e-5, false),
            (3, 24, 4, 1e-5, false),
            (2, 37, 3, 1e-6, false),
            (3, 64, 1, 1e-5, true),
            (2, 1000, 1, 1e-5, true),
            (4, 16, 4, 64e-5, true),
        ] {
            seed += 1;
            let mut rng = Rng::new(seed);
            let width = dim * groups;
            // An offset, so LayerNorm's mean matters.
            let x: Vec<f32> = rng.vec(rows * width, 3.0).iter().map(|v| v + 1.5).collect();
            let w = rng.vec(width, 1.5);
            let b = rng.vec(width, 1.0);
            let (xb, wb, bb, out) = (
                upload_f32(&gpu, &x),
                upload_f32(&gpu, &w),
                upload_f32(&gpu, &b),
                poisoned(&gpu, rows * width),
            );
            let kind = rms_norm::NormKind {
                centered: layer,
                bias: layer.then_some(&bb),
            };
            let d = rms_norm::launch_norm(&gpu, &xb, &wb, &out, rows, dim, eps, groups, kind);
            run(&gpu, &[d.unwrap()]);
            let got = read(&gpu, &out, rows * width);
            let bias = layer.then_some(b.as_slice());
            let reference = rms_norm::reference_norm(&x, &w, bias, dim, eps, groups, layer);
            let kind = if layer { "layer_norm" } else { "rms_norm" };
            assert_close(
                &format!("{kind} {rows}x{groups}x{dim} on {}", gpu.backend_name()),
                &got,
                &reference,
                SUM_TOL,
            );
        }
    }
}

#[test]
fn conv1d_matches_reference_and_carries_its_state() {
    for gpu in gpus() {
        let mut seed = 750;
        // (tokens, channels, kernel, silu, bias)
        for (tokens, channels, kernel, silu, bias) in [
            (29, 70, 4, true, true),
            (1, 70, 4, true, true),
            (5, 3, 2, false, false),
            (9000, 2, 4, false, true),
        ] {
            seed += 1;
            let mut rng = Rng::new(seed);
            let x = rng.vec(tokens * channels, 2.0);
            let w = rng.vec(channels * kernel, 1.0);
            let b = rng.vec(channels, 1.0);
            let mut state = rng.vec((kernel - 1) * channels, 1.0);
            let (xb, wb, bb, sb, out) = (
                upload_f32(&gpu, &x),
                upload_f32(&gpu, &w),
                upload_f32(&gpu, &b),
                upload_f32(&gpu, &state),
                poisoned(&gpu, tokens * channels),
            );
            let bias_buf = bias.then_some(&bb);
            let d = conv1d::launch(
                &gpu, &xb, &wb, bias_buf, &sb, &out, tokens, channels, kernel, silu,
            );
            run(&gpu, &d.unwrap());
            let got = read(&gpu, &out, tokens * channels);
            let got_state = read(&gpu, &sb, state.len());
            let bias_ref = bias.then_some(b.as_slice());
            let reference = conv1d::reference(&x, &w, bias_ref, &mut state, channels, kernel, silu);
            let what = format!(
                "conv1d T={tokens} C={channels} K={kernel} on {}",
                gpu.backend_name()
            );
            assert_close(&what, &got, &reference, SUM_TOL);
            assert_same_bits(&format!("{what} state"), &got_state, &state);
        }
    }
}

#[test]
fn head_concat_and_head_dot_match_reference() {
    for gpu in gpus() {
        let b = gpu.backend_name();
        // (rows, heads, da / dk, db / dv)
        for (i, (rows, heads, d1, d2)) in [(7, 3, 5, 9), (1, 4, 16, 16), (300, 2, 64, 33)]
            .into_iter()
            .enumerate()
        {
            let mut rng = Rng::new(700 + i as u64);
            let x = rng.vec(rows * heads * d1, 1.0);
            let y = rng.vec(rows * heads * d2, 1.0);
            let (xb, yb) = (upload_f32(&gpu, &x), upload_f32(&gpu, &y));
            let n = rows * heads * (d1 + d2);
            let out = poisoned(&gpu, n);
            let d = head_concat::launch(&gpu, &xb, &yb, &out, rows, heads, d1, d2).unwrap();
            run(&gpu, &[d]);
            let want = head_concat::reference(&x, &y, heads, d1, d2);
            assert_same_bits(
                &format!("head_concat {rows}x{heads}x({d1}+{d2}) on {b}"),
                &read(&gpu, &out, n),
                &want,
            );
            // head_dot: a, b [rows, heads, d1], v = y [rows, heads, d2].
            let a2 = rng.vec(rows * heads * d1, 1.0);
            let a2b = upload_f32(&gpu, &a2);
            let n = rows * heads * d2;
            let out = poisoned(&gpu, n);
            let d = head_dot::launch(&gpu, &xb, &a2b, &yb, &out, rows, heads, d1, d2).unwrap();
            run(&gpu, &[d]);
            let want = head_dot::reference(&x, &a2, &y, d1, d2);
            assert_close(
                &format!("head_dot {rows}x{heads}x{d1}->{d2} on {b}"),
                &read(&gpu, &out, n),
                &want,
                SUM_TOL,
            );
        }
    }
}

#[test]
fn softmax_matches_reference() {
    for gpu in gpus() {
        let mut seed = 800;
        for (rows, dim) in [(4, 1000), (2, 37), (1, 4099), (3, 1)] {
            seed += 1;
            let mut rng = Rng::new(seed);
            let x = rng.vec(rows * dim, 8.0);
            let (xb, out) = (upload_f32(&gpu, &x), poisoned(&gpu, rows * dim));
            run(
                &gpu,
                &[softmax::launch(&gpu, &xb, &out, rows, dim).unwrap()],
            );
            let got = read(&gpu, &out, rows * dim);
            let reference = softmax::reference(&x, dim);
            assert_close(
                &format!("softmax {rows}x{dim} on {}", gpu.backend_name()),
                &got,
                &reference,
                SUM_TOL,
            );
        }
    }
}

// ---------------------------------------------------------------- rope, copy

#[test]
fn rope_matches_reference() {
    let llama3 = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    };
    // (heads, head_dim, rot_dims, theta, scaling, pos, tokens)
    let cases = [
        (3, 64, 64, 10000.0, None, 0, 7),
        (3, 64, 64, 10000.0, None, 37, 7),
        (2, 64, 32, 10000.0, None, 11, 5), // partial rotary: dims 32..64 untouched
        (4, 128, 128, 500000.0, Some(llama3), 100, 5),
        (4, 128, 128, 500000.0, Some(llama3), 0, 29),
        (1, 16, 16, 10000.0, None, 3, 1),
    ];
    for gpu in gpus() {
        for (i, &(heads, hd, rot, theta, scaling, pos, t)) in cases.iter().enumerate() {
            let mut rng = Rng::new(900 + i as u64);
            let x = rng.vec(t * heads * hd, 2.0);
            let freqs = rope::inv_freq(theta, rot, scaling);
            let (xb, fb) = (upload_f32(&gpu, &x), upload_f32(&gpu, &freqs));
            let sb = step_buffer(&gpu, &step(pos, t as u32));
            run(
                &gpu,
                &[rope::launch(&gpu, &sb, &xb, &fb, t, heads, hd, rot).unwrap()],
            );
            let got = read(&gpu, &xb, x.len());
            let reference = rope::reference(&x, &freqs, pos as usize, heads, hd);
            let what = format!(
                "rope heads={heads} hd={hd} rot={rot} pos={pos} T={t} on {}",
                gpu.backend_name()
            );
            assert_close(&what, &got, &reference, ROPE_TOL);
        }
    }
}

#[test]
fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
    let s = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    };
    let plain = rope::inv_freq(500000.0, 128, None);
    let scaled = rope::inv_freq(500000.0, 128, Some(s));
    let mut regimes = [0; 3];
    for (&p, &q) in plain.iter().zip(&scaled) {
        let wavelen = 2.0 * std::f32::consts::PI / p;
        if wavelen < 8192.0 / 4.0 {
            assert_eq!(p, q);
            regimes[0] += 1;
        } else if wavelen > 8192.0 {
            assert_eq!(p / 8.0, q);
            regimes[2] += 1;
        } else {
            assert!(
                q < p && q > p / 8.0,
                "smoothed frequency {q} outside ({}, {p})",
                p / 8.0
            );
            regimes[1] += 1;
        }
    }
    assert!(
        regimes.iter().all(|&c| c > 0),
        "all three regimes exercised: {regimes:?}"
    );
}

#[test]
fn copy_matches_reference() {
    for gpu in gpus() {
        // Append 300 values at row pos of a cache with rows of 300, from an offset source;
        // take the last row of a [4, 37] sequence (stride 0).
        let cases = [
            (
                CopyParams {
                    n: 300,
                    src_offset: 7,
                    dst_offset: 5,
                    dst_pos_stride: 300,
                },
                3,
                320,
                5 + 300 * 5,
            ),
            (
                CopyParams {
                    n: 37,
                    src_offset: 3 * 37,
                    dst_offset: 0,
                    dst_pos_stride: 0,
                },
                9,
                4 * 37,
                37,
            ),
            (
                CopyParams {
                    n: 600,
                    src_offset: 0,
                    dst_offset: 0,
                    dst_pos_stride: 300,
                },
                2,
                600,
                300 * 6,
            ),
        ];
        for (i, &(p, pos, src_len, dst_len)) in cases.iter().enumerate() {
            let mut rng = Rng::new(1000 + i as u64);
            let src = rng.vec(src_len, 1.0);
            let (sb, db) = (upload_f32(&gpu, &src), poisoned(&gpu, dst_len));
            let stb = step_buffer(&gpu, &step(pos, 1));
            run(&gpu, &[copy::launch(&gpu, &stb, &sb, &db, p).unwrap()]);
            let got = read(&gpu, &db, dst_len);
            let mut reference = vec![f32::NAN; dst_len];
            copy::reference(&src, &mut reference, p, pos);
            assert_same_bits(
                &format!("copy {p:?} pos={pos} on {}", gpu.backend_name()),
                &got,
                &reference,
            );
        }
    }
}

// ---------------------------------------------------------------- attention

/// A KV cache [capacity, kv_heads * hd]: random rows up to `len`, NaN after (a kernel that
/// reads past the live length produces NaN).
fn kv_cache(rng: &mut Rng, len: usize, capacity: usize, width: usize) -> Vec<f32> {
    let mut c = rng.vec(len * width, 1.0);
    c.resize(capacity * width, f32::NAN);
    c
}

#[allow(clippy::too_many_arguments)]
fn attention_case(
    gpu: &Arc<Gpu>,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    t: usize,
    pos: usize,
    causal: bool,
    seed: u64,
) -> Vec<f32> {
    let shape = AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let mut rng = Rng::new(seed);
    // Causal queries must ignore rows past the sequence (NaN); bidirectional ones see every
    // row of the cache, so there it ends with the sequence.
    let spare = if causal { 3 } else { 0 };
    let (len, capacity, kvw) = (pos + t, pos + t + spare, kv_heads * hd);
    // Queries scaled up so the softmax is peaked and the online rescaling matters.
    let q = rng.vec(t * heads * hd, 3.0);
    let k = kv_cache(&mut rng, len, capacity, kvw);
    let v = kv_cache(&mut rng, len, capacity, kvw);
    let (qb, kb, vb) = (
        upload_f32(gpu, &q),
        upload_f32(gpu, &k),
        upload_f32(gpu, &v),
    );
    let out = poisoned(gpu, q.len());
    let sb = step_buffer(gpu, &step(pos as u32, t as u32));
    let io = AttnBuffers {
        q: &qb,
        k_cache: &kb,
        v_cache: &vb,
        out: &out,
        inv_freq: None,
        mask: None,
    };
    let layout = KvLayout::linear(capacity);
    run(
        gpu,
        &[attention::launch(gpu, &sb, &io, shape, layout, t, causal).unwrap()],
    );
    let got = read(gpu, &out, q.len());
    let cache = CacheView {
        k: &k,
        v: &v,
        layout,
    };
    let reference = attention::reference(&q, cache, shape, pos, causal, None, None);
    // The row-wise path (CPU adapters' prefill) must give the same, causal or not.
    let partial = poisoned(gpu, decode_attention::partial_floats(&shape, 1, t));
    let rowwise = poisoned(gpu, q.len());
    let io = AttnBuffers {
        out: &rowwise,
        ..io
    };
    let d = decode_attention::launch(gpu, &sb, &io, &partial, shape, layout, 1, t, causal).unwrap();
    run(gpu, &d);
    assert_close(
        &format!("row-wise attention T={t} pos={pos} causal={causal}"),
        &read(gpu, &rowwise, q.len()),
        &reference,
        ATTN_TOL,
    );
    let what = format!(
        "attention heads={heads}/{kv_heads} hd={hd} T={t} pos={pos} causal={causal} on {}",
        gpu.backend_name()
    );
    assert_close(&what, &got, &reference, ATTN_TOL);
    got
}

#[test]
fn attention_matches_reference() {
    // (heads, kv_heads, head_dim, T, pos, causal)
    let cases = [
        (4, 2, 16, 29, 0, true),
        (4, 2, 16, 29, 40, true),
        (4, 1, 64, 29, 0, true),
        (4, 1, 64, 29, 45, true),
        (4, 2, 64, 70, 13, true), // two query blocks of 64
        (2, 2, 128, 29, 20, true),
        (3, 3, 16, 1, 9, true), // one query (prefill of a single token)
        (4, 2, 16, 29, 0, false),
        (4, 1, 64, 70, 0, false),
        (4, 2, 64, 29, 10, false),
    ];
    for (i, &(h, kvh, hd, t, pos, causal)) in cases.iter().enumerate() {
        let outs: Vec<_> = gpus()
            .iter()
            .map(|g| {
                (
                    g.backend_name(),
                    attention_case(g, h, kvh, hd, t, pos, causal, 1100 + i as u64),
                )
            })
            .collect();
        assert_backends_agree(&format!("attention case {i}"), &outs, BACKEND_TOL);
    }
}

fn decode_attention_case(
    gpu: &Arc<Gpu>,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    len: usize,
    seed: u64,
) -> Vec<f32> {
    let shape = AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let mut rng = Rng::new(seed);
    let (capacity, kvw) = (len + 5, kv_heads * hd);
    let q = rng.vec(heads * hd, 3.0);
    let k = kv_cache(&mut rng, len, capacity, kvw);
    let v = kv_cache(&mut rng, len, capacity, kvw);
    let (qb, kb, vb) = (
        upload_f32(gpu, &q),
        upload_f32(gpu, &k),
        upload_f32(gpu, &v),
    );
    let layout = KvLayout::linear(capacity);
    let splits = decode_attention::max_splits_for(capacity);
    let partial = poisoned(gpu, decode_attention::partial_floats(&shape, splits, 1));
    let out = poisoned(gpu, q.len());
    let sb = step_buffer(gpu, &step(len as u32 - 1, 1));
    let io = AttnBuffers {
        q: &qb,
        k_cache: &kb,
        v_cache: &vb,
        out: &out,
        inv_freq: None,
        mask: None,
    };
    let d =
        decode_attention::launch(gpu, &sb, &io, &partial, shape, layout, splits, 1, true).unwrap();
    run(gpu, &d);
    let got = read(gpu, &out, q.len());
    let cache = CacheView {
        k: &k,
        v: &v,
        layout,
    };
    let reference = decode_attention::reference(&q, cache, shape, len - 1, true, None, None);
    let what = format!(
        "decode attention heads={heads}/{kv_heads} hd={hd} len={len} on {}",
        gpu.backend_name()
    );
    assert_close(&what, &got, &reference, ATTN_TOL);
    got
}

#[test]
fn decode_attention_matches_reference() {
    let mut seed = 1200;
    for len in [1, 37, 300] {
        for (h, kvh, hd) in [(4, 2, 16), (4, 1, 64), (2, 2, 128), (6, 3, 64)] {
            seed += 1;
            let outs: Vec<_> = gpus()
                .iter()
                .map(|g| {
                    (
                        g.backend_name(),
                        decode_attention_case(g, h, kvh, hd, len, seed),
                    )
                })
                .collect();
            assert_backends_agree(
                &format!("decode attention len={len} heads={h}/{kvh} hd={hd}"),
                &outs,
                BACKEND_TOL,
            );
        }
    }
}

// ---------------------------------------------------------------- sampling

/// Sample once per step from row `row` of `rows` rows of logits; one submission for all steps.
fn sample_all(
    gpu: &Arc<Gpu>,
    logits: &[f32],
    vocab: usize,
    row: usize,
    steps: &[Step],
) -> Vec<u32> {
    let lb = upload_f32(gpu, logits);
    let outs: Vec<_> = steps.iter().map(|_| upload_u32(gpu, &[u32::MAX])).collect();
    let step_bufs: Vec<_> = steps.iter().map(|s| step_buffer(gpu, s)).collect();
    let d: Vec<_> = step_bufs
        .iter()
        .zip(&outs)
        .map(|(sb, ob)| sample::launch(gpu, sb, &lb, ob, vocab, row * vocab).unwrap())
        .collect();
    run(gpu, &d);
    outs.iter().map(|o| read_u32(gpu, o, 1)[0]).collect()
}

#[test]
fn sample_greedy_is_argmax_with_ties_to_lowest() {
    // Tied maxima placed in the same lane (44, 300), neighbouring lanes, the first and the last id.
    let ties: [(usize, &[usize]); 7] = [
        (1000, &[700, 5, 999]),
        (1000, &[513, 258]),
        (1000, &[300, 44]),
        (1000, &[999]),
        (1000, &[1, 0]),
        (49152, &[49151, 30000, 256]),
        (49152, &[40000, 39999]),
    ];
    for gpu in gpus() {
        for (i, &(vocab, at)) in ties.iter().enumerate() {
            let mut rng = Rng::new(1300 + i as u64);
            let mut logits = rng.vec(3 * vocab, 4.0);
            for &j in at {
                logits[2 * vocab + j] = 9.5;
            }
            let expect = *at.iter().min().unwrap() as u32;
            assert_eq!(sample::argmax(&logits[2 * vocab..]), expect);
            let greedy = Step {
                temperature: 0.0,
                ..step(0, 1)
            };
            let top1 = Step {
                temperature: 0.8,
                top_k: 1,
                seed: 5,
                ..step(0, 1)
            };
            let got = sample_all(&gpu, &logits, vocab, 2, &[greedy, top1]);
            assert_eq!(
                got,
                [expect, expect],
                "vocab {vocab} ties {at:?} on {}",
                gpu.backend_name()
            );
        }
        // All logits equal: the first id.
        let got = sample_all(&gpu, &vec![0.25; 1000], 1000, 0, &[step(0, 1)]);
        assert_eq!(got, [0], "all-equal logits on {}", gpu.backend_name());
    }
}

#[test]
fn sample_temperature_top_k_top_p_matches_reference() {
    const SEEDS: u32 = 20;
    for gpu in gpus() {
        for (vi, vocab) in [1000usize, 49152].into_iter().enumerate() {
            let mut rng = Rng::new(1400 + vi as u64);
            let logits = rng.vec(2 * vocab, 4.0);
            let row = &logits[vocab..];
            for (top_k, top_p) in [(0, 1.0), (20, 1.0), (0, 0.9), (20, 0.9)] {
                let steps: Vec<Step> = (0..SEEDS)
                    .map(|s| Step {
                        temperature: 0.8,
                        top_k,
                        top_p,
                        seed: s.wrapping_mul(2_654_435_761).wrapping_add(vi as u32),
                        ..step(0, 1)
                    })
                    .collect();
                let got = sample_all(&gpu, &logits, vocab, 1, &steps);
                let mut exact = 0;
                for (s, &tok) in steps.iter().zip(&got) {
                    let cands = sample::reference(row, s);
                    let what = format!(
                        "sample vocab={vocab} top_k={top_k} top_p={top_p} seed={} on {}: token {tok}, reference pick {}, {} candidates",
                        s.seed,
                        gpu.backend_name(),
                        cands.pick(),
                        cands.kept.len()
                    );
                    assert!(cands.accepts(tok, 1e-4), "{what}: not an acceptable draw");
                    exact += (tok == cands.pick()) as u32;
                }
                assert!(
                    exact >= SEEDS - 2,
                    "vocab={vocab} top_k={top_k} top_p={top_p} on {}: only {exact}/{SEEDS} draws equal the exact pick",
                    gpu.backend_name()
                );
            }
        }
    }
}

// ---------------------------------------------------------------- shaders on the CPU

/// The specialisations each shader is compiled with by its launcher (and a few more head dims).
fn specialisations(name: &str) -> Vec<ShaderDefs> {
    // As kernels::weight_defs: f32, f16, and every ggml block format.
    let weight_kinds = || {
        let plain = [false, true].map(|f16| {
            ShaderDefs::new()
                .bool("W_F16", f16)
                .u32("QFORMAT", 0)
                .u32("QK", 32)
                .u32("QWORDS", 1)
        });
        let quant = kestrel_runtime::quant::ALL.map(|q| {
            ShaderDefs::new()
                .bool("W_F16", false)
                .u32("QFORMAT", q.shader_id())
                .u32("QK", q.block_elems() as u32)
                .u32("QWORDS", (q.gpu_block_bytes() / 4) as u32)
        });
        plain.into_iter().chain(quant).collect::<Vec<_>>()
    };
    let with_bias = |defs: Vec<ShaderDefs>| {
        defs.into_iter()
            .flat_map(|d| [false, true].map(|bias| d.clone().bool("HAS_BIAS", bias)))
            .collect::<Vec<_>>()
    };
    match name {
        "common" | "quant" | "linear_recurrence" => vec![], // included by the kernels below
        "linear_scan_local" => linear_scan_kinds(),
        "conv1d" => [2u32, 4, 7]
            .into_iter()
            .flat_map(|k| {
                [(false, false), (true, true), (true, false)].map(|(silu, bias)| {
                    ShaderDefs::new()
                        .u32("K", k)
                        .bool("SILU", silu)
                        .bool("BIAS", bias)
                })
            })
            .collect(),
        "linear_scan" => linear_scan_kinds()
            .into_iter()
            .flat_map(|d| [false, true].map(|w| d.clone().bool("WRITE_STATE", w)))
            .collect(),
        "linear_scan_carry" => [1u32, 16, 64, 100, 256]
            .into_iter()
            .flat_map(|dk| {
                [false, true].map(|delta| ShaderDefs::new().u32("DK", dk).bool("DELTA", delta))
            })
            .collect(),
        "elementwise" => (0..12).map(|op| ShaderDefs::new().u32("OP", op)).collect(),
        "embedding" => weight_kinds(),
        // Plain, and grouped over experts (no bias) with or without gathering token rows.
        "matmul" => with_bias(weight_kinds())
            .into_iter()
            .map(|d| d.bool("GROUPED", false).bool("GATHER", false))
            .chain(weight_kinds().into_iter().flat_map(|d| {
                [false, true].map(|gather| {
                    d.clone()
                        .bool("HAS_BIAS", false)
                        .bool("GROUPED", true)
                        .bool("GATHER", gather)
                })
            }))
            .collect(),
        // As matvec::launch: VEC4 or not, in the CPU and the GPU layout.
        "matvec" => with_bias(weight_kinds())
            .into_iter()
            .flat_map(|d| [false, true].map(|vec4| d.clone().bool("VEC4", vec4)))
            .flat_map(|d| {
                [matvec::Layout::CPU, matvec::Layout::GPU].map(|l| {
                    d.clone()
                        .u32("LANES", l.lanes)
                        .u32("ROWS_PER_LANE", l.rows_per_lane)
                })
            })
            // As matvec::launch_grouped: experts' rows, gathered at their tokens or not.
            .flat_map(|d| {
                [(false, false), (true, false), (true, true)].map(|(grouped, gather)| {
                    d.clone().bool("GROUPED", grouped).bool("GATHER", gather)
                })
            })
            .collect(),
        "moe_route" => [false, true]
            .map(|r| ShaderDefs::new().bool("RENORMALIZE", r))
            .to_vec(),
        "moe_combine" => [false, true]
            .map(|s| ShaderDefs::new().bool("SHARED", s))
            .to_vec(),
        "attention" => [16u32, 32, 64, 80, 96, 128, 256]
            .into_iter()
            .flat_map(|hd| {
                // As attention::launch: BQ 64, BK keys per tile within 16 KiB of K/V tiles;
                // dense, in-attention RoPE (sinks) or block-sparse.
                [(false, 1, false), (true, hd, false), (false, 1, true)].map(
                    |(rope, sink_dim, sparse)| {
                        ShaderDefs::new()
                            .u32("HEAD_DIM", hd)
                            .u32("BQ", 64)
                            .u32("BK", attention::keys_per_tile(hd as usize))
                            .bool("ROPE", rope)
                            .u32("SINK_DIM", sink_dim)
                            .bool("SPARSE", sparse)
                    },
                )
            })
            .collect(),
        "decode_attention" => [16u32, 32, 64, 80, 128, 256]
            .into_iter()
            .flat_map(|hd| {
                [(false, false), (true, false), (false, true)].map(|(rope, sparse)| {
                    ShaderDefs::new()
                        .u32("HEAD_DIM", hd)
                        .bool("ROPE", rope)
                        .bool("SPARSE", sparse)
                })
            })
            .collect(),
        "decode_attention_merge" => [16u32, 32, 64, 80, 128, 256]
            .map(|hd| ShaderDefs::new().u32("HEAD_DIM", hd))
            .to_vec(),
        "rms_norm" => [(false, false), (true, true), (true, false)]
            .map(|(c, b)| ShaderDefs::new().bool("CENTERED", c).bool("BIAS", b))
            .to_vec(),
        "rope" | "copy" | "cache_write" | "softmax" | "sample" | "head_concat" | "head_dot"
        | "moe_permute" => vec![ShaderDefs::new()],
        "wkv4_state" => vec![], // included by the wkv4 kernels
        "wkv4" => [false, true]
            .map(|w| ShaderDefs::new().bool("WRITE_STATE", w))
            .to_vec(),
        "wkv4_local" | "wkv4_carry" => vec![ShaderDefs::new()],
        "unmask" => [false, true]
            .map(|select| ShaderDefs::new().bool("SELECT", select))
            .to_vec(),
        other => {
            panic!("shaders/{other}.wgsl has no specialisations listed in tests/tests/kernels.rs")
        }
    }
}

/// The linear recurrence's kinds (as linear_scan::ScanShape::defs) at a few key dims.
fn linear_scan_kinds() -> Vec<ShaderDefs> {
    let mut kinds = Vec::new();
    for dk in [1u32, 16, 64, 256] {
        for decay in 0..3u32 {
            for (delta, bonus) in [(false, false), (true, false), (false, true)] {
                kinds.push(
                    ShaderDefs::new()
                        .u32("DK", dk)
                        .u32("DECAY", decay)
                        .bool("DELTA", delta)
                        .bool("BONUS", bonus),
                );
            }
        }
    }
    kinds
}

/// Parse, validate, and translate to SPIR-V and GLSL ES 3.10 (the GL backend's language)
/// every specialisation of every shader; also check WebGPU's default limits: at most 8 storage
/// buffers per stage, 16 KiB of workgroup memory and 256 invocations per workgroup.
#[test]
fn shaders_validate_without_gpu() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    let mut checked = 0;
    for path in files {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let source = std::fs::read_to_string(&path).unwrap();
        for defs in specialisations(&name) {
            let what = format!("shaders/{name}.wgsl with {}", defs.key());
            for shader_f16 in [false, true] {
                let code = defs.render(&source, shader_f16);
                check_shader(&what, &code);
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} specialisations checked");
}

fn check_shader(what: &str, code: &str) {
    use naga::back::{glsl, spv};
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    let module = naga::front::wgsl::parse_str(code)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(code)));
    // unpack2x16float is core WGSL; wgpu grants naga this capability on Vulkan, GL and the web.
    let caps = Capabilities::default() | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(code)));

    let storage = module
        .global_variables
        .iter()
        .filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. }))
        .count();
    assert!(
        storage <= 8,
        "{what}: {storage} storage buffers (WebGPU allows 8 per stage)"
    );
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let workgroup_bytes: u32 = module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| layouter[g.ty].size)
        .sum();
    assert!(
        workgroup_bytes <= 16384,
        "{what}: {workgroup_bytes} bytes of workgroup memory (WebGPU allows 16384)"
    );
    let [ep] = module.entry_points.as_slice() else {
        panic!("{what}: expected one entry point");
    };
    assert_eq!(ep.name, "main", "{what}");
    let invocations: u32 = ep.workgroup_size.iter().product();
    assert!(
        invocations <= 256,
        "{what}: workgroup of {invocations} invocations (WebGPU allows 256)"
    );

    spv::write_vec(&module, &info, &spv::Options::default(), None)
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    let mut glsl_code = String::new();
    let options = glsl::Options {
        version: glsl::Version::new_gles(310),
        ..glsl::Options::default()
    };
    let pipeline = glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
        multiview: None,
    };
    glsl::Writer::new(
        &mut glsl_code,
        &module,
        &info,
        &options,
        &pipeline,
        Default::default(),
    )
    .and_then(|mut w| w.write())
    .unwrap_or_else(|e| panic!("{what}: GLSL: {e}"));
}

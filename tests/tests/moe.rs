//! The mixture-of-experts kernels against their CPU references (kernels::moe): the router
//! (ids exact, weights within 1e-6 relative: f32 softmax of the same logits), the permutation
//! (exact: it is integer bookkeeping), and the whole block — route, permute, grouped gate/up
//! matmuls gathering token rows, SwiGLU, grouped down matmul, combine (+ a gated shared
//! expert) — within SUM_TOL = 1e-5 of the f32 CPU reference (sums of up to K = 96 products in
//! another order). Sizes are ragged; T = 1 takes the grouped matvec, larger T the tiled grouped
//! matmul, with more than one 64-row tile per expert. Every expert that no token chose has
//! NaN weights, so reading one anywhere poisons the output: decode and prefill read only the
//! chosen experts. Outputs start as NaN.

use std::sync::Arc;

use kestrel_runtime::kernels::elementwise::{self, Elementwise};
use kestrel_runtime::kernels::{matmul, matvec, moe};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::tensor::{GpuWeight, HostData};
use kestrel_runtime::Gpu;
use kestrel_tests::*;

const SUM_TOL: f64 = 1e-5;

struct Case {
    tokens: usize,
    experts: usize,
    k: usize,
    hidden: usize,
    inter: usize,
    renormalize: bool,
    shared: bool,
    f16: bool,
    /// Experts per weight chunk (forces the grouped kernels over several chunks).
    chunk_experts: Option<usize>,
}

/// Stacked expert weights [experts * rows, cols] with the unused experts' values NaN.
fn experts_weight(
    gpu: &Gpu,
    c: &Case,
    rows: usize,
    cols: usize,
    data: &mut [f32],
    used: &[bool],
) -> (Arc<GpuWeight>, Vec<f32>) {
    for (e, &u) in used.iter().enumerate() {
        if !u {
            data[e * rows * cols..(e + 1) * rows * cols].fill(f32::NAN);
        }
    }
    let all = c.experts * rows;
    if c.f16 {
        let (bits, rounded) = to_f16(data);
        let w =
            GpuWeight::upload_experts(gpu, "experts", c.experts, all, cols, HostData::F16(&bits));
        (w.unwrap(), rounded)
    } else {
        let w =
            GpuWeight::upload_experts(gpu, "experts", c.experts, all, cols, HostData::F32(data));
        (w.unwrap(), data.to_vec())
    }
}

fn matvec_rows(w: &[f32], x: &[f32], rows: usize, cols: usize, e: usize) -> Vec<f32> {
    let m = &w[e * rows * cols..(e + 1) * rows * cols];
    matvec::reference(x, m, None, rows, cols)
}

fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    elementwise::reference(Elementwise::SwiGlu, g, u)
}

fn run_case(gpu: &Arc<Gpu>, c: &Case, seed: u64) {
    let what = format!(
        "moe T={} E={} k={} H={} I={} renorm={} shared={} f16={} chunks={:?} on {}",
        c.tokens,
        c.experts,
        c.k,
        c.hidden,
        c.inter,
        c.renormalize,
        c.shared,
        c.f16,
        c.chunk_experts,
        gpu.backend_name()
    );
    let (t, e, k, h, n) = (c.tokens, c.experts, c.k, c.hidden, c.inter);
    let mut rng = Rng::new(seed);
    let x = rng.vec(t * h, 1.0);
    // Logits that leave the last expert unchosen: it must never be read.
    let mut logits = rng.vec(t * e, 3.0);
    for row in logits.chunks_mut(e) {
        row[e - 1] = -100.0;
    }
    let routes = moe::route_reference(&logits, e, k, c.renormalize);
    let mut used = vec![false; e];
    for (ids, _) in &routes {
        for &i in ids {
            used[i as usize] = true;
        }
    }
    let row_bytes = if c.f16 { 2 * h as u64 } else { 4 * h as u64 };
    let wgpu_ = match c.chunk_experts {
        Some(ce) => gpu.with_max_binding((ce * n.max(h)) as u64 * row_bytes.max(4 * n as u64)),
        None => gpu.clone(),
    };
    let g = &wgpu_;
    let (wg, wg_ref) = experts_weight(g, c, n, h, &mut rng.vec(e * n * h, 0.3), &used);
    let (wu, wu_ref) = experts_weight(g, c, n, h, &mut rng.vec(e * n * h, 0.3), &used);
    let (wd, wd_ref) = experts_weight(g, c, h, n, &mut rng.vec(e * h * n, 0.3), &used);
    if c.chunk_experts.is_some() {
        assert!(
            wg.chunks.len() > 1 && wd.chunks.len() > 1,
            "{what}: not split"
        );
    }
    let shared_out = c.shared.then(|| rng.vec(t * h, 1.0));
    let shared_gate = c.shared.then(|| rng.vec(t, 2.0));

    // Route and permute, checked exactly.
    let logits_b = upload_f32(g, &logits);
    let route = upload_u32(g, &vec![u32::MAX; t * 2 * k]);
    let words = moe::perm_words(t, k, e);
    let perm = upload_u32(g, &vec![u32::MAX; words]);
    let counts = upload_u32(g, &vec![0; e]);
    let mut d = vec![
        moe::launch_route(g, &logits_b, &route, t, e, k, c.renormalize).unwrap(),
        moe::launch_permute(g, &route, &perm, &counts, t, e, k).unwrap(),
    ];
    run(g, &d);
    let got_route = read_u32(g, &route, t * 2 * k);
    for (i, (ids, weights)) in routes.iter().enumerate() {
        let row = &got_route[i * 2 * k..(i + 1) * 2 * k];
        assert_eq!(&row[..k], ids.as_slice(), "{what}: token {i}'s experts");
        let got_w: Vec<f32> = row[k..].iter().map(|&b| f32::from_bits(b)).collect();
        assert_close(&format!("{what}: router weights"), &got_w, weights, 1e-6);
    }
    let ids: Vec<Vec<u32>> = routes.iter().map(|r| r.0.clone()).collect();
    let (rows, row_of) = moe::permute_reference(&ids, e);
    let got_perm = read_u32(g, &perm, words);
    let r = t * k;
    let flat: Vec<u32> = rows.iter().flat_map(|&(tok, ex)| [tok, ex]).collect();
    assert_eq!(&got_perm[..2 * r], flat.as_slice(), "{what}: sorted rows");
    assert_eq!(
        &got_perm[2 * r..3 * r],
        row_of.as_slice(),
        "{what}: rows of assignments"
    );
    let per_expert: Vec<u32> = (0..e as u32)
        .map(|ex| rows.iter().filter(|r| r.1 == ex).count() as u32)
        .collect();
    assert_eq!(
        &got_perm[3 * r..3 * r + e],
        per_expert.as_slice(),
        "{what}: counts"
    );
    let tiles: usize = per_expert.iter().map(|&c| (c as usize).div_ceil(64)).sum();
    assert_eq!(got_perm[3 * r + e] as usize, tiles, "{what}: tile count");
    assert_eq!(read_u32(g, &counts, e), per_expert, "{what}: counters");

    // The experts, then the combine.
    let gate = poisoned(g, r * n);
    let up = poisoned(g, r * n);
    let act = poisoned(g, r * n);
    let y = poisoned(g, r * h);
    let out = poisoned(g, t * h);
    let xb = upload_f32(g, &x);
    let grouped = |x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer, gather: bool| {
        if t == 1 {
            matvec::launch_grouped(g, x, w, &perm, y, r, gather).unwrap()
        } else {
            let offset = moe::tiles_offset(r, e);
            matmul::launch_grouped(g, x, w, &perm, y, r, offset, moe::max_tiles(r, e), gather)
                .unwrap()
        }
    };
    d = grouped(&xb, &wg, &gate, true);
    d.extend(grouped(&xb, &wu, &up, true));
    d.push(elementwise::launch(g, Elementwise::SwiGlu, &gate, &up, &act, r * n, r * n).unwrap());
    d.extend(grouped(&act, &wd, &y, false));
    let sb = shared_out.as_ref().map(|s| upload_f32(g, s));
    let sg = shared_gate.as_ref().map(|s| upload_f32(g, s));
    let b = moe::CombineBuffers {
        route: &route,
        perm: &perm,
        y: &y,
        shared: sb.as_ref().zip(sg.as_ref()),
        out: &out,
    };
    d.push(moe::launch_combine(g, &b, t, h, k).unwrap());
    run(g, &d);
    let got = read(g, &out, t * h);

    let expert = |ex: u32, tok: usize| {
        let xt = &x[tok * h..(tok + 1) * h];
        let a = silu_mul(
            &matvec_rows(&wg_ref, xt, n, h, ex as usize),
            &matvec_rows(&wu_ref, xt, n, h, ex as usize),
        );
        matvec_rows(&wd_ref, &a, h, n, ex as usize)
    };
    let shared_fn = |tok: usize| -> Vec<f32> {
        let s = shared_out.as_ref().unwrap();
        let gt = shared_gate.as_ref().unwrap()[tok];
        let sig = 1.0 / (1.0 + (-gt).exp());
        s[tok * h..(tok + 1) * h].iter().map(|v| v * sig).collect()
    };
    let shared_ref: Option<&dyn Fn(usize) -> Vec<f32>> = match c.shared {
        true => Some(&shared_fn),
        false => None,
    };
    let reference = moe::combine_reference(&routes, h, expert, shared_ref);
    assert_close(&what, &got, &reference, SUM_TOL);
}

#[test]
fn moe_block_matches_reference() {
    let base = Case {
        tokens: 1,
        experts: 8,
        k: 2,
        hidden: 40,
        inter: 24,
        renormalize: true,
        shared: false,
        f16: false,
        chunk_experts: None,
    };
    let cases = [
        // Decode: the grouped matvec.
        Case { ..base },
        Case {
            k: 3,
            renormalize: false,
            shared: true,
            f16: true,
            ..base
        },
        // Prefill: tiles of one expert, and experts with more than 64 rows (several tiles).
        Case {
            tokens: 29,
            experts: 5,
            k: 2,
            hidden: 36,
            inter: 52,
            ..base
        },
        Case {
            tokens: 150,
            experts: 4,
            k: 2,
            hidden: 32,
            inter: 20,
            shared: true,
            ..base
        },
        Case {
            tokens: 70,
            experts: 6,
            k: 1,
            hidden: 44,
            inter: 96,
            f16: true,
            renormalize: false,
            ..base
        },
        // Expert weights split over several bindings.
        Case {
            tokens: 33,
            experts: 6,
            k: 2,
            hidden: 32,
            inter: 16,
            chunk_experts: Some(2),
            ..base
        },
        Case {
            tokens: 1,
            experts: 6,
            k: 2,
            hidden: 32,
            inter: 16,
            chunk_experts: Some(2),
            ..base
        },
    ];
    for gpu in gpus() {
        for (i, c) in cases.iter().enumerate() {
            run_case(&gpu, c, 9000 + i as u64);
        }
    }
}

#[test]
fn router_ties_go_to_the_lower_index_and_k_is_checked() {
    for gpu in gpus() {
        // Every expert equal: the first k win, in index order.
        let (t, e, k) = (3, 6, 4);
        let logits = upload_f32(&gpu, &vec![0.5; t * e]);
        let route = upload_u32(&gpu, &vec![u32::MAX; t * 2 * k]);
        run(
            &gpu,
            &[moe::launch_route(&gpu, &logits, &route, t, e, k, true).unwrap()],
        );
        let got = read_u32(&gpu, &route, t * 2 * k);
        for row in got.chunks(2 * k) {
            assert_eq!(&row[..k], &[0, 1, 2, 3]);
            for &w in &row[k..] {
                assert_eq!(f32::from_bits(w), 0.25);
            }
        }
        let reference = moe::route_reference(&vec![0.5; e], e, k, true);
        assert_eq!(reference[0].0, vec![0, 1, 2, 3]);
        for bad in [0, e + 1] {
            let err = moe::launch_route(&gpu, &logits, &route, t, e, bad, true).unwrap_err();
            assert!(err.to_string().contains("experts per token"), "{err}");
        }
    }
}

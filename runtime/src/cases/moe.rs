//! The mixture-of-experts kernels against their CPU references (kernels::moe): the router
//! (ids exact, each weight within 1e-6 relative: f32 softmax of the same logits), the
//! permutation (exact: it is integer bookkeeping), and the whole block — route, permute,
//! grouped gate/up matmuls gathering token rows, SwiGLU, grouped down matmul, combine (+ a
//! gated shared expert) — within SUM_TOL = 1e-5 of the f32 CPU reference (sums of up to
//! K = 96 products in another order). Sizes are ragged; T = 1 takes the grouped matvec,
//! larger T the tiled grouped matmul, with more than one 64-row tile per expert. Every expert
//! that no token chose has NaN weights, so reading one anywhere poisons the output: decode
//! and prefill read only the chosen experts.

use std::sync::Arc;

use super::{poisoned, upload_f32, upload_u32, weights, Case, Expect, Output, Prepared, SUM_TOL};
use crate::device::Gpu;
use crate::error::Result;
use crate::kernels::elementwise::{self, Elementwise};
use crate::kernels::{matmul, matvec, moe};
use crate::rng::Rng;
use crate::tensor::{DType, GpuWeight};

/// Router weights: one f32 softmax (and renormalisation) of the same logits each side.
const ROUTER_TOL: f64 = 1e-6;

#[derive(Debug, Clone, Copy)]
struct Spec {
    tokens: usize,
    experts: usize,
    k: usize,
    hidden: usize,
    inter: usize,
    renormalize: bool,
    shared: bool,
    /// The expert weights' dtype: f32, f16 or bf16.
    dtype: DType,
    /// Experts per weight chunk (forces the grouped kernels over several chunks).
    chunk_experts: Option<usize>,
    /// The block's output added into a residual stream in place.
    residual: bool,
}

/// Stacked expert weights [experts * rows, cols] of scale 0.3, the unused experts' NaN.
fn experts_weight(
    gpu: &Gpu,
    c: &Spec,
    (rows, cols): (usize, usize),
    rng: &mut Rng,
    used: &[bool],
) -> Result<(Arc<GpuWeight>, Vec<f32>)> {
    let mut data = rng.vec(c.experts * rows * cols, 0.3);
    for (e, &u) in used.iter().enumerate() {
        if !u {
            data[e * rows * cols..(e + 1) * rows * cols].fill(f32::NAN);
        }
    }
    weights::upload(gpu, c.dtype, c.experts, c.experts * rows, cols, data)
}

fn rows_of(w: &[f32], x: &[f32], rows: usize, cols: usize, e: u32) -> Vec<f32> {
    let e = e as usize;
    matvec::reference(
        x,
        &w[e * rows * cols..(e + 1) * rows * cols],
        None,
        rows,
        cols,
    )
}

impl Spec {
    fn describe(&self) -> String {
        format!(
            "T={} E={} k={} H={} I={} renorm={} shared={} {} chunk_experts={:?} residual={}",
            self.tokens,
            self.experts,
            self.k,
            self.hidden,
            self.inter,
            self.renormalize,
            self.shared,
            self.dtype.name(),
            self.chunk_experts,
            self.residual
        )
    }

    fn prepare(&self, gpu: &Arc<Gpu>, seed: u64) -> Result<Prepared> {
        let c = self;
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
        let row_bytes = c.dtype.bytes(h);
        let g = &match c.chunk_experts {
            Some(ce) => gpu.with_max_binding((ce * n.max(h)) as u64 * row_bytes.max(4 * n as u64)),
            None => gpu.clone(),
        };
        let (wg, wg_ref) = experts_weight(g, c, (n, h), &mut rng, &used)?;
        let (wu, wu_ref) = experts_weight(g, c, (n, h), &mut rng, &used)?;
        let (wd, wd_ref) = experts_weight(g, c, (h, n), &mut rng, &used)?;
        if c.chunk_experts.is_some() && (wg.chunks.len() < 2 || wd.chunks.len() < 2) {
            return Err(super::bad_case("expert weights not split".into()));
        }
        let shared_out = rng.vec(t * h, 1.0);
        let shared_gate = rng.vec(t, 2.0);

        let r = t * k;
        let logits_b = upload_f32(g, &logits);
        let route = upload_u32(g, &vec![u32::MAX; t * 2 * k]);
        let perm_words = moe::perm_words(t, k, e);
        let perm = upload_u32(g, &vec![u32::MAX; perm_words]);
        let counts = upload_u32(g, &vec![0; e]);
        let mut d = vec![
            moe::launch_route(g, &logits_b, &route, t, e, k, c.renormalize)?,
            moe::launch_permute(g, &route, &perm, &counts, t, e, k)?,
        ];
        let (gate, up, act) = (poisoned(g, r * n), poisoned(g, r * n), poisoned(g, r * n));
        let residual = rng.vec(t * h, 1.0);
        let y = poisoned(g, r * h);
        let out = match c.residual {
            true => upload_f32(g, &residual),
            false => poisoned(g, t * h),
        };
        let xb = upload_f32(g, &x);
        let grouped = |x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer, gather: bool| {
            if t == 1 {
                matvec::launch_grouped(g, x, w, &perm, y, r, gather)
            } else {
                let (offset, tiles) = (moe::tiles_offset(r, e), moe::max_tiles(r, e));
                matmul::launch_grouped(g, x, w, &perm, y, r, offset, tiles, gather)
            }
        };
        d.extend(grouped(&xb, &wg, &gate, true)?);
        d.extend(grouped(&xb, &wu, &up, true)?);
        d.push(elementwise::launch(
            g,
            Elementwise::SwiGlu,
            &gate,
            &up,
            &act,
            r * n,
            r * n,
        )?);
        d.extend(grouped(&act, &wd, &y, false)?);
        let (sb, sg) = (upload_f32(g, &shared_out), upload_f32(g, &shared_gate));
        let b = moe::CombineBuffers {
            route: &route,
            perm: &perm,
            y: &y,
            shared: c.shared.then_some((&sb, &sg)),
            out: &out,
            accumulate: c.residual,
        };
        d.push(moe::launch_combine(g, &b, t, h, k)?);

        // The router's choice, the sorted rows, each assignment's row, rows per expert and
        // the tile count, exactly; the block's output within SUM_TOL.
        let ids: Vec<Vec<u32>> = routes.iter().map(|r| r.0.clone()).collect();
        let weights: Vec<f32> = routes.iter().flat_map(|r| r.1.clone()).collect();
        let (rows, row_of) = moe::permute_reference(&ids, e);
        let per_expert: Vec<u32> = (0..e as u32)
            .map(|ex| rows.iter().filter(|r| r.1 == ex).count() as u32)
            .collect();
        let tiles: usize = per_expert.iter().map(|&c| (c as usize).div_ceil(64)).sum();
        let mut perm_want: Vec<u32> = rows.iter().flat_map(|&(tok, ex)| [tok, ex]).collect();
        perm_want.extend(&row_of);
        perm_want.extend(&per_expert);
        perm_want.push(tiles as u32);
        let perm_checked = perm_want.len();
        let expert = |ex: u32, tok: usize| {
            let xt = &x[tok * h..(tok + 1) * h];
            let gate = rows_of(&wg_ref, xt, n, h, ex);
            let a =
                elementwise::reference(Elementwise::SwiGlu, &gate, &rows_of(&wu_ref, xt, n, h, ex));
            rows_of(&wd_ref, &a, h, n, ex)
        };
        let shared_fn = |tok: usize| -> Vec<f32> {
            let sig = 1.0 / (1.0 + (-shared_gate[tok]).exp());
            shared_out[tok * h..(tok + 1) * h]
                .iter()
                .map(|v| v * sig)
                .collect()
        };
        let shared_ref: Option<&dyn Fn(usize) -> Vec<f32>> = c.shared.then_some(&shared_fn);
        let mut want = moe::combine_reference(&routes, h, expert, shared_ref);
        if c.residual {
            for (w, r) in want.iter_mut().zip(&residual) {
                *w += r;
            }
        }
        let route_words = t * 2 * k;
        let outputs = vec![
            Output::new("router experts", &route, Expect::Words(ids.concat()))
                .derived(route_words, move |w| {
                    w.chunks(2 * k).flat_map(|r| r[..k].to_vec()).collect()
                }),
            Output::new("router weights", &route, Expect::Each(weights, ROUTER_TOL))
                .derived(route_words, move |w| {
                    w.chunks(2 * k).flat_map(|r| r[k..].to_vec()).collect()
                }),
            Output::new("permutation", &perm, Expect::Words(perm_want))
                .derived(perm_words, move |w| w[..perm_checked].to_vec()),
            Output::new("counters", &counts, Expect::Words(per_expert)),
            Output::close("block output", &out, want, SUM_TOL),
        ];
        Ok(Prepared::new(g, d, outputs))
    }
}

pub fn cases() -> Vec<Case> {
    let base = Spec {
        tokens: 1,
        experts: 8,
        k: 2,
        hidden: 40,
        inter: 24,
        renormalize: true,
        shared: false,
        dtype: DType::F32,
        chunk_experts: None,
        residual: false,
    };
    // (spec, in the browser)
    let specs = [
        // Decode: the grouped matvec.
        (base, true),
        (
            Spec {
                k: 3,
                renormalize: false,
                shared: true,
                dtype: DType::F16,
                residual: true,
                ..base
            },
            false,
        ),
        // Prefill: tiles of one expert, and experts with more than 64 rows (several tiles).
        (
            Spec {
                tokens: 29,
                experts: 5,
                k: 2,
                hidden: 36,
                inter: 52,
                ..base
            },
            false,
        ),
        (
            Spec {
                tokens: 29,
                experts: 5,
                k: 2,
                hidden: 36,
                inter: 52,
                shared: true,
                ..base
            },
            true,
        ),
        (
            Spec {
                tokens: 150,
                experts: 4,
                k: 2,
                hidden: 32,
                inter: 20,
                shared: true,
                residual: true,
                ..base
            },
            true,
        ),
        (
            Spec {
                tokens: 70,
                experts: 6,
                k: 1,
                hidden: 44,
                inter: 96,
                dtype: DType::F16,
                renormalize: false,
                ..base
            },
            false,
        ),
        // Expert weights split over several bindings.
        (
            Spec {
                tokens: 33,
                experts: 6,
                k: 2,
                hidden: 32,
                inter: 16,
                chunk_experts: Some(2),
                ..base
            },
            false,
        ),
        (
            Spec {
                tokens: 1,
                experts: 6,
                k: 2,
                hidden: 32,
                inter: 16,
                chunk_experts: Some(2),
                ..base
            },
            false,
        ),
        // bf16 experts: the grouped matvec (odd hidden: halves straddling rows) and the
        // grouped matmul.
        (
            Spec {
                k: 3,
                hidden: 41,
                shared: true,
                dtype: DType::BF16,
                ..base
            },
            false,
        ),
        (
            Spec {
                tokens: 29,
                experts: 5,
                k: 2,
                hidden: 36,
                inter: 52,
                dtype: DType::BF16,
                ..base
            },
            false,
        ),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (spec, browser))| {
            let seed = 9000 + i as u64;
            Case::new("moe", spec.describe(), move |gpu| spec.prepare(gpu, seed)).browser(browser)
        })
        .collect()
}

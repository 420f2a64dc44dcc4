//! Sparse mixture of experts on the GPU: the router (`route`, shaders/moe_route.wgsl), the
//! token permutation by expert (`permute`, shaders/moe_permute.wgsl) and the weighted combine
//! back into token order (`combine`, shaders/moe_combine.wgsl). Between permute and combine
//! the experts run as grouped matmuls (`matmul::launch_grouped`, `matvec::launch_grouped`)
//! that read only the experts that have tokens. Each step has its CPU reference here.

use bytemuck::{Pod, Zeroable};

use super::{kernel, matmul, matvec, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, Source, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;
use crate::tensor::DType;

pub const ROUTE: Kernel = kernel!("moe_route", route_variants);
pub const PERMUTE: Kernel = kernel!("moe_permute", no_variants);
pub const COMBINE: Kernel = kernel!("moe_combine", combine_variants);

fn route_defs(renormalize: bool) -> ShaderDefs {
    ShaderDefs::new().bool("RENORMALIZE", renormalize)
}

fn combine_defs(shared: bool, accumulate: bool) -> ShaderDefs {
    ShaderDefs::new()
        .bool("SHARED", shared)
        .bool("ACCUM", accumulate)
}

/// With and without renormalising the top-k weights.
pub fn route_variants() -> Vec<ShaderDefs> {
    [false, true].map(route_defs).to_vec()
}

/// With and without a shared expert, into a new tensor or added in place.
pub fn combine_variants() -> Vec<ShaderDefs> {
    [(false, false), (true, false), (false, true), (true, true)]
        .map(|(s, a)| combine_defs(s, a))
        .to_vec()
}

/// Rows of one grouped matmul tile (shaders/matmul_tiles.wgsl's TM when GROUPED).
pub const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    a: u32,
    b: u32,
    k: u32,
    _p: u32,
}

/// The most tiles perm can list for `rows` assignments over `experts` experts.
pub fn max_tiles(rows: usize, experts: usize) -> usize {
    rows.div_ceil(TILE) + experts.min(rows)
}

/// Where perm's tile list starts (its count word), in u32 words.
pub fn tiles_offset(rows: usize, experts: usize) -> usize {
    3 * rows + experts
}

/// Words of perm for `tokens` tokens, `k` experts each, `experts` experts.
pub fn perm_words(tokens: usize, k: usize, experts: usize) -> usize {
    let rows = tokens * k;
    tiles_offset(rows, experts) + 1 + 2 * max_tiles(rows, experts)
}

/// Check the router's settings: 1 <= k <= experts.
pub fn check_top_k(k: usize, experts: usize) -> Result<()> {
    if k == 0 || k > experts {
        return Err(Error::Graph(format!(
            "mixture of experts: {k} experts per token, but there are {experts} experts"
        )));
    }
    Ok(())
}

/// Router: `logits` [tokens, experts] into `route` [tokens, 2k] (expert ids, then weights as
/// f32 bits).
pub fn launch_route(
    gpu: &Gpu,
    logits: &wgpu::Buffer,
    route: &wgpu::Buffer,
    tokens: usize,
    experts: usize,
    k: usize,
    renormalize: bool,
) -> Result<Dispatch> {
    check_top_k(k, experts)?;
    let params = Params {
        a: tokens as u32,
        b: experts as u32,
        k: k as u32,
        _p: 0,
    };
    ROUTE.dispatch(
        gpu,
        &route_defs(renormalize),
        &params,
        &[logits, route],
        gpu.grid((tokens as u32).div_ceil(64)),
    )
}

/// Permutation: `route` into `perm` (layout in shaders/moe_permute.wgsl), adding each
/// expert's rows to `counts` [experts].
pub fn launch_permute(
    gpu: &Gpu,
    route: &wgpu::Buffer,
    perm: &wgpu::Buffer,
    counts: &wgpu::Buffer,
    tokens: usize,
    experts: usize,
    k: usize,
) -> Result<Dispatch> {
    check_top_k(k, experts)?;
    // One workgroup walks every assignment once per expert it owns; CPU drivers end a loop
    // after 65535 iterations.
    let rows = tokens * k;
    let walks = rows * experts.div_ceil(256);
    if walks > 65535 {
        return Err(Error::LimitExceeded {
            what: "mixture-of-experts assignments in one pass".into(),
            needed: rows as u64,
            allowed: (65535 / experts.div_ceil(256)) as u64,
        });
    }
    let params = Params {
        a: rows as u32,
        b: experts as u32,
        k: k as u32,
        _p: 0,
    };
    PERMUTE.dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[route, perm, counts],
        [1, 1, 1],
    )
}

/// The buffers of [`launch_combine`].
pub struct CombineBuffers<'a> {
    pub route: &'a wgpu::Buffer,
    pub perm: &'a wgpu::Buffer,
    /// The experts' outputs [tokens * k, width] in sorted rows.
    pub y: &'a wgpu::Buffer,
    /// A shared expert's output [tokens, width] and its gate logits [tokens].
    pub shared: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
    pub out: &'a wgpu::Buffer,
    /// Add the result to `out` in place (a residual stream) instead of replacing it.
    pub accumulate: bool,
}

/// Combine: out [tokens, width] = the weighted sum of each token's expert rows (+ the gated
/// shared expert).
pub fn launch_combine(
    gpu: &Gpu,
    b: &CombineBuffers<'_>,
    tokens: usize,
    width: usize,
    k: usize,
) -> Result<Dispatch> {
    let params = Params {
        a: tokens as u32,
        b: width as u32,
        k: k as u32,
        _p: 0,
    };
    let (shared, gate) = b.shared.unwrap_or((&gpu.dummy, &gpu.dummy));
    COMBINE.dispatch(
        gpu,
        &combine_defs(b.shared.is_some(), b.accumulate),
        &params,
        &[b.route, b.perm, b.y, shared, gate, b.out],
        gpu.grid(((tokens * width) as u32).div_ceil(64)),
    )
}

/// A mixture of experts' router: `logits` [T, experts] into `route` [T, 2k] u32 (the k
/// experts, then their weights as f32 bits).
#[derive(Debug)]
pub struct MoeRoute {
    pub logits: TensorId,
    pub route: TensorId,
    pub k: usize,
    pub renormalize: bool,
}

/// The assignments of `route` sorted by expert into `perm` (u32), adding each expert's rows
/// to the `counts` state.
#[derive(Debug)]
pub struct MoePermute {
    pub route: TensorId,
    pub perm: TensorId,
    pub counts: TensorId,
    pub experts: usize,
    pub k: usize,
}

/// Each sorted row times its expert's matrix of `w` (stacked experts): `x` [T, K] read at
/// each row's token (`gather`) or [T * k, K] in sorted rows; out [T * k, N].
#[derive(Debug)]
pub struct MoeLinear {
    pub x: TensorId,
    pub w: TensorId,
    pub perm: TensorId,
    pub out: TensorId,
    pub k: usize,
    pub gather: bool,
}

/// Sorted expert rows `y` [T * k, W] back to tokens, weighted by the router, plus a shared
/// expert's output gated by sigmoid(gate) when given: out [T, W], or added into `out` in
/// place when `accumulate` (the residual stream: one dispatch instead of two).
#[derive(Debug)]
pub struct MoeCombine {
    pub y: TensorId,
    pub route: TensorId,
    pub perm: TensorId,
    pub shared: Option<(TensorId, TensorId)>,
    pub out: TensorId,
    pub k: usize,
    pub accumulate: bool,
}

impl Graph {
    /// Route each token of `logits` [T, experts] to its top `k` experts: [T, 2k] u32.
    pub fn moe_route(&mut self, logits: TensorId, k: usize, renormalize: bool) -> Result<TensorId> {
        let [t, experts] = self.shape(logits) else {
            return Err(Error::Graph(
                "router logits must be [tokens, experts]".into(),
            ));
        };
        let (t, experts) = (*t, *experts);
        check_top_k(k, experts)?;
        let route = self.add(vec![t, 2 * k], DType::U32, Source::Activation);
        self.push(MoeRoute {
            logits,
            route,
            k,
            renormalize,
        });
        Ok(route)
    }

    /// Sort the assignments of `route` by expert; `counts` is a counter state [experts].
    pub fn moe_permute(
        &mut self,
        route: TensorId,
        experts: usize,
        counts: TensorId,
    ) -> Result<TensorId> {
        let (t, k) = (self.shape(route)[0], self.shape(route)[1] / 2);
        check_top_k(k, experts)?;
        if self.shape(counts) != [experts] {
            return Err(mismatch("expert counters", &[experts], self.shape(counts)));
        }
        let words = perm_words(t, k, experts);
        let perm = self.add(vec![words], DType::U32, Source::Activation);
        self.push(MoePermute {
            route,
            perm,
            counts,
            experts,
            k,
        });
        Ok(perm)
    }

    /// The routed rows times their experts' matrices in `w` (stacked experts [E * N, K]):
    /// `x` is [T, K] with `gather`, else [T * k, K] in sorted rows; the result [T * k, N].
    pub fn moe_linear(
        &mut self,
        x: TensorId,
        w: TensorId,
        perm: TensorId,
        tokens: usize,
        k: usize,
        gather: bool,
    ) -> Result<TensorId> {
        let weight = self.weight_of(w)?.clone();
        let rows = if gather { tokens } else { tokens * k };
        let expect = [rows, weight.cols];
        if self.shape(x) != expect {
            return Err(mismatch(
                &format!("input of expert weight {}", weight.name),
                &expect,
                self.shape(x),
            ));
        }
        let out = self.activation(vec![tokens * k, weight.rows / weight.experts]);
        self.push(MoeLinear {
            x,
            w,
            perm,
            out,
            k,
            gather,
        });
        Ok(out)
    }

    /// Expert rows `y` [T * k, W] back into token order, weighted by `route` [T, 2k], plus
    /// `shared` = (a shared expert's output [T, W], its gate logits [T, 1]).
    pub fn moe_combine(
        &mut self,
        y: TensorId,
        route: TensorId,
        perm: TensorId,
        shared: Option<(TensorId, TensorId)>,
    ) -> Result<TensorId> {
        let width = *self.shape(y).last().unwrap_or(&0);
        let out = self.activation(vec![self.shape(route)[0], width]);
        self.combine(y, route, perm, shared, out, false)
    }

    /// [`Graph::moe_combine`] added into `residual` [T, W] in place; returns it.
    pub fn moe_combine_into(
        &mut self,
        y: TensorId,
        route: TensorId,
        perm: TensorId,
        shared: Option<(TensorId, TensorId)>,
        residual: TensorId,
    ) -> Result<TensorId> {
        self.combine(y, route, perm, shared, residual, true)
    }

    fn combine(
        &mut self,
        y: TensorId,
        route: TensorId,
        perm: TensorId,
        shared: Option<(TensorId, TensorId)>,
        out: TensorId,
        accumulate: bool,
    ) -> Result<TensorId> {
        let (t, k) = (self.shape(route)[0], self.shape(route)[1] / 2);
        let width = self.shape(y)[1];
        if self.shape(y)[0] != t * k {
            return Err(mismatch("expert outputs", &[t * k, width], self.shape(y)));
        }
        if self.shape(out) != [t, width] {
            return Err(mismatch("residual stream", &[t, width], self.shape(out)));
        }
        if let Some((s, g)) = shared {
            if self.shape(s) != [t, width] {
                return Err(mismatch("shared expert output", &[t, width], self.shape(s)));
            }
            if self.numel(g) != t {
                return Err(mismatch("shared expert gate", &[t, 1], self.shape(g)));
            }
        }
        self.push(MoeCombine {
            y,
            route,
            perm,
            shared,
            out,
            k,
            accumulate,
        });
        Ok(out)
    }
}

impl Op for MoeRoute {
    fn name(&self) -> &'static str {
        "moe_route"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.logits], vec![self.route])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.logits);
        let (logits, route) = (cx.buf(self.logits)?, cx.buf(self.route)?);
        let d = launch_route(
            cx.gpu(),
            logits,
            route,
            s[0],
            s[1],
            self.k,
            self.renormalize,
        )?;
        cx.push([d]);
        Ok(())
    }
}

impl Op for MoePermute {
    fn name(&self) -> &'static str {
        "moe_permute"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.route, self.counts], vec![self.perm, self.counts])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let t = cx.shape(self.route)[0];
        let (route, perm, counts) = (
            cx.buf(self.route)?,
            cx.buf(self.perm)?,
            cx.buf(self.counts)?,
        );
        let d = launch_permute(cx.gpu(), route, perm, counts, t, self.experts, self.k)?;
        cx.push([d]);
        Ok(())
    }
}

impl Op for MoeLinear {
    fn name(&self) -> &'static str {
        "moe_linear"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.x, self.w, self.perm], vec![self.out])
    }

    /// One token: a matvec per chosen expert; else 64-row tiles per expert.
    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let gpu = cx.gpu();
        let rows = cx.shape(self.out)[0];
        let w = cx.weight(self.w)?;
        let (x, perm, out) = (cx.buf(self.x)?, cx.buf(self.perm)?, cx.buf(self.out)?);
        let d = if rows == self.k {
            matvec::launch_grouped(gpu, x, w, perm, out, rows, self.gather)?
        } else {
            let tiles = max_tiles(rows, w.experts);
            let offset = tiles_offset(rows, w.experts);
            matmul::launch_grouped(gpu, x, w, perm, out, rows, offset, tiles, self.gather)?
        };
        cx.push(d);
        Ok(())
    }
}

impl Op for MoeCombine {
    fn name(&self) -> &'static str {
        "moe_combine"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.y, self.route, self.perm];
        if let Some((s, g)) = self.shared {
            r.extend([s, g]);
        }
        if self.accumulate {
            r.push(self.out);
        }
        (r, vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let (t, width) = (cx.shape(self.out)[0], cx.shape(self.out)[1]);
        let shared = match self.shared {
            Some((s, g)) => Some((cx.buf(s)?, cx.buf(g)?)),
            None => None,
        };
        let b = CombineBuffers {
            route: cx.buf(self.route)?,
            perm: cx.buf(self.perm)?,
            y: cx.buf(self.y)?,
            shared,
            out: cx.buf(self.out)?,
            accumulate: self.accumulate,
        };
        cx.push([launch_combine(cx.gpu(), &b, t, width, self.k)?]);
        Ok(())
    }
}

/// The router's choice for each token: (experts, weights), top-k of the softmax in the order
/// (probability descending, index ascending), renormalised to sum 1 when asked.
pub fn route_reference(
    logits: &[f32],
    experts: usize,
    k: usize,
    renormalize: bool,
) -> Vec<(Vec<u32>, Vec<f32>)> {
    logits
        .chunks(experts)
        .map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&l| (l - m).exp()).sum();
            let mut order: Vec<(f32, u32)> = row
                .iter()
                .enumerate()
                .map(|(e, &l)| ((l - m).exp() / sum, e as u32))
                .collect();
            order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            order.truncate(k);
            let total: f32 = order.iter().map(|o| o.0).sum();
            let scale = if renormalize { 1.0 / total } else { 1.0 };
            (
                order.iter().map(|o| o.1).collect(),
                order.iter().map(|o| o.0 * scale).collect(),
            )
        })
        .collect()
}

/// The sorted rows: (token, expert) for each row, stably by expert; and each assignment's row.
pub fn permute_reference(ids: &[Vec<u32>], experts: usize) -> (Vec<(u32, u32)>, Vec<u32>) {
    let k = ids.first().map_or(0, |r| r.len());
    let mut rows = Vec::new();
    let mut row_of = vec![0u32; ids.len() * k];
    for e in 0..experts as u32 {
        for (t, chosen) in ids.iter().enumerate() {
            for (j, &c) in chosen.iter().enumerate() {
                if c == e {
                    row_of[t * k + j] = rows.len() as u32;
                    rows.push((t as u32, e));
                }
            }
        }
    }
    (rows, row_of)
}

/// The whole mixture-of-experts block on the CPU: for each token, the routed experts' outputs
/// `expert(e, x_t)` weighted by the router, plus `shared(t)` when given.
pub fn combine_reference(
    routes: &[(Vec<u32>, Vec<f32>)],
    width: usize,
    expert: impl Fn(u32, usize) -> Vec<f32>,
    shared: Option<&dyn Fn(usize) -> Vec<f32>>,
) -> Vec<f32> {
    let mut out = vec![0.0; routes.len() * width];
    for (t, (ids, weights)) in routes.iter().enumerate() {
        let o = &mut out[t * width..(t + 1) * width];
        for (&e, &w) in ids.iter().zip(weights) {
            for (a, b) in o.iter_mut().zip(expert(e, t)) {
                *a += w * b;
            }
        }
        if let Some(s) = shared {
            for (a, b) in o.iter_mut().zip(s(t)) {
                *a += b;
            }
        }
    }
    out
}

//! Sparse mixture of experts on the GPU: the router (`route`, shaders/moe_route.wgsl), the
//! token permutation by expert (`permute`, shaders/moe_permute.wgsl) and the weighted combine
//! back into token order (`combine`, shaders/moe_combine.wgsl). Between permute and combine
//! the experts run as grouped matmuls (`matmul::launch_grouped`, `matvec::launch_grouped`)
//! that read only the experts that have tokens. Each step has its CPU reference here.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;

/// Rows of one grouped matmul tile (shaders/matmul.wgsl's TILE).
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
    let defs = ShaderDefs::new().bool("RENORMALIZE", renormalize);
    kernel!("moe_route").dispatch(
        gpu,
        &defs,
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
    kernel!("moe_permute").dispatch(
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
    let defs = ShaderDefs::new().bool("SHARED", b.shared.is_some());
    let (shared, gate) = b.shared.unwrap_or((&gpu.dummy, &gpu.dummy));
    kernel!("moe_combine").dispatch(
        gpu,
        &defs,
        &params,
        &[b.route, b.perm, b.y, shared, gate, b.out],
        gpu.grid(((tokens * width) as u32).div_ceil(64)),
    )
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

//! Tiled causal attention with online softmax for prefill, and the shared CPU reference for
//! attention over a KV cache (also used by `decode_attention`).

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;

/// Head layout of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Score scale, usually 1/sqrt(head_dim).
    pub scale: f32,
}

impl AttnShape {
    pub fn validate(&self) -> Result<()> {
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) || self.head_dim == 0 {
            return Err(Error::Graph(format!(
                "attention heads {} must be a positive multiple of kv heads {}",
                self.heads, self.kv_heads
            )));
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    causal: u32,
    scale: f32,
    _p: u32,
}

const BQ: u32 = 64;

/// Keys per tile: K and V tiles together stay within 16 KiB of workgroup memory.
fn keys_per_tile(head_dim: usize) -> u32 {
    (2048 / head_dim as u32).clamp(1, 64)
}

/// `q` [T, heads*D] attends over `k_cache`/`v_cache` [capacity, kv_heads*D] at positions
/// `0..step.pos+T`; writes `out` [T, heads*D].
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    q: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    out: &wgpu::Buffer,
    shape: AttnShape,
    n_tokens: usize,
    causal: bool,
) -> Result<Dispatch> {
    shape.validate()?;
    let defs = ShaderDefs::new()
        .u32("HEAD_DIM", shape.head_dim as u32)
        .u32("BQ", BQ)
        .u32("BK", keys_per_tile(shape.head_dim));
    let params = Params {
        n_tokens: n_tokens as u32,
        heads: shape.heads as u32,
        kv_heads: shape.kv_heads as u32,
        q_stride: (shape.heads * shape.head_dim) as u32,
        kv_stride: (shape.kv_heads * shape.head_dim) as u32,
        causal: causal as u32,
        scale: shape.scale,
        _p: 0,
    };
    let groups = [(n_tokens as u32).div_ceil(BQ), shape.heads as u32, 1];
    kernel!("attention").dispatch(
        gpu,
        &defs,
        &params,
        &[step, q, k_cache, v_cache, out],
        groups,
    )
}

/// Attention of `q` [T, heads*D] (queries at positions pos..pos+T) over `k`/`v`
/// [>= pos+T, kv_heads*D], in f64 accumulation.
pub fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    pos: usize,
    causal: bool,
) -> Vec<f32> {
    let d = shape.head_dim;
    let t_count = q.len() / (shape.heads * d);
    let kv_len = pos + t_count;
    let group = shape.heads / shape.kv_heads;
    let mut out = vec![0.0; q.len()];
    for t in 0..t_count {
        let end = if causal { pos + t + 1 } else { kv_len };
        for h in 0..shape.heads {
            let kvh = h / group;
            let qrow = &q[(t * shape.heads + h) * d..][..d];
            let scores: Vec<f64> = (0..end)
                .map(|j| {
                    let krow = &k[(j * shape.kv_heads + kvh) * d..][..d];
                    qrow.iter()
                        .zip(krow)
                        .map(|(a, b)| (*a as f64) * (*b as f64))
                        .sum::<f64>()
                        * shape.scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for i in 0..d {
                let acc: f64 = (0..end)
                    .map(|j| e[j] * v[(j * shape.kv_heads + kvh) * d + i] as f64)
                    .sum();
                out[(t * shape.heads + h) * d + i] = (acc / sum) as f32;
            }
        }
    }
    out
}

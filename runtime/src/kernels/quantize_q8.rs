//! x [K] quantized to int8 blocks of 32 for the int8 decode matvec
//! ([`super::matvec_q8`], `--matvec-precision int8`), as llama.cpp's q8_1: per block a scale
//! d = amax / 127, q = round(x / d) and the block's sum of q, optionally of RMSNorm(x) * w
//! (the Linear op's norm, fused). See shaders/quantize_q8.wgsl.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("quantize_q8", variants);

/// Values per block.
pub const BLOCK: usize = 32;
/// u32 words per quantized block: d, the sum of q, 32 q packed four to a word.
pub const BLOCK_WORDS: usize = 2 + BLOCK / 4;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    k: u32,
    eps: f32,
}

fn defs(norm: bool) -> ShaderDefs {
    ShaderDefs::new()
        .bool("NORM", norm)
        .u32("Q8_WORDS", BLOCK_WORDS as u32)
}

pub fn variants() -> Vec<ShaderDefs> {
    vec![defs(false), defs(true)]
}

/// Words of the quantized x for `k` values.
pub fn words(k: usize) -> usize {
    k / BLOCK * BLOCK_WORDS
}

/// Quantize `x` [k] into `xq` ([`words`]`(k)` words), with `norm` the RMSNorm of x first (its
/// weight [k] and eps). K must be a multiple of 32.
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    norm: Option<(&wgpu::Buffer, f32)>,
    xq: &wgpu::Buffer,
    k: usize,
) -> Result<Dispatch> {
    if k == 0 || !k.is_multiple_of(BLOCK) {
        return Err(Error::Graph(format!(
            "int8 quantization of x: {k} values is not a whole number of {BLOCK}-value blocks"
        )));
    }
    let params = Params {
        k: k as u32,
        eps: norm.map_or(0.0, |n| n.1),
    };
    let nw = norm.map_or(&*gpu.dummy, |n| n.0);
    KERNEL.dispatch(gpu, &defs(norm.is_some()), &params, &[x, nw, xq], [1, 1, 1])
}

/// One quantized block as the CPU reference holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block {
    pub d: f32,
    pub q: [i8; BLOCK],
}

impl Block {
    pub fn sum(&self) -> i32 {
        self.q.iter().map(|&q| q as i32).sum()
    }
}

/// The blocks of `x` (K a multiple of 32) as the kernel computes them: q = round(x * (127 /
/// amax)) with ties to even, d = amax / 127; with `norm`, of x * w, and d times the inverse
/// RMS of x.
pub fn reference(x: &[f32], norm: Option<(&[f32], f32)>) -> Vec<Block> {
    let inv = norm.map_or(1.0, |(_, eps)| {
        let mean = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
        (1.0 / (mean + eps as f64).sqrt()) as f32
    });
    x.chunks_exact(BLOCK)
        .enumerate()
        .map(|(b, xs)| {
            let v: Vec<f32> = match norm {
                Some((w, _)) => xs.iter().zip(&w[b * BLOCK..]).map(|(x, w)| x * w).collect(),
                None => xs.to_vec(),
            };
            let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let mut q = [0i8; BLOCK];
            for (q, x) in q.iter_mut().zip(&v) {
                *q = (x * id).round_ties_even() as i8;
            }
            Block {
                d: amax / 127.0 * inv,
                q,
            }
        })
        .collect()
}

/// Blocks in the kernel's layout (to upload as a quantized x).
pub fn to_words(blocks: &[Block]) -> Vec<u32> {
    let mut out = Vec::with_capacity(blocks.len() * BLOCK_WORDS);
    for b in blocks {
        out.push(b.d.to_bits());
        out.push(b.sum() as u32);
        out.extend(
            b.q.chunks_exact(4)
                .map(|q| u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])),
        );
    }
    out
}

/// The kernel's layout read back into blocks and each block's stored sum of q.
pub fn from_words(words: &[u32]) -> Vec<(Block, i32)> {
    words
        .chunks_exact(BLOCK_WORDS)
        .map(|w| {
            let mut q = [0i8; BLOCK];
            for (i, word) in w[2..].iter().enumerate() {
                for (j, byte) in word.to_le_bytes().into_iter().enumerate() {
                    q[4 * i + j] = byte as i8;
                }
            }
            (
                Block {
                    d: f32::from_bits(w[0]),
                    q,
                },
                w[1] as i32,
            )
        })
        .collect()
}

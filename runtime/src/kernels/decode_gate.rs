//! The gate of a batch of decode steps (shaders/decode_gate.wgsl): before each step of a
//! batch recorded in one submission, the step's indirect dispatch arguments become its
//! workgroup counts, or zeros once an end token has been fed (see `crate::decode_loop`).

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("decode_gate", no_variants);

/// The most end tokens the gate watches for (a model lists one to a few).
pub const MAX_END_IDS: usize = 15;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    words: u32,
    _p: [u32; 3],
}

/// Gate `counts.len() / 3` dispatches: `args` = `counts`, or zeros when `token` is one of
/// `end_ids` (`[n, id_1 .. id_n]`) or `ended` is set (which the gate then sets).
pub fn launch(
    gpu: &Gpu,
    counts: &wgpu::Buffer,
    words: usize,
    args: &wgpu::Buffer,
    ended: &wgpu::Buffer,
    token: &wgpu::Buffer,
    end_ids: &wgpu::Buffer,
) -> Result<Dispatch> {
    let params = Params {
        words: words as u32,
        _p: [0; 3],
    };
    KERNEL.dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[counts, args, ended, token, end_ids],
        gpu.grid((words as u32).div_ceil(64)),
    )
}

/// The arguments and the new `ended` flag the gate writes.
pub fn reference(counts: &[u32], ended: bool, token: u32, end_ids: &[u32]) -> (Vec<u32>, bool) {
    let stop = ended || end_ids.contains(&token);
    let args = counts.iter().map(|&c| if stop { 0 } else { c }).collect();
    (args, stop)
}

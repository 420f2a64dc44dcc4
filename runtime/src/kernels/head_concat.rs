//! Per head, the columns of `a` then those of `b`: [rows, heads, da] and [rows, heads, db]
//! into [rows, heads, da + db] (RWKV-7's per-head a and b of the delta rule, laid out as the
//! linear recurrence's `ab` input).

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch};
use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    heads: u32,
    da: u32,
    db: u32,
}

#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    heads: usize,
    da: usize,
    db: usize,
) -> Result<Dispatch> {
    let n = rows * heads * (da + db);
    let params = Params {
        n: n as u32,
        heads: heads as u32,
        da: da as u32,
        db: db as u32,
    };
    kernel!("head_concat").dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[a, b, out],
        gpu.grid((n as u32).div_ceil(256)),
    )
}

/// The same on the CPU: `a` [rows, heads, da], `b` [rows, heads, db].
pub fn reference(a: &[f32], b: &[f32], heads: usize, da: usize, db: usize) -> Vec<f32> {
    let groups = a.len() / da.max(1);
    debug_assert_eq!(groups % heads.max(1), 0);
    (0..groups)
        .flat_map(|g| {
            a[g * da..(g + 1) * da]
                .iter()
                .chain(&b[g * db..(g + 1) * db])
                .copied()
        })
        .collect()
}

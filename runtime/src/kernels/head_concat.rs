//! Per head, the columns of `a` then those of `b`: [rows, heads, da] and [rows, heads, db]
//! into [rows, heads, da + db] (RWKV-7's per-head a and b of the delta rule, laid out as the
//! linear recurrence's `ab` input).

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("head_concat", no_variants);

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
    KERNEL.dispatch(
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

/// Per head, the columns of `a` [T, heads * da] then those of `b` [T, heads * db].
#[derive(Debug)]
pub struct HeadConcat {
    pub a: TensorId,
    pub b: TensorId,
    pub out: TensorId,
    pub heads: usize,
}

impl Graph {
    /// Per head, the columns of `a` [T, heads * da] then those of `b` [T, heads * db]:
    /// [T, heads * (da + db)] (RWKV-7's `ab` input of [`Graph::linear_scan`]).
    pub fn head_concat(&mut self, a: TensorId, b: TensorId, heads: usize) -> Result<TensorId> {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if heads == 0
            || sa.len() != 2
            || sb.len() != 2
            || sa[0] != sb[0]
            || !sa[1].is_multiple_of(heads)
            || !sb[1].is_multiple_of(heads)
        {
            return Err(Error::Graph(format!(
                "head concat: {sa:?} and {sb:?} do not split into {heads} heads of the same rows"
            )));
        }
        let out = self.activation(vec![sa[0], sa[1] + sb[1]]);
        self.push(HeadConcat { a, b, out, heads });
        Ok(out)
    }
}

impl Op for HeadConcat {
    fn name(&self) -> &'static str {
        "head_concat"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.a, self.b], vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let rows = cx.shape(self.a)[0];
        let da = cx.shape(self.a)[1] / self.heads;
        let db = cx.shape(self.b)[1] / self.heads;
        let (a, b, out) = (cx.buf(self.a)?, cx.buf(self.b)?, cx.buf(self.out)?);
        cx.push([launch(cx.gpu(), a, b, out, rows, self.heads, da, db)?]);
        Ok(())
    }
}

//! Embedding gather from an f32, packed f16 or bf16, or ggml-block table (dequantized inside
//! the kernel, shaders/quant.wgsl), split by rows when the table is larger than one storage
//! binding.

use bytemuck::{Pod, Zeroable};

use super::{kernel, weight_binding, weight_defs, weight_specs, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::{Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;
use crate::tensor::{DType, GpuWeight};

pub const KERNEL: Kernel = kernel!("embedding", variants);

/// Every weight dtype.
pub fn variants() -> Vec<ShaderDefs> {
    weight_specs().into_iter().map(|(_, d)| d).collect()
}

/// Rows of `table` [vocab, dim] gathered at `ids` [T]: out [T, dim].
#[derive(Debug)]
pub struct Embedding {
    pub ids: TensorId,
    pub table: TensorId,
    pub out: TensorId,
}

impl Graph {
    pub fn embedding(&mut self, table: TensorId, ids: TensorId) -> Result<TensorId> {
        let n = self.shape(ids)[0];
        let dim = self.shape(table)[1];
        let out = self.activation(vec![n, dim]);
        self.push(Embedding { ids, table, out });
        Ok(out)
    }
}

/// The embedding op's name: [`crate::Graph::weight_bytes_read`] counts the rows it looks up,
/// not its whole table.
pub const OP_NAME: &str = "embedding";

impl Op for Embedding {
    fn name(&self) -> &'static str {
        OP_NAME
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.ids, self.table], vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let n = cx.shape(self.ids)[0];
        let (ids, table, out) = (cx.buf(self.ids)?, cx.weight(self.table)?, cx.buf(self.out)?);
        cx.push(launch(cx.gpu(), ids, table, out, n)?);
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_tokens: u32,
    dim: u32,
    row_start: u32,
    rows: u32,
}

/// One dispatch per chunk of the table; together they write every row of `out` [n_tokens, dim].
pub fn launch(
    gpu: &Gpu,
    ids: &wgpu::Buffer,
    table: &GpuWeight,
    out: &wgpu::Buffer,
    n_tokens: usize,
) -> Result<Vec<Dispatch>> {
    let defs = weight_defs(ShaderDefs::new(), table, "embedding")?;
    // One invocation per value, or per 32-value group of a quantized table.
    let per_invocation = if matches!(table.dtype, DType::Quant(_)) {
        32
    } else {
        1
    };
    let n = (n_tokens * table.cols / per_invocation) as u32;
    table
        .chunks
        .iter()
        .map(|c| {
            let params = Params {
                n_tokens: n_tokens as u32,
                dim: table.cols as u32,
                row_start: c.row_start as u32,
                rows: c.rows as u32,
            };
            KERNEL.dispatch_resources(
                gpu,
                &defs,
                &params,
                &[
                    Some(ids.as_entire_binding()),
                    weight_binding(c),
                    Some(out.as_entire_binding()),
                ],
                gpu.grid(n.div_ceil(256)),
            )
        })
        .collect()
}

pub fn reference(ids: &[u32], table: &[f32], dim: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| {
            table[id as usize * dim..(id as usize + 1) * dim]
                .iter()
                .copied()
        })
        .collect()
}

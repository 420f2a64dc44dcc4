//! What every op of a graph is to the rest of the runtime: a name, the tensors it reads and
//! writes (all the planner needs), and its lowering into kernel launches. Each op lives in its
//! kernel module (kernels/*.rs) with its parameters, its validation (the `Graph` builder that
//! adds it) and its choice of kernel variant and scratch; the executor only loops over ops.

use std::fmt;

use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::TensorId;
use crate::kernels::elementwise::ElementwiseOp;

pub trait Op: fmt::Debug {
    /// A short name for reports and tests, e.g. `linear` or `moe_route`.
    fn name(&self) -> &'static str;

    /// Tensors the op reads and tensors it writes (an in-place op lists its tensor in both).
    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>);

    /// Choose the kernels (and any scratch) for this op's shapes on `cx`'s device and push
    /// their dispatches, in the order they must run.
    fn lower(&self, cx: &mut Lowering) -> Result<()>;

    /// The plain elementwise op this is, if it is one: what the fusion of elementwise chains
    /// (runtime/src/fusion.rs) merges.
    fn as_elementwise(&self) -> Option<&ElementwiseOp> {
        None
    }
}

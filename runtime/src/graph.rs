//! The graph an architecture builds: tensors (activations, inputs, weights, states, constants)
//! and ops in execution order. This file holds what every op shares; each op, with the builder
//! method that checks its shapes and adds it (`impl Graph` blocks), lives in its kernel module
//! (kernels/*.rs), so a misshaped model fails at build time with a clear error rather than on
//! the GPU. Only the executor turns a graph into GPU work.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::op::Op;
use crate::tensor::{DType, GpuWeight};

pub type TensorId = usize;

#[derive(Debug, Clone)]
pub enum Source {
    /// Produced and consumed inside one run; the planner assigns it a pooled buffer.
    Activation,
    /// Written by the caller before each run (token ids).
    Input(String),
    Weight(Arc<GpuWeight>),
    /// Persistent per-sequence state (a KV cache), bound from a [`crate::state::StateStore`].
    State(String),
    /// Data fixed when the graph is built (a block mask), uploaded once per plan.
    Constant(Arc<Vec<u32>>),
    /// An intermediate value of a fused chain of ops (runtime/src/fusion.rs), kept in
    /// registers: no op reads or writes it any more, and it has no buffer.
    Fused,
}

#[derive(Debug, Clone)]
pub struct TensorDesc {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub source: Source,
}

impl TensorDesc {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug, Default)]
pub struct Graph {
    pub tensors: Vec<TensorDesc>,
    pub ops: Vec<Box<dyn Op>>,
    pub outputs: Vec<TensorId>,
    /// Set for a batched step of several sequences ([`Graph::batched`]).
    pub batch: Option<BatchGraph>,
}

/// What a batched graph's ops share: its rows come from the plan's batch uniform
/// (shaders/batch.wgsl), the block table is the state [`BLOCK_TABLE`] [slots * table_width].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchGraph {
    pub table: TensorId,
    pub shape: crate::arch::BatchShape,
}

/// The name of a batched session's block-table state (written as sequences open and close,
/// shared by every plan).
pub const BLOCK_TABLE: &str = "block_table";

/// The shape-mismatch error of a builder: `context` names what was checked.
pub(crate) fn mismatch(context: &str, expected: &[usize], got: &[usize]) -> Error {
    Error::ShapeMismatch {
        context: context.to_string(),
        expected: expected.to_vec(),
        got: got.to_vec(),
    }
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// A graph for a batched step of `shape` (see [`crate::batch`]): the ops that depend on a
    /// token's sequence (RoPE and cache writes, attention, the gather of sampled rows and
    /// sampling) read each row's position, pool row and settings from the batch.
    pub fn batched(shape: crate::arch::BatchShape) -> Self {
        let mut g = Self::default();
        let table = g.add(
            vec![shape.slots * shape.table_width],
            DType::U32,
            Source::State(BLOCK_TABLE.into()),
        );
        g.batch = Some(BatchGraph { table, shape });
        g
    }

    /// The graph an architecture builds for `head`: [`Graph::batched`] for a batched step.
    pub fn for_head(head: crate::arch::Head) -> Self {
        match head {
            crate::arch::Head::Batch(shape) => Self::batched(shape),
            _ => Self::new(),
        }
    }

    /// The shape of a recurrent state that is `per_sequence` for one sequence: in a batched
    /// graph one such state per slot ([`crate::state::in_slots`], as `StateSpec::in_slots`
    /// allocates it).
    pub fn recurrent_shape(&self, per_sequence: &[usize]) -> Vec<usize> {
        match self.batch {
            Some(b) => crate::state::in_slots(per_sequence, b.shape.slots),
            None => per_sequence.to_vec(),
        }
    }

    /// A recurrent state of `per_sequence` elements per sequence ([`Graph::recurrent_shape`]).
    pub fn recurrent_state(&mut self, name: &str, per_sequence: &[usize]) -> TensorId {
        let shape = self.recurrent_shape(per_sequence);
        self.state(name, &shape)
    }

    /// Each attention layer's KV layout in this graph: `own(capacity)`, the layers' layouts
    /// for one sequence of `capacity` tokens; in a batched step, whose `capacity` is the rows
    /// of its pool, the batch's for sequences of its context
    /// ([`crate::batch::batch_layouts`]).
    pub fn kv_layouts(
        &self,
        capacity: usize,
        own: impl Fn(usize) -> Result<Vec<crate::kv::KvLayout>>,
    ) -> Result<Vec<crate::kv::KvLayout>> {
        Ok(match self.batch {
            Some(b) => {
                let context = b.shape.context;
                crate::batch::batch_layouts(&own(context)?, context, capacity)
            }
            None => own(capacity)?,
        })
    }

    /// A batched graph's sequences (picks): the recurrent ops run one workgroup layer per
    /// sequence over its rows. None outside a batch.
    pub(crate) fn picks(&self) -> Option<usize> {
        self.batch.map(|b| b.shape.picks)
    }

    pub(crate) fn add(&mut self, shape: Vec<usize>, dtype: DType, source: Source) -> TensorId {
        self.tensors.push(TensorDesc {
            shape,
            dtype,
            source,
        });
        self.tensors.len() - 1
    }

    /// Append an op (builders call this after checking its inputs).
    pub(crate) fn push(&mut self, op: impl Op + 'static) {
        self.ops.push(Box::new(op));
    }

    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.tensors[t].shape
    }

    pub fn numel(&self, t: TensorId) -> usize {
        self.tensors[t].numel()
    }

    pub(crate) fn weight_of(&self, t: TensorId) -> Result<&Arc<GpuWeight>> {
        match &self.tensors[t].source {
            Source::Weight(w) => Ok(w),
            _ => Err(Error::Graph(format!("tensor {t} is not a weight"))),
        }
    }

    /// Bytes of weights one run of this graph reads: each weight an op other than an
    /// embedding lookup reads, whole; of a table that is only looked up, the rows looked up
    /// (so an untied embedding table counts one row per token, a tied one whole). A weight
    /// bound to several tensors counts once.
    pub fn weight_bytes_read(&self) -> u64 {
        // Per weight: read whole, or the rows looked up.
        let mut read: HashMap<*const GpuWeight, (&GpuWeight, bool, u64)> = HashMap::new();
        for op in &self.ops {
            let (reads, _) = op.reads_writes();
            let lookup = op.name() == crate::kernels::embedding::OP_NAME;
            let rows: u64 = match lookup {
                true => reads
                    .iter()
                    .map(|&t| match self.tensors[t].source {
                        Source::Weight(_) => 0,
                        _ => self.numel(t) as u64,
                    })
                    .sum(),
                false => 0,
            };
            for &t in &reads {
                if let Source::Weight(w) = &self.tensors[t].source {
                    let e = read.entry(Arc::as_ptr(w)).or_insert((w, false, 0));
                    e.1 |= !lookup;
                    e.2 += rows;
                }
            }
        }
        read.values()
            .map(|&(w, whole, rows)| match whole {
                true => w.bytes(),
                false => (w.bytes() * rows.min(w.rows as u64)).div_ceil(w.rows.max(1) as u64),
            })
            .sum()
    }

    /// A new f32 activation.
    pub(crate) fn activation(&mut self, shape: Vec<usize>) -> TensorId {
        self.add(shape, DType::F32, Source::Activation)
    }

    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> TensorId {
        self.add(shape.to_vec(), dtype, Source::Input(name.to_string()))
    }

    pub fn weight(&mut self, w: &Arc<GpuWeight>) -> TensorId {
        self.add(vec![w.rows, w.cols], w.dtype, Source::Weight(w.clone()))
    }

    pub fn state(&mut self, name: &str, shape: &[usize]) -> TensorId {
        self.add(shape.to_vec(), DType::F32, Source::State(name.to_string()))
    }

    /// A u32 counter state (see `StateSpec::counters`).
    pub fn counters(&mut self, name: &str, n: usize) -> TensorId {
        self.add(vec![n], DType::U32, Source::State(name.to_string()))
    }

    /// A constant u32 array, uploaded when the graph is planned.
    pub fn constant(&mut self, data: Vec<u32>) -> TensorId {
        self.add(
            vec![data.len()],
            DType::U32,
            Source::Constant(Arc::new(data)),
        )
    }

    pub fn output(&mut self, t: TensorId) {
        self.outputs.push(t);
    }

    /// Check that a vector weight has `n` entries.
    pub(crate) fn expect_vector(&self, w: TensorId, n: usize, what: &str) -> Result<()> {
        let s = self.shape(w);
        if s.iter().product::<usize>() != n {
            return Err(mismatch(
                &format!("{what} ({})", self.weight_of(w)?.name),
                &[n],
                s,
            ));
        }
        Ok(())
    }
}

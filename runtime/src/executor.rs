//! The executor: plans a graph once into buffers, bind groups and dispatches (a [`Plan`]),
//! then replays it with a new [`Step`] uniform for every run. Buffers come from the liveness
//! planner; each op lowers itself (see [`crate::op::Op`]) into a [`Lowering`], the context
//! that hands it its tensors' buffers, shapes, the step uniform and shared scratch.

use std::collections::HashMap;
use std::sync::Arc;

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::graph::{Graph, Source, TensorId};
use crate::kernels::{self, Dispatch, Step};
use crate::planner::{self, Assignment};
use crate::readback;
use crate::state::StateStore;
use crate::tensor::{check_binding, DType, GpuTensor, GpuWeight};

pub struct Plan {
    gpu: Arc<Gpu>,
    step: GpuBuffer,
    /// A batched graph's rows ([`crate::batch::BatchRows`]), written before each run.
    batch: Option<GpuBuffer>,
    dispatches: Vec<Dispatch>,
    inputs: HashMap<String, GpuTensor>,
    outputs: Vec<GpuTensor>,
    /// One mappable buffer per output, reused by every readback of this plan.
    staging: Vec<GpuBuffer>,
    /// Every buffer the bind groups use (activations, constants, scratch): the bind groups
    /// keep them alive, this keeps them on the device's byte count while the plan lives.
    _held: Vec<GpuBuffer>,
    /// Bytes of pooled activation buffers after liveness reuse.
    pub activation_bytes: u64,
    /// Bytes the activations would take without reuse.
    pub activation_bytes_unplanned: u64,
}

/// What a tensor is bound to in a plan.
enum Bound {
    /// A value fused away (`Source::Fused`): nothing to bind.
    Nothing,
    Buffer(GpuBuffer),
    Weight(Arc<GpuWeight>),
}

/// Every tensor's binding: pooled activation slots (dedicated buffers for outputs), new input
/// buffers (also returned by name), weights, uploaded constants and the sequence's states.
fn bind(
    gpu: &Gpu,
    graph: &Graph,
    assignment: &Assignment,
    states: &StateStore,
) -> Result<(Vec<Bound>, HashMap<String, GpuTensor>)> {
    let mut slots = Vec::new();
    for (i, &bytes) in assignment.slot_bytes.iter().enumerate() {
        check_binding(gpu, &format!("activation slot {i}"), bytes)?;
        slots.push(gpu.storage_buffer("activation", bytes));
    }
    let mut inputs = HashMap::new();
    let mut bound = Vec::with_capacity(graph.tensors.len());
    for (t, desc) in graph.tensors.iter().enumerate() {
        bound.push(match &desc.source {
            Source::Activation => match assignment.slot_of[t] {
                Some(s) => Bound::Buffer(slots[s].clone()),
                None => {
                    Bound::Buffer(GpuTensor::new(gpu, "output", &desc.shape, desc.dtype)?.buffer)
                }
            },
            Source::Input(name) => {
                let tensor = GpuTensor::new(gpu, name, &desc.shape, desc.dtype)?;
                let b = tensor.buffer.clone();
                inputs.insert(name.clone(), tensor);
                Bound::Buffer(b)
            }
            Source::Weight(w) => Bound::Weight(w.clone()),
            Source::Fused => Bound::Nothing,
            Source::Constant(words) => {
                let bytes: &[u8] = bytemuck::cast_slice(words);
                check_binding(gpu, "constant", bytes.len() as u64)?;
                Bound::Buffer(gpu.storage_buffer_init("constant", bytes))
            }
            Source::State(name) => {
                let s = states.get(name)?;
                if s.shape != desc.shape {
                    return Err(Error::ShapeMismatch {
                        context: format!("state {name}"),
                        expected: desc.shape.clone(),
                        got: s.shape.clone(),
                    });
                }
                Bound::Buffer(s.buffer.clone())
            }
        });
    }
    Ok((bound, inputs))
}

impl Plan {
    /// Plan buffers by liveness, bind every tensor, then let each op lower itself.
    pub fn new(gpu: &Arc<Gpu>, graph: &Graph, states: &StateStore) -> Result<Plan> {
        let assignment = planner::plan(graph);
        let (bound, inputs) = bind(gpu, graph, &assignment, states)?;
        let outputs = graph
            .outputs
            .iter()
            .map(|&t| match &bound[t] {
                Bound::Buffer(b) => Ok(GpuTensor {
                    buffer: b.clone(),
                    shape: graph.tensors[t].shape.clone(),
                    dtype: graph.tensors[t].dtype,
                }),
                Bound::Weight(_) => Err(Error::Graph("a weight cannot be a graph output".into())),
                Bound::Nothing => Err(Error::Graph(
                    "a fused value cannot be a graph output".into(),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let step = gpu.uniform_buffer_init("step", bytemuck::bytes_of(&Step::default()));
        let batch = graph.batch.map(|_| {
            let rows = <crate::batch::BatchRows as bytemuck::Zeroable>::zeroed();
            gpu.uniform_buffer_init("batch rows", bytemuck::bytes_of(&rows))
        });
        let mut cx = Lowering {
            gpu,
            graph,
            bound: &bound,
            step: &step,
            batch: batch.as_deref(),
            dispatches: Vec::new(),
            scratch: HashMap::new(),
            scratch_made: Vec::new(),
        };
        for op in &graph.ops {
            op.lower(&mut cx)?;
        }
        let dispatches = cx.dispatches;
        let mut held = cx.scratch_made;
        held.extend(bound.iter().filter_map(|b| match b {
            Bound::Buffer(b) => Some(b.clone()),
            Bound::Weight(_) | Bound::Nothing => None,
        }));
        let unplanned = graph
            .tensors
            .iter()
            .filter(|d| matches!(d.source, Source::Activation))
            .map(|d| d.dtype.bytes(d.numel()))
            .sum();
        gpu.check()?;
        Ok(Plan {
            gpu: gpu.clone(),
            step,
            batch,
            dispatches,
            inputs,
            staging: outputs
                .iter()
                .map(|t| readback::staging_buffer(gpu, t.bytes()))
                .collect(),
            outputs,
            _held: held,
            activation_bytes: assignment.total_bytes(),
            activation_bytes_unplanned: unplanned,
        })
    }

    pub fn write_input(&self, name: &str, data: &[u32]) -> Result<()> {
        let t = self
            .inputs
            .get(name)
            .ok_or_else(|| Error::Graph(format!("the graph has no input named {name}")))?;
        if t.numel() != data.len() {
            return Err(Error::ShapeMismatch {
                context: format!("input {name}"),
                expected: t.shape.clone(),
                got: vec![data.len()],
            });
        }
        self.gpu
            .write_padded(&t.buffer, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Set the rows of a batched graph's next run.
    pub fn write_batch(&self, rows: &crate::batch::BatchRows) -> Result<()> {
        let b = self
            .batch
            .as_ref()
            .ok_or_else(|| Error::Graph("the plan is not of a batched graph".into()))?;
        self.gpu.queue.write_buffer(b, 0, bytemuck::bytes_of(rows));
        Ok(())
    }

    /// Replay the plan with new step values. Returns as soon as the work is submitted.
    pub fn run(&self, step: &Step) -> Result<()> {
        self.gpu.check()?;
        self.gpu
            .queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(step));
        kernels::submit(&self.gpu, &self.dispatches);
        Ok(())
    }

    /// The buffer of input `name`, if the graph has one.
    pub fn input(&self, name: &str) -> Option<&wgpu::Buffer> {
        self.inputs.get(name).map(|t| &*t.buffer)
    }

    /// The [`Step`] uniform every dispatch reads.
    pub fn step(&self) -> &wgpu::Buffer {
        &self.step
    }

    pub fn output(&self, i: usize) -> &GpuTensor {
        &self.outputs[i]
    }

    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len()
    }

    /// The plan's recorded dispatches, in order (for profiling).
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    async fn read_bytes(&self, i: usize) -> Result<Vec<u8>> {
        let t = &self.outputs[i];
        readback::read_into(&self.gpu, &t.buffer, 0, self.staging[i].clone(), t.bytes()).await
    }

    pub async fn read_f32(&self, i: usize) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(i).await?))
    }

    pub async fn read_u32(&self, i: usize) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(i).await?))
    }
}

/// What an op gets when it lowers itself: its tensors' buffers and shapes, the step uniform,
/// shared scratch, and the list its dispatches go to. References it hands out live as long as
/// the plan being built, so an op may hold them while it pushes.
pub struct Lowering<'a> {
    gpu: &'a Arc<Gpu>,
    graph: &'a Graph,
    bound: &'a [Bound],
    step: &'a wgpu::Buffer,
    batch: Option<&'a wgpu::Buffer>,
    dispatches: Vec<Dispatch>,
    /// Scratch buffers by name, shared by every op that asks for the same name (their
    /// dispatches run in order, so one layer's scratch is free again for the next).
    scratch: HashMap<&'static str, GpuTensor>,
    /// Every scratch buffer made, replaced ones included (earlier dispatches still bind them).
    scratch_made: Vec<GpuBuffer>,
}

impl<'a> Lowering<'a> {
    pub fn gpu(&self) -> &'a Arc<Gpu> {
        self.gpu
    }

    /// The plan's [`Step`] uniform.
    pub fn step(&self) -> &'a wgpu::Buffer {
        self.step
    }

    /// The rows uniform of a batched graph (shaders/batch.wgsl).
    pub fn batch(&self) -> Result<&'a wgpu::Buffer> {
        self.batch
            .ok_or_else(|| Error::Graph("a batched op in a graph without batch rows".into()))
    }

    pub fn shape(&self, t: TensorId) -> &'a [usize] {
        self.graph.shape(t)
    }

    pub fn numel(&self, t: TensorId) -> usize {
        self.graph.numel(t)
    }

    /// The buffer bound to `t` (a weight's only chunk for a weight).
    pub fn buf(&self, t: TensorId) -> Result<&'a wgpu::Buffer> {
        match &self.bound[t] {
            Bound::Buffer(b) => Ok(b),
            Bound::Weight(w) => w.single(self.gpu),
            Bound::Nothing => Err(Error::Graph(format!("tensor {t} was fused away"))),
        }
    }

    pub fn opt_buf(&self, t: Option<TensorId>) -> Result<Option<&'a wgpu::Buffer>> {
        t.map(|t| self.buf(t)).transpose()
    }

    pub fn weight(&self, t: TensorId) -> Result<&'a Arc<GpuWeight>> {
        match &self.bound[t] {
            Bound::Weight(w) => Ok(w),
            Bound::Buffer(_) | Bound::Nothing => {
                Err(Error::Graph(format!("tensor {t} should be a weight")))
            }
        }
    }

    /// The words of a constant tensor (None for any other source).
    pub fn constant(&self, t: TensorId) -> Option<&'a [u32]> {
        match &self.graph.tensors[t].source {
            Source::Constant(words) => Some(words.as_slice()),
            _ => None,
        }
    }

    /// A scratch buffer of at least `words` 4-byte words, shared by every op that asks for
    /// `name`; a larger request replaces it (earlier dispatches keep the old one).
    pub fn scratch(&mut self, name: &'static str, words: usize) -> Result<GpuBuffer> {
        match self.scratch.get(name) {
            Some(t) if t.numel() >= words => Ok(t.buffer.clone()),
            _ => {
                let t = GpuTensor::new(self.gpu, name, &[words], DType::U32)?;
                let buffer = t.buffer.clone();
                self.scratch_made.push(buffer.clone());
                self.scratch.insert(name, t);
                Ok(buffer)
            }
        }
    }

    /// Append dispatches; they run in the order pushed.
    pub fn push(&mut self, dispatches: impl IntoIterator<Item = Dispatch>) {
        self.dispatches.extend(dispatches);
    }
}

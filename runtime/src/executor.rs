//! The executor: lowers a graph once into buffers, bind groups and dispatches (a [`Plan`]),
//! then replays it with a new [`Step`] uniform for every run.

use std::collections::HashMap;
use std::sync::Arc;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::graph::{Graph, Op, Source, TensorId};
use crate::kernels::{self, copy::CopyParams, Dispatch, Step};
use crate::planner;
use crate::readback;
use crate::state::StateStore;
use crate::tensor::{check_binding, DType, GpuTensor, GpuWeight};

pub struct Plan {
    gpu: Arc<Gpu>,
    step: wgpu::Buffer,
    dispatches: Vec<Dispatch>,
    inputs: HashMap<String, GpuTensor>,
    outputs: Vec<GpuTensor>,
    /// One mappable buffer per output, reused by every readback of this plan.
    staging: Vec<wgpu::Buffer>,
    /// Bytes of pooled activation buffers after liveness reuse.
    pub activation_bytes: u64,
    /// Bytes the activations would take without reuse.
    pub activation_bytes_unplanned: u64,
}

enum Bound {
    Buffer(wgpu::Buffer),
    Weight(Arc<GpuWeight>),
}

impl Plan {
    pub fn new(gpu: &Arc<Gpu>, graph: &Graph, states: &StateStore) -> Result<Plan> {
        let assignment = planner::plan(graph);
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
                    None => Bound::Buffer(
                        GpuTensor::new(gpu, "output", &desc.shape, desc.dtype)?.buffer,
                    ),
                },
                Source::Input(name) => {
                    let tensor = GpuTensor::new(gpu, name, &desc.shape, desc.dtype)?;
                    let b = tensor.buffer.clone();
                    inputs.insert(name.clone(), tensor);
                    Bound::Buffer(b)
                }
                Source::Weight(w) => Bound::Weight(w.clone()),
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
            })
            .collect::<Result<Vec<_>>>()?;
        let step = gpu.uniform_buffer_init("step", bytemuck::bytes_of(&Step::default()));
        let mut lower = Lowering {
            gpu,
            graph,
            bound: &bound,
            step: &step,
            dispatches: Vec::new(),
            partial: None,
            scan_scratch: None,
        };
        for op in &graph.ops {
            lower.op(op)?;
        }
        let dispatches = lower.dispatches;
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
            dispatches,
            inputs,
            staging: outputs
                .iter()
                .map(|t| readback::staging_buffer(gpu, t.bytes()))
                .collect(),
            outputs,
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

    /// Replay the plan with new step values. Returns as soon as the work is submitted.
    pub fn run(&self, step: &Step) -> Result<()> {
        self.gpu.check()?;
        self.gpu
            .queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(step));
        kernels::submit(&self.gpu, &self.dispatches);
        Ok(())
    }

    pub fn output(&self, i: usize) -> &GpuTensor {
        &self.outputs[i]
    }

    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len()
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

struct Lowering<'a> {
    gpu: &'a Arc<Gpu>,
    graph: &'a Graph,
    bound: &'a [Bound],
    step: &'a wgpu::Buffer,
    dispatches: Vec<Dispatch>,
    /// Decode attention's per-piece partial results, shared by every layer (their
    /// dispatches run in order).
    partial: Option<GpuTensor>,
    /// The chunked linear scan's scratch, shared the same way.
    scan_scratch: Option<GpuTensor>,
}

/// Up to this many tokens a linear recurrence runs token by token (decode); longer runs take
/// the chunked scan.
const RECURRENT_TOKENS: usize = 8;

impl Lowering<'_> {
    fn partial(&mut self, floats: usize) -> Result<wgpu::Buffer> {
        match &self.partial {
            Some(t) if t.numel() >= floats => Ok(t.buffer.clone()),
            _ => {
                let t = GpuTensor::new(self.gpu, "attention partials", &[floats], DType::F32)?;
                let buffer = t.buffer.clone();
                self.partial = Some(t);
                Ok(buffer)
            }
        }
    }

    fn scan_scratch(&mut self, floats: usize) -> Result<wgpu::Buffer> {
        match &self.scan_scratch {
            Some(t) if t.numel() >= floats => Ok(t.buffer.clone()),
            _ => {
                let t = GpuTensor::new(self.gpu, "linear scan scratch", &[floats], DType::F32)?;
                let buffer = t.buffer.clone();
                self.scan_scratch = Some(t);
                Ok(buffer)
            }
        }
    }

    fn opt_buf(&self, t: Option<TensorId>) -> Result<Option<&wgpu::Buffer>> {
        t.map(|t| self.buf(t)).transpose()
    }

    fn buf(&self, t: TensorId) -> Result<&wgpu::Buffer> {
        match &self.bound[t] {
            Bound::Buffer(b) => Ok(b),
            Bound::Weight(w) => w.single(),
        }
    }

    fn weight(&self, t: TensorId) -> Result<&Arc<GpuWeight>> {
        match &self.bound[t] {
            Bound::Weight(w) => Ok(w),
            Bound::Buffer(_) => Err(Error::Graph(format!("tensor {t} should be a weight"))),
        }
    }

    fn shape(&self, t: TensorId) -> &[usize] {
        self.graph.shape(t)
    }

    fn op(&mut self, op: &Op) -> Result<()> {
        use kernels::*;
        let gpu = self.gpu;
        match *op {
            Op::Embedding { ids, table, out } => {
                let n = self.shape(ids)[0];
                let d =
                    embedding::launch(gpu, self.buf(ids)?, self.weight(table)?, self.buf(out)?, n)?;
                self.dispatches.extend(d);
            }
            Op::RmsNorm {
                x,
                w,
                bias,
                out,
                eps,
                groups,
                centered,
            } => {
                let s = self.shape(x);
                let kind = rms_norm::NormKind {
                    centered,
                    bias: self.opt_buf(bias)?,
                };
                let d = rms_norm::launch_norm(
                    gpu,
                    self.buf(x)?,
                    self.buf(w)?,
                    self.buf(out)?,
                    s[0],
                    s[1] / groups,
                    eps,
                    groups,
                    kind,
                )?;
                self.dispatches.push(d);
            }
            Op::Linear { x, w, bias, out } => {
                let m = self.shape(x)[0];
                let bias = bias.map(|b| self.buf(b)).transpose()?;
                let w = self.weight(w)?;
                let d = if m == 1 {
                    matvec::launch(gpu, self.buf(x)?, w, bias, self.buf(out)?)?
                } else {
                    matmul::launch(gpu, self.buf(x)?, w, bias, self.buf(out)?, m)?
                };
                self.dispatches.extend(d);
            }
            Op::Rope {
                x,
                inv_freq,
                heads,
                head_dim,
                rot_dims,
            } => {
                let n = self.shape(x)[0];
                let d = rope::launch(
                    gpu,
                    self.step,
                    self.buf(x)?,
                    self.buf(inv_freq)?,
                    n,
                    heads,
                    head_dim,
                    rot_dims,
                )?;
                self.dispatches.push(d);
            }
            Op::CacheWrite { src, cache, layout } => {
                let s = self.shape(src);
                let d = cache_write::launch(
                    gpu,
                    self.step,
                    self.buf(src)?,
                    self.buf(cache)?,
                    layout,
                    s[0],
                    s[1],
                )?;
                self.dispatches.push(d);
            }
            Op::Attention {
                q,
                k_cache,
                v_cache,
                out,
                shape,
                causal,
                layout,
                inv_freq,
                mask,
            } => {
                let n = self.shape(q)[0];
                // The tiled kernel must fit the keys its queries stream (CPU adapters cap an
                // invocation's loop iterations); else one workgroup per query.
                let mask_words = mask.and_then(|m| match &self.graph.tensors[m].source {
                    Source::Constant(words) => Some(words.as_slice()),
                    _ => None,
                });
                let max_keys = attention::prefill_key_span(&layout, shape.heads, mask_words);
                // Decode splits the cache across workgroups; a row-wise prefill already has a
                // workgroup per query and head, and keeps one piece each.
                let decode = n == 1 && causal;
                let partial = if decode || !attention::tiled_fits(gpu, shape.head_dim, max_keys) {
                    let splits = match decode {
                        true => decode_attention::max_splits_for(layout.rows),
                        false => 1,
                    };
                    let floats = decode_attention::partial_floats(&shape, splits, n);
                    Some((self.partial(floats)?, splits))
                } else {
                    None
                };
                let io = attention::AttnBuffers {
                    q: self.buf(q)?,
                    k_cache: self.buf(k_cache)?,
                    v_cache: self.buf(v_cache)?,
                    out: self.buf(out)?,
                    inv_freq: match inv_freq {
                        Some(f) => Some((self.buf(f)?, self.graph.tensors[f].numel())),
                        None => None,
                    },
                    mask: match mask {
                        Some(m) => Some((self.buf(m)?, attention::mask_blocks(layout.rows))),
                        None => None,
                    },
                };
                match &partial {
                    Some((buffer, splits)) => {
                        let d = decode_attention::launch(
                            gpu, self.step, &io, buffer, shape, layout, *splits, n, causal,
                        )?;
                        self.dispatches.extend(d);
                    }
                    None => {
                        let d = attention::launch(gpu, self.step, &io, shape, layout, n, causal)?;
                        self.dispatches.push(d);
                    }
                }
            }
            Op::Conv1d {
                x,
                w,
                bias,
                state,
                out,
                kernel,
                silu,
            } => {
                let s = self.shape(x);
                let d = conv1d::launch(
                    gpu,
                    self.buf(x)?,
                    self.buf(w)?,
                    self.opt_buf(bias)?,
                    self.buf(state)?,
                    self.buf(out)?,
                    s[0],
                    s[1],
                    kernel,
                    silu,
                )?;
                self.dispatches.extend(d);
            }
            Op::LinearScan {
                q,
                k,
                v,
                decay,
                consts,
                ab,
                state,
                out,
                shape,
            } => {
                let n = self.shape(q)[0];
                let scratch = match n > RECURRENT_TOKENS {
                    true => Some(self.scan_scratch(linear_scan::scratch_floats(
                        &shape,
                        n,
                        linear_scan::CHUNK,
                    ))?),
                    false => None,
                };
                let b = linear_scan::ScanBuffers {
                    q: self.buf(q)?,
                    k: self.buf(k)?,
                    v: self.buf(v)?,
                    decay: self.opt_buf(decay)?,
                    consts: self.opt_buf(consts)?,
                    ab: self.opt_buf(ab)?,
                    state: self.buf(state)?,
                    out: self.buf(out)?,
                };
                let d = match &scratch {
                    Some(s) => {
                        linear_scan::launch_chunked(gpu, &b, s, &shape, n, linear_scan::CHUNK)?
                            .to_vec()
                    }
                    None => linear_scan::launch_recurrent(gpu, &b, &shape, n)?,
                };
                self.dispatches.extend(d);
            }
            Op::Wkv4 {
                k,
                v,
                w,
                u,
                state,
                out,
            } => {
                let (n, c) = (self.shape(k)[0], self.shape(k)[1]);
                let scratch = match n > RECURRENT_TOKENS {
                    true => Some(self.scan_scratch(wkv4::scratch_floats(c, n, wkv4::CHUNK))?),
                    false => None,
                };
                let b = wkv4::Wkv4Buffers {
                    k: self.buf(k)?,
                    v: self.buf(v)?,
                    w: self.buf(w)?,
                    u: self.buf(u)?,
                    state: self.buf(state)?,
                    out: self.buf(out)?,
                };
                let d = match &scratch {
                    Some(s) => wkv4::launch_chunked(gpu, &b, s, c, n, wkv4::CHUNK)?,
                    None => wkv4::launch_recurrent(gpu, &b, c, n)?,
                };
                self.dispatches.extend(d);
            }
            Op::Elementwise { op, a, b, out } => {
                let n = self.graph.tensors[a].numel();
                let b_len = self.graph.tensors[b].numel();
                let (a, b, out) = (self.buf(a)?, self.buf(b)?, self.buf(out)?);
                let d = elementwise::launch(gpu, op, a, b, out, n, b_len)?;
                self.dispatches.push(d);
            }
            Op::HeadConcat { a, b, out, heads } => {
                let rows = self.shape(a)[0];
                let da = self.shape(a)[1] / heads;
                let db = self.shape(b)[1] / heads;
                let (a, b, out) = (self.buf(a)?, self.buf(b)?, self.buf(out)?);
                let d = head_concat::launch(gpu, a, b, out, rows, heads, da, db)?;
                self.dispatches.push(d);
            }
            Op::HeadDot {
                a,
                b,
                v,
                out,
                heads,
            } => {
                let rows = self.shape(a)[0];
                let dk = self.shape(a)[1] / heads;
                let dv = self.shape(v)[1] / heads;
                let (a, b, v, out) = (self.buf(a)?, self.buf(b)?, self.buf(v)?, self.buf(out)?);
                let d = head_dot::launch(gpu, a, b, v, out, rows, heads, dk, dv)?;
                self.dispatches.push(d);
            }
            Op::MoeRoute {
                logits,
                route,
                k,
                renormalize,
            } => {
                let s = self.shape(logits);
                let (t, e) = (s[0], s[1]);
                let d = moe::launch_route(
                    gpu,
                    self.buf(logits)?,
                    self.buf(route)?,
                    t,
                    e,
                    k,
                    renormalize,
                )?;
                self.dispatches.push(d);
            }
            Op::MoePermute {
                route,
                perm,
                counts,
                experts,
                k,
            } => {
                let t = self.shape(route)[0];
                let (route, perm, counts) = (self.buf(route)?, self.buf(perm)?, self.buf(counts)?);
                let d = moe::launch_permute(gpu, route, perm, counts, t, experts, k)?;
                self.dispatches.push(d);
            }
            Op::MoeLinear {
                x,
                w,
                perm,
                out,
                k,
                gather,
            } => {
                let rows = self.shape(out)[0];
                let w = self.weight(w)?;
                let (x, perm, out) = (self.buf(x)?, self.buf(perm)?, self.buf(out)?);
                // One token: a matvec per chosen expert; else 64-row tiles per expert.
                let d = if rows == k {
                    matvec::launch_grouped(gpu, x, w, perm, out, rows, gather)?
                } else {
                    let tiles = moe::max_tiles(rows, w.experts);
                    let offset = moe::tiles_offset(rows, w.experts);
                    matmul::launch_grouped(gpu, x, w, perm, out, rows, offset, tiles, gather)?
                };
                self.dispatches.extend(d);
            }
            Op::MoeCombine {
                y,
                route,
                perm,
                shared,
                out,
                k,
            } => {
                let (t, width) = (self.shape(out)[0], self.shape(out)[1]);
                let shared = match shared {
                    Some((s, g)) => Some((self.buf(s)?, self.buf(g)?)),
                    None => None,
                };
                let b = moe::CombineBuffers {
                    route: self.buf(route)?,
                    perm: self.buf(perm)?,
                    y: self.buf(y)?,
                    shared,
                    out: self.buf(out)?,
                };
                let d = moe::launch_combine(gpu, &b, t, width, k)?;
                self.dispatches.push(d);
            }
            Op::LastRow { x, out } => {
                let s = self.shape(x);
                let p = CopyParams {
                    n: s[1] as u32,
                    src_offset: ((s[0] - 1) * s[1]) as u32,
                    dst_offset: 0,
                    dst_pos_stride: 0,
                };
                let d = copy::launch(gpu, self.step, self.buf(x)?, self.buf(out)?, p)?;
                self.dispatches.push(d);
            }
            Op::Softmax { x, out } => {
                let s = self.shape(x);
                let d = softmax::launch(gpu, self.buf(x)?, self.buf(out)?, s[0], s[1])?;
                self.dispatches.push(d);
            }
            Op::Unmask {
                logits,
                uncond,
                tokens,
                out,
                mask_id,
                cfg_scale,
                random_remasking,
            } => {
                let s = self.shape(logits);
                let params = unmask::Params {
                    rows: s[0],
                    vocab: s[1],
                    mask_id,
                    cfg_scale,
                    random_remasking,
                };
                let scratch = GpuTensor::new(
                    gpu,
                    "unmask scratch",
                    &[unmask::scratch_words(s[0])],
                    DType::U32,
                )?;
                let uncond = uncond.map(|u| self.buf(u)).transpose()?;
                let d = unmask::launch(
                    gpu,
                    self.step,
                    self.buf(logits)?,
                    uncond,
                    self.buf(tokens)?,
                    &scratch.buffer,
                    self.buf(out)?,
                    &params,
                )?;
                self.dispatches.extend(d);
            }
            Op::Sample { logits, out } => {
                let s = self.shape(logits);
                let d = sample::launch(
                    gpu,
                    self.step,
                    self.buf(logits)?,
                    self.buf(out)?,
                    s[1],
                    (s[0] - 1) * s[1],
                )?;
                self.dispatches.push(d);
            }
        }
        Ok(())
    }
}

//! The graph an architecture builds: tensors (activations, inputs, weights, states) and ops in
//! execution order. Builders check shapes, so a misshaped model fails here with a clear error
//! rather than on the GPU. Only the executor turns a graph into GPU work.

use std::sync::Arc;

use crate::block_mask::BlockMask;
use crate::error::{Error, Result};
use crate::kernels::attention::{mask_blocks, validate_mode, AttnShape};
use crate::kernels::elementwise::Elementwise;
use crate::kernels::linear_scan::{Decay, ScanShape};
use crate::kv::KvLayout;
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

#[derive(Debug, Clone)]
pub enum Op {
    Embedding {
        ids: TensorId,
        table: TensorId,
        out: TensorId,
    },
    /// RMSNorm, or LayerNorm when `centered` (+ `bias`), per group of width / groups (1
    /// group: the whole row).
    RmsNorm {
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        out: TensorId,
        eps: f32,
        groups: usize,
        centered: bool,
    },
    Linear {
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        out: TensorId,
    },
    /// In place on `x` [T, heads * head_dim].
    Rope {
        x: TensorId,
        inv_freq: TensorId,
        heads: usize,
        head_dim: usize,
        rot_dims: usize,
    },
    /// Append the rows of `src` [T, W] to `cache` [layout.rows, W] at the current position.
    CacheWrite {
        src: TensorId,
        cache: TensorId,
        layout: KvLayout,
    },
    Attention {
        q: TensorId,
        k_cache: TensorId,
        v_cache: TensorId,
        out: TensorId,
        shape: AttnShape,
        causal: bool,
        layout: KvLayout,
        /// RoPE frequencies when keys are cached before RoPE (`layout.rope_in_attention`).
        inv_freq: Option<TensorId>,
        /// A block mask (constant u32 words) for block-sparse attention.
        mask: Option<TensorId>,
    },
    /// Depthwise causal conv over time: `x` [T, C] with `w` [C, kernel] (+ `bias` [C]) into
    /// `out`, continuing from and updating `state` [kernel - 1, C]; silu after if `silu`.
    Conv1d {
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        state: TensorId,
        out: TensorId,
        kernel: usize,
        silu: bool,
    },
    /// The gated linear recurrence (kernels::linear_scan) over T tokens from `state`
    /// [heads * dv, dk] (updated): q, k [T, qk_heads * dk], v [T, heads * dv], decay (g or
    /// dt), consts (A or u), ab [T, heads * 2 * dk] as `shape` needs; out [T, heads * dv].
    LinearScan {
        q: TensorId,
        k: TensorId,
        v: TensorId,
        decay: Option<TensorId>,
        consts: Option<TensorId>,
        ab: Option<TensorId>,
        state: TensorId,
        out: TensorId,
        shape: ScanShape,
    },
    /// RWKV-4's WKV (kernels::wkv4) over T tokens from `state` [3, C] (updated): k, v
    /// [T, C], w = -exp(time_decay) and u = time_first [C]; out [T, C].
    Wkv4 {
        k: TensorId,
        v: TensorId,
        w: TensorId,
        u: TensorId,
        state: TensorId,
        out: TensorId,
    },
    Elementwise {
        op: Elementwise,
        a: TensorId,
        b: TensorId,
        out: TensorId,
    },
    /// Per head, the columns of `a` [T, heads * da] then those of `b` [T, heads * db].
    HeadConcat {
        a: TensorId,
        b: TensorId,
        out: TensorId,
        heads: usize,
    },
    /// Per head, `v` [T, heads * dv] scaled by the dot product of `a` and `b` [T, heads * dk].
    HeadDot {
        a: TensorId,
        b: TensorId,
        v: TensorId,
        out: TensorId,
        heads: usize,
    },
    /// A mixture of experts' router (kernels::moe): `logits` [T, experts] into `route`
    /// [T, 2k] u32 (the k experts, then their weights as f32 bits).
    MoeRoute {
        logits: TensorId,
        route: TensorId,
        k: usize,
        renormalize: bool,
    },
    /// The assignments of `route` sorted by expert into `perm` (u32), adding each expert's
    /// rows to the `counts` state.
    MoePermute {
        route: TensorId,
        perm: TensorId,
        counts: TensorId,
        experts: usize,
        k: usize,
    },
    /// Each sorted row times its expert's matrix of `w` (stacked experts): `x` [T, K] read at
    /// each row's token (`gather`) or [T * k, K] in sorted rows; out [T * k, N].
    MoeLinear {
        x: TensorId,
        w: TensorId,
        perm: TensorId,
        out: TensorId,
        k: usize,
        gather: bool,
    },
    /// Sorted expert rows `y` [T * k, W] back to tokens, weighted by the router, plus a
    /// shared expert's output gated by sigmoid(gate) when given: out [T, W].
    MoeCombine {
        y: TensorId,
        route: TensorId,
        perm: TensorId,
        shared: Option<(TensorId, TensorId)>,
        out: TensorId,
        k: usize,
    },
    LastRow {
        x: TensorId,
        out: TensorId,
    },
    Softmax {
        x: TensorId,
        out: TensorId,
    },
    Sample {
        logits: TensorId,
        out: TensorId,
    },
    /// One diffusion step's choice of masked positions to commit (u32 count then
    /// (position, token) pairs), from `logits` [T, vocab] of the positions whose current
    /// ids are `tokens`, with the step's k / threshold / window; `uncond`: logits of the
    /// prompt-masked sequence for classifier-free guidance.
    Unmask {
        logits: TensorId,
        uncond: Option<TensorId>,
        tokens: TensorId,
        out: TensorId,
        mask_id: u32,
        cfg_scale: f32,
        random_remasking: bool,
    },
}

impl Op {
    /// Tensors the op reads and tensors it writes (in-place ops list the tensor in both).
    pub fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        match *self {
            Op::Embedding { ids, table, out } => (vec![ids, table], vec![out]),
            Op::RmsNorm {
                x, w, bias, out, ..
            } => {
                let mut r = vec![x, w];
                r.extend(bias);
                (r, vec![out])
            }
            Op::Linear { x, w, bias, out } => {
                let mut r = vec![x, w];
                r.extend(bias);
                (r, vec![out])
            }
            Op::Rope { x, inv_freq, .. } => (vec![x, inv_freq], vec![x]),
            Op::CacheWrite { src, cache, .. } => (vec![src], vec![cache]),
            Op::Attention {
                q,
                k_cache,
                v_cache,
                out,
                inv_freq,
                mask,
                ..
            } => {
                let mut r = vec![q, k_cache, v_cache];
                r.extend(inv_freq);
                r.extend(mask);
                (r, vec![out])
            }
            Op::Conv1d {
                x,
                w,
                bias,
                state,
                out,
                ..
            } => {
                let mut r = vec![x, w, state];
                r.extend(bias);
                (r, vec![out, state])
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
                ..
            } => {
                let mut r = vec![q, k, v, state];
                r.extend(decay);
                r.extend(consts);
                r.extend(ab);
                (r, vec![out, state])
            }
            Op::Wkv4 {
                k,
                v,
                w,
                u,
                state,
                out,
            } => (vec![k, v, w, u, state], vec![out, state]),
            Op::Elementwise { a, b, out, .. } => (vec![a, b], vec![out]),
            Op::HeadConcat { a, b, out, .. } => (vec![a, b], vec![out]),
            Op::HeadDot { a, b, v, out, .. } => (vec![a, b, v], vec![out]),
            Op::MoeRoute { logits, route, .. } => (vec![logits], vec![route]),
            Op::MoePermute {
                route,
                perm,
                counts,
                ..
            } => (vec![route, counts], vec![perm, counts]),
            Op::MoeLinear {
                x, w, perm, out, ..
            } => (vec![x, w, perm], vec![out]),
            Op::MoeCombine {
                y,
                route,
                perm,
                shared,
                out,
                ..
            } => {
                let mut r = vec![y, route, perm];
                if let Some((s, g)) = shared {
                    r.extend([s, g]);
                }
                (r, vec![out])
            }
            Op::LastRow { x, out } => (vec![x], vec![out]),
            Op::Softmax { x, out } => (vec![x], vec![out]),
            Op::Sample { logits, out } => (vec![logits], vec![out]),
            Op::Unmask {
                logits,
                uncond,
                tokens,
                out,
                ..
            } => {
                let mut r = vec![logits, tokens];
                r.extend(uncond);
                (r, vec![out])
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub tensors: Vec<TensorDesc>,
    pub ops: Vec<Op>,
    pub outputs: Vec<TensorId>,
}

fn mismatch(context: &str, expected: &[usize], got: &[usize]) -> Error {
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

    fn add(&mut self, shape: Vec<usize>, dtype: DType, source: Source) -> TensorId {
        self.tensors.push(TensorDesc {
            shape,
            dtype,
            source,
        });
        self.tensors.len() - 1
    }

    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.tensors[t].shape
    }

    fn weight_of(&self, t: TensorId) -> Result<&Arc<GpuWeight>> {
        match &self.tensors[t].source {
            Source::Weight(w) => Ok(w),
            _ => Err(Error::Graph(format!("tensor {t} is not a weight"))),
        }
    }

    fn activation(&mut self, shape: Vec<usize>) -> TensorId {
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

    pub fn output(&mut self, t: TensorId) {
        self.outputs.push(t);
    }

    /// Check that a vector weight has `n` entries.
    fn expect_vector(&self, w: TensorId, n: usize, what: &str) -> Result<()> {
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

    pub fn embedding(&mut self, table: TensorId, ids: TensorId) -> Result<TensorId> {
        let n = self.shape(ids)[0];
        let dim = self.shape(table)[1];
        let out = self.activation(vec![n, dim]);
        self.ops.push(Op::Embedding { ids, table, out });
        Ok(out)
    }

    pub fn rms_norm(&mut self, x: TensorId, w: TensorId, eps: f32) -> Result<TensorId> {
        self.rms_norm_grouped(x, w, eps, 1)
    }

    /// RMSNorm of each group of width / `groups` columns on its own (Mamba-2's gated norm).
    pub fn rms_norm_grouped(
        &mut self,
        x: TensorId,
        w: TensorId,
        eps: f32,
        groups: usize,
    ) -> Result<TensorId> {
        self.norm(x, w, None, eps, groups, false)
    }

    /// LayerNorm with weight and bias.
    pub fn layer_norm(
        &mut self,
        x: TensorId,
        w: TensorId,
        b: TensorId,
        eps: f32,
    ) -> Result<TensorId> {
        self.norm(x, w, Some(b), eps, 1, true)
    }

    /// GroupNorm: LayerNorm of each of `groups` groups of columns (RWKV's per-head ln_x).
    pub fn group_norm(
        &mut self,
        x: TensorId,
        w: TensorId,
        b: TensorId,
        eps: f32,
        groups: usize,
    ) -> Result<TensorId> {
        self.norm(x, w, Some(b), eps, groups, true)
    }

    fn norm(
        &mut self,
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        eps: f32,
        groups: usize,
        centered: bool,
    ) -> Result<TensorId> {
        let s = self.shape(x).to_vec();
        self.expect_vector(w, s[1], "norm weight")?;
        if let Some(b) = bias {
            self.expect_vector(b, s[1], "norm bias")?;
        }
        if groups == 0 || !s[1].is_multiple_of(groups) {
            return Err(Error::Graph(format!(
                "rms norm: width {} does not split into {groups} groups",
                s[1]
            )));
        }
        let out = self.activation(s);
        self.ops.push(Op::RmsNorm {
            x,
            w,
            bias,
            out,
            eps,
            groups,
            centered,
        });
        Ok(out)
    }

    pub fn linear(&mut self, x: TensorId, w: TensorId, bias: Option<TensorId>) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        let ws = self.shape(w).to_vec();
        if xs[1] != ws[1] {
            let name = &self.weight_of(w)?.name;
            return Err(mismatch(
                &format!("weight {name} (input features)"),
                &[ws[0], xs[1]],
                &ws,
            ));
        }
        if let Some(b) = bias {
            self.expect_vector(b, ws[0], "bias")?;
        }
        let out = self.activation(vec![xs[0], ws[0]]);
        self.ops.push(Op::Linear { x, w, bias, out });
        Ok(out)
    }

    pub fn rope(
        &mut self,
        x: TensorId,
        inv_freq: TensorId,
        heads: usize,
        head_dim: usize,
    ) -> Result<TensorId> {
        let rot_dims = 2 * self.shape(inv_freq).iter().product::<usize>();
        if self.shape(x)[1] != heads * head_dim || rot_dims > head_dim {
            return Err(mismatch(
                "rope input",
                &[self.shape(x)[0], heads * head_dim],
                self.shape(x),
            ));
        }
        self.ops.push(Op::Rope {
            x,
            inv_freq,
            heads,
            head_dim,
            rot_dims,
        });
        Ok(x)
    }

    /// A constant u32 array, uploaded when the graph is planned.
    pub fn constant(&mut self, data: Vec<u32>) -> TensorId {
        self.add(
            vec![data.len()],
            DType::U32,
            Source::Constant(Arc::new(data)),
        )
    }

    /// A block mask as a constant for [`Graph::attention`].
    pub fn block_mask(&mut self, mask: &BlockMask) -> TensorId {
        self.constant(mask.to_words())
    }

    pub fn cache_write(&mut self, src: TensorId, cache: TensorId, layout: KvLayout) -> Result<()> {
        let (s, c) = (self.shape(src), self.shape(cache));
        if s[1] != c[1] || c[0] != layout.rows {
            return Err(mismatch("cache write", &[layout.rows, s[1]], c));
        }
        if let Some(n) = layout.max_chunk.filter(|&n| s[0] > n) {
            return Err(Error::Graph(format!(
                "cache write of {} rows exceeds the ring cache's chunk of {n}",
                s[0]
            )));
        }
        self.ops.push(Op::CacheWrite { src, cache, layout });
        Ok(())
    }

    /// Attention of `q` over a layer's caches laid out by `layout` (not `causal`: over every
    /// row of the cache, which must then be linear). `inv_freq`: RoPE
    /// frequencies for a layout that caches keys before RoPE (q is then un-rotated too).
    /// `mask`: a [`Graph::block_mask`] over the cache's rows.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: TensorId,
        k_cache: TensorId,
        v_cache: TensorId,
        shape: AttnShape,
        causal: bool,
        layout: KvLayout,
        inv_freq: Option<TensorId>,
        mask: Option<TensorId>,
    ) -> Result<TensorId> {
        let rope_half = inv_freq.map(|f| self.tensors[f].numel());
        validate_mode(&shape, &layout, causal, rope_half, mask.is_some())?;
        if self.shape(k_cache)[0] != layout.rows {
            return Err(mismatch(
                "attention KV cache rows",
                &[layout.rows, shape.kv_heads * shape.head_dim],
                self.shape(k_cache),
            ));
        }
        if let Some(m) = mask {
            let blocks = mask_blocks(layout.rows);
            let words = self.tensors[m].numel();
            if words < shape.heads * blocks + 1 {
                return Err(mismatch(
                    "block mask",
                    &[shape.heads * blocks + 1],
                    &[words],
                ));
            }
        }
        let qs = self.shape(q).to_vec();
        if qs[1] != shape.heads * shape.head_dim {
            return Err(mismatch(
                "attention queries",
                &[qs[0], shape.heads * shape.head_dim],
                &qs,
            ));
        }
        let kv = shape.kv_heads * shape.head_dim;
        if self.shape(k_cache)[1] != kv || self.shape(v_cache)[1] != kv {
            return Err(mismatch(
                "attention KV cache",
                &[self.shape(k_cache)[0], kv],
                self.shape(k_cache),
            ));
        }
        let out = self.activation(qs);
        self.ops.push(Op::Attention {
            q,
            k_cache,
            v_cache,
            out,
            shape,
            causal,
            layout,
            inv_freq,
            mask,
        });
        Ok(out)
    }

    /// `op` of a and b, where b has a's shape or is a row vector of a's width (broadcast
    /// over a's rows).
    pub fn elementwise(&mut self, op: Elementwise, a: TensorId, b: TensorId) -> Result<TensorId> {
        let width = *self.shape(a).last().unwrap_or(&0);
        let row_vector = self.tensors[b].numel() == width;
        if self.shape(a) != self.shape(b) && !row_vector {
            return Err(mismatch(&format!("{op:?}"), self.shape(a), self.shape(b)));
        }
        let out = self.activation(self.shape(a).to_vec());
        self.ops.push(Op::Elementwise { op, a, b, out });
        Ok(out)
    }

    /// Depthwise causal conv1d over time with a rolling state (see [`Op::Conv1d`]).
    pub fn conv1d(
        &mut self,
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        state: TensorId,
        kernel: usize,
        silu: bool,
    ) -> Result<TensorId> {
        crate::kernels::conv1d::validate(kernel)?;
        let xs = self.shape(x).to_vec();
        let c = xs[1];
        if self.tensors[w].numel() != c * kernel {
            return Err(mismatch("conv1d weight", &[c, kernel], self.shape(w)));
        }
        if let Some(b) = bias {
            self.expect_vector(b, c, "conv1d bias")?;
        }
        if self.shape(state) != [kernel - 1, c] {
            return Err(mismatch(
                "conv1d state",
                &[kernel - 1, c],
                self.shape(state),
            ));
        }
        let out = self.activation(xs);
        self.ops.push(Op::Conv1d {
            x,
            w,
            bias,
            state,
            out,
            kernel,
            silu,
        });
        Ok(out)
    }

    /// The gated linear recurrence (see [`Op::LinearScan`]); every input's shape is checked
    /// against `shape`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_scan(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        decay: Option<TensorId>,
        consts: Option<TensorId>,
        ab: Option<TensorId>,
        state: TensorId,
        shape: ScanShape,
    ) -> Result<TensorId> {
        shape.validate()?;
        let t = self.shape(q)[0];
        let ScanShape {
            heads,
            qk_heads,
            dk,
            dv,
            ..
        } = shape;
        let gk = shape.gk();
        let expect = |g: &Graph, id: Option<TensorId>, what: &str, want: Option<Vec<usize>>| match (
            id, want,
        ) {
            (None, None) => Ok(()),
            (Some(id), Some(w)) if g.tensors[id].numel() == w.iter().product::<usize>() => Ok(()),
            (Some(id), Some(w)) => Err(mismatch(&format!("linear scan {what}"), &w, g.shape(id))),
            (None, Some(_)) => Err(Error::Graph(format!("linear scan: {what} missing"))),
            (Some(_), None) => Err(Error::Graph(format!("linear scan: {what} not used"))),
        };
        expect(self, Some(q), "q", Some(vec![t, qk_heads * dk]))?;
        expect(self, Some(k), "k", Some(vec![t, qk_heads * dk]))?;
        expect(self, Some(v), "v", Some(vec![t, heads * dv]))?;
        expect(self, Some(state), "state", Some(vec![heads * dv, dk]))?;
        let decay_shape = match shape.decay {
            Decay::None => None,
            Decay::Gate { .. } => Some(vec![t, heads * gk]),
            Decay::DtA { .. } => Some(vec![t, heads]),
        };
        expect(self, decay, "decay", decay_shape)?;
        let consts_shape = match (shape.decay, shape.bonus) {
            (Decay::DtA { .. }, _) => Some(vec![heads * gk]),
            (_, true) => Some(vec![heads * dk]),
            _ => None,
        };
        expect(self, consts, "constants", consts_shape)?;
        expect(
            self,
            ab,
            "a/b",
            shape.delta.then(|| vec![t, heads * 2 * dk]),
        )?;
        let out = self.activation(vec![t, heads * dv]);
        self.ops.push(Op::LinearScan {
            q,
            k,
            v,
            decay,
            consts,
            ab,
            state,
            out,
            shape,
        });
        Ok(out)
    }

    /// RWKV-4's WKV (see [`Op::Wkv4`]): k, v [T, C], w, u [C], state [3, C].
    pub fn wkv4(
        &mut self,
        k: TensorId,
        v: TensorId,
        w: TensorId,
        u: TensorId,
        state: TensorId,
    ) -> Result<TensorId> {
        let ks = self.shape(k).to_vec();
        if ks.len() != 2 || ks[1] == 0 {
            return Err(Error::Graph(format!("wkv4: k must be [T, C], got {ks:?}")));
        }
        let c = ks[1];
        if self.shape(v) != ks.as_slice() {
            return Err(mismatch("wkv4 v", &ks, self.shape(v)));
        }
        for (x, what) in [(w, "w (time_decay)"), (u, "u (time_first)")] {
            if self.tensors[x].numel() != c {
                return Err(mismatch(&format!("wkv4 {what}"), &[c], self.shape(x)));
            }
        }
        if self.shape(state) != [crate::kernels::wkv4::STATE_ROWS, c] {
            return Err(mismatch(
                "wkv4 state",
                &[crate::kernels::wkv4::STATE_ROWS, c],
                self.shape(state),
            ));
        }
        let out = self.activation(ks);
        self.ops.push(Op::Wkv4 {
            k,
            v,
            w,
            u,
            state,
            out,
        });
        Ok(out)
    }

    /// A unary op ([`Elementwise::unary`]) of a.
    pub fn unary(&mut self, op: Elementwise, a: TensorId) -> Result<TensorId> {
        if !op.unary() {
            return Err(Error::Graph(format!("{op:?} takes two inputs")));
        }
        self.elementwise(op, a, a)
    }

    pub fn add_tensors(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.elementwise(Elementwise::Add, a, b)
    }

    pub fn swiglu(&mut self, gate: TensorId, up: TensorId) -> Result<TensorId> {
        self.elementwise(Elementwise::SwiGlu, gate, up)
    }

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
        self.ops.push(Op::HeadConcat { a, b, out, heads });
        Ok(out)
    }

    /// Per head, `v` [T, heads * dv] scaled by the dot product of `a` and `b`
    /// [T, heads * dk] (RWKV-7's `((r * r_k) . k) v`).
    pub fn head_dot(
        &mut self,
        a: TensorId,
        b: TensorId,
        v: TensorId,
        heads: usize,
    ) -> Result<TensorId> {
        let (sa, sv) = (self.shape(a).to_vec(), self.shape(v).to_vec());
        if self.shape(b) != sa.as_slice() {
            return Err(mismatch("head dot", &sa, self.shape(b)));
        }
        if heads == 0
            || sa.len() != 2
            || sv.len() != 2
            || sa[0] != sv[0]
            || !sa[1].is_multiple_of(heads)
            || !sv[1].is_multiple_of(heads)
        {
            return Err(Error::Graph(format!(
                "head dot: {sa:?} and {sv:?} do not split into {heads} heads of the same rows"
            )));
        }
        let out = self.activation(sv);
        self.ops.push(Op::HeadDot {
            a,
            b,
            v,
            out,
            heads,
        });
        Ok(out)
    }

    /// Route each token of `logits` [T, experts] to its top `k` experts: [T, 2k] u32.
    pub fn moe_route(&mut self, logits: TensorId, k: usize, renormalize: bool) -> Result<TensorId> {
        let [t, experts] = self.shape(logits) else {
            return Err(Error::Graph(
                "router logits must be [tokens, experts]".into(),
            ));
        };
        let (t, experts) = (*t, *experts);
        crate::kernels::moe::check_top_k(k, experts)?;
        let route = self.add(vec![t, 2 * k], DType::U32, Source::Activation);
        self.ops.push(Op::MoeRoute {
            logits,
            route,
            k,
            renormalize,
        });
        Ok(route)
    }

    /// Sort the assignments of `route` by expert; `counts` is a counter state [experts].
    pub fn moe_permute(
        &mut self,
        route: TensorId,
        experts: usize,
        counts: TensorId,
    ) -> Result<TensorId> {
        let (t, k) = (self.shape(route)[0], self.shape(route)[1] / 2);
        crate::kernels::moe::check_top_k(k, experts)?;
        if self.shape(counts) != [experts] {
            return Err(mismatch("expert counters", &[experts], self.shape(counts)));
        }
        let words = crate::kernels::moe::perm_words(t, k, experts);
        let perm = self.add(vec![words], DType::U32, Source::Activation);
        self.ops.push(Op::MoePermute {
            route,
            perm,
            counts,
            experts,
            k,
        });
        Ok(perm)
    }

    /// The routed rows times their experts' matrices in `w` (stacked experts [E * N, K]):
    /// `x` is [T, K] with `gather`, else [T * k, K] in sorted rows; the result [T * k, N].
    pub fn moe_linear(
        &mut self,
        x: TensorId,
        w: TensorId,
        perm: TensorId,
        tokens: usize,
        k: usize,
        gather: bool,
    ) -> Result<TensorId> {
        let weight = self.weight_of(w)?.clone();
        let rows = if gather { tokens } else { tokens * k };
        let expect = [rows, weight.cols];
        if self.shape(x) != expect {
            return Err(mismatch(
                &format!("input of expert weight {}", weight.name),
                &expect,
                self.shape(x),
            ));
        }
        let out = self.activation(vec![tokens * k, weight.rows / weight.experts]);
        self.ops.push(Op::MoeLinear {
            x,
            w,
            perm,
            out,
            k,
            gather,
        });
        Ok(out)
    }

    /// Expert rows `y` [T * k, W] back into token order, weighted by `route` [T, 2k], plus
    /// `shared` = (a shared expert's output [T, W], its gate logits [T, 1]).
    pub fn moe_combine(
        &mut self,
        y: TensorId,
        route: TensorId,
        perm: TensorId,
        shared: Option<(TensorId, TensorId)>,
    ) -> Result<TensorId> {
        let (t, k) = (self.shape(route)[0], self.shape(route)[1] / 2);
        let width = self.shape(y)[1];
        if self.shape(y)[0] != t * k {
            return Err(mismatch("expert outputs", &[t * k, width], self.shape(y)));
        }
        if let Some((s, g)) = shared {
            if self.shape(s) != [t, width] {
                return Err(mismatch("shared expert output", &[t, width], self.shape(s)));
            }
            if self.tensors[g].numel() != t {
                return Err(mismatch("shared expert gate", &[t, 1], self.shape(g)));
            }
        }
        let out = self.activation(vec![t, width]);
        self.ops.push(Op::MoeCombine {
            y,
            route,
            perm,
            shared,
            out,
            k,
        });
        Ok(out)
    }

    pub fn last_row(&mut self, x: TensorId) -> Result<TensorId> {
        let w = self.shape(x)[1];
        let out = self.activation(vec![1, w]);
        self.ops.push(Op::LastRow { x, out });
        Ok(out)
    }

    pub fn softmax(&mut self, x: TensorId) -> Result<TensorId> {
        let out = self.activation(self.shape(x).to_vec());
        self.ops.push(Op::Softmax { x, out });
        Ok(out)
    }

    /// The positions a diffusion step commits, chosen on the GPU (see [`Op::Unmask`]).
    pub fn unmask(
        &mut self,
        logits: TensorId,
        uncond: Option<TensorId>,
        tokens: TensorId,
        mask_id: u32,
        cfg_scale: f32,
        random_remasking: bool,
    ) -> Result<TensorId> {
        let rows = self.shape(logits)[0];
        if self.shape(tokens) != [rows]
            || uncond.is_some_and(|u| self.shape(u) != self.shape(logits))
        {
            return Err(mismatch("unmask", &[rows], self.shape(tokens)));
        }
        let out = self.add(
            vec![crate::kernels::unmask::out_words(rows)],
            DType::U32,
            Source::Activation,
        );
        self.ops.push(Op::Unmask {
            logits,
            uncond,
            tokens,
            out,
            mask_id,
            cfg_scale,
            random_remasking,
        });
        Ok(out)
    }

    /// Sample one token id from the last row of `logits` with the step's settings.
    pub fn sample(&mut self, logits: TensorId) -> Result<TensorId> {
        let out = self.add(vec![1], DType::U32, Source::Activation);
        self.ops.push(Op::Sample { logits, out });
        Ok(out)
    }
}

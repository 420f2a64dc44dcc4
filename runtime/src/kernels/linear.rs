//! The Linear op, `y = x Wᵀ + b` for x [T, K] and a weight W [N, K] of any weight dtype, with
//! the work around it a model asks for: an RMSNorm of x or the merge of split-K attention
//! pieces before ([`LinearInput`]), a residual add or SwiGLU of row pairs after
//! ([`LinearOutput`]). Lowering: for one row (decode) one fused matvec per weight chunk; for
//! more rows (prefill) the tiled matmul between separate dispatches that do the same (norm
//! into scratch, then an elementwise epilogue), so fusion stays inside this op.

use super::attention::AttnShape;
use super::elementwise::{self, Elementwise, Gate};
use super::matvec::{self, Epilogue, Fusion, Prologue};
use super::matvec_f16;
use super::matvec_q8::{self, MatvecPrecision};
use super::{decode_attention, matmul, quantize_q8, rms_norm};
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;
use crate::tensor::GpuWeight;

/// What the op reads as x.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinearInput {
    /// x itself.
    Plain,
    /// RMSNorm of x with `weight` [K] and `eps`.
    Norm { weight: TensorId, eps: f32 },
    /// x is one query's split-K attention pieces (`Graph::attention_pieces` in
    /// kernels::decode_attention) for heads of `head_dim` values in `splits` pieces: their
    /// merge, [1, K], is the input. Decode only; lowered as the merge pass, then the matvec,
    /// or the matvec alone where the adapter takes one piece (`decode_attention::splits_on`:
    /// the pieces pass then wrote the merged input itself).
    Merged { head_dim: usize, splits: usize },
}

/// What the op writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearOutput {
    /// A new tensor [T, N].
    New,
    /// Adds the product into this tensor [T, N] in place (a residual stream), and returns it.
    AddTo(TensorId),
    /// The weight's rows are interleaved (gate, up) pairs: `act(gate) * up`, [T, N / 2].
    Glu(Gate),
}

#[derive(Debug)]
pub struct Linear {
    pub x: TensorId,
    pub w: TensorId,
    pub bias: Option<TensorId>,
    pub input: LinearInput,
    pub output: LinearOutput,
    pub out: TensorId,
}

impl Graph {
    pub fn linear(&mut self, x: TensorId, w: TensorId, bias: Option<TensorId>) -> Result<TensorId> {
        self.linear_fused(x, w, bias, LinearInput::Plain, LinearOutput::New)
    }

    /// [`Graph::linear`] with the work before and after it.
    pub fn linear_fused(
        &mut self,
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        input: LinearInput,
        output: LinearOutput,
    ) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        let ws = self.shape(w).to_vec();
        let (n, k) = (ws[0], ws[1]);
        let name = self.weight_of(w)?.name.clone();
        let rows = match input {
            LinearInput::Merged { head_dim, splits } => {
                let floats = match head_dim {
                    0 => 0,
                    d => k / d * splits * (d + 2),
                };
                if head_dim == 0 || !k.is_multiple_of(head_dim) || xs[1] != floats || xs[0] != 1 {
                    return Err(mismatch(
                        &format!("attention pieces into weight {name}"),
                        &[1, floats],
                        &xs,
                    ));
                }
                1
            }
            _ if xs[1] != k => {
                return Err(mismatch(
                    &format!("weight {name} (input features)"),
                    &[n, xs[1]],
                    &ws,
                ))
            }
            LinearInput::Norm { weight, .. } => {
                self.expect_vector(weight, k, "norm weight")?;
                xs[0]
            }
            LinearInput::Plain => xs[0],
        };
        if let Some(b) = bias {
            self.expect_vector(b, n, "bias")?;
        }
        let out = match output {
            LinearOutput::New => self.activation(vec![rows, n]),
            LinearOutput::AddTo(r) => {
                if self.shape(r) != [rows, n] {
                    return Err(mismatch("residual of a linear", &[rows, n], self.shape(r)));
                }
                r
            }
            LinearOutput::Glu(_) => {
                if !n.is_multiple_of(2) || bias.is_some() {
                    return Err(Error::Graph(format!(
                        "SwiGLU linear {name}: needs (gate, up) row pairs and no bias"
                    )));
                }
                self.activation(vec![rows, n / 2])
            }
        };
        self.push(Linear {
            x,
            w,
            bias,
            input,
            output,
            out,
        });
        Ok(out)
    }
}

impl Linear {
    /// The matvec epilogue for the output.
    fn epilogue(&self) -> Epilogue {
        match self.output {
            LinearOutput::New => Epilogue::Store,
            LinearOutput::AddTo(_) => Epilogue::Accumulate,
            LinearOutput::Glu(gate) => Epilogue::Glu(gate),
        }
    }

    /// The decode matvec in int8 or f16 where the device asks for it (`--matvec-precision`)
    /// and that kernel reads the weight (int8: x, with the norm if any, quantized into
    /// scratch, then the int8 product; f16: one kernel, the norm inside), with this op's
    /// epilogue. False, and nothing pushed, otherwise: the weights neither reads (f32, bf16,
    /// the K-quants; int8 also f16) keep the f32 matvec, per op.
    fn precision_matvec(
        &self,
        cx: &mut Lowering,
        x: &wgpu::Buffer,
        w: &GpuWeight,
        bias: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
        norm: Option<(&wgpu::Buffer, f32)>,
    ) -> Result<bool> {
        let gpu = cx.gpu();
        match gpu.matvec_precision() {
            MatvecPrecision::Int8 if matvec_q8::reads(w) => {
                let xq = cx.scratch("linear int8 input", quantize_q8::words(w.cols))?;
                let quantize = quantize_q8::launch(gpu, x, norm, &xq, w.cols)?;
                let product = matvec_q8::launch(gpu, &xq, w, bias, out, self.epilogue(), None)?;
                cx.push([quantize]);
                cx.push(product);
                Ok(true)
            }
            MatvecPrecision::F16 if matvec_f16::reads(w) => {
                let epilogue = self.epilogue();
                cx.push(matvec_f16::launch(
                    gpu, x, norm, w, bias, out, epilogue, None,
                )?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl Op for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.x, self.w];
        r.extend(self.bias);
        if let LinearInput::Norm { weight, .. } = self.input {
            r.push(weight);
        }
        if let LinearOutput::AddTo(t) = self.output {
            r.push(t);
        }
        (r, vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let gpu = cx.gpu();
        let m = cx.shape(self.out)[0];
        let (x, w, out) = (cx.buf(self.x)?, cx.weight(self.w)?, cx.buf(self.out)?);
        let bias = cx.opt_buf(self.bias)?;
        let norm = match self.input {
            LinearInput::Norm { weight, eps } => Some((cx.buf(weight)?, eps)),
            _ => None,
        };
        let input = match self.input {
            // One piece per head: the attention pieces pass wrote the output itself.
            LinearInput::Merged { splits, .. } if decode_attention::splits_on(gpu, splits) == 1 => {
                LinearInput::Plain
            }
            input => input,
        };
        if let (1, LinearInput::Merged { head_dim, splits }) = (m, input) {
            // The merge pass of its own, into scratch, then the matvec. The matvec's MERGE
            // prologue (checked by the kernel cases; the arm below) is not used: on lavapipe
            // every dispatch of it grows resident memory by ~300 KB (constant_memory's sinks
            // test: 7 GB over 10k tokens), cause not found; it would save a dispatch a layer.
            let shape = AttnShape {
                softcap: None,
                heads: w.cols / head_dim,
                kv_heads: 1,
                head_dim,
                scale: 1.0,
            };
            let merged = cx.scratch("linear merged input", w.cols)?;
            let merge = decode_attention::launch_merge(gpu, x, &merged, shape, splits, 1)?;
            cx.push([merge]);
            if self.precision_matvec(cx, &merged, w, bias, out, None)? {
                return Ok(());
            }
            let fusion = Fusion {
                prologue: Prologue::None,
                epilogue: self.epilogue(),
            };
            cx.push(matvec::launch_fused(
                gpu, &merged, w, bias, out, fusion, None,
            )?);
            return Ok(());
        }
        if m == 1 {
            // A merge prologue (never reached: the arm above takes merged inputs) keeps f32.
            if !matches!(input, LinearInput::Merged { .. })
                && self.precision_matvec(cx, x, w, bias, out, norm)?
            {
                return Ok(());
            }
            let prologue = match (input, norm) {
                (LinearInput::Merged { head_dim, splits }, _) => {
                    Prologue::Merge { head_dim, splits }
                }
                (_, Some((weight, eps))) => Prologue::Norm(weight, eps),
                _ => Prologue::None,
            };
            let fusion = Fusion {
                prologue,
                epilogue: self.epilogue(),
            };
            cx.push(matvec::launch_fused(gpu, x, w, bias, out, fusion, None)?);
            return Ok(());
        }
        // Prefill: the same as separate dispatches.
        let (n, k) = (w.rows, w.cols);
        let normed;
        let x = match (self.input, norm) {
            (LinearInput::Merged { .. }, _) => {
                return Err(Error::Graph(format!(
                    "linear {}: merged attention pieces are one query's (decode)",
                    w.name
                )))
            }
            (_, Some((weight, eps))) => {
                normed = cx.scratch("linear normed input", m * k)?;
                cx.push([rms_norm::launch(gpu, x, weight, &normed, m, k, eps)?]);
                &*normed
            }
            _ => x,
        };
        let (op, count) = match self.output {
            LinearOutput::New => {
                cx.push(matmul::launch(gpu, x, w, bias, out, m)?);
                return Ok(());
            }
            LinearOutput::AddTo(_) => (Elementwise::Accumulate, m * n),
            LinearOutput::Glu(gate) => (gate.pairs(), m * n / 2),
        };
        let product = cx.scratch("linear product", m * n)?;
        cx.push(matmul::launch(gpu, x, w, bias, &product, m)?);
        let d = elementwise::launch(gpu, op, &product, &gpu.dummy, out, count, 1)?;
        cx.push([d]);
        Ok(())
    }
}

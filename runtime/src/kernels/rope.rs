//! Rotary position embedding (rotate-half layout), in place, positions from `Step::pos`.

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("rope", no_variants);

/// In place on `x` [T, heads * head_dim]: the first `rot_dims` of each head rotated.
#[derive(Debug)]
pub struct Rope {
    pub x: TensorId,
    pub inv_freq: TensorId,
    pub heads: usize,
    pub head_dim: usize,
    pub rot_dims: usize,
}

impl Graph {
    /// Rotate `x` in place by its positions (from the step uniform); `inv_freq` holds
    /// rot_dims / 2 frequencies. Returns `x`.
    pub fn rope(
        &mut self,
        x: TensorId,
        inv_freq: TensorId,
        heads: usize,
        head_dim: usize,
    ) -> Result<TensorId> {
        let rot_dims = 2 * self.numel(inv_freq);
        if self.shape(x)[1] != heads * head_dim || rot_dims > head_dim {
            return Err(mismatch(
                "rope input",
                &[self.shape(x)[0], heads * head_dim],
                self.shape(x),
            ));
        }
        self.push(Rope {
            x,
            inv_freq,
            heads,
            head_dim,
            rot_dims,
        });
        Ok(x)
    }
}

impl Op for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.x, self.inv_freq], vec![self.x])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let n = cx.shape(self.x)[0];
        let (x, f) = (cx.buf(self.x)?, cx.buf(self.inv_freq)?);
        let d = launch(
            cx.gpu(),
            cx.step(),
            x,
            f,
            n,
            self.heads,
            self.head_dim,
            self.rot_dims,
        )?;
        cx.push([d]);
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_tokens: u32,
    heads: u32,
    head_dim: u32,
    rot_half: u32,
}

/// Rotate `x` [n_tokens, heads, head_dim] in place; `inv_freq` has `rot_dims / 2` entries.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    x: &wgpu::Buffer,
    inv_freq: &wgpu::Buffer,
    n_tokens: usize,
    heads: usize,
    head_dim: usize,
    rot_dims: usize,
) -> Result<Dispatch> {
    let params = Params {
        n_tokens: n_tokens as u32,
        heads: heads as u32,
        head_dim: head_dim as u32,
        rot_half: (rot_dims / 2) as u32,
    };
    let n = (n_tokens * heads * rot_dims / 2) as u32;
    KERNEL.dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[step, x, inv_freq],
        gpu.grid(n.div_ceil(256)),
    )
}

/// Inverse frequencies `theta^(-2i/rot_dims)`, optionally with Llama-3 frequency scaling.
pub fn inv_freq(theta: f64, rot_dims: usize, llama3: Option<Llama3Scaling>) -> Vec<f32> {
    (0..rot_dims / 2)
        .map(|i| {
            // Computed as Hugging Face does: in f32, base ** (arange(0, dim, 2) / dim).
            let exponent = (2 * i) as f32 / rot_dims as f32;
            let f = 1.0f32 / (theta as f32).powf(exponent);
            match llama3 {
                None => f,
                Some(s) => s.apply(f),
            }
        })
        .collect()
}

/// LongRoPE's inverse frequencies (`rope_type: longrope`, Phi-3.5/4-mini): one factor per
/// rotated pair, `1 / (factor[i] * theta^(2i/rot_dims))`, rot_dims = 2 * factors.len().
pub fn longrope_inv_freq(theta: f64, factors: &[f32]) -> Vec<f32> {
    let rot_dims = 2 * factors.len();
    factors
        .iter()
        .enumerate()
        .map(|(i, &factor)| {
            // As transformers' _compute_longrope_parameters, in f32.
            let exponent = (2 * i) as f32 / rot_dims as f32;
            1.0f32 / (factor * (theta as f32).powf(exponent))
        })
        .collect()
}

/// Llama-3 RoPE scaling (`rope_type: llama3`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position: f32,
}

impl Llama3Scaling {
    pub fn apply(&self, inv_freq: f32) -> f32 {
        let low_wavelen = self.original_max_position / self.low_freq_factor;
        let high_wavelen = self.original_max_position / self.high_freq_factor;
        let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
        if wavelen > low_wavelen {
            inv_freq / self.factor
        } else if wavelen < high_wavelen {
            inv_freq
        } else {
            let smooth = (self.original_max_position / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * inv_freq / self.factor + smooth * inv_freq
        }
    }
}

pub fn reference(
    x: &[f32],
    inv_freq: &[f32],
    pos: usize,
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let half = inv_freq.len();
    let mut out = x.to_vec();
    for (t, tok) in out.chunks_mut(heads * head_dim).enumerate() {
        for head in tok.chunks_mut(head_dim) {
            for i in 0..half {
                let angle = (pos + t) as f32 * inv_freq[i];
                let (s, c) = angle.sin_cos();
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * c - x2 * s;
                head[i + half] = x2 * c + x1 * s;
            }
        }
    }
    out
}

//! RWKV-7's delta-rule vectors for [`Graph::linear_scan`]'s `ab` input in one dispatch:
//! `kk = normalize(k * k_k)` per head, `a = -kk`, `b = kk * rate`, laid out [T, heads, 2, dk]
//! (see shaders/delta_ab.wgsl). As graph ops this was two grouped RMSNorms, a product, a head
//! concatenation and the k * k_k product before them.

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("delta_ab", no_variants);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    dk: u32,
    eps: f32,
    scale: f32,
    _p: [u32; 3],
}

/// The L2 norm's eps (added to the squared norm) as the kernel takes it, and its scale.
fn norm_constants(dk: usize, l2_eps: f32) -> (f32, f32) {
    (l2_eps / dk as f32, 1.0 / (dk as f32).sqrt())
}

/// `ab` [rows, heads, 2, dk] from k and rate [rows, heads * dk] and k_k [heads * dk].
#[allow(clippy::too_many_arguments)]
pub fn launch(
    gpu: &Gpu,
    k: &wgpu::Buffer,
    k_k: &wgpu::Buffer,
    rate: &wgpu::Buffer,
    ab: &wgpu::Buffer,
    rows: usize,
    heads: usize,
    dk: usize,
    l2_eps: f32,
) -> Result<Dispatch> {
    let (eps, scale) = norm_constants(dk, l2_eps);
    let params = Params {
        rows: rows as u32,
        heads: heads as u32,
        dk: dk as u32,
        eps,
        scale,
        _p: [0; 3],
    };
    KERNEL.dispatch(
        gpu,
        &ShaderDefs::new(),
        &params,
        &[k, k_k, rate, ab],
        gpu.grid(((rows * heads) as u32).div_ceil(64)),
    )
}

/// The same on the CPU, in f64.
pub fn reference(
    k: &[f32],
    k_k: &[f32],
    rate: &[f32],
    heads: usize,
    dk: usize,
    l2_eps: f32,
) -> Vec<f32> {
    let (eps, scale) = norm_constants(dk, l2_eps);
    let mut ab = Vec::with_capacity(2 * k.len());
    for (g, ks) in k.chunks(dk).enumerate() {
        let h = g % heads;
        let x: Vec<f64> = (0..dk)
            .map(|j| ks[j] as f64 * k_k[h * dk + j] as f64)
            .collect();
        let sum: f64 = x.iter().map(|v| v * v).sum();
        let inv = 1.0 / (sum / dk as f64 + eps as f64).sqrt() * scale as f64;
        ab.extend(x.iter().map(|v| (-v * inv) as f32));
        ab.extend((0..dk).map(|j| (x[j] * inv * rate[g * dk + j] as f64) as f32));
    }
    ab
}

/// See [`Graph::delta_ab`].
#[derive(Debug)]
pub struct DeltaAb {
    pub k: TensorId,
    pub k_k: TensorId,
    pub rate: TensorId,
    pub out: TensorId,
    pub heads: usize,
    pub l2_eps: f32,
}

impl Graph {
    /// RWKV-7's `ab` [T, heads * 2 * dk] for [`Graph::linear_scan`]: per head
    /// `kk = (k * k_k) / sqrt(|k * k_k|^2 + l2_eps)`, then `-kk` and `kk * rate`; k and rate
    /// [T, heads * dk], k_k a vector of heads * dk.
    pub fn delta_ab(
        &mut self,
        k: TensorId,
        k_k: TensorId,
        rate: TensorId,
        heads: usize,
        l2_eps: f32,
    ) -> Result<TensorId> {
        let s = self.shape(k).to_vec();
        if s.len() != 2
            || heads == 0
            || !s[1].is_multiple_of(heads)
            || self.shape(rate) != s.as_slice()
        {
            return Err(Error::Graph(format!(
                "delta ab: k {s:?} and rate {:?} are not [T, {heads} heads of dk]",
                self.shape(rate)
            )));
        }
        self.expect_vector(k_k, s[1], "delta ab k_k")?;
        let out = self.activation(vec![s[0], 2 * s[1]]);
        self.push(DeltaAb {
            k,
            k_k,
            rate,
            out,
            heads,
            l2_eps,
        });
        Ok(out)
    }
}

impl Op for DeltaAb {
    fn name(&self) -> &'static str {
        "delta_ab"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.k, self.k_k, self.rate], vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.k).to_vec();
        let (k, k_k) = (cx.buf(self.k)?, cx.buf(self.k_k)?);
        let (rate, out) = (cx.buf(self.rate)?, cx.buf(self.out)?);
        let dk = s[1] / self.heads;
        let d = launch(
            cx.gpu(),
            k,
            k_k,
            rate,
            out,
            s[0],
            self.heads,
            dk,
            self.l2_eps,
        )?;
        cx.push([d]);
        Ok(())
    }
}

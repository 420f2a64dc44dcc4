//! RWKV's token-shift mixes `x + delta * mu_m`, several at once: one pass over x and delta
//! writes up to [`PER_PASS`] of them (RWKV-7's time mix has six, which as elementwise ops
//! were six dispatches).

use bytemuck::{Pod, Zeroable};

use super::{kernel, no_variants, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("token_mix", no_variants);

/// Mixes written per dispatch (the kernel's output bindings).
pub const PER_PASS: usize = 3;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    width: u32,
    first: u32,
    outs: u32,
}

/// `outs[m] = x + delta * mu[m]` for x, delta [rows, width] and mu [outs.len(), width]:
/// dispatches of up to [`PER_PASS`] mixes each (unused output slots bind the dummy buffer,
/// which the kernel does not write).
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    delta: &wgpu::Buffer,
    mu: &wgpu::Buffer,
    outs: &[&wgpu::Buffer],
    rows: usize,
    width: usize,
) -> Result<Vec<Dispatch>> {
    let n = rows * width;
    outs.chunks(PER_PASS)
        .enumerate()
        .map(|(c, chunk)| {
            let params = Params {
                n: n as u32,
                width: width as u32,
                first: (c * PER_PASS) as u32,
                outs: chunk.len() as u32,
            };
            let mut buffers = vec![x, delta, mu];
            buffers.extend((0..PER_PASS).map(|i| chunk.get(i).copied().unwrap_or(&gpu.dummy)));
            KERNEL.dispatch(
                gpu,
                &ShaderDefs::new(),
                &params,
                &buffers,
                gpu.grid((n as u32).div_ceil(64)),
            )
        })
        .collect()
}

/// The same on the CPU: mix m of each row, in order (`x + delta * mu`, one rounding each for
/// the product and the sum).
pub fn reference(x: &[f32], delta: &[f32], mu: &[f32], width: usize) -> Vec<Vec<f32>> {
    mu.chunks(width)
        .map(|m| {
            x.iter()
                .zip(delta)
                .enumerate()
                .map(|(i, (x, d))| x + d * m[i % width])
                .collect()
        })
        .collect()
}

/// See [`Graph::token_mix`].
#[derive(Debug)]
pub struct TokenMix {
    pub x: TensorId,
    pub delta: TensorId,
    pub mu: TensorId,
    pub outs: Vec<TensorId>,
}

impl Graph {
    /// `x + delta * mu[m]` for every row m of `mu` [mixes, width], with x and delta
    /// [T, width]: one tensor per mix (RWKV's lerps towards the previous token).
    pub fn token_mix(
        &mut self,
        x: TensorId,
        delta: TensorId,
        mu: TensorId,
    ) -> Result<Vec<TensorId>> {
        let s = self.shape(x).to_vec();
        if s.len() != 2 || self.shape(delta) != s.as_slice() {
            return Err(mismatch("token mix delta", &s, self.shape(delta)));
        }
        let m = self.shape(mu).to_vec();
        if m.len() != 2 || m[0] == 0 || m[1] != s[1] {
            return Err(Error::Graph(format!(
                "token mix: mu {m:?} is not [mixes, {}]",
                s[1]
            )));
        }
        let outs: Vec<TensorId> = (0..m[0]).map(|_| self.activation(s.clone())).collect();
        self.push(TokenMix {
            x,
            delta,
            mu,
            outs: outs.clone(),
        });
        Ok(outs)
    }
}

impl Op for TokenMix {
    fn name(&self) -> &'static str {
        "token_mix"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.x, self.delta, self.mu], self.outs.clone())
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.x).to_vec();
        let outs = self
            .outs
            .iter()
            .map(|&o| cx.buf(o))
            .collect::<Result<Vec<_>>>()?;
        let (x, delta, mu) = (cx.buf(self.x)?, cx.buf(self.delta)?, cx.buf(self.mu)?);
        let d = launch(cx.gpu(), x, delta, mu, &outs, s[0], s[1])?;
        cx.push(d);
        Ok(())
    }
}

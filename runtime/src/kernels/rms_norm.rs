//! RMSNorm `x / sqrt(mean(x²) + eps) * w` and LayerNorm `(x - mean) / sqrt(var + eps) * w + b`,
//! one workgroup per row; grouped (Mamba-2's gated norm, RWKV's GroupNorm): each row of width
//! `groups * dim` normalised per group of `dim`, the weights spanning the whole row. CPU
//! adapters take shaders/rms_norm_lanes.wgsl instead: one row per invocation, no barriers.

use bytemuck::{Pod, Zeroable};

use super::{kernel, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Lowering;
use crate::graph::{Graph, TensorId};
use crate::op::Op;
use crate::shader::ShaderDefs;

pub const KERNEL: Kernel = kernel!("rms_norm", variants);
pub const LANES: Kernel = kernel!("rms_norm_lanes", variants);

/// Which kernel normalises the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One workgroup of 256 per row, reducing in workgroup memory (GPUs).
    Workgroup,
    /// One row per invocation (CPU adapters, where barriers cost a switch between the
    /// workgroup's SIMD vectors and a short group leaves most of a workgroup idle).
    Lanes,
}

impl Layout {
    pub fn for_device(gpu: &Gpu) -> Layout {
        match gpu.info.device_type {
            wgpu::DeviceType::Cpu => Layout::Lanes,
            _ => Layout::Workgroup,
        }
    }
}

fn defs(centered: bool, bias: bool) -> ShaderDefs {
    ShaderDefs::new()
        .bool("CENTERED", centered)
        .bool("BIAS", bias)
}

/// RMSNorm and LayerNorm, each with and without a bias.
pub fn variants() -> Vec<ShaderDefs> {
    [(false, false), (false, true), (true, false), (true, true)]
        .map(|(c, b)| defs(c, b))
        .to_vec()
}

/// RMSNorm, or LayerNorm when `centered` (+ `bias`), per group of width / groups columns (1
/// group: the whole row); the weight spans the whole row.
#[derive(Debug)]
pub struct Norm {
    pub x: TensorId,
    pub w: TensorId,
    pub bias: Option<TensorId>,
    pub out: TensorId,
    pub eps: f32,
    pub groups: usize,
    pub centered: bool,
}

impl Graph {
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
        self.push(Norm {
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
}

impl Op for Norm {
    fn name(&self) -> &'static str {
        "norm"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.x, self.w];
        r.extend(self.bias);
        (r, vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let s = cx.shape(self.x);
        let kind = NormKind {
            centered: self.centered,
            bias: cx.opt_buf(self.bias)?,
        };
        let (x, w, out) = (cx.buf(self.x)?, cx.buf(self.w)?, cx.buf(self.out)?);
        let (rows, dim) = (s[0], s[1] / self.groups);
        let d = launch_norm(cx.gpu(), x, w, out, rows, dim, self.eps, self.groups, kind)?;
        cx.push([d]);
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    groups: u32,
}

pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<Dispatch> {
    launch_grouped(gpu, x, w, out, rows, dim, eps, 1)
}

/// What kind of normalisation, and its bias.
#[derive(Debug, Clone, Copy)]
pub struct NormKind<'a> {
    /// LayerNorm (subtract the mean) rather than RMSNorm.
    pub centered: bool,
    pub bias: Option<&'a wgpu::Buffer>,
}

/// `rows` rows of `groups * dim` values, each group of `dim` normalised on its own; the
/// weight spans the whole row.
#[allow(clippy::too_many_arguments)]
pub fn launch_grouped(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
    groups: usize,
) -> Result<Dispatch> {
    let rms = NormKind {
        centered: false,
        bias: None,
    };
    launch_norm(gpu, x, w, out, rows, dim, eps, groups, rms)
}

/// RMSNorm or LayerNorm (`kind`) of `rows` rows of `groups` groups of `dim` values, with the
/// device's [`Layout`].
#[allow(clippy::too_many_arguments)]
pub fn launch_norm(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
    groups: usize,
    kind: NormKind,
) -> Result<Dispatch> {
    let layout = Layout::for_device(gpu);
    launch_layout(gpu, layout, x, w, out, rows, dim, eps, groups, kind)
}

/// [`launch_norm`] with a given layout.
#[allow(clippy::too_many_arguments)]
pub fn launch_layout(
    gpu: &Gpu,
    layout: Layout,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
    groups: usize,
    kind: NormKind,
) -> Result<Dispatch> {
    let params = Params {
        rows: (rows * groups) as u32,
        dim: dim as u32,
        eps,
        groups: groups as u32,
    };
    let n = (rows * groups) as u32;
    let (kernel, workgroups) = match layout {
        Layout::Workgroup => (KERNEL, n),
        Layout::Lanes => (LANES, n.div_ceil(8)),
    };
    kernel.dispatch(
        gpu,
        &defs(kind.centered, kind.bias.is_some()),
        &params,
        &[x, w, out, kind.bias.unwrap_or(&gpu.dummy)],
        gpu.grid(workgroups),
    )
}

pub fn reference(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    reference_grouped(x, w, dim, eps, 1)
}

pub fn reference_grouped(x: &[f32], w: &[f32], dim: usize, eps: f32, groups: usize) -> Vec<f32> {
    reference_norm(x, w, None, dim, eps, groups, false)
}

/// RMSNorm or (`centered`) LayerNorm on the CPU, in f64.
pub fn reference_norm(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dim: usize,
    eps: f32,
    groups: usize,
    centered: bool,
) -> Vec<f32> {
    x.chunks(dim)
        .enumerate()
        .flat_map(|(r, row)| {
            let mean = match centered {
                true => row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64,
                false => 0.0,
            };
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            let at = (r % groups) * dim;
            (0..dim).map(move |i| {
                let b = bias.map_or(0.0, |b| b[at + i] as f64);
                ((row[i] as f64 - mean) * inv * w[at + i] as f64 + b) as f32
            })
        })
        .collect()
}

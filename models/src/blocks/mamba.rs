//! The Mamba mixer, shared by Mamba, Mamba-2, Jamba (Mamba layers with RMSNorms on dt, B
//! and C) and Zamba2 (Mamba-2 layers): the input projection (split into its parts at load
//! time), a depthwise causal conv1d with silu, the selective scan (kernels::linear_scan with
//! dt * A decays), the D skip connection, silu(z) gating, and the output projection. The two
//! versions differ in where dt, B and C come from and in their decays:
//! * Mamba: per channel (one state head per channel, dk = state size, dv = 1), dt from a
//!   low-rank projection of the conv output, A per (channel, state), B and C shared by all
//!   channels;
//! * Mamba-2: heads of head_dim channels with one scalar A each, dt straight from the input
//!   projection, B and C in n_groups groups (convolved with x), and a grouped RMSNorm after
//!   the gate.
//!
//! The conv inputs and the scan state are recurrent states of the session; nothing here
//! depends on a position, so a sequence may be as long as the caller wants.

use std::sync::Arc;

use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::linear_scan::{Decay, ScanShape};
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::GpuWeight;
use kestrel_runtime::TensorId;

use super::mlp::lin;
use super::GResult;
use crate::error::{ModelError, Result};
use crate::formats::config::JsonConfig;
use crate::vars::Vars;

/// The mixer's shape and options (each family reads them from its own config keys).
#[derive(Debug, Clone, PartialEq)]
pub struct MixerConfig {
    /// 2 for Mamba-2.
    pub version: u32,
    pub hidden: usize,
    /// Channels of the scan (expand * hidden).
    pub inner: usize,
    pub state: usize,
    pub conv_kernel: usize,
    /// Mamba: rank of the dt projection.
    pub dt_rank: usize,
    /// Mamba-2: heads and groups (head_dim = inner / heads). Mamba: heads = inner, groups 1.
    pub heads: usize,
    pub groups: usize,
    pub eps: f32,
    pub conv_bias: bool,
    pub proj_bias: bool,
    /// Jamba: RMSNorms on dt, B and C after x_proj.
    pub inner_norms: bool,
}

impl MixerConfig {
    /// Check the conv kernel and the scan's shape against what the kernels support.
    pub fn validate(&self, c: &JsonConfig) -> Result<()> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        if self.inner == 0 || self.heads == 0 {
            return Err(bad(
                "intermediate_size",
                format!(
                    "{} channels in {} heads: both must be positive",
                    self.inner, self.heads
                ),
            ));
        }
        if self.version == 2 && self.proj_bias {
            return Err(bad(
                "use_bias",
                "true (an in_proj bias) is not supported for Mamba-2".into(),
            ));
        }
        kestrel_runtime::kernels::conv1d::validate(self.conv_kernel)
            .map_err(|e| bad("conv_kernel", e.to_string()))?;
        self.scan_shape()
            .validate()
            .map_err(|e| bad("state_size", e.to_string()))
    }

    fn conv_state(&self, l: usize, name: &str) -> String {
        format!("layer.{l}.conv.{name}")
    }

    fn ssm_state(&self, l: usize) -> String {
        format!("layer.{l}.ssm")
    }

    /// The recurrent states of layer `l`'s mixer: its convolutions' inputs and the scan.
    pub fn layer_states(&self, l: usize) -> Vec<StateSpec> {
        let shape = self.scan_shape();
        let convs = self.convs().into_iter().map(|(name, ch)| {
            StateSpec::recurrent(self.conv_state(l, name), vec![self.conv_kernel - 1, ch])
        });
        convs
            .chain(std::iter::once(StateSpec::recurrent(
                self.ssm_state(l),
                vec![shape.heads * shape.dv, shape.dk],
            )))
            .collect()
    }

    fn head_dim(&self) -> usize {
        self.inner / self.heads
    }

    /// Channels of B (and of C): the state size per group.
    fn bc_width(&self) -> usize {
        self.groups * self.state
    }

    fn scan_shape(&self) -> ScanShape {
        ScanShape {
            heads: self.heads,
            qk_heads: self.groups,
            dk: self.state,
            dv: self.head_dim(),
            decay: Decay::DtA {
                per_key: self.version == 1,
            },
            delta: false,
            bonus: false,
        }
    }

    /// The convolutions of a layer: (name, channels). Mamba convolves x; Mamba-2 x, B and C.
    fn convs(&self) -> Vec<(&'static str, usize)> {
        match self.version {
            1 => vec![("x", self.inner)],
            _ => vec![
                ("x", self.inner),
                ("B", self.bc_width()),
                ("C", self.bc_width()),
            ],
        }
    }
}

/// A convolution over some channels: weights [channels, kernel] and an optional bias.
#[derive(Clone)]
struct Conv {
    w: Arc<GpuWeight>,
    bias: Option<Arc<GpuWeight>>,
}

/// One layer's mixer: everything between the layer's norm and its residual add.
#[derive(Clone)]
pub struct MambaMixer {
    /// The input projection's parts: x, z and (Mamba-2) B, C, dt.
    in_x: Arc<GpuWeight>,
    in_z: Arc<GpuWeight>,
    in_bias: Option<[Arc<GpuWeight>; 2]>,
    in_b: Option<Arc<GpuWeight>>,
    in_c: Option<Arc<GpuWeight>>,
    in_dt: Option<Arc<GpuWeight>>,
    /// One per entry of `MixerConfig::convs`.
    convs: Vec<Conv>,
    /// Mamba: x_proj's parts (dt low rank, B, C) and dt_proj.
    x_dt: Option<Arc<GpuWeight>>,
    x_b: Option<Arc<GpuWeight>>,
    x_c: Option<Arc<GpuWeight>>,
    dt_proj: Option<Arc<GpuWeight>>,
    /// Jamba's RMSNorms of dt (low rank), B and C.
    inner_norms: Option<[Arc<GpuWeight>; 3]>,
    /// dt_proj's bias (Mamba) or dt_bias (Mamba-2), added before softplus.
    dt_bias: Arc<GpuWeight>,
    /// -exp(A_log): [inner, state] (Mamba) or [heads] (Mamba-2).
    a: Arc<GpuWeight>,
    /// The skip weight per channel (Mamba-2's per-head D repeated over its channels).
    d: Arc<GpuWeight>,
    /// Mamba-2's gated RMSNorm weight.
    gate_norm: Option<Arc<GpuWeight>>,
    out: Arc<GpuWeight>,
    out_bias: Option<Arc<GpuWeight>>,
}

impl MambaMixer {
    /// The mixer's weights in scope `m` (e.g. `backbone.layers.3.mixer`).
    pub fn load(c: &MixerConfig, m: &Vars<'_>) -> Result<MambaMixer> {
        let (h, di, n, k) = (c.hidden, c.inner, c.state, c.conv_kernel);
        let bcw = c.bc_width();
        // in_proj rows: Mamba [x, z]; Mamba-2 [z, x, B, C, dt].
        let in_rows = match c.version {
            1 => 2 * di,
            _ => 2 * di + 2 * bcw + c.heads,
        };
        let part = |start, count| m.matrix_rows("in_proj.weight", [in_rows, h], start, count);
        let (x_at, z_at) = if c.version == 1 { (0, di) } else { (di, 0) };
        let in_x = part(x_at, di)?;
        let in_z = part(z_at, di)?;
        let (in_b, in_c, in_dt) = if c.version == 2 {
            (
                Some(part(2 * di, bcw)?),
                Some(part(2 * di + bcw, bcw)?),
                Some(part(2 * di + 2 * bcw, c.heads)?),
            )
        } else {
            (None, None, None)
        };
        // Mamba only (MixerConfig::validate refuses it for Mamba-2).
        let in_bias = if c.proj_bias {
            let b = m.host("in_proj.bias", &[in_rows])?;
            let parts = m.pp("in_proj.bias");
            Some([
                parts.computed_vector("x", &b[..di])?,
                parts.computed_vector("z", &b[di..])?,
            ])
        } else {
            None
        };
        // The conv weights [channels, 1, kernel] split by channel like in_proj.
        let conv_channels: usize = c.convs().iter().map(|(_, ch)| ch).sum();
        let conv_w = m.host("conv1d.weight", &[conv_channels, 1, k])?;
        let conv_b = if c.conv_bias {
            Some(m.host("conv1d.bias", &[conv_channels])?)
        } else {
            None
        };
        let (w_parts, b_parts) = (m.pp("conv1d.weight"), m.pp("conv1d.bias"));
        let mut convs = Vec::new();
        let mut at = 0;
        for (name, ch) in c.convs() {
            convs.push(Conv {
                w: w_parts.computed_vector(name, &conv_w[at * k..(at + ch) * k])?,
                bias: match &conv_b {
                    Some(b) => Some(b_parts.computed_vector(name, &b[at..at + ch])?),
                    None => None,
                },
            });
            at += ch;
        }
        let neg_exp = |v: Vec<f32>| v.into_iter().map(|x| -x.exp()).collect::<Vec<_>>();
        let layer = if c.version == 1 {
            let xp = "x_proj.weight";
            let xrows = c.dt_rank + 2 * n;
            let inner_norms = match c.inner_norms {
                true => Some([
                    m.vector("dt_layernorm.weight", c.dt_rank)?,
                    m.vector("b_layernorm.weight", n)?,
                    m.vector("c_layernorm.weight", n)?,
                ]),
                false => None,
            };
            MambaMixer {
                inner_norms,
                in_x,
                in_z,
                in_bias,
                in_b,
                in_c,
                in_dt,
                convs,
                x_dt: Some(m.matrix_rows(xp, [xrows, di], 0, c.dt_rank)?),
                x_b: Some(m.matrix_rows(xp, [xrows, di], c.dt_rank, n)?),
                x_c: Some(m.matrix_rows(xp, [xrows, di], c.dt_rank + n, n)?),
                dt_proj: Some(m.matrix("dt_proj.weight", di, c.dt_rank)?),
                dt_bias: m.vector("dt_proj.bias", di)?,
                a: m.computed_vector("A", &neg_exp(m.host("A_log", &[di, n])?))?,
                d: m.vector("D", di)?,
                gate_norm: None,
                out: m.matrix("out_proj.weight", h, di)?,
                out_bias: match c.proj_bias {
                    true => Some(m.vector("out_proj.bias", h)?),
                    false => None,
                },
            }
        } else {
            let d = m.host("D", &[c.heads])?;
            let d: Vec<f32> = d
                .iter()
                .flat_map(|&v| std::iter::repeat_n(v, c.head_dim()))
                .collect();
            MambaMixer {
                inner_norms: None,
                in_x,
                in_z,
                in_bias,
                in_b,
                in_c,
                in_dt,
                convs,
                x_dt: None,
                x_b: None,
                x_c: None,
                dt_proj: None,
                dt_bias: m.vector("dt_bias", c.heads)?,
                a: m.computed_vector("A", &neg_exp(m.host("A_log", &[c.heads])?))?,
                d: m.computed_vector("D.per_channel", &d)?,
                gate_norm: Some(m.vector("norm.weight", di)?),
                out: m.matrix("out_proj.weight", h, di)?,
                out_bias: None,
            }
        };
        Ok(layer)
    }

    /// The mixer of layer `l` over `x` [T, hidden] (already normalised).
    pub fn build(
        &self,
        g: &mut Graph,
        c: &MixerConfig,
        l: usize,
        x: TensorId,
    ) -> GResult<TensorId> {
        let layer = self;
        let opt = |w: &Option<Arc<GpuWeight>>| -> GResult<Arc<GpuWeight>> {
            w.clone()
                .ok_or_else(|| kestrel_runtime::Error::Graph("mamba: missing weight".into()))
        };
        let in_bias = layer.in_bias.as_ref();
        let xs = lin(g, x, &layer.in_x, in_bias.map(|b| &b[0]))?;
        let z = lin(g, x, &layer.in_z, in_bias.map(|b| &b[1]))?;
        let conv = |g: &mut Graph, i: usize, input: TensorId| {
            let (name, ch) = c.convs()[i];
            let cv = &layer.convs[i];
            let w = g.weight(&cv.w);
            let b = cv.bias.as_ref().map(|b| g.weight(b));
            let state = g.recurrent_state(&c.conv_state(l, name), &[c.conv_kernel - 1, ch]);
            g.conv1d(input, w, b, state, c.conv_kernel, true)
        };
        let xc = conv(g, 0, xs)?;
        let (b, cc, dt_raw) = if c.version == 1 {
            let mut dt_low = lin(g, xc, &opt(&layer.x_dt)?, None)?;
            let mut b = lin(g, xc, &opt(&layer.x_b)?, None)?;
            let mut cc = lin(g, xc, &opt(&layer.x_c)?, None)?;
            if let Some([dn, bn, cn]) = &layer.inner_norms {
                for (t, w) in [(&mut dt_low, dn), (&mut b, bn), (&mut cc, cn)] {
                    let w = g.weight(w);
                    *t = g.rms_norm(*t, w, c.eps)?;
                }
            }
            (b, cc, lin(g, dt_low, &opt(&layer.dt_proj)?, None)?)
        } else {
            let b = lin(g, x, &opt(&layer.in_b)?, None)?;
            let cc = lin(g, x, &opt(&layer.in_c)?, None)?;
            let dt = lin(g, x, &opt(&layer.in_dt)?, None)?;
            (conv(g, 1, b)?, conv(g, 2, cc)?, dt)
        };
        let dt_bias = g.weight(&layer.dt_bias);
        let dt = g.elementwise(Elementwise::SoftplusAdd, dt_raw, dt_bias)?;
        let a = g.weight(&layer.a);
        let shape = c.scan_shape();
        let state = g.recurrent_state(&c.ssm_state(l), &[shape.heads * shape.dv, shape.dk]);
        let y = g.linear_scan(cc, b, xc, Some(dt), Some(a), None, state, shape)?;
        let d = g.weight(&layer.d);
        let skip = g.elementwise(Elementwise::Mul, xc, d)?;
        let y = g.add_tensors(y, skip)?;
        let y = g.swiglu(z, y)?;
        let y = match &layer.gate_norm {
            Some(w) => {
                let w = g.weight(w);
                g.rms_norm_grouped(y, w, c.eps, c.groups)?
            }
            None => y,
        };
        lin(g, y, &layer.out, layer.out_bias.as_ref())
    }
}

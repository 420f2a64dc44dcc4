//! Mamba (MambaForCausalLM) and Mamba-2 (Mamba2ForCausalLM) as configurations of one block:
//! RMSNorm, the input projection (split into its parts at load time), a depthwise causal
//! conv1d with silu, the selective scan (kernels::linear_scan with dt * A decays), the D skip
//! connection, silu(z) gating, and the output projection. They differ in where dt, B and C
//! come from and in their decays:
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

use kestrel_runtime::arch::{Architecture, Head};
use kestrel_runtime::graph::Graph;
use kestrel_runtime::kernels::elementwise::Elementwise;
use kestrel_runtime::kernels::linear_scan::{Decay, ScanShape};
use kestrel_runtime::state::StateSpec;
use kestrel_runtime::tensor::{DType, GpuWeight};
use kestrel_runtime::TensorId;

use crate::config::JsonConfig;
use crate::error::{ModelError, Result};
use crate::weights::Uploader;

pub const ARCHITECTURES: &[&str] = &["MambaForCausalLM", "Mamba2ForCausalLM"];

/// Whether the config is a Mamba or Mamba-2 model.
pub fn is_mamba(c: &JsonConfig) -> bool {
    c.architecture().is_ok_and(|a| {
        matches!(
            a.as_str(),
            "MambaForCausalLM" | "mamba" | "Mamba2ForCausalLM" | "mamba2"
        )
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct MambaConfig {
    /// 2 for Mamba-2.
    pub version: u32,
    pub hidden: usize,
    /// Channels of the scan (expand * hidden).
    pub inner: usize,
    pub layers: usize,
    pub vocab: usize,
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
    pub tie_embeddings: bool,
    pub bos: Vec<u32>,
    pub eos: Vec<u32>,
}

impl MambaConfig {
    pub fn from_json(c: &JsonConfig) -> Result<MambaConfig> {
        let arch = c.architecture()?;
        let version = if arch.starts_with("Mamba2") || arch == "mamba2" {
            2
        } else {
            1
        };
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
        let hidden = c.positive("hidden_size")?;
        let expand = c.opt_usize("expand")?.unwrap_or(2);
        let inner = match c.opt_usize("intermediate_size")? {
            Some(n) if version == 1 => n,
            _ => expand * hidden,
        };
        let state = c.opt_usize("state_size")?.unwrap_or(16);
        let dt_rank = match c.get("time_step_rank") {
            Some(serde_json::Value::String(s)) if s == "auto" => hidden.div_ceil(16),
            _ => c
                .opt_usize("time_step_rank")?
                .unwrap_or(hidden.div_ceil(16)),
        };
        let (heads, groups) = if version == 2 {
            let heads = c.positive("num_heads")?;
            let head_dim = c.positive("head_dim")?;
            if heads * head_dim != inner {
                return Err(bad(
                    "num_heads",
                    format!(
                        "{heads} heads of head_dim {head_dim} do not make the {inner} channels \
                         of expand * hidden_size"
                    ),
                ));
            }
            let groups = c.opt_usize("n_groups")?.unwrap_or(1);
            if groups == 0 || !heads.is_multiple_of(groups) {
                return Err(bad(
                    "n_groups",
                    format!("{groups} groups do not divide {heads} heads"),
                ));
            }
            // Inference clamps dt to time_step_limit; only the default (no clamp) is supported.
            if let Some(serde_json::Value::Array(limit)) = c.get("time_step_limit") {
                let lo = limit.first().and_then(|v| v.as_f64()).unwrap_or(0.0);
                let hi_is_inf = limit.get(1).is_some_and(|v| {
                    v.as_f64().is_some_and(f64::is_infinite)
                        || v.get("__float__").and_then(|s| s.as_str()) == Some("Infinity")
                });
                if lo != 0.0 || !hi_is_inf {
                    return Err(bad(
                        "time_step_limit",
                        "is supported only as [0, inf] (no clamping of dt)".into(),
                    ));
                }
            }
            if c.opt_bool("norm_before_gate")?.unwrap_or(false) {
                return Err(bad("norm_before_gate", "true is not supported".into()));
            }
            (heads, groups)
        } else {
            (inner, 1)
        };
        let act = c
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("silu");
        if act != "silu" {
            return Err(bad(
                "hidden_act",
                format!("'{act}' is not supported (silu is)"),
            ));
        }
        let config = MambaConfig {
            version,
            hidden,
            inner,
            layers: c.positive("num_hidden_layers")?,
            vocab: c.positive("vocab_size")?,
            state,
            conv_kernel: c.opt_usize("conv_kernel")?.unwrap_or(4),
            dt_rank,
            heads,
            groups,
            eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
            conv_bias: c.opt_bool("use_conv_bias")?.unwrap_or(true),
            proj_bias: c.opt_bool("use_bias")?.unwrap_or(false),
            inner_norms: false,
            tie_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            bos: c.opt_token_ids("bos_token_id"),
            eos: c.opt_token_ids("eos_token_id"),
        };
        config.validate(c)?;
        Ok(config)
    }

    /// Check the conv kernel and the scan's shape against what the kernels support.
    pub(crate) fn validate(&self, c: &JsonConfig) -> Result<()> {
        let bad = |key: &str, message: String| ModelError::BadConfigValue {
            file: c.path.clone(),
            key: key.to_string(),
            message,
        };
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
    pub(crate) fn layer_states(&self, l: usize) -> Vec<StateSpec> {
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
pub(crate) struct MambaMixer {
    /// The input projection's parts: x, z and (Mamba-2) B, C, dt.
    in_x: Arc<GpuWeight>,
    in_z: Arc<GpuWeight>,
    in_bias: Option<[Arc<GpuWeight>; 2]>,
    in_b: Option<Arc<GpuWeight>>,
    in_c: Option<Arc<GpuWeight>>,
    in_dt: Option<Arc<GpuWeight>>,
    /// One per entry of `MambaConfig::convs`.
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

#[derive(Clone)]
pub struct Mamba {
    pub config: MambaConfig,
    embed: Arc<GpuWeight>,
    /// Per layer: its RMSNorm and its mixer.
    layers: Vec<(Arc<GpuWeight>, MambaMixer)>,
    norm: Arc<GpuWeight>,
    lm_head: Arc<GpuWeight>,
    pub weight_bytes: u64,
    pub file_bytes: u64,
}

impl Mamba {
    pub fn load(config: MambaConfig, up: &mut Uploader<'_>) -> Result<Mamba> {
        let c = &config;
        let h = c.hidden;
        let embed = up.matrix("backbone.embeddings.weight", c.vocab, h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = format!("backbone.layers.{l}");
            let norm = up.vector(&format!("{p}.norm.weight"), h)?;
            layers.push((norm, MambaMixer::load(c, up, &format!("{p}.mixer"))?));
        }
        let norm = up.vector("backbone.norm_f.weight", h)?;
        let lm_head = up.lm_head(&embed, c.tie_embeddings, c.vocab, h)?;
        Ok(Mamba {
            weight_bytes: up.gpu_bytes,
            file_bytes: up.file_bytes,
            config,
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

impl MambaMixer {
    /// The mixer's weights under `m` (e.g. `backbone.layers.3.mixer`).
    pub(crate) fn load(c: &MambaConfig, up: &mut Uploader<'_>, m: &str) -> Result<MambaMixer> {
        let (h, di, n, k) = (c.hidden, c.inner, c.state, c.conv_kernel);
        let bcw = c.bc_width();
        // in_proj rows: Mamba [x, z]; Mamba-2 [z, x, B, C, dt].
        let in_rows = match c.version {
            1 => 2 * di,
            _ => 2 * di + 2 * bcw + c.heads,
        };
        let in_name = format!("{m}.in_proj.weight");
        let part = |up: &mut Uploader<'_>, start, count| {
            up.matrix_rows(&in_name, in_rows, h, start, count)
        };
        let (x_at, z_at) = if c.version == 1 { (0, di) } else { (di, 0) };
        let in_x = part(up, x_at, di)?;
        let in_z = part(up, z_at, di)?;
        let (in_b, in_c, in_dt) = if c.version == 2 {
            (
                Some(part(up, 2 * di, bcw)?),
                Some(part(up, 2 * di + bcw, bcw)?),
                Some(part(up, 2 * di + 2 * bcw, c.heads)?),
            )
        } else {
            (None, None, None)
        };
        let in_bias = if c.proj_bias {
            if c.version == 2 {
                return Err(ModelError::BadOption(
                    "Mamba-2 with use_bias (in_proj bias) is not supported".into(),
                ));
            }
            let b = up.host(&format!("{m}.in_proj.bias"), &[in_rows])?;
            Some([
                up.vector_from(&format!("{m}.in_proj.bias.x"), &b[..di])?,
                up.vector_from(&format!("{m}.in_proj.bias.z"), &b[di..])?,
            ])
        } else {
            None
        };
        // The conv weights [channels, 1, kernel] split by channel like in_proj.
        let conv_channels: usize = c.convs().iter().map(|(_, ch)| ch).sum();
        let conv_w = up.host(&format!("{m}.conv1d.weight"), &[conv_channels, 1, k])?;
        let conv_b = if c.conv_bias {
            Some(up.host(&format!("{m}.conv1d.bias"), &[conv_channels])?)
        } else {
            None
        };
        let mut convs = Vec::new();
        let mut at = 0;
        for (name, ch) in c.convs() {
            convs.push(Conv {
                w: up.vector_from(
                    &format!("{m}.conv1d.weight.{name}"),
                    &conv_w[at * k..(at + ch) * k],
                )?,
                bias: match &conv_b {
                    Some(b) => {
                        Some(up.vector_from(&format!("{m}.conv1d.bias.{name}"), &b[at..at + ch])?)
                    }
                    None => None,
                },
            });
            at += ch;
        }
        let neg_exp = |v: Vec<f32>| v.into_iter().map(|x| -x.exp()).collect::<Vec<_>>();
        let layer = if c.version == 1 {
            let xp = format!("{m}.x_proj.weight");
            let xrows = c.dt_rank + 2 * n;
            let inner_norms = match c.inner_norms {
                true => Some([
                    up.vector(&format!("{m}.dt_layernorm.weight"), c.dt_rank)?,
                    up.vector(&format!("{m}.b_layernorm.weight"), n)?,
                    up.vector(&format!("{m}.c_layernorm.weight"), n)?,
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
                x_dt: Some(up.matrix_rows(&xp, xrows, di, 0, c.dt_rank)?),
                x_b: Some(up.matrix_rows(&xp, xrows, di, c.dt_rank, n)?),
                x_c: Some(up.matrix_rows(&xp, xrows, di, c.dt_rank + n, n)?),
                dt_proj: Some(up.matrix(&format!("{m}.dt_proj.weight"), di, c.dt_rank)?),
                dt_bias: up.vector(&format!("{m}.dt_proj.bias"), di)?,
                a: {
                    let a = neg_exp(up.host(&format!("{m}.A_log"), &[di, n])?);
                    up.vector_from(&format!("{m}.A"), &a)?
                },
                d: up.vector(&format!("{m}.D"), di)?,
                gate_norm: None,
                out: up.matrix(&format!("{m}.out_proj.weight"), h, di)?,
                out_bias: match c.proj_bias {
                    true => Some(up.vector(&format!("{m}.out_proj.bias"), h)?),
                    false => None,
                },
            }
        } else {
            let d = up.host(&format!("{m}.D"), &[c.heads])?;
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
                dt_bias: up.vector(&format!("{m}.dt_bias"), c.heads)?,
                a: {
                    let a = neg_exp(up.host(&format!("{m}.A_log"), &[c.heads])?);
                    up.vector_from(&format!("{m}.A"), &a)?
                },
                d: up.vector_from(&format!("{m}.D.per_channel"), &d)?,
                gate_norm: Some(up.vector(&format!("{m}.norm.weight"), di)?),
                out: up.matrix(&format!("{m}.out_proj.weight"), h, di)?,
                out_bias: None,
            }
        };
        Ok(layer)
    }

    /// The mixer of layer `l` over `x` [T, hidden] (already normalised).
    pub(crate) fn build(
        &self,
        g: &mut Graph,
        c: &MambaConfig,
        l: usize,
        x: TensorId,
    ) -> kestrel_runtime::Result<TensorId> {
        let layer = self;
        let lin = crate::lin;
        let opt = |w: &Option<Arc<GpuWeight>>| -> kestrel_runtime::Result<Arc<GpuWeight>> {
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
            let state = g.state(&c.conv_state(l, name), &[c.conv_kernel - 1, ch]);
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
        let state = g.state(&c.ssm_state(l), &[shape.heads * shape.dv, shape.dk]);
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

impl Architecture for Mamba {
    fn vocab_size(&self) -> usize {
        self.config.vocab
    }

    /// No position limit: the state is the same size at any length.
    fn max_context(&self) -> usize {
        u32::MAX as usize
    }

    fn states(&self, _capacity: usize) -> Vec<StateSpec> {
        (0..self.config.layers)
            .flat_map(|l| self.config.layer_states(l))
            .collect()
    }

    fn build(&self, n: usize, _capacity: usize, head: Head) -> kestrel_runtime::Result<Graph> {
        let c = &self.config;
        let mut g = Graph::new();
        let ids = g.input("tokens", &[n], DType::U32);
        let embed = g.weight(&self.embed);
        let mut x = g.embedding(embed, ids)?;
        for (l, (norm, mixer)) in self.layers.iter().enumerate() {
            let norm = g.weight(norm);
            let h = g.rms_norm(x, norm, c.eps)?;
            let out = mixer.build(&mut g, c, l, h)?;
            x = g.add_tensors(x, out)?;
        }
        let norm = g.weight(&self.norm);
        let x = g.rms_norm(x, norm, c.eps)?;
        let lm_head = g.weight(&self.lm_head);
        crate::lm_head(&mut g, x, lm_head, head)?;
        Ok(g)
    }
}

//! Matrix-vector product for decode (one token): `y = W x + b`, W [N, K] in f32, packed f16
//! or bf16, or a ggml block format (dequantized inside the kernel, shaders/quant.wgsl), with the
//! fusions decode's Linear op asks for ([`Fusion`]): an RMSNorm of x or the merge of split-K
//! attention pieces as x is loaded, a residual add or SwiGLU of row pairs on the way out.
//! The lanes that share a row add their partial sums through workgroup memory, or by
//! subgroup shuffles where the adapter's subgroups hold them ([`Layout::subgroup`], [`runs`]).

use bytemuck::{Pod, Zeroable};

use super::elementwise::Gate;
use super::{kernel, weight4_binding, weight_binding, weight_defs, weight_specs, Dispatch, Kernel};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::quant::QuantFormat;
use crate::shader::ShaderDefs;
use crate::tensor::{DType, GpuWeight};

pub const KERNEL: Kernel = kernel!("matvec", variants);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    k: u32,
    n: u32,
    col_offset: u32,
    e0: u32,
    ne: u32,
    eps: f32,
    head_dim: u32,
    splits: u32,
}

/// The longest x a MERGE prologue takes (its workgroup copy of the merged x: 8 KiB).
pub const MERGE_MAX_K: usize = 2048;

/// The most rows per lane with a MERGE prologue: its merged x (8 KiB) and the lanes' partial
/// sums (64 x rows per lane floats) share WebGPU's 16 KiB of workgroup memory.
pub const MERGE_MAX_ROWS_PER_LANE: u32 = 16;

/// What the kernel does to x as it loads it.
#[derive(Debug, Clone, Copy)]
pub enum Prologue<'a> {
    None,
    /// RMSNorm of x with this weight [K] (f32) and eps.
    Norm(&'a wgpu::Buffer, f32),
    /// x is split-K decode attention's partial results for heads of `head_dim` values cut in
    /// `splits` pieces (kernels::decode_attention::launch_pieces), merged as loaded.
    Merge {
        head_dim: usize,
        splits: usize,
    },
}

/// What the kernel does with each row's sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `y[r] = sum`.
    Store,
    /// `y[r] += sum`: a residual add into y, in place.
    Accumulate,
    /// Rows are interleaved (gate, up) pairs: `y[i] = act(sum[2i]) * sum[2i + 1]`.
    Glu(Gate),
}

impl Epilogue {
    /// Every epilogue (both SwiGLU gates).
    pub const ALL: [Epilogue; 4] = [
        Epilogue::Store,
        Epilogue::Accumulate,
        Epilogue::Glu(Gate::Silu),
        Epilogue::Glu(Gate::GeluTanh),
    ];
}

/// A matvec's fusions.
#[derive(Debug, Clone, Copy)]
pub struct Fusion<'a> {
    pub prologue: Prologue<'a>,
    pub epilogue: Epilogue,
}

impl Fusion<'_> {
    pub const NONE: Fusion<'static> = Fusion {
        prologue: Prologue::None,
        epilogue: Epilogue::Store,
    };
}

/// How shaders/matvec.wgsl spreads rows over the 64 invocations of a workgroup: `lanes`
/// invocations share a row (each reading every `lanes`-th word, vec4 or 32-value group of it),
/// and each handles `rows_per_lane` rows, reusing every value of x it loads for all of them.
/// With `subgroup` the lanes' partial sums are added by subgroup shuffles (no workgroup
/// memory, no barrier), where the adapter runs that ([`runs`]); else through workgroup memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub lanes: u32,
    pub rows_per_lane: u32,
    pub subgroup: bool,
}

impl Layout {
    /// Whether the kernels take this layout: `lanes` a power of two up to 64, 1 to 32 rows per
    /// lane (a workgroup sums its rows 64 at a time), at most `lanes` when summed by subgroup
    /// (lane r of a row group stores row r).
    pub fn is_valid(&self) -> bool {
        self.lanes.is_power_of_two()
            && self.lanes <= 64
            && self.rows_per_lane != 0
            && self.rows_per_lane <= 32
            && (!self.subgroup || self.rows_per_lane <= self.lanes)
    }

    /// Why this layout cannot take `w` with `epilogue` (with a bias or not), if it cannot: the
    /// checks the f32, int8 and f16 decode matvecs share.
    pub fn refusal(&self, w: &GpuWeight, bias: bool, epilogue: Epilogue) -> Option<String> {
        if !self.is_valid() {
            return Some(format!("unsupported layout {self:?}"));
        }
        if matches!(epilogue, Epilogue::Glu(_)) && (bias || !self.holds_row_pairs(w)) {
            return Some(
                "SwiGLU needs whole (gate, up) row pairs in every chunk, workgroup and (summed \
                 by subgroup) row group"
                    .into(),
            );
        }
        None
    }

    /// Whether a SwiGLU epilogue finds whole (gate, up) row pairs in every chunk of `w`, every
    /// workgroup and, summed by subgroup, every row group.
    pub fn holds_row_pairs(&self, w: &GpuWeight) -> bool {
        self.rows().is_multiple_of(2)
            && (!self.subgroup || self.rows_per_lane.is_multiple_of(2))
            && w.chunks.iter().all(|c| c.row_start % 2 + c.rows % 2 == 0)
    }

    /// For CPU drivers (lavapipe, llvmpipe), which pay per value loaded and per operation: 16
    /// lanes per row and 16 rows per lane load x, and scale and sum it for the quantized dot
    /// products, once per 16 rows (64 rows per workgroup). On lavapipe this took less matvec
    /// time than 8 lanes by 8 rows (SmolLM2 Q4_1 and Qwen2.5-0.5B Q4_K_M decode, A/B runs).
    pub const CPU: Layout = Layout::new(16, 16);
    /// For CPU drivers and most weight types ([`Layout::for_cpu`]): 2 lanes per row and 16
    /// rows per lane (512 rows per workgroup). Each step of a lane's loop reads the next words
    /// of its rows, so every row is read front to back a few words at a time. On lavapipe
    /// (Mesa 22.3, 2 cores) the decode matvec's time was dominated by the first load of each
    /// cache line, and this order took RWKV-7 0.1B f16 from 287 to 101 ms of matvec per token
    /// and Qwen2.5-Coder-0.5B Q4_K_M from 246 to 165 against [`Layout::CPU`] (alternated runs,
    /// one session).
    pub const CPU_STREAM: Layout = Layout::new(2, 16);
    /// For GPUs, which want many workgroups and wide, coalesced reads: 32 lanes per row and 2
    /// rows per lane (4 rows per workgroup). [`Layout::for_device`] sums the lanes by subgroup
    /// where the adapter's subgroups hold 32 lanes or more (NVIDIA's 32, AMD's 32 or 64).
    pub const GPU: Layout = Layout::new(32, 2);

    /// For CPU drivers and weights in textures ([`Layout::for_cpu_texture`]): 8 lanes per row
    /// and 16 rows per lane (128 rows per workgroup).
    pub const CPU_TEXTURE: Layout = Layout::new(8, 16);
    /// For CPU drivers and Q8_0 matrices of many rows (LM heads) in textures: one lane per
    /// row, 32 rows per lane (2048 rows per workgroup), each block of x loaded once for 32
    /// rows.
    pub const CPU_TEXTURE_WIDE: Layout = Layout::new(1, 32);

    /// For CPU adapters in a browser ([`Layout::for_cpu`], [`Layout::for_cpu_texture`]): one
    /// lane per row and 8 rows per lane (512 rows per workgroup). A browser zero-initialises
    /// a kernel's workgroup memory before it starts, which costs a barrier per workgroup, and
    /// SwiftShader's barriers are dear; with one lane per row the matvec has no workgroup
    /// memory (see shaders/matvec.wgsl's WORKGROUP_SUMS). Headless Chromium, SwiftShader, 2
    /// cores, SmolLM2-135M Q4_1 with weights in textures: matvec 159 ms a token against 196
    /// in 8x16, 177-181 in 1x4 and 1x16 (`decodeProfile`). Natively (no zero-initialisation)
    /// SwiftShader takes 8x16: 144-158 against 161-163 ms in 1x8.
    pub const BROWSER_CPU: Layout = Layout::new(1, 8);

    /// The layouts an untuned device takes: CPU drivers' for buffers ([`Layout::for_cpu`])
    /// and textures ([`Layout::for_cpu_texture`]), in a browser too, and GPUs' (which
    /// [`Layout::for_device`] sums by subgroup where it can).
    pub const DEFAULTS: [Layout; 6] = [
        Layout::CPU,
        Layout::CPU_STREAM,
        Layout::CPU_TEXTURE,
        Layout::CPU_TEXTURE_WIDE,
        Layout::BROWSER_CPU,
        Layout::GPU,
    ];

    /// `lanes` lanes per row and `rows_per_lane` rows per lane, summed through workgroup
    /// memory (or, with one lane, by none).
    pub const fn new(lanes: u32, rows_per_lane: u32) -> Layout {
        Layout {
            lanes,
            rows_per_lane,
            subgroup: false,
        }
    }

    /// This layout with its lanes summed by subgroup shuffles.
    pub const fn by_subgroup(self) -> Layout {
        Layout {
            subgroup: true,
            ..self
        }
    }

    /// The layout CPU adapters take, untuned, for a weight of `dtype`: [`Layout::CPU`] for
    /// Q4_0 and Q4_1, [`Layout::CPU_STREAM`] for every other type. Both sum through workgroup
    /// memory (their lanes exceed lavapipe's subgroups of 8 and SwiftShader's 4, or their
    /// rows per lane do). On lavapipe SmolLM2's Q4_1 layers were faster in 16x16 and its Q8_0
    /// head in 2x16 (matvec 50-52 against 53-55 ms a token); Qwen2.5-Coder-0.5B's Q5_0, Q8_0
    /// and K-quant weights all in 2x16 (165 against 222-237 ms with Q5_0 and Q8_0 in 16x16).
    /// Q4_0 reads its blocks as Q4_1 does (five words, nibbles), so it goes with it. In a
    /// browser, [`Layout::BROWSER_CPU`].
    pub fn for_cpu(dtype: DType) -> Layout {
        if cfg!(target_arch = "wasm32") {
            return Layout::BROWSER_CPU;
        }
        match dtype {
            DType::Quant(QuantFormat::Q4_0 | QuantFormat::Q4_1) => Layout::CPU,
            _ => Layout::CPU_STREAM,
        }
    }

    /// The layout CPU adapters take, untuned, for a weight of `dtype` held in textures with
    /// `rows` rows (per expert): [`Layout::CPU_TEXTURE_WIDE`] for Q8_0 matrices of at least 16
    /// of its workgroups, [`Layout::CPU_STREAM`] for the K-quants, [`Layout::CPU_TEXTURE`]
    /// for the rest. On lavapipe, with textures (timestamps, alternated runs):
    /// Qwen2.5-Coder-0.5B's Q8_0 LM head 35-39 ms a token against 47-51 in 2x16, 4x16 or
    /// 8x16; its Q5_0 gate/up 49 ms in 8x16 against 53-56 in 16x16, 1x32 or 1x16; its K-quant
    /// down 35-37 in 2x16 or 16x16 against 39 in 8x16; RWKV-7 0.1B's f16 matvecs 45-47
    /// against 48-51 in 16x16 and 58 in 2x16; SmolLM2's Q4_1 layers alike in 8x16 and 16x16.
    /// In a browser, [`Layout::BROWSER_CPU`] for all but those Q8_0 matrices.
    pub fn for_cpu_texture(dtype: DType, rows: usize) -> Layout {
        match dtype {
            DType::Quant(QuantFormat::Q8_0)
                if rows >= 16 * Layout::CPU_TEXTURE_WIDE.rows() as usize =>
            {
                Layout::CPU_TEXTURE_WIDE
            }
            _ if cfg!(target_arch = "wasm32") => Layout::BROWSER_CPU,
            DType::Quant(q) if q.block_elems() == 256 => Layout::CPU_STREAM,
            _ => Layout::CPU_TEXTURE,
        }
    }

    /// The layout for weight `w` on `gpu`: [`Layout::for_device`], but on an untuned CPU
    /// adapter that holds `w` in textures [`Layout::for_cpu_texture`].
    pub fn for_weight(gpu: &Gpu, w: &GpuWeight) -> Layout {
        let untuned_cpu =
            gpu.tuning().matvec.is_none() && gpu.info.device_type == wgpu::DeviceType::Cpu;
        match untuned_cpu && w.textured() {
            true => Layout::for_cpu_texture(w.dtype, w.rows / w.experts),
            false => Layout::for_device(gpu, w.dtype),
        }
    }

    /// The layout `bench --tune` chose for `gpu`, else the one for its kind of device and a
    /// weight of `dtype`: on GPUs summed by subgroup where [`runs`] allows it; on CPU adapters
    /// [`Layout::for_cpu`]. A tuned subgroup layout the adapter cannot run (another driver
    /// since) sums through workgroup memory instead.
    pub fn for_device(gpu: &Gpu, dtype: DType) -> Layout {
        let layout = if let Some(tuned) = gpu.tuning().matvec {
            tuned
        } else if gpu.info.device_type == wgpu::DeviceType::Cpu {
            Layout::for_cpu(dtype)
        } else {
            Layout::GPU.by_subgroup()
        };
        match runs(gpu, layout) {
            true => layout,
            false => Layout {
                subgroup: false,
                ..layout
            },
        }
    }

    /// Whether the kernel in this layout takes a prologue of `kind`: a merge only
    /// [`Layout::takes_merge`].
    fn takes(self, kind: Kind) -> bool {
        kind != Kind::Merge || self.takes_merge()
    }

    /// Whether the kernel in this layout takes a merged attention input: up to
    /// [`MERGE_MAX_ROWS_PER_LANE`] rows per lane.
    pub fn takes_merge(self) -> bool {
        self.rows_per_lane <= MERGE_MAX_ROWS_PER_LANE
    }

    /// Rows per workgroup.
    pub fn rows(self) -> u32 {
        64 / self.lanes * self.rows_per_lane
    }
}

/// Whether `gpu` runs `layout`: any layout that sums through workgroup memory; one summed by
/// subgroup where every subgroup holds whole row groups, i.e. natively on an adapter with
/// subgroups of at least `lanes` invocations and at most the workgroup's 64 (so subgroups
/// are full; see shaders/matvec.wgsl). Not in the browser: WGSL there needs `enable
/// subgroups;`, which naga 30 refuses, and the kernel's `subgroup_id` is a later extension.
pub fn runs(gpu: &Gpu, layout: Layout) -> bool {
    !layout.subgroup
        || (cfg!(not(target_arch = "wasm32"))
            && gpu.caps.subgroups
            && layout.lanes <= gpu.caps.subgroup_min_size
            && gpu.caps.subgroup_max_size <= 64)
}

/// Whether rows of `w` can be read as whole vec4s (the kernel's VEC4 paths; every row then
/// starts on a 16-byte boundary and the buffers are whole vec4s).
fn vec4_rows(w: &GpuWeight) -> bool {
    match w.dtype {
        DType::F32 => w.cols.is_multiple_of(4),
        DType::F16 | DType::BF16 => w.cols.is_multiple_of(8),
        DType::Quant(_) => true,
        DType::U32 => false,
    }
}

/// One dispatch per weight chunk, each writing its rows of `y` [N], in the layout for `gpu`.
pub fn launch(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    launch_with(gpu, x, w, bias, y, Layout::for_weight(gpu, w))
}

/// [`launch`] with a given layout ([`Layout::is_valid`]).
pub fn launch_with(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    layout: Layout,
) -> Result<Vec<Dispatch>> {
    launch_inner(gpu, x, w, bias, y, layout, None, Fusion::NONE)
}

/// [`launch`] with `fusion`, in the layout for `gpu` or the given one.
pub fn launch_fused(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    fusion: Fusion,
    layout: Option<Layout>,
) -> Result<Vec<Dispatch>> {
    // A default layout too wide for a merge prologue's workgroup memory narrows.
    let layout = layout.unwrap_or_else(|| match Layout::for_weight(gpu, w) {
        l if !l.takes(fusion.prologue.kind()) => Layout::CPU_TEXTURE,
        l => l,
    });
    launch_inner(gpu, x, w, bias, y, layout, None, fusion)
}

/// A mixture of experts' matvecs at decode: for each of the `rows` rows that `perm`
/// (kernels::moe::permute) sorted by expert, y [rows, N] row r = its expert's [N, K] matrix
/// (out of `w`, stacked experts) times x row r, or its token's row with `gather`. Reads only
/// the listed experts' weights. One dispatch per weight chunk.
pub fn launch_grouped(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    perm: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: usize,
    gather: bool,
) -> Result<Vec<Dispatch>> {
    let layout = Layout::for_weight(gpu, w);
    launch_inner(
        gpu,
        x,
        w,
        None,
        y,
        layout,
        Some((perm, rows, gather)),
        Fusion::NONE,
    )
}

#[allow(clippy::too_many_arguments)]
fn launch_inner(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    layout: Layout,
    grouped: Option<(&wgpu::Buffer, usize, bool)>,
    fusion: Fusion,
) -> Result<Vec<Dispatch>> {
    check_fusion(w, bias.is_some(), grouped.is_some(), fusion, layout)?;
    let lanes = layout.lanes;
    if !runs(gpu, layout) {
        return Err(Error::Graph(format!(
            "matvec: the subgroup reduction of {layout:?} needs subgroups of {lanes} to 64 \
             invocations (this adapter: {}, {} to {})",
            gpu.caps.subgroups, gpu.caps.subgroup_min_size, gpu.caps.subgroup_max_size
        )));
    }
    let vec4 = vec4_rows(w);
    let grouping = grouped.map(|g| g.2);
    let defs = defs(
        weight_defs(ShaderDefs::new(), w, "matvec")?,
        bias.is_some(),
        vec4,
        layout,
        grouping,
        fusion.prologue.kind(),
        fusion.epilogue,
    );
    let bias = bias.unwrap_or(&gpu.dummy);
    let merge = matches!(fusion.prologue, Prologue::Merge { .. });
    // x4 and w4 alias x and the chunk when the kernel reads them (a 16-byte dummy otherwise;
    // a merged x is read one value at a time).
    let x4: &wgpu::Buffer = if vec4 && !merge { x } else { &gpu.dummy };
    let (eps, head_dim, splits) = match fusion.prologue {
        Prologue::None => (0.0, 0, 0),
        Prologue::Norm(_, eps) => (eps, 0, 0),
        Prologue::Merge { head_dim, splits } => (0.0, head_dim as u32, splits as u32),
    };
    // The kernel reads the weights as vec4s too: floats, and the tiled formats' quants.
    let reads_w4 = match w.dtype {
        DType::F32 | DType::F16 | DType::BF16 => true,
        DType::Quant(q) => q.tiled(),
        DType::U32 => false,
    };
    let n = w.rows / w.experts;
    let (aux, rows): (&wgpu::Buffer, usize) = match (grouped, fusion.prologue) {
        (Some((perm, rows, _)), _) => (perm, rows),
        (None, Prologue::Norm(weight, _)) => (weight, 1),
        (None, _) => (&gpu.dummy, 1),
    };
    // The norm weight as vec4s, read by the VEC4 paths.
    let nw4: &wgpu::Buffer = match fusion.prologue {
        Prologue::Norm(weight, _) if vec4 => weight,
        _ => &gpu.dummy,
    };
    if rows as u32 > gpu.caps.max_workgroups_per_dim {
        return Err(Error::LimitExceeded {
            what: "grouped matvec rows".into(),
            needed: rows as u64,
            allowed: gpu.caps.max_workgroups_per_dim as u64,
        });
    }
    w.chunks
        .iter()
        .map(|c| {
            // Grouped: each chunk holds whole experts and every row runs one expert's matrix.
            let params = match grouped {
                Some(_) => Params {
                    k: w.cols as u32,
                    n: n as u32,
                    col_offset: 0,
                    e0: (c.row_start / n) as u32,
                    ne: (c.rows / n) as u32,
                    eps,
                    head_dim,
                    splits,
                },
                None => Params {
                    k: w.cols as u32,
                    n: c.rows as u32,
                    col_offset: c.row_start as u32,
                    e0: 0,
                    ne: 0,
                    eps,
                    head_dim,
                    splits,
                },
            };
            let mut grid = gpu.grid((params.n).div_ceil(layout.rows()));
            grid[2] = rows as u32;
            let resources = [
                Some(x.as_entire_binding()),
                weight_binding(c),
                Some(bias.as_entire_binding()),
                Some(y.as_entire_binding()),
                Some(x4.as_entire_binding()),
                weight4_binding(c, vec4 && reads_w4, &gpu.dummy),
                Some(aux.as_entire_binding()),
                Some(nw4.as_entire_binding()),
            ];
            KERNEL.dispatch_resources(gpu, &defs, &params, &resources, grid)
        })
        .collect()
}

/// Fusions the kernel cannot do: any with grouped rows; SwiGLU with a bias, a chunk edge
/// inside a pair, an odd number of rows per workgroup or, summed by subgroup, per lane (a
/// pair would straddle two row groups); a merge whose x is not whole heads
/// or longer than [`MERGE_MAX_K`].
fn check_fusion(
    w: &GpuWeight,
    bias: bool,
    grouped: bool,
    fusion: Fusion,
    layout: Layout,
) -> Result<()> {
    let unfused = matches!(fusion.prologue, Prologue::None) && fusion.epilogue == Epilogue::Store;
    let bad = |why: &str| Err(Error::Graph(format!("matvec of {}: {why}", w.name)));
    if grouped && !unfused {
        return bad("grouped rows take no fusion");
    }
    if let Some(why) = layout.refusal(w, bias, fusion.epilogue) {
        return bad(&why);
    }
    if let Prologue::Merge { head_dim, splits } = fusion.prologue {
        if head_dim == 0 || splits == 0 || !w.cols.is_multiple_of(head_dim) {
            return bad("merged attention input is not whole heads");
        }
        if w.cols > MERGE_MAX_K {
            return bad(&format!("merged attention input longer than {MERGE_MAX_K}"));
        }
        if !layout.takes(Kind::Merge) {
            return bad(&format!(
                "a merged attention input takes at most {MERGE_MAX_ROWS_PER_LANE} rows per lane"
            ));
        }
    }
    Ok(())
}

/// The specialisation after the weight's constants: bias, vec4 reads, layout,
/// `grouped` (Some(gather) for a mixture of experts' rows) and the fusion.
fn defs(
    weight: ShaderDefs,
    bias: bool,
    vec4: bool,
    layout: Layout,
    grouped: Option<bool>,
    prologue: Kind,
    epilogue: Epilogue,
) -> ShaderDefs {
    weight
        .bool("HAS_BIAS", bias)
        .bool("VEC4", vec4)
        .u32("LANES", layout.lanes)
        .u32("ROWS_PER_LANE", layout.rows_per_lane)
        .bool("SUBGROUP", layout.subgroup)
        .bool("WORKGROUP_SUMS", !layout.subgroup && layout.lanes > 1)
        .bool("GROUPED", grouped.is_some())
        .bool("GATHER", grouped == Some(true))
        .bool("NORM", prologue == Kind::Norm)
        .bool("MERGE", prologue == Kind::Merge)
        .u32(
            "MERGE_K",
            if prologue == Kind::Merge {
                MERGE_MAX_K as u32
            } else {
                4
            },
        )
        .bool("ACCUM", epilogue == Epilogue::Accumulate)
        .bool("GLU", matches!(epilogue, Epilogue::Glu(_)))
        .bool("GELU_TANH", epilogue == Epilogue::Glu(Gate::GeluTanh))
}

/// A prologue's kind (its shader constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Norm,
    Merge,
}

impl Prologue<'_> {
    fn kind(self) -> Kind {
        match self {
            Prologue::None => Kind::Plain,
            Prologue::Norm(..) => Kind::Norm,
            Prologue::Merge { .. } => Kind::Merge,
        }
    }
}

/// Every weight dtype, with and without bias and vec4 reads, in the default layouts and the
/// GPU one summed by subgroup: grouped (gathering token rows or not), and plain with
/// every prologue and epilogue.
pub fn variants() -> Vec<ShaderDefs> {
    let prologues = [Kind::Plain, Kind::Norm, Kind::Merge];
    let layouts = Layout::DEFAULTS
        .into_iter()
        .chain([Layout::GPU.by_subgroup()]);
    let mut out = Vec::new();
    for (_, weight) in weight_specs() {
        for bias in [false, true] {
            for vec4 in [false, true] {
                for layout in layouts.clone() {
                    let d = |grouped, prologue, epilogue| {
                        defs(
                            weight.clone(),
                            bias,
                            vec4,
                            layout,
                            grouped,
                            prologue,
                            epilogue,
                        )
                    };
                    for grouped in [Some(false), Some(true)] {
                        out.push(d(grouped, Kind::Plain, Epilogue::Store));
                    }
                    for prologue in prologues {
                        if !layout.takes(prologue) {
                            continue;
                        }
                        for epilogue in Epilogue::ALL {
                            out.push(d(None, prologue, epilogue));
                        }
                    }
                }
            }
        }
    }
    out
}

/// `y[n] = sum_k w[n, k] x[k] + b[n]`.
pub fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|r| {
            let dot: f32 = w[r * k..(r + 1) * k]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum();
            dot + bias.map_or(0.0, |b| b[r])
        })
        .collect()
}

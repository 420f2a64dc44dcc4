//! Adapter choice, device creation with the adapter's own limits, capabilities, and the
//! pipelines: compiled once per process (a map by kernel and specialisation, see
//! [`crate::pipelines`]) and, where the backend has one (Vulkan), through a wgpu pipeline cache whose data a front end may keep
//! between processes ([`Gpu::load_pipeline_cache`], [`Gpu::pipeline_cache_data`]).
//! One [`Gpu`] is shared (through `Arc`) by everything that records work.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::buffer::{GpuBuffer, GpuTexture};
use crate::counters::{MemoryCount, PipelineCount, PipelineWork, Work, WorkCount};
use crate::error::{Error, Result};
use crate::kernels::matvec_q8::MatvecPrecision;
use crate::pipelines::Pipelines;
use crate::requirements;
use crate::shader::ShaderDefs;
use crate::tuning::Tuning;

/// Which wgpu backend to use. `Auto` prefers a discrete GPU, then an integrated one, then
/// anything (including a CPU Vulkan device such as lavapipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Vulkan,
    Gl,
    Metal,
    Dx12,
    WebGpu,
}

impl BackendChoice {
    fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::all(),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Gl => wgpu::Backends::GL,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::WebGpu => wgpu::Backends::BROWSER_WEBGPU,
        }
    }
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => BackendChoice::Auto,
            "vulkan" | "vk" => BackendChoice::Vulkan,
            "gl" | "gles" | "opengl" => BackendChoice::Gl,
            "metal" => BackendChoice::Metal,
            "dx12" | "d3d12" => BackendChoice::Dx12,
            "webgpu" => BackendChoice::WebGpu,
            _ => return Err(Error::UnknownBackend(s.to_string())),
        })
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Vulkan => "vulkan",
            BackendChoice::Gl => "gl",
            BackendChoice::Metal => "metal",
            BackendChoice::Dx12 => "dx12",
            BackendChoice::WebGpu => "webgpu",
        };
        f.write_str(s)
    }
}

/// What the device can do, read from the adapter once.
#[derive(Debug, Clone)]
pub struct Caps {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub timestamps: bool,
    /// Largest storage binding; tensors above it are split (weights) or rejected with a clear error.
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_storage_buffers_per_stage: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroup_storage: u32,
    pub max_workgroups_per_dim: u32,
    pub min_storage_offset_alignment: u32,
    /// Whether weight matrices are held in textures ([`Gpu::weight_texture`]), and how many
    /// bytes one holds (0 where they are not).
    pub weight_texture_bytes: u64,
}

/// The device, its queue, what it can do, and caches shared by every kernel launch.
pub struct Gpu {
    /// Kept so a front end can draw with the same device (a window's surface needs both).
    pub instance: wgpu::Instance,
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Caps,
    /// A small storage buffer bound where a kernel's optional input (a bias) is absent.
    pub dummy: GpuBuffer,
    /// Bytes of every buffer allocated through this device (shared by `with_max_binding`).
    memory: Arc<MemoryCount>,
    /// Submits, dispatches and readbacks on this device (also shared by `with_max_binding`).
    pub(crate) work: Arc<WorkCount>,
    /// Pipelines by kernel and specialisation (see [`crate::pipelines`]).
    pub(crate) pipelines: Pipelines,
    /// Pipelines created and the time spent (shared by `with_max_binding`).
    pub(crate) pipeline_count: Arc<PipelineCount>,
    /// The driver's pipeline cache every pipeline is created through, where the backend
    /// has one (shared by `with_max_binding`; replaced by `load_pipeline_cache`).
    pipeline_cache: Arc<Mutex<Option<wgpu::PipelineCache>>>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Kernel choices made by timing (shared by `with_max_binding`).
    tuning: Arc<Mutex<Tuning>>,
    /// The decode matvec's arithmetic (shared by `with_max_binding`).
    matvec_precision: Arc<Mutex<MatvecPrecision>>,
}

/// wgpu's major version, part of the pipeline cache key (wgpu's header also carries its
/// own format version).
const WGPU_MAJOR: u32 = 30;

/// How many bytes a weight texture holds where weight matrices are held in textures
/// ([`Gpu::weight_texture`]), 0 where they are not: on CPU adapters. Lavapipe (Mesa
/// 22.3) turns a storage-buffer load whose address differs between invocations into a loop
/// over the SIMD lanes (per lane: mask test, bounds test, the binding's base and size, the
/// load), where a texel fetch is straight-line code, so the decode matvec reads weights
/// faster from a texture (lavapipe, timestamps, SmolLM2-135M Q4_1's matvecs 38-40 ms a
/// token against 56-63, RWKV-7 0.1B f16's 45-47 against 68-88; Qwen2.5-Coder-0.5B Q4_K_M's
/// 122-127 against 175 for the buffers of the build before).
/// In a browser on SwiftShader (a fallback adapter, which wgpu reports as a CPU one)
/// SmolLM2's matvecs took 208 ms a token against 254 from buffers (headless Chromium,
/// `decodeProfile`). `KESTREL_WEIGHT_TEXTURES=0` keeps them in storage buffers natively. A
/// texture holds
/// [`WEIGHT_TEXTURE_WIDTH`] texels of 16 bytes a row, as many rows as the adapter's 2D
/// textures take.
fn weight_texture_bytes(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> u64 {
    let on = info.device_type == wgpu::DeviceType::Cpu
        && limits.max_texture_dimension_2d as usize >= WEIGHT_TEXTURE_WIDTH
        && (cfg!(target_arch = "wasm32")
            || std::env::var("KESTREL_WEIGHT_TEXTURES").map_or(true, |v| v != "0"));
    match on {
        true => 16 * WEIGHT_TEXTURE_WIDTH as u64 * limits.max_texture_dimension_2d as u64,
        false => 0,
    }
}

/// Texels (of 16 bytes) per row of a weight texture ([`Gpu::weight_texture`]); the shaders
/// get it as `TEX_WIDTH` (kernels::dtype_defs).
pub const WEIGHT_TEXTURE_WIDTH: usize = 1024;

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn backend_name(b: wgpu::Backend) -> String {
    format!("{b:?}").to_lowercase()
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    // Among equally ranked devices prefer the native modern API over GL.
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::BrowserWebGpu => 0,
        _ => 1,
    }
}

impl Gpu {
    /// Open the best adapter for `choice` and a device with the adapter's own limits.
    pub async fn new(choice: BackendChoice) -> Result<Arc<Gpu>> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = choice.backends();
        // wgpu's validation of indirect dispatch arguments adds a pass per indirect dispatch;
        // Kestrel's only indirect arguments are its decode gate's (crate::decode_loop), zeros
        // or the counts of dispatches the planner already checked against the limits.
        desc.flags
            .remove(wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
        let instance = wgpu::Instance::new(desc);
        let adapter = Self::pick_adapter(&instance, choice).await?;
        Self::from_adapter(instance, adapter).await
    }

    #[cfg(not(target_arch = "wasm32"))]
    async fn pick_adapter(
        instance: &wgpu::Instance,
        choice: BackendChoice,
    ) -> Result<wgpu::Adapter> {
        let mut adapters = instance.enumerate_adapters(choice.backends()).await;
        adapters.sort_by_key(|a| {
            let i = a.get_info();
            (rank(i.device_type), backend_rank(i.backend))
        });
        adapters
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoAdapter(choice.to_string()))
    }

    #[cfg(target_arch = "wasm32")]
    async fn pick_adapter(
        instance: &wgpu::Instance,
        choice: BackendChoice,
    ) -> Result<wgpu::Adapter> {
        let _ = (rank, backend_rank);
        instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("{choice}: {e}")))
    }

    /// Open a device on `adapter` with its own limits, after checking them against what the
    /// kernels need ([`requirements`]).
    async fn from_adapter(instance: wgpu::Instance, adapter: wgpu::Adapter) -> Result<Arc<Gpu>> {
        let info = adapter.get_info();
        let wanted = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::PIPELINE_CACHE;
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let caps = Caps {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            min_storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            weight_texture_bytes: weight_texture_bytes(&info, &limits),
        };
        let short = requirements::shortfalls(&caps);
        if !short.is_empty() {
            // Browsers may hide the adapter's name.
            let name = match info.name.trim() {
                "" => "(unnamed)",
                n => n,
            };
            return Err(Error::AdapterTooSmall {
                adapter: format!("'{name}' ({})", backend_name(info.backend)),
                shortfalls: short.join(", "),
            });
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("kestrel"),
                required_features: features,
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let lost = Arc::new(Mutex::new(None));
        let lost2 = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost2.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        let uncaptured: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let unc2 = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut u) = unc2.lock() {
                if u.is_none() {
                    *u = Some(e.to_string());
                }
            }
        }));
        let pipeline_cache = features.contains(wgpu::Features::PIPELINE_CACHE).then(|| {
            // SAFETY: no initial data, so there is nothing the driver could misread.
            unsafe {
                device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("kestrel"),
                    data: None,
                    fallback: true,
                })
            }
        });
        let memory = Arc::new(MemoryCount::default());
        let dummy = GpuBuffer::new(
            &device,
            &memory,
            &wgpu::BufferDescriptor {
                label: Some("dummy"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            },
        );
        Ok(Arc::new(Gpu {
            instance,
            adapter,
            dummy,
            memory,
            work: Arc::default(),
            device,
            queue,
            info,
            caps,
            pipelines: Pipelines::default(),
            pipeline_count: Arc::default(),
            pipeline_cache: Arc::new(Mutex::new(pipeline_cache)),
            lost,
            uncaptured,
            tuning: Arc::default(),
            matvec_precision: Arc::default(),
        }))
    }

    /// Lower the binding limit (tests use this to force weight splitting on small tensors).
    pub fn with_max_binding(self: &Arc<Gpu>, max: u64) -> Arc<Gpu> {
        self.with_caps(Caps {
            max_storage_binding: max.min(self.caps.max_storage_binding),
            ..self.caps.clone()
        })
    }

    /// The same device with weight matrices uploaded from now on in storage buffers (tests
    /// run the buffer path this way on CPU adapters, which otherwise take textures).
    pub fn without_weight_textures(self: &Arc<Gpu>) -> Arc<Gpu> {
        self.with_caps(Caps {
            weight_texture_bytes: 0,
            ..self.caps.clone()
        })
    }

    /// The same device with other caps: fresh pipelines, every count, cache and setting
    /// shared.
    fn with_caps(self: &Arc<Gpu>, caps: Caps) -> Arc<Gpu> {
        Arc::new(Gpu {
            instance: self.instance.clone(),
            adapter: self.adapter.clone(),
            device: self.device.clone(),
            queue: self.queue.clone(),
            info: self.info.clone(),
            caps,
            dummy: self.dummy.clone(),
            memory: self.memory.clone(),
            work: self.work.clone(),
            pipelines: Pipelines::default(),
            pipeline_count: self.pipeline_count.clone(),
            pipeline_cache: self.pipeline_cache.clone(),
            lost: self.lost.clone(),
            uncaptured: self.uncaptured.clone(),
            tuning: self.tuning.clone(),
            matvec_precision: self.matvec_precision.clone(),
        })
    }

    /// Kernel choices made by timing on this adapter (see [`crate::tuning`]); plans made
    /// after this call use them.
    pub fn set_tuning(&self, tuning: Tuning) {
        if let Ok(mut t) = self.tuning.lock() {
            *t = tuning;
        }
    }

    /// The decode matvec's arithmetic ([`MatvecPrecision`]: f32 unless a front end opts in);
    /// plans made after this call use it. f16 on an adapter without shader-f16 is refused
    /// ([`Error::MissingFeature`]) and leaves the precision as it was.
    pub fn set_matvec_precision(&self, precision: MatvecPrecision) -> Result<()> {
        if precision == MatvecPrecision::F16 {
            crate::kernels::matvec_f16::check_adapter(self)?;
        }
        if let Ok(mut p) = self.matvec_precision.lock() {
            *p = precision;
        }
        Ok(())
    }

    pub fn matvec_precision(&self) -> MatvecPrecision {
        self.matvec_precision.lock().map(|p| *p).unwrap_or_default()
    }

    /// The kernel choices made by timing, if any (default: none).
    pub fn tuning(&self) -> Tuning {
        self.tuning.lock().map(|t| *t).unwrap_or_default()
    }

    /// Fails if the device was lost or an uncaptured GPU error happened since the last check.
    pub fn check(&self) -> Result<()> {
        if let Some(m) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(m));
        }
        if let Some(m) = self.uncaptured.lock().ok().and_then(|mut u| u.take()) {
            if m.to_lowercase().contains("out of memory") {
                return Err(Error::OutOfMemory(m));
            }
            return Err(Error::Validation {
                context: "GPU work".into(),
                message: m,
            });
        }
        Ok(())
    }

    /// Block until all submitted work is done (native front ends and benchmarks only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.check()
    }

    /// The backend in use, in words.
    pub fn backend_name(&self) -> String {
        backend_name(self.info.backend)
    }

    /// A one-line description of the adapter (for reports and benchmarks).
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {:?}, driver {} {})",
            self.info.name,
            self.backend_name(),
            self.info.device_type,
            self.info.driver,
            self.info.driver_info
        )
    }

    /// Create a compute pipeline for `kernel` specialised by `defs` (through the driver's
    /// pipeline cache where there is one), counting it and its time. See [`Gpu::pipeline`]
    /// for the pipelines made once and shared.
    pub(crate) fn create_pipeline(
        &self,
        name: &str,
        source: &str,
        defs: &ShaderDefs,
    ) -> wgpu::ComputePipeline {
        #[cfg(not(target_arch = "wasm32"))]
        let started = std::time::Instant::now();
        let cache = self.pipeline_cache.lock().ok().and_then(|c| c.clone());
        let code = defs.render(source, self.caps.shader_f16);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(code.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                // Every kernel writes its workgroup memory before reading it; wgpu's zero-fill
                // becomes huge array constructors that llvmpipe's GL compiler takes minutes over.
                compilation_options: wgpu::PipelineCompilationOptions {
                    zero_initialize_workgroup_memory: false,
                    ..Default::default()
                },
                cache: cache.as_ref(),
            });
        #[cfg(not(target_arch = "wasm32"))]
        self.pipeline_count
            .created(started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX));
        #[cfg(target_arch = "wasm32")]
        self.pipeline_count.created(0);
        pipeline
    }

    /// Bytes of the GPU buffers the runtime holds now (every allocation goes through
    /// [`Gpu::buffer`]; see [`crate::buffer`]).
    pub fn allocated_bytes(&self) -> u64 {
        self.memory.live()
    }

    /// The most [`Gpu::allocated_bytes`] has been since the device was opened.
    pub fn peak_allocated_bytes(&self) -> u64 {
        self.memory.peak()
    }

    /// The GPU work submitted since the device was opened.
    pub fn work(&self) -> Work {
        self.work.get()
    }

    /// The pipelines created since the device was opened and the time spent creating them.
    pub fn pipeline_work(&self) -> PipelineWork {
        self.pipeline_count.get()
    }

    /// A name for this adapter's pipeline cache data (adapter, driver and wgpu's own key),
    /// safe as a file name; None where the backend has no pipeline cache.
    pub fn pipeline_cache_key(&self) -> Option<String> {
        let has_cache = self.pipeline_cache.lock().ok()?.is_some();
        let wgpu_key = wgpu::util::pipeline_cache_key(&self.info).filter(|_| has_cache)?;
        let words = format!(
            "{wgpu_key}_{}_{}_{}_wgpu{WGPU_MAJOR}",
            self.info.name, self.info.driver, self.info.driver_info
        );
        let safe: String = words
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
                _ => '_',
            })
            .take(160)
            .collect();
        Some(safe)
    }

    /// Start the pipeline cache from `data` that [`Gpu::pipeline_cache_data`] returned on the
    /// same adapter and driver (in an earlier process), before any pipeline is created (the
    /// ones created earlier stay, but are not in the new cache). wgpu checks the data's
    /// header (format, wgpu version, adapter, driver); data it refuses (corrupt, truncated,
    /// another adapter's) is an error and the cache stays empty, the device as usable as
    /// before. Does nothing where the backend has no pipeline cache.
    pub async fn load_pipeline_cache(&self, data: &[u8]) -> Result<()> {
        let has_cache = self
            .pipeline_cache
            .lock()
            .map(|c| c.is_some())
            .unwrap_or(false);
        if !has_cache {
            return Ok(());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // SAFETY: wgpu reads its own header first (magic, version, pointer size, backend,
        // adapter, the driver's cache UUID, length) and refuses data that does not match;
        // Vulkan drivers check their own header of what follows. Front ends keep the data
        // under a checksum of their own (a file torn or changed on disk never gets here).
        let cache = unsafe {
            self.device
                .create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("kestrel"),
                    data: Some(data),
                    fallback: false,
                })
        };
        if let Some(e) = scope.pop().await {
            return Err(Error::Validation {
                context: "pipeline cache data".into(),
                message: e.to_string(),
            });
        }
        if let Ok(mut c) = self.pipeline_cache.lock() {
            *c = Some(cache);
        }
        Ok(())
    }

    /// The pipeline cache's data, for [`Gpu::load_pipeline_cache`] in a later process; None
    /// where the backend has no pipeline cache.
    pub fn pipeline_cache_data(&self) -> Option<Vec<u8>> {
        let cache = self.pipeline_cache.lock().ok()?.clone()?;
        cache.get_data()
    }

    /// A new buffer on this device's byte count: the one place the runtime allocates.
    pub fn buffer(&self, desc: &wgpu::BufferDescriptor) -> GpuBuffer {
        GpuBuffer::new(&self.device, &self.memory, desc)
    }

    /// `bytes` (a weight chunk in its GPU layout) as a texture of `rgba32uint` texels,
    /// [`WEIGHT_TEXTURE_WIDTH`] a row: word i is component i % 4 of texel i / 4, texel j at
    /// (j % width, j / width). The last row is filled with zeros.
    pub fn weight_texture(&self, label: &str, bytes: &[u8]) -> GpuTexture {
        let row = 16 * WEIGHT_TEXTURE_WIDTH;
        let height = bytes.len().div_ceil(row).max(1);
        let out = GpuTexture::new(
            &self.device,
            &self.memory,
            &wgpu::TextureDescriptor {
                label: Some(label),
                size: wgpu::Extent3d {
                    width: WEIGHT_TEXTURE_WIDTH as u32,
                    height: height as u32,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba32Uint,
                usage: wgpu::TextureUsages::TEXTURE_BINDING
                    | wgpu::TextureUsages::COPY_DST
                    | wgpu::TextureUsages::COPY_SRC,
                view_formats: &[],
            },
        );
        let whole = bytes.len() / row;
        let write = |data: &[u8], y: usize, rows: usize| {
            self.queue.write_texture(
                wgpu::TexelCopyTextureInfo {
                    texture: &out.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: y as u32,
                        z: 0,
                    },
                    aspect: wgpu::TextureAspect::All,
                },
                data,
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row as u32),
                    rows_per_image: None,
                },
                wgpu::Extent3d {
                    width: WEIGHT_TEXTURE_WIDTH as u32,
                    height: rows as u32,
                    depth_or_array_layers: 1,
                },
            );
        };
        if whole > 0 {
            write(&bytes[..whole * row], 0, whole);
        }
        if whole < height {
            let mut last = bytes[whole * row..].to_vec();
            last.resize(row, 0);
            write(&last, whole, 1);
        }
        out
    }

    /// A storage buffer with the bytes of weight texture `t`, copied on the device once
    /// (kept with the texture) for kernels that read a weight only from buffers.
    pub fn texture_as_buffer<'a>(&self, t: &'a GpuTexture) -> &'a GpuBuffer {
        t.plain.get_or_init(|| {
            let buf = self.storage_buffer("weight texture copy", t.size());
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("weight texture copy"),
                });
            let row = 16 * WEIGHT_TEXTURE_WIDTH as u32;
            enc.copy_texture_to_buffer(
                t.texture.as_image_copy(),
                wgpu::TexelCopyBufferInfo {
                    buffer: &buf,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some(row),
                        rows_per_image: None,
                    },
                },
                t.texture.size(),
            );
            self.queue.submit([enc.finish()]);
            buf
        })
    }

    pub fn storage_buffer(&self, label: &str, size: u64) -> GpuBuffer {
        self.buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub fn storage_buffer_init(&self, label: &str, bytes: &[u8]) -> GpuBuffer {
        let buf = self.storage_buffer(label, bytes.len() as u64);
        self.write_padded(&buf, 0, bytes);
        buf
    }

    pub fn uniform_buffer_init(&self, label: &str, bytes: &[u8]) -> GpuBuffer {
        let buf = self.buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).next_multiple_of(16).max(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.write_padded(&buf, 0, bytes);
        buf
    }

    /// `queue.write_buffer` needs a length that is a multiple of 4; pad with zeros.
    pub fn write_padded(&self, buf: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(buf, offset, bytes);
        } else {
            let mut v = bytes.to_vec();
            v.resize(bytes.len().next_multiple_of(4), 0);
            self.queue.write_buffer(buf, offset, &v);
        }
    }

    /// The number of workgroups along x and y for `groups` workgroups, within the per-dimension limit.
    pub fn grid(&self, groups: u32) -> [u32; 3] {
        let max = self.caps.max_workgroups_per_dim.max(1);
        if groups <= max {
            [groups.max(1), 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y), y, 1]
        }
    }
}

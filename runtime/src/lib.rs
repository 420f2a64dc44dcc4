//! kestrel-runtime: the device, kernels, graph, planner and executor. It knows no model:
//! architectures (in kestrel-models) build a [`graph::Graph`] of ops, and the executor plans
//! it once and replays it on the GPU.

// On wasm32, wgpu's WebGPU objects are neither Send nor Sync (one thread); the Arcs stay.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod arch;
#[cfg(not(target_arch = "wasm32"))]
pub mod autotune;
pub mod batch;
pub mod block_mask;
pub mod buffer;
#[cfg(feature = "kernel-cases")]
pub mod cases;
pub mod counters;
pub mod decode_loop;
pub mod device;
pub mod diffusion;
pub mod error;
pub mod executor;
pub mod fusion;
pub mod graph;
pub mod kernels;
pub mod kv;
pub mod kv_blocks;
pub mod op;
pub mod pipelines;
pub mod planner;
pub mod profile;
pub mod quant;
pub mod readback;
pub mod requirements;
pub mod rng;
pub mod session;
pub mod shader;
pub mod state;
pub mod tensor;
pub mod tuning;

pub use buffer::{GpuBuffer, GpuTexture};
pub use device::{BackendChoice, Caps, Gpu};
pub use error::{Error, Result};
pub use graph::{Graph, TensorId};
pub use op::Op;
pub use tensor::{DType, GpuTensor, GpuWeight};

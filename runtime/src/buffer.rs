//! GPU buffers that count their bytes. Every buffer the runtime allocates (weights, states and
//! KV caches, plan activations and scratch, constants, uniforms, staging for readback) is a
//! [`GpuBuffer`] made by [`crate::Gpu`]; the device's [`MemoryCount`](crate::counters::MemoryCount) goes up when one is
//! created and down when its last clone is dropped, so [`crate::Gpu::allocated_bytes`] is
//! what the runtime holds now, not a figure fixed when a session was set up.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::counters::MemoryCount;

/// Takes its bytes off the count when dropped (once, when the last clone of the buffer goes).
struct Counted {
    bytes: u64,
    count: Arc<MemoryCount>,
}

impl Counted {
    /// `bytes` added to `count` now, taken off when the result drops.
    fn new(bytes: u64, count: &Arc<MemoryCount>) -> Arc<Counted> {
        count.add(bytes);
        Arc::new(Counted {
            bytes,
            count: count.clone(),
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.count.sub(self.bytes);
    }
}

/// A wgpu buffer on the device's count. Derefs to [`wgpu::Buffer`]; clones share the buffer
/// and its count. (A clone of the inner `wgpu::Buffer` taken through the deref is not
/// counted: keep `GpuBuffer`s, not raw buffers.)
#[derive(Clone)]
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    counted: Arc<Counted>,
}

impl GpuBuffer {
    /// Create a buffer and add its size to `count`.
    pub(crate) fn new(
        device: &wgpu::Device,
        count: &Arc<MemoryCount>,
        desc: &wgpu::BufferDescriptor,
    ) -> GpuBuffer {
        GpuBuffer {
            buffer: device.create_buffer(desc),
            counted: Counted::new(desc.size, count),
        }
    }
}

impl Deref for GpuBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuBuffer")
            .field("buffer", &self.buffer)
            .field("bytes", &self.counted.bytes)
            .finish()
    }
}

/// A weight chunk held in a 2D texture of `rgba32uint` texels (see
/// [`crate::Gpu::weight_texture`]), on the device's count like a [`GpuBuffer`].
#[derive(Clone)]
pub struct GpuTexture {
    pub texture: wgpu::Texture,
    pub view: wgpu::TextureView,
    counted: Arc<Counted>,
    /// A storage-buffer copy, made the first time a kernel that reads weights only from
    /// buffers binds this one ([`crate::tensor::GpuWeight::single`]).
    pub(crate) plain: Arc<std::sync::OnceLock<GpuBuffer>>,
}

impl GpuTexture {
    pub(crate) fn new(
        device: &wgpu::Device,
        count: &Arc<MemoryCount>,
        desc: &wgpu::TextureDescriptor,
    ) -> GpuTexture {
        let texture = device.create_texture(desc);
        let bytes = 16 * desc.size.width as u64 * desc.size.height as u64;
        GpuTexture {
            view: texture.create_view(&Default::default()),
            texture,
            counted: Counted::new(bytes, count),
            plain: Arc::default(),
        }
    }

    /// Bytes the texture holds (whole rows of texels).
    pub fn size(&self) -> u64 {
        self.counted.bytes
    }
}

impl fmt::Debug for GpuTexture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuTexture")
            .field("bytes", &self.counted.bytes)
            .finish()
    }
}

//! Asynchronous readback: copy a GPU range to a staging buffer, map it, and resolve a future.
//! On the web the browser's event loop completes the mapping; natively the future drives
//! `device.poll` itself, so only the front end's `block_on` ever blocks.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{Error, Result};

#[derive(Default)]
struct Slot {
    done: Option<std::result::Result<(), String>>,
    waker: Option<Waker>,
}

/// Resolves to the bytes of the requested range once the GPU has finished writing them.
pub struct ReadFuture {
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    gpu: Arc<Gpu>,
    staging: GpuBuffer,
    size: u64,
    slot: Arc<Mutex<Slot>>,
}

/// A mappable buffer to read `size` bytes into; a plan keeps one per output and reuses it.
pub fn staging_buffer(gpu: &Gpu, size: u64) -> GpuBuffer {
    gpu.buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: size.next_multiple_of(4).max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Start reading `size` bytes at `offset` of `buffer` (which needs COPY_SRC usage).
pub fn read_buffer(gpu: &Arc<Gpu>, buffer: &wgpu::Buffer, offset: u64, size: u64) -> ReadFuture {
    read_into(gpu, buffer, offset, staging_buffer(gpu, size), size)
}

/// Like [`read_buffer`], through a given staging buffer (from [`staging_buffer`], not mapped).
pub fn read_into(
    gpu: &Arc<Gpu>,
    buffer: &wgpu::Buffer,
    offset: u64,
    staging: GpuBuffer,
    size: u64,
) -> ReadFuture {
    let padded = size.next_multiple_of(4).max(4);
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
    gpu.queue.submit([enc.finish()]);
    gpu.work.submit(0);
    map_staging(gpu, staging, size)
}

/// Read the first `size` bytes of `staging` (from [`staging_buffer`], not mapped) once the
/// work already submitted, which fills it, is done.
pub fn map_staging(gpu: &Arc<Gpu>, staging: GpuBuffer, size: u64) -> ReadFuture {
    gpu.work.readback();
    let slot = Arc::new(Mutex::new(Slot::default()));
    let s2 = slot.clone();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        if let Ok(mut s) = s2.lock() {
            s.done = Some(r.map_err(|e| e.to_string()));
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    });
    ReadFuture {
        gpu: gpu.clone(),
        staging,
        size,
        slot,
    }
}

impl ReadFuture {
    fn take(&self) -> Option<Result<Vec<u8>>> {
        let done = self.slot.lock().ok()?.done.clone()?;
        Some(match done {
            Err(e) => Err(Error::Readback(e)),
            Ok(()) => self
                .staging
                .get_mapped_range(..)
                .map_err(|e| Error::Readback(format!("{e:?}")))
                .map(|view| {
                    let v = view[..self.size as usize].to_vec();
                    drop(view);
                    self.staging.unmap();
                    v
                }),
        })
    }
}

impl Future for ReadFuture {
    type Output = Result<Vec<u8>>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.take() {
            return Poll::Ready(r);
        }
        if let Ok(mut s) = self.slot.lock() {
            s.waker = Some(cx.waker().clone());
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            // Natively nothing else drives the device: wait for the submitted work here.
            if let Err(e) = self.gpu.device.poll(wgpu::PollType::wait_indefinitely()) {
                return Poll::Ready(Err(Error::DeviceLost(e.to_string())));
            }
            if let Err(e) = self.gpu.check() {
                return Poll::Ready(Err(e));
            }
            if let Some(r) = self.take() {
                return Poll::Ready(r);
            }
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// Read a buffer range as f32 values.
pub async fn read_f32(
    gpu: &Arc<Gpu>,
    buffer: &wgpu::Buffer,
    offset: u64,
    count: usize,
) -> Result<Vec<f32>> {
    let bytes = read_buffer(gpu, buffer, offset, 4 * count as u64).await?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

/// Read a buffer range as u32 values.
pub async fn read_u32(
    gpu: &Arc<Gpu>,
    buffer: &wgpu::Buffer,
    offset: u64,
    count: usize,
) -> Result<Vec<u32>> {
    let bytes = read_buffer(gpu, buffer, offset, 4 * count as u64).await?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

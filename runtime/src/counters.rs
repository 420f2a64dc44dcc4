//! What a device has done, counted as it happens: the bytes of its live buffers (with their
//! peak) and the GPU work submitted (submits, compute dispatches, readbacks that wait on the
//! GPU). `kestrel bench` reports them; tests check memory does not grow.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live and peak bytes of the buffers of one device (see [`crate::buffer::GpuBuffer`]).
#[derive(Debug, Default)]
pub struct MemoryCount {
    live: AtomicU64,
    peak: AtomicU64,
}

impl MemoryCount {
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
    pub(crate) fn add(&self, bytes: u64) {
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    pub(crate) fn sub(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Totals of the work submitted to one device since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// `queue.submit` calls.
    pub submits: u64,
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Readbacks: the host waits for the GPU before it can go on.
    pub readbacks: u64,
}

impl Work {
    /// The work done between `earlier` and `self`.
    pub fn since(&self, earlier: &Work) -> Work {
        Work {
            submits: self.submits - earlier.submits,
            dispatches: self.dispatches - earlier.dispatches,
            readbacks: self.readbacks - earlier.readbacks,
        }
    }
}

/// The atomic counters behind [`Work`].
#[derive(Debug, Default)]
pub struct WorkCount {
    submits: AtomicU64,
    dispatches: AtomicU64,
    readbacks: AtomicU64,
}

impl WorkCount {
    pub fn get(&self) -> Work {
        Work {
            submits: self.submits.load(Ordering::Relaxed),
            dispatches: self.dispatches.load(Ordering::Relaxed),
            readbacks: self.readbacks.load(Ordering::Relaxed),
        }
    }
    /// One submit holding `dispatches` compute dispatches.
    pub(crate) fn submit(&self, dispatches: usize) {
        self.submits.fetch_add(1, Ordering::Relaxed);
        self.dispatches
            .fetch_add(dispatches as u64, Ordering::Relaxed);
    }
    pub(crate) fn readback(&self) {
        self.readbacks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Pipelines created on one device (cache misses of [`crate::Gpu::pipeline`]) and the time
/// spent creating them: shader module and compute pipeline, the driver's compile included
/// where the driver compiles there (some, such as llvmpipe's, finish at the first dispatch).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PipelineWork {
    pub pipelines: u64,
    /// None where the platform has no clock the runtime reads (wasm32: the browser compiles
    /// asynchronously anyway, so the calls' time would say little). Summed over threads: with
    /// pipelines made ahead of use ([`crate::Gpu::prebuild`]) it may exceed the wall time.
    pub secs: Option<f64>,
    /// The time plans spent getting their pipelines: creating them, or waiting for the thread
    /// creating them; what pipeline creation added to a first prompt. None as `secs`.
    pub wait_secs: Option<f64>,
}

/// The atomic counters behind [`PipelineWork`].
#[derive(Debug, Default)]
pub struct PipelineCount {
    pipelines: AtomicU64,
    nanos: AtomicU64,
    wait_nanos: AtomicU64,
}

impl PipelineCount {
    pub fn get(&self) -> PipelineWork {
        PipelineWork {
            pipelines: self.pipelines.load(Ordering::Relaxed),
            secs: cfg!(not(target_arch = "wasm32"))
                .then(|| self.nanos.load(Ordering::Relaxed) as f64 * 1e-9),
            wait_secs: cfg!(not(target_arch = "wasm32"))
                .then(|| self.wait_nanos.load(Ordering::Relaxed) as f64 * 1e-9),
        }
    }
    /// A plan waited `nanos` nanoseconds for a pipeline.
    pub(crate) fn waited(&self, nanos: u64) {
        self.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
    /// One pipeline created in `nanos` nanoseconds (0 where there is no clock).
    pub(crate) fn created(&self, nanos: u64) {
        self.pipelines.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

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

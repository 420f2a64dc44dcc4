//! The compute pipelines of one device: each (kernel, specialisation) created once and shared
//! by every dispatch ([`Gpu::pipeline`]). A front end may list the pipelines this process used
//! ([`Gpu::pipeline_keys`]) and, in a later process, have them created ahead of use on
//! threads of their own ([`Gpu::prebuild`], native only) while the model loads: a plan then
//! finds each one made, or waits for the thread making it. Creating a pipeline is the
//! driver's shader compile (or, with its disk cache warm, its translation and cache lookup),
//! a CPU task of tens of milliseconds each on lavapipe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::device::Gpu;
use crate::error::Result;
use crate::shader::ShaderDefs;

/// One pipeline, made by whichever thread locks it first while the others wait.
type Slot = Arc<Mutex<Option<wgpu::ComputePipeline>>>;

/// The pipelines of one device by key ([`key`]).
#[derive(Default)]
pub(crate) struct Pipelines(Mutex<Table>);

#[derive(Default)]
struct Table {
    slots: HashMap<String, Slot>,
    /// Keys asked for by [`Gpu::pipeline`], in first-use order (not those only prebuilt).
    used: Vec<String>,
    /// How many of `used` were first asked for before the device's first compute dispatch:
    /// the first plan's pipelines (a first prompt's), on the path to the first token.
    before_first_dispatch: usize,
}

/// The key of `kernel` specialised by `defs`; what [`Gpu::pipeline_keys`] lists.
fn key(kernel: &str, defs: &ShaderDefs) -> String {
    format!("{kernel}|{}", defs.key())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked while holding a lock left whole values: a slot holds a pipeline
    // or none, the table whole entries.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pipelines {
    /// The slot of `key`, recorded as used when `used`; `dispatched`: whether the device has
    /// run a compute dispatch yet.
    fn slot(&self, key: &str, used: bool, dispatched: bool) -> Slot {
        let mut t = lock(&self.0);
        let slot = t.slots.entry(key.to_string()).or_default().clone();
        if used && !t.used.iter().any(|k| k == key) {
            t.used.push(key.to_string());
            if !dispatched {
                t.before_first_dispatch = t.used.len();
            }
        }
        slot
    }
}

impl Gpu {
    /// A compute pipeline for `kernel` specialised by `defs`, created once and shared.
    pub fn pipeline(
        &self,
        name: &str,
        source: &str,
        defs: &ShaderDefs,
    ) -> Result<wgpu::ComputePipeline> {
        #[cfg(not(target_arch = "wasm32"))]
        let started = std::time::Instant::now();
        let dispatched = self.work.get().dispatches > 0;
        let slot = self.pipelines.slot(&key(name, defs), true, dispatched);
        let mut made = lock(&slot);
        let p = match &*made {
            Some(p) => p.clone(),
            None => self.create_pipeline(name, source, defs),
        };
        *made = Some(p.clone());
        #[cfg(not(target_arch = "wasm32"))]
        self.pipeline_count
            .waited(started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX));
        #[cfg(target_arch = "wasm32")]
        self.pipeline_count.waited(0);
        Ok(p)
    }

    /// The keys of the pipelines asked for on this device so far, in first-use order: what
    /// [`Gpu::prebuild`] takes in a later process.
    pub fn pipeline_keys(&self) -> Vec<String> {
        lock(&self.pipelines.0).used.clone()
    }

    /// How many of [`Gpu::pipeline_keys`] (the first ones) were asked for before this device
    /// ran its first compute dispatch: those a first prompt waits for.
    pub fn pipeline_keys_before_first_dispatch(&self) -> usize {
        lock(&self.pipelines.0).before_first_dispatch
    }
}

impl Gpu {
    /// The kernel, specialisation and slot of hint `k` ([`Gpu::pipeline_keys`] of an earlier
    /// process), or None: a key that names no kernel of [`crate::kernels::ALL`], holds a
    /// malformed specialisation, or is spelt otherwise than this process writes it (it would
    /// make a second slot). The caller creates the pipeline if the slot, locked, holds none.
    fn prebuild_slot(
        &self,
        k: &str,
    ) -> Option<(&'static crate::kernels::Kernel, ShaderDefs, Slot)> {
        let (name, defs) = k.split_once('|')?;
        let kernel = crate::kernels::ALL
            .iter()
            .find(|kernel| kernel.name == name)?;
        let defs = ShaderDefs::from_key(defs)?;
        if key(kernel.name, &defs) != k {
            return None;
        }
        Some((kernel, defs, self.pipelines.slot(k, false, true)))
    }
}

#[cfg(target_arch = "wasm32")]
impl Gpu {
    /// Create the pipelines of `keys` ([`Gpu::pipeline_keys`] of an earlier page on this
    /// adapter) now, in order, skipped as [`Gpu::prebuild`] skips them. On WebGPU each
    /// creation returns at once and the browser compiles in its GPU process, in order with
    /// the work submitted after: a plan's first dispatch waits for what is left. (Chromium
    /// compiles `createComputePipelineAsync` on other threads, but it does not share the
    /// result with a later synchronous creation of the same pipeline, and wgpu creates them
    /// synchronously: measured on SwiftShader, the same shader created again compiled again.)
    /// A pipeline the device refuses (a key of another Kestrel version) is caught by an
    /// error scope around them all, so the device's error handler never sees it; the returned
    /// future (the scope's pop; it need not be awaited) gives the error. A refused pipeline's
    /// slot is never taken by a plan: plans ask only for keys this version writes, and those
    /// are valid.
    pub fn prebuild_here(
        &self,
        keys: &[String],
    ) -> impl std::future::Future<Output = Option<wgpu::Error>> + 'static {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        for k in keys {
            if let Some((kernel, defs, slot)) = self.prebuild_slot(k) {
                let mut made = lock(&slot);
                if made.is_none() {
                    *made = Some(self.create_pipeline(kernel.name, kernel.source, &defs));
                }
            }
        }
        scope.pop()
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Gpu {
    /// Create the pipelines of `keys` ([`Gpu::pipeline_keys`] of an earlier process on this
    /// adapter) ahead of use, in order, on `threads` background threads; returns at once with
    /// the threads' handles. A key that names no kernel of [`crate::kernels::ALL`] or holds a
    /// malformed specialisation is skipped. A pipeline the device refuses (a key written by
    /// another version of Kestrel) is dropped inside error scopes of the thread's own, so the
    /// device's error handler never sees it, and is created again if a plan asks for it.
    pub fn prebuild(
        self: &Arc<Gpu>,
        keys: Vec<String>,
        threads: usize,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let queue = Arc::new((keys, std::sync::atomic::AtomicUsize::new(0)));
        (0..threads.max(1))
            .map(|_| {
                let (gpu, queue) = (self.clone(), queue.clone());
                std::thread::spawn(move || {
                    let (keys, next) = &*queue;
                    while let Some(k) =
                        keys.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        gpu.prebuild_one(k);
                    }
                })
            })
            .collect()
    }

    fn prebuild_one(&self, k: &str) {
        let Some((kernel, defs, slot)) = self.prebuild_slot(k) else {
            return;
        };
        let mut made = lock(&slot);
        if made.is_some() {
            return;
        }
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let p = self.create_pipeline(kernel.name, kernel.source, &defs);
        let refused = [internal.pop(), validation.pop()]
            .into_iter()
            .any(|f| !matches!(ready(f), Some(None)));
        if !refused {
            *made = Some(p);
        }
    }
}

/// The output of a future that is ready when first polled (wgpu's native error scopes), else
/// None.
#[cfg(not(target_arch = "wasm32"))]
fn ready<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

//! Per-sequence state: what an architecture declares (KV caches, recurrent states,
//! counters) and the store of GPU tensors a session binds into its plans by name.

use std::collections::HashMap;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::tensor::{DType, GpuTensor};

/// One named piece of per-sequence state, e.g. `layer.3.k` with shape [capacity, kv_dim].
#[derive(Debug, Clone)]
pub struct StateSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// A recurrent state (an SSM or RWKV state, a convolution's last inputs): it summarises
    /// the whole sequence, starts at zero, and cannot be cut back to an earlier position. A
    /// KV cache (not recurrent) is addressed by position and needs no clearing.
    pub recurrent: bool,
    pub dtype: DType,
}

impl StateSpec {
    /// A KV cache.
    pub fn cache(name: String, shape: Vec<usize>) -> StateSpec {
        StateSpec {
            name,
            shape,
            recurrent: false,
            dtype: DType::F32,
        }
    }
    /// A recurrent state.
    pub fn recurrent(name: String, shape: Vec<usize>) -> StateSpec {
        StateSpec {
            name,
            shape,
            recurrent: true,
            dtype: DType::F32,
        }
    }
    /// u32 counters that only statistics read (a mixture of experts' tokens per expert): they
    /// count from zero over the session's life and never affect its outputs.
    pub fn counters(name: String, n: usize) -> StateSpec {
        StateSpec {
            name,
            shape: vec![n],
            recurrent: false,
            dtype: DType::U32,
        }
    }

    /// The state of a batched session with `slots` sequence slots: a recurrent state once per
    /// slot ([`in_slots`]); a KV cache, already a shared pool, as it is.
    pub fn in_slots(mut self, slots: usize) -> StateSpec {
        if self.recurrent {
            self.shape = in_slots(&self.shape, slots);
        }
        self
    }

    /// A batched session's block table (`crate::batch`): u32 block numbers the host writes as
    /// sequences open and close; zero (the padding block) where no sequence is.
    pub fn block_table(name: String, n: usize) -> StateSpec {
        StateSpec {
            name,
            shape: vec![n],
            recurrent: false,
            dtype: DType::U32,
        }
    }
}

/// The shape of `slots` states of shape `per_slot` stacked along the first dimension (slot
/// s's starts at s times `per_slot`'s elements): a batched session's recurrent states.
pub fn in_slots(per_slot: &[usize], slots: usize) -> Vec<usize> {
    let mut shape = per_slot.to_vec();
    if let Some(first) = shape.first_mut() {
        *first *= slots;
    }
    shape
}

/// GPU copies of a store's recurrent states, in the store's order.
#[derive(Default)]
pub struct StateCopies(Vec<GpuTensor>);

#[derive(Default)]
pub struct StateStore {
    tensors: HashMap<String, GpuTensor>,
    /// Names of the recurrent states (zeroed when a sequence starts over).
    recurrent: Vec<String>,
}

impl StateStore {
    /// Every state, zeroed.
    pub fn allocate(gpu: &Gpu, specs: &[StateSpec]) -> Result<StateStore> {
        let mut tensors = HashMap::new();
        for s in specs {
            tensors.insert(
                s.name.clone(),
                GpuTensor::new(gpu, &s.name, &s.shape, s.dtype)?,
            );
        }
        let recurrent = specs
            .iter()
            .filter(|s| s.recurrent)
            .map(|s| s.name.clone())
            .collect();
        Ok(StateStore { tensors, recurrent })
    }
    pub fn has_recurrent(&self) -> bool {
        !self.recurrent.is_empty()
    }
    /// Zero the recurrent states (queued before any later run).
    pub fn clear_recurrent(&self, gpu: &Gpu) {
        self.clear_recurrent_slot(gpu, 0, 1);
    }
    /// Zero slot `slot` of `slots` of every recurrent state ([`StateSpec::in_slots`]), queued
    /// before any later run: a batched sequence opened there starts from nothing.
    pub fn clear_recurrent_slot(&self, gpu: &Gpu, slot: usize, slots: usize) {
        if self.recurrent.is_empty() {
            return;
        }
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("clear a slot's recurrent state"),
            });
        for name in &self.recurrent {
            if let Some(t) = self.tensors.get(name) {
                let per_slot = t.bytes() / slots as u64;
                enc.clear_buffer(&t.buffer, per_slot * slot as u64, Some(per_slot));
            }
        }
        gpu.queue.submit([enc.finish()]);
        gpu.work.submit(0);
    }
    /// Copy the recurrent states into `copies` (made on first use, then reused), queued
    /// after the work already submitted.
    pub fn save_recurrent(&self, gpu: &Gpu, copies: &mut StateCopies) -> Result<()> {
        if copies.0.is_empty() {
            for name in &self.recurrent {
                let t = self.get(name)?;
                copies.0.push(GpuTensor::new(gpu, name, &t.shape, t.dtype)?);
            }
        }
        self.copy_recurrent(gpu, copies, true)
    }
    /// Put the recurrent states back as [`StateStore::save_recurrent`] copied them.
    pub fn restore_recurrent(&self, gpu: &Gpu, copies: &StateCopies) -> Result<()> {
        self.copy_recurrent(gpu, copies, false)
    }
    fn copy_recurrent(&self, gpu: &Gpu, copies: &StateCopies, save: bool) -> Result<()> {
        if copies.0.len() != self.recurrent.len() {
            return Err(Error::Graph("state copies of another session".into()));
        }
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("copy recurrent state"),
            });
        for (name, copy) in self.recurrent.iter().zip(&copies.0) {
            let t = self.get(name)?;
            let (from, to) = match save {
                true => (&t.buffer, &copy.buffer),
                false => (&copy.buffer, &t.buffer),
            };
            enc.copy_buffer_to_buffer(from, 0, to, 0, t.bytes());
        }
        gpu.queue.submit([enc.finish()]);
        gpu.work.submit(0);
        Ok(())
    }
    pub fn get(&self, name: &str) -> Result<&GpuTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Graph(format!("no state named {name}")))
    }
    pub fn bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.bytes()).sum()
    }
}

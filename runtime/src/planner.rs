//! Buffer planning by liveness: every activation gets a slot; a slot is reused once the
//! tensor in it is dead (after its last reader), best fit by size. Graph outputs keep
//! dedicated slots so they can be read after the run.

use crate::graph::{Graph, Source, TensorId};

#[derive(Debug, Clone)]
pub struct Assignment {
    /// Slot of each tensor (None for weights, inputs, states).
    pub slot_of: Vec<Option<usize>>,
    /// Bytes of each slot.
    pub slot_bytes: Vec<u64>,
}

impl Assignment {
    pub fn total_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

pub fn plan(graph: &Graph) -> Assignment {
    let n = graph.tensors.len();
    let mut last_use = vec![0usize; n];
    let mut first_def: Vec<Option<usize>> = vec![None; n];
    for (i, op) in graph.ops.iter().enumerate() {
        let (reads, writes) = op.reads_writes();
        for t in reads.into_iter().chain(writes.iter().copied()) {
            last_use[t] = i;
        }
        for t in writes {
            first_def[t].get_or_insert(i);
        }
    }
    for &t in &graph.outputs {
        last_use[t] = usize::MAX;
    }
    let mut slot_of = vec![None; n];
    let mut slot_bytes: Vec<u64> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Tensors whose slot is freed after op i.
    let mut dies_after: Vec<Vec<TensorId>> = vec![Vec::new(); graph.ops.len()];
    for t in 0..n {
        if matches!(graph.tensors[t].source, Source::Activation)
            && first_def[t].is_some()
            && last_use[t] != usize::MAX
        {
            dies_after[last_use[t]].push(t);
        }
    }
    for (i, dying) in dies_after.iter().enumerate() {
        for t in 0..n {
            if first_def[t] != Some(i) || !matches!(graph.tensors[t].source, Source::Activation) {
                continue;
            }
            let bytes = graph.tensors[t]
                .dtype
                .bytes(graph.tensors[t].numel())
                .max(4);
            let slot = if last_use[t] == usize::MAX {
                None
            } else {
                // Best fit among free slots, else grow the largest free one.
                let fit = free
                    .iter()
                    .enumerate()
                    .filter(|(_, &s)| slot_bytes[s] >= bytes)
                    .min_by_key(|(_, &s)| slot_bytes[s])
                    .map(|(k, _)| k)
                    .or_else(|| (0..free.len()).max_by_key(|&k| slot_bytes[free[k]]));
                fit.map(|k| free.swap_remove(k))
            };
            let s = slot.unwrap_or_else(|| {
                slot_bytes.push(0);
                slot_bytes.len() - 1
            });
            slot_bytes[s] = slot_bytes[s].max(bytes);
            slot_of[t] = Some(s);
        }
        for &t in dying {
            if let Some(s) = slot_of[t] {
                free.push(s);
            }
        }
    }
    Assignment {
        slot_of,
        slot_bytes,
    }
}

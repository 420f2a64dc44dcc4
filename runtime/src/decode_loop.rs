//! Decoding with the token loop on the GPU: several decode steps recorded in one submission,
//! and their tokens read back together. Between steps the sampled token is copied into the
//! next step's token input and each step's `Step` uniform is copied from an array written
//! once per batch, so the host neither waits nor writes between tokens. Before each step the
//! gate kernel (`kernels::decode_gate`) sets the step's indirect dispatch arguments: its
//! workgroup counts, or zeros once an end token has been fed, so the steps after the end of a
//! reply do nothing (and recurrent states do not take in tokens past it).

use std::sync::Arc;

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::executor::Plan;
use crate::kernels::{self, decode_gate, Dispatch, Step};
use crate::readback;

/// The most steps one submission holds.
pub const MAX_STEPS: usize = 32;

const STEP_BYTES: u64 = std::mem::size_of::<Step>() as u64;

/// The buffers and the gate of the batched decode of one plan (a one-token plan that
/// samples: input "tokens", output 0 the sampled token).
pub struct DecodeLoop {
    gate: Dispatch,
    /// Three indirect arguments per dispatch of the plan, written by the gate.
    args: GpuBuffer,
    ended: GpuBuffer,
    /// `[n, id_1 .. id_n]`: the end tokens of this batch.
    end_ids: GpuBuffer,
    /// One `Step` per step of a batch.
    steps: GpuBuffer,
    /// The token each step sampled.
    ids: GpuBuffer,
    staging: GpuBuffer,
    /// Kept for the gate's bind group and the device's byte count.
    _counts: GpuBuffer,
}

impl DecodeLoop {
    pub fn new(gpu: &Gpu, plan: &Plan) -> Result<DecodeLoop> {
        let token = token_input(plan)?;
        let counts: Vec<u32> = plan
            .dispatches()
            .iter()
            .flat_map(|d| d.workgroups)
            .collect();
        let counts_buf = gpu.storage_buffer_init("decode counts", bytemuck::cast_slice(&counts));
        let args = gpu.buffer(&wgpu::BufferDescriptor {
            label: Some("decode args"),
            size: (4 * counts.len() as u64).max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT,
            mapped_at_creation: false,
        });
        let ended = gpu.storage_buffer("decode ended", 4);
        let end_ids =
            gpu.storage_buffer("decode end ids", 4 * (1 + decode_gate::MAX_END_IDS) as u64);
        let gate = decode_gate::launch(
            gpu,
            &counts_buf,
            counts.len(),
            &args,
            &ended,
            token,
            &end_ids,
        )?;
        Ok(DecodeLoop {
            gate,
            args,
            ended,
            end_ids,
            steps: gpu.storage_buffer("decode steps", STEP_BYTES * MAX_STEPS as u64),
            ids: gpu.storage_buffer("decode ids", 4 * MAX_STEPS as u64),
            staging: readback::staging_buffer(gpu, 4 * MAX_STEPS as u64),
            _counts: counts_buf,
        })
    }

    /// Run `steps` (at most [`MAX_STEPS`]) through `plan`, whose token input already holds
    /// the first token, in one submission, and return the token each step sampled. The steps
    /// after one that sampled a token of `end_ids` (at most
    /// [`decode_gate::MAX_END_IDS`]) do not run; their entries repeat that token.
    pub async fn run(
        &self,
        gpu: &Arc<Gpu>,
        plan: &Plan,
        steps: &[Step],
        end_ids: &[u32],
    ) -> Result<Vec<u32>> {
        let n = steps.len();
        if n == 0 || n > MAX_STEPS || end_ids.len() > decode_gate::MAX_END_IDS {
            return Err(Error::Graph(format!(
                "a decode batch takes 1 to {MAX_STEPS} steps and at most {} end tokens, not {n} \
                 and {}",
                decode_gate::MAX_END_IDS,
                end_ids.len()
            )));
        }
        gpu.check()?;
        let token = token_input(plan)?;
        let sampled = &plan.output(0).buffer;
        let mut ids = vec![end_ids.len() as u32];
        ids.extend_from_slice(end_ids);
        gpu.write_padded(&self.end_ids, 0, bytemuck::cast_slice(&ids));
        gpu.write_padded(&self.steps, 0, bytemuck::cast_slice(steps));
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("decode batch"),
            });
        enc.clear_buffer(&self.ended, 0, None);
        for k in 0..n as u64 {
            enc.copy_buffer_to_buffer(&self.steps, k * STEP_BYTES, plan.step(), 0, STEP_BYTES);
            // The first step always runs (its token is the caller's); later ones are gated
            // on the token the step before sampled.
            match k {
                0 => kernels::record(&mut enc, plan.dispatches()),
                _ => kernels::record_gated(&mut enc, &self.gate, plan.dispatches(), &self.args),
            }
            enc.copy_buffer_to_buffer(sampled, 0, token, 0, 4);
            enc.copy_buffer_to_buffer(sampled, 0, &self.ids, 4 * k, 4);
        }
        enc.copy_buffer_to_buffer(&self.ids, 0, &self.staging, 0, 4 * n as u64);
        gpu.queue.submit([enc.finish()]);
        let bytes = readback::map_staging(gpu, self.staging.clone(), 4 * n as u64).await?;
        let ids: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        // The work counted is the steps that ran: after the step that sampled an end token
        // the gate gives every dispatch zero workgroups.
        let ran = ids
            .iter()
            .position(|t| end_ids.contains(t))
            .map_or(n, |e| e + 1);
        gpu.work.submit(ran * (plan.dispatches().len() + 1) - 1);
        Ok(ids)
    }
}

/// The decode plan's token input (each step's token; the next step's, copied from the sampler).
fn token_input(plan: &Plan) -> Result<&wgpu::Buffer> {
    plan.input("tokens")
        .ok_or_else(|| Error::Graph("the decode plan has no \"tokens\" input".into()))
}

//! Where a pass's GPU time goes, from timestamp queries: a plan's dispatches are replayed
//! one compute pass each, with a timestamp written at the start and the end of every pass,
//! and the times are summed per kernel class (the dispatch's name: "matvec",
//! "decode_attention", ...). Only where the adapter has timestamp queries
//! ([`crate::Caps::timestamps`]).
//!
//! A replay runs the dispatches again with the plan's last step uniform: harmless for KV
//! caches (the same rows are written again) but it advances recurrent states, so profile a
//! throwaway session. One pass per dispatch adds a little time between dispatches but none
//! inside them: the class times are the time inside the passes, and the span (first start
//! to last end) holds the gaps as well.

use std::sync::Arc;

use crate::arch::Head;
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::readback;
use crate::session::{Sampling, Session};

/// Replays of the dispatches. Each dispatch's time is its fastest replay, and so is the
/// span: the least disturbed by other work on the machine, and the sum of the dispatches'
/// fastest times is at most the fastest span (each replay's sum is at most its span).
const REPLAYS: usize = 3;

/// Dispatches per query set (two timestamps each; wgpu allows 4096 queries per set).
const CHUNK: usize = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;

/// One kernel class's share of a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassTime {
    /// The dispatches' name (the kernel's).
    pub name: &'static str,
    pub dispatches: usize,
    /// GPU time of this class's dispatches in one pass, milliseconds.
    pub ms: f64,
}

/// The GPU time of one pass of a plan, by kernel class.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTimes {
    /// In order of first appearance in the plan.
    pub classes: Vec<ClassTime>,
    /// From the first dispatch's start to the last one's end, milliseconds: the dispatches
    /// and the gaps between them.
    pub span_ms: f64,
}

impl KernelTimes {
    /// The time of every dispatch, milliseconds (the sum over classes).
    pub fn total_ms(&self) -> f64 {
        self.classes.iter().map(|c| c.ms).sum()
    }
}

/// Time `dispatches` (a plan's, in order) per kernel class. None where the adapter has no
/// timestamp queries.
pub async fn kernel_times(gpu: &Arc<Gpu>, dispatches: &[Dispatch]) -> Result<Option<KernelTimes>> {
    if !gpu.caps.timestamps {
        return Ok(None);
    }
    let mut fastest = vec![u64::MAX; dispatches.len()];
    let mut span = u64::MAX;
    for _ in 0..REPLAYS {
        let mut replay_span = 0;
        for (c, chunk) in dispatches.chunks(CHUNK).enumerate() {
            let (ticks, chunk_span) = time_each(gpu, chunk).await?;
            for (i, t) in ticks.into_iter().enumerate() {
                let f = &mut fastest[c * CHUNK + i];
                *f = (*f).min(t);
            }
            replay_span += chunk_span;
        }
        span = span.min(replay_span);
    }
    // Classes are summed in ticks, then converted, so their total stays within the span.
    let mut classes: Vec<(&'static str, usize, u64)> = Vec::new();
    for (d, ticks) in dispatches.iter().zip(fastest) {
        match classes.iter_mut().find(|c| c.0 == d.name) {
            Some(c) => {
                c.1 += 1;
                c.2 += ticks;
            }
            None => classes.push((d.name, 1, ticks)),
        }
    }
    let ms_per_tick = gpu.queue.get_timestamp_period() as f64 * 1e-6;
    Ok(Some(KernelTimes {
        classes: classes
            .into_iter()
            .map(|(name, dispatches, ticks)| ClassTime {
                name,
                dispatches,
                ms: ticks as f64 * ms_per_tick,
            })
            .collect(),
        span_ms: span as f64 * ms_per_tick,
    }))
}

/// A decode token's GPU time by kernel class (None where the adapter has no timestamp
/// queries or the session has no token yet). Replays the session's decode plan at its last
/// position, after running that position again so the plan and its step exist: this
/// rewrites a KV cache row with the same values but advances a recurrent state, so the
/// session must not be used afterwards (`kestrel bench` and the browser's `decodeProfile`
/// profile a throwaway one).
pub async fn decode_times(session: &mut Session) -> Result<Option<KernelTimes>> {
    let gpu = session.gpu().clone();
    if !gpu.caps.timestamps {
        return Ok(None);
    }
    let pos = session.pos();
    let Some(&last) = session.tokens().last() else {
        return Ok(None);
    };
    // Where the cache cannot drop one position (a recurrent state), it starts over: a
    // recurrent decode step costs the same at any position.
    session.truncate(pos - 1);
    session.next_token(&[last], &Sampling::default()).await?;
    let plan = session.plan(1, Head::Sample)?;
    kernel_times(&gpu, plan.dispatches()).await
}

/// The GPU time of one run of `dispatches`, milliseconds (each in its own pass, as
/// [`kernel_times`] runs them, but once). None where the adapter has no timestamp queries.
pub async fn once_ms(gpu: &Arc<Gpu>, dispatches: &[Dispatch]) -> Result<Option<f64>> {
    if !gpu.caps.timestamps {
        return Ok(None);
    }
    let mut ticks = 0;
    for chunk in dispatches.chunks(CHUNK) {
        ticks += time_each(gpu, chunk).await?.0.into_iter().sum::<u64>();
    }
    Ok(Some(
        ticks as f64 * gpu.queue.get_timestamp_period() as f64 * 1e-6,
    ))
}

/// Run each dispatch in its own compute pass between two timestamps: the ticks of each, and
/// from the first start to the last end.
async fn time_each(gpu: &Arc<Gpu>, dispatches: &[Dispatch]) -> Result<(Vec<u64>, u64)> {
    let queries = 2 * dispatches.len() as u32;
    let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("profile"),
        ty: wgpu::QueryType::Timestamp,
        count: queries,
    });
    let bytes = queries as u64 * 8;
    let resolved = gpu.buffer(&wgpu::BufferDescriptor {
        label: Some("profile timestamps"),
        size: bytes,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("profile"),
        });
    for (i, d) in dispatches.iter().enumerate() {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(d.name),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &set,
                beginning_of_pass_write_index: Some(2 * i as u32),
                end_of_pass_write_index: Some(2 * i as u32 + 1),
            }),
        });
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind_group, &[]);
        pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
    }
    enc.resolve_query_set(&set, 0..queries, &resolved, 0);
    gpu.queue.submit([enc.finish()]);
    gpu.work.submit(dispatches.len());
    let ticks: Vec<u64> =
        bytemuck::pod_collect_to_vec(&readback::read_buffer(gpu, &resolved, 0, bytes).await?);
    gpu.check()?;
    if ticks.len() != queries as usize {
        return Err(Error::Readback(format!(
            "{} timestamps read back, {queries} expected",
            ticks.len()
        )));
    }
    // An end before its start (a driver whose clock is not monotonic) counts as 0.
    let each = ticks.chunks(2).map(|t| t[1].saturating_sub(t[0])).collect();
    let span = ticks[ticks.len() - 1].saturating_sub(ticks[0]);
    Ok((each, span))
}

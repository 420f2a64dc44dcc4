//! The causal depthwise conv1d, which also carries its rolling state (compared exactly: it
//! is a copy of inputs); and its batched form, each sequence of a step from its own slot.

use super::{batch_uniform, poisoned, upload_f32, Case, Output, Prepared, SUM_TOL};
use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::kernels::conv1d;
use crate::rng::Rng;

/// A case's inputs on the GPU and its output, poisoned, of as many values as x.
struct Uploaded {
    x: GpuBuffer,
    w: GpuBuffer,
    b: GpuBuffer,
    state: GpuBuffer,
    out: GpuBuffer,
}

impl Uploaded {
    fn new(gpu: &Gpu, [x, w, b, state]: [&[f32]; 4]) -> Uploaded {
        Uploaded {
            x: upload_f32(gpu, x),
            w: upload_f32(gpu, w),
            b: upload_f32(gpu, b),
            state: upload_f32(gpu, state),
            out: poisoned(gpu, x.len()),
        }
    }

    /// The kernel's buffers, with the bias or without.
    fn buffers(&self, bias: bool) -> conv1d::Buffers<'_> {
        conv1d::Buffers {
            x: &self.x,
            w: &self.w,
            bias: bias.then_some(&*self.b),
            state: &self.state,
            out: &self.out,
        }
    }
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // (tokens, channels, kernel, silu, bias); 9000 tokens take several dispatches.
    let specs = [
        (29, 70, 4, true, true),
        (1, 70, 4, true, true),
        (5, 3, 2, false, false),
        (9000, 2, 4, false, true),
    ];
    for (i, (tokens, channels, kernel, silu, bias)) in specs.into_iter().enumerate() {
        let seed = 751 + i as u64;
        let what = format!("T={tokens} C={channels} K={kernel} silu={silu} bias={bias}");
        cases.push(Case::new("conv1d", what, move |gpu| {
            let mut rng = Rng::new(seed);
            let x = rng.vec(tokens * channels, 2.0);
            let w = rng.vec(channels * kernel, 1.0);
            let b = rng.vec(channels, 1.0);
            let mut state = rng.vec((kernel - 1) * channels, 1.0);
            let up = Uploaded::new(gpu, [&x, &w, &b, &state]);
            let d = conv1d::launch(gpu, &up.buffers(bias), tokens, channels, kernel, silu)?;
            let bias_ref = bias.then_some(b.as_slice());
            let want = conv1d::reference(&x, &w, bias_ref, &mut state, channels, kernel, silu);
            let outputs = vec![
                Output::close("outputs", &up.out, want, SUM_TOL),
                Output::bits("state", &up.state, state),
            ];
            Ok(Prepared::new(gpu, d, outputs))
        }));
    }
    cases.extend(paged_cases());
    cases
}

/// A batched step: sequences of (rows, slot) in a pool of 5 slots (slots 1 and 4 named by no
/// sequence must keep their state bit for bit), a fourth pick unused, then 3 padding rows no
/// sequence owns (left unwritten: only the sequences' rows are compared).
fn paged_cases() -> Vec<Case> {
    let seqs = [(4, 2), (1, 0), (6, 3)];
    let (slots, picks, padding) = (5, 4, 3);
    let mut cases = Vec::new();
    for (i, (channels, kernel, silu, bias)) in [(70, 4, true, true), (9, 2, false, false)]
        .into_iter()
        .enumerate()
    {
        let what = format!("batched C={channels} K={kernel} silu={silu} bias={bias}");
        cases.push(Case::new("conv1d", what, move |gpu| {
            let mut rng = Rng::new(771 + i as u64);
            let rows: usize = seqs.iter().map(|s| s.0).sum();
            let x = rng.vec((rows + padding) * channels, 2.0);
            let w = rng.vec(channels * kernel, 1.0);
            let b = rng.vec(channels, 1.0);
            let per_slot = (kernel - 1) * channels;
            let mut state = rng.vec(slots * per_slot, 1.0);
            let up = Uploaded::new(gpu, [&x, &w, &b, &state]);
            let batch = batch_uniform(gpu, &seqs);
            let io = up.buffers(bias);
            let d = conv1d::launch_paged(gpu, &io, &batch, picks, channels, kernel, silu)?;
            let mut want = Vec::new();
            let mut first = 0;
            for &(n, slot) in &seqs {
                let xs = &x[first * channels..(first + n) * channels];
                let st = &mut state[slot * per_slot..(slot + 1) * per_slot];
                let bias_ref = bias.then_some(b.as_slice());
                want.extend(conv1d::reference(
                    xs, &w, bias_ref, st, channels, kernel, silu,
                ));
                first += n;
            }
            let outputs = vec![
                Output::close("outputs", &up.out, want, SUM_TOL),
                Output::bits("states", &up.state, state),
            ];
            Ok(Prepared::new(gpu, vec![d], outputs))
        }));
    }
    cases
}

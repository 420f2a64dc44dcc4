// Copy n f32 values: dst[dst_offset + step.pos * dst_pos_stride + i] = src[src_offset + i].
// With dst_pos_stride = row width this appends rows to a KV cache at the current position;
// with src_offset = (T - 1) * width it takes the last row of a sequence.
// GATHER (a batched step, shaders/batch.wgsl): n = picks * width values, dst row s is the
// src row of the batch's pick s (the row each sequence samples).

struct Params { n: u32, src_offset: u32, dst_offset: u32, dst_pos_stride: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
#if GATHER
#include "batch.wgsl"
@group(0) @binding(4) var<uniform> batch: Batch;
#endif

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
#if GATHER
    let width = p.dst_pos_stride;
    dst[i] = src[batch.picks[i / width].x * width + i % width];
#else
    let d = p.dst_offset + step.pos * p.dst_pos_stride + i;
    if (d < arrayLength(&dst)) {
        dst[d] = src[p.src_offset + i];
    }
#endif
}

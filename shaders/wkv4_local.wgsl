// RWKV-4's chunked WKV, pass 1 of 3 (then wkv4_carry, then wkv4): one thread per (chunk,
// channel) runs the chunk's tokens from an empty state and writes the state they leave,
// (aa, bb, pp) to scratch [chunks, 3, C]. See shaders/wkv4_state.wgsl.

#include "wkv4_state.wgsl"

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;              // [T, C]
@group(0) @binding(2) var<storage, read> v: array<f32>;              // [T, C]
@group(0) @binding(3) var<storage, read> w: array<f32>;              // [C]
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;  // [chunks, 3, C]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * 64u + lid;
    let cs = p.channels;
    if (idx >= p.chunks * cs) {
        return;
    }
    let c = idx / cs;
    let ch = idx % cs;
    let wc = w[ch];
    var s = Wkv(0.0, 0.0, 0.0);
    let first = p.t0 + c * p.chunk;
    let last = p.t0 + min((c + 1u) * p.chunk, p.tokens);
    for (var t = first; t < last; t++) {
        s = wkv_update(s, wc, k[t * cs + ch], v[t * cs + ch]);
    }
    let base = c * 3u * cs + ch;
    scratch[base] = s.aa;
    scratch[base + cs] = s.bb;
    scratch[base + 2u * cs] = s.pp;
}

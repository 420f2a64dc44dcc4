// RWKV-4's chunked WKV, pass 2 of 3: one thread per channel walks chunks [c0, c1) in order,
//   start(c+1) = e^{w len(c)} start(c) + local(c)     (wkv_combine, in max-trick form)
// from start(0) = the sequence's state, overwriting each chunk's local triple in scratch with
// its start triple for wkv4, and leaves the state after chunk c1 - 1 in state. Long runs
// take several dispatches (c0, c1) so that no invocation loops too long.

#include "wkv4_state.wgsl"

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;              // [C]
@group(0) @binding(2) var<storage, read_write> state: array<f32>;    // [3, C]
@group(0) @binding(3) var<storage, read_write> scratch: array<f32>;  // [chunks, 3, C]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let ch = group_index(wid, nwg) * 64u + lid;
    let cs = p.channels;
    if (ch >= cs) {
        return;
    }
    let wc = w[ch];
    var s = Wkv(state[ch], state[cs + ch], state[2u * cs + ch]);
    for (var c = p.c0; c < p.c1; c++) {
        let base = c * 3u * cs + ch;
        let part = Wkv(scratch[base], scratch[base + cs], scratch[base + 2u * cs]);
        scratch[base] = s.aa;
        scratch[base + cs] = s.bb;
        scratch[base + 2u * cs] = s.pp;
        let len = min((c + 1u) * p.chunk, p.tokens) - c * p.chunk;
        s = wkv_combine(s, part, wc * f32(len));
    }
    state[ch] = s.aa;
    state[cs + ch] = s.bb;
    state[2u * cs + ch] = s.pp;
}

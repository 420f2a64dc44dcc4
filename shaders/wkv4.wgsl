// RWKV-4's WKV (shaders/wkv4_state.wgsl), the outputs: one thread per (chunk, channel) runs
// its chunk's tokens from the chunk's start state, writing wkv_t before each update.
// Recurrent form and decode: one chunk whose start is the sequence's state [3, C] (aa, bb,
// pp rows), updated in place (WRITE_STATE). Chunked prefill: start states [chunks, 3, C]
// come from wkv4_carry (WRITE_STATE off). w = -exp(time_decay) and u = time_first per channel.

#include "wkv4_state.wgsl"

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;            // [T, C]
@group(0) @binding(2) var<storage, read> v: array<f32>;            // [T, C]
@group(0) @binding(3) var<storage, read> w: array<f32>;            // [C]
@group(0) @binding(4) var<storage, read> u: array<f32>;            // [C]
@group(0) @binding(5) var<storage, read_write> start: array<f32>;  // [chunks, 3, C]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;    // [T, C]

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
    let base = c * 3u * cs + ch;
    var s = Wkv(start[base], start[base + cs], start[base + 2u * cs]);
    let wc = w[ch];
    let uc = u[ch];
    let first = p.t0 + c * p.chunk;
    let last = p.t0 + min((c + 1u) * p.chunk, p.tokens);
    for (var t = first; t < last; t++) {
        let kt = k[t * cs + ch];
        let vt = v[t * cs + ch];
        out[t * cs + ch] = wkv_out(s, uc + kt, vt);
        s = wkv_update(s, wc, kt, vt);
    }
    if (WRITE_STATE) {
        start[base] = s.aa;
        start[base + cs] = s.bb;
        start[base + 2u * cs] = s.pp;
    }
}

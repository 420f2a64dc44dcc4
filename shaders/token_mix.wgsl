// RWKV's token-shift mixes in one pass: out_m = x + delta * mu[first + m] for the OUTS
// outputs of this pass (mu [n, width] one learnt row per mix, broadcast over the rows of x),
// reading x and delta once instead of once per mix (one elementwise dispatch each).

struct Params { n: u32, width: u32, first: u32, outs: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> delta: array<f32>;
@group(0) @binding(3) var<storage, read> mu: array<f32>;
@group(0) @binding(4) var<storage, read_write> out0: array<f32>;
@group(0) @binding(5) var<storage, read_write> out1: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * 64u + lid;
    if (idx >= p.n) {
        return;
    }
    let xv = x[idx];
    let d = delta[idx];
    let m = p.first * p.width + idx % p.width;
    out0[idx] = xv + d * mu[m];
    if (p.outs > 1u) {
        out1[idx] = xv + d * mu[m + p.width];
    }
    if (p.outs > 2u) {
        out2[idx] = xv + d * mu[m + 2u * p.width];
    }
}

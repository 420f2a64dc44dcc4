// Per head, a value vector scaled by a dot product: out[t, h, j] = (a[t, h, :] . b[t, h, :]) *
// v[t, h, j], with a, b [rows, heads, dk] and v, out [rows, heads, dv] (RWKV-7's bonus term
// ((r * r_k) . k) v). Each invocation forms its own dot product: dk is a head's key dim.

struct Params { n: u32, heads: u32, dk: u32, dv: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let rh = i / p.dv; // row * heads + head
    var s = 0.0;
    for (var j = 0u; j < p.dk; j++) {
        s += a[rh * p.dk + j] * b[rh * p.dk + j];
    }
    out[i] = s * v[i];
}

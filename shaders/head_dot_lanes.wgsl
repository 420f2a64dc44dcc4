// head_dot.wgsl's out[t, h, j] = (a[t, h, :] . b[t, h, :]) * v[t, h, j] for CPU adapters with
// subgroups of at least 8 lanes (lavapipe), which pay for every load as a loop over the SIMD
// lanes: head_dot.wgsl has every invocation load the whole of a and b to form its own copy of
// the dot product. Here a workgroup is one subgroup of 8 lanes per (row, head): each lane
// loads every 8th value of a and b, subgroupAdd gives every lane the product, and each lane
// scales every 8th value of v.

struct Params { n: u32, heads: u32, dk: u32, dv: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let rh = group_index(wid, nwg); // row * heads + head
    if (rh * p.dv >= p.n) {
        return;
    }
    var s = 0.0;
    for (var j = lid; j < p.dk; j += 8u) {
        s += a[rh * p.dk + j] * b[rh * p.dk + j];
    }
    s = subgroupAdd(s);
    for (var i = lid; i < p.dv; i += 8u) {
        out[rh * p.dv + i] = s * v[rh * p.dv + i];
    }
}

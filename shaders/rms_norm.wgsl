// RMSNorm over the last dimension: out = x / sqrt(mean(x^2) + eps) * w. One workgroup per row.
// Grouped: rows of `groups` groups of `dim`, each normalised alone, w spanning the whole row.

struct Params { rows: u32, dim: u32, eps: f32, groups: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var acc = 0.0;
    for (var i = lid; i < p.dim; i += 256u) {
        let v = x[base + i];
        acc += v * v;
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(partial[0] / f32(p.dim) + p.eps);
    let wbase = (row % p.groups) * p.dim;
    for (var i = lid; i < p.dim; i += 256u) {
        out[base + i] = x[base + i] * inv * w[wbase + i];
    }
}

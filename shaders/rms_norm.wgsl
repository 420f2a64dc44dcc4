// Normalisation over the last dimension, one workgroup per row:
//   RMSNorm (CENTERED false): out = x / sqrt(mean(x^2) + eps) * w
//   LayerNorm (CENTERED true): out = (x - mean) / sqrt(mean((x - mean)^2) + eps) * w
// plus b when BIAS. Grouped: rows of `groups` groups of `dim`, each normalised alone, w and b
// spanning the whole row (Mamba-2's gated norm, RWKV's per-head GroupNorm).

struct Params { rows: u32, dim: u32, eps: f32, groups: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> b: array<f32>;

var<workgroup> partial: array<f32, 256>;

// The sum over the workgroup of each thread's `v`.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var mean = 0.0;
    if (CENTERED) {
        var acc = 0.0;
        for (var i = lid; i < p.dim; i += 256u) {
            acc += x[base + i];
        }
        mean = workgroup_sum(lid, acc) / f32(p.dim);
    }
    var acc = 0.0;
    for (var i = lid; i < p.dim; i += 256u) {
        let v = x[base + i] - mean;
        acc += v * v;
    }
    let inv = inverseSqrt(workgroup_sum(lid, acc) / f32(p.dim) + p.eps);
    let wbase = (row % p.groups) * p.dim;
    for (var i = lid; i < p.dim; i += 256u) {
        var y = (x[base + i] - mean) * inv * w[wbase + i];
        if (BIAS) {
            y += b[wbase + i];
        }
        out[base + i] = y;
    }
}

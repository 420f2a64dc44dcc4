// Back to token order: out[t, c] = sum_j weight[t, j] * y[row(t, j), c], where y holds the
// experts' outputs in sorted rows (moe_permute.wgsl) and the weights come from route
// (moe_route.wgsl). With SHARED, Qwen2-MoE's shared expert is added, scaled by the sigmoid
// of its gate: + sigmoid(gate[t]) * shared[t, c]. With ACCUM the sum is added to out in place
// (the residual stream) instead of replacing it.

struct Params { tokens: u32, width: u32, k: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> route: array<u32>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@group(0) @binding(4) var<storage, read> shared_out: array<f32>;
@group(0) @binding(5) var<storage, read> shared_gate: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * 64u + lid;
    if (i >= p.tokens * p.width) {
        return;
    }
    let t = i / p.width;
    let c = i % p.width;
    let rows_of = 2u * p.tokens * p.k;
    var o = 0.0;
    for (var j = 0u; j < p.k; j++) {
        let w = bitcast<f32>(route[t * 2u * p.k + p.k + j]);
        let row = perm[rows_of + t * p.k + j];
        o += w * y[row * p.width + c];
    }
    if (SHARED) {
        o += shared_out[i] / (1.0 + exp(-shared_gate[t]));
    }
    if (ACCUM) {
        out[i] = out[i] + o;
    } else {
        out[i] = o;
    }
}

// RWKV-7's delta-rule vectors for linear_scan's `ab` input, per row t and head h:
//   kk = normalize(k * k_k)   (L2 over the head's DK dims, eps added to the squared norm)
//   a = -kk,  b = kk * rate   written as ab[t, h, 0, :] = a, ab[t, h, 1, :] = b.
// The norm is formed as rms_norm_lanes.wgsl forms it with weights +-scale = +-1/sqrt(dk) and
// eps = l2 eps / dk (the graph this replaces: two grouped RMSNorms, a product and a head
// concatenation): kk_j = x_j * inverseSqrt(sum(x^2) / dk + eps) * scale.
// One invocation per (row, head): a head's key dims are few (64 in RWKV-7).

struct Params { rows: u32, heads: u32, dk: u32, eps: f32, scale: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;     // [T, H * dk]
@group(0) @binding(2) var<storage, read> k_k: array<f32>;   // [H * dk]
@group(0) @binding(3) var<storage, read> rate: array<f32>;  // [T, H * dk]
@group(0) @binding(4) var<storage, read_write> ab: array<f32>; // [T, H, 2, dk]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let rh = group_index(wid, nwg) * 64u + lid; // row * heads + head
    if (rh >= p.rows * p.heads) {
        return;
    }
    let h = rh % p.heads;
    let base = rh * p.dk;
    var acc = vec4<f32>(0.0);
    var j = 0u;
    for (; j + 4u <= p.dk; j += 4u) {
        var x = vec4<f32>(k[base + j], k[base + j + 1u], k[base + j + 2u], k[base + j + 3u]);
        x *= vec4<f32>(k_k[h * p.dk + j], k_k[h * p.dk + j + 1u], k_k[h * p.dk + j + 2u],
                       k_k[h * p.dk + j + 3u]);
        acc += x * x;
    }
    var tail = 0.0;
    for (; j < p.dk; j++) {
        let x = k[base + j] * k_k[h * p.dk + j];
        tail += x * x;
    }
    let sum = (acc.x + acc.y) + (acc.z + acc.w) + tail;
    let inv = inverseSqrt(sum / f32(p.dk) + p.eps);
    let out = rh * 2u * p.dk;
    for (var i = 0u; i < p.dk; i++) {
        let x = k[base + i] * k_k[h * p.dk + i];
        let kk = x * inv * p.scale;
        ab[out + i] = -kk;
        ab[out + p.dk + i] = kk * rate[base + i];
    }
}

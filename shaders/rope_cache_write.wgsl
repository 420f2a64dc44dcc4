// The step between a layer's q/k/v projections and its attention, for T tokens at positions
// step.pos + t: q rotated by RoPE into q_out [T, heads, head_dim], k rotated and v as they
// are into their cache rows (kv_row(pos) as shaders/cache_write.wgsl). RoPE is the
// rotate-half layout of shaders/rope.wgsl (dims i and i + rot_half, i < rot_half), with cos
// and sin times rope_scale (LongRoPE's attention factor, else 1); rot_half
// 0 copies q and k unrotated (caches that keep keys before RoPE rotate inside attention).
// q, k and v are read from rows of stride *_stride at column offset *_offset: three
// bindings of one fused [T, qd + 2 kvd] projection, or three separate tensors.
// norm != 0: q and k are first RMS-normalised (eps) per head (norm 1; weights [head_dim] for
// q, then for k, in qk_norm) or over a token's whole q or k (norm 2; weights [qd], then
// [kvd]). Each invocation sums the squares of its own group: no barrier, and the same
// order for every pair of a group.
//
// PAGED (a batched step of several sequences, shaders/batch.wgsl): token t's position and
// cache row come from the batch's rows instead of step.pos + t and the layout.
//
// One invocation per (token, item): items are the heads * head_dim / 2 pairs of q, the
// kv_heads * head_dim / 2 pairs of k and the kv_heads * head_dim values of v. A pair i of a
// head is dims (i, i + rot_half) when i < rot_half, else two unrotated dims past 2 rot_half.

struct Params {
    n_tokens: u32, heads: u32, kv_heads: u32, head_dim: u32,
    rot_half: u32, sinks: u32, ring: u32, norm: u32,
    q_stride: u32, q_offset: u32, k_stride: u32, k_offset: u32,
    v_stride: u32, v_offset: u32, eps: f32, rope_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q_src: array<f32>;
@group(0) @binding(3) var<storage, read> k_src: array<f32>;
@group(0) @binding(4) var<storage, read> v_src: array<f32>;
@group(0) @binding(5) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(6) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(9) var<storage, read> qk_norm: array<f32>;
#if PAGED
#include "batch.wgsl"
@group(0) @binding(10) var<uniform> batch: Batch;
#endif

// The inverse RMS of n values of q_src (k_src) from start.
fn inv_rms_q(start: u32, n: u32) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < n; i++) {
        let x = q_src[start + i];
        s += x * x;
    }
    return inverseSqrt(s / f32(n) + p.eps);
}

fn inv_rms_k(start: u32, n: u32) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < n; i++) {
        let x = k_src[start + i];
        s += x * x;
    }
    return inverseSqrt(s / f32(n) + p.eps);
}

// The two dims of pair i of a head, and whether they rotate.
fn pair_dims(i: u32) -> vec3<u32> {
    if (i < p.rot_half) {
        return vec3<u32>(i, i + p.rot_half, 1u);
    }
    let d = 2u * i;
    return vec3<u32>(d, d + 1u, 0u);
}

// Pair (a, b) rotated by the angle of position pos and frequency i (if it rotates).
fn rotate(a: f32, b: f32, dims: vec3<u32>, pos: u32) -> vec2<f32> {
    if (dims.z == 0u) {
        return vec2<f32>(a, b);
    }
    let cs = sin_cos(f32(pos) * inv_freq[dims.x]) * p.rope_scale;
    return vec2<f32>(a * cs.x - b * cs.y, b * cs.x + a * cs.y);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * 256u + lid;
    let half = p.head_dim / 2u;
    let q_items = p.heads * half;
    let k_items = p.kv_heads * half;
    let kvd = p.kv_heads * p.head_dim;
    let per_token = q_items + k_items + kvd;
    if (idx >= p.n_tokens * per_token) {
        return;
    }
    let t = idx / per_token;
    var j = idx % per_token;
    var pos = step.pos + t;
    var row = pos;
    if (pos >= p.sinks) {
        row = p.sinks + (pos - p.sinks) % p.ring;
    }
#if PAGED
    pos = batch.rows[t].x;
    row = batch.rows[t].y;
#endif
    if (j < q_items) {
        let base = (j / half) * p.head_dim;
        let dims = pair_dims(j % half);
        let src = t * p.q_stride + p.q_offset + base;
        var a = q_src[src + dims.x];
        var b = q_src[src + dims.y];
        if (p.norm == 1u) {
            let inv = inv_rms_q(src, p.head_dim);
            a = a * inv * qk_norm[dims.x];
            b = b * inv * qk_norm[dims.y];
        } else if (p.norm == 2u) {
            let inv = inv_rms_q(t * p.q_stride + p.q_offset, p.heads * p.head_dim);
            a = a * inv * qk_norm[base + dims.x];
            b = b * inv * qk_norm[base + dims.y];
        }
        let r = rotate(a, b, dims, pos);
        let dst = t * p.heads * p.head_dim + base;
        q_out[dst + dims.x] = r.x;
        q_out[dst + dims.y] = r.y;
        return;
    }
    j -= q_items;
    if (j < k_items) {
        let base = (j / half) * p.head_dim;
        let dims = pair_dims(j % half);
        let src = t * p.k_stride + p.k_offset + base;
        var a = k_src[src + dims.x];
        var b = k_src[src + dims.y];
        if (p.norm == 1u) {
            let inv = inv_rms_k(src, p.head_dim);
            a = a * inv * qk_norm[p.head_dim + dims.x];
            b = b * inv * qk_norm[p.head_dim + dims.y];
        } else if (p.norm == 2u) {
            let inv = inv_rms_k(t * p.k_stride + p.k_offset, kvd);
            let qd = p.heads * p.head_dim;
            a = a * inv * qk_norm[qd + base + dims.x];
            b = b * inv * qk_norm[qd + base + dims.y];
        }
        let r = rotate(a, b, dims, pos);
        let dst = row * kvd + base;
        if (dst + p.head_dim <= arrayLength(&k_cache)) {
            k_cache[dst + dims.x] = r.x;
            k_cache[dst + dims.y] = r.y;
        }
        return;
    }
    j -= k_items;
    let dst = row * kvd + j;
    if (dst < arrayLength(&v_cache)) {
        v_cache[dst] = v_src[t * p.v_stride + p.v_offset + j];
    }
}

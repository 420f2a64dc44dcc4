// Decode attention for CPU adapters with subgroups of at least 8 lanes (lavapipe): the same
// pieces as decode_attention.wgsl (read its header for the visible keys, cache rows, RoPE
// inside attention, block-sparse masks, GQA groups and the pieces' layout), shaped for a
// driver that runs a subgroup as the SIMD lanes of one CPU thread and pays for every load as a
// loop over those lanes while arithmetic is nearly free. A workgroup is one subgroup of LANES
// invocations over the head's dims, four per vec4: per key each lane loads its vec4s of K and
// V once for all GROUP query heads, subgroupAdd gives every lane the scores, and the online
// softmax state lives in registers: no workgroup memory, no barriers in the key loop.
// runtime/src/kernels/decode_attention.rs picks this kernel (head dims and RoPE pairs in
// multiples of 4) and its GROUP.


@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> partial: array<f32>; // with one piece: the output
@group(0) @binding(6) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(7) var<storage, read> mask: array<u32>;

#include "decode_keys.wgsl"

const LANES: u32 = 8u;
const CHUNKS: u32 = HEAD_DIM / 4u; // vec4s per head
const PER_LANE: u32 = (CHUNKS + LANES - 1u) / LANES;
const SPLIT_KEYS: u32 = 256u;
// Keys per pass of the inner key loop: llvmpipe ends a loop after 65535 iterations, and an
// inner loop starts its count afresh.
const KEYS_PER_PASS: u32 = 4096u;
const G: u32 = GROUP;

var<workgroup> n_blocks: u32;

// The vec4 of dims 4c..4c+3 rotated by `at` positions, given the vec4 its rotation pairs it
// with (dims +- rot_half) and the four frequencies; dims past the rotated pairs unchanged.
fn rotate(x: vec4<f32>, partner: vec4<f32>, c: u32, freq: vec4<f32>, at: f32) -> vec4<f32> {
    let angle = at * freq;
    if (4u * c < p.rot_half) {
        return x * cos(angle) - partner * sin(angle);
    }
    if (4u * c < 2u * p.rot_half) {
        return x * cos(angle) + partner * sin(angle);
    }
    return x;
}

// Chunk c's rotation partner (ROPE).
fn partner_of(c: u32) -> u32 {
    let half = p.rot_half / 4u;
    if (c < half) {
        return c + half;
    }
    return c - half;
}

// The frequencies of chunk c's dims (ROPE; zero past the rotated pairs).
fn freqs(c: u32) -> vec4<f32> {
    var d = 4u * c;
    if (d >= 2u * p.rot_half) {
        return vec4<f32>(0.0);
    }
    if (d >= p.rot_half) {
        d -= p.rot_half;
    }
    return vec4<f32>(inv_freq[d], inv_freq[d + 1u], inv_freq[d + 2u], inv_freq[d + 3u]);
}

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head0 = wid.x * G; // this workgroup's first query head
    let split = wid.y;
    let query = wid.z;
    let kv_head = head0 / (p.heads / p.kv_heads);
    let keys = visible_keys(head0, query, split, lid);

    // This lane's chunks of the G queries, scaled (and rotated by n - 1).
    var freq: array<vec4<f32>, PER_LANE>;
    var qv: array<vec4<f32>, G * PER_LANE>;
    for (var r = 0u; r < PER_LANE; r++) {
        let c = lid + r * LANES;
        if (c < CHUNKS) {
            if (ROPE) {
                freq[r] = freqs(c);
            }
            for (var g = 0u; g < G; g++) {
                let at = (query * p.heads + head0 + g) * CHUNKS;
                var x = q[at + c] * p.scale;
                if (ROPE) {
                    let partner = q[at + partner_of(c)] * p.scale;
                    x = rotate(x, partner, c, freq[r], f32(keys.n - 1u));
                }
                qv[g * PER_LANE + r] = x;
            }
        }
    }

    var m: array<f32, G>;
    var l: array<f32, G>;
    var acc: array<vec4<f32>, G * PER_LANE>;
    for (var g = 0u; g < G; g++) {
        m[g] = -3.0e38;
        l[g] = 0.0;
    }
    for (var t0 = keys.start; t0 < keys.end; t0 += KEYS_PER_PASS) {
        for (var i = t0; i < min(keys.end, t0 + KEYS_PER_PASS); i++) {
            let j = key_position(keys, i);
            // Masked keys past pos read a row the query sees and weigh 0.
            let base = (kv_row(min(j, keys.pos)) * p.kv_stride + kv_head * HEAD_DIM) / 4u;
            var dots: array<f32, G>;
            for (var r = 0u; r < PER_LANE; r++) {
                let c = lid + r * LANES;
                if (c < CHUNKS) {
                    var k = k_cache[base + c];
                    if (ROPE) {
                        k = rotate(k, k_cache[base + partner_of(c)], c, freq[r], f32(i));
                    }
                    for (var g = 0u; g < G; g++) {
                        dots[g] += dot(qv[g * PER_LANE + r], k);
                    }
                }
            }
            var w: array<f32, G>;
            for (var g = 0u; g < G; g++) {
                var s = subgroupAdd(dots[g]);
                if (p.softcap > 0.0) {
                    s = soft_cap(s);
                }
                s = select(-3.0e38, s, j <= keys.pos);
                if (s > m[g]) {
                    let corr = exp(m[g] - s);
                    l[g] *= corr;
                    for (var r = 0u; r < PER_LANE; r++) {
                        acc[g * PER_LANE + r] *= corr;
                    }
                    m[g] = s;
                }
                w[g] = weight(s, m[g]);
                l[g] += w[g];
            }
            for (var r = 0u; r < PER_LANE; r++) {
                let c = lid + r * LANES;
                if (c < CHUNKS) {
                    let v = v_cache[base + c];
                    for (var g = 0u; g < G; g++) {
                        acc[g * PER_LANE + r] += w[g] * v;
                    }
                }
            }
        }
    }

    // One piece (max_splits 1): the normalised output, [queries, heads, HEAD_DIM]. Else the
    // piece's (max, denominator, unnormalised output); an unused split leaves -3e38 and 0.
    for (var g = 0u; g < G; g++) {
        let head_row = query * p.heads + head0 + g;
        let base = (head_row * p.max_splits + split) * (HEAD_DIM + 2u);
        if (lid == 0u && p.max_splits > 1u) {
            partial[base] = m[g];
            partial[base + 1u] = l[g];
        }
        for (var r = 0u; r < PER_LANE; r++) {
            let c = lid + r * LANES;
            if (c < CHUNKS) {
                let a = acc[g * PER_LANE + r];
                for (var e = 0u; e < 4u; e++) {
                    if (p.max_splits == 1u) {
                        partial[head_row * HEAD_DIM + 4u * c + e] = a[e] / l[g];
                    } else {
                        partial[base + 2u + 4u * c + e] = a[e];
                    }
                }
            }
        }
    }
}

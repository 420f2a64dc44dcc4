// Prefill matmul for CPU adapters with subgroups of at least 8 (lavapipe): Y[m, col_offset + n]
// = sum_k X[m, k] * W[n, k] (+ bias), with W one row chunk of an [N, K] weight, as
// shaders/matmul.wgsl computes it, shaped for a driver that runs a subgroup as SIMD lanes of one
// CPU thread. There every load from memory is a loop over the lanes while arithmetic is one
// vector instruction, so this kernel loads as little as it can and shares values in registers:
//
// * A workgroup owns RB rows of Y (the same for every invocation) and 64 * C columns; each
//   invocation owns C columns (lid, lid + 64, ...) and keeps RB x C sums in registers.
// * K runs in 32-value groups. Each invocation reads its columns' weights for the group once
//   (f32, packed f16 or bf16, or one ggml block group, dequantized in registers with
//   shaders/quant.wgsl) and uses them for all RB rows. K-quants run in pairs of groups that
//   share their quantized words (dequant_pair), read once for both.
// * Per row and group, lane j (0..7) of each subgroup loads values 4j..4j+3 of the group's X
//   slice (one vec4); subgroupBroadcast hands each vec4 to every lane, so X costs one load per
//   lane per 32 values instead of 32.
//
// Edges are masked (any M, N; any K for f32, f16 and bf16, whole blocks for ggml formats).
// X_VEC4: X rows are whole vec4s (K % 4 == 0). W_VEC4: f32, f16 or bf16 weight rows are whole
// vec4s of words (K % 4 == 0, K % 8 == 0), read through w4, an alias of w.
//
// GROUPED (a mixture of experts), as in shaders/matmul.wgsl: rows of Y are assignments sorted
// by expert, in 64-row tiles listed by perm (shaders/moe_permute.wgsl); workgroup y runs part
// y % (64 / RB) of tile y / (64 / RB) with that tile's expert matrix. With GATHER row r of X is
// its token's row, perm[2r].

struct Params { m: u32, n: u32, k: u32, ldy: u32, col_offset: u32, e0: u32, ne: u32, tiles: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if W_TEXTURE
@group(0) @binding(2) var w_tex: texture_2d<u32>;
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(7) var<storage, read> w4: array<vec4<u32>>;
fn w_quad(j: u32) -> vec4<u32> {
    return w4[j];
}
#endif
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> perm: array<u32>;
@group(0) @binding(6) var<storage, read> x4: array<vec4<f32>>;

#include "quant.wgsl"

// Rows of a grouped (mixture of experts) tile, shaders/moe_permute.wgsl's.
const PERM_TILE: u32 = 64u;

// Values 4t..4t+3 of group g of X row xm (zero past K) that lane j of a subgroup loads.
fn x_slice(xm: u32, g: u32, j: u32) -> vec4<f32> {
    let k = 32u * g + 4u * j;
    if (X_VEC4) {
        let v = x4[(xm * p.k + min(k, p.k - 4u)) / 4u];
        return select(vec4<f32>(0.0), v, k < p.k);
    }
    var v = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if (k + c < p.k) {
            v[c] = x[xm * p.k + k + c];
        }
    }
    return v;
}

// Group g of weight row `row` (of the chunk): element t holds values 4t..4t+3 (zero past K).
fn w_group(row: u32, g: u32) -> array<vec4<f32>, 8> {
    if (QFORMAT != 0u) {
        return dequant_group(row * (p.k / QK) + g / QGROUPS, g % QGROUPS);
    }
    var v: array<vec4<f32>, 8>;
    let i0 = row * p.k + 32u * g; // the row's first value of the group, counted in values
    if (W_VEC4) {
        if (W_HALF) { // 8 halves per vec4 of words
            for (var t = 0u; t < 4u; t++) {
                let inside = 32u * g + 8u * t < p.k;
                let q = select(vec4<u32>(0u), w_quad(i0 / 8u + select(0u, t, inside)), inside);
                v[2u * t] = vec4<f32>(halves(q.x), halves(q.y));
                v[2u * t + 1u] = vec4<f32>(halves(q.z), halves(q.w));
            }
        } else {
            for (var t = 0u; t < 8u; t++) {
                let inside = 32u * g + 4u * t < p.k;
                let q = select(vec4<u32>(0u), w_quad(i0 / 4u + select(0u, t, inside)), inside);
                v[t] = bitcast<vec4<f32>>(q);
            }
        }
        return v;
    }
    for (var t = 0u; t < 8u; t++) {
        for (var c = 0u; c < 4u; c++) {
            let i = i0 + 4u * t + c;
            if (32u * g + 4u * t + c < p.k) {
                v[t][c] = weight_at(i);
            }
        }
    }
    return v;
}

// Elements o..o+7 of a pair's 16.
fn half8(v: array<vec4<f32>, 16>, o: u32) -> array<vec4<f32>, 8> {
    var h: array<vec4<f32>, 8>;
    for (var t = 0u; t < 8u; t++) {
        h[t] = v[o + t];
    }
    return h;
}

// The dot products of one row's group (xl: this lane's slice) with up to four columns' groups.
fn row_dot(xl: vec4<f32>, v0: array<vec4<f32>, 8>, v1: array<vec4<f32>, 8>,
           v2: array<vec4<f32>, 8>, v3: array<vec4<f32>, 8>) -> vec4<f32> {
    // Broadcast indices must be constants: one line per lane.
    var s = col_dots(subgroupBroadcast(xl, 0u), v0[0], v1[0], v2[0], v3[0]);
    s += col_dots(subgroupBroadcast(xl, 1u), v0[1], v1[1], v2[1], v3[1]);
    s += col_dots(subgroupBroadcast(xl, 2u), v0[2], v1[2], v2[2], v3[2]);
    s += col_dots(subgroupBroadcast(xl, 3u), v0[3], v1[3], v2[3], v3[3]);
    s += col_dots(subgroupBroadcast(xl, 4u), v0[4], v1[4], v2[4], v3[4]);
    s += col_dots(subgroupBroadcast(xl, 5u), v0[5], v1[5], v2[5], v3[5]);
    s += col_dots(subgroupBroadcast(xl, 6u), v0[6], v1[6], v2[6], v3[6]);
    s += col_dots(subgroupBroadcast(xl, 7u), v0[7], v1[7], v2[7], v3[7]);
    return s;
}

// dot(b, a_c) for the C columns in use (the others stay 0).
fn col_dots(b: vec4<f32>, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>) -> vec4<f32> {
    var s = vec4<f32>(dot(b, a0), 0.0, 0.0, 0.0);
    if (C > 1u) {
        s.y = dot(b, a1);
    }
    if (C > 2u) {
        s.z = dot(b, a2);
    }
    if (C > 3u) {
        s.w = dot(b, a3);
    }
    return s;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    let n0 = wid.x * 64u * C + lid;
    var m0 = wid.y * RB;
    var m_end = p.m;
    var w_row0 = 0u; // the chunk row where this workgroup's expert starts
    if (GROUPED) {
        let parts = PERM_TILE / RB;
        let tile = wid.y / parts;
        if (tile >= perm[p.tiles]) {
            return;
        }
        let first = perm[p.tiles + 1u + 2u * tile];
        let e = perm[2u * first + 1u];
        if (e < p.e0 || e >= p.e0 + p.ne) {
            return;
        }
        m0 = first + (wid.y % parts) * RB;
        m_end = min(first + perm[p.tiles + 2u + 2u * tile], m0 + RB);
        if (m0 >= m_end) {
            return;
        }
        w_row0 = (e - p.e0) * p.n;
    }
    // X rows of this workgroup's Y rows (rows past the end repeat the last; never stored).
    var xm: array<u32, RB>;
    for (var r = 0u; r < RB; r++) {
        xm[r] = min(m0 + r, m_end - 1u);
        if (GROUPED && GATHER) {
            xm[r] = perm[2u * xm[r]];
        }
    }
    // Weight rows of this invocation's columns (columns past N repeat the last; never stored).
    var wr: array<u32, 4>;
    for (var c = 0u; c < 4u; c++) {
        wr[c] = w_row0 + min(n0 + 64u * c, p.n - 1u);
    }
    let j = lane % 8u;
    var acc: array<vec4<f32>, RB>;
    if (QK == 256u) {
        // K-quants: step s is pair s % 4 of superblock s / 4 (groups gs.x and gs.y).
        let row_words = p.k / QK * QWORDS;
        var v1: array<vec4<f32>, 16>;
        var v2: array<vec4<f32>, 16>;
        var v3: array<vec4<f32>, 16>;
        for (var s = 0u; s < p.k / 64u; s++) {
            let sb = s / 4u;
            let gs = 8u * sb + qk_pair(s % 4u);
            let b = sb * QWORDS;
            let v0 = dequant_pair(wr[0] * row_words + b, s % 4u);
            if (C > 1u) {
                v1 = dequant_pair(wr[1] * row_words + b, s % 4u);
            }
            if (C > 2u) {
                v2 = dequant_pair(wr[2] * row_words + b, s % 4u);
            }
            if (C > 3u) {
                v3 = dequant_pair(wr[3] * row_words + b, s % 4u);
            }
            for (var r = 0u; r < RB; r++) {
                let x0 = x_slice(xm[r], gs.x, j);
                let x1 = x_slice(xm[r], gs.y, j);
                acc[r] += row_dot(x0, half8(v0, 0u), half8(v1, 0u), half8(v2, 0u), half8(v3, 0u));
                acc[r] += row_dot(x1, half8(v0, 8u), half8(v1, 8u), half8(v2, 8u), half8(v3, 8u));
            }
        }
    } else {
        var v1: array<vec4<f32>, 8>;
        var v2: array<vec4<f32>, 8>;
        var v3: array<vec4<f32>, 8>;
        for (var g = 0u; g < (p.k + 31u) / 32u; g++) {
            let v0 = w_group(wr[0], g);
            if (C > 1u) {
                v1 = w_group(wr[1], g);
            }
            if (C > 2u) {
                v2 = w_group(wr[2], g);
            }
            if (C > 3u) {
                v3 = w_group(wr[3], g);
            }
            for (var r = 0u; r < RB; r++) {
                acc[r] += row_dot(x_slice(xm[r], g, j), v0, v1, v2, v3);
            }
        }
    }
    for (var c = 0u; c < C; c++) {
        let n = n0 + 64u * c;
        if (n < p.n) {
            var b = 0.0;
            if (HAS_BIAS) {
                b = bias[p.col_offset + n];
            }
            for (var r = 0u; r < RB; r++) {
                if (m0 + r < m_end) {
                    y[(m0 + r) * p.ldy + p.col_offset + n] = acc[r][c] + b;
                }
            }
        }
    }
}

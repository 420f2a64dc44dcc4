// Matrix-vector product for decode: y[col_offset + r] = dot(x, w[r, :]) + bias[col_offset + r]
// for the rows r of one weight chunk. Weights are f32, packed f16 or bf16 (W_HALF), or ggml
// blocks (QFORMAT != 0, multiplied in place by shaders/quant.wgsl's group_dot and pair_dot;
// the tiled formats' quants loaded as vec4s through w4); bias optional (HAS_BIAS).
//
// Layout: a workgroup of 64 invocations is 64 / LANES row groups. The LANES lanes of a row
// group read interleaved pieces of its rows: vec4s, 32-value groups, or for the K-quants
// pairs of groups that share their quantized words. Each lane handles ROWS_PER_LANE rows, so
// every value of x it loads serves that many rows. One barrier, then one invocation per row
// sums its lanes through workgroup memory (partial); or with SUBGROUP, a butterfly of
// subgroupShuffleXor over the row group's lanes gives each lane the sums, with no workgroup
// memory and no barrier. The launcher picks the layout (matvec::Layout): many rows per lane
// on CPU drivers, which pay per value loaded, many lanes per row on GPUs, which want many
// workgroups, and the subgroup reduction where every subgroup holds whole row groups. With
// VEC4 (K a multiple of 4, of 8 for 16-bit floats; always when quantized) x and w are also
// read as vec4s through x4 and w4, bound to the same buffers as x and w.
//
// SUBGROUP: Vulkan ties subgroup invocation ids to no local invocation index, so the
// invocation's place in the workgroup (lid below) is subgroup_id * subgroup_size +
// subgroup_invocation_id: a row group is then LANES consecutive invocations of one subgroup
// whenever LANES divides the subgroup size (powers of two; the launcher asks for LANES <= the
// adapter's smallest subgroup size) and the subgroups are full (the largest subgroup size <=
// 64, so every size divides the workgroup's 64 invocations).
//
// GROUPED (a mixture of experts at decode): one matvec per sorted row r = workgroup z of
// perm (shaders/moe_permute.wgsl), with the matrix of that row's expert out of a chunk of
// stacked [N, K] expert matrices (experts e0 .. e0 + ne), x the row's token (GATHER) or row r
// of x, and the result row r of y [R, N]. Only the chosen experts' weights are read.
//
// Fusions (decode's Linear op, kernels/linear.rs; never with GROUPED). Prologues, on x:
//   NORM: RMSNorm of x, without a pass of its own: the product runs on x times the norm
//     weight (aux, nw4), while the lanes of the first row group, which load all of x between
//     them, also sum x² (with SUBGROUP, every row group's lanes, for that row group); the
//     epilogue scales each row's sum by inverseSqrt(mean + eps), the same for every row
//     (W (x w / rms) = (W (x w)) / rms), so no barrier is added.
//   MERGE: x is split-K decode attention's partial results ([heads, splits, head_dim + 2],
//     shaders/decode_attention.wgsl): every workgroup first merges them into workgroup
//     memory by the online-softmax rule of shaders/decode_attention_merge.wgsl (one barrier).
// Epilogues, on the row sums: ACCUM: y[row] += sum (the residual add, in place). GLU: rows
//   come in interleaved pairs (gate row i, up row i) and y[i] = silu(gate) * up, or with
//   GELU_TANH gelu_tanh(gate) * up (Gemma's GeGLU).

struct Params { k: u32, n: u32, col_offset: u32, e0: u32, ne: u32, eps: f32, head_dim: u32,
                splits: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if W_TEXTURE
@group(0) @binding(2) var w_tex: texture_2d<u32>;
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn w_quad(j: u32) -> vec4<u32> {
    return w4[j];
}
#endif
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> w4: array<vec4<u32>>;
// GROUPED: the permutation of rows by expert; NORM: the norm weight (f32 bits), also as
// vec4s through nw4 with VEC4.
@group(0) @binding(7) var<storage, read> aux: array<u32>;
@group(0) @binding(8) var<storage, read> nw4: array<vec4<f32>>;

#include "quant.wgsl"
#include "matvec_store.wgsl"

const R: u32 = ROWS_PER_LANE;
const ROWS: u32 = 64u / LANES * R; // rows per workgroup

#if SUBGROUP
// The sum of v over the LANES lanes of this invocation's row group, in every lane (the xor
// partners of a lane lie in its row group: lanes are aligned runs of LANES subgroup ids).
fn lanes_sum(v: f32) -> f32 {
    var s = v;
    for (var m = LANES / 2u; m > 0u; m /= 2u) {
        s += subgroupShuffleXor(s, m);
    }
    return s;
}
#endif
#if WORKGROUP_SUMS
// NORM: each lane's sum of x² in the first row group.
var<workgroup> squares: array<f32, LANES>;
#endif
#if GROUPED
// GROUPED: the x offset, the chunk row where the expert starts, the y offset, 1 to skip.
var<workgroup> group_info: vec4<u32>;
#endif

// Where x starts (floats, and vec4s), and NORM's sum of the squares this lane loaded.
var<private> xo: u32;
var<private> xo4: u32;
var<private> square_sum: f32;

// MERGE: the head whose max over its pieces and softmax denominator (merge_info) this
// invocation found last, found again only when its head changes. Unused pieces (max -3e38,
// denominator 0 and output 0: shaders/decode_attention.wgsl) add exactly 0.
var<private> merge_head: u32;
var<private> merge_info: vec2<f32>;
#if MERGE
// MERGE: x as the product sees it (K <= MERGE_K), merged once per workgroup. Merging as
// values are loaded would put the pieces loop inside the loads, which keeps the loads'
// arrays in memory and makes lavapipe allocate (and not free) scratch on every dispatch.
var<workgroup> merged_x: array<f32, MERGE_K>;
#endif

// The merged attention output at x index i (MERGE's first step).
fn merged(i: u32) -> f32 {
    let h = i / p.head_dim;
    let stride = p.head_dim + 2u;
    let first = h * p.splits * stride;
    if (h != merge_head) {
        var big = -3.0e38;
        for (var s = 0u; s < p.splits; s++) {
            big = max(big, x[first + s * stride]);
        }
        var denom = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            denom += exp(x[first + s * stride] - big) * x[first + s * stride + 1u];
        }
        merge_head = h;
        merge_info = vec2<f32>(big, denom);
    }
    var a = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let base = first + s * stride;
        a += exp(x[base] - merge_info.x) * x[base + 2u + i % p.head_dim];
    }
    return a / merge_info.y;
}

// x at index i of the row, after the prologue.
fn x_at(i: u32) -> f32 {
#if MERGE
    return merged_x[i];
#endif
    if (NORM) {
        let v = x[xo + i];
        square_sum += v * v;
        return v * bitcast<f32>(aux[i]);
    }
    return x[xo + i];
}

// x at vec4 index j of the row, after the prologue.
fn x4_at(j: u32) -> vec4<f32> {
    let i = 4u * j;
#if MERGE
    return vec4<f32>(merged_x[i], merged_x[i + 1u], merged_x[i + 2u], merged_x[i + 3u]);
#endif
    if (NORM) {
        let v = x4[xo4 + j];
        square_sum += dot(v, v);
        return v * nw4[j];
    }
    return x4[xo4 + j];
}

@compute @workgroup_size(64)
#if SUBGROUP
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_size) sg_size: u32,
        @builtin(subgroup_invocation_id) sg_lane: u32) {
    let lid = sg * sg_size + sg_lane;
#else
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
#endif
    let lane = lid % LANES;
    xo = 0u;
    var wr = 0u; // chunk row of the matrix's first row
    var yo = p.col_offset;
#if GROUPED
    {
        if (lid == 0u) {
            let r = wid.z;
            let e = aux[2u * r + 1u];
            var xr = r;
            if (GATHER) {
                xr = aux[2u * r];
            }
            group_info = vec4<u32>(xr * p.k, (e - p.e0) * p.n, r * p.n,
                                   select(1u, 0u, e >= p.e0 && e < p.e0 + p.ne));
        }
        let info = workgroupUniformLoad(&group_info);
        if (info.w != 0u) {
            return;
        }
        xo = info.x;
        wr = info.y;
        yo = info.z;
    }
#endif
    xo4 = xo / 4u;
#if MERGE
    merge_head = 0xffffffffu;
    for (var i = lid; i < p.k; i += 64u) {
        merged_x[i] = merged(i);
    }
    workgroupBarrier();
#endif
    let first = group_index(wid, nwg) * ROWS;
    let row0 = first + (lid / LANES) * R;
    let wrow0 = wr + row0; // the chunk row of row0
    // Rows of this row group inside the chunk (0..R).
    let nr = min(p.n, row0 + R) - min(p.n, row0);
    var acc: array<f32, R>;
    for (var r = 0u; r < R; r++) {
        acc[r] = 0.0;
    }
    if (QFORMAT != 0u && QK == 256u) {
        // K-quants: each lane takes pairs of 32-value groups that share their quantized words
        // (every LANES-th pair of the row), read once by pair_dot.
        let row_words = p.k / QK * QWORDS;
        for (var pi = lane; pi < p.k / 64u; pi += LANES) {
            let sb = pi / 4u;
            let gs = qk_pair(pi % 4u);
            var xa: array<vec4<f32>, 8>;
            var xb: array<vec4<f32>, 8>;
            var sa = vec2<f32>(0.0);
            var sbs = vec2<f32>(0.0);
            for (var t = 0u; t < 8u; t++) {
                let va = x4_at(64u * sb + 8u * gs.x + t);
                let vb = x4_at(64u * sb + 8u * gs.y + t);
                xa[t] = va * x_scale();
                xb[t] = vb * x_scale();
                let which_half = select(vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 0.0), t < 4u);
                sa += which_half * dot(va, vec4<f32>(1.0));
                sbs += which_half * dot(vb, vec4<f32>(1.0));
            }
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    let b = (wrow0 + r) * row_words + sb * QWORDS;
                    acc[r] += pair_dot(b, pi % 4u, xa, xb, sa, sbs);
                }
            }
        }
    } else if (QFORMAT != 0u) {
        // Each lane takes whole 32-value blocks: every LANES-th block of the row.
        let row_blocks = p.k / 32u;
        for (var gi = lane; gi < p.k / 32u; gi += LANES) {
            var xs: array<vec4<f32>, 8>;
            var x_sum = 0.0;
            for (var t = 0u; t < 8u; t++) {
                let v = x4_at(8u * gi + t);
                xs[t] = v * x_scale();
                x_sum += dot(v, vec4<f32>(1.0));
            }
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    // The block's quants as one vec4 (Q8_0: two).
                    let blk = (wrow0 + r) * row_blocks + gi;
                    let at = q_at(blk) / 4u;
                    var qb = vec4<u32>(0u);
                    if (QFORMAT == Q8_0) {
                        qb = w_quad(at + 1u);
                    }
                    acc[r] += group_dot(blk, w_quad(at), qb, xs, x_sum);
                }
            }
        }
    } else if (VEC4 && W_HALF) {
        // A vec4 of words holds 8 halves; rows start on a vec4 boundary as K % 8 == 0.
        let q = p.k / 8u;
        for (var j = lane; j < q; j += LANES) {
            let xa = x4_at(2u * j);
            let xb = x4_at(2u * j + 1u);
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    let v = w_quad((wrow0 + r) * q + j);
                    let lo = vec4<f32>(halves(v.x), halves(v.y));
                    let hi = vec4<f32>(halves(v.z), halves(v.w));
                    acc[r] += dot(lo, xa) + dot(hi, xb);
                }
            }
        }
    } else if (VEC4) {
        let q = p.k / 4u;
        for (var j = lane; j < q; j += LANES) {
            let xv = x4_at(j);
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    acc[r] += dot(bitcast<vec4<f32>>(w_quad((wrow0 + r) * q + j)), xv);
                }
            }
        }
    } else {
        // Any K: one value at a time (16-bit halves may straddle rows when K is odd).
        for (var i = lane; i < p.k; i += LANES) {
            let xv = x_at(i);
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    acc[r] += weight_at((wrow0 + r) * p.k + i) * xv;
                }
            }
        }
    }
#if SUBGROUP
    // NORM: every row group's lanes load all of x between them, so each row group finds the
    // inverse RMS itself.
    var inv = 1.0;
    if (NORM) {
        inv = inverseSqrt(lanes_sum(square_sum) / f32(p.k) + p.eps);
    }
    // Every lane sums every row (the shuffles need all lanes); lane r stores row r, or with
    // GLU lane i the pair of rows 2i, 2i + 1 (R is even then: no pair straddles row groups).
    if (GLU) {
        for (var r = 0u; r < R; r += 2u) {
            let gate = lanes_sum(acc[r]);
            let up = lanes_sum(acc[r + 1u]);
            if (lane == r / 2u && r < nr) {
                store_pair(yo, row0 + r, gate, up, inv);
            }
        }
        return;
    }
    for (var r = 0u; r < R; r++) {
        let sum = lanes_sum(acc[r]);
        if (lane == r && r < nr) {
            store_row(yo, row0 + r, sum, inv);
        }
    }
#else
#if WORKGROUP_SUMS
    put_partials(lid, acc);
    if (NORM && lid < LANES) {
        squares[lane] = square_sum;
    }
    workgroupBarrier();
    // NORM: the inverse RMS of x, by which every row's sum is scaled.
    var inv = 1.0;
    if (NORM) {
        var total = 0.0;
        for (var l = 0u; l < LANES; l++) {
            total += squares[l];
        }
        inv = inverseSqrt(total / f32(p.k) + p.eps);
    }
    store_partials(lid, first, yo, inv);
#else
    // One lane per row: its sums are the rows', and it loaded all of x (NORM's sum of
    // squares). No workgroup memory, so no barrier (and none where a browser would
    // zero-initialise it).
    var inv = 1.0;
    if (NORM) {
        inv = inverseSqrt(square_sum / f32(p.k) + p.eps);
    }
    // GLU: rows in (gate, up) pairs (R is even: no pair straddles invocations).
    for (var r = 0u; r < nr; r += select(1u, 2u, GLU)) {
        if (GLU) {
            store_pair(yo, row0 + r, acc[r], acc[r + 1u], inv);
        } else {
            store_row(yo, row0 + r, acc[r], inv);
        }
    }
#endif
#endif
}

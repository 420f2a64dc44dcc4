// Matrix-vector product for decode: y[col_offset + r] = dot(x, w[r, :]) + bias[col_offset + r]
// for the rows r of one weight chunk. Weights are f32, packed f16 (W_F16), or ggml blocks
// (QFORMAT != 0, dequantized in registers by shaders/quant.wgsl); bias optional (HAS_BIAS).
//
// Layout: a workgroup of 64 invocations is 64 / LANES row groups. The LANES lanes of a row
// group read interleaved pieces of its rows: vec4s, 32-value groups, or for the K-quants
// pairs of groups that share their quantized words. Each lane handles ROWS_PER_LANE rows, so
// every value of x it loads serves that many rows. One barrier, then one invocation per row
// sums its lanes. The launcher picks the layout (matvec::Layout): many rows per lane on CPU
// drivers, which pay per value loaded, many lanes per row on GPUs, which want many
// workgroups. With VEC4 (K a multiple of 4, of 8 for f16; always when quantized) x and w are
// also read as vec4s through x4 and w4, bound to the same buffers as x and w.
//
// GROUPED (a mixture of experts at decode): one matvec per sorted row r = workgroup z of
// perm (shaders/moe_permute.wgsl), with the matrix of that row's expert out of a chunk of
// stacked [N, K] expert matrices (experts e0 .. e0 + ne), x the row's token (GATHER) or row r
// of x, and the result row r of y [R, N]. Only the chosen experts' weights are read.

struct Params { k: u32, n: u32, col_offset: u32, e0: u32, ne: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> w4: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> perm: array<u32>;

#include "quant.wgsl"

const R: u32 = ROWS_PER_LANE;
const ROWS: u32 = 64u / LANES * R; // rows per workgroup

var<workgroup> partial: array<f32, ROWS * LANES>;
// GROUPED: the x offset, the chunk row where the expert starts, the y offset, 1 to skip.
var<workgroup> group_info: vec4<u32>;

fn load_w(i: u32) -> f32 {
    if (W_F16) {
        return half_of(w[i >> 1u], i);
    }
    return bitcast<f32>(w[i]);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % LANES;
    var xo = 0u; // offset of x in floats
    var wr = 0u; // chunk row of the matrix's first row
    var yo = p.col_offset;
    if (GROUPED) {
        if (lid == 0u) {
            let r = wid.z;
            let e = perm[2u * r + 1u];
            var xr = r;
            if (GATHER) {
                xr = perm[2u * r];
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
    let xo4 = xo / 4u;
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
        // (every LANES-th pair of the row), read once by dequant_pair.
        let row_words = p.k / QK * QWORDS;
        for (var pi = lane; pi < p.k / 64u; pi += LANES) {
            let sb = pi / 4u;
            let gs = qk_pair(pi % 4u);
            var xa: array<vec4<f32>, 8>;
            var xb: array<vec4<f32>, 8>;
            for (var t = 0u; t < 8u; t++) {
                xa[t] = x4[xo4 + 64u * sb + 8u * gs.x + t];
                xb[t] = x4[xo4 + 64u * sb + 8u * gs.y + t];
            }
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    let v = dequant_pair((wrow0 + r) * row_words + sb * QWORDS, pi % 4u);
                    var s = 0.0;
                    for (var t = 0u; t < 8u; t++) {
                        s += dot(v[t], xa[t]) + dot(v[t + 8u], xb[t]);
                    }
                    acc[r] += s;
                }
            }
        }
    } else if (QFORMAT != 0u) {
        // Each lane takes whole 32-value groups: every LANES-th group of the row.
        let row_words = p.k / QK * QWORDS;
        for (var gi = lane; gi < p.k / 32u; gi += LANES) {
            var xs: array<vec4<f32>, 8>;
            for (var t = 0u; t < 8u; t++) {
                xs[t] = x4[xo4 + 8u * gi + t];
            }
            let blk = gi / QGROUPS * QWORDS;
            let g = gi % QGROUPS;
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    let v = dequant_group((wrow0 + r) * row_words + blk, g);
                    var s = 0.0;
                    for (var t = 0u; t < 8u; t++) {
                        s += dot(v[t], xs[t]);
                    }
                    acc[r] += s;
                }
            }
        }
    } else if (VEC4 && W_F16) {
        // A vec4 of words holds 8 halves; rows start on a vec4 boundary as K % 8 == 0.
        let q = p.k / 8u;
        for (var j = lane; j < q; j += LANES) {
            let xa = x4[xo4 + 2u * j];
            let xb = x4[xo4 + 2u * j + 1u];
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    let v = w4[(wrow0 + r) * q + j];
                    let lo = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
                    let hi = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
                    acc[r] += dot(lo, xa) + dot(hi, xb);
                }
            }
        }
    } else if (VEC4) {
        let q = p.k / 4u;
        for (var j = lane; j < q; j += LANES) {
            let xv = x4[xo4 + j];
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    acc[r] += dot(bitcast<vec4<f32>>(w4[(wrow0 + r) * q + j]), xv);
                }
            }
        }
    } else {
        // Any K: one value at a time (f16 halves may straddle rows when K is odd).
        for (var i = lane; i < p.k; i += LANES) {
            let xv = x[xo + i];
            for (var r = 0u; r < R; r++) {
                if (r < nr) {
                    acc[r] += load_w((wrow0 + r) * p.k + i) * xv;
                }
            }
        }
    }
    for (var r = 0u; r < R; r++) {
        partial[((lid / LANES) * R + r) * LANES + lane] = acc[r];
    }
    workgroupBarrier();
    let row = first + lid;
    if (lid < ROWS && row < p.n) {
        var out = 0.0;
        for (var l = 0u; l < LANES; l++) {
            out += partial[lid * LANES + l];
        }
        if (HAS_BIAS) {
            out += bias[p.col_offset + row];
        }
        y[yo + row] = out;
    }
}

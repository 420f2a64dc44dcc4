// The f16 decode matvec (`--matvec-precision f16`, adapters with shader-f16 only):
// y[col_offset + r] = dot(x, w[r, :]) for the rows r of one weight chunk of f16 weights or of
// a 32-value ggml format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), with this arithmetic:
//   * x is rounded to f16 once per value as it is loaded (NORM: x * nw * inverse RMS, formed in
//     f32, then rounded);
//   * each weight value is rounded to f16: f16 weights are exact; a ggml block is first
//     dequantized as the f32 matvec does (shaders/quant.wgsl's dequant_group: a scale times a
//     small integer plus an offset, one f32 rounding at most), then rounded;
//   * each product x * w is an f16 multiplication (rounded to f16);
//   * the 32 products of a block are summed in f32 (each widened exactly), and the blocks'
//     sums too, as the f32 matvec: each lane its blocks, then one invocation per row its lanes.
// So only x, the weights and the products are f16; every sum is f32. A product beyond f16's
// range (65504) is infinite: f16 suits activations of moderate size (RMSNorm's outputs).
//
// Layout as shaders/matvec.wgsl: 64 / LANES row groups of LANES lanes, ROWS_PER_LANE rows a
// lane, each lane taking every LANES-th 32-value block of the row, the lanes summed through
// workgroup memory. Epilogues as there (shaders/matvec_store.wgsl): HAS_BIAS, ACCUM (y +=
// sum) and GLU (interleaved gate/up row pairs). NORM (RMSNorm of x with weight nw): every
// workgroup first sums x² over all of x (one barrier), so x is normalised before it is
// rounded to f16 and the rows need no scaling afterwards.

enable f16;

struct Params { k: u32, n: u32, col_offset: u32, eps: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if W_TEXTURE
@group(0) @binding(2) var w_tex: texture_2d<u32>;
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
#endif
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
// NORM: the norm weight [K].
@group(0) @binding(5) var<storage, read> nw: array<f32>;

#include "quant.wgsl"
#include "matvec_store.wgsl"

const R: u32 = ROWS_PER_LANE;
const ROWS: u32 = 64u / LANES * R; // rows per workgroup

#if NORM
// Each invocation's sum of x² over the values it read.
var<workgroup> squares: array<f32, 64>;
#endif

// Values 4t..4t+3 of x's block gi in f16 (NORM: times nw and the inverse RMS `inv` first).
fn x16(gi: u32, t: u32, inv: f32) -> vec4<f16> {
    let i = 32u * gi + 4u * t;
    var v = vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
    if (NORM) {
        v = v * vec4<f32>(nw[i], nw[i + 1u], nw[i + 2u], nw[i + 3u]) * inv;
    }
    return vec4<f16>(v);
}

// The 32 values of block gi of chunk row `row` in f16 (element t: values 4t..4t+3).
fn w16(row: u32, gi: u32) -> array<vec4<f16>, 8> {
    var v: array<vec4<f16>, 8>;
    if (QFORMAT != 0u) {
        let f = dequant_group(row * (p.k / 32u) + gi, 0u);
        for (var t = 0u; t < 8u; t++) {
            v[t] = vec4<f16>(f[t]);
        }
        return v;
    }
    // f16 weights, two per word: rows are whole blocks (K % 32 == 0), 16 words each.
    let base = (row * p.k + 32u * gi) / 2u;
    for (var t = 0u; t < 8u; t++) {
        let lo = unpack2x16float(w_word(base + 2u * t));
        let hi = unpack2x16float(w_word(base + 2u * t + 1u));
        v[t] = vec4<f16>(vec4<f32>(lo, hi));
    }
    return v;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    var inv = 1.0;
#if NORM
    var sq = 0.0;
    for (var i = lid; i < p.k; i += 64u) {
        sq += x[i] * x[i];
    }
    squares[lid] = sq;
    workgroupBarrier();
    var total = 0.0;
    for (var l = 0u; l < 64u; l++) {
        total += squares[l];
    }
    inv = inverseSqrt(total / f32(p.k) + p.eps);
#endif
    let lane = lid % LANES;
    let first = group_index(wid, nwg) * ROWS;
    let row0 = first + (lid / LANES) * R;
    // Rows of this row group inside the chunk (0..R).
    let nr = min(p.n, row0 + R) - min(p.n, row0);
    var acc: array<f32, R>;
    for (var r = 0u; r < R; r++) {
        acc[r] = 0.0;
    }
    for (var gi = lane; gi < p.k / 32u; gi += LANES) {
        var xs: array<vec4<f16>, 8>;
        for (var t = 0u; t < 8u; t++) {
            xs[t] = x16(gi, t, inv);
        }
        for (var r = 0u; r < R; r++) {
            if (r < nr) {
                let wv = w16(row0 + r, gi);
                var s = vec4<f32>(0.0);
                for (var t = 0u; t < 8u; t++) {
                    s += vec4<f32>(xs[t] * wv[t]);
                }
                acc[r] += (s.x + s.y) + (s.z + s.w);
            }
        }
    }
    put_partials(lid, acc);
    workgroupBarrier();
    store_partials(lid, first, p.col_offset, 1.0);
}

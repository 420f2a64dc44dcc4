// Register-blocked tiled matmul for prefill: Y[m, col_offset + n] = sum_k X[m, k] * W[n, k]
// (+ bias), with W one row chunk of an [N, K] weight (the layout of Hugging Face Linear).
// Included by shaders/matmul.wgsl and shaders/matmul_f16.wgsl, which set tile_t, the type of
// the tiles in workgroup memory and of the products: f32, or f16 (sums stay f32 either way).
//
// A TM x 64 output tile per workgroup of 64 invocations (8x8), each computing TM/8 rows x 8
// columns, K in steps of TK = 32 through workgroup memory (both tiles k-major). TM (8, 16, 32
// or 64, a constant of the specialisation) follows the number of rows, so that a short prompt
// does not pay for 64. An invocation reads its 8 columns of a step as two vec4s, and its rows
// as vec4s too where it has 4 or 8 (A_VEC4, TM >= 32; TM = 64: 4 loads per 64 multiply-adds),
// else one value at a time. Edges are masked, so any M, N, K works. Weights are f32, packed
// f16 or bf16 (W_HALF) or ggml blocks (QFORMAT != 0: a K step is one 32-value group, and each
// invocation dequantizes one weight row's group with shaders/quant.wgsl, once per tile; K is
// then a multiple of 32).
//
// Loads: with X_VEC4 (K % 4 == 0) X is read through x4 as vec4s, 8 neighbouring invocations
// reading one row's 32 values of a step (TM / 8 passes of 8 rows); with W_VEC4 the same for
// f32 (K % 4 == 0) or packed 16-bit (K % 8 == 0, 8 values per vec4 of words) weights through
// w4. Otherwise one value at a time, each invocation walking one row (of X: those below TM).
//
// GROUPED (a mixture of experts): W is a chunk of stacked [N, K] expert matrices (experts
// e0 .. e0 + ne) and the rows of Y are assignments sorted by expert (shaders/moe_permute.wgsl):
// workgroup y takes tile y of perm's tile list, i.e. rows of one expert, and multiplies them by
// that expert's matrix only (TM is 64, the rows of perm's tiles). With GATHER row r of X is its
// token's row, perm[2r]; else row r.

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

// Columns of Y per workgroup, and K per step.
const TN: u32 = 64u;
const TK: u32 = 32u;
// Rows of Y per invocation, and vec4s per step of a_tile.
const RPI: u32 = TM / 8u;
const TM4: u32 = TM / 4u;

// a_tile [TK][TM] and b_tile [TK][TN] as vec4s: element kk * TM4 + c of a_tile (kk * 16 + c
// of b_tile) holds rows (columns) 4c..4c+3 at step kk.
var<workgroup> a_tile: array<vec4<tile_t>, TK * TM4>;
var<workgroup> b_tile: array<vec4<tile_t>, TK * TN / 4u>;

// Tile row r (0..TM-1) of step kk.
fn put_a(kk: u32, r: u32, v: f32) {
    a_tile[kk * TM4 + r / 4u][r % 4u] = tile_t(v);
}
// Tile column r (0..63) of step kk.
fn put_b(kk: u32, r: u32, v: f32) {
    b_tile[kk * 16u + r / 4u][r % 4u] = tile_t(v);
}

// Y[gm, gn .. gn + 3] = v (+ bias), masked at the edges.
fn store4(gm: u32, gn: u32, v: vec4<f32>, m_end: u32) {
    if (gm >= m_end) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (gn + j < p.n) {
            var o = v[j];
            if (HAS_BIAS) {
                o += bias[p.col_offset + gn + j];
            }
            y[gm * p.ldy + p.col_offset + gn + j] = o;
        }
    }
}

// The X row of Y row `row` (GATHER: its token's).
fn x_row(row: u32) -> u32 {
    if (GROUPED && GATHER) {
        return perm[2u * row];
    }
    return row;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % 8u;
    let ty = lid / 8u;
    let n0 = wid.x * TN;
    var m0 = wid.y * TM;
    var m_end = p.m;
    var w_row0 = 0u; // the chunk row where this workgroup's expert starts
    if (GROUPED) {
        // The workgroup's first row, end row, expert within the chunk, and 1 to skip (each
        // wrapper shares invocation 0's with share_info).
        var info = vec4<u32>(0u, 0u, 0u, 1u);
        if (lid == 0u && wid.y < perm[p.tiles]) {
            let first = perm[p.tiles + 1u + 2u * wid.y];
            let e = perm[2u * first + 1u];
            if (e >= p.e0 && e < p.e0 + p.ne) {
                info = vec4<u32>(first, first + perm[p.tiles + 2u + 2u * wid.y], e - p.e0, 0u);
            }
        }
        info = share_info(lid, info);
        if (info.w != 0u) {
            return;
        }
        m0 = info.x;
        m_end = info.y;
        w_row0 = info.z * p.n;
    }
    let row_blocks = p.k / QK;
    // Scalar loads: this invocation walks row lid of both tiles (of a_tile: if lid < TM).
    let am = m0 + lid;
    let bn = n0 + lid;
    var xm = 0u;
    if (am < m_end) {
        xm = x_row(am);
    }
    // Vector loads: this invocation reads vec4 lid % 8 of tile rows lid / 8 + 8t, t < TM / 8
    // (X_VEC4; their X rows, or 0xffffffff past the end) and 8-value piece lid % 4 of weight
    // rows lid / 4 + 16t (W_VEC4 with 16-bit weights) or vec4 lid % 8 of rows lid / 8 + 8t
    // (f32).
    var xrows: array<u32, RPI>;
    if (X_VEC4) {
        for (var t = 0u; t < RPI; t++) {
            let r = m0 + lid / 8u + 8u * t;
            xrows[t] = select(0xffffffffu, x_row(min(r, m_end - 1u)), r < m_end);
        }
    }
    // acc[2i + h]: output row ty * RPI + i, columns tx * 8 + 4h .. +3.
    var acc: array<vec4<f32>, 2u * RPI>;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        if (X_VEC4) {
            let c = lid % 8u;
            let gk = k0 + 4u * c;
            for (var t = 0u; t < RPI; t++) {
                var v = vec4<f32>(0.0);
                if (xrows[t] != 0xffffffffu && gk < p.k) {
                    v = x4[(xrows[t] * p.k + gk) / 4u];
                }
                let r = lid / 8u + 8u * t;
                put_a(4u * c, r, v.x);
                put_a(4u * c + 1u, r, v.y);
                put_a(4u * c + 2u, r, v.z);
                put_a(4u * c + 3u, r, v.w);
            }
        } else if (lid < TM) {
            for (var kk = 0u; kk < TK; kk++) {
                let gk = k0 + kk;
                var av = 0.0;
                if (am < m_end && gk < p.k) {
                    av = x[xm * p.k + gk];
                }
                put_a(kk, lid, av);
            }
        }
        if (QFORMAT != 0u) {
            // The step is one 32-value group of weight row bn.
            let gi = k0 / 32u;
            var v: array<vec4<f32>, 8>;
            if (bn < p.n) {
                v = dequant_group((w_row0 + bn) * row_blocks + gi / QGROUPS, gi % QGROUPS);
            }
            for (var t = 0u; t < 8u; t++) {
                b_tile[(4u * t) * 16u + lid / 4u][lid % 4u] = tile_t(v[t].x);
                b_tile[(4u * t + 1u) * 16u + lid / 4u][lid % 4u] = tile_t(v[t].y);
                b_tile[(4u * t + 2u) * 16u + lid / 4u][lid % 4u] = tile_t(v[t].z);
                b_tile[(4u * t + 3u) * 16u + lid / 4u][lid % 4u] = tile_t(v[t].w);
            }
        } else if (W_VEC4 && W_HALF) {
            let c = lid % 4u;
            let gk = k0 + 8u * c;
            for (var t = 0u; t < 4u; t++) {
                let r = lid / 4u + 16u * t;
                var q = vec4<u32>(0u);
                if (n0 + r < p.n && gk < p.k) {
                    q = w_quad(((w_row0 + n0 + r) * p.k + gk) / 8u);
                }
                let lo = vec4<f32>(halves(q.x), halves(q.y));
                let hi = vec4<f32>(halves(q.z), halves(q.w));
                for (var j = 0u; j < 4u; j++) {
                    put_b(8u * c + j, r, lo[j]);
                    put_b(8u * c + 4u + j, r, hi[j]);
                }
            }
        } else if (W_VEC4) {
            let c = lid % 8u;
            let gk = k0 + 4u * c;
            for (var t = 0u; t < 8u; t++) {
                let r = lid / 8u + 8u * t;
                var v = vec4<f32>(0.0);
                if (n0 + r < p.n && gk < p.k) {
                    v = bitcast<vec4<f32>>(w_quad(((w_row0 + n0 + r) * p.k + gk) / 4u));
                }
                for (var j = 0u; j < 4u; j++) {
                    put_b(4u * c + j, r, v[j]);
                }
            }
        } else {
            for (var kk = 0u; kk < TK; kk++) {
                let gk = k0 + kk;
                var bv = 0.0;
                if (bn < p.n && gk < p.k) {
                    bv = weight_at((w_row0 + bn) * p.k + gk);
                }
                put_b(kk, lid, bv);
            }
        }
        workgroupBarrier();
        // Unrolled, with constant indices into acc so that it stays in registers.
        for (var kk = 0u; kk < TK; kk++) {
            let b0 = b_tile[kk * 16u + 2u * tx];
            let b1 = b_tile[kk * 16u + 2u * tx + 1u];
#if A_VEC4
            // The invocation's rows as vec4s: TM = 64, a0 and a1 (rows 8ty .. 8ty + 7); TM = 32,
            // a0 (4ty .. 4ty + 3).
#for v in TM / 32
            let a${v} = a_tile[kk * TM4 + (TM / 32u) * ty + ${v}u];
#endfor
#for v in TM / 32
#for j in 4
            acc[8u * ${v}u + 2u * ${j}u] += vec4<f32>(a${v}[${j}] * b0);
            acc[8u * ${v}u + 2u * ${j}u + 1u] += vec4<f32>(a${v}[${j}] * b1);
#endfor
#endfor
#else
            // One or two rows (TM = 8, 16), one value each.
#for i in TM / 8
            let a${i} = a_tile[kk * TM4 + (ty * RPI + ${i}u) / 4u][(ty * RPI + ${i}u) % 4u];
            acc[2u * ${i}u] += vec4<f32>(a${i} * b0);
            acc[2u * ${i}u + 1u] += vec4<f32>(a${i} * b1);
#endfor
#endif
        }
        workgroupBarrier();
    }
    // Constant indices only, so acc stays in registers.
    let gm = m0 + ty * RPI;
    let gn = n0 + tx * 8u;
#for i in TM / 8
    store4(gm + ${i}u, gn, acc[2u * ${i}u], m_end);
    store4(gm + ${i}u, gn + 4u, acc[2u * ${i}u + 1u], m_end);
#endfor
}

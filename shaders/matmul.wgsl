// Register-blocked tiled matmul for prefill: Y[m, col_offset + n] = sum_k X[m, k] * W[n, k]
// (+ bias), with W one row chunk of an [N, K] weight (the layout of Hugging Face Linear).
// 64x64 output tile per workgroup, 16x16 threads each computing 4x4, K in steps of 16
// through workgroup memory. Edges are masked, so any M, N, K works.

struct Params { m: u32, n: u32, k: u32, ldy: u32, col_offset: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TILE]
var<workgroup> b_tile: array<f32, 1024>; // [TK][TILE]

fn load_w(i: u32) -> f32 {
    if (W_F16) {
        return half_of(w[i >> 1u], i);
    }
    return bitcast<f32>(w[i]);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % 16u;
    let ty = lid / 16u;
    let n0 = wid.x * TILE;
    let m0 = wid.y * TILE;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var l = 0u; l < 4u; l++) {
            let idx = lid + l * 256u;
            let row = idx / TK;
            let kk = idx % TK;
            let gk = k0 + kk;
            let gm = m0 + row;
            var av = 0.0;
            if (gm < p.m && gk < p.k) {
                av = x[gm * p.k + gk];
            }
            a_tile[kk * TILE + row] = av;
            let gn = n0 + row;
            var bv = 0.0;
            if (gn < p.n && gk < p.k) {
                bv = load_w(gn * p.k + gk);
            }
            b_tile[kk * TILE + row] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = a_tile[kk * TILE + ty * 4u + i];
                b[i] = b_tile[kk * TILE + tx * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let gm = m0 + ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let gn = n0 + tx * 4u + j;
            if (gm < p.m && gn < p.n) {
                var v = acc[i * 4u + j];
                if (HAS_BIAS) {
                    v += bias[p.col_offset + gn];
                }
                y[gm * p.ldy + p.col_offset + gn] = v;
            }
        }
    }
}

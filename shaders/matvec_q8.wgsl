// The int8 decode matvec (`--matvec-precision int8`): y[col_offset + r] = dot(x, w[r, :]) for
// the rows r of one weight chunk of a 32-value ggml format (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1),
// with x quantized by shaders/quantize_q8.wgsl (blocks of 32 int8 q_x with a scale d_x and
// the block's sum of q_x). Per block, with the weight's values q_w * a.x + a.y
// (shaders/quant.wgsl's q_affine; Q8_0: a = (d, 0)):
//   d_x * (a.x * sum(q_w q_x) + a.y * sum(q_x)),
// where sum(q_w q_x) is an exact integer sum of dot4I8Packed over packed words (the weight's
// nibbles, with Q5's fifth bit, are unsigned bytes 0..31, valid int8 lanes). Then f32 as the
// f32 matvec: each lane sums its blocks, one invocation per row sums its lanes.
//
// Layout as shaders/matvec.wgsl: 64 / LANES row groups of LANES lanes, ROWS_PER_LANE rows a
// lane, each lane taking every LANES-th block of the row, the lanes summed through workgroup
// memory. Epilogues as there (shaders/matvec_store.wgsl): HAS_BIAS, ACCUM (y += sum) and GLU
// (interleaved gate/up row pairs). The RMSNorm prologue is the quantize kernel's.

struct Params { k: u32, n: u32, col_offset: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
#if W_TEXTURE
@group(0) @binding(2) var w_tex: texture_2d<u32>;
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
#endif
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

#include "quant.wgsl"
#include "matvec_store.wgsl"

const R: u32 = ROWS_PER_LANE;
const ROWS: u32 = 64u / LANES * R; // rows per workgroup

// The exact integer dot product of weight block blk with a block of packed q_x.
fn block_dot(blk: u32, q: array<u32, 8>) -> i32 {
    var s = 0;
    if (QFORMAT == Q8_0) {
        for (var k = 0u; k < 8u; k++) {
            s += dot4I8Packed(q_word(blk, k), q[k]);
        }
        return s;
    }
    for (var k = 0u; k < 4u; k++) {
        let lanes = q_lanes(blk, k, q_word(blk, k));
        s += dot4I8Packed(lanes.x, q[k]) + dot4I8Packed(lanes.y, q[k + 4u]);
    }
    return s;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
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
        let xb = Q8_WORDS * gi;
        let dx = bitcast<f32>(xq[xb]);
        let sx = f32(bitcast<i32>(xq[xb + 1u]));
        var q: array<u32, 8>;
        for (var t = 0u; t < 8u; t++) {
            q[t] = xq[xb + 2u + t];
        }
        for (var r = 0u; r < R; r++) {
            if (r < nr) {
                let blk = (row0 + r) * (p.k / 32u) + gi;
                let a = q_affine(blk);
                acc[r] += dx * (a.x * f32(block_dot(blk, q)) + a.y * sx);
            }
        }
    }
    put_partials(lid, acc);
    workgroupBarrier();
    store_partials(lid, first, p.col_offset, 1.0);
}

// Embedding gather: out[t, j] = table[ids[t] - row_start, j] for the ids that fall in this
// chunk of the table (a table larger than one binding is split by rows, one dispatch per chunk).
// The table is f32, packed f16 or bf16 (W_HALF), or ggml blocks (QFORMAT != 0): then each
// invocation dequantizes one 32-value group of a row with shaders/quant.wgsl.

struct Params { n_tokens: u32, dim: u32, row_start: u32, rows: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#if W_TEXTURE
@group(0) @binding(2) var w_tex: texture_2d<u32>;
#else
@group(0) @binding(2) var<storage, read> w: array<u32>; // the table chunk
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

#include "quant.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * 256u + lid;
    if (QFORMAT != 0u) {
        // One invocation per (token, 32-value group).
        let groups = p.dim / 32u;
        if (idx >= p.n_tokens * groups) {
            return;
        }
        let t = idx / groups;
        let gi = idx % groups;
        let id = ids[t];
        if (id >= p.row_start && id < p.row_start + p.rows) {
            let blk = (id - p.row_start) * (p.dim / QK) + gi / QGROUPS;
            let v = dequant_group(blk, gi % QGROUPS);
            let o = t * p.dim + 32u * gi;
            for (var k = 0u; k < 8u; k++) {
                for (var c = 0u; c < 4u; c++) {
                    out[o + 4u * k + c] = v[k][c];
                }
            }
        }
        return;
    }
    if (idx >= p.n_tokens * p.dim) {
        return;
    }
    let t = idx / p.dim;
    let j = idx % p.dim;
    let id = ids[t];
    if (id >= p.row_start && id < p.row_start + p.rows) {
        out[idx] = weight_at((id - p.row_start) * p.dim + j);
    }
}

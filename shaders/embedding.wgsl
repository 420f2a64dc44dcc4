// Embedding gather: out[t, j] = table[ids[t] - row_start, j] for the ids that fall in this
// chunk of the table (a table larger than one binding is split by rows, one dispatch per chunk).

struct Params { n_tokens: u32, dim: u32, row_start: u32, rows: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn load_table(i: u32) -> f32 {
    if (W_F16) {
        return half_of(table[i >> 1u], i);
    }
    return bitcast<f32>(table[i]);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * 256u + lid;
    if (idx >= p.n_tokens * p.dim) {
        return;
    }
    let t = idx / p.dim;
    let j = idx % p.dim;
    let id = ids[t];
    if (id >= p.row_start && id < p.row_start + p.rows) {
        out[idx] = load_table((id - p.row_start) * p.dim + j);
    }
}

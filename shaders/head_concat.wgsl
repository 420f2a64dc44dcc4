// Per head, the columns of a then those of b: out [rows, heads, da + db] from a [rows, heads, da]
// and b [rows, heads, db] (RWKV-7's a and b of the delta rule side by side per head, the `ab`
// input of the linear recurrence).

struct Params { n: u32, heads: u32, da: u32, db: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let w = p.da + p.db;
    let rh = i / w; // row * heads + head
    let j = i % w;
    if (j < p.da) {
        out[i] = a[rh * p.da + j];
    } else {
        out[i] = b[rh * p.db + j - p.da];
    }
}

// Elementwise binary ops over two f32 arrays: OP 0 = add (residual), 1 = SwiGLU (silu(a) * b), 2 = mul.

struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }

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
    let x = a[i];
    let y = b[i];
    if (OP == 0u) {
        out[i] = x + y;
    } else if (OP == 1u) {
        out[i] = x / (1.0 + exp(-x)) * y;
    } else {
        out[i] = x * y;
    }
}

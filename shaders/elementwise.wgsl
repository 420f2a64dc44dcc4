// Elementwise ops over f32 arrays: out[i] = f(a[i], b[i % b_len]), so b is either the same
// shape as a or a row vector broadcast over a's rows (a bias, a per-channel scale).
// OP: 0 add, 1 SwiGLU silu(a) * b, 2 mul, 3 sub, 4 softplus(a + b), 5 sigmoid(a) * b,
//     6 relu(a)^2, 7 tanh(a), 8 sigmoid(a), 9 -exp(a), 10 logsigmoid(a) (b unused in 6-10),
//     11 GeGLU gelu(a) * b with the exact (erf) GELU.
// The epilogues of a prefill Linear op (kernels/linear.rs; b unused): 12 SwiGLU of a's
// interleaved (gate, up) pairs, out[i] = silu(a[2i]) * a[2i + 1] (out half a's size);
// 13 out[i] += a[i] (a residual add in place); 14 as 12 with the tanh GELU,
// out[i] = gelu_tanh(a[2i]) * a[2i + 1] (Gemma's GeGLU). 15: gelu_tanh(a) * b. 16:
// b * tanh(a / b), soft-capping to ±b (Gemma 2's logits).

struct Params { n: u32, b_len: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

#include "elementwise_ops.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    if (OP == 12u) {
        let g = a[2u * i];
        out[i] = g / (1.0 + exp(-g)) * a[2u * i + 1u];
        return;
    }
    if (OP == 14u) {
        out[i] = gelu_tanh(a[2u * i]) * a[2u * i + 1u];
        return;
    }
    if (OP == 13u) {
        out[i] = out[i] + a[i];
        return;
    }
    out[i] = elementwise_op(OP, a[i], b[i % p.b_len]);
}

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

// erf by Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7 (WGSL has no erf).
fn erf_approx(z: f32) -> f32 {
    let x = abs(z);
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
        + t * (-1.453152027 + t * 1.061405429))));
    return sign(z) * (1.0 - poly * exp(-x * x));
}

// GELU's tanh approximation (torch's gelu(approximate="tanh")); the argument of tanh is
// clamped where tanh is 1 in f32, as some drivers' tanh overflows to NaN beyond.
fn gelu_tanh(x: f32) -> f32 {
    let inner = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
    return 0.5 * x * (1.0 + tanh(inner));
}

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
    let x = a[i];
    let y = b[i % p.b_len];
    if (OP == 0u) {
        out[i] = x + y;
    } else if (OP == 1u) {
        out[i] = x / (1.0 + exp(-x)) * y;
    } else if (OP == 2u) {
        out[i] = x * y;
    } else if (OP == 3u) {
        out[i] = x - y;
    } else if (OP == 4u) {
        // softplus, as torch: linear above 20 (exp would overflow long before f32 matters).
        let z = x + y;
        out[i] = select(log(1.0 + exp(z)), z, z > 20.0);
    } else if (OP == 5u) {
        out[i] = y / (1.0 + exp(-x));
    } else if (OP == 6u) {
        let r = max(x, 0.0);
        out[i] = r * r;
    } else if (OP == 7u) {
        out[i] = tanh(x);
    } else if (OP == 8u) {
        out[i] = 1.0 / (1.0 + exp(-x));
    } else if (OP == 9u) {
        out[i] = -exp(x);
    } else if (OP == 16u) {
        out[i] = y * tanh(clamp(x / y, -15.0, 15.0));
    } else if (OP == 15u) {
        out[i] = gelu_tanh(x) * y;
    } else if (OP == 11u) {
        out[i] = 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752)) * y;
    } else {
        // log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)), stable at both ends.
        out[i] = min(x, 0.0) - log(1.0 + exp(-abs(x)));
    }
}

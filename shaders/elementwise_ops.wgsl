// The elementwise ops of shaders/elementwise.wgsl, shared with the fused chains of
// shaders/elementwise_fused.wgsl.

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

// Op `op` (the numbering of kernels/elementwise.rs) of x (a) and y (b) for one element.
fn elementwise_op(op: u32, x: f32, y: f32) -> f32 {
    if (op == 0u) {
        return x + y;
    } else if (op == 1u) {
        return x / (1.0 + exp(-x)) * y;
    } else if (op == 2u) {
        return x * y;
    } else if (op == 3u) {
        return x - y;
    } else if (op == 4u) {
        // softplus, as torch: linear above 20 (exp would overflow long before f32 matters).
        let z = x + y;
        return select(log(1.0 + exp(z)), z, z > 20.0);
    } else if (op == 5u) {
        return y / (1.0 + exp(-x));
    } else if (op == 6u) {
        let r = max(x, 0.0);
        return r * r;
    } else if (op == 7u) {
        return tanh(x);
    } else if (op == 8u) {
        return 1.0 / (1.0 + exp(-x));
    } else if (op == 9u) {
        return -exp(x);
    } else if (op == 16u) {
        return y * tanh(clamp(x / y, -15.0, 15.0));
    } else if (op == 15u) {
        return gelu_tanh(x) * y;
    } else if (op == 11u) {
        return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752)) * y;
    } else {
        // log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)), stable at both ends.
        return min(x, 0.0) - log(1.0 + exp(-abs(x)));
    }
}

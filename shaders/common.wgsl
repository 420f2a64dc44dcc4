// Shared prelude, prepended to every kernel (runtime/src/shader.rs).

// Per-step values, written once per run of a plan; mirrors `Step` in runtime/src/kernels/mod.rs.
struct Step {
    pos: u32,          // tokens already in the cache before this step
    n_tokens: u32,     // tokens in this step
    seed: u32,         // sampling seed for this step
    top_k: u32,        // 0 = off
    temperature: f32,  // 0 = greedy (argmax); diffusion: Gumbel noise scale
    top_p: f32,        // >= 1 = off
    window_start: u32, // diffusion: positions [window_start, window_end) may be unmasked
    window_end: u32,
    unmask_k: u32,     // diffusion: positions to commit (0 = every one at or above threshold)
    threshold: f32,    // diffusion: confidence threshold
    seed_base: u32,    // the request's seed before mixing with the position (per-row draws)
    _pad0: u32,
}

// Linear workgroup index for grids split over x and y (see Gpu::grid).
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// e^x - 1 for x <= 0 without the cancellation of exp(x) - 1 near 0 (WGSL has no expm1):
// decays close to 1 keep their full relative precision (the linear recurrences).
fn expm1_neg(x: f32) -> f32 {
    if (x > -0.03) {
        // Taylor to x^5: the next term is below 2^-24 relative for |x| < 0.03.
        return x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))));
    }
    return exp(x) - 1.0;
}

// (cos x, sin x) to a few ulp, for RoPE. The WGSL builtins may be as coarse as 2^-11
// absolute (SwiftShader's are ~1e-4 relative); this is Cephes' sinf/cosf: reduce by pi/4 in
// three exact parts, then minimax polynomials on [-pi/4, pi/4]. Exact reduction needs
// |x| < 8192; beyond that the builtins are used.
fn sin_cos(x: f32) -> vec2<f32> {
    let ax = abs(x);
    if (ax >= 8192.0) {
        return vec2<f32>(cos(x), sin(x));
    }
    let j = (u32(ax * 1.27323954473516) + 1u) & ~1u;
    let y = f32(j);
    let r = ((ax - y * 0.78515625) - y * 2.4187564849853515625e-4) - y * 3.77489497744594108e-8;
    let z = r * r;
    let s = r + r * z * ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1);
    let c = 1.0 - 0.5 * z
        + z * z * ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2);
    var sa = s;
    var ca = c;
    switch ((j >> 1u) & 3u) {
        case 1u: { sa = c; ca = -s; }
        case 2u: { sa = -s; ca = -c; }
        case 3u: { sa = -c; ca = s; }
        default: {}
    }
    return vec2<f32>(ca, select(sa, -sa, x < 0.0));
}

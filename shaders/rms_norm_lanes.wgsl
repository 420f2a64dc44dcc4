// shaders/rms_norm.wgsl's normalisations for CPU adapters: one row (or group) per invocation,
// walked in order. Lavapipe runs a workgroup as SIMD vectors and pays for every barrier with
// a switch between them; this kernel has no barrier, and no lane idles on a short group (a
// 64-wide head in a 256-wide workgroup). The sums run in 4 interleaved partial sums (the
// error of a sequential sum grows with its length).

struct Params { rows: u32, dim: u32, eps: f32, groups: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> b: array<f32>;

// sum over the row at `base` of (x - mean)^2 when SQUARE, else of x.
fn row_sum(base: u32, mean: f32, square: bool) -> f32 {
    var acc = vec4<f32>(0.0);
    let whole = p.dim & ~3u;
    for (var i = 0u; i < whole; i += 4u) {
        var v = vec4<f32>(x[base + i], x[base + i + 1u], x[base + i + 2u], x[base + i + 3u]);
        v -= mean;
        if (square) {
            v *= v;
        }
        acc += v;
    }
    var tail = 0.0;
    for (var i = whole; i < p.dim; i++) {
        var v = x[base + i] - mean;
        if (square) {
            v *= v;
        }
        tail += v;
    }
    return (acc.x + acc.y) + (acc.z + acc.w) + tail;
}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg) * 8u + lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var mean = 0.0;
    if (CENTERED) {
        mean = row_sum(base, 0.0, false) / f32(p.dim);
    }
    let inv = inverseSqrt(row_sum(base, mean, true) / f32(p.dim) + p.eps);
    let wbase = (row % p.groups) * p.dim;
    for (var i = 0u; i < p.dim; i++) {
        var y = (x[base + i] - mean) * inv * w[wbase + i];
        if (BIAS) {
            y += b[wbase + i];
        }
        out[base + i] = y;
    }
}

// x [K] (K a multiple of 32) quantized to 8-bit integers in blocks of 32 for the int8 decode
// matvec (shaders/matvec_q8.wgsl), as llama.cpp's q8_1: per block d = amax / 127 and
// q = round(x / d) (ties to even) in -127..127, so x ≈ d q. Each block is Q8_WORDS words:
// d (f32 bits), the sum of its q (i32, for the min term of Q4_1 and Q5_1 and the offset of
// Q4_0 and Q5_0), then its 32 q packed four to a word, lowest byte first (dot4I8Packed's
// order).
//
// NORM: x is RMSNorm(x) * nw. Quantization does not depend on a block's overall scale, so the
// blocks of x * nw are quantized as they are read, the sum of x² is gathered meanwhile, and
// each block's d is then multiplied by the inverse RMS: q is the same and d carries the norm.
//
// One workgroup: decode's x is one row of at most a few thousand values.

struct Params { k: u32, eps: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// NORM: the norm weight [K].
@group(0) @binding(2) var<storage, read> nw: array<f32>;
@group(0) @binding(3) var<storage, read_write> xq: array<u32>;

const WG: u32 = 256u;

var<workgroup> squares: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    var square_sum = 0.0;
    for (var b = lid; b < p.k / 32u; b += WG) {
        var v: array<f32, 32>;
        var amax = 0.0;
        for (var j = 0u; j < 32u; j++) {
            var xv = x[32u * b + j];
            square_sum += xv * xv;
            if (NORM) {
                xv *= nw[32u * b + j];
            }
            v[j] = xv;
            amax = max(amax, abs(xv));
        }
        let d = amax / 127.0;
        // An all-zero block: d = 0 and every q 0.
        let id = select(0.0, 127.0 / amax, amax > 0.0);
        var sum = vec4<i32>(0);
        for (var t = 0u; t < 8u; t++) {
            let f = vec4<f32>(v[4u * t], v[4u * t + 1u], v[4u * t + 2u], v[4u * t + 3u]);
            let q = vec4<i32>(round(f * id));
            sum += q;
            xq[Q8_WORDS * b + 2u + t] = pack4xI8(q);
        }
        xq[Q8_WORDS * b] = bitcast<u32>(d);
        xq[Q8_WORDS * b + 1u] = bitcast<u32>(sum.x + sum.y + sum.z + sum.w);
    }
    if (NORM) {
        squares[lid] = square_sum;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                squares[lid] += squares[lid + s];
            }
            workgroupBarrier();
        }
        let inv = inverseSqrt(squares[0] / f32(p.k) + p.eps);
        // Each invocation rescales the blocks it wrote itself.
        for (var b = lid; b < p.k / 32u; b += WG) {
            xq[Q8_WORDS * b] = bitcast<u32>(bitcast<f32>(xq[Q8_WORDS * b]) * inv);
        }
    }
}

// How matvec, matmul and embedding read weights (pulled in with `#include "quant.wgsl"`, see
// runtime/src/shader.rs): 16-bit floats two per word, and the dequantization of ggml blocks.
// The including kernel declares the weights at binding 2: as `w: array<u32>`, or with
// W_TEXTURE as `w_tex: texture_2d<u32>` of rgba32uint texels, TEX_WIDTH a row (word i is
// component i % 4 of texel i / 4; runtime/src/device.rs, Gpu::weight_texture), read through
// w_word (and w_quad, four words, which a kernel with a vec4 view `w4` declares for
// buffers). The launcher defines W_HALF and W_BF16, QFORMAT (QuantFormat::shader_id, 0 = not
// quantized), QK, QWORDS, Q_TILE, W_TEXTURE and TEX_WIDTH (kernels::dtype_defs).
//
// Unquantized weights are u32 words of f32 bits, or (W_HALF) two 16-bit floats, the lower
// half first: IEEE f16, or bf16 with W_BF16. A bf16 is the top half of an f32, so widening it
// is a shift: exact, and no shader-f16 is needed for either.
//
// Blocks are ggml's in the GPU layout of runtime/src/quant.rs, every field on a word:
// - the 32-value formats in tiles of Q_TILE blocks with their fields apart: the quants of
//   the tile's blocks (four words each, eight for Q8_0: aligned vec4s), their fifth bits
//   (Q5_0/Q5_1: a word each), their scales (an f16 each, two to a word, or d|m in a word for
//   Q4_1/Q5_1);
// - the K-quants as blocks of QWORDS words each, zero-padded at the end, a block's first
//   word being `b = blk * QWORDS`.
// Kernels address blocks by index: `blk` is the block's index in its weight chunk (row *
// blocks per row + block in row); q_word, qh_word and q_affine find a 32-value block's fields.
// Each value is computed as the CPU reference does (quant::dequantize_block): a scale times a
// small integer, exact in f32, then at most one rounding, so the GPU's values equal the
// reference's (up to the sign of zero).

#if W_TEXTURE
// Word i of the weight chunk, from its texture (rows of TEX_WIDTH texels of 4 words).
fn w_word(i: u32) -> u32 {
    let t = textureLoad(w_tex, vec2<u32>((i >> 2u) % TEX_WIDTH, (i >> 2u) / TEX_WIDTH), 0);
    return t[i & 3u];
}
// Words 4j..4j+3 of the weight chunk.
fn w_quad(j: u32) -> vec4<u32> {
    return textureLoad(w_tex, vec2<u32>(j % TEX_WIDTH, j / TEX_WIDTH), 0);
}
// Words 4j..4j+3 of the weight chunk, as one vec4 (K-quants' shared words).
fn w_words4(j: u32) -> vec4<u32> {
    return w_quad(j);
}
#else
fn w_word(i: u32) -> u32 {
    return w[i];
}
fn w_words4(j: u32) -> vec4<u32> {
    return vec4<u32>(w[4u * j], w[4u * j + 1u], w[4u * j + 2u], w[4u * j + 3u]);
}
#endif

const Q4_0: u32 = 2u;
const Q4_1: u32 = 3u;
const Q5_0: u32 = 6u;
const Q5_1: u32 = 7u;
const Q8_0: u32 = 8u;
const Q4_K: u32 = 12u;
const Q5_K: u32 = 13u;
const Q6_K: u32 = 14u;

// 32-value groups per block (QK: values per block).
const QGROUPS: u32 = QK / 32u;

// The tile layout of the 32-value formats (runtime/src/quant.rs, quant::to_gpu): Q_TILE
// blocks' quants (QS_WORDS words each: one or, for Q8_0, two aligned vec4s), their fifth bits
// (Q5_0/Q5_1: a word each), their scales (an f16 each, two to a word, or d|m in a word for
// Q4_1/Q5_1).
const TILED: bool = QK == 32u && QFORMAT != 0u;
const FIVE_BITS: bool = QFORMAT == Q5_0 || QFORMAT == Q5_1;
const HAS_MIN: bool = QFORMAT == Q4_1 || QFORMAT == Q5_1;
const QS_WORDS: u32 = select(4u, 8u, QFORMAT == Q8_0);
const QH_AT: u32 = Q_TILE * QS_WORDS;
const SCALES_AT: u32 = QH_AT + select(0u, Q_TILE, FIVE_BITS);
const Q_TILE_WORDS: u32 = SCALES_AT + select(Q_TILE / 2u, Q_TILE, HAS_MIN);

// The first word of tiled block blk's quants (a multiple of 4: a vec4 where a kernel can).
fn q_at(blk: u32) -> u32 {
    return blk / Q_TILE * Q_TILE_WORDS + blk % Q_TILE * QS_WORDS;
}

// Word k of block blk's quants.
fn q_word(blk: u32, k: u32) -> u32 {
    return w_word(q_at(blk) + k);
}

// Block blk's fifth bits (Q5_0, Q5_1).
fn qh_word(blk: u32) -> u32 {
    return w_word(blk / Q_TILE * Q_TILE_WORDS + QH_AT + blk % Q_TILE);
}

// The two 16-bit floats of word `v` (W_HALF), lower half first.
fn halves(v: u32) -> vec2<f32> {
    if (W_BF16) {
        return bitcast<vec2<f32>>(vec2<u32>(v << 16u, v & 0xFFFF0000u));
    }
    return unpack2x16float(v);
}

// Value `i` of an unquantized weight (f32 or W_HALF; element i of a packed array is a half of
// word i / 2).
fn weight_at(i: u32) -> f32 {
    if (W_HALF) {
        let pair = halves(w_word(i >> 1u));
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(w_word(i));
}

// The four bytes of a word, lowest first.
fn q_bytes(v: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu);
}

// The four bytes of a word as signed values.
fn q_sbytes(v: u32) -> vec4<i32> {
    return bitcast<vec4<i32>>(vec4<u32>(v) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
}

// Bits 0..3 of `v`, each moved to bit 4 of its own byte lane (the fifth bit of Q5_0/Q5_1).
fn q_bit4(v: u32) -> u32 {
    return (((v & 0xFu) * 0x00204081u) & 0x01010101u) << 4u;
}

// Q4_0, Q4_1, Q5_0, Q5_1: the byte lanes of values 4k..4k+3 (x) and 16+4k..16+4k+3 (y) of
// block blk, which share their word of quants `qs` (q_word(blk, k)).
fn q_lanes(blk: u32, k: u32, qs: u32) -> vec2<u32> {
    var lanes = vec2<u32>(qs, qs >> 4u) & vec2<u32>(0x0F0F0F0Fu);
    if (FIVE_BITS) {
        let qh = qh_word(blk);
        lanes |= vec2<u32>(q_bit4(qh >> (4u * k)), q_bit4(qh >> (16u + 4u * k)));
    }
    return lanes;
}

// A value of block blk is q * s.x + s.y (Q8_0: q signed).
fn q_affine(blk: u32) -> vec2<f32> {
    let at = blk / Q_TILE * Q_TILE_WORDS + SCALES_AT;
    if (HAS_MIN) {
        return unpack2x16float(w_word(at + blk % Q_TILE));
    }
    let ds = unpack2x16float(w_word(at + blk % Q_TILE / 2u));
    let d = select(ds.x, ds.y, blk % 2u == 1u);
    switch QFORMAT {
        case Q4_0: {
            return vec2<f32>(d, -8.0 * d);
        }
        case Q5_0: {
            return vec2<f32>(d, -16.0 * d);
        }
        default: { // Q8_0
            return vec2<f32>(d, 0.0);
        }
    }
}

// Byte `j` (0..3) of word `v`.
fn q_byte(v: u32, j: u32) -> u32 {
    return (v >> (8u * j)) & 0xFFu;
}

// The 32 values of group `g` of block `blk` (group 0 of a 32-value block; 0..7 of a K-quant
// superblock): element t holds values 4t..4t+3 of the group.
fn dequant_group(blk: u32, g: u32) -> array<vec4<f32>, 8> {
    var v: array<vec4<f32>, 8>;
    switch QFORMAT {
        case Q4_0, Q4_1, Q5_0, Q5_1: { // value = q * d + m (Q4_0: m = -8d, Q5_0: -16d)
            let a = q_affine(blk);
            // The quants as one vec4 (one texel where weights are textures).
            let qs = w_words4(q_at(blk) / 4u);
            for (var k = 0u; k < 4u; k++) {
                let lanes = q_lanes(blk, k, qs[k]);
                v[k] = vec4<f32>(q_bytes(lanes.x)) * a.x + a.y;
                v[k + 4u] = vec4<f32>(q_bytes(lanes.y)) * a.x + a.y;
            }
        }
        case Q8_0: { // 32 signed bytes; value = q * d
            let d = q_affine(blk).x;
            let at = q_at(blk) / 4u;
            let qa = w_words4(at);
            let qb = w_words4(at + 1u);
            for (var k = 0u; k < 4u; k++) {
                v[k] = vec4<f32>(q_sbytes(qa[k])) * d;
                v[k + 4u] = vec4<f32>(q_sbytes(qb[k])) * d;
            }
        }
        case Q4_K, Q5_K, Q6_K: { // K-quants: see the qk_ helpers below
            let b = blk * QWORDS;
            let s = qk_scales(qk_head(b), b, g);
            // The words of values 0..15 and 16..31, a vec4 (one texel) of each kind at a time.
            let lo4 = qk_words4(b, g, 0u);
            let hi4 = qk_words4(b, g, 4u);
            for (var k = 0u; k < 4u; k++) {
                v[k] = qk_quad(vec2<u32>(lo4[0][k], lo4[1][k]), g) * s.x - s.y;
                v[k + 4u] = qk_quad(vec2<u32>(hi4[0][k], hi4[1][k]), g) * s.z - s.w;
            }
        }
        default: {
            for (var k = 0u; k < 8u; k++) {
                v[k] = vec4<f32>(0.0);
            }
        }
    }
    return v;
}

// ---------------------------------------------------------------- K-quants (256-value superblocks)
// Q4_K: d, dmin, 12 bytes of packed 6-bit scales and mins, qs[128] (4-bit).
// Q5_K: the same, then qh[32] (fifth bits) before qs.
// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), 16 signed 8-bit scales, d at byte 208.
// Two groups share the words of their quantized values (qs nibbles, qh bits): 2c and 2c + 1
// for Q4_K/Q5_K, j and j + 2 of each 128-value half for Q6_K; dequant_pair reads them once.

// The words a group's scales come from: Q4_K/Q5_K: d|dmin and the three scale words; Q6_K:
// the word holding d.
fn qk_head(b: u32) -> vec4<u32> {
    if (QFORMAT == Q6_K) {
        return vec4<u32>(w_word(b + 52u), 0u, 0u, 0u);
    }
    return w_words4(b / 4u);
}

// Group g's values are q * s.x - s.y (values 0..15) and q * s.z - s.w (values 16..31).
fn qk_scales(head: vec4<u32>, b: u32, g: u32) -> vec4<f32> {
    if (QFORMAT == Q6_K) {
        // Scales 8h + 2j and 8h + 2j + 1 of group j of half h: d times a signed byte.
        let d = unpack2x16float(head.x).x;
        let si = 8u * (g >> 2u) + 2u * (g & 3u);
        let sw = w_word(b + 48u + si / 4u);
        let lo = bitcast<i32>(q_byte(sw, si % 4u) << 24u) >> 24u;
        let hi = bitcast<i32>(q_byte(sw, si % 4u + 1u) << 24u) >> 24u;
        return vec4<f32>(d * f32(lo), 0.0, d * f32(hi), 0.0);
    }
    // 6-bit scale and min of group g: ggml's get_scale_min_k4.
    var sc: u32;
    var mn: u32;
    if (g < 4u) {
        sc = q_byte(head.y, g) & 63u;
        mn = q_byte(head.z, g) & 63u;
    } else {
        let j = g - 4u;
        sc = (q_byte(head.w, j) & 0xFu) | ((q_byte(head.y, j) >> 6u) << 4u);
        mn = (q_byte(head.w, j) >> 4u) | ((q_byte(head.z, j) >> 6u) << 4u);
    }
    let dm = unpack2x16float(head.x);
    let a = dm.x * f32(sc);
    let c = dm.y * f32(mn);
    return vec4<f32>(a, c, a, c);
}

// Where group g's words start in the superblock at word b: the low bits' (x) and the high
// bits' (y); word k (0..7) of each holds values 4k..4k+3. Q4_K has no high bits (y unused).
fn qk_word_bases(b: u32, g: u32) -> vec2<u32> {
    switch QFORMAT {
        case Q4_K: { // qs from byte 16, 32 bytes per pair of groups
            return vec2<u32>(b + 4u + 8u * (g >> 1u), b);
        }
        case Q5_K: { // qh (32 bytes, one bit per group) from byte 16, qs from byte 48
            return vec2<u32>(b + 12u + 8u * (g >> 1u), b + 4u);
        }
        default: { // Q6_K: ql (64 bytes per half), qh from byte 128 (32 bytes per half)
            let h = g >> 2u;
            return vec2<u32>(b + 16u * h + 8u * (g & 1u), b + 32u + 8u * h);
        }
    }
}

// The words holding the low bits ([0]) and the high bits ([1]; Q4_K has none) of values
// 4k..4k+3 of group g, for k = h..h + 3 (h = 0 or 4), as vec4s: component k - h (blocks are
// whole vec4s, and so are these runs of words).
fn qk_words4(b: u32, g: u32, h: u32) -> array<vec4<u32>, 2> {
    let at = (qk_word_bases(b, g) + h) / 4u;
    var out: array<vec4<u32>, 2>;
    out[0] = w_words4(at.x);
    if (QFORMAT != Q4_K) {
        out[1] = w_words4(at.y);
    }
    return out;
}

// The byte lanes of values 4k..4k+3 of group g, from their words (qk_words4) (Q6_K: q + 32, 0..63).
fn qk_lanes(words: vec2<u32>, g: u32) -> u32 {
    switch QFORMAT {
        case Q4_K: { // low nibbles for even groups, high for odd
            return (words.x >> (4u * (g & 1u))) & 0x0F0F0F0Fu;
        }
        case Q5_K: { // and bit g of each qh byte as the fifth bit
            let lo = (words.x >> (4u * (g & 1u))) & 0x0F0F0F0Fu;
            return lo | (((words.y >> g) & 0x01010101u) << 4u);
        }
        default: { // nibble j / 2 of ql, bits 2j, 2j + 1 of qh (j = g % 4)
            let j = g & 3u;
            let lo = (words.x >> (4u * (j >> 1u))) & 0x0F0F0F0Fu;
            return lo | (((words.y >> (2u * j)) & 0x03030303u) << 4u);
        }
    }
}

// The quantized values of values 4k..4k+3 of group g (Q6_K: minus 32), from their words.
fn qk_quad(words: vec2<u32>, g: u32) -> vec4<f32> {
    let q = q_bytes(qk_lanes(words, g));
    if (QFORMAT == Q6_K) {
        return vec4<f32>(vec4<i32>(q) - vec4<i32>(32));
    }
    return vec4<f32>(q);
}

// The two groups of pair pc (0..3) of a K-quant superblock, which share their words.
fn qk_pair(pc: u32) -> vec2<u32> {
    if (QFORMAT == Q6_K) {
        let g = 4u * (pc >> 1u) + (pc & 1u);
        return vec2<u32>(g, g + 2u);
    }
    return vec2<u32>(2u * pc, 2u * pc + 1u);
}

// The 64 values of pair pc of the K-quant superblock at word b (blk * QWORDS): elements 0..7
// are group qk_pair(pc).x as in dequant_group, 8..15 group qk_pair(pc).y. Equal to two
// dequant_group calls, reading each word once.
fn dequant_pair(b: u32, pc: u32) -> array<vec4<f32>, 16> {
    var v: array<vec4<f32>, 16>;
    let gs = qk_pair(pc);
    let head = qk_head(b);
    let s0 = qk_scales(head, b, gs.x);
    let s1 = qk_scales(head, b, gs.y);
    // The shared words of values 0..15 and 16..31, a vec4 (one texel) of each kind at a time.
    let lo4 = qk_words4(b, gs.x, 0u);
    let hi4 = qk_words4(b, gs.x, 4u);
    for (var k = 0u; k < 4u; k++) {
        let lo = vec2<u32>(lo4[0][k], lo4[1][k]);
        let hi = vec2<u32>(hi4[0][k], hi4[1][k]);
        v[k] = qk_quad(lo, gs.x) * s0.x - s0.y;
        v[k + 4u] = qk_quad(hi, gs.x) * s0.z - s0.w;
        v[k + 8u] = qk_quad(lo, gs.y) * s1.x - s1.y;
        v[k + 12u] = qk_quad(hi, gs.y) * s1.z - s1.w;
    }
    return v;
}

// ---------------------------------------------------------------- dot products (matvec)
// The matvec takes dot products of x with the quantized values as they lie in their byte
// lanes, without shifting each value down: lane c of a word is read as the integer
// q * 2^(8c) (lane_values: exact in f32, as q < 128), and x is scaled by 2^(-8c) to match
// (x_scale: exact, powers of two). Q8_0's signed bytes are each moved to the top lane (q *
// 2^24). The scales and offsets of a group are applied once to its sums: a group's dot
// product is s * dot(q, x) + m * sum(x), with sum(x) taken once per group of x and shared by
// all rows. This is the dequantized dot product summed in another order (within the kernel
// cases' SUM_TOL), and it costs about three operations per weight instead of five.

// What x is multiplied by, four values at a time, before group_dot and pair_dot.
fn x_scale() -> vec4<f32> {
    if (QFORMAT == Q8_0) {
        return vec4<f32>(1.0 / 16777216.0);
    }
    return vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0);
}

// The four byte lanes of v, each in place (lane c is q * 2^(8c)).
fn lane_values(v: u32) -> vec4<f32> {
    let masks = vec4<u32>(0xFFu, 0xFF00u, 0xFF0000u, 0xFF000000u);
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(v) & masks));
}

// The four signed bytes of v, each moved to the top byte (q * 2^24).
fn top_sbytes(v: u32) -> vec4<f32> {
    let top = (vec4<u32>(v) << vec4<u32>(24u, 16u, 8u, 0u)) & vec4<u32>(0xFF000000u);
    return vec4<f32>(bitcast<vec4<i32>>(top));
}

// Q4_0, Q4_1, Q5_0, Q5_1: dot(q, x) over values 4k..4k+3 and 16+4k..16+4k+3 of block blk,
// whose quant word k is qs, for xs as in group_dot.
fn nibbles_dot(blk: u32, k: u32, qs: u32, xs: array<vec4<f32>, 8>) -> f32 {
    let lanes = q_lanes(blk, k, qs);
    return dot(lane_values(lanes.x), xs[k]) + dot(lane_values(lanes.y), xs[k + 4u]);
}

// 32-value formats: dot(values of block blk, x), for xs = x * x_scale() (element t: values
// 4t..4t+3) and x_sum the sum of x's 32 values; the block's quants are given (qa, and qb for
// Q8_0's second vec4) and taken word by word (written out: no vector indexed by a loop
// variable).
fn group_dot(blk: u32, qa: vec4<u32>, qb: vec4<u32>, xs: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    let a = q_affine(blk);
    if (QFORMAT == Q8_0) {
        let s = dot(top_sbytes(qa.x), xs[0]) + dot(top_sbytes(qa.y), xs[1])
              + dot(top_sbytes(qa.z), xs[2]) + dot(top_sbytes(qa.w), xs[3])
              + dot(top_sbytes(qb.x), xs[4]) + dot(top_sbytes(qb.y), xs[5])
              + dot(top_sbytes(qb.z), xs[6]) + dot(top_sbytes(qb.w), xs[7]);
        return a.x * s;
    }
    let s = nibbles_dot(blk, 0u, qa.x, xs) + nibbles_dot(blk, 1u, qa.y, xs)
          + nibbles_dot(blk, 2u, qa.z, xs) + nibbles_dot(blk, 3u, qa.w, xs);
    return a.x * s + a.y * x_sum;
}

// K-quants: qk_scales as (scale, offset) pairs for values 0..15 and 16..31 (value = q * s.x +
// s.y), q from qk_lanes (Q6_K: q + 32).
fn qk_affine(s: vec4<f32>) -> vec4<f32> {
    if (QFORMAT == Q6_K) {
        return vec4<f32>(s.x, -32.0 * s.x, s.z, -32.0 * s.z);
    }
    return vec4<f32>(s.x, -s.y, s.z, -s.w);
}

// K-quants: dot(values of pair pc of the superblock at word b (blk * QWORDS), x) for the
// pair's two groups of x (xa, xb, scaled as in group_dot) and their sums over values 0..15
// and 16..31 (sa, sb).
fn pair_dot(b: u32, pc: u32, xa: array<vec4<f32>, 8>, xb: array<vec4<f32>, 8>, sa: vec2<f32>,
            sb: vec2<f32>) -> f32 {
    let gs = qk_pair(pc);
    let head = qk_head(b);
    let s0 = qk_affine(qk_scales(head, b, gs.x));
    let s1 = qk_affine(qk_scales(head, b, gs.y));
    // Halves: values 0..15 (k < 4) and 16..31 of each group.
    var d0 = vec2<f32>(0.0);
    var d1 = vec2<f32>(0.0);
    var lo4 = qk_words4(b, gs.x, 0u);
    var hi4 = qk_words4(b, gs.x, 4u);
    for (var k = 0u; k < 4u; k++) {
        let lo = vec2<u32>(lo4[0][k], lo4[1][k]);
        let hi = vec2<u32>(hi4[0][k], hi4[1][k]);
        d0 += vec2<f32>(dot(lane_values(qk_lanes(lo, gs.x)), xa[k]),
                        dot(lane_values(qk_lanes(hi, gs.x)), xa[k + 4u]));
        d1 += vec2<f32>(dot(lane_values(qk_lanes(lo, gs.y)), xb[k]),
                        dot(lane_values(qk_lanes(hi, gs.y)), xb[k + 4u]));
    }
    return dot(vec4<f32>(s0.x, s0.z, s1.x, s1.z), vec4<f32>(d0, d1))
         + dot(vec4<f32>(s0.y, s0.w, s1.y, s1.w), vec4<f32>(sa, sb));
}

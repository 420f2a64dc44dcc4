// How matvec, matmul and embedding read weights (pulled in with `#include "quant.wgsl"`, see
// runtime/src/shader.rs): 16-bit floats two per word, and the dequantization of ggml blocks.
// The including kernel declares the weights as `w: array<u32>`; the launcher defines W_HALF
// and W_BF16, QFORMAT (QuantFormat::shader_id, 0 = not quantized), QK and QWORDS
// (kernels::dtype_defs).
//
// Unquantized weights are u32 words of f32 bits, or (W_HALF) two 16-bit floats, the lower
// half first: IEEE f16, or bf16 with W_BF16. A bf16 is the top half of an f32, so widening it
// is a shift: exact, and no shader-f16 is needed for either.
//
// Blocks are ggml's, each zero-padded to whole u32 words (runtime/src/quant.rs); fields are
// read from words by their byte offsets in the block. Each value is computed as the CPU
// reference does (quant::dequantize_block): a scale times a small integer, exact in f32, then
// at most one rounding, so the GPU's values equal the reference's (up to the sign of zero).
//
// Every format is read as 32-value groups (dequant_group): one group per block for the
// 32-value formats, eight per 256-value superblock for the K-quants, where dequant_pair also
// reads two groups that share their quantized words at once.

const Q4_0: u32 = 2u;
const Q4_1: u32 = 3u;
const Q5_0: u32 = 6u;
const Q5_1: u32 = 7u;
const Q8_0: u32 = 8u;
const Q4_K: u32 = 12u;
const Q5_K: u32 = 13u;
const Q6_K: u32 = 14u;

// 32-value groups per block (QK: values per block; QWORDS: words per padded block).
const QGROUPS: u32 = QK / 32u;

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
        let pair = halves(w[i >> 1u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(w[i]);
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
fn q_bit4(v: u32) -> vec4<u32> {
    return ((vec4<u32>(v) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u);
}

// The word at byte offset 4*i + 2 of the block at word `b` (fields after an f16 header).
fn q_word2(b: u32, i: u32) -> u32 {
    return (w[b + i] >> 16u) | (w[b + i + 1u] << 16u);
}

// Byte `j` (0..3) of word `v`.
fn q_byte(v: u32, j: u32) -> u32 {
    return (v >> (8u * j)) & 0xFFu;
}

// The 32 values of group `g` of the block whose first word is `b`: element t holds values
// 4t..4t+3 of the group.
fn dequant_group(b: u32, g: u32) -> array<vec4<f32>, 8> {
    var v: array<vec4<f32>, 8>;
    switch QFORMAT {
        case Q4_0, Q5_0: { // d, [qh,] qs; value = q * d - 8d (-16d)
            // Everything after d is read as words shifted by 2 bytes (q_word2).
            let d = unpack2x16float(w[b]).x;
            var qh = 0u;
            var qs0 = 0u;
            var m = -8.0 * d;
            if (QFORMAT == Q5_0) {
                qh = q_word2(b, 0u);
                qs0 = 1u;
                m = -16.0 * d;
            }
            for (var k = 0u; k < 4u; k++) {
                let qs = q_word2(b, qs0 + k);
                var lo = q_bytes(qs & 0x0F0F0F0Fu);
                var hi = q_bytes((qs >> 4u) & 0x0F0F0F0Fu);
                if (QFORMAT == Q5_0) {
                    lo |= q_bit4(qh >> (4u * k));
                    hi |= q_bit4(qh >> (16u + 4u * k));
                }
                v[k] = vec4<f32>(lo) * d + m;
                v[k + 4u] = vec4<f32>(hi) * d + m;
            }
        }
        case Q4_1, Q5_1: { // d, m, [qh,] qs; value = q * d + m
            let dm = unpack2x16float(w[b]);
            var qh = 0u;
            var qs0 = 1u;
            if (QFORMAT == Q5_1) {
                qh = w[b + 1u];
                qs0 = 2u;
            }
            for (var k = 0u; k < 4u; k++) {
                let qs = w[b + qs0 + k];
                var lo = q_bytes(qs & 0x0F0F0F0Fu);
                var hi = q_bytes((qs >> 4u) & 0x0F0F0F0Fu);
                if (QFORMAT == Q5_1) {
                    lo |= q_bit4(qh >> (4u * k));
                    hi |= q_bit4(qh >> (16u + 4u * k));
                }
                v[k] = vec4<f32>(lo) * dm.x + dm.y;
                v[k + 4u] = vec4<f32>(hi) * dm.x + dm.y;
            }
        }
        case Q8_0: { // d, 32 signed bytes; value = q * d
            let d = unpack2x16float(w[b]).x;
            for (var k = 0u; k < 8u; k++) {
                v[k] = vec4<f32>(q_sbytes(q_word2(b, k))) * d;
            }
        }
        case Q4_K, Q5_K, Q6_K: { // K-quants: see the qk_ helpers below
            let s = qk_scales(qk_head(b), b, g);
            for (var k = 0u; k < 8u; k++) {
                let sc = select(s.zw, s.xy, k < 4u);
                v[k] = qk_quad(qk_words(b, g, k), g) * sc.x - sc.y;
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
        return vec4<u32>(w[b + 52u], 0u, 0u, 0u);
    }
    return vec4<u32>(w[b], w[b + 1u], w[b + 2u], w[b + 3u]);
}

// Group g's values are q * s.x - s.y (values 0..15) and q * s.z - s.w (values 16..31).
fn qk_scales(head: vec4<u32>, b: u32, g: u32) -> vec4<f32> {
    if (QFORMAT == Q6_K) {
        // Scales 8h + 2j and 8h + 2j + 1 of group j of half h: d times a signed byte.
        let d = unpack2x16float(head.x).x;
        let si = 8u * (g >> 2u) + 2u * (g & 3u);
        let sw = w[b + 48u + si / 4u];
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

// The words holding the low bits (x) and the high bits (y) of values 4k..4k+3 of group g.
fn qk_words(b: u32, g: u32, k: u32) -> vec2<u32> {
    switch QFORMAT {
        case Q4_K: { // qs from byte 16, 32 bytes per pair of groups
            return vec2<u32>(w[b + 4u + 8u * (g >> 1u) + k], 0u);
        }
        case Q5_K: { // qh (32 bytes, one bit per group) from byte 16, qs from byte 48
            return vec2<u32>(w[b + 12u + 8u * (g >> 1u) + k], w[b + 4u + k]);
        }
        default: { // Q6_K: ql (64 bytes per half), qh from byte 128 (32 bytes per half)
            let h = g >> 2u;
            return vec2<u32>(w[b + 16u * h + 8u * (g & 1u) + k], w[b + 32u + 8u * h + k]);
        }
    }
}

// The quantized values of values 4k..4k+3 of group g (Q6_K: minus 32), from qk_words.
fn qk_quad(words: vec2<u32>, g: u32) -> vec4<f32> {
    switch QFORMAT {
        case Q4_K: { // low nibbles for even groups, high for odd
            return vec4<f32>(q_bytes((words.x >> (4u * (g & 1u))) & 0x0F0F0F0Fu));
        }
        case Q5_K: { // and bit g of each qh byte as the fifth bit
            let lo = (words.x >> (4u * (g & 1u))) & 0x0F0F0F0Fu;
            return vec4<f32>(q_bytes(lo | (((words.y >> g) & 0x01010101u) << 4u)));
        }
        default: { // nibble j / 2 of ql, bits 2j, 2j + 1 of qh (j = g % 4)
            let j = g & 3u;
            let lo = (words.x >> (4u * (j >> 1u))) & 0x0F0F0F0Fu;
            let q = lo | (((words.y >> (2u * j)) & 0x03030303u) << 4u);
            return vec4<f32>(vec4<i32>(q_bytes(q)) - vec4<i32>(32));
        }
    }
}

// The two groups of pair pc (0..3) of a K-quant superblock, which share their words.
fn qk_pair(pc: u32) -> vec2<u32> {
    if (QFORMAT == Q6_K) {
        let g = 4u * (pc >> 1u) + (pc & 1u);
        return vec2<u32>(g, g + 2u);
    }
    return vec2<u32>(2u * pc, 2u * pc + 1u);
}

// The 64 values of pair pc of the K-quant superblock at word b: elements 0..7 are group
// qk_pair(pc).x as in dequant_group, 8..15 group qk_pair(pc).y. Equal to two dequant_group
// calls, reading each word once.
fn dequant_pair(b: u32, pc: u32) -> array<vec4<f32>, 16> {
    var v: array<vec4<f32>, 16>;
    let gs = qk_pair(pc);
    let head = qk_head(b);
    let s0 = qk_scales(head, b, gs.x);
    let s1 = qk_scales(head, b, gs.y);
    for (var k = 0u; k < 8u; k++) {
        let words = qk_words(b, gs.x, k);
        let first = k < 4u;
        let c0 = select(s0.zw, s0.xy, first);
        let c1 = select(s1.zw, s1.xy, first);
        v[k] = qk_quad(words, gs.x) * c0.x - c0.y;
        v[k + 8u] = qk_quad(words, gs.y) * c1.x - c1.y;
    }
    return v;
}

// Chunked scan in matmul form, the outputs (pass 3 of 3, after linear_scan_mm_local and
// linear_scan_carry), for the kinds without the delta term. One workgroup per (chunk, head,
// tile of TV value rows) computes, for the chunk's tokens t and the rows i of its tile,
//   o_t,i = sum_j q_t,j e^{G_t,j} S0_i,j  +  sum_{s <= t} A_t,s v_s,i
//   A_t,s = sum_j q_t,j k_s,j e^{G_t,j - B_s,j}
// where S0 is the chunk's start state (from linear_scan_carry), B_t the log-decays summed
// from the chunk's start through token t and G_t = B_t (the output after the update). With
// BONUS (RWKV-6, the output before the update) G_t = B_{t-1}, A is strictly lower and its
// diagonal is q_t . (u * k_t).
//
// No factor e^{-B} is ever formed (with log-decays of -20 a token it would overflow after
// five tokens). The chunk is cut into sub-blocks of SB tokens, as fla does:
// * blocks of A below the diagonal (s in block b' < b, t in block b) are a matmul of
//   q^_t = q_t e^{G_t - B_(start of b)} and k^_s = k_s e^{B_(end of b') - B_s}, with the decay
//   between the two blocks e^{B_(start of b) - B_(end of b')} per key in between: each
//   factor is e^(a sum of log-decays) <= 1;
// * blocks on the diagonal are summed term by term with e^(the log-decays between s and t).
// Every exponent is a direct sum of the log-decays it spans, never a difference of two
// cumulative sums, so its rounding error is relative to itself (a difference of sums over
// a whole chunk of -20 decays would be off by ulp(640) = 6e-5 on weights near 1).
// The tile of A is summed over key tiles of TK in registers, then A times the value tile
// is the second matmul. Tokens past the end of the input and keys past DK read as zero.

#include "linear_recurrence.wgsl"

@group(0) @binding(6) var<storage, read> q: array<f32>;           // [T, qk_heads, DK]
@group(0) @binding(7) var<storage, read_write> start: array<f32>; // [chunks, H, dv, DK]
@group(0) @binding(8) var<storage, read_write> out: array<f32>;   // [T, H, dv]

const LC: u32 = 32u; // tokens per chunk at most (the launcher's chunk)
const SB: u32 = 4u;  // tokens per sub-block
const NB: u32 = 8u;  // sub-blocks per chunk: LC / SB, one per row of threads
const TK: u32 = 16u; // key dims per tile
const TV: u32 = 32u; // value rows per workgroup: 8 groups of 4

// Workgroup memory, per key tile: q, k, log-decays, q^, k^ [LC, TK], the start state
// [TV, TK] and the sub-block totals of the log-decays [NB, TK]; then A [LC, LC] and the
// values [LC, TV] over the first of them.
const Q_: u32 = 0u;
const K_: u32 = LC * TK;
const G_: u32 = 2u * LC * TK;
const QH_: u32 = 3u * LC * TK;
const KH_: u32 = 4u * LC * TK;
const S0_: u32 = 5u * LC * TK;
const DB_: u32 = 5u * LC * TK + TV * TK;
const A_: u32 = 0u;
const V_: u32 = LC * LC;
var<workgroup> sh: array<f32, 5u * LC * TK + TV * TK + NB * TK>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // ab (the delta term's input) is not read here; the phony use keeps its binding in the
    // layout, as the launchers bind the same inputs to every pass.
    _ = ab[0];
    let vtiles = (p.dv + TV - 1u) / TV;
    let g = group_index(wid, nwg);
    if (g >= p.chunks * p.heads * vtiles) {
        return;
    }
    let c = g / (p.heads * vtiles);
    let h = (g / vtiles) % p.heads;
    let i0 = (g % vtiles) * TV;
    let first = p.t0 + c * p.chunk;
    let n = min(p.chunk, p.tokens - c * p.chunk);
    // Each thread owns tokens rb*SB.. (sub-block rb) and, of A, the sub-block cb of s; of the
    // outputs, the value rows i0 + 4cb...
    let rb = lid / 8u;
    let cb = lid % 8u;
    var o: array<f32, 16>; // [token in rb, value row in cb]
    var a: array<f32, 16>; // [token in rb, token in cb]
    for (var e = 0u; e < 16u; e++) {
        o[e] = 0.0;
        a[e] = 0.0;
    }
    for (var j0 = 0u; j0 < DK; j0 += TK) {
        workgroupBarrier();
        for (var e = lid; e < LC * TK; e += 64u) {
            let t = e / TK;
            let j = j0 + e % TK;
            var qv = 0.0;
            var kv = 0.0;
            var gv = 0.0;
            if (t < n && j < DK) {
                let b = qk_base(first + t, h) + j;
                qv = q[b];
                kv = k[b];
                gv = log_decay(first + t, h, j);
            }
            sh[Q_ + e] = qv;
            sh[K_ + e] = kv;
            sh[G_ + e] = gv;
        }
        for (var e = lid; e < TV * TK; e += 64u) {
            let i = i0 + e / TK;
            let j = j0 + e % TK;
            var s0 = 0.0;
            if (i < p.dv && j < DK) {
                s0 = start[((c * p.heads + h) * p.dv + i) * DK + j];
            }
            sh[S0_ + e] = s0;
        }
        workgroupBarrier();
        // Per sub-block and key: q^ (decay from the block's start), k^ (to its end), total.
        for (var e = lid; e < NB * TK; e += 64u) {
            let b = e / TK;
            let j = e % TK;
            var pre = 0.0;
            for (var r = 0u; r < SB; r++) {
                let x = (b * SB + r) * TK + j;
                if (!BONUS) {
                    pre += sh[G_ + x];
                }
                sh[QH_ + x] = sh[Q_ + x] * exp(pre);
                if (BONUS) {
                    pre += sh[G_ + x];
                }
            }
            sh[DB_ + e] = pre;
            var suf = 0.0;
            for (var r = SB; r > 0u; r--) {
                let x = (b * SB + r - 1u) * TK + j;
                sh[KH_ + x] = sh[K_ + x] * exp(suf);
                suf += sh[G_ + x];
            }
        }
        workgroupBarrier();
        for (var j = 0u; j < TK; j++) {
            // Log-decay from the chunk's start to sub-block rb, and between sub-blocks cb, rb.
            var before = 0.0;
            var between = 0.0;
            for (var b = 0u; b < rb; b++) {
                let d = sh[DB_ + b * TK + j];
                before += d;
                if (b > cb) {
                    between += d;
                }
            }
            let decayed = exp(before);
            for (var tt = 0u; tt < SB; tt++) {
                let qg = sh[QH_ + (rb * SB + tt) * TK + j] * decayed;
                for (var ii = 0u; ii < 4u; ii++) {
                    o[tt * 4u + ii] += qg * sh[S0_ + (cb * 4u + ii) * TK + j];
                }
            }
            if (cb < rb) {
                let m = exp(between);
                for (var tt = 0u; tt < SB; tt++) {
                    let qm = sh[QH_ + (rb * SB + tt) * TK + j] * m;
                    for (var ss = 0u; ss < SB; ss++) {
                        a[tt * 4u + ss] += qm * sh[KH_ + (cb * SB + ss) * TK + j];
                    }
                }
            } else if (cb == rb) {
                for (var tt = 0u; tt < SB; tt++) {
                    let qt = sh[Q_ + (rb * SB + tt) * TK + j];
                    for (var ss = 0u; ss <= tt; ss++) {
                        let ks = sh[K_ + (rb * SB + ss) * TK + j];
                        if (BONUS && ss == tt) {
                            if (j0 + j < DK) {
                                a[tt * 4u + ss] += qt * consts[h * DK + j0 + j] * ks;
                            }
                            continue;
                        }
                        // Log-decays of tokens s+1 ..= t, or ..= t-1 with BONUS.
                        var x = 0.0;
                        let last = select(tt, tt - 1u, BONUS);
                        for (var r = ss + 1u; r <= last; r++) {
                            x += sh[G_ + (rb * SB + r) * TK + j];
                        }
                        a[tt * 4u + ss] += qt * ks * exp(x);
                    }
                }
            }
        }
    }
    workgroupBarrier();
    for (var tt = 0u; tt < SB; tt++) {
        for (var ss = 0u; ss < SB; ss++) {
            sh[A_ + (rb * SB + tt) * LC + cb * SB + ss] = a[tt * 4u + ss];
        }
    }
    for (var e = lid; e < LC * TV; e += 64u) {
        let s = e / TV;
        let i = i0 + e % TV;
        var x = 0.0;
        if (s < n && i < p.dv) {
            x = value(first + s, h, i);
        }
        sh[V_ + e] = x;
    }
    workgroupBarrier();
    for (var s = 0u; s < (rb + 1u) * SB; s++) {
        for (var tt = 0u; tt < SB; tt++) {
            let ats = sh[A_ + (rb * SB + tt) * LC + s];
            for (var ii = 0u; ii < 4u; ii++) {
                o[tt * 4u + ii] += ats * sh[V_ + s * TV + cb * 4u + ii];
            }
        }
    }
    for (var tt = 0u; tt < SB; tt++) {
        let t = rb * SB + tt;
        for (var ii = 0u; ii < 4u; ii++) {
            let i = i0 + cb * 4u + ii;
            if (t < n && i < p.dv) {
                out[((first + t) * p.heads + h) * p.dv + i] = o[tt * 4u + ii];
            }
        }
    }
}

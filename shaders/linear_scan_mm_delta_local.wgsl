// Chunked scan in matmul form with the delta term (RWKV-7's generalised delta rule, gated
// DeltaNet), pass 1 of 3 (then linear_scan_carry, then linear_scan_mm_delta): fla's WY / UT
// form of the diagonal-plus-low-rank recurrence. Within a chunk of LC tokens from a start
// state s0 (a row of S), with x_r = s_(r-1) . a_r (the state before token r's decay):
//   s_t = s0 G_1..t + sum_(r <= t) (x_r b_r + v_r k_r) G_(r+1)..t      (G: products of diag(w))
//   X = Aab X + Aak V + A~ s0^T   so   X = T (Aak V + A~ s0^T),  T = (I - Aab)^-1
// with, for r < t, Aab[t, r] = sum_j a_t,j b_r,j e^(log-decays r+1 ..= t-1) (Aak: k for b) and
// A~_t = a_t G_1..t-1. T is unit lower triangular, found by forward substitution on [LC, LC].
// This pass writes, per (chunk, head),
//   local[c, h, i, :]  = sum_r (X0_r,i b^_r + v_r,i k^_r)   the chunk's effect from zero,
//                        X0 = (T Aak) V,  b^_r = b_r G_(r+1)..end (k^ alike);
//   trans[c, h]        the chunk's transition P = diag(G_1..end) + A~^T W, W = T^T b^, in WY
//                      form for linear_scan_carry (WY = LC): A~ [LC, DK], W [LC, DK] and the
//                      chunk's summed log-decays [DK];
//   and for linear_scan_mm_delta (the layout of wy_base): U = T A~ [LC, DK], X0 [LC, dv],
//   Aqb [LC, LC] and Aqk [LC, LC] (r <= t, log-decays r+1 ..= t: the output after the update).
// The four A matrices are built over key tiles from sub-blocks of SB tokens, as
// linear_scan_mm.wgsl builds its A: below the diagonal a matmul of x^_t = x_t e^(decays from
// the sub-block's start to t, or t-1) and y^_r = y_r e^(decays after r to its sub-block's
// end) times e^(the decays of the sub-blocks in between); on the diagonal term by term. Every
// exponent is a direct sum of log-decays <= 0: no inverse decay is formed, nothing overflows.
// One workgroup per (chunk, head); tokens past the input's end and keys past DK read as 0.

#include "linear_recurrence.wgsl"

@group(0) @binding(6) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(7) var<storage, read> q: array<f32>; // [T, qk_heads, DK]

const LC: u32 = 16u; // tokens per chunk at most (the launcher's chunk)
const SB: u32 = 4u;  // tokens per sub-block: LC / SB = 4 sub-blocks
const TK: u32 = 16u; // keys per tile
const TV: u32 = 16u; // value rows per tile
const N: u32 = 256u; // one tile: LC * TK = LC * TV = LC * LC

// Workgroup memory. Building the A matrices, per key tile: q, a, k, b, log-decays, q^, a^,
// k^, b^ [LC, TK] and the sub-block totals of the log-decays [LC / SB, TK].
const XQ_: u32 = 0u;
const XA_: u32 = N;
const YK_: u32 = 2u * N;
const YB_: u32 = 3u * N;
const G_: u32 = 4u * N;
const QH_: u32 = 5u * N;
const AH_: u32 = 6u * N;
const KH_: u32 = 7u * N;
const BH_: u32 = 8u * N;
const DB_: u32 = 9u * N;
// Then: Aab (later T Aak), Aak, T [LC, LC]; a value tile and its X0 [LC, TV]; b^, k^, A~
// and log-decay tiles [LC, TK].
const M_: u32 = 0u;
const AK_: u32 = N;
const T_: u32 = 2u * N;
const V_: u32 = 3u * N;
const X_: u32 = 4u * N;
const BT_: u32 = 5u * N;
const KT_: u32 = 6u * N;
const AT_: u32 = 7u * N;
const GT_: u32 = 8u * N;
var<workgroup> sh: array<f32, 9u * N + 4u * TK>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    if (g >= p.chunks * p.heads) {
        return;
    }
    let c = g / p.heads;
    let h = g % p.heads;
    let first = p.t0 + c * p.chunk;
    let n = min(p.chunk, p.tokens - c * p.chunk);
    let wy = wy_base(c, h, LC);

    // The four A matrices: thread (m, rb, cb) sums matrix m's block of tokens t in sub-block
    // rb and r in sub-block cb. m = 0: Aab, 1: Aak (x = a, strict), 2: Aqb, 3: Aqk (x = q).
    let m = lid / 16u;
    let rb = (lid / 4u) % 4u;
    let cb = lid % 4u;
    let strict = m < 2u;
    let xr = select(XQ_, XA_, strict);
    let xh = select(QH_, AH_, strict);
    let yr = select(YK_, YB_, m % 2u == 0u);
    let yh = select(KH_, BH_, m % 2u == 0u);
    var acc: array<f32, 16>; // [t in rb, r in cb]
    for (var e = 0u; e < 16u; e++) {
        acc[e] = 0.0;
    }
    for (var j0 = 0u; j0 < DK; j0 += TK) {
        workgroupBarrier();
        for (var e = lid; e < N; e += 64u) {
            let t = e / TK;
            let j = j0 + e % TK;
            var qv = 0.0;
            var av = 0.0;
            var kv = 0.0;
            var bv = 0.0;
            var gv = 0.0;
            if (t < n && j < DK) {
                let qk = qk_base(first + t, h) + j;
                qv = q[qk];
                kv = k[qk];
                av = ab_at(first + t, h, 0u, j);
                bv = ab_at(first + t, h, 1u, j);
                gv = log_decay(first + t, h, j);
            }
            sh[XQ_ + e] = qv;
            sh[XA_ + e] = av;
            sh[YK_ + e] = kv;
            sh[YB_ + e] = bv;
            sh[G_ + e] = gv;
        }
        workgroupBarrier();
        // Per (sub-block, key), one per thread: a^ through t-1, q^ through t, k^ and b^
        // after r, and the sub-block's total.
        {
            let b = lid / TK;
            let j = lid % TK;
            var pre = 0.0;
            for (var r = 0u; r < SB; r++) {
                let x = (b * SB + r) * TK + j;
                sh[AH_ + x] = sh[XA_ + x] * exp(pre);
                pre += sh[G_ + x];
                sh[QH_ + x] = sh[XQ_ + x] * exp(pre);
            }
            sh[DB_ + lid] = pre;
            var suf = 0.0;
            for (var r = SB; r > 0u; r--) {
                let x = (b * SB + r - 1u) * TK + j;
                let f = exp(suf);
                sh[KH_ + x] = sh[YK_ + x] * f;
                sh[BH_ + x] = sh[YB_ + x] * f;
                suf += sh[G_ + x];
            }
        }
        workgroupBarrier();
        for (var j = 0u; j < TK; j++) {
            if (cb < rb) {
                var between = 0.0;
                for (var b = cb + 1u; b < rb; b++) {
                    between += sh[DB_ + b * TK + j];
                }
                let f = exp(between);
                for (var tt = 0u; tt < SB; tt++) {
                    let xv = sh[xh + (rb * SB + tt) * TK + j] * f;
                    for (var ss = 0u; ss < SB; ss++) {
                        acc[tt * 4u + ss] += xv * sh[yh + (cb * SB + ss) * TK + j];
                    }
                }
            } else if (cb == rb) {
                for (var tt = 0u; tt < SB; tt++) {
                    let xv = sh[xr + (rb * SB + tt) * TK + j];
                    // r < t (strict) or r <= t; the log-decays of tokens r+1 ..= t (or t-1).
                    let end = select(tt + 1u, tt, strict);
                    for (var ss = 0u; ss < end; ss++) {
                        var x = 0.0;
                        for (var r = ss + 1u; r < end; r++) {
                            x += sh[G_ + (rb * SB + r) * TK + j];
                        }
                        acc[tt * 4u + ss] += xv * sh[yr + (rb * SB + ss) * TK + j] * exp(x);
                    }
                }
            }
        }
    }
    workgroupBarrier();
    let aq = wy + LC * DK + LC * p.dv;
    for (var tt = 0u; tt < SB; tt++) {
        for (var ss = 0u; ss < SB; ss++) {
            let e = (rb * SB + tt) * LC + cb * SB + ss;
            let x = acc[tt * 4u + ss];
            switch m {
                case 0u: { sh[M_ + e] = x; }
                case 1u: { sh[AK_ + e] = x; }
                case 2u: { scratch[aq + e] = x; }
                default: { scratch[aq + N + e] = x; }
            }
        }
    }
    workgroupBarrier();

    // T = (I - Aab)^-1 by forward substitution: row t = e_t + sum_(l < t) Aab[t, l] T[l, :].
    for (var t = 0u; t < LC; t++) {
        if (lid < LC) {
            var x = select(0.0, 1.0, lid == t);
            for (var l = lid; l < t; l++) {
                x += sh[M_ + t * LC + l] * sh[T_ + l * LC + lid];
            }
            sh[T_ + t * LC + lid] = x;
        }
        workgroupBarrier();
    }
    // T Aak, over Aab (T[t, l] is 0 for l > t, Aak[l, r] for r >= l).
    for (var e = lid; e < N; e += 64u) {
        let t = e / LC;
        let r = e % LC;
        var x = 0.0;
        for (var l = r + 1u; l <= t; l++) {
            x += sh[T_ + t * LC + l] * sh[AK_ + l * LC + r];
        }
        sh[M_ + e] = x;
    }
    workgroupBarrier();

    // Per key tile: A~ (a decayed from the chunk's start through the token before), b^ and
    // k^ (b, k decayed to its end) from tiles loaded in parallel; U = T A~ for the outputs;
    // A~, W = T^T b^ and the summed log-decays for the carry; then per value tile
    // X0 = (T Aak) V (written once) and local = X0^T b^ + V^T k^.
    let trans = p.chunks * p.heads * p.dv * DK + (c * p.heads + h) * (2u * LC + 1u) * DK;
    for (var j0 = 0u; j0 < DK; j0 += TK) {
        workgroupBarrier();
        for (var e = lid; e < N; e += 64u) {
            let t = e / TK;
            let j = j0 + e % TK;
            var av = 0.0;
            var bv = 0.0;
            var kv = 0.0;
            var gv = 0.0;
            if (t < n && j < DK) {
                av = ab_at(first + t, h, 0u, j);
                bv = ab_at(first + t, h, 1u, j);
                kv = k[qk_base(first + t, h) + j];
                gv = log_decay(first + t, h, j);
            }
            sh[AT_ + e] = av;
            sh[BT_ + e] = bv;
            sh[KT_ + e] = kv;
            sh[GT_ + e] = gv;
        }
        workgroupBarrier();
        if (lid < TK) {
            var pre = 0.0;
            for (var t = 0u; t < LC; t++) {
                let x = t * TK + lid;
                sh[AT_ + x] *= exp(pre);
                pre += sh[GT_ + x];
            }
            if (j0 + lid < DK) {
                scratch[trans + 2u * LC * DK + j0 + lid] = pre;
            }
            var suf = 0.0;
            for (var r = LC; r > 0u; r--) {
                let x = (r - 1u) * TK + lid;
                let f = exp(suf);
                sh[BT_ + x] *= f;
                sh[KT_ + x] *= f;
                suf += sh[GT_ + x];
            }
        }
        workgroupBarrier();
        for (var e = lid; e < N; e += 64u) {
            let t = e / TK;
            let j = j0 + e % TK;
            var u = 0.0;
            for (var r = 0u; r <= t; r++) {
                u += sh[T_ + t * LC + r] * sh[AT_ + r * TK + e % TK];
            }
            var w = 0.0;
            for (var r = t; r < LC; r++) {
                w += sh[T_ + r * LC + t] * sh[BT_ + r * TK + e % TK];
            }
            if (j < DK) {
                scratch[wy + t * DK + j] = u;
                scratch[trans + t * DK + j] = sh[AT_ + e];
                scratch[trans + (LC + t) * DK + j] = w;
            }
        }
        for (var i0 = 0u; i0 < p.dv; i0 += TV) {
            workgroupBarrier();
            for (var e = lid; e < N; e += 64u) {
                let t = e / TV;
                let i = i0 + e % TV;
                var x = 0.0;
                if (t < n && i < p.dv) {
                    x = value(first + t, h, i);
                }
                sh[V_ + e] = x;
            }
            workgroupBarrier();
            for (var e = lid; e < N; e += 64u) {
                let t = e / TV;
                let i = i0 + e % TV;
                var x = 0.0;
                for (var r = 0u; r < t; r++) {
                    x += sh[M_ + t * LC + r] * sh[V_ + r * TV + e % TV];
                }
                sh[X_ + e] = x;
                if (j0 == 0u && i < p.dv) {
                    scratch[wy + LC * DK + t * p.dv + i] = x;
                }
            }
            workgroupBarrier();
            for (var e = lid; e < N; e += 64u) {
                let ii = e / TK;
                let jj = e % TK;
                var x = 0.0;
                for (var r = 0u; r < LC; r++) {
                    x += sh[X_ + r * TV + ii] * sh[BT_ + r * TK + jj]
                        + sh[V_ + r * TV + ii] * sh[KT_ + r * TK + jj];
                }
                let i = i0 + ii;
                let j = j0 + jj;
                if (i < p.dv && j < DK) {
                    scratch[((c * p.heads + h) * p.dv + i) * DK + j] = x;
                }
            }
        }
    }
}

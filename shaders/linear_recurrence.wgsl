// Shared by linear_scan.wgsl and linear_scan_local.wgsl (included): the inputs of the gated
// linear recurrence and one token's update of one row of a head's state.
//
// Per head h the state S is [dv, dk]; row i (value dim) is updated per token t as
//   s_i <- s_i * w_t + (s_i . a_t) b_t + v_t,i k_t        (w_t = exp(log-decay), per key dim)
// The delta term (s . a) b is on with DELTA (RWKV-7's generalised delta rule). The log-decay is
//   DECAY 0: none (w = 1, plain linear attention)
//   DECAY 1: a gate tensor g [T, H, GK] (GLA, RWKV-6, RWKV-7)
//   DECAY 2: dt [T, H] times a per-head constant A [H, GK] (Mamba: dt * A); the value is
//            scaled by dt too (Mamba's discretisation: the input enters as dt * B * x)
// where GK is dk (a decay per key dim) or 1 (one scalar per head, broadcast: Mamba-2).
// q and k have qk_heads heads, each shared by heads / qk_heads state heads (Mamba's groups).
// Decays only ever multiply by w <= 1, so no inverse decay is formed and nothing overflows.
// They apply as s + s * (w - 1) with w - 1 = expm1(log w) computed to full relative
// precision: with long memory (w = 1 - 1e-4) an f32 w itself would be off by up to 2^-24,
// a relative error of 6e-4 in the forgetting rate that compounds over the sequence.
//
// Requires consts: DK (key dim), DECAY, DELTA, BONUS. Bindings 0..5 are declared here.

struct Params {
    tokens: u32,     // tokens in this dispatch
    t0: u32,         // index of its first token in the input arrays
    heads: u32,      // state heads H
    qk_heads: u32,
    dv: u32,
    gk: u32,         // decay values per head: dk or 1
    chunk: u32,      // tokens per chunk
    chunks: u32,     // chunks in this dispatch
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;      // [T, qk_heads, DK]
@group(0) @binding(2) var<storage, read> v: array<f32>;      // [T, H, dv]
@group(0) @binding(3) var<storage, read> decay: array<f32>;  // g [T, H, GK] or dt [T, H]
@group(0) @binding(4) var<storage, read> consts: array<f32>; // A [H, GK] or bonus u [H, DK]
@group(0) @binding(5) var<storage, read> ab: array<f32>;     // [T, H, 2, DK]: a then b

fn qk_base(t: u32, h: u32) -> u32 {
    return (t * p.qk_heads + h / (p.heads / p.qk_heads)) * DK;
}

fn log_decay(t: u32, h: u32, j: u32) -> f32 {
    let jj = select(0u, j, p.gk > 1u);
    if (DECAY == 1u) {
        return decay[(t * p.heads + h) * p.gk + jj];
    }
    if (DECAY == 2u) {
        return decay[t * p.heads + h] * consts[h * p.gk + jj];
    }
    return 0.0;
}

// The delta term's a (which = 0) or b (which = 1) at token t, head h, key j.
fn ab_at(t: u32, h: u32, which: u32, j: u32) -> f32 {
    return ab[((t * p.heads + h) * 2u + which) * DK + j];
}

// Where the delta kind's matmul form (linear_scan_mm_delta_local.wgsl, chunks of up to lc
// tokens) keeps what its outputs pass reads, per (chunk, head): U [lc, DK], X0 [lc, dv],
// Aqb [lc, lc], Aqk [lc, lc], after the local rows and the transitions (2 lc + 1 rows of DK).
fn wy_base(c: u32, h: u32, lc: u32) -> u32 {
    let after = p.chunks * p.heads * (p.dv + 2u * lc + 1u) * DK;
    return after + (c * p.heads + h) * lc * (DK + p.dv + 2u * lc);
}

// Value i of head h at token t, as it enters the state.
fn value(t: u32, h: u32, i: u32) -> f32 {
    let x = v[(t * p.heads + h) * p.dv + i];
    if (DECAY == 2u) {
        return x * decay[t * p.heads + h];
    }
    return x;
}

// One token's update of a state row `s` with value `vi` (0 for rows of a transition matrix).
fn update_row(s: ptr<function, array<f32, DK>>, t: u32, h: u32, vi: f32) {
    let kb = qk_base(t, h);
    var sa = 0.0;
    let abase = (t * p.heads + h) * 2u * DK;
    if (DELTA) {
        for (var j = 0u; j < DK; j++) {
            sa += (*s)[j] * ab[abase + j];
        }
    }
    for (var j = 0u; j < DK; j++) {
        var x = (*s)[j];
        if (DECAY != 0u) {
            x += x * expm1_neg(log_decay(t, h, j));
        }
        if (DELTA) {
            x += sa * ab[abase + DK + j];
        }
        (*s)[j] = x + vi * k[kb + j];
    }
}

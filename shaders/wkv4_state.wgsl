// RWKV-4's WKV recurrence per channel (transformers' rwkv_linear_attention_cpu), shared by
// wkv4, wkv4_local and wkv4_carry. A state (aa, bb, pp) stands for the decayed sums
//   A = aa * e^pp = sum_s e^{w (t-1-s) + k_s} v_s,   B = bb * e^pp = sum_s e^{w (t-1-s) + k_s}
// over the tokens seen so far (HF's num_state, den_state, max_state). bb is a sum of
// positive terms one of which is 1 once a token was seen, so bb == 0 marks an empty state
// (the session zero-initialises states; HF starts pp at -1e38): aa and pp are then ignored
// and no exp of a huge difference (or 0/0) is ever formed.

struct Params {
    tokens: u32,   // tokens of this dispatch (from t0)
    channels: u32,
    t0: u32,       // first token of this dispatch
    chunk: u32,    // tokens per chunk
    chunks: u32,   // chunks of this dispatch
    c0: u32,       // carry: first chunk this dispatch walks
    c1: u32,       // carry: one past its last chunk
    _p: u32,
}

struct Wkv {
    aa: f32,
    bb: f32,
    pp: f32,
}

// wkv_t = (e^{pp-p} aa + e^{u+k-p} v) / (e^{pp-p} bb + e^{u+k-p}),  p = max(pp, u+k);
// `uk` = u + k_t. From an empty state the output is v.
fn wkv_out(s: Wkv, uk: f32, v: f32) -> f32 {
    if (s.bb == 0.0) {
        return v;
    }
    let p = max(s.pp, uk);
    let e1 = exp(s.pp - p);
    let e2 = exp(uk - p);
    return (e1 * s.aa + e2 * v) / (e1 * s.bb + e2);
}

// The state after one token: q = max(pp + w, k), aa = e^{pp+w-q} aa + e^{k-q} v, etc.
fn wkv_update(s: Wkv, w: f32, k: f32, v: f32) -> Wkv {
    if (s.bb == 0.0) {
        return Wkv(v, 1.0, k);
    }
    let q = max(s.pp + w, k);
    let e1 = exp(s.pp + w - q);
    let e2 = exp(k - q);
    return Wkv(e1 * s.aa + e2 * v, e1 * s.bb + e2, q);
}

// State `a`, then tokens whose effect on an empty state is `b`, where `decay` = w * (their
// count): A = e^decay A_a + A_b, B likewise, in max-trick form.
fn wkv_combine(a: Wkv, b: Wkv, decay: f32) -> Wkv {
    if (a.bb == 0.0) {
        return b;
    }
    let pa = a.pp + decay;
    if (b.bb == 0.0) {
        return Wkv(a.aa, a.bb, pa);
    }
    let q = max(pa, b.pp);
    let e1 = exp(pa - q);
    let e2 = exp(b.pp - q);
    return Wkv(e1 * a.aa + e2 * b.aa, e1 * a.bb + e2 * b.bb, q);
}

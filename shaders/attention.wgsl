// Tiled attention with online softmax (flash-style) for prefill. One workgroup holds BQ query
// rows of one query head (one thread per query), streams the K/V cache of that head's KV
// head (GQA: kv_head = head / (heads / kv_heads), no K/V copies) through workgroup memory in
// tiles of BK keys, and keeps a running max, denominator and accumulator per query.
// Queries are at absolute positions step.pos + t; with CAUSAL a query sees keys <= itself.

struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,   // floats per token row of q/out: heads * HEAD_DIM
    kv_stride: u32,  // floats per cached position: kv_heads * HEAD_DIM
    causal: u32,
    scale: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> k_tile: array<f32, BK * HEAD_DIM>;
var<workgroup> v_tile: array<f32, BK * HEAD_DIM>;

@compute @workgroup_size(BQ)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.y;
    let kv_head = head / (p.heads / p.kv_heads);
    let qi = wid.x * BQ + lid;
    let valid = qi < p.n_tokens;
    let q_abs = step.pos + qi;
    let kv_len = step.pos + p.n_tokens;
    var key_end = kv_len;
    if (p.causal != 0u) {
        key_end = min(kv_len, step.pos + min(wid.x * BQ + BQ, p.n_tokens));
    }

    var qv: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        acc[d] = 0.0;
        qv[d] = 0.0;
        if (valid) {
            qv[d] = q[qi * p.q_stride + head * HEAD_DIM + d] * p.scale;
        }
    }
    var m = -3.0e38;
    var l = 0.0;

    for (var kb = 0u; kb < key_end; kb += BK) {
        for (var idx = lid; idx < BK * HEAD_DIM; idx += BQ) {
            let key = kb + idx / HEAD_DIM;
            let src = key * p.kv_stride + kv_head * HEAD_DIM + idx % HEAD_DIM;
            var kv = 0.0;
            var vv = 0.0;
            if (key < key_end) {
                kv = k_cache[src];
                vv = v_cache[src];
            }
            k_tile[idx] = kv;
            v_tile[idx] = vv;
        }
        workgroupBarrier();
        if (valid) {
            for (var j = 0u; j < BK; j++) {
                let key = kb + j;
                if (key >= key_end || (p.causal != 0u && key > q_abs)) {
                    break;
                }
                var s = 0.0;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    s += qv[d] * k_tile[j * HEAD_DIM + d];
                }
                let m_new = max(m, s);
                let corr = exp(m - m_new);
                let pj = exp(s - m_new);
                l = l * corr + pj;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    acc[d] = acc[d] * corr + pj * v_tile[j * HEAD_DIM + d];
                }
                m = m_new;
            }
        }
        workgroupBarrier();
    }
    if (valid) {
        let inv = 1.0 / l;
        for (var d = 0u; d < HEAD_DIM; d++) {
            out[qi * p.q_stride + head * HEAD_DIM + d] = acc[d] * inv;
        }
    }
}

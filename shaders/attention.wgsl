// Tiled attention with online softmax (flash-style) for prefill. One workgroup holds QP query
// positions of HG query heads that share one KV head (GQA: kv_head = head / (heads /
// kv_heads); HG is all of them, or 1), one thread per query: invocation lid takes position
// lid / HG of the workgroup and head lid % HG of its group. It streams the KV head through
// workgroup memory in tiles of BK keys, each tile loaded once for all HG heads, and keeps a
// running max, denominator and accumulator per query.
//
// Queries are at absolute positions step.pos + t. Which keys a query at p sees, and in which
// cache row each key lives, follow runtime/src/kv.rs: positions [0, min(sinks, lo)) and
// [lo, p] with lo = max(0, p + 1 - window); row(j) = j below sinks, else sinks + (j - sinks)
// % ring. Without causal masking every row of the cache is seen (no window).
//
// ROPE (attention sinks): q and cached keys are un-rotated and rotated here with positions
// inside the cache. A sink key j sits at cache position j and is scored against q rotated by
// the query's cache position; for the recent keys only the distance p - j matters, so keys
// are rotated by j - c0 and q by p - c0, with c0 a per-workgroup offset that keeps both small.
//
// SPARSE (one head per workgroup, QP = 64, the mask's block size): workgroups cover whole
// 64-position query blocks (x = block - step.pos / 64) and walk only the key blocks their
// head's row of the block mask lists (runtime/src/block_mask.rs).

struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,   // floats per token row of q/out: heads * HEAD_DIM
    kv_stride: u32,  // floats per cache row: kv_heads * HEAD_DIM
    causal: u32,
    scale: f32,
    sinks: u32,
    window: u32,     // 0xffffffff: none
    ring: u32,
    rot_half: u32,   // ROPE: rotated pairs per head
    blocks: u32,     // SPARSE: query blocks per head in the mask
    softcap: f32,    // > 0: scores soft-capped (soft_cap)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(7) var<storage, read> mask: array<u32>;

// Gemma 2's logit soft-capping of a scaled score: cap * tanh(s / cap) (tanh's argument
// clamped where tanh is 1 in f32, as some drivers' tanh overflows to NaN beyond).
fn soft_cap(s: f32) -> f32 {
    return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0));
}

// Tiles and per-query vectors hold vec4s and the dot products are unrolled four vec4s at a
// time (HEAD_DIM is a multiple of 16), so a thread loops about 1 + HEAD_DIM / 8 times per
// key: CPU adapters (llvmpipe ends an invocation after 65535 loop iterations) then take
// this kernel for thousands of keys (see attention::tiled_fits).
const HD4: u32 = HEAD_DIM / 4u;
const SINK4: u32 = (SINK_DIM + 3u) / 4u;

var<workgroup> k_tile: array<vec4<f32>, BK * HD4>;
var<workgroup> v_tile: array<vec4<f32>, BK * HD4>;
var<workgroup> block_range: vec2<u32>;
var<workgroup> block_col: u32;

// Per query: q for recent keys, q for sink keys (ROPE only), accumulator, max, denominator.
var<private> q_recent: array<vec4<f32>, HD4>;
var<private> q_sink: array<vec4<f32>, SINK4>;
var<private> acc: array<vec4<f32>, HD4>;
var<private> m: f32;
var<private> l: f32;

fn kv_row(j: u32) -> u32 {
    if (j < p.sinks) {
        return j;
    }
    return p.sinks + (j - p.sinks) % p.ring;
}

fn window_lo(pos: u32) -> u32 {
    if (p.window == 0xffffffffu || pos + 1u <= p.window) {
        return 0u;
    }
    return pos + 1u - p.window;
}

// The pair (a, b) of a rotate-half RoPE head, turned by pos * inv_freq[i].
fn rope_pair(a: f32, b: f32, pos: u32, i: u32) -> vec2<f32> {
    let cs = sin_cos(f32(pos) * inv_freq[i]);
    return vec2<f32>(a * cs.x - b * cs.y, b * cs.x + a * cs.y);
}

fn rotate_tile(k0: u32, shift: u32, lid: u32) {
    for (var idx = lid; idx < BK * p.rot_half; idx += QP * HG) {
        let at = (idx / p.rot_half) * HEAD_DIM + idx % p.rot_half;
        let b = at + p.rot_half;
        let r = rope_pair(k_tile[at / 4u][at % 4u], k_tile[b / 4u][b % 4u],
                          k0 + idx / p.rot_half - shift, idx % p.rot_half);
        k_tile[at / 4u][at % 4u] = r.x;
        k_tile[b / 4u][b % 4u] = r.y;
    }
}

fn load4(cache_is_k: bool, at: u32) -> vec4<f32> {
    if (cache_is_k) {
        return vec4<f32>(k_cache[at], k_cache[at + 1u], k_cache[at + 2u], k_cache[at + 3u]);
    }
    return vec4<f32>(v_cache[at], v_cache[at + 1u], v_cache[at + 2u], v_cache[at + 3u]);
}

// Stream keys [k0, k1) through the tiles; this thread's query takes key j when
// first <= j < end. sink: score with q_sink. shift: ROPE rotates key j by j - shift.
fn attend(k0: u32, k1: u32, kv_head: u32, lid: u32, valid: bool, first: u32, end: u32,
          sink: bool, shift: u32) {
    for (var kb = k0; kb < k1; kb += BK) {
        for (var idx = lid; idx < BK * HD4; idx += QP * HG) {
            let key = kb + idx / HD4;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (key < k1) {
                let src = kv_row(key) * p.kv_stride + kv_head * HEAD_DIM + 4u * (idx % HD4);
                kv = load4(true, src);
                vv = load4(false, src);
            }
            k_tile[idx] = kv;
            v_tile[idx] = vv;
        }
        workgroupBarrier();
        if (ROPE) {
            rotate_tile(kb, shift, lid);
            workgroupBarrier();
        }
        if (valid) {
            for (var j = 0u; j < BK; j++) {
                let key = kb + j;
                if (key >= k1 || key >= end) {
                    break;
                }
                if (key < first) {
                    continue;
                }
                let t = j * HD4;
                var s = 0.0;
                if (sink) {
                    for (var d = 0u; d < SINK4; d += 4u) {
                        s += dot(q_sink[d], k_tile[t + d]) + dot(q_sink[d + 1u], k_tile[t + d + 1u])
                            + dot(q_sink[d + 2u], k_tile[t + d + 2u])
                            + dot(q_sink[d + 3u], k_tile[t + d + 3u]);
                    }
                } else {
                    for (var d = 0u; d < HD4; d += 4u) {
                        s += dot(q_recent[d], k_tile[t + d])
                            + dot(q_recent[d + 1u], k_tile[t + d + 1u])
                            + dot(q_recent[d + 2u], k_tile[t + d + 2u])
                            + dot(q_recent[d + 3u], k_tile[t + d + 3u]);
                    }
                }
                if (p.softcap > 0.0) {
                    s = soft_cap(s);
                }
                let m_new = max(m, s);
                let corr = exp(m - m_new);
                let pj = exp(s - m_new);
                l = l * corr + pj;
                for (var d = 0u; d < HD4; d += 4u) {
                    acc[d] = acc[d] * corr + pj * v_tile[t + d];
                    acc[d + 1u] = acc[d + 1u] * corr + pj * v_tile[t + d + 1u];
                    acc[d + 2u] = acc[d + 2u] * corr + pj * v_tile[t + d + 2u];
                    acc[d + 3u] = acc[d + 3u] * corr + pj * v_tile[t + d + 3u];
                }
                m = m_new;
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(QP * HG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.y * HG + lid % HG;
    let kv_head = wid.y * HG / (p.heads / p.kv_heads);
    let kv_len = step.pos + p.n_tokens;
    // Absolute position of this thread's query and of the workgroup's first one.
    var first_q = step.pos + wid.x * QP;
    if (SPARSE) {
        first_q = (step.pos / QP + wid.x) * QP;
    }
    if (first_q >= kv_len) {
        return;
    }
    let q_abs = first_q + lid / HG;
    let valid = q_abs >= step.pos && q_abs < kv_len;
    let last_q = min(first_q + QP, kv_len) - 1u;
    let qi = q_abs - step.pos;

    for (var d = 0u; d < HD4; d++) {
        acc[d] = vec4<f32>(0.0);
        q_recent[d] = vec4<f32>(0.0);
        if (valid) {
            let at = qi * p.q_stride + head * HEAD_DIM + 4u * d;
            q_recent[d] = vec4<f32>(q[at], q[at + 1u], q[at + 2u], q[at + 3u]) * p.scale;
        }
    }
    m = -3.0e38;
    l = 0.0;

    if (p.causal == 0u) {
        // Bidirectional: every row of the (linear) cache, including positions after this
        // chunk that an earlier run cached (diffusion's block cache).
        let rows = p.sinks + p.ring;
        attend(0u, rows, kv_head, lid, valid, 0u, rows, false, 0u);
    } else if (SPARSE) {
        let row = head * p.blocks + first_q / QP;
        if (lid == 0u) {
            block_range = vec2<u32>(mask[row], mask[row + 1u]);
        }
        let range = workgroupUniformLoad(&block_range);
        for (var b = range.x; b < range.y; b++) {
            if (lid == 0u) {
                block_col = mask[p.heads * p.blocks + 1u + b];
            }
            let col = workgroupUniformLoad(&block_col);
            attend(col * QP, min((col + 1u) * QP, last_q + 1u), kv_head, lid, valid, 0u,
                   q_abs + 1u, false, 0u);
        }
    } else {
        let lo = window_lo(q_abs);
        let sink_end = min(p.sinks, lo);
        let lo_first = window_lo(first_q);
        let sink_end_last = min(p.sinks, window_lo(last_q));
        let c0 = lo_first - min(p.sinks, lo_first);
        if (ROPE) {
            for (var d = 0u; d < SINK4; d++) {
                q_sink[d] = q_recent[d];
            }
            // q_sink by the query's cache position, q_recent by p - c0 (see the header).
            let q_cache_pos = sink_end + q_abs - lo;
            for (var i = 0u; i < p.rot_half; i++) {
                let b = i + p.rot_half;
                let r = rope_pair(q_recent[i / 4u][i % 4u], q_recent[b / 4u][b % 4u],
                                  q_abs - c0, i);
                q_recent[i / 4u][i % 4u] = r.x;
                q_recent[b / 4u][b % 4u] = r.y;
                let t = rope_pair(q_sink[i / 4u][i % 4u], q_sink[b / 4u][b % 4u], q_cache_pos, i);
                q_sink[i / 4u][i % 4u] = t.x;
                q_sink[b / 4u][b % 4u] = t.y;
            }
        }
        if (sink_end_last > 0u) {
            attend(0u, sink_end_last, kv_head, lid, valid, 0u, sink_end, true, 0u);
        }
        attend(lo_first, last_q + 1u, kv_head, lid, valid, lo, q_abs + 1u, false, c0);
    }

    if (valid) {
        let inv = 1.0 / l;
        for (var d = 0u; d < HD4; d++) {
            let at = qi * p.q_stride + head * HEAD_DIM + 4u * d;
            let o = acc[d] * inv;
            out[at] = o.x;
            out[at + 1u] = o.y;
            out[at + 2u] = o.z;
            out[at + 3u] = o.w;
        }
    }
}

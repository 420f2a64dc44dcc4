// Token sampling on the GPU, so decode reads back one id instead of the logits.
// One workgroup per row: workgroup r samples row r after `offset` into out[r]. Row 0 draws
// with the step's seed; row r > 0 with the seed the decode step at pos + r would have, so a
// pass that samples every row of a drafted run (speculative verification) draws each token
// exactly as plain decoding would from the same logits.
// PAGED (a batched step, shaders/batch.wgsl): row r is sequence r's pick, drawn with its own
// seed, top_k, temperature and top_p from the batch instead of the step's.
// Greedy (temperature 0 or top_k 1): argmax, ties to the lowest id.
// Otherwise: p_i = exp((l_i - max) / T); the top-k and top-p cut-offs are found by a
// bitwise search over order-preserving u32 keys of the logits (exact counts, 32 passes);
// then a uniform draw from pcg_hash(seed) picks a token by an ordered prefix sum.

struct Params { n: u32, offset: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
#if PAGED
#include "batch.wgsl"
@group(0) @binding(4) var<uniform> batch: Batch;
#endif

const WG: u32 = 256u;
var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> uni_f: f32;
var<workgroup> uni_u: u32;

fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Larger float -> larger key.
fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn sum_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_f[lid] += red_f[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        uni_f = red_f[0];
    }
    return workgroupUniformLoad(&uni_f);
}

fn sum_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_u[lid] += red_u[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        uni_u = red_u[0];
    }
    return workgroupUniformLoad(&uni_u);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x;
    let base = p.offset + row * p.n;
    var seed = select(pcg_hash(step.seed_base ^ pcg_hash(step.pos + row)), step.seed, row == 0u);
    var top_k = step.top_k;
    var temperature = step.temperature;
    var top_p = step.top_p;
#if PAGED
    seed = batch.picks[row].y;
    top_k = batch.picks[row].z;
    temperature = bitcast<f32>(batch.picks[row].w);
    top_p = bitcast<f32>(batch.pick_p[row].x);
#endif
    // Argmax with ties to the lowest index.
    var best_v = -3.4e38;
    var best_i = 0xffffffffu;
    for (var i = lid; i < p.n; i += WG) {
        let v = logits[base + i];
        if (v > best_v) {
            best_v = v;
            best_i = i;
        }
    }
    red_f[lid] = best_v;
    red_u[lid] = best_i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = red_f[lid + s];
            let oi = red_u[lid + s];
            if (ov > red_f[lid] || (ov == red_f[lid] && oi < red_u[lid])) {
                red_f[lid] = ov;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let max_v = red_f[0];
    let arg = red_u[0];
    workgroupBarrier();
    if (temperature <= 0.0 || top_k == 1u) {
        if (lid == 0u) {
            out[row] = arg;
        }
        return;
    }
    let inv_t = 1.0 / temperature;

    // Top-k: the largest key t with count(key >= t) >= k.
    var thr = 0u;
    if (top_k > 0u && top_k < p.n) {
        var t = 0u;
        for (var b = 31i; b >= 0i; b--) {
            let cand = t | (1u << u32(b));
            var c = 0u;
            for (var i = lid; i < p.n; i += WG) {
                c += select(0u, 1u, key_of(logits[base + i]) >= cand);
            }
            if (sum_u(lid, c) >= top_k) {
                t = cand;
            }
        }
        thr = t;
    }
    // Top-p over what top-k kept: the largest key t with mass(key >= t) >= top_p * mass kept.
    if (top_p < 1.0) {
        var kept = 0.0;
        for (var i = lid; i < p.n; i += WG) {
            let v = logits[base + i];
            kept += select(0.0, exp((v - max_v) * inv_t), key_of(v) >= thr);
        }
        let goal = top_p * sum_f(lid, kept);
        var t = 0u;
        for (var b = 31i; b >= 0i; b--) {
            let cand = t | (1u << u32(b));
            let cut = max(cand, thr);
            var mass = 0.0;
            for (var i = lid; i < p.n; i += WG) {
                let v = logits[base + i];
                mass += select(0.0, exp((v - max_v) * inv_t), key_of(v) >= cut);
            }
            if (sum_f(lid, mass) >= goal) {
                t = cand;
            }
        }
        thr = max(thr, t);
    }

    // Draw: contiguous chunks per thread, exclusive prefix of their masses, then one walk.
    let chunk = (p.n + WG - 1u) / WG;
    let start = min(lid * chunk, p.n);
    let end = min(start + chunk, p.n);
    var local = 0.0;
    for (var i = start; i < end; i++) {
        let v = logits[base + i];
        local += select(0.0, exp((v - max_v) * inv_t), key_of(v) >= thr);
    }
    red_f[lid] = local;
    workgroupBarrier();
    if (lid == 0u) {
        var run = 0.0;
        for (var i = 0u; i < WG; i++) {
            let m = red_f[i];
            red_f[i] = run;
            run += m;
        }
        uni_f = run;
        // Fallback if rounding puts the draw past the end: the most likely token.
        out[row] = arg;
    }
    let total = workgroupUniformLoad(&uni_f);
    storageBarrier();
    let goal_mass = rng_unit(pcg_hash(seed)) * total;
    let before = red_f[lid];
    if (goal_mass >= before && goal_mass < before + local) {
        var run = before;
        var pick = 0xffffffffu;
        for (var i = start; i < end; i++) {
            let v = logits[base + i];
            if (key_of(v) >= thr) {
                pick = i; // the last kept token of the chunk if rounding never crosses the target
                run += exp((v - max_v) * inv_t);
                if (run > goal_mass) {
                    break;
                }
            }
        }
        if (pick != 0xffffffffu) {
            out[row] = pick;
        }
    }
}

fn rng_unit(h: u32) -> f32 {
    return f32(h >> 8u) / 16777216.0;
}

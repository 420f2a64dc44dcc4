// Diffusion-LM sampling (LLaDA, Fast-dLLM): one denoising step's choice of which masked
// positions to commit, and to which tokens. Two passes over the same bindings; the constant
// SELECT picks the pass (runtime/src/kernels/unmask.rs).
//
// Pass 1 (SELECT = false), one workgroup per row r (absolute position step.pos + r): rows that
// are not masked (tokens[r] != mask_id) or lie outside [window_start, window_end) write
// (tokens[r], -inf). Otherwise, with l = logits[r] (classifier-free guidance when cfg_scale
// != 0: l = u + (cfg_scale + 1) * (l - u), u = uncond[r]):
//   x0 = argmax(l), or with temperature T > 0 argmax(l + T * g_v), g_v = -ln(-ln(u_v)) Gumbel
//        noise from u_v = open_unit(token_hash(seed, position, v)) (LLaDA's exp(l) / (-ln u)^T);
//        ties to the lowest id;
//   confidence = softmax(l)[x0] (max-subtracted), or with random_remasking
//        open_unit(remask_hash(seed, position)).
// scratch[2r] = x0, scratch[2r + 1] = bits of the confidence.
// Pass 2 (SELECT = true), one workgroup: among rows with a finite confidence, rank by
// confidence, ties to the lower position. top_k = k > 0: the k best; top_k = 0: the best one
// plus every row with confidence >= top_p (Fast-dLLM's threshold rule). Writes
// out = [count, (position, token) * count], sorted by position; later words are not written.

struct Params {
    rows: u32,
    vocab: u32,
    mask_id: u32,
    cfg_scale: f32,
    random_remasking: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> uncond: array<f32>;
@group(0) @binding(4) var<storage, read> tokens: array<u32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const MAX_ROWS: u32 = 1024u;
const NEG_INF_BITS: u32 = 0xff800000u;

var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> keys: array<u32, MAX_ROWS>;
var<workgroup> uni_u: u32;

fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn token_hash(seed: u32, position: u32, v: u32) -> u32 {
    return pcg_hash(pcg_hash(pcg_hash(seed) ^ position) ^ v);
}

fn remask_hash(seed: u32, position: u32) -> u32 {
    return token_hash(seed, position, 0xffffffffu);
}

// Uniform in the open interval (0, 1): (2m + 1) / 2^24 for the top 23 bits m, exact in f32.
fn open_unit(h: u32) -> f32 {
    return f32(((h >> 9u) << 1u) | 1u) * (1.0 / 16777216.0);
}

// -ln(u) for u in (0, 1) to a few ulp relative. WGSL's log only promises an absolute error
// of 2^-21 on [0.5, 2], which for u near 1 (the largest Gumbel values, the ones that win)
// would swamp -ln(u) ~ 1e-7; there -ln(1 - w) = 2 atanh(w / (2 - w)) by its series.
fn neg_log_unit(u: f32) -> f32 {
    if (u < 0.5) {
        return -log(u);
    }
    let w = 1.0 - u; // exact
    let y = w / (2.0 - w); // <= 1/3
    let y2 = y * y;
    let s = 1.0 + y2 * (1.0 / 3.0 + y2 * (1.0 / 5.0 + y2 * (1.0 / 7.0 + y2 * (1.0 / 9.0
        + y2 * (1.0 / 11.0 + y2 * (1.0 / 13.0 + y2 * (1.0 / 15.0)))))));
    return 2.0 * y * s;
}

fn logit(base: u32, v: u32) -> f32 {
    let l = logits[base + v];
    if (p.cfg_scale != 0.0) {
        let u = uncond[base + v];
        return u + (p.cfg_scale + 1.0) * (l - u);
    }
    return l;
}

fn predict(r: u32, lid: u32) {
    let position = step.pos + r;
    let masked = tokens[r] == p.mask_id;
    let in_window = position >= step.window_start && position < step.window_end;
    if (!masked || !in_window) {
        if (lid == 0u) {
            scratch[2u * r] = tokens[r];
            scratch[2u * r + 1u] = NEG_INF_BITS;
        }
        return;
    }
    let base = r * p.vocab;
    let noisy = step.temperature > 0.0;
    // Max of l (for the softmax) and argmax of the (noisy) score, ties to the lowest id.
    var m = -3.4e38;
    var best_z = -3.4e38;
    var best_i = 0xffffffffu;
    for (var v = lid; v < p.vocab; v += WG) {
        let l = logit(base, v);
        m = max(m, l);
        var z = l;
        if (noisy) {
            let g = -log(neg_log_unit(open_unit(token_hash(step.seed, position, v))));
            z = l + step.temperature * g;
        }
        if (z > best_z) {
            best_z = z;
            best_i = v;
        }
    }
    red_a[lid] = m;
    red_b[lid] = best_z;
    red_i[lid] = best_i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_a[lid] = max(red_a[lid], red_a[lid + s]);
            let oz = red_b[lid + s];
            let oi = red_i[lid + s];
            if (oz > red_b[lid] || (oz == red_b[lid] && oi < red_i[lid])) {
                red_b[lid] = oz;
                red_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let max_l = red_a[0];
    var x0 = red_i[0];
    if (x0 == 0xffffffffu) {
        x0 = 0u; // no score above -3.4e38 (all -inf): the first id, as the reference
    }
    workgroupBarrier();
    if (p.random_remasking != 0u) {
        if (lid == 0u) {
            scratch[2u * r] = x0;
            scratch[2u * r + 1u] = bitcast<u32>(open_unit(remask_hash(step.seed, position)));
        }
        return;
    }
    var sum = 0.0;
    for (var v = lid; v < p.vocab; v += WG) {
        sum += exp(logit(base, v) - max_l);
    }
    red_a[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_a[lid] += red_a[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        scratch[2u * r] = x0;
        scratch[2u * r + 1u] = bitcast<u32>(exp(logit(base, x0) - max_l) / red_a[0]);
    }
}

fn select_rows(lid: u32) {
    let n = p.rows;
    // Sort keys: 0 for rows that are not candidates, else the confidence's bits + 1 (a
    // confidence is >= +0, so larger bits mean larger confidence).
    for (var r = lid; r < n; r += WG) {
        let c = scratch[2u * r + 1u];
        keys[r] = select(c + 1u, 0u, c == NEG_INF_BITS);
    }
    workgroupBarrier();
    let chunk = (n + WG - 1u) / WG;
    let start = min(lid * chunk, n);
    let end = min(start + chunk, n);
    var chosen = 0u; // bit i: row start + i is committed
    var count = 0u;
    for (var r = start; r < end; r++) {
        let key = keys[r];
        if (key == 0u) {
            continue;
        }
        var rank = 0u; // candidates ahead of r: more confident, or as confident and earlier
        for (var j = 0u; j < n; j++) {
            let kj = keys[j];
            rank += select(0u, 1u, kj > key || (kj == key && j < r));
        }
        var take: bool;
        if (step.unmask_k > 0u) {
            take = rank < step.unmask_k;
        } else {
            take = rank == 0u || bitcast<f32>(key - 1u) >= step.threshold;
        }
        if (take) {
            chosen |= 1u << (r - start);
            count += 1u;
        }
    }
    // Exclusive prefix of the per-thread counts gives each thread its slots in `out`.
    red_i[lid] = count;
    workgroupBarrier();
    if (lid == 0u) {
        var run = 0u;
        for (var t = 0u; t < WG; t++) {
            let c = red_i[t];
            red_i[t] = run;
            run += c;
        }
        out[0] = run;
    }
    workgroupBarrier();
    var slot = red_i[lid];
    for (var r = start; r < end; r++) {
        if ((chosen & (1u << (r - start))) != 0u) {
            out[1u + 2u * slot] = step.pos + r;
            out[2u + 2u * slot] = scratch[2u * r];
            slot += 1u;
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    if (SELECT) {
        select_rows(lid);
    } else {
        let r = group_index(wid, nwg);
        if (r < p.rows) {
            predict(r, lid);
        }
    }
}

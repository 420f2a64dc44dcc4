// Router of a sparse mixture of experts, one invocation per token: softmax over the experts'
// logits in f32, the top k by repeated selection in the order (probability descending, expert
// index ascending), so ties go to the lower index as torch.topk's do, and with RENORMALIZE
// the chosen probabilities divided by their sum (Mixtral; Qwen2-MoE's norm_topk_prob).
// route[t, 0..k) = chosen experts, route[t, k..2k) = their weights as f32 bits.

struct Params { tokens: u32, experts: u32, k: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> route: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid, nwg) * 64u + lid;
    if (t >= p.tokens) {
        return;
    }
    let row = t * p.experts;
    var m = logits[row];
    for (var e = 1u; e < p.experts; e++) {
        m = max(m, logits[row + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < p.experts; e++) {
        sum += exp(logits[row + e] - m);
    }
    // The previous pick (value, index); the next is the best strictly after it in the order.
    var prev_v = 2.0;
    var prev_i = 0u;
    var total = 0.0;
    let out = t * 2u * p.k;
    for (var j = 0u; j < p.k; j++) {
        var best_v = -1.0;
        var best_i = 0u;
        for (var e = 0u; e < p.experts; e++) {
            let v = exp(logits[row + e] - m) / sum;
            let after = v < prev_v || (v == prev_v && e > prev_i);
            if (after && v > best_v) {
                best_v = v;
                best_i = e;
            }
        }
        route[out + j] = best_i;
        route[out + p.k + j] = bitcast<u32>(best_v);
        total += best_v;
        prev_v = best_v;
        prev_i = best_i;
    }
    if (RENORMALIZE) {
        for (var j = 0u; j < p.k; j++) {
            route[out + p.k + j] = bitcast<u32>(bitcast<f32>(route[out + p.k + j]) / total);
        }
    }
}

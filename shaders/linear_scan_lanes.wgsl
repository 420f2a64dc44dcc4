// Gated linear recurrence token by token (shaders/linear_recurrence.wgsl's update and
// linear_scan.wgsl's outputs) for CPU adapters with subgroups of at least 8 lanes (lavapipe),
// which run a subgroup as the SIMD lanes of one CPU thread and pay for every load as a loop
// over those lanes while arithmetic is nearly free. linear_scan.wgsl gives each invocation a
// state row, so every row loads all DK values of k, q, a, b and the decay per token and forms
// the DK decays again. Here a workgroup is one subgroup of 8 lanes over the key dims (lane l
// holds dims l, l + 8, ...) and ROWS state rows of one head: per token each lane loads its
// dims once for all ROWS rows, and subgroupAdd gives every lane a row's (s . a) and output.
// The state is read from and written back to `state` [H, dv, DK] (decode, and prefill on
// these adapters). Requires consts DK, DECAY, DELTA, BONUS (as linear_recurrence.wgsl),
// ROWS and PAGED: a batched step (shaders/batch.wgsl), workgroup z being sequence z of the
// step, whose rows and slot come from the batch; `state` then holds an [H, dv, DK] state per
// slot.

#include "linear_recurrence.wgsl"

@group(0) @binding(6) var<storage, read> q: array<f32>;           // [T, qk_heads, DK]
@group(0) @binding(7) var<storage, read_write> state: array<f32>; // [H, dv, DK]
@group(0) @binding(8) var<storage, read_write> out: array<f32>;   // [T, H, dv]
#if PAGED
#include "batch.wgsl"
@group(0) @binding(9) var<uniform> batch: Batch;
#endif

const LANES: u32 = 8u;
// Key dims per lane; lanes past DK hold zeros, which stay zero and add nothing.
const M: u32 = (DK + LANES - 1u) / LANES;

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let blocks = (p.dv + ROWS - 1u) / ROWS;
    if (g >= p.heads * blocks) {
        return;
    }
    let h = g / blocks;
    let r0 = (g % blocks) * ROWS;
    let rows = min(ROWS, p.dv - r0);
    var first = p.t0;
    var tokens = p.tokens;
    var s0 = 0u; // where the state starts
#if PAGED
    let seq = batch.pick_p[wid.z];
    if (seq.z == 0u) {
        return;
    }
    first = seq.y;
    tokens = seq.z;
    s0 = seq.w * p.heads * p.dv * DK;
#endif
    var s: array<f32, ROWS * M>;
    for (var r = 0u; r < rows; r++) {
        for (var m = 0u; m < M; m++) {
            let j = lid + LANES * m;
            var x = 0.0;
            if (j < DK) {
                x = state[s0 + (h * p.dv + r0 + r) * DK + j];
            }
            s[r * M + m] = x;
        }
    }
    for (var t = first; t < first + tokens; t++) {
        let kb = qk_base(t, h);
        let abase = (t * p.heads + h) * 2u * DK;
        // This token's k, q, w - 1, a, b and u * k at the lane's dims.
        var kj: array<f32, M>;
        var qj: array<f32, M>;
        var wj: array<f32, M>;
        var aj: array<f32, M>;
        var bj: array<f32, M>;
        var uk: array<f32, M>;
        for (var m = 0u; m < M; m++) {
            let j = lid + LANES * m;
            kj[m] = 0.0;
            qj[m] = 0.0;
            wj[m] = 0.0;
            aj[m] = 0.0;
            bj[m] = 0.0;
            uk[m] = 0.0;
            if (j < DK) {
                kj[m] = k[kb + j];
                qj[m] = q[kb + j];
                if (DECAY != 0u) {
                    wj[m] = expm1_neg(log_decay(t, h, j));
                }
                if (DELTA) {
                    aj[m] = ab[abase + j];
                    bj[m] = ab[abase + DK + j];
                }
                if (BONUS) {
                    uk[m] = consts[h * DK + j] * kj[m];
                }
            }
        }
        for (var r = 0u; r < rows; r++) {
            let i = r0 + r;
            let vi = value(t, h, i);
            var o = 0.0;
            if (BONUS) {
                for (var m = 0u; m < M; m++) {
                    o += qj[m] * (s[r * M + m] + uk[m] * vi);
                }
            }
            var sa = 0.0;
            if (DELTA) {
                for (var m = 0u; m < M; m++) {
                    sa += s[r * M + m] * aj[m];
                }
                sa = subgroupAdd(sa);
            }
            for (var m = 0u; m < M; m++) {
                var x = s[r * M + m];
                if (DECAY != 0u) {
                    x += x * wj[m];
                }
                if (DELTA) {
                    x += sa * bj[m];
                }
                x += vi * kj[m];
                s[r * M + m] = x;
                if (!BONUS) {
                    o += qj[m] * x;
                }
            }
            o = subgroupAdd(o);
            if (lid == 0u) {
                out[(t * p.heads + h) * p.dv + i] = o;
            }
        }
    }
    for (var r = 0u; r < rows; r++) {
        for (var m = 0u; m < M; m++) {
            let j = lid + LANES * m;
            if (j < DK) {
                state[s0 + (h * p.dv + r0 + r) * DK + j] = s[r * M + m];
            }
        }
    }
}

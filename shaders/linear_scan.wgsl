// Gated linear recurrence (shaders/linear_recurrence.wgsl), the outputs: one thread per
// (chunk, head, value row) runs its chunk's tokens from the chunk's start state and writes
//   o_t,i = q_t . s_i            after the update (GLA, Mamba, RWKV-7), or with BONUS
//   o_t,i = q_t . (s_i + u * k_t v_t,i)   before it (RWKV-6's bonus u for the current token).
// Chunked prefill: start states come from linear_scan_carry (WRITE_STATE off). Recurrent form
// and decode: one chunk whose start is the sequence's state, updated in place (WRITE_STATE).
// PAGED (a batched step, shaders/batch.wgsl; with WRITE_STATE): workgroup z is sequence z of
// the step, whose rows and slot come from the batch; start holds a [H, dv, DK] state per slot.

#include "linear_recurrence.wgsl"

@group(0) @binding(6) var<storage, read> q: array<f32>;           // [T, qk_heads, DK]
@group(0) @binding(7) var<storage, read_write> start: array<f32>; // [chunks, H, dv, DK]
@group(0) @binding(8) var<storage, read_write> out: array<f32>;   // [T, H, dv]
#if PAGED
#include "batch.wgsl"
@group(0) @binding(9) var<uniform> batch: Batch;
#endif

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * 64u + lid;
    let rows = p.heads * p.dv;
    if (idx >= p.chunks * rows) {
        return;
    }
    let c = idx / rows;
    let h = (idx % rows) / p.dv;
    let i = idx % p.dv;
    var base = idx * DK;
    var first = p.t0 + c * p.chunk;
    var last = p.t0 + min((c + 1u) * p.chunk, p.tokens);
#if PAGED
    let seq = batch.pick_p[wid.z];
    if (seq.z == 0u) {
        return;
    }
    base = (seq.w * rows + idx) * DK;
    first = seq.y;
    last = seq.y + seq.z;
#endif
    var s: array<f32, DK>;
    for (var j = 0u; j < DK; j++) {
        s[j] = start[base + j];
    }
    for (var t = first; t < last; t++) {
        let vi = value(t, h, i);
        let qb = qk_base(t, h);
        var o = 0.0;
        if (BONUS) {
            for (var j = 0u; j < DK; j++) {
                o += q[qb + j] * (s[j] + consts[h * DK + j] * k[qb + j] * vi);
            }
        }
        update_row(&s, t, h, vi);
        if (!BONUS) {
            for (var j = 0u; j < DK; j++) {
                o += q[qb + j] * s[j];
            }
        }
        out[(t * p.heads + h) * p.dv + i] = o;
    }
    if (WRITE_STATE) {
        for (var j = 0u; j < DK; j++) {
            start[base + j] = s[j];
        }
    }
}

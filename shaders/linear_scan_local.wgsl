// Chunked scan, pass 1 of 3 (then linear_scan_carry, then linear_scan): per chunk, in
// parallel, what the chunk does to a state, from shaders/linear_recurrence.wgsl's update:
//   local[c, h, i, :]   the state row i after the chunk's tokens from a zero start;
//   trans[c, h, r, :]   with DELTA, row r of the chunk's transition matrix (the product of
//                       its tokens' diag(w) + a b^T, from the identity, with no value term);
//                       without, trans[c, h, 0, :] = the chunk's summed log-decays.
// so that start(c+1) = start(c) * trans(c) + local(c) (a diagonal product without DELTA).
// scratch holds local [chunks, H, dv, DK] then trans [chunks, H, DELTA ? DK : 1, DK].

#include "linear_recurrence.wgsl"

@group(0) @binding(6) var<storage, read_write> scratch: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * 64u + lid;
    let trans_rows = select(1u, DK, DELTA);
    let rows = p.dv + trans_rows;
    if (idx >= p.chunks * p.heads * rows) {
        return;
    }
    let c = idx / (p.heads * rows);
    let h = (idx / rows) % p.heads;
    let r = idx % rows;
    let first = p.t0 + c * p.chunk;
    let last = p.t0 + min((c + 1u) * p.chunk, p.tokens);
    var s: array<f32, DK>;
    for (var j = 0u; j < DK; j++) {
        s[j] = 0.0;
    }
    if (r < p.dv) {
        for (var t = first; t < last; t++) {
            update_row(&s, t, h, value(t, h, r));
        }
        let base = ((c * p.heads + h) * p.dv + r) * DK;
        for (var j = 0u; j < DK; j++) {
            scratch[base + j] = s[j];
        }
        return;
    }
    let tr = r - p.dv;
    if (DELTA) {
        s[tr] = 1.0;
        for (var t = first; t < last; t++) {
            update_row(&s, t, h, 0.0);
        }
    } else {
        for (var t = first; t < last; t++) {
            for (var j = 0u; j < DK; j++) {
                s[j] += log_decay(t, h, j);
            }
        }
    }
    let base = p.chunks * p.heads * p.dv * DK + ((c * p.heads + h) * trans_rows + tr) * DK;
    for (var j = 0u; j < DK; j++) {
        scratch[base + j] = s[j];
    }
}

// Chunked scan, pass 2 of 3: one workgroup per (head, state row) walks the chunks in order,
//   start(0) = state;  start(c+1) = start(c) * trans(c) + local(c)
// (with DELTA start(c) + start(c) * (P - I), trans holding P - I; else exp(summed log-decay)
// per key dim), overwriting each
// chunk's local row with its start row for linear_scan, and leaves the final row in state.
// Requires consts DK (<= 256) and DELTA; scratch as written by linear_scan_local.

struct Params {
    heads: u32,
    dv: u32,
    chunks: u32,
    _p: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> state: array<f32>;   // [H, dv, DK]
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;

const PER_THREAD: u32 = (DK + 63u) / 64u;

var<workgroup> row: array<f32, DK>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    if (g >= p.heads * p.dv) {
        return;
    }
    let h = g / p.dv;
    let i = g % p.dv;
    for (var n = 0u; n < PER_THREAD; n++) {
        let j = lid + 64u * n;
        if (j < DK) {
            row[j] = state[g * DK + j];
        }
    }
    workgroupBarrier();
    let trans_rows = select(1u, DK, DELTA);
    let trans_base = p.chunks * p.heads * p.dv * DK;
    var next: array<f32, PER_THREAD>;
    for (var c = 0u; c < p.chunks; c++) {
        let local_base = ((c * p.heads + h) * p.dv + i) * DK;
        let tb = trans_base + (c * p.heads + h) * trans_rows * DK;
        for (var n = 0u; n < PER_THREAD; n++) {
            let j = lid + 64u * n;
            if (j < DK) {
                var x = 0.0;
                if (DELTA) {
                    x = row[j];
                    for (var l = 0u; l < DK; l++) {
                        x += row[l] * scratch[tb + l * DK + j];
                    }
                } else {
                    x = row[j] + row[j] * expm1_neg(scratch[tb + j]);
                }
                next[n] = x + scratch[local_base + j];
            }
        }
        workgroupBarrier();
        for (var n = 0u; n < PER_THREAD; n++) {
            let j = lid + 64u * n;
            if (j < DK) {
                scratch[local_base + j] = row[j];
                row[j] = next[n];
            }
        }
        workgroupBarrier();
    }
    for (var n = 0u; n < PER_THREAD; n++) {
        let j = lid + 64u * n;
        if (j < DK) {
            state[g * DK + j] = row[j];
        }
    }
}

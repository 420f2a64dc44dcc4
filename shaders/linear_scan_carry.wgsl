// Chunked scan, pass 2 of 3: one workgroup per (head, state row) walks the chunks in order,
//   start(0) = state;  start(c+1) = start(c) * trans(c) + local(c)
// (a matrix product with DELTA, else exp(summed log-decay) per key dim), overwriting each
// chunk's local row with its start row for linear_scan, and leaves the final row in state.
// Requires consts DK (<= 256), DELTA and WY; scratch as written by linear_scan_local, or with
// WY > 0 (DELTA in matmul form, linear_scan_mm_delta_local) trans in WY form: per chunk and
// head A~ [WY, DK], W [WY, DK] and the summed log-decays gl [DK], P = diag(e^gl) + A~^T W, so
//   start(c+1) = start(c) + start(c) * expm1(gl) + (start(c) . A~_m)_m W + local(c)
// (2 WY DK products a row instead of DK^2, and decays near 1 keep their precision).

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
// With WY: the partial sums of start(c) . A~_m, four per m (WY <= 16).
var<workgroup> xs: array<f32, 64>;

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
    var trans_rows = select(1u, DK, DELTA);
    if (WY > 0u) {
        trans_rows = 2u * WY + 1u;
    }
    let trans_base = p.chunks * p.heads * p.dv * DK;
    var next: array<f32, PER_THREAD>;
    for (var c = 0u; c < p.chunks; c++) {
        let local_base = ((c * p.heads + h) * p.dv + i) * DK;
        let tb = trans_base + (c * p.heads + h) * trans_rows * DK;
        if (WY > 0u) {
            let m = lid / 4u;
            var x = 0.0;
            if (m < WY) {
                for (var l = lid % 4u; l < DK; l += 4u) {
                    x += row[l] * scratch[tb + m * DK + l];
                }
            }
            xs[lid] = x;
            workgroupBarrier();
        }
        for (var n = 0u; n < PER_THREAD; n++) {
            let j = lid + 64u * n;
            if (j < DK) {
                var x = 0.0;
                if (WY > 0u) {
                    x = row[j] + row[j] * expm1_neg(scratch[tb + 2u * WY * DK + j]);
                    for (var m = 0u; m < WY; m++) {
                        let xm = xs[4u * m] + xs[4u * m + 1u] + xs[4u * m + 2u] + xs[4u * m + 3u];
                        x += xm * scratch[tb + (WY + m) * DK + j];
                    }
                } else if (DELTA) {
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

// Attention of one new query per head over the whole KV cache (decode). One workgroup per
// query head: scores are computed strided over the cache into a scratch row, reduced to a
// max and a sum in workgroup memory, and each thread then produces output dimensions.

struct Params {
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    scratch_stride: u32, // floats per head in the scratch buffer (the cache capacity)
    scale: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, WG>;
var<workgroup> q_row: array<f32, HEAD_DIM>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let kv_head = head / (p.heads / p.kv_heads);
    let kv_len = step.pos + step.n_tokens;
    let srow = head * p.scratch_stride;
    for (var d = lid; d < HEAD_DIM; d += WG) {
        q_row[d] = q[head * HEAD_DIM + d] * p.scale;
    }
    workgroupBarrier();

    var local_max = -3.0e38;
    for (var j = lid; j < kv_len; j += WG) {
        let base = j * p.kv_stride + kv_head * HEAD_DIM;
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s += q_row[d] * k_cache[base + d];
        }
        scores[srow + j] = s;
        local_max = max(local_max, s);
    }
    red[lid] = local_max;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let row_max = red[0];
    workgroupBarrier();

    var local_sum = 0.0;
    for (var j = lid; j < kv_len; j += WG) {
        let e = exp(scores[srow + j] - row_max);
        scores[srow + j] = e;
        local_sum += e;
    }
    red[lid] = local_sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    storageBarrier();
    workgroupBarrier();

    for (var d = lid; d < HEAD_DIM; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < kv_len; j++) {
            acc += scores[srow + j] * v_cache[j * p.kv_stride + kv_head * HEAD_DIM + d];
        }
        out[head * HEAD_DIM + d] = acc * inv;
    }
}

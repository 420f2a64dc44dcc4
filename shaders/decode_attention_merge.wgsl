// Second pass of split-K decode attention (decode_attention.wgsl): for each query and head
// (workgroup (head, query)), combine the
// pieces' (reference m_s: the piece's max or less, denominator l_s, unnormalised output a_s,
// both taken against m_s) by the online-softmax rule:
// out = sum_s exp(m_s - M) a_s / sum_s exp(m_s - M) l_s with M = max_s m_s.

struct Params { heads: u32, max_splits: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let query = wid.y;
    let row = query * p.heads + head;
    let stride = HEAD_DIM + 2u;
    let first = row * p.max_splits * stride;
    var big = -3.0e38;
    for (var s = 0u; s < p.max_splits; s++) {
        big = max(big, partial[first + s * stride]);
    }
    var denom = 0.0;
    for (var s = 0u; s < p.max_splits; s++) {
        denom += exp(partial[first + s * stride] - big) * partial[first + s * stride + 1u];
    }
    for (var d = lid; d < HEAD_DIM; d += 64u) {
        var a = 0.0;
        for (var s = 0u; s < p.max_splits; s++) {
            let base = first + s * stride;
            a += exp(partial[base] - big) * partial[base + 2u + d];
        }
        out[row * HEAD_DIM + d] = a / denom;
    }
}

// Matrix-vector product for decode: y[col_offset + r] = dot(x, w[r, :]) + bias[col_offset + r]
// for the rows r of one weight chunk. 8 rows per workgroup, 32 lanes split each row's K and
// reduce in workgroup memory. Weights are f32 or packed f16 (W_F16), bias optional (HAS_BIAS).

struct Params { k: u32, n: u32, col_offset: u32, _p0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const ROWS: u32 = 8u;
const LANES: u32 = 32u;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % LANES;
    let r = group_index(wid, nwg) * ROWS + lid / LANES;
    var acc = 0.0;
    if (r < p.n) {
        if (W_F16 && (p.k & 1u) == 0u) {
            // Two weights per word; rows start on a word boundary when K is even.
            let row_words = p.k / 2u;
            let base = r * row_words;
            for (var j = lane; j < row_words; j += LANES) {
                let pair = unpack2x16float(w[base + j]);
                acc += pair.x * x[2u * j] + pair.y * x[2u * j + 1u];
            }
        } else if (W_F16) {
            let base = r * p.k;
            for (var i = lane; i < p.k; i += LANES) {
                acc += half_of(w[(base + i) >> 1u], base + i) * x[i];
            }
        } else {
            let base = r * p.k;
            for (var i = lane; i < p.k; i += LANES) {
                acc += bitcast<f32>(w[base + i]) * x[i];
            }
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && r < p.n) {
        var out = partial[lid];
        if (HAS_BIAS) {
            out += bias[p.col_offset + r];
        }
        y[p.col_offset + r] = out;
    }
}

// Depthwise causal convolution over time with a rolling state (Mamba's short convolution):
//   out[t, c] = bias[c] + sum_j w[c, j] * x[t - (K-1) + j, c]
// where inputs before this call's first token come from state [K-1, C] (the previous
// call's last K-1 inputs, oldest first), and state ends as this call's last K-1 inputs.
// SILU applies silu to the result. One thread per channel walks the tokens in order, so the
// state can be updated in place. Requires consts K (>= 2), SILU, BIAS, PAGED.
// PAGED (a batched step, shaders/batch.wgsl): workgroup z is sequence z of the step, whose
// rows and slot come from the batch; state holds a [K-1, C] state per slot.

struct Params { tokens: u32, channels: u32, t0: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;     // [T, C]
@group(0) @binding(2) var<storage, read> w: array<f32>;     // [C, K]
@group(0) @binding(3) var<storage, read> bias: array<f32>;  // [C]
@group(0) @binding(4) var<storage, read_write> state: array<f32>; // [K-1, C]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;   // [T, C]
#if PAGED
#include "batch.wgsl"
@group(0) @binding(6) var<uniform> batch: Batch;
#endif

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c = group_index(wid, nwg) * 64u + lid;
    if (c >= p.channels) {
        return;
    }
    var first = p.t0;
    var tokens = p.tokens;
    var s0 = 0u; // where the state starts
#if PAGED
    let seq = batch.pick_p[wid.z];
    first = seq.y;
    tokens = seq.z;
    s0 = seq.w * (K - 1u) * p.channels;
    if (tokens == 0u) {
        return;
    }
#endif
    var hist: array<f32, K>;
    for (var j = 0u; j + 1u < K; j++) {
        hist[j] = state[s0 + j * p.channels + c];
    }
    var b = 0.0;
    if (BIAS) {
        b = bias[c];
    }
    for (var t = first; t < first + tokens; t++) {
        hist[K - 1u] = x[t * p.channels + c];
        var y = b;
        for (var j = 0u; j < K; j++) {
            y += w[c * K + j] * hist[j];
        }
        if (SILU) {
            y = y / (1.0 + exp(-y));
        }
        out[t * p.channels + c] = y;
        for (var j = 0u; j + 1u < K; j++) {
            hist[j] = hist[j + 1u];
        }
    }
    for (var j = 0u; j + 1u < K; j++) {
        state[s0 + j * p.channels + c] = hist[j];
    }
}

// The decode matvecs' epilogue, shared by shaders/matvec.wgsl (f32), matvec_q8.wgsl (int8)
// and matvec_f16.wgsl (f16): each row's sum over its lanes, scaled by NORM's inverse RMS
// (`inv`, 1 where the kernel has no such scaling), then the bias (HAS_BIAS), the residual add
// (ACCUM: y[row] += out, in place) or, with GLU, interleaved (gate, up) row pairs stored as
// y[i] = silu(gate) * up, or with GELU_TANH gelu_tanh(gate) * up (Gemma's GeGLU).
//
// The including kernel declares p (with col_offset), bias and y, and the constants HAS_BIAS,
// ACCUM, GLU, GELU_TANH, SUBGROUP, LANES, R (rows per lane) and ROWS (rows per workgroup).
// With WORKGROUP_SUMS the lanes' sums go through workgroup memory: put_partials before a
// barrier, store_partials after it (the int8 and f16 matvecs always; the f32 one unless it
// sums by subgroup or has one lane per row, which stores its rows itself).

// The output of row `row` (of the chunk) from its sum over the lanes.
fn store_row(yo: u32, row: u32, sum: f32, inv: f32) {
    var out = sum * inv;
    if (HAS_BIAS) {
        out += bias[p.col_offset + row];
    }
    if (ACCUM) {
        out += y[yo + row];
    }
    y[yo + row] = out;
}

// GLU: the output of the pair of rows `row` (gate, even) and row + 1 (up) from their sums.
fn store_pair(yo: u32, row: u32, gate: f32, up: f32, inv: f32) {
    let g = gate * inv;
    var act = g / (1.0 + exp(-g));
    if (GELU_TANH) {
        // tanh's argument clamped where tanh is 1 in f32 (some drivers overflow).
        let inner = clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -15.0, 15.0);
        act = 0.5 * g * (1.0 + tanh(inner));
    }
    y[(yo + row) / 2u] = act * (up * inv);
}

#if WORKGROUP_SUMS
var<workgroup> partial: array<f32, ROWS * LANES>;

// Invocation lid's partial sums of its row group's R rows, into workgroup memory.
fn put_partials(lid: u32, acc: array<f32, R>) {
    for (var r = 0u; r < R; r++) {
        partial[((lid / LANES) * R + r) * LANES + lid % LANES] = acc[r];
    }
}

// After the barrier: invocation lid sums the lanes of rows first + lid, + 64, ... of the
// workgroup and stores them, or with GLU those of the pairs of rows first + 2 lid (gate) and
// + 1 (up), then 128 rows on; the chunk starts on a pair. A workgroup holds more than 64 rows
// where lanes are few and rows per lane many (CPU drivers' f16 and K-quant layouts).
fn store_partials(lid: u32, first: u32, yo: u32, inv: f32) {
    if (GLU) {
        for (var i = lid; i < ROWS / 2u; i += 64u) {
            let row = first + 2u * i;
            if (row < p.n) {
                var g = 0.0;
                var u = 0.0;
                for (var l = 0u; l < LANES; l++) {
                    g += partial[2u * i * LANES + l];
                    u += partial[(2u * i + 1u) * LANES + l];
                }
                store_pair(yo, row, g, u, inv);
            }
        }
        return;
    }
    for (var i = lid; i < ROWS; i += 64u) {
        let row = first + i;
        if (row < p.n) {
            var out = 0.0;
            for (var l = 0u; l < LANES; l++) {
                out += partial[i * LANES + l];
            }
            store_row(yo, row, out, inv);
        }
    }
}
#endif

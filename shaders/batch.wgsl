// The rows of a batched step: several sequences in one forward (runtime/src/batch.rs; the
// Rust mirror is `BatchRows`). Token row t of the step is rows[t] = (position in its
// sequence, pool row its K and V are written to, its sequence's row of the block table, 0).
// The step samples one row per sequence: picks[s] = (row, seed, top_k, temperature's bits),
// pick_p[s] = (top_p's bits, the sequence's first row, its number of rows (0: pick unused),
// its slot): the rows of one sequence are consecutive, and a recurrent state (a
// per-sequence slot of a pool, shaders/conv1d.wgsl and shaders/linear_scan.wgsl, PAGED) is
// run over them in order. Keys live in a pool of KV_BLOCK-row blocks; position j of the
// sequence in table row `slot` is pool row table[slot * width + j / KV_BLOCK] * KV_BLOCK +
// j % KV_BLOCK. The including kernel declares `var<uniform> batch: Batch` (PAGED).

const KV_BLOCK: u32 = 16u;

struct Batch {
    rows: array<vec4<u32>, 256>,
    picks: array<vec4<u32>, 64>,
    pick_p: array<vec4<u32>, 64>,
}

// What both decode attention kernels share (shaders/decode_attention.wgsl, whose header
// describes the visible keys, and decode_attention_lanes.wgsl): their parameters, the keys a
// query sees and its piece of them, key numbers to positions and cache rows, the softmax
// weight and soft-capping. The including kernel binds p, step and mask, and declares
// SPLIT_KEYS and `var<workgroup> n_blocks: u32`. PAGED (a batched step, shaders/batch.wgsl):
// query t's position and sequence come from the batch's rows, `mask` holds the block table
// (p.blocks entries per sequence) and the sequence's cache rows (kv_row: its positions, or
// its ring after its sinks) are read through it; no block-sparse masks.

struct Params {
    heads: u32,
    kv_heads: u32,
    kv_stride: u32,
    scale: f32,
    sinks: u32,
    window: u32,  // 0xffffffff: none
    ring: u32,
    rot_half: u32,
    max_splits: u32,
    blocks: u32,  // SPARSE: query blocks per head in the mask; PAGED: the block table's width
    causal: u32,  // 0: every query sees every row of the cache (bidirectional)
    softcap: f32, // > 0: scores soft-capped (soft_cap)
}

// Gemma 2's logit soft-capping of a scaled score: cap * tanh(s / cap) (tanh's argument
// clamped where tanh is 1 in f32, as some drivers' tanh overflows to NaN beyond).
fn soft_cap(s: f32) -> f32 {
    return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0));
}

// The softmax weight of score s against the reference m; 0 for a masked key.
fn weight(s: f32, m: f32) -> f32 {
    return select(0.0, exp(s - m), s > -1.0e38);
}

// The cache row of position j; the division only once the ring has wrapped (a CPU divides
// each lane apart).
fn kv_row(j: u32) -> u32 {
    if (j < p.sinks) {
        return j;
    }
    let r = j - p.sinks;
    if (r < p.ring) {
        return p.sinks + r;
    }
    return p.sinks + r % p.ring;
}

// The keys one query sees, numbered 0..n, and the piece [start, end) of them this workgroup
// takes.
struct Keys {
    slot: u32,     // PAGED: the sequence's row of the block table
    pos: u32,      // the last key: the query itself, or the cache's last row when bidirectional
    lo: u32,       // the first recent position (a sliding window's start)
    sink_end: u32, // sinks kept before lo
    n: u32,
    mask_row: u32, // SPARSE: the query's row of the block mask (one head per workgroup)
    start: u32,
    end: u32,
}

// The keys of query `query` for the workgroup of heads from `head0` and piece `split`
// (called in uniform control flow: SPARSE reads its block count through workgroup memory).
fn visible_keys(head0: u32, query: u32, split: u32, lid: u32) -> Keys {
    var pos = step.pos + query;
    var slot = 0u;
#if PAGED
    pos = batch.rows[query].x;
    slot = batch.rows[query].z;
#endif
    if (p.causal == 0u) {
        pos = p.sinks + p.ring - 1u;
    }
    var lo = 0u;
    if (p.window != 0xffffffffu && pos + 1u > p.window) {
        lo = pos + 1u - p.window;
    }
    let sink_end = min(p.sinks, lo);
    var n = sink_end + pos + 1u - lo;
    let mask_row = head0 * p.blocks + pos / 64u;
    if (SPARSE) {
        if (lid == 0u) {
            n_blocks = mask[mask_row + 1u] - mask[mask_row];
        }
        n = workgroupUniformLoad(&n_blocks) * 64u;
    }
    let splits = clamp((n + SPLIT_KEYS - 1u) / SPLIT_KEYS, 1u, p.max_splits);
    let chunk = (n + splits - 1u) / splits;
    let start = split * chunk;
    return Keys(slot, pos, lo, sink_end, n, mask_row, start, min(n, start + chunk));
}

// The cache row of the key at position j: through the block table (PAGED), else the layout's.
fn key_row(k: Keys, j: u32) -> u32 {
#if PAGED
    let c = kv_row(j);
    return mask[k.slot * p.blocks + c / KV_BLOCK] * KV_BLOCK + c % KV_BLOCK;
#else
    return kv_row(j);
#endif
}

// The position of key number i: a listed block's (SPARSE; past pos for masked keys), a
// sink's, or a recent one's.
fn key_position(k: Keys, i: u32) -> u32 {
    if (SPARSE) {
        let col = mask[p.heads * p.blocks + 1u + mask[k.mask_row] + i / 64u];
        return col * 64u + i % 64u;
    }
    if (i < k.sink_end) {
        return i;
    }
    return k.lo + i - k.sink_end;
}

// Decode attention, split-K (flash-decoding): each new query (step.n_tokens of them, at
// positions step.pos + t; one in decode) attends per head over the cache, which is cut along
// the sequence into up to max_splits pieces, one workgroup per (head, piece, query). Each workgroup streams its keys in tiles of TILE, keeps an online-softmax
// state (reference max, denominator, unnormalised output) and writes it to `partial`; the
// kernel in decode_attention_merge.wgsl combines the pieces. With max_splits 1 there is one
// piece and this kernel writes the normalised output itself (no merge runs). CPU adapters
// with subgroups take decode_attention_lanes.wgsl instead. How many pieces are used follows the
// number of keys the query sees (SPLIT_KEYS keys per piece at least), so a short cache takes
// one workgroup per head and a long one spreads over the whole GPU.
//
// With several queries this is also the prefill path for CPU adapters: their threads share
// the key loop (64 per query), so no invocation loops more than about TILE-times fewer
// iterations than a thread of the tiled kernel would (llvmpipe stops any invocation after
// 65535 loop iterations).
//
// Visible keys and cache rows follow runtime/src/kv.rs (see attention.wgsl): the query at
// p = step.pos sees [0, min(sinks, lo)) then [lo, p], numbered 0..n in that order. ROPE: the
// cached keys are un-rotated; key number i is rotated by i and the query by n - 1 (positions
// inside the cache). SPARSE: the keys are the blocks its mask row lists, 64 positions each,
// those after p masked out.
//
// GQA: a workgroup serves GROUP query heads that share one KV head (runtime/src/kernels/
// decode_attention.rs picks GROUP: a divisor of heads / kv_heads whose workgroup memory fits;
// 1 with a block-sparse mask, whose rows differ per head), so each key and value is read once
// for all of them.


@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> partial: array<f32>; // with one piece: the output
@group(0) @binding(6) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(7) var<storage, read> mask: array<u32>; // PAGED: the block table
#if PAGED
#include "batch.wgsl"
@group(0) @binding(8) var<uniform> batch: Batch;
#endif

#include "decode_keys.wgsl"

const WG: u32 = 64u;
const PER_THREAD: u32 = 4u;
const TILE: u32 = WG * PER_THREAD;
const SPLIT_KEYS: u32 = 256u;
const DIMS_PER_THREAD: u32 = (HEAD_DIM + WG - 1u) / WG;
const G: u32 = GROUP;
// How far a score may lie above the reference its weight is taken against (weights stay
// below e^8, sums of them far inside f32) before the reference is raised to the tile's max.
const HEADROOM: f32 = 8.0;

var<workgroup> q_row: array<f32, G * HEAD_DIM>;
var<workgroup> weights: array<f32, G * TILE>;
var<workgroup> rows: array<u32, TILE>;
var<workgroup> red: array<f32, G * WG>;
var<workgroup> n_blocks: u32;
var<workgroup> raise: u32; // 1: a score of this tile is above its reference by over HEADROOM

// The G heads' maxima (`take_max`) or sums over the workgroup, reduced together: one tree, so
// the barriers do not grow with the group (CPU drivers pay per barrier).
fn reduce(lid: u32, v: array<f32, G>, take_max: bool) -> array<f32, G> {
    for (var g = 0u; g < G; g++) {
        red[g * WG + lid] = v[g];
    }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            for (var g = 0u; g < G; g++) {
                let a = red[g * WG + lid];
                let b = red[g * WG + lid + s];
                red[g * WG + lid] = select(a + b, max(a, b), take_max);
            }
        }
        workgroupBarrier();
    }
    var r: array<f32, G>;
    for (var g = 0u; g < G; g++) {
        r[g] = red[g * WG];
    }
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head0 = wid.x * G; // this workgroup's first query head
    let split = wid.y;
    let query = wid.z;
    let kv_head = head0 / (p.heads / p.kv_heads);
    let keys = visible_keys(head0, query, split, lid);

    for (var d = lid; d < G * HEAD_DIM; d += WG) {
        q_row[d] = q[(query * p.heads + head0) * HEAD_DIM + d] * p.scale;
    }
    workgroupBarrier();
    if (ROPE && lid < G) {
        let o = lid * HEAD_DIM;
        for (var i = 0u; i < p.rot_half; i++) {
            let cs = sin_cos(f32(keys.n - 1u) * inv_freq[i]);
            let a = q_row[o + i];
            let b = q_row[o + i + p.rot_half];
            q_row[o + i] = a * cs.x - b * cs.y;
            q_row[o + i + p.rot_half] = b * cs.x + a * cs.y;
        }
    }
    workgroupBarrier();

    // Online softmax with a lazily raised reference: weights are exp(score - m[g]) with m[g]
    // the same in every invocation; it is raised (and what was summed rescaled) only when a
    // tile holds a score more than HEADROOM above it, so most tiles need no reduction. Each
    // invocation sums its own keys' weights into l; they are added up once at the end.
    var m: array<f32, G>;
    var l: array<f32, G>;
    var acc: array<f32, G * DIMS_PER_THREAD>;
    for (var g = 0u; g < G; g++) {
        m[g] = -3.0e38;
        l[g] = 0.0;
        for (var r = 0u; r < DIMS_PER_THREAD; r++) {
            acc[g * DIMS_PER_THREAD + r] = 0.0;
        }
    }

    for (var t0 = keys.start; t0 < keys.end; t0 += TILE) {
        // QK: one invocation per key, PER_THREAD keys each, scores kept for a raise.
        var scores: array<f32, G * PER_THREAD>;
        var above = false;
        for (var r = 0u; r < PER_THREAD; r++) {
            let slot = lid + r * WG;
            let i = t0 + slot;
            var s: array<f32, G>;
            for (var g = 0u; g < G; g++) {
                s[g] = -3.0e38;
            }
            var row = 0u;
            if (i < keys.end) {
                let j = key_position(keys, i);
                row = key_row(keys, min(j, keys.pos)); // masked keys past pos: a row the query reads
                if (j <= keys.pos) {
                    let base = row * p.kv_stride + kv_head * HEAD_DIM;
                    for (var g = 0u; g < G; g++) {
                        s[g] = 0.0;
                    }
                    if (ROPE) {
                        for (var d = 0u; d < p.rot_half; d++) {
                            let cs = sin_cos(f32(i) * inv_freq[d]);
                            let a = k_cache[base + d];
                            let b = k_cache[base + d + p.rot_half];
                            let ka = a * cs.x - b * cs.y;
                            let kb = b * cs.x + a * cs.y;
                            for (var g = 0u; g < G; g++) {
                                s[g] += q_row[g * HEAD_DIM + d] * ka;
                                s[g] += q_row[g * HEAD_DIM + d + p.rot_half] * kb;
                            }
                        }
                        for (var d = 2u * p.rot_half; d < HEAD_DIM; d++) {
                            let kd = k_cache[base + d];
                            for (var g = 0u; g < G; g++) {
                                s[g] += q_row[g * HEAD_DIM + d] * kd;
                            }
                        }
                    } else {
                        for (var d = 0u; d < HEAD_DIM; d++) {
                            let kd = k_cache[base + d];
                            for (var g = 0u; g < G; g++) {
                                s[g] += q_row[g * HEAD_DIM + d] * kd;
                            }
                        }
                    }
                    if (p.softcap > 0.0) {
                        for (var g = 0u; g < G; g++) {
                            s[g] = soft_cap(s[g]);
                        }
                    }
                }
            }
            for (var g = 0u; g < G; g++) {
                scores[r * G + g] = s[g];
                weights[g * TILE + slot] = weight(s[g], m[g]);
                above = above || s[g] > m[g] + HEADROOM;
            }
            rows[slot] = row;
        }
        if (above) {
            raise = 1u; // every writer writes the same value
        }
        if (workgroupUniformLoad(&raise) == 1u) {
            var tile_max: array<f32, G>;
            for (var g = 0u; g < G; g++) {
                tile_max[g] = -3.0e38;
                for (var r = 0u; r < PER_THREAD; r++) {
                    tile_max[g] = max(tile_max[g], scores[r * G + g]);
                }
            }
            let maxes = reduce(lid, tile_max, true);
            if (lid == 0u) {
                raise = 0u; // every invocation has read it: reduce's barriers came after
            }
            for (var g = 0u; g < G; g++) {
                let m_new = max(m[g], maxes[g]);
                let corr = exp(m[g] - m_new);
                l[g] *= corr;
                for (var r = 0u; r < DIMS_PER_THREAD; r++) {
                    acc[g * DIMS_PER_THREAD + r] *= corr;
                }
                m[g] = m_new;
                for (var r = 0u; r < PER_THREAD; r++) {
                    weights[g * TILE + lid + r * WG] = weight(scores[r * G + g], m_new);
                }
            }
            workgroupBarrier();
        }
        for (var g = 0u; g < G; g++) {
            for (var r = 0u; r < PER_THREAD; r++) {
                l[g] += weights[g * TILE + lid + r * WG];
            }
        }
        // P·V: invocations over the head's dims, keys in turn.
        let count = min(TILE, keys.end - t0);
        for (var r = 0u; r < DIMS_PER_THREAD; r++) {
            let d = lid + r * WG;
            if (d < HEAD_DIM) {
                var a: array<f32, G>;
                for (var g = 0u; g < G; g++) {
                    a[g] = acc[g * DIMS_PER_THREAD + r];
                }
                for (var k = 0u; k < count; k++) {
                    let v = v_cache[rows[k] * p.kv_stride + kv_head * HEAD_DIM + d];
                    for (var g = 0u; g < G; g++) {
                        a[g] += weights[g * TILE + k] * v;
                    }
                }
                for (var g = 0u; g < G; g++) {
                    acc[g * DIMS_PER_THREAD + r] = a[g];
                }
            }
        }
        workgroupBarrier();
    }

    // One piece (max_splits 1): the normalised output itself, [queries, heads, HEAD_DIM].
    // Else this piece's (reference, denominator, unnormalised output) for the merge; an
    // unused split leaves -3e38 and 0, which the merge ignores.
    let sums = reduce(lid, l, false);
    for (var g = 0u; g < G; g++) {
        let head_row = query * p.heads + head0 + g;
        let base = (head_row * p.max_splits + split) * (HEAD_DIM + 2u);
        if (lid == 0u && p.max_splits > 1u) {
            partial[base] = m[g];
            partial[base + 1u] = sums[g];
        }
        for (var r = 0u; r < DIMS_PER_THREAD; r++) {
            let d = lid + r * WG;
            if (d < HEAD_DIM) {
                let a = acc[g * DIMS_PER_THREAD + r];
                if (p.max_splits == 1u) {
                    partial[head_row * HEAD_DIM + d] = a / sums[g];
                } else {
                    partial[base + 2u + d] = a;
                }
            }
        }
    }
}

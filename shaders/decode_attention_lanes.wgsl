// Decode attention for CPU adapters with subgroups of at least 8 lanes (lavapipe): the same
// pieces as decode_attention.wgsl (read its header for the visible keys, cache rows, RoPE
// inside attention, block-sparse masks, GQA groups and the pieces' layout), shaped for a
// driver that runs a subgroup as the SIMD lanes of one CPU thread. A workgroup is one
// subgroup of LANES invocations, each taking every LANES-th key of the piece for all GROUP
// query heads of a KV head: a lane keeps its own online-softmax state (no reduction and no
// barrier per key) and the lanes' states are merged once at the end (subgroupMax and
// subgroupAdd). Every query chunk, score and output chunk is a named value (`#for` blocks,
// unrolled by the preprocessor): lavapipe keeps a private array indexed in a loop in memory
// and reads it lane by lane, which made the earlier form of this kernel, arrays over dims,
// three times slower. runtime/src/kernels/decode_attention.rs picks this kernel (head dims
// and RoPE pairs in multiples of 4) and its GROUP.


@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> partial: array<f32>; // with one piece: the output
@group(0) @binding(6) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(7) var<storage, read> mask: array<u32>; // PAGED: the block table
#if PAGED
#include "batch.wgsl"
@group(0) @binding(8) var<uniform> batch: Batch;
#endif

#include "decode_keys.wgsl"

const LANES: u32 = 8u;
const CHUNKS: u32 = HEAD_DIM / 4u; // vec4s per head
const SPLIT_KEYS: u32 = 256u;
// Keys per pass of the inner key loop: llvmpipe ends a loop after 65535 iterations, and an
// inner loop starts its count afresh.
const KEYS_PER_PASS: u32 = 4096u;
const G: u32 = GROUP;

var<workgroup> n_blocks: u32;

// The vec4 of dims 4c..4c+3 rotated by `at` positions, given the vec4 its rotation pairs it
// with (dims +- rot_half) and the four frequencies; dims past the rotated pairs unchanged.
fn rotate(x: vec4<f32>, partner: vec4<f32>, c: u32, freq: vec4<f32>, at: f32) -> vec4<f32> {
    if (4u * c >= 2u * p.rot_half) {
        return x;
    }
    let angle = at * freq;
    let c0 = sin_cos(angle.x);
    let c1 = sin_cos(angle.y);
    let c2 = sin_cos(angle.z);
    let c3 = sin_cos(angle.w);
    let cos4 = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
    let sin4 = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
    if (4u * c < p.rot_half) {
        return x * cos4 - partner * sin4;
    }
    return x * cos4 + partner * sin4;
}

// Chunk c's rotation partner (ROPE).
fn partner_of(c: u32) -> u32 {
    let half = p.rot_half / 4u;
    if (c < half) {
        return c + half;
    }
    return c - half;
}

// The frequencies of chunk c's dims (ROPE; zero past the rotated pairs).
fn freqs(c: u32) -> vec4<f32> {
    var d = 4u * c;
    if (d >= 2u * p.rot_half) {
        return vec4<f32>(0.0);
    }
    if (d >= p.rot_half) {
        d -= p.rot_half;
    }
    return vec4<f32>(inv_freq[d], inv_freq[d + 1u], inv_freq[d + 2u], inv_freq[d + 3u]);
}

// Chunk c of the query row from `at`, scaled (and rotated by `pos`, ROPE).
fn query_chunk(at: u32, c: u32, freq: vec4<f32>, pos: f32) -> vec4<f32> {
    let x = q[at + c] * p.scale;
    if (ROPE) {
        return rotate(x, q[at + partner_of(c)] * p.scale, c, freq, pos);
    }
    return x;
}

// Chunk c of the key row from `base` (rotated by `pos`, ROPE).
fn key_chunk(base: u32, c: u32, freq: vec4<f32>, pos: f32) -> vec4<f32> {
    let k = k_cache[base + c];
    if (ROPE) {
        return rotate(k, k_cache[base + partner_of(c)], c, freq, pos);
    }
    return k;
}

// The score of the key whose products with the query sum to `d`; -3e38 where it is not seen.
fn score(d: vec4<f32>, seen: bool) -> f32 {
    var s = d.x + d.y + d.z + d.w;
    if (p.softcap > 0.0) {
        s = soft_cap(s);
    }
    return select(-3.0e38, s, seen);
}

// Output chunk c of a head: normalised into the output with one piece, else unnormalised
// after the piece's (max, denominator).
fn store_chunk(head_row: u32, base: u32, c: u32, a: vec4<f32>, total: f32) {
    for (var e = 0u; e < 4u; e++) {
        if (p.max_splits == 1u) {
            partial[head_row * HEAD_DIM + 4u * c + e] = a[e] / total;
        } else {
            partial[base + 2u + 4u * c + e] = a[e];
        }
    }
}

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head0 = wid.x * G; // this workgroup's first query head
    let split = wid.y;
    let query = wid.z;
    let kv_head = head0 / (p.heads / p.kv_heads);
    let keys = visible_keys(head0, query, split, lid);

    // The G queries whole in every lane; each head's running max, denominator and output.
#for c in HEAD_DIM / 4
    var freq_${c} = vec4<f32>(0.0);
    if (ROPE) {
        freq_${c} = freqs(${c}u);
    }
#endfor
#for g in GROUP
    let at_${g} = (query * p.heads + head0 + ${g}u) * CHUNKS;
#for c in HEAD_DIM / 4
    let q_${g}_${c} = query_chunk(at_${g}, ${c}u, freq_${c}, f32(keys.n - 1u));
    var acc_${g}_${c} = vec4<f32>(0.0);
#endfor
    var m_${g} = -3.0e38;
    var l_${g} = 0.0;
#endfor

    for (var t0 = keys.start; t0 < keys.end; t0 += KEYS_PER_PASS) {
        for (var i0 = t0; i0 < min(keys.end, t0 + KEYS_PER_PASS); i0 += LANES) {
            // Lanes past the piece's end read its last key and weigh it 0; masked keys past
            // pos read a row the query sees.
            let i = min(i0 + lid, keys.end - 1u);
            let j = key_position(keys, i);
            let seen = j <= keys.pos && i0 + lid < keys.end;
            let base = (key_row(keys, min(j, keys.pos)) * p.kv_stride + kv_head * HEAD_DIM) / 4u;
#for g in GROUP
            var d_${g} = vec4<f32>(0.0);
#endfor
#for c in HEAD_DIM / 4
            let k_${c} = key_chunk(base, ${c}u, freq_${c}, f32(i));
#for g in GROUP
            d_${g} += q_${g}_${c} * k_${c};
#endfor
#endfor
#for g in GROUP
            let s_${g} = score(d_${g}, seen);
            let top_${g} = max(m_${g}, s_${g});
            let corr_${g} = exp(m_${g} - top_${g});
            let w_${g} = weight(s_${g}, top_${g});
            l_${g} = l_${g} * corr_${g} + w_${g};
            m_${g} = top_${g};
#endfor
#for c in HEAD_DIM / 4
            let v_${c} = v_cache[base + ${c}u];
#for g in GROUP
            acc_${g}_${c} = acc_${g}_${c} * corr_${g} + w_${g} * v_${c};
#endfor
#endfor
        }
    }

    // The lanes' states merged against the largest max. One piece (max_splits 1): the
    // normalised output, [queries, heads, HEAD_DIM]. Else the piece's (max, denominator,
    // unnormalised output); an unused split leaves -3e38 and 0.
#for g in GROUP
    {
        let top = subgroupMax(m_${g});
        let scale = select(0.0, exp(m_${g} - top), m_${g} > -1.0e38);
        let total = subgroupAdd(l_${g} * scale);
        let head_row = query * p.heads + head0 + ${g}u;
        let base = (head_row * p.max_splits + split) * (HEAD_DIM + 2u);
        if (lid == 0u && p.max_splits > 1u) {
            partial[base] = top;
            partial[base + 1u] = total;
        }
#for c in HEAD_DIM / 4
        let a_${c} = subgroupAdd(acc_${g}_${c} * scale);
        if (lid == ${c}u % LANES) {
            store_chunk(head_row, base, ${c}u, a_${c}, total);
        }
#endfor
    }
#endfor
}

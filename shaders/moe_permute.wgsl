// Token permutation for the grouped expert matmuls, in one workgroup. The R = T * k
// (token, expert) assignments of route [T, 2k] (see moe_route.wgsl) are sorted by expert,
// stably (by token within an expert), so each expert's rows are contiguous and only experts
// with rows are ever read. perm (u32 words):
//   [0, 2R)          per sorted row r: its token, its expert
//   [2R, 3R)         per assignment a = t * k + j: its sorted row
//   [3R, 3R + E)     rows per expert
//   [3R + E]         number of 64-row tiles, then per tile: its first row, its row count
// Tiles never straddle experts, so a grouped matmul workgroup runs one expert's weights.
// counts [E] accumulates rows per expert over the sequence's runs (routing statistics).

struct Params { assignments: u32, experts: u32, k: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> route: array<u32>;
@group(0) @binding(2) var<storage, read_write> perm: array<u32>;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>;

const WG: u32 = 256u;
const TILE: u32 = 64u;

fn expert_of(a: u32) -> u32 {
    return route[(a / p.k) * 2u * p.k + a % p.k];
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let r = p.assignments;
    let sizes = 3u * r;
    let tiles = sizes + p.experts;
    for (var e = lid; e < p.experts; e += WG) {
        var c = 0u;
        for (var a = 0u; a < r; a++) {
            c += select(0u, 1u, expert_of(a) == e);
        }
        perm[sizes + e] = c;
        counts[e] += c;
    }
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) {
        var n = 0u;
        var row = 0u;
        for (var e = 0u; e < p.experts; e++) {
            let c = perm[sizes + e];
            for (var s = 0u; s < c; s += TILE) {
                perm[tiles + 1u + 2u * n] = row + s;
                perm[tiles + 2u + 2u * n] = min(TILE, c - s);
                n++;
            }
            row += c;
        }
        perm[tiles] = n;
    }
    for (var e = lid; e < p.experts; e += WG) {
        var row = 0u;
        for (var f = 0u; f < e; f++) {
            row += perm[sizes + f];
        }
        for (var a = 0u; a < r; a++) {
            if (expert_of(a) == e) {
                perm[2u * row] = a / p.k;
                perm[2u * row + 1u] = e;
                perm[2u * r + a] = row;
                row++;
            }
        }
    }
}

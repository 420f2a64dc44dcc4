// The gate of a batch of decode steps recorded in one submission (runtime/src/decode_loop.rs):
// before each step, decide whether it runs. A step is skipped once an end token has been fed
// in this batch: `token` (the token the step is about to feed, copied there from the previous
// step's sampler) is one of `end_ids[1 ..= end_ids[0]]`, or an earlier step already stopped
// (`ended`). A skipped step's dispatches get zero workgroups through their indirect
// arguments (`args`, three words per dispatch, copied from `counts` otherwise).

struct Params { words: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> counts: array<u32>;
@group(0) @binding(2) var<storage, read_write> args: array<u32>;
@group(0) @binding(3) var<storage, read_write> ended: array<u32>;
@group(0) @binding(4) var<storage, read> token: array<u32>;
@group(0) @binding(5) var<storage, read> end_ids: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // Every invocation reaches the same answer from the same words, so the racing write of
    // `ended` below stores one value.
    var stop = ended[0] != 0u;
    let t = token[0];
    for (var i = 0u; i < end_ids[0]; i++) {
        stop = stop || end_ids[1u + i] == t;
    }
    let i = group_index(wid, nwg) * 64u + lid;
    if (i == 0u && stop) {
        ended[0] = 1u;
    }
    if (i < p.words) {
        args[i] = select(counts[i], 0u, stop);
    }
}

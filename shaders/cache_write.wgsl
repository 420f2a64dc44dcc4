// Append the rows of src [n_tokens, width] to a KV cache: token t (absolute position
// step.pos + t) goes to row kv_row(step.pos + t): positions below `sinks` keep their own row,
// later ones wrap around a ring of `ring` rows after them (runtime/src/kv.rs). A linear cache
// is sinks = 0 with a ring as long as the cache.

struct Params { width: u32, n: u32, sinks: u32, ring: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> cache: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let pos = step.pos + i / p.width;
    var row = pos;
    if (pos >= p.sinks) {
        row = p.sinks + (pos - p.sinks) % p.ring;
    }
    let d = row * p.width + i % p.width;
    if (d < arrayLength(&cache)) {
        cache[d] = src[i];
    }
}

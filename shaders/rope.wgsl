// Rotary position embedding, in place, on x [T, heads, head_dim] (the rotate-half layout of
// Hugging Face Llama): dims i and i + rot/2 rotate by angle (pos + t) * inv_freq[i].
// inv_freq is computed on the CPU, so plain RoPE and Llama-3 frequency scaling share this kernel.

struct Params { n_tokens: u32, heads: u32, head_dim: u32, rot_half: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * 256u + lid;
    let per_token = p.heads * p.rot_half;
    if (idx >= p.n_tokens * per_token) {
        return;
    }
    let t = idx / per_token;
    let rem = idx % per_token;
    let h = rem / p.rot_half;
    let i = rem % p.rot_half;
    let angle = f32(step.pos + t) * inv_freq[i];
    let cs = sin_cos(angle);
    let c = cs.x;
    let s = cs.y;
    let base = (t * p.heads + h) * p.head_dim;
    let x1 = x[base + i];
    let x2 = x[base + i + p.rot_half];
    x[base + i] = x1 * c - x2 * s;
    x[base + i + p.rot_half] = x2 * c + x1 * s;
}

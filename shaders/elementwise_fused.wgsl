// A chain of elementwise ops in one pass (kernels/elementwise_fused.rs): what a run of
// shaders/elementwise.wgsl dispatches computes, without writing and reading back the
// intermediate results. Step k computes v[k] = elementwise_op(OPk, operand(Ak), operand(Bk))
// for each element i < n; an operand j < 8 is input j (in0..in5) at i % lens[j] (the output's
// length, or a row vector broadcast over the rows), j >= 8 is step j - 8's value. The last of
// the STEPS steps is written to out. The steps are specialisation constants, so the
// compiler sees a straight line of the ops' code.

struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32, lens: array<vec4<u32>, 2> }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read> in3: array<f32>;
@group(0) @binding(5) var<storage, read> in4: array<f32>;
@group(0) @binding(6) var<storage, read> in5: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

#include "elementwise_ops.wgsl"

var<private> v: array<f32, 8>;

// Operand j at element i.
fn operand(j: u32, i: u32) -> f32 {
    switch j {
        case 0u: { return in0[i % p.lens[0].x]; }
        case 1u: { return in1[i % p.lens[0].y]; }
        case 2u: { return in2[i % p.lens[0].z]; }
        case 3u: { return in3[i % p.lens[0].w]; }
        case 4u: { return in4[i % p.lens[1].x]; }
        case 5u: { return in5[i % p.lens[1].y]; }
        default: { return v[(j - 8u) & 7u]; }
    }
}

fn step(k: u32, op: u32, a: u32, b: u32, i: u32) {
    if (k < STEPS) {
        v[k] = elementwise_op(op, operand(a, i), operand(b, i));
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    step(0u, OP0, A0, B0, i);
    step(1u, OP1, A1, B1, i);
    step(2u, OP2, A2, B2, i);
    step(3u, OP3, A3, B3, i);
    step(4u, OP4, A4, B4, i);
    step(5u, OP5, A5, B5, i);
    step(6u, OP6, A6, B6, i);
    step(7u, OP7, A7, B7, i);
    out[i] = v[STEPS - 1u];
}

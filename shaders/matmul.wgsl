// The tiled prefill matmul with f32 tiles (shaders/matmul_tiles.wgsl).
alias tile_t = f32;
#include "matmul_tiles.wgsl"

// GROUPED: invocation 0's `info` for the whole workgroup, passed through a_tile[0] (the f32
// tiles fill workgroup memory) and read back as a uniform value; every invocation has read
// it before the tile loop overwrites a_tile.
fn share_info(lid: u32, info: vec4<u32>) -> vec4<u32> {
    if (lid == 0u) {
        a_tile[0] = bitcast<vec4<f32>>(info);
    }
    let shared_info = bitcast<vec4<u32>>(workgroupUniformLoad(&a_tile[0]));
    workgroupBarrier();
    return shared_info;
}

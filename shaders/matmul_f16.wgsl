// The tiled prefill matmul with f16 tiles (shaders/matmul_tiles.wgsl): workgroup memory and
// products in f16, sums in f32; only on adapters with shader-f16.
enable f16;
alias tile_t = f16;
#include "matmul_tiles.wgsl"

// GROUPED: invocation 0's `info` for the whole workgroup, read back as a uniform value.
var<workgroup> group_info: vec4<u32>;

fn share_info(lid: u32, info: vec4<u32>) -> vec4<u32> {
    if (lid == 0u) {
        group_info = info;
    }
    return workgroupUniformLoad(&group_info);
}

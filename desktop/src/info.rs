//! `kestrel info`: the adapter, its features and the limits the kernels read.

use crate::cli::InfoArgs;
use crate::stdout::outln;
use crate::{open_gpu, CliResult};

pub fn run(a: &InfoArgs) -> CliResult {
    let gpu = open_gpu(&a.device)?;
    let c = &gpu.caps;
    let yes = |b: bool| if b { "yes" } else { "no" };
    outln!("adapter: {}", gpu.info.name);
    outln!("backend: {}", gpu.backend_name());
    outln!("device type: {:?}", gpu.info.device_type);
    outln!("driver: {} {}", gpu.info.driver, gpu.info.driver_info);
    outln!("features:");
    outln!("  shader-f16: {}", yes(c.shader_f16));
    if c.subgroups {
        outln!(
            "  subgroups: yes (size {}..{})",
            c.subgroup_min_size,
            c.subgroup_max_size
        );
    } else {
        outln!("  subgroups: no");
    }
    outln!("  timestamp queries: {}", yes(c.timestamps));
    outln!("limits:");
    outln!(
        "  max storage buffer binding: {} MiB",
        c.max_storage_binding >> 20
    );
    outln!("  max buffer size: {} MiB", c.max_buffer_size >> 20);
    outln!(
        "  storage buffers per stage: {}",
        c.max_storage_buffers_per_stage
    );
    outln!(
        "  invocations per workgroup: {}",
        c.max_invocations_per_workgroup
    );
    outln!("  workgroup storage: {} bytes", c.max_workgroup_storage);
    outln!("  workgroups per dimension: {}", c.max_workgroups_per_dim);
    Ok(())
}

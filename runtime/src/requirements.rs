//! What the kernels need from an adapter. [`crate::Gpu::new`] checks it on every backend
//! before opening the device, so an adapter that cannot run them is refused with one message
//! naming each shortfall, instead of failing at the first dispatch.

use crate::device::Caps;

/// The most storage buffers any one kernel binds: the linear recurrence's outputs pass binds
/// eight (k, v, decay, constants, a/b, q, state, out), matvec seven. WebGPU guarantees eight
/// per stage.
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 8;
/// The largest `@workgroup_size` of any kernel. WebGPU guarantees 256.
pub const INVOCATIONS_PER_WORKGROUP: u32 = 256;
/// The storage binding below which weights would be split into absurdly many chunks: a
/// vocabulary row of a small model in f32. WebGPU guarantees 128 MiB.
pub const MIN_STORAGE_BINDING: u64 = 16 << 20;

/// Every limit of `caps` that is below the kernels' needs, in words; empty when all fit.
pub fn shortfalls(caps: &Caps) -> Vec<String> {
    let mut out = Vec::new();
    if caps.max_storage_buffers_per_stage < STORAGE_BUFFERS_PER_STAGE {
        out.push(format!(
            "{} storage buffers per shader stage (need {STORAGE_BUFFERS_PER_STAGE})",
            caps.max_storage_buffers_per_stage
        ));
    }
    if caps.max_invocations_per_workgroup < INVOCATIONS_PER_WORKGROUP {
        out.push(format!(
            "{} invocations per workgroup (need {INVOCATIONS_PER_WORKGROUP})",
            caps.max_invocations_per_workgroup
        ));
    }
    if caps.max_storage_binding < MIN_STORAGE_BINDING {
        out.push(format!(
            "a storage binding of {} bytes (need {MIN_STORAGE_BINDING})",
            caps.max_storage_binding
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants must cover every shader in shaders/: count the storage bindings (its
    /// own and those of the snippets it includes) and read the literal workgroup sizes of
    /// each file.
    #[test]
    fn constants_cover_every_shader() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("shaders/") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
                continue;
            }
            let own = std::fs::read_to_string(&path).expect("read shader");
            let mut text = own.clone();
            for line in own.lines() {
                if let Some(name) = line.trim().strip_prefix("#include") {
                    let name = name.trim().trim_matches('"');
                    text += &std::fs::read_to_string(dir.join(name)).expect("read include");
                }
            }
            let storage = text.matches("var<storage").count() as u32;
            assert!(
                storage <= STORAGE_BUFFERS_PER_STAGE,
                "{} binds {storage} storage buffers",
                path.display()
            );
            for (i, _) in text.match_indices("@workgroup_size(") {
                let rest = &text[i + "@workgroup_size(".len()..];
                let arg = &rest[..rest.find(')').expect("closing parenthesis")];
                if let Ok(n) = arg.trim().parse::<u32>() {
                    assert!(n <= INVOCATIONS_PER_WORKGROUP, "{}: {n}", path.display());
                }
            }
            seen += 1;
        }
        assert!(seen > 10, "found only {seen} shaders in {}", dir.display());
    }

    #[test]
    fn small_limits_are_named() {
        let caps = Caps {
            shader_f16: false,
            subgroups: false,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            timestamps: false,
            max_storage_binding: 1 << 20,
            max_buffer_size: 1 << 30,
            max_storage_buffers_per_stage: 4,
            max_invocations_per_workgroup: 128,
            max_workgroup_storage: 16384,
            max_workgroups_per_dim: 65535,
            min_storage_offset_alignment: 256,
            weight_texture_bytes: 0,
        };
        let s = shortfalls(&caps);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].contains("storage buffers"));
        assert!(s[1].contains("invocations"));
        assert!(s[2].contains("storage binding"));
        let ok = Caps {
            max_storage_binding: 128 << 20,
            max_storage_buffers_per_stage: STORAGE_BUFFERS_PER_STAGE,
            max_invocations_per_workgroup: 256,
            ..caps
        };
        assert!(shortfalls(&ok).is_empty());
    }
}

//! A usable `XDG_RUNTIME_DIR` before any device opens. Without one, Mesa's Vulkan and GL
//! drivers (through libwayland) print "error: XDG_RUNTIME_DIR is invalid or not set in the
//! environment." on every device open, on runs that succeed. When the variable is unset or
//! not a directory, point it at a private (0700) directory of ours under the temp dir.

/// Call at the start of `main`, before any thread exists (it sets an environment variable).
#[cfg(all(unix, not(target_os = "macos")))]
pub fn ensure() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    let usable = |p: &std::path::Path| p.is_absolute() && p.is_dir();
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| usable(std::path::Path::new(&d))) {
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("kestrel-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    // Use it only if it is a real directory that is ours alone (another user may have made
    // one by that name first); otherwise leave the environment as it is.
    let Ok(meta) = std::fs::symlink_metadata(&dir) else {
        return;
    };
    if meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0 {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

/// Other systems have no such variable.
#[cfg(not(all(unix, not(target_os = "macos"))))]
pub fn ensure() {}

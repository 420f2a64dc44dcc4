//! The real models the tests check Kestrel against: SmolLM2-135M-Instruct (Q4_1 GGUF, the
//! default chat model) and the catalogue models of tests/tests/real_models.rs, in the cache
//! that `kestrel chat` / `kestrel pull` download them to (desktop/src/catalogue.rs;
//! `KESTREL_CACHE`, else `$XDG_CACHE_HOME/kestrel`, else `~/.cache/kestrel`). tests/run.sh
//! fetches them before the tests run.
//!
//! A test that needs it and does not find it FAILS, saying how to get it. Only with
//! `KESTREL_OFFLINE=1` does it pass without checking: it prints what it did not check (to
//! stderr; `cargo test -- --nocapture` shows it) and, when `KESTREL_UNCHECKED` names a
//! file, appends the same line there for a summary (tests/run.sh prints it at the end).

use std::io::Write;
use std::path::PathBuf;

/// The file name `kestrel chat` gives the model in the cache (its `file` in desktop/src/catalogue.rs).
const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Whether `KESTREL_OFFLINE=1` is set: tests that need a download may go unchecked.
pub fn offline() -> bool {
    std::env::var("KESTREL_OFFLINE").is_ok_and(|v| v == "1")
}

/// Where SmolLM2 lives in Kestrel's cache.
pub fn smollm2_path() -> PathBuf {
    cached_path(SMOLLM2_FILE)
}

/// Where `kestrel pull` puts the catalogue model stored as `file`.
pub fn cached_path(file: &str) -> PathBuf {
    kestrel_models::cache_dir().join("models").join(file)
}

/// SmolLM2's GGUF for the check described by `what`. Panics when it is missing, unless
/// `KESTREL_OFFLINE=1`: then reports `what` as not checked and returns None.
pub fn smollm2(what: &str) -> Option<PathBuf> {
    cached(
        SMOLLM2_FILE,
        "cargo run -p kestrel -- chat </dev/null",
        what,
    )
}

/// The cached model `file` (fetched by `fetch`, a command) for the check `what`; as
/// [`smollm2`]: missing, it panics unless `KESTREL_OFFLINE=1`.
pub fn cached(file: &str, fetch: &str, what: &str) -> Option<PathBuf> {
    let path = cached_path(file);
    if path.is_file() {
        return Some(path);
    }
    if !offline() {
        panic!(
            "{} is missing, so {what} cannot be checked. Fetch it once with `{fetch}` \
             (tests/run.sh does), or set KESTREL_OFFLINE=1 to skip the real-model checks on \
             purpose.",
            path.display()
        );
    }
    not_checked(&format!("{what} (needs {})", path.display()));
    None
}

/// Report a check that did not run: on stderr, and in the `KESTREL_UNCHECKED` file if set.
pub fn not_checked(what: &str) {
    let line = format!("KESTREL_OFFLINE=1: not checked: {what}");
    eprintln!("{line}");
    if let Some(file) = std::env::var_os("KESTREL_UNCHECKED") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            panic!("cannot append to KESTREL_UNCHECKED={file:?}: {e}");
        }
    }
}

//! The pipeline cache file kept between runs (desktop/src/pipeline_cache.rs): a Vulkan run
//! writes it to the cache directory, a later run reads it without a note, and a damaged file
//! is ignored with a note and rewritten. On the fixture llama_gqa with `kestrel logits`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// `kestrel logits` on llama_gqa with `cache` as the cache directory; its stderr.
fn logits(cache: &Path) -> String {
    let xdg = std::env::temp_dir().join("kestrel-tests-xdg");
    let _ = std::fs::create_dir_all(&xdg);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700));
    }
    let out_file = cache.join("logits.npy");
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .env("KESTREL_TUNE", "off")
        .args(["logits", "--model"])
        .arg(fixture("llama_gqa"))
        .args(["--tokens", "5,17,42", "--backend", "vulkan", "--out"])
        .arg(&out_file)
        .env("XDG_RUNTIME_DIR", &xdg)
        .env("KESTREL_CACHE", cache)
        .output()
        .expect("run kestrel");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(!stderr.contains("error:"), "{stderr}");
    stderr
}

/// The one file in `cache`/pipelines.
fn cache_file(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache.join("pipelines"))
        .expect("a pipelines folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn the_pipeline_cache_file_is_kept_checked_and_rebuilt() {
    let cache = std::env::temp_dir().join(format!("kestrel-tests-plcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache).expect("cache dir");

    assert!(!logits(&cache).contains("pipeline cache"));
    let file = cache_file(&cache);
    let written = std::fs::read(&file).expect("read the cache file");
    assert!(written.starts_with(b"KESTRPL1"), "{file:?}");

    let second = logits(&cache);
    assert!(!second.contains("pipeline cache"), "{second}");

    // One flipped byte: the checksum refuses it, the run goes on, and the file is rewritten.
    let mut damaged = written.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x55;
    std::fs::write(&file, &damaged).expect("damage the file");
    let third = logits(&cache);
    assert!(
        third.contains("note: ignored the pipeline cache") && third.contains("checksum"),
        "{third}"
    );
    assert_ne!(std::fs::read(&file).expect("reread"), damaged);
    assert!(!logits(&cache).contains("pipeline cache"));

    // Another program's file under the name.
    std::fs::write(&file, b"something else entirely").expect("overwrite");
    assert!(logits(&cache).contains("not a Kestrel pipeline cache file"));
    let _ = std::fs::remove_dir_all(&cache);
}

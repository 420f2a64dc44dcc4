//! The driver's pipeline cache kept between runs, where the backend has one (wgpu: Vulkan):
//! `pipelines/<key>.bin` in the cache directory (`$KESTREL_CACHE`, else
//! `$XDG_CACHE_HOME/kestrel`, else `~/.cache/kestrel`), one file per adapter, driver and wgpu
//! version ([`Gpu::pipeline_cache_key`]). A file is the data behind a SHA-256 of it, so a
//! torn or altered file never reaches the driver; wgpu then checks its own header. A file
//! that fails either check is ignored with a note and replaced when the command ends.
//! Written atomically: a temporary file renamed over the old one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kestrel_runtime::Gpu;
use sha2::{Digest, Sha256};

/// The devices opened by this process, whose caches [`save_all`] writes back.
static OPENED: Mutex<Vec<Arc<Gpu>>> = Mutex::new(Vec::new());

/// What a file starts with, before the SHA-256 of the data that follows.
const MAGIC: &[u8; 8] = b"KESTRPL1";

fn path(gpu: &Gpu) -> Option<PathBuf> {
    let key = gpu.pipeline_cache_key()?;
    Some(
        kestrel_models::cache_dir()
            .join("pipelines")
            .join(format!("{key}.bin")),
    )
}

/// The data of a cache file, or why it is refused.
fn unwrap_file(bytes: &[u8]) -> Result<&[u8], &'static str> {
    let header = MAGIC.len() + 32;
    if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a Kestrel pipeline cache file");
    }
    let (sum, data) = bytes[MAGIC.len()..].split_at(32);
    if Sha256::digest(data).as_slice() != sum {
        return Err("its checksum does not match (a torn or altered file)");
    }
    Ok(data)
}

/// Start `gpu`'s pipeline cache from its file, if there is one, and remember `gpu` so that
/// [`save_all`] writes its cache back. A refused file is a note on stderr, not an error.
pub fn load(gpu: &Arc<Gpu>) {
    let Some(path) = path(gpu) else {
        return;
    };
    if let Ok(mut opened) = OPENED.lock() {
        opened.push(gpu.clone());
    }
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let loaded = unwrap_file(&bytes)
        .map_err(str::to_string)
        .and_then(|data| {
            pollster::block_on(gpu.load_pipeline_cache(data)).map_err(|e| e.to_string())
        });
    if let Err(why) = loaded {
        eprintln!(
            "note: ignored the pipeline cache {} ({why}); it will be rebuilt",
            path.display()
        );
    }
}

/// Write the pipeline cache of every device [`load`] saw (errors are notes: the cache only
/// saves time).
pub fn save_all() {
    let opened = match OPENED.lock() {
        Ok(mut o) => std::mem::take(&mut *o),
        Err(_) => return,
    };
    for gpu in opened {
        if let Err(e) = save(&gpu) {
            eprintln!("note: could not save the pipeline cache: {e}");
        }
    }
}

fn save(gpu: &Gpu) -> Result<(), String> {
    let (Some(path), Some(data)) = (path(gpu), gpu.pipeline_cache_data()) else {
        return Ok(());
    };
    let dir = path.parent().ok_or("bad cache path")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut file = Vec::with_capacity(MAGIC.len() + 32 + data.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&Sha256::digest(&data));
    file.extend_from_slice(&data);
    // A name of this process's own, so concurrent runs never write the same temporary file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &file).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(data: &[u8]) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&Sha256::digest(data));
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn a_file_is_checked_before_its_data_is_used() {
        let data = b"wgpu pipeline cache bytes";
        assert_eq!(unwrap_file(&wrap(data)), Ok(&data[..]));
        let mut flipped = wrap(data);
        *flipped.last_mut().expect("bytes") ^= 1;
        assert!(unwrap_file(&flipped).is_err());
        let torn = wrap(data);
        assert!(unwrap_file(&torn[..torn.len() - 3]).is_err());
        assert!(unwrap_file(&torn[..20]).is_err());
        assert!(unwrap_file(b"garbage").is_err());
        assert!(unwrap_file(&[]).is_err());
    }
}

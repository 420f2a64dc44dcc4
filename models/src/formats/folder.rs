//! Files of a model folder, resolved inside it: a name read from a file (a shard listed in
//! model.safetensors.index.json) or a fixed name (tokenizer.json) must not lead outside the
//! folder, neither by `..`, an absolute path, nor a symlink.
//!
//! One exception keeps Hugging Face hub caches loadable: a folder `…/snapshots/<revision>`
//! holds symlinks into the sibling `…/blobs`, which count as inside.

use std::path::{Component, Path, PathBuf};

use crate::error::{ModelError, Result};

/// `entry` (a relative path named in `listed_in`, or a fixed file name) joined to `dir`, or
/// an error naming the entry when it would lead outside `dir`. A file that does not exist
/// is returned as joined (its reader reports it missing).
pub fn file_in_folder(dir: &Path, entry: &str, listed_in: &Path) -> Result<PathBuf> {
    let refuse = |message: String| ModelError::OutsideFolder {
        file: listed_in.to_path_buf(),
        entry: entry.to_string(),
        message,
    };
    let relative = Path::new(entry);
    if entry.is_empty() {
        return Err(refuse("is an empty file name".into()));
    }
    for c in relative.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(format!(
                    "leads outside the model folder {} ('..')",
                    dir.display()
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(format!(
                    "is an absolute path; files must be inside the model folder {}",
                    dir.display()
                )))
            }
        }
    }
    let path = dir.join(relative);
    let Ok(target) = path.canonicalize() else {
        return Ok(path);
    };
    let roots = allowed_roots(dir);
    if roots.iter().any(|root| target.starts_with(root)) {
        return Ok(path);
    }
    Err(refuse(format!(
        "is a symlink to {}, outside the model folder {}",
        target.display(),
        dir.display()
    )))
}

/// The canonical folder, and the hub cache's `blobs` beside `snapshots` when it is one.
fn allowed_roots(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let mut roots = vec![dir.clone()];
    let snapshots = dir.parent();
    if let Some(snapshots) = snapshots.filter(|s| s.file_name().is_some_and(|n| n == "snapshots")) {
        if let Some(repo) = snapshots.parent() {
            roots.push(repo.join("blobs"));
        }
    }
    roots
}

//! What `--model` names, tried in this order: a file or folder here; a model of the
//! catalogue by name (the cached file, pulled when missing); a Hugging Face Hub repository
//! (`org/name`, `org/name:FILE.gguf`).

use std::path::{Path, PathBuf};

use crate::catalogue;
use crate::hub::HubModel;

/// The local path of the model `spec` names, downloading it first where needed.
/// `offline`: use caches only.
pub fn resolve(spec: &Path, offline: bool) -> Result<PathBuf, String> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(text) = spec.to_str() else {
        return Ok(spec.to_path_buf());
    };
    if let Some(model) = catalogue::find(text) {
        if offline && !model.is_cached() {
            return Err(format!(
                "{text} is not in Kestrel's cache ({}) and Kestrel is offline; \
                 `kestrel pull {text}` fetches it",
                model.cached_path().display()
            ));
        }
        return model.obtain();
    }
    if let Some(hub) = HubModel::parse(text) {
        return hub.obtain(offline);
    }
    if looks_like_a_name(text) {
        return Err(format!(
            "no file or folder '{text}', and no model '{text}' in the catalogue (it has {}; \
             a Hugging Face repository is org/name)",
            catalogue::names()
        ));
    }
    // A path that is not there: the loader says so, naming it.
    Ok(spec.to_path_buf())
}

/// A short id for the model `spec` names: the catalogue name or repository as given, else
/// the file or folder name.
pub fn short_id(spec: &Path) -> Option<String> {
    let text = spec.to_str()?;
    if !spec.exists() && (catalogue::find(text).is_some() || HubModel::parse(text).is_some()) {
        return Some(text.to_string());
    }
    spec.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// A bare word, not a path: no separator and no file extension a model could have.
fn looks_like_a_name(text: &str) -> bool {
    let path_like = text.contains(['/', '\\'])
        || [".gguf", ".safetensors", ".pth", ".json"]
            .iter()
            .any(|ext| text.to_ascii_lowercase().ends_with(ext));
    !text.is_empty() && !path_like
}

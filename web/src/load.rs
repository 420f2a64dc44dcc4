//! Models from bytes the page fetched or the user picked: a GGUF file, or the files of a
//! Hugging Face folder (config.json, *.safetensors, tokenizer.json, tokenizer_config.json).
//! Uses the same loaders as the native `kestrel_models::load`; nothing is memory-mapped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kestrel_models::config::JsonConfig;
use kestrel_models::gguf::GgufFile;
use kestrel_models::safetensors::{Blob, SafetensorsFiles};
use kestrel_models::{Model, ModelError, TextTokenizer};
use kestrel_runtime::Gpu;

use crate::error::{Result, WebError};

/// A model from a whole GGUF file. `name` names the file in errors.
pub fn gguf(gpu: &Arc<Gpu>, name: &str, bytes: Vec<u8>) -> Result<Model> {
    let file = GgufFile::parse(Path::new(name), Blob::Owned(bytes))?;
    Ok(kestrel_models::model_from_gguf(gpu, &file)?)
}

/// A model from the files of a Hugging Face folder, given as (file name, bytes). Only the
/// base name of each file counts; files other than the ones named above are ignored.
pub fn hf_files(gpu: &Arc<Gpu>, folder: &str, files: Vec<(String, Vec<u8>)>) -> Result<Model> {
    let dir = PathBuf::from(folder);
    let mut config = None;
    let mut tokenizer = None;
    let mut tokenizer_config = None;
    let mut shards = Vec::new();
    for (name, bytes) in files {
        let base = name.rsplit('/').next().unwrap_or(&name).to_string();
        let path = dir.join(&base);
        match base.as_str() {
            "config.json" => config = Some((path, bytes)),
            "tokenizer.json" => tokenizer = Some((path, bytes)),
            "tokenizer_config.json" => tokenizer_config = Some((path, bytes)),
            b if b.ends_with(".safetensors") => shards.push((path, Blob::Owned(bytes))),
            _ => {}
        }
    }
    let (config_path, config_bytes) =
        config.ok_or_else(|| ModelError::NotFound(dir.join("config.json")))?;
    if shards.is_empty() {
        return Err(ModelError::NotFound(dir.join("model.safetensors")).into());
    }
    let config = JsonConfig::parse(&config_path, &String::from_utf8_lossy(&config_bytes))?;
    // The architecture is checked before any weight is read, as natively.
    kestrel_models::check_config(&config)?;
    // Shards in name order, like the index of a sharded checkpoint.
    shards.sort_by(|a, b| a.0.cmp(&b.0));
    let source = SafetensorsFiles::from_blobs(&dir, shards)?;
    let tokenizer = match tokenizer {
        Some((path, bytes)) => Some(TextTokenizer::from_bytes(&path, &bytes)?),
        None => None,
    };
    let chat = match tokenizer_config {
        Some((path, bytes)) => kestrel_models::chat_info_from_tokenizer_config(&JsonConfig::parse(
            &path,
            &String::from_utf8_lossy(&bytes),
        )?),
        None => Default::default(),
    };
    kestrel_models::build_model(gpu, &dir, &config, &source, tokenizer, chat)
        .map_err(WebError::from)
}

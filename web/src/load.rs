//! Models from bytes the page fetched or the user picked: a GGUF file, or the files of a
//! Hugging Face folder (config.json, *.safetensors, tokenizer.json, tokenizer_config.json).
//! Goes through the same registry path as the native `kestrel_models::load`: the family and
//! its config first (from config.json, or from the tensors of a folder without one, such as
//! BlinkDL's RWKV-7), then the weights. Nothing is memory-mapped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kestrel_models::families;
use kestrel_models::formats::config::JsonConfig;
use kestrel_models::formats::gguf::GgufFile;
use kestrel_models::formats::safetensors::{Blob, SafetensorsFiles};
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
    if shards.is_empty() {
        return Err(ModelError::NotFound(dir.join("model.safetensors")).into());
    }
    // The family and its config before any weight is read, as natively.
    let network = match config {
        Some((path, bytes)) => Some(families::from_config(&JsonConfig::parse(
            &path,
            &String::from_utf8_lossy(&bytes),
        )?)?),
        None => None,
    };
    // Shards in name order, like the index of a sharded checkpoint.
    shards.sort_by(|a, b| a.0.cmp(&b.0));
    let source = SafetensorsFiles::from_blobs(&dir, shards)?;
    let network = match network {
        Some(n) => n,
        None => families::from_tensors(&source)?
            .ok_or_else(|| ModelError::NotFound(dir.join("config.json")))?,
    };
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
    kestrel_models::build_model(gpu, dir, network, &source, tokenizer, chat).map_err(WebError::from)
}

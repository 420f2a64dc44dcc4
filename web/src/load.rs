//! Models from what the page fetched or the user picked: a GGUF file read a range at a time
//! (from the Origin Private File System, a `File` or a `Blob`, through a synchronous reader
//! the worker gives: never copied whole into wasm memory), or the files of a Hugging Face
//! folder (config.json, *.safetensors — read the same way — or BlinkDL's RWKV-7 .pth,
//! tokenizer.json, tokenizer_config.json).
//! All go through the same registry path as the native `kestrel_models::load`: the family
//! and its config first (from config.json, or from the tensors of a folder without one, such
//! as BlinkDL's RWKV-7), then the weights. Nothing is memory-mapped.

use std::path::Path;
use std::sync::Arc;

use kestrel_models::formats::gguf::GgufFile;
use kestrel_models::formats::range_read::{FileBytes, RangeRead};
use kestrel_models::Model;
use kestrel_runtime::Gpu;

use crate::error::Result;

/// A model from a GGUF file read a range at a time: its header, then each tensor as the
/// loader uploads it. `name` names the file in errors.
pub fn gguf_ranged(gpu: &Arc<Gpu>, name: &str, file: Box<dyn RangeRead>) -> Result<Model> {
    let file = GgufFile::parse_ranged(Path::new(name), file)?;
    Ok(kestrel_models::model_from_gguf(gpu, &file)?)
}

/// A model from the files of a Hugging Face folder, given as (file name, bytes whole or
/// ranged): the same registry path as a directory natively (`kestrel_models::model_from_files`).
pub fn hf_files(gpu: &Arc<Gpu>, folder: &str, files: Vec<(String, FileBytes)>) -> Result<Model> {
    Ok(kestrel_models::model_from_files(
        gpu,
        Path::new(folder),
        files,
    )?)
}

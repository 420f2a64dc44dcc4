//! Model file formats: config.json, safetensors, GGUF (the reader, its metadata read as a
//! config and its tensors under Hugging Face names, its tokenizer), tokenizer_config.json,
//! the host tensors every format hands out, and files kept inside their model folder.

use std::path::Path;

use crate::error::ModelError;

pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod folder;
pub mod gguf;
pub mod gguf_hf;
pub mod gguf_hf_recurrent;
pub mod gguf_tokenizer;
pub mod host;
pub mod rwkv_tokenizer;
pub mod safetensors;
pub mod tokenizer_config;

/// The error for PyTorch `.pth` checkpoints (Python pickles), which are not read.
pub fn pth_unsupported(path: &Path) -> ModelError {
    ModelError::UnsupportedFormat {
        path: path.to_path_buf(),
        message: "PyTorch .pth checkpoints are not supported; convert the state dict to \
                  model.safetensors (e.g. safetensors.torch.save_file(torch.load(path), \
                  'model.safetensors')) in a directory of its own"
            .into(),
    }
}

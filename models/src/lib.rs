//! kestrel-models: model files (formats/), the blocks networks are made of (blocks/), and the
//! registry of model families (families/), each of which uploads its weights and builds
//! graphs for the runtime; nothing here calls wgpu.

// On wasm32, wgpu's WebGPU objects are neither Send nor Sync (one thread); the Arcs stay.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod blocks;
pub mod chat_template;
pub mod error;
pub mod families;
pub mod formats;
pub mod generate;
mod load;
mod model;
pub mod speculate;
pub mod tokenizer;
pub mod vars;

#[cfg(not(target_arch = "wasm32"))]
use std::path::PathBuf;

pub use blocks::attention_options::{AttentionError, AttentionField, AttentionOptions};
pub use error::{ModelError, Result};
pub use families::{Network, NetworkConfig};
pub use formats::tokenizer_config::chat_info_from_tokenizer_config;
pub use generate::{Finish, GenerateError, Generation, Prompt, Request, Step};
pub use load::{build_model, gguf_parts, model_from_files, model_from_gguf, GgufParts, LoadTimes};
#[cfg(not(target_arch = "wasm32"))]
pub use load::{load, load_gguf};
pub use model::{ChatInfo, Model, ModelConfig};
pub use tokenizer::{TextStream, TextTokenizer};

/// Where downloaded models are cached: `$KESTREL_CACHE`, else `$XDG_CACHE_HOME/kestrel`,
/// else `~/.cache/kestrel`.
#[cfg(not(target_arch = "wasm32"))]
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KESTREL_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("kestrel");
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .unwrap_or_default();
    PathBuf::from(home).join(".cache").join("kestrel")
}

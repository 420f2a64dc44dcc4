//! kestrel-models: loaders (config.json, safetensors, tokenizer.json) and architectures.
//! An architecture uploads its weights and builds graphs for the runtime; it never calls wgpu.

pub mod chat_template;
pub mod config;
pub mod error;
pub mod llama;
pub mod safetensors;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kestrel_runtime::session::{Architecture, Session};
use kestrel_runtime::Gpu;

pub use error::{ModelError, Result};
pub use tokenizer::{TextStream, TextTokenizer};

use config::JsonConfig;
use llama::{Llama, LlamaConfig};
use weights::{TensorSource, Uploader};

/// A loaded model: its architecture with weights on the GPU, and its tokenizer if it has one.
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    pub llama: Arc<Llama>,
    pub tokenizer: Option<TextTokenizer>,
}

impl Model {
    pub fn architecture(&self) -> Arc<dyn Architecture> {
        self.llama.clone()
    }
    pub fn config(&self) -> &LlamaConfig {
        &self.llama.config
    }
    pub fn weight_bytes(&self) -> u64 {
        self.llama.weight_bytes
    }
    pub fn eos(&self) -> &[u32] {
        &self.llama.config.eos
    }
    /// A new sequence with a KV cache for `capacity` tokens (capped at the model's context).
    pub fn session(&self, gpu: &Arc<Gpu>, capacity: usize) -> Result<Session> {
        Ok(Session::new(gpu, self.architecture(), capacity)?)
    }
}

/// Build a model from a parsed config, a tensor source and an optional tokenizer.
pub fn build_model(
    gpu: &Arc<Gpu>,
    path: &Path,
    config: &JsonConfig,
    source: &dyn TensorSource,
    tokenizer: Option<TextTokenizer>,
) -> Result<Model> {
    let cfg = LlamaConfig::from_json(config)?;
    let mut up = Uploader::new(gpu, source);
    let llama = Llama::load(cfg, &mut up)?;
    gpu.check()?;
    Ok(Model {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        path: path.to_path_buf(),
        llama: Arc::new(llama),
        tokenizer,
    })
}

/// Load a Hugging Face-layout directory (config.json, *.safetensors, tokenizer.json).
#[cfg(not(target_arch = "wasm32"))]
pub fn load(gpu: &Arc<Gpu>, path: &Path) -> Result<Model> {
    if !path.exists() {
        return Err(ModelError::NotFound(path.to_path_buf()));
    }
    if path.is_file() {
        let message = if path.extension().is_some_and(|e| e == "gguf") {
            "GGUF files are not supported yet; use a Hugging Face directory".to_string()
        } else {
            "expected a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)"
                .to_string()
        };
        return Err(ModelError::UnsupportedFormat {
            path: path.to_path_buf(),
            message,
        });
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| ModelError::Io {
            path: p.to_path_buf(),
            message: e.to_string(),
        })
    };
    let config_path = path.join("config.json");
    let text = read(&config_path)?;
    let config = JsonConfig::parse(&config_path, &String::from_utf8_lossy(&text))?;
    // Check the architecture before touching weights.
    LlamaConfig::from_json(&config)?;
    let source = safetensors::SafetensorsFiles::open_dir(path)?;
    let tok_path = path.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(TextTokenizer::from_bytes(&tok_path, &read(&tok_path)?)?)
    } else {
        None
    };
    build_model(gpu, path, &config, &source, tokenizer)
}

//! kestrel-models: loaders (config.json, safetensors, tokenizer.json) and architectures.
//! An architecture uploads its weights and builds graphs for the runtime; it never calls wgpu.

pub mod chat_template;
pub mod config;
pub mod error;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_tokenizer;
pub mod llada;
pub mod llama;
pub mod mamba;
pub mod rwkv4;
pub mod safetensors;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kestrel_runtime::session::{Architecture, Session};
use kestrel_runtime::Gpu;

pub use error::{ModelError, Result};
pub use tokenizer::{TextStream, TextTokenizer};

use chat_template::ChatTemplate;
use config::JsonConfig;
use llama::{Llama, LlamaConfig};
use mamba::{Mamba, MambaConfig};
use rwkv4::{Rwkv4, Rwkv4Config};
use weights::{TensorSource, Uploader};

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

/// A loaded network with its weights on the GPU.
#[derive(Clone)]
pub enum Network {
    /// Transformer decoders: Llama, Mistral, Qwen2, LLaDA.
    Llama(Arc<Llama>),
    /// Selective state-space models: Mamba, Mamba-2.
    Mamba(Arc<Mamba>),
    /// RWKV-4 (RwkvForCausalLM).
    Rwkv4(Arc<Rwkv4>),
}

/// What every architecture's config tells the front ends.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub vocab: usize,
    /// The position limit (u32::MAX for recurrent models, which have none).
    pub max_positions: usize,
    /// False for bidirectional networks (diffusion LMs).
    pub causal: bool,
    /// The token a diffusion LM predicts.
    pub mask_token: Option<u32>,
    pub bos: Vec<u32>,
    pub eos: Vec<u32>,
}

impl From<&LlamaConfig> for ModelConfig {
    fn from(c: &LlamaConfig) -> ModelConfig {
        ModelConfig {
            architecture: c.architecture.clone(),
            vocab: c.vocab,
            max_positions: c.max_positions,
            causal: c.causal,
            mask_token: c.mask_token,
            bos: c.bos.clone(),
            eos: c.eos.clone(),
        }
    }
}

impl From<&MambaConfig> for ModelConfig {
    fn from(c: &MambaConfig) -> ModelConfig {
        ModelConfig {
            architecture: mamba::ARCHITECTURES[c.version as usize - 1].to_string(),
            vocab: c.vocab,
            max_positions: u32::MAX as usize,
            causal: true,
            mask_token: None,
            bos: c.bos.clone(),
            eos: c.eos.clone(),
        }
    }
}

impl From<&Rwkv4Config> for ModelConfig {
    fn from(c: &Rwkv4Config) -> ModelConfig {
        ModelConfig {
            architecture: rwkv4::ARCHITECTURE.to_string(),
            vocab: c.vocab,
            max_positions: u32::MAX as usize,
            causal: true,
            mask_token: None,
            bos: c.bos.clone(),
            eos: c.eos.clone(),
        }
    }
}

/// The architectures `load` accepts.
pub fn supported_architectures() -> String {
    llama::SUPPORTED
        .iter()
        .chain(mamba::ARCHITECTURES)
        .chain([rwkv4::ARCHITECTURE].iter())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check a config (architecture and settings) before any weight is read.
pub fn check_config(config: &JsonConfig) -> Result<ModelConfig> {
    if mamba::is_mamba(config) {
        return Ok((&MambaConfig::from_json(config)?).into());
    }
    if rwkv4::is_rwkv4(config) {
        return Ok((&Rwkv4Config::from_json(config)?).into());
    }
    if llada::is_llada(config) {
        return Ok((&LlamaConfig::from_json(&llada::to_hf_config(config)?)?).into());
    }
    Ok((&LlamaConfig::from_json(config)?).into())
}

/// A loaded model: its architecture with weights on the GPU, and its tokenizer if it has one.
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    pub network: Network,
    config: ModelConfig,
    pub tokenizer: Option<TextTokenizer>,
    /// The model's own chat template and its BOS/EOS strings, if it ships them.
    pub chat: ChatInfo,
}

#[derive(Debug, Clone, Default)]
pub struct ChatInfo {
    pub template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
}

impl Model {
    pub fn architecture(&self) -> Arc<dyn Architecture> {
        match &self.network {
            Network::Llama(m) => m.clone(),
            Network::Mamba(m) => m.clone(),
            Network::Rwkv4(m) => m.clone(),
        }
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// The transformer behind the model, if it is one.
    pub fn llama(&self) -> Option<&Llama> {
        match &self.network {
            Network::Llama(m) => Some(m),
            _ => None,
        }
    }
    pub fn weight_bytes(&self) -> u64 {
        match &self.network {
            Network::Llama(m) => m.weight_bytes,
            Network::Mamba(m) => m.weight_bytes,
            Network::Rwkv4(m) => m.weight_bytes,
        }
    }
    /// Bytes of the loaded tensors in the model file.
    pub fn file_bytes(&self) -> u64 {
        match &self.network {
            Network::Llama(m) => m.file_bytes,
            Network::Mamba(m) => m.file_bytes,
            Network::Rwkv4(m) => m.file_bytes,
        }
    }
    pub fn eos(&self) -> &[u32] {
        &self.config.eos
    }
    /// The model's chat template, or ChatML when it has none.
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        ChatTemplate::or_fallback(
            self.chat.template.as_deref(),
            &self.chat.bos_token,
            &self.chat.eos_token,
        )
    }
    /// Switch attention to StreamingLLM sinks or block-sparse patterns (checked against the
    /// model); sessions made afterwards use them.
    pub fn set_attention(&mut self, options: llama::AttentionOptions) -> Result<()> {
        let Network::Llama(m) = &self.network else {
            return Err(ModelError::BadOption(format!(
                "attention options apply to attention models; {} has none",
                self.config.architecture
            )));
        };
        let mut llama = (**m).clone();
        llama.set_attention(options)?;
        self.network = Network::Llama(Arc::new(llama));
        Ok(())
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
    chat: ChatInfo,
) -> Result<Model> {
    let network = if mamba::is_mamba(config) {
        let mut up = Uploader::new(gpu, source);
        Network::Mamba(Arc::new(Mamba::load(
            MambaConfig::from_json(config)?,
            &mut up,
        )?))
    } else if rwkv4::is_rwkv4(config) {
        let mut up = Uploader::new(gpu, source);
        Network::Rwkv4(Arc::new(Rwkv4::load(
            Rwkv4Config::from_json(config)?,
            &mut up,
        )?))
    } else {
        Network::Llama(Arc::new(load_llama(config, source, gpu)?))
    };
    gpu.check()?;
    let config = match &network {
        Network::Llama(m) => (&m.config).into(),
        Network::Mamba(m) => (&m.config).into(),
        Network::Rwkv4(m) => (&m.config).into(),
    };
    Ok(Model {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        path: path.to_path_buf(),
        network,
        config,
        tokenizer,
        chat,
    })
}

/// A transformer (LLaDA's names and config translated onto Llama's).
fn load_llama(config: &JsonConfig, source: &dyn TensorSource, gpu: &Arc<Gpu>) -> Result<Llama> {
    let llada_config;
    let llada_source;
    let (config, source): (&JsonConfig, &dyn TensorSource) = if llada::is_llada(config) {
        llada_config = llada::to_hf_config(config)?;
        llada_source = llada::LladaSource(source);
        (&llada_config, &llada_source)
    } else {
        (config, source)
    };
    let cfg = LlamaConfig::from_json(config)?;
    let mut up = Uploader::new(gpu, source);
    Llama::load(cfg, &mut up)
}

/// Load a Hugging Face-layout directory (config.json, *.safetensors, tokenizer.json).
#[cfg(not(target_arch = "wasm32"))]
pub fn load(gpu: &Arc<Gpu>, path: &Path) -> Result<Model> {
    if !path.exists() {
        return Err(ModelError::NotFound(path.to_path_buf()));
    }
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return load_gguf(gpu, path);
        }
        return Err(ModelError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: "expected a .gguf file or a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)"
                .to_string(),
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
    check_config(&config)?;
    let source = safetensors::SafetensorsFiles::open_dir(path)?;
    let tok_path = path.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(TextTokenizer::from_bytes(&tok_path, &read(&tok_path)?)?)
    } else {
        None
    };
    let chat = read_tokenizer_config(&path.join("tokenizer_config.json"))?;
    build_model(gpu, path, &config, &source, tokenizer, chat)
}

/// Load a GGUF file: weights stay quantized on the GPU; tokenizer and chat template come
/// from its metadata.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_gguf(gpu: &Arc<Gpu>, path: &Path) -> Result<Model> {
    let file = gguf::GgufFile::open(path)?;
    model_from_gguf(gpu, &file)
}

/// Build a model from a parsed GGUF file (native or in the browser).
pub fn model_from_gguf(gpu: &Arc<Gpu>, file: &gguf::GgufFile) -> Result<Model> {
    let config = gguf_model::config_from_gguf(file)?;
    LlamaConfig::from_json(&config)?;
    let source = gguf_model::GgufSource::new(file, &config)?;
    let tokenizer = if file.get("tokenizer.ggml.model").is_some() {
        Some(TextTokenizer::from_tokenizer(
            file.path(),
            gguf_tokenizer::tokenizer_from_gguf(file)?,
        ))
    } else {
        None
    };
    let chat = gguf_model::chat_info_from_gguf(file);
    build_model(gpu, file.path(), &config, &source, tokenizer, chat)
}

/// Chat template and BOS/EOS strings from tokenizer_config.json, when the file exists.
#[cfg(not(target_arch = "wasm32"))]
fn read_tokenizer_config(path: &Path) -> Result<ChatInfo> {
    if !path.exists() {
        return Ok(ChatInfo::default());
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(chat_info_from_tokenizer_config(&JsonConfig::parse(
        path, &text,
    )?))
}

/// `chat_template` may be a string or a list of named templates (the one named "default"
/// is used); special tokens may be strings or objects with a `content` field.
pub fn chat_info_from_tokenizer_config(c: &JsonConfig) -> ChatInfo {
    let token = |key: &str| match c.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    };
    let template = match c.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template").and_then(|s| s.as_str()))
            .map(str::to_string),
        _ => None,
    };
    ChatInfo {
        template,
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
    }
}

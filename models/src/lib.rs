//! kestrel-models: loaders (config.json, safetensors, tokenizer.json) and architectures.
//! An architecture uploads its weights and builds graphs for the runtime; it never calls wgpu.

// On wasm32, wgpu's WebGPU objects are neither Send nor Sync (one thread); the Arcs stay.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod chat_template;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_tokenizer;
pub mod gla;
pub mod jamba;
pub mod llada;
pub mod llama;
pub mod mamba;
pub mod moe;
pub mod rwkv;
pub mod rwkv4;
pub mod safetensors;
pub mod tokenizer;
pub mod weights;
pub mod zamba2;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kestrel_runtime::arch::Architecture;
use kestrel_runtime::session::Session;
use kestrel_runtime::Gpu;

pub use error::{ModelError, Result};
pub use generate::{Finish, GenerateError, Generation, Prompt, Request, Step};
pub use llama::AttentionOptions;
pub use tokenizer::{TextStream, TextTokenizer};

use chat_template::ChatTemplate;
use config::JsonConfig;
use gla::{Gla, GlaConfig};
use jamba::{Jamba, JambaConfig};
use kestrel_runtime::arch::Head;
use kestrel_runtime::graph::Graph;
use kestrel_runtime::TensorId;
use llama::{Llama, LlamaConfig};
use mamba::{Mamba, MambaConfig};
use rwkv::{Rwkv, RwkvConfig};
use rwkv4::{Rwkv4, Rwkv4Config};
use weights::{TensorSource, Uploader};
use zamba2::{Zamba2, Zamba2Config};

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
    /// Gated linear attention.
    Gla(Arc<Gla>),
    /// RWKV-6 and RWKV-7.
    Rwkv(Arc<Rwkv>),
    /// RWKV-4 (RwkvForCausalLM).
    Rwkv4(Arc<Rwkv4>),
    /// Jamba: Mamba and attention layers with sparse experts.
    Jamba(Arc<Jamba>),
    /// Zamba2: Mamba-2 layers and a shared attention block.
    Zamba2(Arc<Zamba2>),
}

impl Network {
    fn architecture(&self) -> Arc<dyn Architecture> {
        match self {
            Network::Llama(m) => m.clone(),
            Network::Mamba(m) => m.clone(),
            Network::Gla(m) => m.clone(),
            Network::Rwkv(m) => m.clone(),
            Network::Rwkv4(m) => m.clone(),
            Network::Jamba(m) => m.clone(),
            Network::Zamba2(m) => m.clone(),
        }
    }
    /// (bytes of weights on the GPU, bytes of the same tensors in the file)
    fn bytes(&self) -> (u64, u64) {
        match self {
            Network::Llama(m) => (m.weight_bytes, m.file_bytes),
            Network::Mamba(m) => (m.weight_bytes, m.file_bytes),
            Network::Gla(m) => (m.weight_bytes, m.file_bytes),
            Network::Rwkv(m) => (m.weight_bytes, m.file_bytes),
            Network::Rwkv4(m) => (m.weight_bytes, m.file_bytes),
            Network::Jamba(m) => (m.weight_bytes, m.file_bytes),
            Network::Zamba2(m) => (m.weight_bytes, m.file_bytes),
        }
    }
    fn config(&self) -> ModelConfig {
        match self {
            Network::Llama(m) => (&m.config).into(),
            Network::Mamba(m) => (&m.config).into(),
            Network::Gla(m) => ModelConfig::recurrent(
                gla::ARCHITECTURE,
                m.config.vocab,
                &m.config.bos,
                &m.config.eos,
            ),
            Network::Rwkv(m) => (&m.config).into(),
            Network::Rwkv4(m) => (&m.config).into(),
            Network::Jamba(m) => (&m.config).into(),
            Network::Zamba2(m) => (&m.config).into(),
        }
    }
}

/// `x @ w^T (+ bias)` with weights from the model.
pub(crate) fn lin(
    g: &mut Graph,
    x: TensorId,
    w: &Arc<kestrel_runtime::tensor::GpuWeight>,
    bias: Option<&Arc<kestrel_runtime::tensor::GpuWeight>>,
) -> kestrel_runtime::Result<TensorId> {
    let w = g.weight(w);
    let b = bias.map(|b| g.weight(b));
    g.linear(x, w, b)
}

/// The gate, up and down matrices of a SwiGLU MLP under `prefix` (`{prefix}.gate_proj.weight`..).
pub(crate) fn dense_mlp(
    up: &mut weights::Uploader<'_>,
    prefix: &str,
    intermediate: usize,
    hidden: usize,
) -> Result<[Arc<kestrel_runtime::tensor::GpuWeight>; 3]> {
    Ok([
        up.matrix(&format!("{prefix}.gate_proj.weight"), intermediate, hidden)?,
        up.matrix(&format!("{prefix}.up_proj.weight"), intermediate, hidden)?,
        up.matrix(&format!("{prefix}.down_proj.weight"), hidden, intermediate)?,
    ])
}

/// The SwiGLU MLP `down(silu(gate(h)) * up(h))` of Llama-style blocks.
pub(crate) fn swiglu_mlp(
    g: &mut Graph,
    h: TensorId,
    [gate, up, down]: [&Arc<kestrel_runtime::tensor::GpuWeight>; 3],
) -> kestrel_runtime::Result<TensorId> {
    let (gw, uw, dw) = (g.weight(gate), g.weight(up), g.weight(down));
    let gate = g.linear(h, gw, None)?;
    let up = g.linear(h, uw, None)?;
    let act = g.swiglu(gate, up)?;
    g.linear(act, dw, None)
}

/// The output of an autoregressive network from its final hidden states `x` [T, hidden]:
/// logits for every row, or one token sampled from the last.
pub(crate) fn lm_head(
    g: &mut Graph,
    x: TensorId,
    lm_head: TensorId,
    head: Head,
) -> kestrel_runtime::Result<()> {
    match head {
        Head::AllLogits => {
            let logits = g.linear(x, lm_head, None)?;
            g.output(logits);
        }
        Head::Sample => {
            let last = g.last_row(x)?;
            let logits = g.linear(last, lm_head, None)?;
            let token = g.sample(logits)?;
            g.output(token);
        }
        Head::Unmask(_) => {
            return Err(kestrel_runtime::Error::Graph(
                "an autoregressive network has no diffusion head".into(),
            ))
        }
    }
    Ok(())
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

impl ModelConfig {
    /// A causal network with a position limit and no mask token.
    fn causal(
        architecture: &str,
        vocab: usize,
        max_positions: usize,
        bos: &[u32],
        eos: &[u32],
    ) -> ModelConfig {
        ModelConfig {
            architecture: architecture.to_string(),
            vocab,
            max_positions,
            causal: true,
            mask_token: None,
            bos: bos.to_vec(),
            eos: eos.to_vec(),
        }
    }

    /// A causal recurrent network: no position limit.
    fn recurrent(architecture: &str, vocab: usize, bos: &[u32], eos: &[u32]) -> ModelConfig {
        ModelConfig::causal(architecture, vocab, u32::MAX as usize, bos, eos)
    }
}

impl From<&JambaConfig> for ModelConfig {
    fn from(c: &JambaConfig) -> ModelConfig {
        let arch = jamba::ARCHITECTURE;
        ModelConfig::causal(arch, c.vocab, c.max_positions, &c.bos, &c.eos)
    }
}

impl From<&Zamba2Config> for ModelConfig {
    fn from(c: &Zamba2Config) -> ModelConfig {
        let arch = zamba2::ARCHITECTURE;
        ModelConfig::causal(arch, c.vocab, c.max_positions, &c.bos, &c.eos)
    }
}

impl From<&MambaConfig> for ModelConfig {
    fn from(c: &MambaConfig) -> ModelConfig {
        let arch = mamba::ARCHITECTURES[c.version as usize - 1];
        ModelConfig::recurrent(arch, c.vocab, &c.bos, &c.eos)
    }
}

impl From<&Rwkv4Config> for ModelConfig {
    fn from(c: &Rwkv4Config) -> ModelConfig {
        ModelConfig::recurrent(rwkv4::ARCHITECTURE, c.vocab, &c.bos, &c.eos)
    }
}

impl From<&RwkvConfig> for ModelConfig {
    fn from(c: &RwkvConfig) -> ModelConfig {
        ModelConfig::recurrent(c.architecture(), c.vocab, &c.bos, &c.eos)
    }
}

/// The architectures `load` accepts.
pub fn supported_architectures() -> String {
    llama::SUPPORTED
        .iter()
        .chain(mamba::ARCHITECTURES)
        .chain(&[gla::ARCHITECTURE])
        .chain(rwkv::ARCHITECTURES)
        .chain(&[
            rwkv4::ARCHITECTURE,
            jamba::ARCHITECTURE,
            zamba2::ARCHITECTURE,
        ])
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check a config (architecture and settings) before any weight is read.
pub fn check_config(config: &JsonConfig) -> Result<ModelConfig> {
    if mamba::is_mamba(config) {
        return Ok((&MambaConfig::from_json(config)?).into());
    }
    if gla::is_gla(config) {
        let c = GlaConfig::from_json(config)?;
        return Ok(ModelConfig::recurrent(
            gla::ARCHITECTURE,
            c.vocab,
            &c.bos,
            &c.eos,
        ));
    }
    if rwkv::is_rwkv(config) {
        return Ok((&RwkvConfig::from_json(config)?).into());
    }
    if rwkv4::is_rwkv4(config) {
        return Ok((&Rwkv4Config::from_json(config)?).into());
    }
    if jamba::is_jamba(config) {
        return Ok((&JambaConfig::from_json(config)?).into());
    }
    if zamba2::is_zamba2(config) {
        return Ok((&Zamba2Config::from_json(config)?).into());
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
        self.network.architecture()
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
        self.network.bytes().0
    }
    /// Bytes of weights one decoded token reads: all but the experts its router passes over
    /// (every weight is counted as read, the embedding table included).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let unread = match &self.network {
            Network::Llama(m) => m.unread_expert_bytes(),
            Network::Jamba(m) => m.unread_expert_bytes(),
            _ => 0,
        };
        self.weight_bytes() - unread
    }
    /// Bytes of the loaded tensors in the model file.
    pub fn file_bytes(&self) -> u64 {
        self.network.bytes().1
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
    let mut up = Uploader::new(gpu, source);
    let network = if mamba::is_mamba(config) {
        Network::Mamba(Arc::new(Mamba::load(
            MambaConfig::from_json(config)?,
            &mut up,
        )?))
    } else if gla::is_gla(config) {
        Network::Gla(Arc::new(Gla::load(GlaConfig::from_json(config)?, &mut up)?))
    } else if rwkv4::is_rwkv4(config) {
        Network::Rwkv4(Arc::new(Rwkv4::load(
            Rwkv4Config::from_json(config)?,
            &mut up,
        )?))
    } else if rwkv::is_rwkv(config) {
        Network::Rwkv(Arc::new(Rwkv::load(
            RwkvConfig::from_json(config)?,
            &mut up,
        )?))
    } else if zamba2::is_zamba2(config) {
        Network::Zamba2(Arc::new(Zamba2::load(
            Zamba2Config::from_json(config)?,
            &mut up,
        )?))
    } else if jamba::is_jamba(config) {
        Network::Jamba(Arc::new(Jamba::load(
            JambaConfig::from_json(config)?,
            &mut up,
        )?))
    } else {
        Network::Llama(Arc::new(load_llama(config, source, gpu)?))
    };
    model_from_network(gpu, path, network, tokenizer, chat)
}

/// A model around a loaded network.
fn model_from_network(
    gpu: &Arc<Gpu>,
    path: &Path,
    network: Network,
    tokenizer: Option<TextTokenizer>,
    chat: ChatInfo,
) -> Result<Model> {
    gpu.check()?;
    let config = network.config();
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
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("pth"))
        {
            return Err(rwkv::blink::pth_unsupported(path));
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
    // BlinkDL's RWKV-7 checkpoints ship no config.json.
    let blink = match config_path.exists() {
        true => None,
        false => rwkv::blink::BlinkDir::open(path)?,
    };
    if let Some(blink) = blink {
        let mut up = Uploader::new(gpu, &blink.source);
        let network = Network::Rwkv(Arc::new(Rwkv::load(blink.config.clone(), &mut up)?));
        let (tokenizer, chat) = read_tokenizer_files(path)?;
        return model_from_network(gpu, path, network, tokenizer, chat);
    }
    let text = read(&config_path)?;
    let config = JsonConfig::parse(&config_path, &String::from_utf8_lossy(&text))?;
    // Check the architecture before touching weights.
    check_config(&config)?;
    let source = safetensors::SafetensorsFiles::open_dir(path)?;
    let (tokenizer, chat) = read_tokenizer_files(path)?;
    build_model(gpu, path, &config, &source, tokenizer, chat)
}

/// tokenizer.json and tokenizer_config.json of a model directory, where they exist.
#[cfg(not(target_arch = "wasm32"))]
fn read_tokenizer_files(path: &Path) -> Result<(Option<TextTokenizer>, ChatInfo)> {
    let tok_path = path.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        let bytes = std::fs::read(&tok_path).map_err(|e| ModelError::Io {
            path: tok_path.clone(),
            message: e.to_string(),
        })?;
        Some(TextTokenizer::from_bytes(&tok_path, &bytes)?)
    } else {
        None
    };
    let chat = read_tokenizer_config(&path.join("tokenizer_config.json"))?;
    Ok((tokenizer, chat))
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

//! A loaded model: its network with weights on the GPU, its tokenizer and chat template, and
//! the config fields every front end reads.

use std::path::PathBuf;
use std::sync::Arc;

use kestrel_runtime::arch::Architecture;
use kestrel_runtime::session::Session;
use kestrel_runtime::Gpu;

use crate::blocks::attention_options::AttentionOptions;
use crate::chat_template::ChatTemplate;
use crate::error::Result;
use crate::families::Network;
use crate::formats::config::JsonConfig;
use crate::load::LoadTimes;
use crate::tokenizer::TextTokenizer;
use crate::vars::WeightBytes;

/// What every family's config tells the front ends (each family's config embeds one).
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
    /// config.json keys that no table of the family lists: tolerated, not read (front ends
    /// may show them; they are also logged as warnings).
    pub unread_keys: Vec<String>,
}

impl ModelConfig {
    /// A causal network with a position limit, no mask token and no special tokens.
    pub fn causal(architecture: &str, vocab: usize, max_positions: usize) -> ModelConfig {
        ModelConfig {
            architecture: architecture.to_string(),
            vocab,
            max_positions,
            causal: true,
            mask_token: None,
            bos: Vec::new(),
            eos: Vec::new(),
            unread_keys: Vec::new(),
        }
    }

    /// A causal recurrent network: no position limit.
    pub fn recurrent(architecture: &str, vocab: usize) -> ModelConfig {
        ModelConfig::causal(architecture, vocab, u32::MAX as usize)
    }

    /// With what config.json says beyond the network: the BOS and EOS ids (`bos_token_id`,
    /// `eos_token_id`) and the keys its family's table does not list.
    pub fn with_config(self, c: &JsonConfig) -> ModelConfig {
        let unread_keys = match crate::families::family_of(c) {
            Ok(family) => c.unknown_keys(family.keys),
            Err(_) => Vec::new(),
        };
        ModelConfig {
            bos: c.opt_token_ids("bos_token_id"),
            eos: c.opt_token_ids("eos_token_id"),
            unread_keys,
            ..self
        }
    }
}

/// The chat template and BOS/EOS strings a model ships, if it does.
#[derive(Debug, Clone, Default)]
pub struct ChatInfo {
    pub template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
}

/// A loaded model: its network with weights on the GPU, and its tokenizer if it has one.
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    network: Arc<dyn Network>,
    bytes: WeightBytes,
    pub tokenizer: Option<TextTokenizer>,
    /// The model's own chat template and its BOS/EOS strings, if it ships them.
    pub chat: ChatInfo,
    /// Where loading spent its time.
    pub load_times: LoadTimes,
}

impl Model {
    /// A model around a loaded network (`bytes`: what loading it uploaded and read).
    pub(crate) fn new(
        path: PathBuf,
        network: Arc<dyn Network>,
        bytes: WeightBytes,
        tokenizer: Option<TextTokenizer>,
        chat: ChatInfo,
        load_times: LoadTimes,
    ) -> Model {
        Model {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            path,
            network,
            bytes,
            tokenizer,
            chat,
            load_times,
        }
    }

    pub fn architecture(&self) -> Arc<dyn Architecture> {
        self.network.clone()
    }

    pub fn config(&self) -> &ModelConfig {
        self.network.config()
    }

    /// Each attention layer's sliding window (None: full attention), in layer order; empty
    /// for a network without attention.
    pub fn attention_windows(&self) -> Vec<Option<usize>> {
        self.network.attention_windows()
    }

    /// Whether the network has attention layers (and so KV caches and a position limit).
    pub fn has_attention(&self) -> bool {
        !self.attention_windows().is_empty()
    }

    /// Bytes of the weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.bytes.gpu
    }

    /// Bytes of weights one decoded token reads: what `session`'s decode step reads (an
    /// untied embedding table one row; [`Session::decode_weight_bytes`]) less the experts
    /// its router passes over.
    pub fn weight_bytes_per_token(&self, session: &Session) -> Result<u64> {
        Ok(session
            .decode_weight_bytes()?
            .saturating_sub(self.network.unread_expert_bytes()))
    }

    /// Bytes of the loaded tensors in the model file.
    pub fn file_bytes(&self) -> u64 {
        self.bytes.file
    }

    pub fn eos(&self) -> &[u32] {
        &self.config().eos
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
    /// model; errors are `ModelError::Attention`); sessions made afterwards use them.
    pub fn set_attention(&mut self, options: AttentionOptions) -> Result<()> {
        self.network = self.network.with_attention(&options)?;
        Ok(())
    }

    /// A new sequence with a KV cache for `capacity` tokens (capped at the model's context).
    pub fn session(&self, gpu: &Arc<Gpu>, capacity: usize) -> Result<Session> {
        Ok(Session::new(gpu, self.architecture(), capacity)?)
    }
}

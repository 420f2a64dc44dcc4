//! The registry of model families. Each family is one file that declares how it is detected
//! (config.json `architectures` / `model_type`, GGUF `general.architecture`, or a rule over
//! the tensors of a checkpoint without config.json), the config it reads (parsed once, before
//! any weight, with the common [`ModelConfig`] embedded), its tensor names (scoped, through
//! [`Vars`]) and its graph ([`Network`], the runtime's `Architecture` plus what a [`Model`]
//! needs). Adding a family is one new file and one line in `registry!` below.
//!
//! [`Model`]: crate::Model

use std::sync::Arc;

use kestrel_runtime::arch::Architecture;

use crate::blocks::attention_options::{AttentionError, AttentionOptions};
use crate::error::{ModelError, Result};
use crate::formats::config::keys::ConfigKey;
use crate::formats::config::JsonConfig;
use crate::formats::host::TensorSource;
use crate::model::ModelConfig;
use crate::vars::Vars;

/// How a family is recognised, and how its config is read.
pub struct Family {
    /// config.json `architectures` classes (listed when an architecture is unsupported).
    pub classes: &'static [&'static str],
    /// config.json `model_type`s (Hugging Face's and fla's), for configs that name no class.
    pub model_types: &'static [&'static str],
    /// GGUF `general.architecture` names, each with the class whose config its metadata
    /// is read as.
    pub gguf: &'static [(&'static str, &'static str)],
    /// Parse and check the config, before any weight is read (for a family that names
    /// classes or model types).
    pub parse: Option<ParseConfig>,
    /// For a checkpoint without config.json: the config read from its tensors, when they are
    /// this family's (`Ok(None)` otherwise).
    pub from_tensors: Option<FromTensors>,
    /// The config.json keys the family's reference implementation reads, each honoured,
    /// refused when its value is not implemented, or inert (besides
    /// [`COMMON_KEYS`](crate::formats::config::keys::COMMON_KEYS)). Other keys are tolerated with a
    /// warning.
    pub keys: &'static [ConfigKey],
}

/// Reads a family's config from config.json.
pub type ParseConfig = fn(&JsonConfig) -> Result<Box<dyn NetworkConfig>>;

/// Reads a family's config from the tensors of a checkpoint without config.json.
pub type FromTensors = fn(&dyn TensorSource) -> Result<Option<Box<dyn NetworkConfig>>>;

impl Family {
    /// Whether config.json's architecture name (a class or a model type) is this family's.
    fn is_named(&self, arch: &str) -> bool {
        self.classes.contains(&arch) || self.model_types.contains(&arch)
    }
}

/// A family's parsed config, ready to load its weights (Debug: what was parsed, which the
/// config-key tests compare).
pub trait NetworkConfig: std::fmt::Debug {
    /// Upload the weights from the checkpoint's root scope `vb`.
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>>;
}

/// A loaded network: the graphs the runtime runs, and what a `Model` tells the front ends.
pub trait Network: Architecture {
    fn config(&self) -> &ModelConfig;

    /// Bytes of expert weights a decoded token does not read (0 without sparse experts).
    fn unread_expert_bytes(&self) -> u64 {
        0
    }

    /// Each attention layer's sliding window (None: full attention); empty for a network
    /// without attention.
    fn attention_windows(&self) -> Vec<Option<usize>> {
        Vec::new()
    }

    /// The same network running attention with `options`, after checking them against it.
    fn with_attention(
        &self,
        _options: &AttentionOptions,
    ) -> Result<Arc<dyn Network>, AttentionError> {
        Err(AttentionError::NoAttention {
            architecture: self.config().architecture.clone(),
        })
    }
}

pub mod decoder_options;

/// Declares the family modules and the table of them, in one list.
macro_rules! registry {
    ($($family:ident),* $(,)?) => {
        $(pub mod $family;)*

        /// Every family Kestrel loads.
        pub const FAMILIES: &[&Family] = &[$(&$family::FAMILY),*];
    };
}

registry!(
    llama,
    llada,
    mamba,
    gla,
    rwkv,
    rwkv7_blink,
    rwkv4,
    jamba,
    zamba2,
    qwen3,
    gemma,
    smollm3,
    olmo2,
    phi3
);

/// The architectures a config.json may name, for "unsupported architecture" errors.
pub fn supported() -> String {
    let classes: Vec<&str> = FAMILIES.iter().flat_map(|f| f.classes).copied().collect();
    classes.join(", ")
}

/// The family a config.json names (`architectures[0]`, else `model_type`).
pub fn family_of(config: &JsonConfig) -> Result<&'static Family> {
    let arch = config.architecture()?;
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.is_named(&arch) && f.parse.is_some())
        .ok_or_else(|| ModelError::UnsupportedArchitecture {
            file: config.path.clone(),
            arch,
            supported: supported(),
        })
}

/// The family a config.json names, its config parsed and checked. Keys its table does not
/// list are tolerated with a warning (they are not read).
pub fn from_config(config: &JsonConfig) -> Result<Box<dyn NetworkConfig>> {
    let family = family_of(config)?;
    for key in config.unknown_keys(family.keys) {
        log::warn!(
            "{}: config key '{key}' is not one {} reads; ignored",
            config.path.display(),
            family.classes.first().copied().unwrap_or("this family"),
        );
    }
    match family.parse {
        Some(parse) => parse(config),
        None => Err(ModelError::UnsupportedArchitecture {
            file: config.path.clone(),
            arch: config.architecture()?,
            supported: supported(),
        }),
    }
}

/// The config of a checkpoint without config.json, from the first family whose rule
/// recognises its tensors.
pub fn from_tensors(source: &dyn TensorSource) -> Result<Option<Box<dyn NetworkConfig>>> {
    for rule in FAMILIES.iter().filter_map(|f| f.from_tensors) {
        if let Some(config) = rule(source)? {
            return Ok(Some(config));
        }
    }
    Ok(None)
}

/// The config.json class a GGUF file's `general.architecture` is read as (`file` is named
/// in errors).
pub fn for_gguf(arch: &str, file: &std::path::Path) -> Result<&'static str> {
    let all = || FAMILIES.iter().flat_map(|f| f.gguf);
    all()
        .find(|(a, _)| *a == arch)
        .map(|(_, class)| *class)
        .ok_or_else(|| ModelError::UnsupportedArchitecture {
            file: file.to_path_buf(),
            arch: arch.to_string(),
            supported: all().map(|(a, _)| *a).collect::<Vec<_>>().join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of parsing `config` (a parsed config is not Debug, so no `expect_err`).
    fn parse_error(config: &JsonConfig) -> String {
        match from_config(config) {
            Ok(_) => panic!("{} parsed", config.value),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_name_belongs_to_one_family() {
        let mut names: Vec<&str> = FAMILIES
            .iter()
            .flat_map(|f| f.classes.iter().chain(f.model_types))
            .copied()
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a name is claimed twice");
        let mut gguf: Vec<&str> = FAMILIES.iter().flat_map(|f| f.gguf).map(|g| g.0).collect();
        let n = gguf.len();
        gguf.sort();
        gguf.dedup();
        assert_eq!(gguf.len(), n, "a GGUF architecture is claimed twice");
    }

    #[test]
    fn families_that_name_classes_parse_configs() {
        for f in FAMILIES {
            let named = !f.classes.is_empty() || !f.model_types.is_empty();
            assert_eq!(named, f.parse.is_some(), "{:?}", f.classes);
            assert!(
                named || f.from_tensors.is_some(),
                "a family nothing detects"
            );
        }
    }

    #[test]
    fn gguf_names_read_as_a_class_of_their_family() {
        for f in FAMILIES {
            for (_, class) in f.gguf {
                assert!(f.classes.contains(class), "{class}");
            }
        }
    }

    #[test]
    fn an_unknown_architecture_lists_the_supported_ones() {
        let path = std::path::Path::new("config.json");
        let config =
            JsonConfig::parse(path, r#"{"architectures": ["FooForCausalLM"]}"#).expect("json");
        let err = parse_error(&config);
        assert!(
            err.contains("unsupported architecture 'FooForCausalLM'"),
            "{err}"
        );
        for class in [
            "LlamaForCausalLM",
            "LLaDAModelLM",
            "Mamba2ForCausalLM",
            "Zamba2ForCausalLM",
        ] {
            assert!(err.contains(class), "{err}");
        }
        let err = for_gguf("gpt2", path).expect_err("unsupported").to_string();
        assert!(err.contains("'gpt2'") && err.contains("qwen2moe"), "{err}");
    }

    #[test]
    fn model_types_stand_in_for_classes() {
        let path = std::path::Path::new("config.json");
        // A model_type is enough to find the family: its parser then names the first key
        // it misses.
        for (model_type, key) in [
            ("mamba2", "hidden_size"),
            ("rwkv7", "hidden_size"),
            ("llada", "mask_token_id"),
        ] {
            let text = format!(r#"{{"model_type": "{model_type}"}}"#);
            let config = JsonConfig::parse(path, &text).expect("json");
            let err = parse_error(&config);
            assert!(
                err.contains(&format!("missing config key '{key}'")),
                "{model_type}: {err}"
            );
        }
    }
}

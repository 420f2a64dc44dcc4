//! The tables of config.json keys: each family lists the keys its reference implementation
//! reads (`Family::keys`), each honoured, refused by name for values Kestrel does not
//! implement, or inert; [`COMMON_KEYS`] holds those any config may carry.

use serde_json::Value;

use crate::formats::config::JsonConfig;

/// A config.json key a family's reference implementation (transformers, fla, rwkv, the
/// model's own remote code) reads, and what Kestrel does with it. Each family lists its keys
/// in one table ([`Family::keys`](crate::families::Family)); keys every config carries are in
/// [`COMMON_KEYS`]. A key in neither is tolerated with a warning, as llama.cpp tolerates
/// unknown metadata: only keys known to change the math are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigKey {
    pub name: &'static str,
    pub role: KeyRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// Read, and changes Kestrel's network as it changes the reference's; `changed` is
    /// another value (JSON) that changes the parsed config, `refused` one Kestrel does not
    /// implement and refuses naming the key, if there is such a value.
    Honoured {
        changed: &'static str,
        refused: Option<&'static str>,
    },
    /// Kestrel implements only the default; `refused` (JSON) is refused naming the key.
    Refused { refused: &'static str },
    /// Does not change the network's math, for the reason given.
    Inert { why: &'static str },
}

impl ConfigKey {
    /// A key Kestrel reads; `changed`: another value that changes the parsed config.
    pub const fn honoured(name: &'static str, changed: &'static str) -> ConfigKey {
        ConfigKey {
            name,
            role: KeyRole::Honoured {
                changed,
                refused: None,
            },
        }
    }

    /// A key Kestrel reads for some values (`changed` changes the parsed config) and refuses
    /// for others (`refused`).
    pub const fn limited(
        name: &'static str,
        changed: &'static str,
        refused: &'static str,
    ) -> ConfigKey {
        ConfigKey {
            name,
            role: KeyRole::Honoured {
                changed,
                refused: Some(refused),
            },
        }
    }

    /// A key whose only implemented value is the default; `refused` is refused by name.
    pub const fn refused(name: &'static str, refused: &'static str) -> ConfigKey {
        ConfigKey {
            name,
            role: KeyRole::Refused { refused },
        }
    }

    /// A key that does not change the math, and why.
    pub const fn inert(name: &'static str, why: &'static str) -> ConfigKey {
        ConfigKey {
            name,
            role: KeyRole::Inert { why },
        }
    }
}

/// Reasons shared by the tables.
pub mod why {
    pub const TRAINING: &str = "training only (dropout, initialisation, losses)";
    pub const RUNTIME: &str =
        "how the reference runs (cache, kernels, precision), not what it computes";
    pub const DERIVED: &str =
        "derived by the reference from other keys (recomputed, a stored value is not read)";
    pub const NAMING: &str = "names the model; the family is chosen from it";
    pub const FUSED: &str = "selects fused kernels that compute the same function";
    pub const POSITIONS: &str =
        "a recurrent network has no position limit; the reference does not read it either";
}
use why::{NAMING, RUNTIME, TRAINING};

/// Keys any config may carry, for every family: none changes the network's math.
pub const COMMON_KEYS: &[ConfigKey] = &[
    ConfigKey::inert("architectures", NAMING),
    ConfigKey::inert("model_type", NAMING),
    ConfigKey::inert("auto_map", "remote-code class paths"),
    ConfigKey::inert("_name_or_path", "where the checkpoint came from"),
    ConfigKey::inert("transformers_version", "the writer's version"),
    ConfigKey::inert(
        "dtype",
        "the checkpoint's storage type; weights are converted on load",
    ),
    ConfigKey::inert(
        "torch_dtype",
        "the checkpoint's storage type; weights are converted on load",
    ),
    ConfigKey::inert("use_cache", RUNTIME),
    ConfigKey::inert("initializer_range", TRAINING),
    ConfigKey::inert(
        "pad_token_id",
        "padding; Kestrel runs unpadded sequences (the embedding row is read as stored)",
    ),
    ConfigKey::inert("output_attentions", RUNTIME),
    ConfigKey::inert("output_hidden_states", RUNTIME),
    ConfigKey::inert("return_dict", RUNTIME),
    ConfigKey::inert("chunk_size_feed_forward", RUNTIME),
    ConfigKey::inert(
        "id2label",
        "classification heads, which Kestrel does not load",
    ),
    ConfigKey::inert(
        "label2id",
        "classification heads, which Kestrel does not load",
    ),
    ConfigKey::inert(
        "problem_type",
        "classification heads, which Kestrel does not load",
    ),
    ConfigKey::inert(
        "num_labels",
        "classification heads, which Kestrel does not load",
    ),
    ConfigKey::inert(
        "quantization_config",
        "weights are read as their stored dtype",
    ),
    ConfigKey::inert(
        "task_specific_params",
        "generation defaults, not the network",
    ),
    ConfigKey::honoured("bos_token_id", "7"),
    ConfigKey::honoured("eos_token_id", "[7, 8]"),
];

impl JsonConfig {
    /// The keys of this config that neither `table` nor [`COMMON_KEYS`] lists.
    pub fn unknown_keys(&self, table: &[ConfigKey]) -> Vec<String> {
        let known = |k: &str| table.iter().chain(COMMON_KEYS).any(|key| key.name == k);
        match &self.value {
            Value::Object(map) => map.keys().filter(|k| !known(k)).cloned().collect(),
            _ => Vec::new(),
        }
    }
}

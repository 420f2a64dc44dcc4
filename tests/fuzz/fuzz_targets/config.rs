//! config.json → every family's network config. Input starting with `{` is parsed as the
//! whole file (seeded from the fixtures); any other input is read (through `arbitrary`) as
//! edits of one fixture config: keys set to extreme or mistyped values, removed, or the
//! architecture switched to any supported class, so every family sees near-valid configs.

#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use kestrel_models::families;
use kestrel_models::formats::config::JsonConfig;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

macro_rules! fixtures {
    ($($name:literal),*) => {
        &[$(include_str!(concat!("../../fixtures/", $name, "/config.json"))),*]
    };
}

const FIXTURES: &[&str] = fixtures!(
    "gla",
    "jamba",
    "llada",
    "llama_gqa",
    "llama_tied",
    "mamba",
    "mamba2",
    "mistral_window",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen2_window",
    "rwkv4",
    "rwkv4_rescale",
    "rwkv6",
    "rwkv7",
    "zamba2"
);

/// Keys some family reads that a fixture may lack.
const EXTRA_KEYS: &[&str] = &[
    "head_dim",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "rope_scaling",
    "is_causal",
    "fuse_norm",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "mask_token_id",
    "tie_word_embeddings",
];

#[derive(Arbitrary, Debug)]
enum Edit {
    /// Set the `key`-th key (of the fixture's, then EXTRA_KEYS) to a value.
    Set(u8, Val),
    Remove(u8),
    /// Name the `n`-th supported class.
    Class(u8),
}

#[derive(Arbitrary, Debug)]
enum Val {
    Int(u64),
    Small(u8),
    Neg(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Null,
    Ints(Vec<u16>),
    Object(Vec<(String, u32)>),
}

impl Val {
    fn json(self) -> Value {
        match self {
            Val::Int(n) => json!(n),
            Val::Small(n) => json!(n),
            Val::Neg(n) => json!(n),
            Val::Float(f) => json!(f),
            Val::Bool(b) => json!(b),
            Val::Str(s) => json!(s),
            Val::Null => Value::Null,
            Val::Ints(v) => json!(v),
            Val::Object(kv) => Value::Object(kv.into_iter().map(|(k, v)| (k, json!(v))).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Edits {
    fixture: u8,
    edits: Vec<Edit>,
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/config.json");
    let config = if data.first() == Some(&b'{') {
        match JsonConfig::parse(path, &String::from_utf8_lossy(data)) {
            Ok(c) => c,
            Err(_) => return,
        }
    } else {
        let Ok(e) = Edits::arbitrary(&mut arbitrary::Unstructured::new(data)) else {
            return;
        };
        let text = FIXTURES[e.fixture as usize % FIXTURES.len()];
        let Ok(mut config) = JsonConfig::parse(path, text) else {
            panic!("a fixture does not parse");
        };
        let classes = families::supported();
        let classes: Vec<&str> = classes.split(", ").collect();
        let Value::Object(map) = &mut config.value else {
            panic!("a fixture is not an object");
        };
        let mut keys: Vec<String> = map.keys().cloned().collect();
        keys.extend(EXTRA_KEYS.iter().map(|k| k.to_string()));
        for edit in e.edits {
            match edit {
                Edit::Set(k, v) => {
                    map.insert(keys[k as usize % keys.len()].clone(), v.json());
                }
                Edit::Remove(k) => {
                    map.remove(&keys[k as usize % keys.len()]);
                }
                Edit::Class(n) => {
                    map.insert(
                        "architectures".into(),
                        json!([classes[n as usize % classes.len()]]),
                    );
                }
            }
        }
        config
    };
    let _ = families::from_config(&config);
});

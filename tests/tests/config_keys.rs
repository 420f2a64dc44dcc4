//! Every family's table of config.json keys (`Family::keys`) against the fixture configs,
//! which the reference implementations wrote (transformers, fla, LLaDA's generator): each key
//! a fixture carries is in its family's table; each honoured key changes the parsed config;
//! each refused value gives an error naming the key; removing an inert key changes nothing;
//! absurd or inconsistent hyper-parameters are refused by name. No GPU: configs only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kestrel_models::families::{self, Family};
use kestrel_models::formats::config::keys::{ConfigKey, KeyRole, COMMON_KEYS};
use kestrel_models::formats::config::JsonConfig;
use serde_json::Value;

/// Every fixture's config.json, with its family.
fn fixture_configs() -> Vec<(String, &'static Family, JsonConfig)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path().join("config.json"))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let configs: Vec<_> = paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("config.json");
            let config = JsonConfig::parse(&path, &text).expect("fixture config parses");
            let family = families::family_of(&config).expect("fixture family");
            let name = path.parent().and_then(|p| p.file_name()).expect("name");
            (name.to_string_lossy().into_owned(), family, config)
        })
        .collect();
    assert!(
        configs.len() >= 15,
        "only {} fixture configs",
        configs.len()
    );
    // Configs written before transformers 5 have no layer_types (the windows follow
    // sliding_window, use_sliding_window and max_window_layers): the Qwen2 and Qwen3 fixtures
    // without; nor Gemma 3's RoPE per layer type (rope_theta, rope_local_base_freq); SmolLM3's
    // no_rope_layers may be left to no_rope_layer_interval; Phi-3's RoPE settings were
    // top-level keys.
    const DERIVED: &[(&str, &[&str])] = &[
        ("qwen2", &["layer_types"]),
        ("qwen3", &["layer_types"]),
        ("gemma3", &["layer_types", "rope_parameters"]),
        ("smollm3", &["no_rope_layers"]),
        // RoPE settings as top-level keys (transformers 4, and GGUF metadata).
        ("qwen3", &["rope_parameters"]),
        ("smollm3", &["rope_parameters"]),
        ("olmo2", &["rope_parameters"]),
        // transformers 4's Phi-3 configs: partial_rotary_factor and rope_theta at the top.
        ("phi3", &["rope_parameters"]),
    ];
    let legacy: Vec<_> = configs
        .iter()
        .flat_map(|(name, f, c)| {
            DERIVED
                .iter()
                .filter(|(prefix, keys)| {
                    name.starts_with(prefix) && keys.iter().all(|k| c.get(k).is_some())
                })
                .map(move |(_, keys)| {
                    let mut c = with_key(c, keys[0], None);
                    for k in &keys[1..] {
                        c = with_key(&c, k, None);
                    }
                    (format!("{name} (no {})", keys.join(", ")), *f, c)
                })
        })
        .collect();
    configs.into_iter().chain(legacy).collect()
}

/// `config` with `key` set to `value` (JSON text), or removed when `value` is None.
fn with_key(config: &JsonConfig, key: &str, value: Option<&str>) -> JsonConfig {
    let mut v = config.value.clone();
    let map = v.as_object_mut().expect("object");
    match value {
        Some(text) => {
            let parsed: Value = serde_json::from_str(text).expect("table value is JSON");
            map.insert(key.to_string(), parsed);
        }
        None => {
            map.remove(key);
        }
    }
    JsonConfig {
        path: config.path.clone(),
        value: v,
    }
}

/// Keys set with their values (JSON).
type Edits = &'static [(&'static str, &'static str)];

/// Keys that must change together with the one under test to keep a config consistent:
/// (fixture, key) → the other keys' values.
const COMPANIONS: &[(&str, &str, Edits)] = &[
    ("mamba2", "num_heads", &[("head_dim", "16")]),
    ("mamba2", "head_dim", &[("num_heads", "2")]),
    ("rwkv4", "hidden_size", &[("attention_hidden_size", "128")]),
    ("jamba", "num_local_experts", &[("num_experts", "null")]),
    ("qwen3_moe", "num_experts", &[("num_local_experts", "null")]),
    (
        "gemma3",
        "num_hidden_layers",
        &[("layer_types", r#"["full_attention"]"#)],
    ),
    (
        "smollm3",
        "num_hidden_layers",
        &[
            ("no_rope_layers", "[1]"),
            ("layer_types", r#"["full_attention"]"#),
        ],
    ),
    ("llada", "vocab_size", &[("embedding_size", "null")]),
    (
        "zamba2",
        "num_hidden_layers",
        &[(
            "layers_block_type",
            r#"["mamba", "hybrid", "mamba", "hybrid"]"#,
        )],
    ),
    (
        "zamba2",
        "num_attention_heads",
        &[("num_key_value_heads", "8")],
    ),
    (
        "zamba2",
        "num_key_value_heads",
        &[("use_shared_attention_adapter", "false")],
    ),
];

/// `config` (fixture `name`) with `key` set to `value` and its companions.
fn with_change(name: &str, config: &JsonConfig, key: &str, value: &str) -> JsonConfig {
    let mut c = with_key(config, key, Some(value));
    for (_, _, others) in COMPANIONS
        .iter()
        .filter(|(n, k, _)| *n == name && *k == key)
    {
        for (k, v) in *others {
            c = with_key(&c, k, Some(v));
        }
    }
    c
}

/// The parsed config's Debug text, or the error's message.
fn parse(config: &JsonConfig) -> Result<String, String> {
    families::from_config(config)
        .map(|c| format!("{c:?}"))
        .map_err(|e| e.to_string())
}

fn class(family: &Family) -> &'static str {
    family
        .classes
        .first()
        .copied()
        .unwrap_or("BlinkDL RWKV-7 (no config.json)")
}

fn families_with_configs() -> Vec<&'static Family> {
    families::FAMILIES
        .iter()
        .copied()
        .filter(|f| f.parse.is_some())
        .collect()
}

#[test]
fn every_fixture_key_is_in_its_familys_table() {
    let mut sizes = BTreeMap::new();
    for f in families::FAMILIES {
        let count = |pick: fn(&KeyRole) -> bool| f.keys.iter().filter(|k| pick(&k.role)).count();
        sizes.insert(
            class(f),
            (
                f.keys.len(),
                count(|r| matches!(r, KeyRole::Honoured { .. })),
                count(|r| {
                    matches!(
                        r,
                        KeyRole::Refused { .. }
                            | KeyRole::Honoured {
                                refused: Some(_),
                                ..
                            }
                    )
                }),
                count(|r| matches!(r, KeyRole::Inert { .. })),
            ),
        );
        let mut names: Vec<&str> = f.keys.iter().chain(COMMON_KEYS).map(|k| k.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "{}: a key is listed twice", class(f));
    }
    println!(
        "config-key tables (keys, honoured, refusable, inert) + {} common:",
        COMMON_KEYS.len()
    );
    for (class, size) in &sizes {
        println!("  {class}: {size:?}");
    }
    for (name, family, config) in fixture_configs() {
        let unknown = config.unknown_keys(family.keys);
        assert!(
            unknown.is_empty(),
            "{name}: keys missing from {}'s table: {unknown:?}",
            class(family)
        );
        parse(&config).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Runs `check` on every fixture of every family for each key of its table (and the common
/// ones) that `pick` selects; each such key must pass on at least one fixture.
fn for_each_key(
    pick: fn(&ConfigKey) -> Option<&'static str>,
    check: impl Fn(&str, &JsonConfig, &str, &str) -> Result<(), String>,
) -> usize {
    let configs = fixture_configs();
    let mut checked = 0;
    let mut failed = Vec::new();
    for family in families_with_configs() {
        let mine: Vec<_> = configs
            .iter()
            .filter(|(_, f, _)| class(f) == class(family))
            .collect();
        assert!(!mine.is_empty(), "{}: no fixture config", class(family));
        for key in family.keys.iter().chain(COMMON_KEYS) {
            let Some(value) = pick(key) else { continue };
            let failures: Vec<String> = mine
                .iter()
                .filter_map(|(name, _, config)| {
                    check(name, config, key.name, value)
                        .err()
                        .map(|e| format!("{name}: {e}"))
                })
                .collect();
            if failures.len() == mine.len() {
                failed.push(format!(
                    "{}: key '{}' = {value} failed on every fixture: {failures:#?}",
                    class(family),
                    key.name
                ));
            }
            checked += 1;
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    checked
}

#[test]
fn honoured_keys_change_the_parsed_config() {
    let checked = for_each_key(
        |k| match k.role {
            KeyRole::Honoured { changed, .. } => Some(changed),
            _ => None,
        },
        |name, config, key, value| {
            let base = parse(config)?;
            let changed = parse(&with_change(name, config, key, value))?;
            match base == changed {
                true => Err("the parsed config did not change".into()),
                false => Ok(()),
            }
        },
    );
    println!("{checked} honoured keys reach the parsed config");
}

#[test]
fn refused_values_are_refused_by_name() {
    let checked = for_each_key(
        |k| match k.role {
            KeyRole::Refused { refused } => Some(refused),
            KeyRole::Honoured { refused, .. } => refused,
            KeyRole::Inert { .. } => None,
        },
        |_, config, key, value| {
            parse(config)?;
            match parse(&with_key(config, key, Some(value))) {
                Ok(_) => Err("parsed".into()),
                Err(e) if e.contains(&format!("'{key}")) => Ok(()),
                Err(e) => Err(format!("the error does not name the key: {e}")),
            }
        },
    );
    println!("{checked} refusable keys refused by name");
}

#[test]
fn inert_keys_do_not_change_the_parsed_config() {
    for (name, family, config) in fixture_configs() {
        let base = parse(&config).expect("fixture parses");
        for key in family.keys.iter().chain(COMMON_KEYS) {
            if !matches!(key.role, KeyRole::Inert { .. }) || config.get(key.name).is_none() {
                continue;
            }
            // The names (architectures, model_type) pick the family: keep them.
            if key.name == "architectures" || key.name == "model_type" {
                continue;
            }
            let without = parse(&with_key(&config, key.name, None));
            assert_eq!(
                without.as_ref(),
                Ok(&base),
                "{name}: removing '{}'",
                key.name
            );
        }
    }
}

/// Size keys of each family's configs: a value of 2^40 or 0 is refused naming the key.
const SIZE_KEYS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_heads",
    "head_dim",
    "intermediate_size",
    "moe_intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "state_size",
    "mamba_d_state",
    "n_mamba_heads",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "n_layers",
    "mlp_hidden_size",
    "embedding_size",
    "max_sequence_length",
];

#[test]
fn absurd_hyper_parameters_are_refused_by_name() {
    let mut checked = 0;
    for (name, family, config) in fixture_configs() {
        for key in SIZE_KEYS {
            // Only keys the fixture sets (a family reads its own) and the family reads.
            let inert = family
                .keys
                .iter()
                .any(|k| k.name == *key && matches!(k.role, KeyRole::Inert { .. }));
            if inert || !config.get(key).is_some_and(Value::is_u64) {
                continue;
            }
            for value in ["1099511627776", "0"] {
                match parse(&with_key(&config, key, Some(value))) {
                    Ok(_) => panic!("{name}: {key} = {value} parsed"),
                    Err(e) => assert!(e.contains(&format!("'{key}'")), "{name}: {key}: {e}"),
                }
            }
            checked += 1;
        }
    }
    println!("{checked} size keys refused at 2^40 and 0");
    assert!(checked >= 60, "only {checked} size keys checked");
}

#[test]
fn inconsistent_heads_are_refused_by_name() {
    let configs = fixture_configs();
    let config = |name: &str| {
        let (_, _, c) = configs.iter().find(|(n, _, _)| n == name).expect(name);
        c
    };
    let cases = [
        // Hidden 64 is not a multiple of 5 heads (no head_dim given).
        (
            "llama_gqa",
            vec![("num_attention_heads", "5"), ("head_dim", "null")],
            "num_attention_heads",
        ),
        // 3 kv heads do not divide 4 heads.
        (
            "llama_gqa",
            vec![("num_key_value_heads", "3")],
            "num_key_value_heads",
        ),
        ("llada", vec![("n_heads", "5")], "n_heads"),
        ("llada", vec![("n_kv_heads", "3")], "n_kv_heads"),
        (
            "jamba",
            vec![("num_key_value_heads", "3")],
            "num_key_value_heads",
        ),
        (
            "zamba2",
            vec![("num_key_value_heads", "3")],
            "num_key_value_heads",
        ),
        ("gla", vec![("num_heads", "5")], "expand_k"),
        (
            "rwkv7",
            vec![("head_dim", "7"), ("num_heads", "null")],
            "head_dim",
        ),
        ("mamba2", vec![("num_heads", "5")], "num_heads"),
        (
            "mixtral",
            vec![("num_experts_per_tok", "9")],
            "num_experts_per_tok",
        ),
    ];
    for (name, edits, key) in cases {
        let mut c = with_key(config(name), "unused", None);
        for (k, v) in &edits {
            c = with_key(&c, k, Some(v));
        }
        match parse(&c) {
            Ok(_) => panic!("{name} with {edits:?} parsed"),
            Err(e) => assert!(e.contains(&format!("'{key}'")), "{name} {edits:?}: {e}"),
        }
    }
}

#[test]
fn is_causal_false_gives_a_bidirectional_decoder() {
    let configs = fixture_configs();
    let (_, _, llama) = configs
        .iter()
        .find(|(n, _, _)| n == "llama_gqa")
        .expect("llama_gqa");
    let causal = parse(llama).expect("parses");
    assert!(causal.contains("causal: true"), "{causal}");
    let bidirectional = parse(&with_key(llama, "is_causal", Some("false"))).expect("parses");
    assert!(bidirectional.contains("causal: false"), "{bidirectional}");
    // Bidirectional sliding windows are not implemented.
    let (_, _, mistral) = configs
        .iter()
        .find(|(n, _, _)| n == "mistral_window")
        .expect("mistral_window");
    let err = parse(&with_key(mistral, "is_causal", Some("false"))).expect_err("refused");
    assert!(err.contains("'is_causal'"), "{err}");
}

#[test]
fn unknown_keys_are_tolerated_and_listed() {
    let configs = fixture_configs();
    for (name, family, config) in &configs {
        let c = with_key(config, "kestrel_test_unknown_key", Some("123"));
        assert_eq!(
            c.unknown_keys(family.keys),
            vec!["kestrel_test_unknown_key".to_string()],
            "{name}"
        );
        // Listed as unread in the parsed config, which is otherwise the same.
        let parsed = parse(&c).expect("parses");
        let unread = r#"unread_keys: ["kestrel_test_unknown_key"]"#;
        assert!(parsed.contains(unread), "{name}: {parsed}");
        let base = parse(config).expect("parses");
        assert_eq!(parsed.replace(unread, "unread_keys: []"), base, "{name}");
    }
}

#[test]
fn absurd_ratios_are_refused_by_name() {
    let configs = fixture_configs();
    for (name, key) in [
        ("gla", "expand_k"),
        ("gla", "expand_v"),
        ("rwkv6", "expand_k"),
        ("rwkv6", "hidden_ratio"),
        ("rwkv7", "hidden_ratio"),
        ("rwkv7", "value_dim"),
    ] {
        let (_, _, config) = configs.iter().find(|(n, _, _)| n == name).expect(name);
        // hidden_ratio only counts without intermediate_size.
        let config = with_key(config, "intermediate_size", None);
        for value in ["1e300", "-1.0", "1099511627776"] {
            match parse(&with_key(&config, key, Some(value))) {
                Ok(_) => panic!("{name}: {key} = {value} parsed"),
                Err(e) => assert!(e.contains(&format!("'{key}'")), "{name} {key}={value}: {e}"),
            }
        }
    }
}

#[test]
fn llama_ignores_the_window_keys_its_reference_does_not_read() {
    let configs = fixture_configs();
    let (_, _, llama) = configs
        .iter()
        .find(|(n, _, _)| n == "llama_gqa")
        .expect("llama_gqa");
    let base = parse(llama).expect("parses");
    for (key, value) in [
        ("sliding_window", "4"),
        (
            "layer_types",
            r#"["sliding_attention", "sliding_attention"]"#,
        ),
    ] {
        let parsed = parse(&with_key(llama, key, Some(value))).expect("parses");
        assert_eq!(parsed, base, "{key}");
    }
}

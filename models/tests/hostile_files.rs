//! Files written by strangers: every broken one gives a typed error naming the file and the
//! cause, never a panic, an abort or an allocation sized by a header; files named inside a
//! model folder stay inside it. Each crash the fuzz targets (tests/fuzz) found is here too.

mod common;

use std::path::Path;

use common::{llama, temp_dir};
use kestrel_models::chat_template::{ChatTemplate, Message};
use kestrel_models::families;
use kestrel_models::formats::config::JsonConfig;
use kestrel_models::formats::gguf::GgufFile;
use kestrel_models::formats::host::TensorSource;
use kestrel_models::formats::safetensors::{Blob, SafetensorsFiles};
use kestrel_models::{gguf_parts, ModelError};

fn parse(bytes: Vec<u8>) -> GgufFile {
    GgufFile::parse(Path::new("crafted.gguf"), Blob::Owned(bytes)).expect("a valid GGUF")
}

/// The message of `r`'s error, which must name the crafted file and contain `needle`.
fn expect_err<T>(r: Result<T, ModelError>, file: &str, needle: &str) -> String {
    let msg = match r {
        Ok(_) => panic!("expected an error containing {needle:?}"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(file), "{msg:?} does not name {file}");
    assert!(msg.contains(needle), "{msg:?} does not contain {needle:?}");
    msg
}

/// The issue's report: an `attn_q` with a zero dimension panicked at load (a division by its
/// row count while undoing llama.cpp's row permutation).
#[test]
fn gguf_attn_q_with_a_zero_dimension_is_an_error() {
    for dims in [[8u64, 0], [0, 8]] {
        let file = parse(
            llama(1)
                .tensor("blk.0.attn_q.weight", &dims)
                .tensor("blk.0.attn_k.weight", &[8, 8])
                .bytes(),
        );
        let parts = gguf_parts(&file).expect("the config is valid");
        let q = parts
            .source
            .tensor("model.layers.0.self_attn.q_proj.weight");
        expect_err(q, "crafted.gguf", "has a zero dimension");
    }
}

/// A q tensor whose rows do not split into the heads, a scalar q, and a config with zero
/// key/value heads are shape errors, not divisions by zero or out-of-range indexing.
#[test]
fn gguf_q_k_rows_that_do_not_split_into_heads_are_errors() {
    let file = parse(llama(1).tensor("blk.0.attn_q.weight", &[8, 3]).bytes());
    let parts = gguf_parts(&file).expect("the config is valid");
    let q = parts
        .source
        .tensor("model.layers.0.self_attn.q_proj.weight");
    expect_err(q, "crafted.gguf", "blk.0.attn_q.weight");

    let file = parse(llama(1).tensor("blk.0.attn_k.weight", &[]).bytes());
    let parts = gguf_parts(&file).expect("the config is valid");
    let k = parts
        .source
        .tensor("model.layers.0.self_attn.k_proj.weight");
    expect_err(k, "crafted.gguf", "blk.0.attn_k.weight");
}

/// The issue's report: `block_count` 2^40 aborted the process (an allocation per layer).
#[test]
fn gguf_absurd_block_count_is_an_error() {
    let file = parse(llama(1 << 40).bytes());
    expect_err(gguf_parts(&file), "crafted.gguf", "num_hidden_layers");
}

/// A token text of a megabyte would make the SentencePiece merge table quadratic in it.
#[test]
fn gguf_vocabulary_with_a_huge_token_is_an_error() {
    let long = "a".repeat(1 << 20);
    let file = parse(
        llama(1)
            .str("tokenizer.ggml.model", "llama")
            .strs("tokenizer.ggml.tokens", &["<unk>", "<s>", "</s>", &long])
            .bytes(),
    );
    expect_err(gguf_parts(&file), "crafted.gguf", "bytes long");
}

/// A safetensors file with `n` f32 tensors named `t0..` of `shape`, as raw bytes.
fn safetensors(shape: &[usize]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let header = format!(
        "{{\"t\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[0,{}]}}}}",
        n * 4
    );
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, n * 4));
    b
}

#[test]
fn safetensors_zero_dimension_and_corrupt_headers_are_errors() {
    let path = Path::new("crafted.safetensors");
    let files = SafetensorsFiles::from_blobs(
        path,
        vec![(path.to_path_buf(), Blob::Owned(safetensors(&[4, 0])))],
    )
    .expect("a valid file");
    expect_err(files.tensor("t"), "crafted.safetensors", "zero dimension");

    let mut huge_header = u64::MAX.to_le_bytes().to_vec();
    huge_header.extend_from_slice(b"{}");
    let mut past_end = safetensors(&[4]);
    past_end.truncate(past_end.len() - 1);
    for bytes in [huge_header, past_end, vec![1, 2, 3]] {
        let r = SafetensorsFiles::from_blobs(path, vec![(path.to_path_buf(), Blob::Owned(bytes))]);
        expect_err(r, "crafted.safetensors", "invalid safetensors");
    }
}

/// A sharded checkpoint's folder: `model.safetensors.index.json` naming `shard`.
fn sharded_folder(name: &str, shard: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let index = format!(
        "{{\"weight_map\": {{\"t\": {}}}}}",
        serde_json::json!(shard)
    );
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
    dir
}

#[test]
fn index_entries_outside_the_folder_are_refused() {
    let outside = temp_dir("outside_target");
    std::fs::write(outside.join("x.safetensors"), safetensors(&[4])).unwrap();
    let absolute = outside.join("x.safetensors").display().to_string();
    for (name, entry, needle) in [
        ("dotdot", "../outside_target/x.safetensors", "'..'"),
        ("absolute", absolute.as_str(), "absolute path"),
        ("empty", "", "empty file name"),
    ] {
        let dir = sharded_folder(name, entry);
        let msg = expect_err(
            SafetensorsFiles::open_dir(&dir),
            "model.safetensors.index.json",
            needle,
        );
        assert!(
            msg.contains(&format!("'{entry}'")),
            "{msg:?} names no entry"
        );
    }
    let dir = sharded_folder("not_a_string", "x");
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"t": 5}}"#,
    )
    .unwrap();
    expect_err(
        SafetensorsFiles::open_dir(&dir),
        "model.safetensors.index.json",
        "weight_map.t",
    );
}

#[cfg(unix)]
#[test]
fn symlinks_escaping_the_folder_are_refused() {
    let outside = temp_dir("symlink_target");
    std::fs::write(outside.join("x.safetensors"), safetensors(&[4])).unwrap();
    std::fs::write(outside.join("tokenizer.json"), "{}").unwrap();

    // A shard the index lists, and a single model.safetensors.
    let dir = sharded_folder("symlink_shard", "x.safetensors");
    std::os::unix::fs::symlink(outside.join("x.safetensors"), dir.join("x.safetensors")).unwrap();
    expect_err(
        SafetensorsFiles::open_dir(&dir),
        "model.safetensors.index.json",
        "symlink",
    );
    let dir = temp_dir("symlink_single");
    std::os::unix::fs::symlink(outside.join("x.safetensors"), dir.join("model.safetensors"))
        .unwrap();
    expect_err(
        SafetensorsFiles::open_dir(&dir),
        "symlink_single",
        "'model.safetensors'",
    );

    // A file named by convention (tokenizer.json).
    let dir = temp_dir("symlink_tokenizer");
    std::os::unix::fs::symlink(outside.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let r = kestrel_models::formats::folder::file_in_folder(&dir, "tokenizer.json", &dir);
    expect_err(r, "symlink_tokenizer", "outside the model folder");
}

#[cfg(unix)]
#[test]
fn files_inside_the_folder_and_hub_cache_blobs_are_accepted() {
    // A shard in a subfolder, through a symlink that stays inside.
    let dir = sharded_folder("inside", "sub/x.safetensors");
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("real.safetensors"), safetensors(&[4])).unwrap();
    std::os::unix::fs::symlink(dir.join("real.safetensors"), dir.join("sub/x.safetensors"))
        .unwrap();
    let files = SafetensorsFiles::open_dir(&dir).expect("a shard inside the folder");
    assert!(files.contains("t"));

    // Hugging Face's hub cache: snapshots/<rev>/file -> ../../blobs/<hash>.
    let repo = temp_dir("hub_cache");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/rev")).unwrap();
    std::fs::write(repo.join("blobs/abc"), safetensors(&[4])).unwrap();
    std::os::unix::fs::symlink(
        "../../blobs/abc",
        repo.join("snapshots/rev/model.safetensors"),
    )
    .unwrap();
    let files = SafetensorsFiles::open_dir(&repo.join("snapshots/rev")).expect("a hub snapshot");
    assert!(files.contains("t"));
}

/// A template that never ends (or builds ever larger strings) runs out of fuel.
#[test]
fn chat_template_that_loops_forever_stops() {
    let messages = [Message::new("user", "hi")];
    for source in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(100000) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    ] {
        let t = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
        let start = std::time::Instant::now();
        let r = t.render(&messages, true);
        assert!(r.is_err(), "{source} rendered");
        assert!(start.elapsed().as_secs() < 10, "{source} took {:?}", start.elapsed());
    }
    // A real template over a long conversation has fuel to spare.
    let t = ChatTemplate::or_fallback(None, "", "").unwrap();
    let long: Vec<Message> = (0..2000)
        .map(|i| Message::new("user", &format!("message {i} {}", "word ".repeat(200))))
        .collect();
    let text = t.render(&long, true).expect("a 2 MB conversation renders");
    assert!(text.len() > 2_000_000);
}

/// A fixture's config.json with `edit` applied.
fn fixture_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> JsonConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .join("config.json");
    let text = std::fs::read_to_string(&path).expect("a fixture config");
    let mut config = JsonConfig::parse(&path, &text).expect("a fixture config parses");
    edit(&mut config.value);
    config
}

/// Found by the config fuzz target: Mamba-2's num_heads * head_dim overflowed (a panic).
#[test]
fn config_mamba2_heads_times_head_dim_overflow_is_an_error() {
    let config = fixture_config("mamba2", |v| {
        v["num_heads"] = serde_json::json!(1u64 << 62);
        v["head_dim"] = serde_json::json!(8);
    });
    expect_err(families::from_config(&config), "config.json", "num_heads");
}

/// Found by the tokenizer fuzz target: a syntax error inside tokenizer.json's "decoder"
/// made tokenizers 0.22 panic ("Helper").
#[test]
fn tokenizer_json_with_a_syntax_error_in_the_decoder_is_an_error() {
    let json = b"{\"decoder\": {\"type\": \"ByteLevel\", \"x\": \"a\x01b\"}}";
    let r = kestrel_models::TextTokenizer::from_bytes(Path::new("crafted/tokenizer.json"), json);
    expect_err(r, "crafted/tokenizer.json", "control character");
}

/// Reading tokenizer.json through a parsed value (the fix above) tokenizes as before.
#[test]
fn fixture_tokenizers_still_match_their_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama_gqa");
    let bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let tok = kestrel_models::TextTokenizer::from_bytes(&dir.join("tokenizer.json"), &bytes)
        .expect("the fixture tokenizer loads");
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tok.encode(text).unwrap();
        // The cases hold ids without special tokens; the tokenizer may add a BOS.
        assert!(got.ends_with(&ids), "{text:?}: {got:?} vs {ids:?}");
    }
}

/// Found by the config fuzz target: GLA's default intermediate size overflowed (hidden_size
/// times hidden_ratio, a panic).
#[test]
fn config_gla_hidden_ratio_overflow_is_an_error() {
    let config = fixture_config("gla", |v| {
        v["hidden_ratio"] = serde_json::json!(1u64 << 62);
        v.as_object_mut().unwrap().remove("intermediate_size");
    });
    expect_err(
        families::from_config(&config),
        "config.json",
        "hidden_ratio",
    );
}

/// Found by the tokenizer fuzz target: an invalid \u escape inside the "decoder" object
/// also made tokenizers panic.
#[test]
fn tokenizer_json_with_a_bad_escape_in_the_decoder_is_an_error() {
    let json = br#"{"decoder": {"type": "ByteLevel", "x": "\ud800"}}"#;
    let r = kestrel_models::TextTokenizer::from_bytes(Path::new("crafted/tokenizer.json"), json);
    expect_err(r, "crafted/tokenizer.json", "escape");
}

/// Found by the config fuzz target: Mamba's expand * hidden_size overflowed (a panic).
#[test]
fn config_mamba_expand_overflow_is_an_error() {
    let config = fixture_config("mamba2", |v| {
        v["expand"] = serde_json::json!(1u64 << 62);
    });
    expect_err(families::from_config(&config), "config.json", "expand");
}

/// Found by the config fuzz target: RWKV's default intermediate size (hidden_size times
/// hidden_ratio, rounded up) overflowed (a panic).
#[test]
fn config_rwkv_hidden_ratio_overflow_is_an_error() {
    let config = fixture_config("rwkv7", |v| {
        v["hidden_ratio"] = serde_json::json!(1e300);
        v.as_object_mut().unwrap().remove("intermediate_size");
    });
    expect_err(
        families::from_config(&config),
        "config.json",
        "hidden_ratio",
    );
}

/// Found by the config fuzz target: LLaDA's (and Jamba's) layer count sized a table before
/// any limit (an abort on allocation).
#[test]
fn config_absurd_layer_counts_are_errors() {
    for (fixture, key) in [("llada", "n_layers"), ("jamba", "num_hidden_layers")] {
        let config = fixture_config(fixture, |v| v[key] = serde_json::json!(1u64 << 60));
        expect_err(families::from_config(&config), "config.json", key);
    }
}

/// Found by the config fuzz target: a Mamba-1 mixer of zero channels divided by zero.
#[test]
fn config_mamba_zero_channels_is_an_error() {
    // The inner width is expand * hidden_size (transformers overwrites intermediate_size).
    let config = fixture_config("mamba", |v| v["expand"] = serde_json::json!(0));
    expect_err(families::from_config(&config), "config.json", "expand");
}

/// Found by the config fuzz target: a Mamba mixer of zero channels (mamba_expand 0) in a
/// hybrid divided by zero when its scan shape was checked.
#[test]
fn config_hybrid_mamba_zero_channels_are_errors() {
    for fixture in ["jamba", "zamba2"] {
        let config = fixture_config(fixture, |v| v["mamba_expand"] = serde_json::json!(0));
        let r = families::from_config(&config);
        assert!(r.is_err(), "{fixture} with mamba_expand 0 was accepted");
    }
}

/// Found by the config fuzz target: Zamba2's mamba_expand * hidden_size overflowed.
#[test]
fn config_zamba2_expand_overflow_is_an_error() {
    let config = fixture_config("zamba2", |v| {
        v["mamba_expand"] = serde_json::json!(1u64 << 62)
    });
    expect_err(
        families::from_config(&config),
        "config.json",
        "mamba_expand",
    );
}

/// Found by the config fuzz target: Jamba's mamba_expand * hidden_size overflowed.
#[test]
fn config_jamba_expand_overflow_is_an_error() {
    let config = fixture_config("jamba", |v| {
        v["mamba_expand"] = serde_json::json!(1u64 << 62)
    });
    expect_err(
        families::from_config(&config),
        "config.json",
        "mamba_expand",
    );
}

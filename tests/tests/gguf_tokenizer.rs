//! Tokenizers built from GGUF metadata, checked against llama.cpp's published tokenization
//! vectors (`models/ggml-vocab-NAME.gguf.inp` / `.out`).
//!
//! The vocabularies themselves are megabytes, so tests/fixtures/vocab/NAME.json keeps only
//! the tokens and merges the test inputs need, with their original ids (derive.py explains
//! why that tokenizes the inputs exactly as the full vocabulary does). The loader fills the
//! other ids with placeholders and goes through `GgufVocab::from_metadata`, the same path as a
//! GGUF file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kestrel_models::formats::gguf::{GgufArray, GgufFile, GgufValue};
use kestrel_models::formats::gguf_tokenizer::{
    build_tokenizer, supported_pre_types, token_type, GgufVocab, Tokenizer,
};

const SEP: &str = "\n__ggml_vocab_test__\n";

fn vocab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vocab")
}

/// The placeholder text of an id the compact fixture does not keep.
fn placeholder(id: usize) -> String {
    format!("\u{E000}{id}\u{E001}")
}

/// Rebuild the tokenizer.ggml.* metadata of a compact fixture and read it as a GGUF would be.
fn load_fixture(name: &str) -> GgufVocab {
    let path = vocab_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let j: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    let n = j["n_tokens"].as_u64().unwrap() as usize;
    let ids: Vec<usize> = j["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let texts = j["texts"].as_array().unwrap();
    let types = j["types"].as_array().unwrap();
    let mut tokens: Vec<String> = (0..n).map(placeholder).collect();
    let mut ttypes = vec![token_type::UNUSED; n];
    for (k, &id) in ids.iter().enumerate() {
        tokens[id] = texts[k].as_str().unwrap().to_string();
        ttypes[id] = types[k].as_i64().unwrap() as i32;
    }
    let mut meta: HashMap<String, GgufValue> = HashMap::new();
    for (k, v) in j["metadata"].as_object().unwrap() {
        let value = match v {
            serde_json::Value::Bool(b) => GgufValue::Bool(*b),
            serde_json::Value::String(s) => GgufValue::String(s.clone()),
            serde_json::Value::Number(x) => match x.as_u64() {
                Some(u) => GgufValue::U32(u as u32),
                None => GgufValue::F32(x.as_f64().unwrap() as f32),
            },
            other => panic!("unexpected metadata {k}: {other}"),
        };
        meta.insert(k.clone(), value);
    }
    if let Some(scores) = j.get("scores").and_then(|s| s.as_array()) {
        let mut all = vec![0f32; n];
        for (k, &id) in ids.iter().enumerate() {
            all[id] = scores[k].as_f64().unwrap() as f32;
        }
        meta.insert(
            "tokenizer.ggml.scores".into(),
            GgufValue::Array(GgufArray::F32(all)),
        );
    }
    let merges: Vec<String> = j["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    if meta["tokenizer.ggml.model"].as_str() == Some("gpt2") {
        meta.insert(
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(GgufArray::String(merges)),
        );
    }
    meta.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(GgufArray::String(tokens)),
    );
    meta.insert(
        "tokenizer.ggml.token_type".into(),
        GgufValue::Array(GgufArray::I32(ttypes)),
    );
    GgufVocab::from_metadata(&path, |k| meta.get(k)).expect("vocab from fixture metadata")
}

/// llama.cpp's test-tokenizer-0: inputs split at the separator line, one line of ids each.
fn read_cases(dir: &Path, stem: &str) -> Vec<(String, Vec<u32>)> {
    let raw = std::fs::read_to_string(dir.join(format!("{stem}.inp"))).expect(".inp");
    let out = std::fs::read_to_string(dir.join(format!("{stem}.out"))).expect(".out");
    let mut inputs = Vec::new();
    let mut rest = raw.as_str();
    while !rest.is_empty() {
        match rest.find(SEP) {
            Some(i) => {
                inputs.push(rest[..i].to_string());
                rest = &rest[i + SEP.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                rest = "";
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .split('\n')
        .take(inputs.len())
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "{stem}: inputs vs outputs");
    assert!(inputs.len() >= 40, "{stem}: only {} cases", inputs.len());
    inputs.into_iter().zip(outputs).collect()
}

fn encode(tok: &Tokenizer, text: &str, add_special: bool) -> Vec<u32> {
    tok.encode(text, add_special)
        .unwrap_or_else(|e| panic!("encode {text:?}: {e}"))
        .get_ids()
        .to_vec()
}

/// Every case where the tokenizer's ids differ from llama.cpp's.
fn mismatches(tok: &Tokenizer, cases: &[(String, Vec<u32>)]) -> Vec<String> {
    cases
        .iter()
        .filter_map(|(text, want)| {
            let got = encode(tok, text, false);
            (&got != want).then(|| format!("{text:?}:\n   got  {got:?}\n   want {want:?}"))
        })
        .collect()
}

fn check_fixture(name: &str) {
    let v = load_fixture(name);
    let tok = build_tokenizer(&v).expect("build_tokenizer");
    let cases = read_cases(&vocab_dir(), name);
    let bad = mismatches(&tok, &cases);
    assert!(
        bad.is_empty(),
        "{name}: {} of {} cases differ from llama.cpp:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
    // The tokenizer survives tokenizer.json serialization (what TextTokenizer loads).
    let json = tok.to_string(false).expect("serialize");
    let reloaded = Tokenizer::from_bytes(json.as_bytes()).expect("reload tokenizer.json");
    assert!(mismatches(&reloaded, &cases).is_empty(), "{name}: reloaded");
    assert_eq!(
        encode(&reloaded, "Hello world", true),
        encode(&tok, "Hello world", true)
    );
    if v.model == "gpt2" {
        for (text, want) in &cases {
            let back = tok.decode(want, false).expect("decode");
            assert_eq!(&back, text, "{name}: decode(encode(x)) != x");
        }
    }
    println!("{name}: {} cases match llama.cpp", cases.len());
}

#[test]
fn gpt2_vocab_matches_llama_cpp() {
    check_fixture("gpt-2");
}

#[test]
fn llama_bpe_vocab_matches_llama_cpp() {
    check_fixture("llama-bpe");
}

#[test]
fn llama_spm_vocab_matches_llama_cpp() {
    check_fixture("llama-spm");
}

#[test]
fn qwen2_vocab_matches_llama_cpp() {
    check_fixture("qwen2");
}

#[test]
fn deepseek_llm_vocab_matches_llama_cpp() {
    check_fixture("deepseek-llm");
}

/// starcoder's pre-tokenizer (digits, then GPT-2's regex) is also SmolLM's ("smollm").
#[test]
fn starcoder_vocab_matches_llama_cpp() {
    check_fixture("starcoder");
}

#[test]
fn phi3_spm_vocab_matches_llama_cpp() {
    check_fixture("phi-3");
}

#[test]
fn fixture_metadata_gives_llama_cpp_defaults() {
    let gpt2 = load_fixture("gpt-2");
    assert_eq!((gpt2.model.as_str(), gpt2.pre.as_str()), ("gpt2", "gpt-2"));
    assert_eq!((gpt2.bos, gpt2.eos), (Some(50256), Some(50256)));
    assert!(!gpt2.add_bos && !gpt2.add_eos && !gpt2.ignore_merges());

    let l3 = load_fixture("llama-bpe");
    assert_eq!((l3.bos, l3.eos), (Some(128000), Some(128001)));
    // llama.cpp adds BOS for the llama3 pre-tokenizer and emits whole-token pieces unmerged.
    assert!(l3.add_bos && !l3.add_eos && l3.ignore_merges());

    let spm = load_fixture("llama-spm");
    assert_eq!(spm.model, "llama");
    assert_eq!((spm.bos, spm.eos, spm.unk), (Some(1), Some(2), Some(0)));
    assert!(spm.add_bos && !spm.add_eos && spm.add_space_prefix);
    assert_eq!(spm.special_token_ids(), vec![0, 1, 2]);
}

#[test]
fn add_special_follows_add_bos_and_add_eos() {
    let spm = build_tokenizer(&load_fixture("llama-spm")).unwrap();
    assert_eq!(encode(&spm, "Hello world", true), vec![1, 15043, 3186]);
    assert_eq!(encode(&spm, "Hello world", false), vec![15043, 3186]);
    // llama.cpp: an empty text with add_special gives just BOS.
    assert_eq!(encode(&spm, "", true), vec![1]);

    let l3 = build_tokenizer(&load_fixture("llama-bpe")).unwrap();
    assert_eq!(encode(&l3, "Hello world", true), vec![128000, 9906, 1917]);

    let gpt2 = build_tokenizer(&load_fixture("gpt-2")).unwrap();
    assert_eq!(encode(&gpt2, "Hello world", true), vec![15496, 995]);

    // add_eos (no shipped vocabulary sets it): appended after the text.
    let mut v = load_fixture("llama-spm");
    v.add_eos = true;
    let t = build_tokenizer(&v).unwrap();
    assert_eq!(encode(&t, "Hello world", true), vec![1, 15043, 3186, 2]);
    v.add_bos = false;
    let t = build_tokenizer(&v).unwrap();
    assert_eq!(encode(&t, "Hello world", true), vec![15043, 3186, 2]);
}

#[test]
fn special_tokens_are_split_out_of_text() {
    let l3 = build_tokenizer(&load_fixture("llama-bpe")).unwrap();
    assert_eq!(
        encode(&l3, "<|begin_of_text|>Hello world", false),
        vec![128000, 9906, 1917]
    );
    assert_eq!(
        encode(&l3, "Hello world<|end_of_text|>", true),
        vec![128000, 9906, 1917, 128001]
    );
    // Decoding skips special tokens only when asked.
    let ids = [128000, 9906, 1917, 128001];
    assert_eq!(l3.decode(&ids, true).unwrap(), "Hello world");
    assert_eq!(
        l3.decode(&ids, false).unwrap(),
        "<|begin_of_text|>Hello world<|end_of_text|>"
    );

    // SentencePiece: llama.cpp prefixes a space to the text after a special token.
    let spm = build_tokenizer(&load_fixture("llama-spm")).unwrap();
    assert_eq!(encode(&spm, "Hello world</s>", false), vec![15043, 3186, 2]);
    assert_eq!(encode(&spm, "<s>Hello world", false), vec![1, 15043, 3186]);
    assert_eq!(
        encode(&spm, "<s> Hello world", false),
        vec![1, 29871, 15043, 3186]
    );
    assert_eq!(
        spm.decode(&[1, 15043, 3186, 2], true).unwrap(),
        "Hello world"
    );
}

#[test]
fn spm_decodes_byte_fallback_and_spaces() {
    let spm = build_tokenizer(&load_fixture("llama-spm")).unwrap();
    let cases = read_cases(&vocab_dir(), "llama-spm");
    let mut checked = 0;
    for (text, ids) in &cases {
        // llama.cpp's SPM detokenizer drops the one space add_space_prefix put in front.
        let back = spm.decode(ids, false).unwrap();
        assert_eq!(&back, text, "decode({ids:?})");
        checked += 1;
    }
    assert!(checked >= 40);
}

/// Every supported pre-tokenizer's regexes compile (fancy-regex) and split text losslessly.
#[test]
fn every_supported_pre_type_builds_and_round_trips() {
    let text = "Hello, World! It's 2024-12-31: 1234567 naïve café 東京タワー 서울 \
                ΑΒΓ Ωmega \u{212A}elvin 🦀\t\ttabs\r\n\n  spaces   end ";
    for pre in supported_pre_types() {
        let mut v = load_fixture("gpt-2");
        v.pre = pre.to_string();
        let tok = build_tokenizer(&v).unwrap_or_else(|e| panic!("{pre}: {e}"));
        let ids = encode(&tok, text, false);
        assert!(!ids.is_empty(), "{pre}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}");
    }
}

#[test]
fn unsupported_vocabularies_are_errors() {
    let mut v = load_fixture("gpt-2");
    v.model = "bert".into();
    let e = build_tokenizer(&v).unwrap_err().to_string();
    assert!(e.contains("bert") && e.contains("gpt-2.json"), "{e}");

    let mut v = load_fixture("gpt-2");
    v.pre = "no-such-pre".into();
    let e = build_tokenizer(&v).unwrap_err().to_string();
    assert!(e.contains("no-such-pre"), "{e}");

    let mut v = load_fixture("gpt-2");
    v.bos = Some(60000);
    assert!(build_tokenizer(&v).is_err());

    // Metadata: an unknown model or pre-type, or a missing vocabulary, names the problem.
    let meta: HashMap<String, GgufValue> = [
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", GgufValue::String("martian".into())),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(GgufArray::String(vec!["a".into()])),
        ),
        (
            "tokenizer.ggml.merges",
            GgufValue::Array(GgufArray::String(vec![])),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let e = GgufVocab::from_metadata(Path::new("x.gguf"), |k| meta.get(k))
        .unwrap_err()
        .to_string();
    assert!(e.contains("martian") && e.contains("x.gguf"), "{e}");
    let e = GgufVocab::from_metadata(Path::new("x.gguf"), |_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
}

/// SmolLM2's tokenizer from its GGUF (pre-type "smollm") against transformers' ids with
/// SmolLM2's real pre-tokenizer (tests/fixtures/smollm2), from Kestrel's cache (see
/// `kestrel_tests::real_model`).
#[test]
fn smollm2_gguf_tokenizer_matches_reference() {
    let Some(path) = kestrel_tests::real_model::smollm2("SmolLM2's GGUF tokenizer vs transformers")
    else {
        return;
    };
    let file = GgufFile::open(&path).expect("open SmolLM2 GGUF");
    let v = GgufVocab::from_gguf(&file).expect("vocab");
    assert_eq!(
        (v.pre.as_str(), v.add_bos, v.bos, v.eos),
        ("smollm", false, Some(1), Some(2))
    );
    let tok = build_tokenizer(&v).expect("build_tokenizer");
    let cases_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2/tokenizer_cases.json");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cases_path).unwrap()).unwrap();
    let mut n = 0;
    for case in j["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids_smollm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(encode(&tok, text, false), want, "{text:?}");
        assert_eq!(
            encode(&tok, text, true),
            want,
            "{text:?} (no BOS for SmolLM2)"
        );
        assert_eq!(tok.decode(&want, false).unwrap(), text);
        n += 1;
    }
    // Chat prompts rendered by the GGUF's template, special tokens included.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2");
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
    };
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompt = read("prompt.json");
    let mut rendered = vec![(prompt["rendered"].clone(), prompt["tokens"].clone())];
    for c in read("chat_template_cases.json")["cases"]
        .as_array()
        .unwrap()
    {
        rendered.push((c["rendered"].clone(), c["tokens"].clone()));
    }
    for (text, tokens) in &rendered {
        let text = text.as_str().unwrap();
        assert_eq!(encode(&tok, text, true), ids(tokens), "{text:?}");
        n += 1;
    }
    println!("SmolLM2: {n} cases match");
}

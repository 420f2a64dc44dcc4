//! GGUF files of the recurrent families (tests/fixtures/gguf_recurrent, written by llama.cpp's
//! own converter from the fixture folders' weights: generate_gguf_recurrent.py) against the
//! SAME folders' reference logits, in prefill and decode, on every test backend, with the
//! folder tests' tolerance (models.rs: relative error <= 1e-4, identical argmax).
//!
//! rwkv7.gguf holds the `rwkv7` fixture's weights; llama.cpp runs every RWKV-7 file with
//! BlinkDL's fixed ln_x eps, so its reference is `rwkv7_blink` (the same weights through the
//! `rwkv` package, which uses that eps), not fla's logits. rwkv6.gguf holds the `rwkv6_finch`
//! fixture's weights (fla's RWKV-6 with key width = hidden, as llama.cpp's rwkv6 has it, and
//! every eps at llama.cpp's fixed ln_x eps), written through Hugging Face's Rwkv6 layout.

use std::path::PathBuf;

use kestrel_tests::fixture::{self, assert_logits, read_npy, tokens};
use kestrel_tests::gpus;

const TOL: f64 = 1e-4;

/// (GGUF file, fixture folder holding its reference logits and tokens)
const CASES: &[(&str, &str)] = &[
    ("mamba", "mamba"),
    ("mamba2", "mamba2"),
    ("rwkv7", "rwkv7_blink"),
    ("rwkv6", "rwkv6_finch"),
    ("jamba", "jamba"),
];

fn fixtures() -> PathBuf {
    fixture::dir("")
}

fn check(what: &str, out: &[f32], reference: &[f32], vocab: usize) {
    assert_logits(what, out, reference, vocab, TOL);
}

#[test]
fn recurrent_ggufs_match_their_folders_reference() {
    for &(gguf, folder) in CASES {
        let path = fixtures()
            .join("gguf_recurrent")
            .join(format!("{gguf}.gguf"));
        let dir = fixtures().join(folder);
        let (shape, want_prefill) = read_npy(&dir.join("logits_prefill.npy"));
        let vocab = shape[1];
        let (_, want_decode) = read_npy(&dir.join("logits_decode.npy"));
        let toks = tokens(folder);
        for gpu in gpus() {
            let b = gpu.backend_name();
            let model = kestrel_models::load(&gpu, &path).expect("load GGUF");
            assert!(model.tokenizer.is_some(), "{gguf}: the GGUF's tokenizer");
            let mut s = model.session(&gpu, toks.len()).expect("session");
            let prefill = pollster::block_on(s.logits(&toks)).expect("prefill");
            check(
                &format!("{gguf}.gguf prefill on {b}"),
                &prefill,
                &want_prefill,
                vocab,
            );
            s.reset();
            let mut decode = Vec::new();
            for &t in &toks {
                decode.extend(pollster::block_on(s.logits(&[t])).expect("decode"));
            }
            check(
                &format!("{gguf}.gguf decode on {b}"),
                &decode,
                &want_decode,
                vocab,
            );
        }
    }
}

/// rwkv7.gguf's world tokenizer (a trie, greedy longest match) against BlinkDL's
/// TRIE_TOKENIZER over the same vocabulary (rwkv7_tokenizer_cases.json, written by the
/// generator): the same ids for every text, and the ids decode back to the text.
#[test]
fn rwkv_world_tokenizer_matches_the_trie_tokenizer() {
    let dir = fixtures().join("gguf_recurrent");
    let file =
        kestrel_models::formats::gguf::GgufFile::open(&dir.join("rwkv7.gguf")).expect("open GGUF");
    let parts = kestrel_models::gguf_parts(&file).expect("GGUF parts");
    let tok = parts.tokenizer.expect("the GGUF's tokenizer");
    let text = std::fs::read_to_string(dir.join("rwkv7_tokenizer_cases.json")).expect("cases");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(tok.encode(text).expect("encode"), want, "{text:?}");
        assert_eq!(tok.decode(&want).expect("decode"), text, "{want:?}");
    }
    // The converter's `<s>` (id 0, a control token) is skipped in decoding, like
    // llama.cpp's detokenizer without special tokens.
    assert!(tok.is_special(0));
    assert_eq!(tok.decode(&[0, 259]).expect("decode"), " the");
}

/// A Jamba file whose attention layers (1 and 2 of 4) follow no period is refused before any
/// weight is read, naming the metadata key (jamba_irregular.gguf: metadata only).
#[test]
fn an_irregular_jamba_layout_is_refused() {
    let path = fixtures().join("gguf_recurrent/jamba_irregular.gguf");
    let file = kestrel_models::formats::gguf::GgufFile::open(&path).expect("open GGUF");
    match kestrel_models::gguf_parts(&file) {
        Err(kestrel_models::ModelError::BadConfigValue { key, message, .. }) => {
            assert_eq!(key, "jamba.attention.head_count_kv");
            assert!(message.contains("layer 1 "), "{message}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("an irregular Jamba layout was accepted"),
    }
}

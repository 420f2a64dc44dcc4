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

use std::path::{Path, PathBuf};

use kestrel_models::ModelError;
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
        let (_, want_decode) = read_npy(&dir.join("logits_decode.npy"));
        check_gguf(
            gguf,
            &path,
            &dir.join("logits_prefill.npy"),
            &want_decode,
            &tokens(folder),
        );
    }
}

/// The GGUF at `path` on every test backend: prefill against the logits in `prefill_npy`,
/// token-by-token decode against `want_decode`.
fn check_gguf(what: &str, path: &Path, prefill_npy: &Path, want_decode: &[f32], toks: &[u32]) {
    let (shape, want_prefill) = read_npy(prefill_npy);
    let vocab = shape[1];
    for gpu in gpus() {
        let b = gpu.backend_name();
        let model = kestrel_models::load(&gpu, path).expect("load GGUF");
        assert!(model.tokenizer.is_some(), "{what}: the GGUF's tokenizer");
        let mut s = model.session(&gpu, toks.len()).expect("session");
        let prefill = pollster::block_on(s.logits(toks)).expect("prefill");
        check(
            &format!("{what}.gguf prefill on {b}"),
            &prefill,
            &want_prefill,
            vocab,
        );
        s.reset();
        let mut decode = Vec::new();
        for &t in toks {
            decode.extend(pollster::block_on(s.logits(&[t])).expect("decode"));
        }
        check(
            &format!("{what}.gguf decode on {b}"),
            &decode,
            want_decode,
            vocab,
        );
    }
}

/// A copy of rwkv6.gguf, edited by `edit`, in the temp folder.
fn edited_rwkv6(tag: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(fixtures().join("gguf_recurrent/rwkv6.gguf")).expect("read");
    edit(&mut bytes);
    let path =
        std::env::temp_dir().join(format!("kestrel-rwkv6-{tag}-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).expect("write");
    path
}

/// Where `needle` ends in `bytes` (it must occur once).
fn find_once(bytes: &[u8], needle: &[u8]) -> usize {
    let mut at = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i + needle.len());
    let first = at.next().expect("found");
    assert!(at.next().is_none(), "found once");
    first
}

/// Set the u32 metadata value `key` (a GGUF string key, then its type 4 = UINT32, then the
/// value).
fn set_u32(bytes: &mut [u8], key: &str, from: u32, to: u32) {
    let at = find_once(bytes, key.as_bytes());
    assert_eq!(bytes[at..at + 4], 4u32.to_le_bytes(), "{key} is a UINT32");
    assert_eq!(bytes[at + 4..at + 8], from.to_le_bytes(), "{key}");
    bytes[at + 4..at + 8].copy_from_slice(&to.to_le_bytes());
}

/// An rwkv6 file's `rescale_every_n_layers` (here 1 over the fixture's weights as they are):
/// the hidden states are halved after every layer, as llama.cpp does. The reference is fla's
/// prefill with the same halving (forward hooks; llama.cpp's own logits of this file agree
/// with it at 1.6e-6, see tests/fixtures/README.md); decode is checked against it too.
#[test]
fn an_rwkv6_gguf_rescales_as_llama_cpp() {
    let path = edited_rwkv6("rescale", |b| {
        set_u32(b, "rwkv6.rescale_every_n_layers", 0, 1)
    });
    let dir = fixtures().join("rwkv6_finch");
    let halved = dir.join("logits_prefill_halved.npy");
    let (_, want_decode) = read_npy(&halved);
    check_gguf(
        "rwkv6 (rescale_every 1)",
        &path,
        &halved,
        &want_decode,
        &tokens("rwkv6_finch"),
    );
    std::fs::remove_file(&path).ok();
}

/// An rwkv6 file that lacks a tensor, or whose tensor does not have the shape its metadata
/// gives, is refused with a typed error naming the tensor.
#[test]
fn a_wrong_rwkv6_gguf_is_refused_by_name() {
    let gpu = gpus().remove(0);
    // One tensor renamed, so the file lacks it.
    let missing = edited_rwkv6("missing", |b| {
        let end = find_once(b, b"blk.1.time_mix_w2.weight");
        b[end - 1] = b'x';
    });
    match kestrel_models::load(&gpu, &missing) {
        Err(ModelError::MissingTensor { name, .. }) => assert_eq!(
            name,
            "blk.1.time_mix_w2.weight (model.layers.1.attn.x_proj.2.weight)"
        ),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a file without blk.1.time_mix_w2.weight was loaded"),
    }
    // A token-shift LoRA rank of 16 where the tensors have 32.
    let shape = edited_rwkv6("shape", |b| set_u32(b, "rwkv6.time_mix_extra_dim", 32, 16));
    match kestrel_models::load(&gpu, &shape) {
        Err(ModelError::TensorShape {
            name,
            expected,
            got,
            ..
        }) => {
            // Shape errors name the tensor the family reads (as for every GGUF family).
            assert_eq!(name, "model.layers.0.attn.x_proj.2.weight");
            assert_eq!((expected, got), (vec![64, 80], vec![64, 160]));
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a file with the wrong LoRA rank was loaded"),
    }
    std::fs::remove_file(&missing).ok();
    std::fs::remove_file(&shape).ok();
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

//! Config keys that change the network, run against their references (relative error
//! <= 1e-4 and the same argmax per row, as the other fixtures):
//! - `"is_causal": false` on a Llama config (tests/fixtures/llama_bidirectional, made by
//!   generate_bidirectional.py with transformers over llama_gqa's weights) runs the decoder
//!   bidirectionally.
//! - fla GLA with `"fuse_norm": false` names its output norm `g_norm` (not
//!   `g_norm_swish_gate`). fla computes the same function either way (RMSNorm, then
//!   `o * swish(g)`; the fused kernel does both at once), so the gla fixture, with its norm's
//!   tensors renamed in the safetensors header, must give the gla fixture's logits.

use std::path::Path;

use kestrel_tests::{fixture, gpus, rel_err};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = read(path);
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytemuck::pod_collect_to_vec(&bytes[10 + hlen..])
}

fn tokens(dir: &Path) -> Vec<u32> {
    let v: Value = serde_json::from_slice(&read(&dir.join("tokens.json"))).expect("json");
    v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

/// The safetensors files of `dir` as (name, bytes).
fn safetensors(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(&p),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no safetensors", dir.display());
    files
}

/// A safetensors file with each tensor name passed through `rename` (offsets are relative to
/// the data, so only the header changes).
fn rename_tensors(bytes: &[u8], rename: impl Fn(&str) -> String) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("header size")) as usize;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let renamed: serde_json::Map<String, Value> =
        header.into_iter().map(|(k, v)| (rename(&k), v)).collect();
    let mut text = serde_json::to_vec(&renamed).expect("json");
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// The model of `files` (in folder `dir`) on every test backend against `want` [T, vocab].
fn check_logits(dir: &Path, files: &[(String, Vec<u8>)], tokens: &[u32], want: &[f32]) {
    for gpu in gpus() {
        let model = kestrel_models::model_from_files(&gpu, dir, files.to_vec()).expect("load");
        let vocab = model.config().vocab;
        let mut s = model.session(&gpu, tokens.len()).expect("session");
        let got = pollster::block_on(s.logits(tokens)).expect("forward");
        assert_eq!(got.len(), want.len(), "logits size");
        let e = rel_err(&got, want);
        assert!(e <= TOL, "{}: relative error {e:e}", gpu.backend_name());
        for (t, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
            assert_eq!(
                argmax(g),
                argmax(w),
                "{}: argmax of row {t}",
                gpu.backend_name()
            );
        }
        println!(
            "{}: {} relative error {e:.2e}",
            gpu.backend_name(),
            dir.display()
        );
    }
}

#[test]
fn is_causal_false_runs_the_llama_decoder_bidirectionally() {
    let dir = fixture("llama_bidirectional");
    let mut files = safetensors(&fixture("llama_gqa"));
    files.push(("config.json".into(), read(&dir.join("config.json"))));
    let tokens = tokens(&dir);
    let want = read_npy(&dir.join("logits.npy"));
    // The fixture's reference is not the causal one: the test can fail.
    let causal = read_npy(&fixture("llama_gqa").join("logits_prefill.npy"));
    assert_eq!(tokens, self::tokens(&fixture("llama_gqa")));
    assert!(rel_err(&causal, &want) > 0.1, "bidirectional == causal");
    check_logits(&dir, &files, &tokens, &want);
}

#[test]
fn gla_output_norm_follows_fuse_norm() {
    let dir = fixture("gla");
    let mut config: Value = serde_json::from_slice(&read(&dir.join("config.json"))).expect("json");
    assert_eq!(config["fuse_norm"], Value::Bool(true));
    assert_eq!(config["use_output_gate"], Value::Bool(true));
    config["fuse_norm"] = Value::Bool(false);
    let config = (
        "config.json".to_string(),
        serde_json::to_vec(&config).expect("json"),
    );
    let fused = safetensors(&dir);
    let unfused: Vec<(String, Vec<u8>)> = fused
        .iter()
        .map(|(name, bytes)| {
            let bytes = rename_tensors(bytes, |t| t.replace(".g_norm_swish_gate.", ".g_norm."));
            (name.clone(), bytes)
        })
        .collect();
    let tokens = tokens(&dir);
    let want = read_npy(&dir.join("logits_prefill.npy"));

    // fuse_norm false with fla's unfused names: loads, and computes what fla computes.
    let files: Vec<_> = unfused.into_iter().chain([config.clone()]).collect();
    check_logits(&dir, &files, &tokens, &want);

    // fuse_norm false over the fused checkpoint's names: the unfused name is looked for.
    let gpu = gpus().into_iter().next().expect("a test GPU");
    let files: Vec<_> = fused.into_iter().chain([config]).collect();
    let err = match kestrel_models::model_from_files(&gpu, &dir, files) {
        Ok(_) => panic!("loaded g_norm_swish_gate as g_norm"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("attn.g_norm.weight"), "{err}");
}

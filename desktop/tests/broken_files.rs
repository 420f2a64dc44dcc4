//! `kestrel` on crafted broken model files: one line on stderr naming the file and the
//! cause, exit status 1, never a panic (exit 101) or an abort.

#[path = "../../models/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use common::{llama, temp_dir};

/// Run `kestrel logits` on `model`; expect exit 1 and one error line containing `expect`.
fn expect_error(model: &Path, expect: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .env("KESTREL_TUNE", "off")
        .args(["logits", "--model"])
        .arg(model)
        .args(["--tokens", "1,2", "--out"])
        .arg(model.with_extension("npy"))
        .output()
        .expect("run kestrel");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for e in expect {
        assert!(
            lines[0].contains(e),
            "{:?} does not mention {e:?}",
            lines[0]
        );
    }
}

/// A tiny llama GGUF (hidden 8, ffn 16, vocab 4) with every tensor; `q_dims` for attn_q.
fn llama_gguf(block_count: u64, q_dims: &[u64]) -> Vec<u8> {
    llama(block_count)
        .tensor("token_embd.weight", &[8, 4])
        .tensor("output_norm.weight", &[8])
        .tensor("blk.0.attn_norm.weight", &[8])
        .tensor("blk.0.attn_q.weight", q_dims)
        .tensor("blk.0.attn_k.weight", &[8, 8])
        .tensor("blk.0.attn_v.weight", &[8, 8])
        .tensor("blk.0.attn_output.weight", &[8, 8])
        .tensor("blk.0.ffn_norm.weight", &[8])
        .tensor("blk.0.ffn_gate.weight", &[8, 16])
        .tensor("blk.0.ffn_up.weight", &[8, 16])
        .tensor("blk.0.ffn_down.weight", &[16, 8])
        .bytes()
}

#[test]
fn gguf_with_a_zero_dimension_or_absurd_layers_is_one_error_line() {
    let dir = temp_dir("broken_gguf");
    let zero = dir.join("zero_q.gguf");
    std::fs::write(&zero, llama_gguf(1, &[8, 0])).unwrap();
    expect_error(
        &zero,
        &["zero_q.gguf", "blk.0.attn_q.weight", "zero dimension"],
    );

    let layers = dir.join("layers.gguf");
    std::fs::write(&layers, llama_gguf(1 << 40, &[8, 8])).unwrap();
    expect_error(&layers, &["layers.gguf", "num_hidden_layers"]);

    let truncated = dir.join("truncated.gguf");
    let bytes = llama_gguf(1, &[8, 8]);
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    expect_error(&truncated, &["truncated.gguf", "truncated"]);
}

#[test]
fn index_naming_a_file_outside_the_folder_is_one_error_line() {
    let dir = temp_dir("broken_index");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama_gqa");
    std::fs::copy(fixture.join("config.json"), dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "../../../etc/passwd"}}"#,
    )
    .unwrap();
    expect_error(
        &dir,
        &[
            "model.safetensors.index.json",
            "'../../../etc/passwd'",
            "outside the model folder",
        ],
    );
}

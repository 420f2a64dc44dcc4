//! Reading the committed fixtures: their folders, `.npy` logits (float32 or float16),
//! `tokens.json` and JSON id lists, and the logits check every model test applies
//! (relative error within a tolerance and the same argmax in every row).

use std::path::{Path, PathBuf};

use kestrel_models::chat_template::Message;
use serde_json::Value;

use crate::rel_err;

/// `tests/fixtures/<name>`.
pub fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A float32 or float16 `.npy` file: (shape, data as f32).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).expect("npy header");
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape")
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("dim"))
        .collect();
    let body = &bytes[10 + hlen..];
    let data = if header.contains("'<f4'") {
        bytemuck::pod_collect_to_vec(body)
    } else if header.contains("'<f2'") {
        body.chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    } else {
        panic!(
            "{} is neither float32 nor float16: {header}",
            path.display()
        )
    };
    (shape, data)
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

/// The `tokens` of a fixture's `tokens.json`.
pub fn tokens(name: &str) -> Vec<u32> {
    let path = dir(name).join("tokens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let v: Value = serde_json::from_str(&text).expect("json");
    ids(&v["tokens"])
}

/// Chat messages written as `[{"role": .., "content": ..}]`.
pub fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            Message::new(
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect()
}

/// The index of each row's largest value (the first on ties).
pub fn argmax_rows(data: &[f32], vocab: usize) -> Vec<usize> {
    data.chunks(vocab)
        .map(|r| (0..vocab).fold(0, |b, i| if r[i] > r[b] { i } else { b }))
        .collect()
}

/// Panic unless `out` is within relative error `tol` of `reference` and every row has the
/// same argmax.
pub fn assert_logits(what: &str, out: &[f32], reference: &[f32], vocab: usize, tol: f64) {
    let e = rel_err(out, reference);
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
    assert_eq!(
        argmax_rows(out, vocab),
        argmax_rows(reference, vocab),
        "{what}: argmax differs"
    );
}

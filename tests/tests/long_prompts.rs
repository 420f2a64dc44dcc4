//! Prompts whose activations or logits exceed one storage binding run in several passes
//! (`Session::pass`): each pass appends to the KV cache or recurrent state, so a prefill
//! starts at a nonzero position. For every fixture family and attention option, the logits
//! with the binding limit lowered until the [T, vocab] logits need at least three passes
//! must equal the one-pass run.
//!
//! Tolerance: relative error <= 1e-5. Both runs compute in f32 through the same kernels;
//! only the tiling of the sequence differs (attention over cached keys instead of in-pass
//! keys, the chunked scan's chunk boundaries), which changes summation order and nothing
//! more — the gap seen is ~1e-7.

use std::sync::Arc;

use kestrel_models::{AttentionOptions, ModelError};
use kestrel_runtime::block_mask::SparseConfig;
use kestrel_runtime::session::Sampling;
use kestrel_runtime::{Error, Gpu};
use kestrel_tests::{fixture, gpus, rel_err};

const TOL: f64 = 1e-5;

/// Every family: full, sliding-window and GQA attention, recurrent scans (Mamba, Mamba-2,
/// GLA, RWKV-4/6/7), experts and the hybrids.
const MODELS: &[&str] = &[
    "llama_gqa",
    "qwen2",
    "mistral_window",
    "qwen2_window",
    "mamba",
    "mamba2",
    "gla",
    "rwkv6",
    "rwkv7",
    "rwkv4",
    "mixtral",
    "qwen2_moe",
    "jamba",
    "zamba2",
];

fn tokens(name: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(fixture(name).join("tokens.json")).expect("tokens.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

/// The logits of `toks` in one pass, then with the binding limit below their size (the
/// weights stay as loaded; the session's activations, logits and scratch see the lower limit).
/// Returns (one pass, several passes).
fn one_and_several(gpu: &Arc<Gpu>, name: &str, options: AttentionOptions) -> (Vec<f32>, Vec<f32>) {
    let mut model = kestrel_models::load(gpu, &fixture(name)).expect("load");
    if options != AttentionOptions::default() {
        model.set_attention(options).expect("attention options");
    }
    let toks = tokens(name);
    let mut whole = model.session(gpu, toks.len()).expect("session");
    let one = pollster::block_on(whole.logits(&toks)).expect("one pass");
    let logits_bytes = (one.len() * 4) as u64;
    // A third of the logits, or the largest per-sequence state if that is more (zamba2's
    // KV cache): the state must fit one binding, the prompt need not.
    let mut limit = logits_bytes / 3;
    let mut split = loop {
        match model.session(&gpu.with_max_binding(limit), toks.len()) {
            Ok(s) => break s,
            Err(ModelError::Runtime(Error::LimitExceeded { needed, .. })) if needed > limit => {
                limit = needed
            }
            Err(e) => panic!("{name}: session: {e}"),
        }
    };
    // The [T, vocab] output alone is over the limit, so one pass cannot hold it.
    assert!(
        logits_bytes > limit,
        "{name}: a state is as large as the logits"
    );
    let several = pollster::block_on(split.logits(&toks)).expect("several passes");
    // Generation's prefill (only the last row sampled) goes through the same passes.
    split.reset();
    let last = &one[one.len() - model.config().vocab..];
    let argmax = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
    let next = pollster::block_on(split.next_token(&toks, &Sampling::default())).expect("sample");
    assert_eq!(
        next as usize, argmax,
        "{name}: greedy token after the prompt"
    );
    (one, several)
}

fn check(what: &str, one: &[f32], several: &[f32]) {
    assert_eq!(one.len(), several.len(), "{what}: logits length");
    let e = rel_err(several, one);
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e <= TOL, "{what}: relative error {e:e} > {TOL:e}");
}

#[test]
fn prompts_split_into_passes_give_the_one_pass_logits() {
    for gpu in gpus() {
        let b = gpu.backend_name();
        for name in MODELS {
            let (one, several) = one_and_several(&gpu, name, AttentionOptions::default());
            check(&format!("{name} on {b}"), &one, &several);
        }
    }
}

#[test]
fn attention_options_take_prompts_in_passes() {
    // StreamingLLM sinks with a ring that wraps inside the prompt, and block-sparse masks
    // (local band plus a global block) on every layer.
    let sinks = AttentionOptions {
        streaming: Some((4, 8)),
        sparse: None,
    };
    let sparse = AttentionOptions {
        streaming: None,
        sparse: Some(SparseConfig::parse("local=2,global=1").expect("pattern")),
    };
    for gpu in gpus() {
        let b = gpu.backend_name();
        for (what, options) in [
            ("sinks 4 window 8", sinks.clone()),
            ("block-sparse", sparse.clone()),
        ] {
            let (one, several) = one_and_several(&gpu, "llama_gqa", options);
            check(&format!("llama_gqa {what} on {b}"), &one, &several);
        }
    }
}

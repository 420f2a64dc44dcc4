//! Fixture models (tests/fixtures, made by tests/fixtures/generate.py with Hugging Face
//! transformers) against Kestrel, in prefill and decode modes, on every test backend.
//!
//! Tolerance: relative error ||out - ref|| / ||ref|| <= 1e-4 (the bound). Both sides
//! compute in f32; the fixtures' own f32-vs-f64 gap is about 1e-5 absolute on logits of
//! magnitude ~1, so 1e-4 relative leaves room for summation order and nothing more.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kestrel_models::AttentionOptions;
use kestrel_runtime::session::Sampling;
use kestrel_runtime::Gpu;
use kestrel_tests::fixture::{argmax_rows, assert_logits, dir as fixture, read_npy, tokens};
use kestrel_tests::{gpus, rel_err, step};

/// mistral_window (sliding window 8 on every layer) and qwen2_window (layer 0 full, layers 1-2
/// sliding) run 40 tokens, so their ring caches wrap and prefill goes in chunks.
const MODELS: &[&str] = &[
    "llama_gqa",
    "llama_tied",
    "qwen2",
    "mistral_window",
    "qwen2_window",
    "mamba",
    "mamba2",
    "gla",
    "rwkv6",
    // RWKV-6 with key width = hidden, as BlinkDL's Finch and llama.cpp's rwkv6 have it.
    "rwkv6_finch",
    "rwkv7",
    // BlinkDL's RWKV-7 naming (no config.json; ln_x eps 64e-5), against the `rwkv` package.
    "rwkv7_blink",
    "rwkv4",
    "rwkv4_rescale",
    // Sparse experts (generate_moe.py): Mixtral, a Q8_0 GGUF Mixtral, Qwen2-MoE with a shared
    // expert and a dense layer, and Jamba (Mamba + attention + experts).
    "mixtral",
    "mixtral_q8",
    "qwen2_moe",
    "jamba",
    // Mamba-2 layers with two shared attention blocks and per-use adapters.
    "zamba2",
];
/// Families configured on the shared decoder (generate_decoders.py), each from its folder and,
/// where llama.cpp has the architecture in that form, from `model-f32.gguf`: the same f32
/// weights under llama.cpp's names and metadata (Gemma's norms stored as 1 + w).
const DECODERS: &[(&str, bool)] = &[
    ("qwen3", true),
    // Qwen3 with sliding layers (llama.cpp's qwen3 has no windows: no GGUF).
    ("qwen3_window", false),
    ("qwen3_moe", true),
    ("gemma3", true),
    ("gemma2", true),
    ("smollm3", true),
    ("olmo2", true),
    ("phi3", true),
];
const TOL: f64 = 1e-4;

fn check(what: &str, out: &[f32], reference: &[f32], vocab: usize) {
    assert_logits(what, out, reference, vocab, TOL);
}

/// The fixture's model: its directory, or the GGUF file in it.
fn model_path(name: &str) -> PathBuf {
    let gguf = fixture(name).join("model.gguf");
    match gguf.exists() {
        true => gguf,
        false => fixture(name),
    }
}

fn run_modes(gpu: &Arc<Gpu>, name: &str, path: &Path) -> (Vec<f32>, Vec<f32>) {
    run_tokens(gpu, path, &tokens(name))
}

/// Prefill and decode logits of `toks` in a session of exactly their length.
fn run_tokens(gpu: &Arc<Gpu>, path: &Path, toks: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let model =
        kestrel_models::load(gpu, path).unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
    logits_in_both_modes(gpu, &model, toks)
}

/// The logits of `toks` in one prefill, then with the same tokens decoded one at a time.
fn logits_in_both_modes(
    gpu: &Arc<Gpu>,
    model: &kestrel_models::Model,
    toks: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let mut s = model.session(gpu, toks.len()).expect("session");
    let prefill = pollster::block_on(s.logits(toks)).expect("prefill");
    s.reset();
    let mut decode = Vec::new();
    for &t in toks {
        decode.extend(pollster::block_on(s.logits(&[t])).expect("decode"));
    }
    (prefill, decode)
}

#[test]
fn fixtures_match_transformers_in_prefill_and_decode() {
    for name in MODELS {
        check_fixture(name, name, &model_path(name));
    }
}

#[test]
fn decoder_families_match_transformers_from_folders_and_gguf() {
    for &(name, gguf) in DECODERS {
        check_fixture(name, name, &fixture(name));
        if gguf {
            let path = fixture(name).join("model-f32.gguf");
            check_fixture(&format!("{name} (GGUF)"), name, &path);
        }
    }
}

/// Phi-3 with LongRoPE (pretraining context 16), from its folder and its GGUF: a session of
/// 29 tokens uses the long factors in prefill and decode alike (against transformers'
/// prefill, which uses them past 16 tokens); a session of 16 the short ones (against
/// transformers' token-by-token decode, whose first 16 rows use them; its later rows
/// switch factors mid-sequence and are no reference).
#[test]
fn phi3_longrope_factors_follow_the_session_context() {
    let name = "phi3_longrope";
    let (shape, want_long) = read_npy(&fixture(name).join("logits_prefill.npy"));
    let (_, want_decode) = read_npy(&fixture(name).join("logits_decode.npy"));
    let vocab = shape[1];
    let toks = tokens(name);
    let short = 16;
    assert!(toks.len() > short);
    let want_short = &want_decode[..short * vocab];
    for path in [fixture(name), fixture(name).join("model-f32.gguf")] {
        let label = match path.extension() {
            Some(_) => format!("{name} (GGUF)"),
            None => name.to_string(),
        };
        for gpu in gpus() {
            let b = gpu.backend_name();
            let (prefill, decode) = run_tokens(&gpu, &path, &toks);
            check(
                &format!("{label} long prefill on {b}"),
                &prefill,
                &want_long,
                vocab,
            );
            check(
                &format!("{label} long decode on {b}"),
                &decode,
                &prefill,
                vocab,
            );
            let (prefill, decode) = run_tokens(&gpu, &path, &toks[..short]);
            check(
                &format!("{label} short prefill on {b}"),
                &prefill,
                want_short,
                vocab,
            );
            check(
                &format!("{label} short decode on {b}"),
                &decode,
                want_short,
                vocab,
            );
        }
    }
    // Attention sinks rotate keys inside attention, which has no attention factor: refused.
    let gpu = gpus().into_iter().next().expect("a GPU");
    let mut model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
    let sinks = AttentionOptions {
        streaming: Some((4, 8)),
        sparse: None,
    };
    let e = model.set_attention(sinks).expect_err("sinks with LongRoPE");
    assert!(e.to_string().contains("LongRoPE"), "{e}");
}

/// The model at `path` against fixture `name`'s logits, prefill and decode, on every test
/// backend; the backends against each other.
fn check_fixture(label: &str, name: &str, path: &Path) {
    let (shape, want_prefill) = read_npy(&fixture(name).join("logits_prefill.npy"));
    let (_, want_decode) = read_npy(&fixture(name).join("logits_decode.npy"));
    let vocab = shape[1];
    let mut per_backend = Vec::new();
    for gpu in gpus() {
        let b = gpu.backend_name();
        let (prefill, decode) = run_modes(&gpu, name, path);
        check(
            &format!("{label} prefill on {b}"),
            &prefill,
            &want_prefill,
            vocab,
        );
        check(
            &format!("{label} decode on {b}"),
            &decode,
            &want_decode,
            vocab,
        );
        per_backend.push((b, prefill));
    }
    for w in per_backend.windows(2) {
        let e = rel_err(&w[0].1, &w[1].1);
        assert!(
            e <= 1e-5,
            "{label}: {} and {} disagree (relative {e:e})",
            w[0].0,
            w[1].0
        );
    }
}

#[test]
fn split_weights_give_the_same_logits() {
    // A 40000-byte binding limit splits the embedding table, the LM head and the MLP weights
    // (each 40960 bytes or more) into row chunks while every activation still fits.
    let name = "llama_gqa";
    let (shape, want) = read_npy(&fixture(name).join("logits_prefill.npy"));
    for gpu in gpus() {
        let small = gpu.with_max_binding(40000);
        let model = kestrel_models::load(&small, &fixture(name)).expect("load");
        let toks = tokens(name);
        let mut s = model.session(&small, toks.len()).expect("session");
        let got = pollster::block_on(s.logits(&toks)).expect("prefill");
        check(
            &format!("{name} split on {}", gpu.backend_name()),
            &got,
            &want,
            shape[1],
        );
    }
}

#[test]
fn gpu_greedy_sampling_follows_the_reference_argmax() {
    // Greedy decode on the GPU reads back one id per step; each must be the argmax of the
    // reference logits for the same prefix (teacher-forced with the fixture's tokens).
    let name = "qwen2";
    let (shape, want) = read_npy(&fixture(name).join("logits_decode.npy"));
    let expected = argmax_rows(&want, shape[1]);
    for gpu in gpus() {
        let model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
        let toks = tokens(name);
        let mut s = model.session(&gpu, toks.len()).expect("session");
        for (i, &t) in toks.iter().enumerate() {
            let got = pollster::block_on(s.next_token(&[t], &Sampling::default())).expect("step");
            assert_eq!(
                got as usize,
                expected[i],
                "position {i} on {}",
                gpu.backend_name()
            );
        }
    }
}

#[test]
fn prefill_then_decode_continues_the_cache() {
    // Prefill the first half, decode the rest: the rows must equal the reference rows.
    let name = "llama_tied";
    let (shape, want) = read_npy(&fixture(name).join("logits_prefill.npy"));
    let vocab = shape[1];
    for gpu in gpus() {
        let model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
        let toks = tokens(name);
        let half = toks.len() / 2;
        let mut s = model.session(&gpu, toks.len()).expect("session");
        let mut got = pollster::block_on(s.logits(&toks[..half])).expect("prefill");
        got.extend(pollster::block_on(s.logits(&toks[half..])).expect("second chunk"));
        check(
            &format!("{name} chunked on {}", gpu.backend_name()),
            &got,
            &want,
            vocab,
        );
    }
}

#[test]
fn sliding_window_caches_are_bounded_by_the_window() {
    for gpu in gpus().into_iter().take(1) {
        let model = kestrel_models::load(&gpu, &fixture("qwen2_window")).expect("load");
        assert_eq!(model.attention_windows(), [None, Some(8), Some(8)]);
        let s = model.session(&gpu, 1000).expect("session");
        assert_eq!(s.capacity(), 128, "capped at max_position_embeddings");
        let rows: Vec<usize> = s.kv_layouts().iter().map(|l| l.rows).collect();
        // The full layer holds the whole context; sliding ones the window plus one chunk.
        assert_eq!(rows, vec![128, 16, 16]);
    }
}

/// Cases of tests/fixtures/streaming (StreamingLLM decode written from the paper): sinks,
/// window, tokens file, logits file.
const STREAMING: &[(usize, usize, &str, &str)] = &[
    (4, 12, "tokens.json", "logits_decode.npy"),
    (2, 5, "tokens_s2_w5.json", "logits_decode_s2_w5.npy"),
];

#[test]
fn attention_sinks_match_the_streaming_reference() {
    for &(sinks, window, tokens_file, logits_file) in STREAMING {
        let dir = fixture("streaming");
        let text = std::fs::read_to_string(dir.join(tokens_file)).expect("tokens");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let toks: Vec<u32> = v["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_u64().expect("id") as u32)
            .collect();
        let (shape, want) = read_npy(&dir.join(logits_file));
        for gpu in gpus() {
            let b = gpu.backend_name();
            let mut model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
            model
                .set_attention(AttentionOptions {
                    streaming: Some((sinks, window)),
                    sparse: None,
                })
                .expect("sinks");
            // More tokens than the model's 64 positions: the cache keeps positions small.
            let mut s = model.session(&gpu, usize::MAX).expect("session");
            let mut decode = Vec::new();
            for &t in &toks {
                decode.extend(pollster::block_on(s.logits(&[t])).expect("decode"));
            }
            check(
                &format!("sinks {sinks} window {window} decode on {b}"),
                &decode,
                &want,
                shape[1],
            );
            s.reset();
            let prefill = pollster::block_on(s.logits(&toks)).expect("prefill");
            check(
                &format!("sinks {sinks} window {window} prefill on {b}"),
                &prefill,
                &want,
                shape[1],
            );
        }
    }
}

#[test]
fn a_shared_prefix_is_reused_and_gives_fresh_logits() {
    // Run A, then B sharing A's first 20 tokens: B reuses them and its logits equal a fresh
    // run of B. Also across a wrapped sliding-window ring.
    for name in ["llama_gqa", "mistral_window"] {
        let (shape, _) = read_npy(&fixture(name).join("logits_prefill.npy"));
        let toks = tokens(name);
        let a = &toks[..25];
        let mut b = toks[..20].to_vec();
        b.extend([7, 9, 11, 13]);
        for gpu in gpus() {
            let model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
            let mut fresh = model.session(&gpu, 64).expect("session");
            let want = pollster::block_on(fresh.logits(&b)).expect("fresh");
            let mut s = model.session(&gpu, 64).expect("session");
            pollster::block_on(s.logits(a)).expect("first prompt");
            let new = s.reuse_prefix(&b).to_vec();
            assert_eq!(new.len(), 4, "{name}: 20 tokens reused");
            let got = pollster::block_on(s.logits(&new)).expect("second prompt");
            let tail = &want[(b.len() - new.len()) * shape[1]..];
            check(
                &format!("{name} prefix reuse on {}", gpu.backend_name()),
                &got,
                tail,
                shape[1],
            );
        }
    }
}

/// Load fixture `name` with `edits` applied to its config.json (in a temp copy); the error.
fn load_error_with_config(name: &str, edits: &[(&str, serde_json::Value)]) -> String {
    let src = fixture(name);
    let dir = std::env::temp_dir().join(format!("kestrel-bad-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = std::fs::read_to_string(src.join("config.json")).expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("json");
    for (key, value) in edits {
        config[key] = value.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).expect("copy");
    let gpu = gpus().into_iter().next().expect("a GPU");
    let err = match kestrel_models::load(&gpu, &dir) {
        Ok(_) => panic!("{name} with {edits:?} loaded"),
        Err(e) => e.to_string(),
    };
    std::fs::remove_dir_all(&dir).ok();
    err
}

/// A fixture, edits to its config.json, and what the one-line load error must name.
type BadConfigCase = (
    &'static str,
    Vec<(&'static str, serde_json::Value)>,
    &'static [&'static str],
);

/// Each case fails to load with a one-line error naming what it must.
fn assert_bad_configs(cases: &[BadConfigCase]) {
    for (name, edits, needles) in cases {
        let err = load_error_with_config(name, edits);
        eprintln!("{name} {edits:?}: {err}");
        for n in *needles {
            assert!(
                err.contains(n),
                "{name} {edits:?}: error lacks '{n}': {err}"
            );
        }
        assert!(!err.contains('\n'), "{name}: error is not one line: {err}");
    }
}

#[test]
fn recurrent_configs_disagreeing_with_tensors_fail_clearly() {
    let cases: &[BadConfigCase] = &[
        // 2 heads of 32 instead of 4 of 16: r_k is [4, 16] in the file, [2, 32] expected.
        (
            "rwkv7",
            vec![("head_dim", 32.into()), ("num_heads", 2.into())],
            &["model.layers.0.attn.r_k", "[2, 32]", "[4, 16]"],
        ),
        // 8 heads of 16 (the same 128 channels): in_proj has 4 dt rows, not 8.
        (
            "mamba2",
            vec![("num_heads", 8.into()), ("head_dim", 16.into())],
            &[
                "backbone.layers.0.mixer.in_proj.weight",
                "[324, 64]",
                "[328, 64]",
            ],
        ),
        // A state of 8 instead of 16.
        (
            "mamba",
            vec![("state_size", 8.into())],
            &["backbone.layers.0.mixer.", "expected"],
        ),
        // Heads that do not divide the channels.
        (
            "mamba2",
            vec![("head_dim", 30.into())],
            &["num_heads", "do not make"],
        ),
        // 8 heads: the per-head output norm has 16 values, not 8.
        (
            "gla",
            vec![("num_heads", 8.into())],
            &["g_norm_swish_gate.weight", "[16]"],
        ),
        (
            "rwkv4",
            vec![("attention_hidden_size", 32.into())],
            &["attention_hidden_size"],
        ),
    ];
    assert_bad_configs(cases);
}

/// `n` random tokens of fixture `name` in one prefill and one token at a time: the logits
/// must agree at every position.
fn long_prefill_matches_decode(rng: &mut kestrel_runtime::rng::Rng, name: &str, n: usize) {
    let gpu = gpus().into_iter().next().expect("a GPU");
    let model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
    let vocab = model.config().vocab;
    let toks: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
    let mut s = model.session(&gpu, toks.len()).expect("session");
    let prefill = pollster::block_on(s.logits(&toks)).expect("prefill");
    s.reset();
    let mut decode = Vec::new();
    for &t in &toks {
        decode.extend(pollster::block_on(s.logits(&[t])).expect("decode"));
    }
    check(
        &format!("{name}: {n}-token prefill vs decode"),
        &prefill,
        &decode,
        vocab,
    );
}

/// A long prompt goes through several chunks of the chunked scan (and the token-by-token
/// form in decode): both must give the same logits at every position.
#[test]
fn recurrent_models_prefill_many_chunks_like_decode() {
    let mut rng = kestrel_runtime::rng::Rng::new(5);
    for name in ["mamba", "mamba2", "gla", "rwkv6", "rwkv7", "rwkv4"] {
        long_prefill_matches_decode(&mut rng, name, 300);
    }
}

// The constant-memory tests are in constant_memory.rs (a binary of their own: they measure
// the process's resident memory).

// BlinkDL's .pth checkpoints: tests/tests/pth.rs.

/// Per MoE layer in order: (layer, per token the experts the router chose).
type LayerChoices = Vec<(usize, Vec<Vec<u32>>)>;

/// The experts the reference's router chose (router.json): (top_k, the layers' choices).
fn router_choices(name: &str) -> (usize, LayerChoices) {
    let text = std::fs::read_to_string(fixture(name).join("router.json")).expect("router.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut layers: LayerChoices = v["layers"]
        .as_object()
        .expect("layers")
        .iter()
        .map(|(l, rows)| {
            let rows = rows
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| {
                    r.as_array()
                        .expect("row")
                        .iter()
                        .map(|e| e.as_u64().expect("expert") as u32)
                        .collect()
                })
                .collect();
            (l.parse().expect("layer"), rows)
        })
        .collect();
    layers.sort_by_key(|l| l.0);
    (v["top_k"].as_u64().expect("top_k") as usize, layers)
}

const MOE_MODELS: [&str; 4] = ["mixtral", "mixtral_q8", "qwen2_moe", "jamba"];

/// The GPU router's choices for the prefill of every MoE fixture equal the reference's, in
/// every MoE layer (the prefill graph with each router's output added as a graph output).
#[test]
fn moe_router_choices_match_the_reference() {
    use kestrel_runtime::arch::Head;
    use kestrel_runtime::executor::Plan;
    use kestrel_runtime::state::StateStore;
    for gpu in gpus() {
        for name in MOE_MODELS {
            let model = kestrel_models::load(&gpu, &model_path(name)).expect("load");
            let toks = tokens(name);
            let (k, layers) = router_choices(name);
            let arch = model.architecture();
            let mut graph = arch
                .build(toks.len(), toks.len(), Head::AllLogits)
                .expect("graph");
            let routes: Vec<usize> = graph
                .ops
                .iter()
                .filter(|op| op.name() == "moe_route")
                .map(|op| op.reads_writes().1[0])
                .collect();
            assert_eq!(routes.len(), layers.len(), "{name}: MoE layers");
            let first = graph.outputs.len();
            graph.outputs.extend(&routes);
            let states = StateStore::allocate(&gpu, &arch.states(toks.len())).expect("states");
            let plan = Plan::new(&gpu, &graph, &states).expect("plan");
            plan.write_input("tokens", &toks).expect("tokens");
            plan.run(&step(0, toks.len() as u32)).expect("run");
            for (i, (layer, want)) in layers.iter().enumerate() {
                let got = pollster::block_on(plan.read_u32(first + i)).expect("read");
                let got: Vec<Vec<u32>> = got.chunks(2 * k).map(|r| r[..k].to_vec()).collect();
                assert_eq!(
                    &got,
                    want,
                    "{name} layer {layer} on {}: router choices",
                    gpu.backend_name()
                );
            }
        }
    }
}

/// The expert counters (what `kestrel bench` reports) count every routed token once.
#[test]
fn expert_counters_count_the_routed_tokens() {
    let gpu = gpus().into_iter().next().expect("a GPU");
    for name in MOE_MODELS {
        let model = kestrel_models::load(&gpu, &model_path(name)).expect("load");
        let toks = tokens(name);
        let (k, layers) = router_choices(name);
        let mut s = model.session(&gpu, toks.len()).expect("session");
        pollster::block_on(s.logits(&toks)).expect("prefill");
        for (layer, rows) in &layers {
            let counts = pollster::block_on(s.read_counters(&format!("moe.{layer}.counts")))
                .expect("counters");
            let mut want = vec![0u32; counts.len()];
            for e in rows.iter().flatten() {
                want[*e as usize] += 1;
            }
            assert_eq!(counts, want, "{name} layer {layer}");
            assert_eq!(counts.iter().sum::<u32>() as usize, toks.len() * k);
        }
    }
}

/// 150 tokens put more than 64 rows on some experts (several tiles each) and take the
/// hybrids' scans through many chunks: prefill and decode agree.
#[test]
fn moe_and_hybrid_models_prefill_many_tokens_like_decode() {
    let mut rng = kestrel_runtime::rng::Rng::new(6);
    for name in ["mixtral", "jamba", "zamba2"] {
        long_prefill_matches_decode(&mut rng, name, 150);
    }
}

#[test]
fn moe_and_hybrid_configs_disagreeing_with_tensors_fail_clearly() {
    let cases: &[BadConfigCase] = &[
        (
            "mixtral",
            vec![("num_experts_per_tok", 9.into())],
            &["num_experts_per_tok", "(9)", "num_local_experts (8)"],
        ),
        // A ninth expert the file does not have.
        (
            "mixtral",
            vec![("num_local_experts", 9.into())],
            &["model.layers.0.block_sparse_moe.experts.8.w1.weight"],
        ),
        (
            "qwen2_moe",
            vec![("num_experts_per_tok", 0.into())],
            &["num_experts_per_tok"],
        ),
        (
            "jamba",
            vec![("num_experts", 6.into())],
            &["model.layers.1.feed_forward.experts.4.gate_proj.weight"],
        ),
        // A third shared block, which the file does not hold (it would live with layer 4).
        (
            "zamba2",
            vec![("num_mem_blocks", 3.into())],
            &["model.layers.4.shared_transformer"],
        ),
    ];
    assert_bad_configs(cases);
}

/// Tensors a fixture stores that its network never reads: BlinkDL's RWKV-7 keeps layer 0's
/// value-residual LoRA, which layer 0 has no use for (its values are the residual).
const UNREAD: &[(&str, &[&str])] = &[(
    "rwkv7_blink",
    &["blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"],
)];

/// Bytes of every tensor stored in a fixture's model files (the safetensors headers' data
/// ranges, or the GGUF tensor infos) but those in `UNREAD`.
fn stored_tensor_bytes(name: &str) -> u64 {
    let unread = UNREAD.iter().find(|u| u.0 == name).map_or(&[][..], |u| u.1);
    let path = model_path(name);
    if path.extension().is_some_and(|e| e == "gguf") {
        let file = kestrel_models::formats::gguf::GgufFile::open(&path).expect("gguf");
        return file.tensor_infos().iter().map(|t| t.n_bytes).sum();
    }
    let mut total = 0;
    for entry in std::fs::read_dir(&path).expect("fixture dir") {
        let file = entry.expect("entry").path();
        if file.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&file).expect("safetensors");
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("header length")) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
        for (tensor, info) in header.as_object().expect("header object") {
            if tensor != "__metadata__" && !unread.contains(&tensor.as_str()) {
                let range = &info["data_offsets"];
                let (a, b) = (range[0].as_u64(), range[1].as_u64());
                total += b.expect("end") - a.expect("start");
            }
        }
    }
    total
}

/// Loading reads every tensor of a fixture once: the scoped loaders count each in
/// `file_bytes` exactly once, however it is split (fused projections, stacked experts,
/// per-head constants) or however often its shape is checked.
#[test]
fn every_stored_tensor_is_counted_once() {
    let gpu = gpus().into_iter().next().expect("a GPU");
    for name in MODELS {
        let model = kestrel_models::load(&gpu, &model_path(name)).expect("load");
        assert_eq!(model.file_bytes(), stored_tensor_bytes(name), "{name}");
        assert!(model.weight_bytes() > 0, "{name}");
    }
}

/// A decoded token reads one row of an untied embedding table (llama_gqa: 320 x 64 in f32)
/// and the whole of a table that is also the LM head (llama_tied); every other weight whole.
#[test]
fn weights_read_per_token_count_an_untied_table_by_its_row() {
    let gpu = gpus().into_iter().next().expect("a GPU");
    for (name, unread) in [("llama_gqa", (320 - 1) * 64 * 4), ("llama_tied", 0)] {
        let model = kestrel_models::load(&gpu, &model_path(name)).expect("load");
        let session = model.session(&gpu, 16).expect("session");
        let read = model.weight_bytes_per_token(&session).expect("bytes read");
        assert_eq!(model.weight_bytes() - read, unread, "{name}");
    }
}

/// A folder given as bytes (what the browser has) loads through the same registry path as a
/// directory: the family from config.json, or for BlinkDL's RWKV-7 from its tensors.
#[test]
fn folders_given_as_bytes_load_like_directories() {
    let gpu = gpus().into_iter().next().expect("a GPU");
    for name in ["llama_gqa", "rwkv7_blink", "mamba2"] {
        let dir = fixture(name);
        let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("fixture dir")
            .map(|e| {
                let path = e.expect("entry").path();
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                (name, std::fs::read(&path).expect("read"))
            })
            .collect();
        let model = kestrel_models::model_from_files(&gpu, &dir, files).expect("load bytes");
        let toks = tokens(name);
        let mut s = model.session(&gpu, toks.len()).expect("session");
        let got = pollster::block_on(s.logits(&toks)).expect("prefill");
        let (shape, want) = read_npy(&dir.join("logits_prefill.npy"));
        check(&format!("{name} from bytes"), &got, &want, shape[1]);
        let from_dir = kestrel_models::load(&gpu, &dir).expect("load dir");
        assert_eq!(model.file_bytes(), from_dir.file_bytes(), "{name}");
        assert_eq!(model.config(), from_dir.config(), "{name}");
    }
}

/// What the front ends ask of a model's attention: the windows of its attention layers
/// (none for a recurrent model) and the typed error of options it cannot take.
#[test]
fn attention_layers_and_option_errors_are_reported_by_field() {
    use kestrel_models::{AttentionError, AttentionField, ModelError};
    let gpu = gpus().into_iter().next().expect("a GPU");
    let windows = |name: &str| {
        let model = kestrel_models::load(&gpu, &model_path(name)).expect("load");
        (model.attention_windows(), model.has_attention())
    };
    assert_eq!(windows("mistral_window"), (vec![Some(8); 2], true));
    assert_eq!(windows("jamba"), (vec![None], true));
    assert_eq!(windows("mamba"), (vec![], false));
    let mut model = kestrel_models::load(&gpu, &fixture("mistral_window")).expect("load");
    let err = model
        .set_attention(AttentionOptions {
            streaming: Some((2, 20)),
            sparse: None,
        })
        .expect_err("a window wider than the model's");
    match err {
        ModelError::Attention(e) => {
            assert_eq!(
                e,
                AttentionError::WiderThanModel {
                    window: 20,
                    model_window: 8
                }
            );
            assert_eq!(e.fields(), [AttentionField::KvWindow]);
            assert!(e.to_string().starts_with("kv_window 20 "), "{e}");
        }
        other => panic!("not an attention error: {other}"),
    }
}

/// BF16 checkpoints stay BF16 on the GPU: llama_bf16 (llama_tied's weights rounded to bf16,
/// by generate_bf16.py) as BF16 safetensors and as a BF16 GGUF of the same values, against
/// transformers' f32 logits of the rounded weights in prefill and decode on every backend
/// (TOL, as every fixture: bf16 widens to f32 exactly, so only summation order differs); and
/// the GPU memory that loading allocates is the model's weight bytes and at most 1.05x the
/// tensors' bytes in the file (the f32 norm weights are the excess; widened to f32, the
/// matrices alone would make it 2x).
#[test]
fn bf16_checkpoints_stay_bf16_on_the_gpu() {
    let name = "llama_bf16";
    let dir = fixture(name);
    let (shape, want_prefill) = read_npy(&dir.join("logits_prefill.npy"));
    let (_, want_decode) = read_npy(&dir.join("logits_decode.npy"));
    let gguf = dir.join("model.bf16.gguf");
    let gguf_bytes: u64 = kestrel_models::formats::gguf::GgufFile::open(&gguf)
        .expect("gguf")
        .tensor_infos()
        .iter()
        .map(|t| t.n_bytes)
        .sum();
    for (path, file_bytes) in [(dir.clone(), stored_tensor_bytes(name)), (gguf, gguf_bytes)] {
        let file = path.file_name().expect("name").to_string_lossy();
        for gpu in gpus() {
            // The bytes are counted with matrices in storage buffers: in textures (CPU
            // adapters) each matrix is padded to a whole texture row (16 KiB), 20% of this
            // 200 KB fixture and nothing to do with its dtype.
            let gpu = gpu.without_weight_textures();
            let b = gpu.backend_name();
            let before = gpu.allocated_bytes();
            let model = kestrel_models::load(&gpu, &path).expect("load");
            let allocated = gpu.allocated_bytes() - before;
            assert_eq!(model.file_bytes(), file_bytes, "{file}");
            assert_eq!(
                model.weight_bytes(),
                allocated,
                "{file}: weights are all it allocates"
            );
            let ratio = allocated as f64 / file_bytes as f64;
            eprintln!("{file} on {b}: {allocated} bytes on the GPU, {ratio:.4} x the file's");
            assert!(ratio <= 1.05, "{file} on {b}: {ratio} x the file's bytes");
            let (prefill, decode) = logits_in_both_modes(&gpu, &model, &tokens(name));
            let vocab = shape[1];
            check(
                &format!("{file} prefill on {b}"),
                &prefill,
                &want_prefill,
                vocab,
            );
            check(
                &format!("{file} decode on {b}"),
                &decode,
                &want_decode,
                vocab,
            );
        }
    }
}

//! Memory stays constant over a long decode, measured, not assumed: the bytes of every GPU
//! buffer the runtime holds (`Gpu::allocated_bytes`, counted on creation and drop) and the
//! process's resident memory, after 64 and after 10,000 decoded tokens, for attention with
//! sinks (StreamingLLM, far past the fixture's 64 positions) and for a recurrent model.
//!
//! GPU bytes must be equal: after the first tokens every plan and state exists, and a decode
//! step allocates nothing that outlives it. Resident memory may move by `RSS_SLACK`: the
//! allocator and Mesa's command pools keep freed memory around (measured here: 0 bytes of
//! growth). On lavapipe (a CPU device) GPU buffers are host memory, so a leaked buffer shows
//! in both figures. Both checks were seen to fail: leaking one 256-byte GPU buffer per step
//! grew the GPU count by 2.5 MB and RSS by 15 MB; leaking 1 KiB of host memory per step
//! grew RSS by 8 MB, twice `RSS_SLACK`. This binary holds no other test, so nothing else
//! allocates while it measures (its tests take turns on the GPU).
//!
//! The count itself is checked too: a buffer is counted until its last clone drops, a plan
//! while it lives (its bind groups alone would keep its buffers alive uncounted), and a
//! dropped session or model gives back every byte it allocated.

use kestrel_models::{AttentionOptions, Model};
use kestrel_runtime::session::{Sampling, Session};
use std::sync::Arc;

use kestrel_runtime::Gpu;
use kestrel_tests::{fixture, gpus};

const EARLY: usize = 64;
const LATE: usize = 10_000;
/// Resident memory growth allowed between EARLY and LATE (allocator noise, see above).
const RSS_SLACK: u64 = 4 << 20;

/// The process's resident set in bytes (VmRSS of /proc/self/status).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Greedy decode, one token per step, until the session holds `to` positions.
fn decode_to(model: &Model, s: &mut Session, next: &mut u32, to: usize) {
    let vocab = model.config().vocab;
    while s.pos() < to {
        assert!(
            (*next as usize) < vocab,
            "token {next} outside the vocabulary"
        );
        *next = pollster::block_on(s.next_token(&[*next], &Sampling::default())).expect("step");
    }
    assert_eq!(s.pos(), to);
}

/// Decode to EARLY and to LATE positions: the GPU bytes must not change and the resident
/// memory must grow by no more than RSS_SLACK.
fn assert_memory_flat(what: &str, gpu: &Arc<Gpu>, model: &Model) {
    let mut s = model.session(gpu, usize::MAX).expect("session");
    let state = s.state_bytes();
    let mut next = pollster::block_on(s.next_token(&[1, 2, 3], &Sampling::default())).unwrap();
    decode_to(model, &mut s, &mut next, EARLY);
    let (gpu_early, rss_early) = (gpu.allocated_bytes(), rss_bytes());
    let t = std::time::Instant::now();
    decode_to(model, &mut s, &mut next, LATE);
    let (gpu_late, rss_late) = (gpu.allocated_bytes(), rss_bytes());
    eprintln!(
        "{what}: GPU bytes {gpu_early} -> {gpu_late} (peak {}), RSS {rss_early} -> {rss_late} \
         ({:+} bytes), {} tokens in {:.1} s",
        gpu.peak_allocated_bytes(),
        rss_late as i64 - rss_early as i64,
        LATE - EARLY,
        t.elapsed().as_secs_f64()
    );
    assert!(gpu_early >= state, "{what}: the count misses the state");
    assert_eq!(
        gpu_late, gpu_early,
        "{what}: GPU buffers grew from {EARLY} to {LATE} tokens"
    );
    assert!(
        rss_late <= rss_early + RSS_SLACK,
        "{what}: resident memory grew by {} bytes from {EARLY} to {LATE} tokens (slack {RSS_SLACK})",
        rss_late - rss_early
    );
    assert_eq!(s.state_bytes(), state);
}

#[test]
fn ten_thousand_tokens_with_sinks_run_in_constant_memory() {
    // StreamingLLM generation far past the model's 64 positions: the KV caches keep their
    // size (sinks + window + one chunk of rows per layer), plans are reused, and every step
    // still produces a valid token. Per-token time is measured by `kestrel bench`.
    let gpu = gpus().into_iter().next().expect("a GPU");
    let mut model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
    let (sinks, window) = (4, 28);
    model
        .set_attention(AttentionOptions {
            streaming: Some((sinks, window)),
            sparse: None,
        })
        .expect("sinks");
    // The cache's size from the fixture's config: K and V rows of kv_heads * head_dim f32s.
    let text = std::fs::read_to_string(fixture("llama_gqa").join("config.json")).expect("config");
    let c: serde_json::Value = serde_json::from_str(&text).expect("json");
    let key = |k: &str| c[k].as_u64().expect(k) as usize;
    let kv_dim = key("num_key_value_heads") * key("head_dim");
    let rows = sinks + window + window;
    let expected = (key("num_hidden_layers") * 2 * rows * kv_dim * 4) as u64;
    let s = model.session(&gpu, usize::MAX).expect("session");
    assert_eq!(s.state_bytes(), expected);
    drop(s);
    assert_memory_flat("llama_gqa with sinks", &gpu, &model);
}

#[test]
fn ten_thousand_tokens_of_a_recurrent_model_run_in_constant_memory() {
    let gpu = gpus().into_iter().next().expect("a GPU");
    let model = kestrel_models::load(&gpu, &fixture("mamba2")).expect("load");
    assert_memory_flat("mamba2", &gpu, &model);
}

#[test]
fn gpu_buffers_are_counted_until_their_last_clone_drops() {
    let gpu = gpus().into_iter().next().expect("a GPU");
    let base = gpu.allocated_bytes();
    // Sizes round up to 4 bytes, as the buffer is created.
    let a = gpu.storage_buffer("counted", 1001);
    assert_eq!(gpu.allocated_bytes(), base + 1004);
    let b = a.clone();
    drop(a);
    assert_eq!(gpu.allocated_bytes(), base + 1004, "a clone still holds it");
    drop(b);
    assert_eq!(gpu.allocated_bytes(), base);
    assert!(gpu.peak_allocated_bytes() >= base + 1004);

    // A session and its plans: counted while they live (at least the model's state), all
    // returned when the session is dropped.
    let model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
    let loaded = gpu.allocated_bytes();
    assert!(loaded >= base + model.weight_bytes(), "weights not counted");
    let mut s = model.session(&gpu, 32).expect("session");
    pollster::block_on(s.logits(&[1, 2, 3])).expect("prefill");
    pollster::block_on(s.logits(&[4])).expect("decode");
    assert!(gpu.allocated_bytes() >= loaded + s.state_bytes());
    drop(s);
    assert_eq!(
        gpu.allocated_bytes(),
        loaded,
        "a dropped session left buffers behind"
    );
    drop(model);
    assert_eq!(
        gpu.allocated_bytes(),
        base,
        "a dropped model left buffers behind"
    );
}

/// A plan's buffers (pooled activations, inputs, outputs, staging, step and parameter
/// uniforms) are counted for as long as the plan lives, although its bind groups alone would
/// keep them alive: at least the activations it planned, all returned when it is dropped.
#[test]
fn a_plan_is_counted_while_it_lives() {
    use kestrel_runtime::executor::Plan;
    use kestrel_runtime::state::StateStore;
    use kestrel_runtime::tensor::{DType, GpuWeight, HostData};
    use kestrel_runtime::Graph;

    let gpu = gpus().into_iter().next().expect("a GPU");
    let (vocab, dim, tokens) = (50, 24, 7);
    let mut rng = kestrel_runtime::rng::Rng::new(3);
    let upload = |name: &str, rows: usize, data: &[f32]| {
        GpuWeight::upload(&gpu, name, rows, dim, HostData::F32(data)).expect("upload")
    };
    let table = upload("table", vocab, &rng.vec(vocab * dim, 1.0));
    let norm = upload("norm", 1, &rng.vec(dim, 1.0));
    let head = upload("head", vocab, &rng.vec(vocab * dim, 1.0));
    let mut g = Graph::new();
    let ids = g.input("tokens", &[tokens], DType::U32);
    let (t, n, h) = (g.weight(&table), g.weight(&norm), g.weight(&head));
    let x = g.embedding(t, ids).expect("embedding");
    let y = g.rms_norm(x, n, 1e-5).expect("norm");
    let logits = g.linear(y, h, None).expect("head");
    g.output(logits);

    let before = gpu.allocated_bytes();
    let plan = Plan::new(&gpu, &g, &StateStore::default()).expect("plan");
    let held = gpu.allocated_bytes() - before;
    // Activations, the input ids, and the output's staging buffer at least.
    let least = plan.activation_bytes + (tokens * 4) as u64 + (tokens * vocab * 4) as u64;
    assert!(
        held >= least,
        "a plan holds {held} bytes, at least {least} expected"
    );
    drop(plan);
    assert_eq!(
        gpu.allocated_bytes(),
        before,
        "a dropped plan left buffers behind"
    );
}

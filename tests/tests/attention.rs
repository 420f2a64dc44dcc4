//! The attention family over every KV layout against `attention::reference` — prefill
//! (tiled and row-wise) and decode (split-K) over linear caches, sliding-window rings and
//! StreamingLLM sinks, block-sparse masks, and `cache_write` — from the runtime's table of
//! kernel cases (`kestrel_runtime::cases`, where the scenes and tolerances are defined and
//! justified) on every backend. Besides the table: checks on the CPU that the table's
//! cases exercise what they are for (stale ring rows, keys dropped by masks), and the graph
//! builder rejecting layouts and inputs that do not fit together.

use kestrel_runtime::arch::Head;
use kestrel_runtime::block_mask::BlockMask;
use kestrel_runtime::cases;
use kestrel_runtime::kernels::attention::{self, mask_blocks, AttnShape};
use kestrel_runtime::kernels::decode_attention;
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::session::Sampling;
use kestrel_runtime::{DType, Error, Graph};
use kestrel_tests::*;

#[test]
fn prefill_matches_reference() {
    check_cases(cases::family("attention"));
}

#[test]
fn decode_matches_reference() {
    check_cases(cases::family("decode_attention"));
}

/// Decode attention's pieces per head follow the adapter: one on CPU adapters (the pieces
/// pass writes the output and no merge is recorded: 6 dispatches per Llama layer), with the
/// subgroup kernel where subgroups have 8 lanes or more; split-K on GPUs. Checked on the
/// fixture llama_gqa's decode plan.
#[test]
fn decode_attention_pieces_follow_the_adapter() {
    for gpu in gpus() {
        let backend = gpu.backend_name();
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let want = match cpu {
            true => 1,
            false => decode_attention::MAX_SPLITS,
        };
        assert_eq!(
            decode_attention::splits_on(&gpu, decode_attention::MAX_SPLITS),
            want
        );

        let model = kestrel_models::load(&gpu, &fixture::dir("llama_gqa")).expect("llama_gqa");
        let mut s = model.session(&gpu, 64).expect("session");
        let greedy = Sampling::default();
        let next = pollster::block_on(s.next_token(&[5, 17, 42], &greedy)).expect("prefill");
        pollster::block_on(s.next_token(&[next], &greedy)).expect("decode");
        let plan = s.plan(1, Head::Sample).expect("decode plan");
        let count = |name: &str| plan.dispatches().iter().filter(|d| d.name == name).count();
        let (tiles, lanes) = (count("decode_attention"), count("decode_attention_lanes"));
        let layers = count("rope_cache_write");
        assert!(layers > 0, "{backend}: a decode plan with attention layers");
        assert_eq!(
            tiles + lanes,
            layers,
            "{backend}: one attention dispatch a layer"
        );
        // The fixture's 64-row cache keeps one piece everywhere: no merge on any adapter.
        assert_eq!(count("decode_attention_merge"), 0, "{backend}");
        let subgroups = gpu.caps.subgroups && gpu.caps.subgroup_min_size >= 8;
        assert_eq!(
            lanes == layers,
            cpu && subgroups,
            "{backend}: the lanes kernel"
        );
    }
}

#[test]
fn cache_write_matches_reference() {
    check_cases(cases::family("cache_write"));
}

/// The ring cases leave evicted positions' keys in their caches, which a kernel that reads
/// past the window would use.
#[test]
fn ring_cases_hold_stale_rows() {
    let (prefill, decode) = cases::ring_stale_cases().unwrap();
    assert!(
        prefill >= 8,
        "only {prefill} prefill cases with stale ring rows"
    );
    assert!(
        decode >= 6,
        "only {decode} decode cases with stale ring rows"
    );
}

/// Every sparse pattern drops keys (the dense causal mask none, and its reference is dense
/// attention's bit for bit); dilated and random patterns differ between heads.
#[test]
fn sparse_cases_drop_keys() {
    let scenes = cases::sparse_scenes().unwrap();
    assert_eq!(scenes.len(), 5);
    for s in scenes {
        assert_eq!(
            s.dropped == 0,
            s.dense,
            "{}: {} keys dropped",
            s.pattern,
            s.dropped
        );
        if s.dense {
            assert!(
                s.same_as_dense,
                "{}: reference differs from dense attention",
                s.pattern
            );
        }
        if s.pattern.contains("dilation") || s.pattern.contains("random") {
            assert!(s.heads_differ, "{}: heads should differ", s.pattern);
        }
    }
}

fn sliding(window: usize, capacity: usize) -> KvLayout {
    KvLayout::sliding(window, capacity).unwrap()
}

fn streaming(sinks: usize, window: usize) -> KvLayout {
    KvLayout::streaming(sinks, window).unwrap()
}

// ---------------------------------------------------------------- graph checks

/// Panic unless `r` is a graph error.
fn rejected<T>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Graph(msg)) => eprintln!("{what}: rejected: {msg}"),
        Err(e) => panic!("{what}: expected a graph error, got {e}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn graph_rejects_mismatched_attention_modes() {
    let (heads, kv_heads, hd) = (4, 2, 64);
    let shape = AttnShape {
        softcap: None,
        heads,
        kv_heads,
        head_dim: hd,
        scale: 0.125,
    };
    let kvw = kv_heads * hd;
    // A graph with queries of `t` rows, caches for `layout`, and optional inv_freq / mask.
    let build = |layout: KvLayout, t: usize, rope_half: Option<usize>, mask: bool| {
        let mut g = Graph::new();
        let q = g.input("q", &[t, heads * hd], DType::F32);
        let k = g.state("k", &[layout.rows, kvw]);
        let v = g.state("v", &[layout.rows, kvw]);
        let f = rope_half.map(|h| g.input("inv_freq", &[h], DType::F32));
        let m = mask.then(|| {
            let blocks = mask_blocks(layout.rows);
            g.block_mask(&BlockMask::dense_causal(heads, blocks))
        });
        (g, q, k, v, f, m)
    };
    let attend = |layout: KvLayout, causal: bool, rope_half: Option<usize>, mask: bool| {
        let (mut g, q, k, v, f, m) = build(layout, 5, rope_half, mask);
        g.attention(q, k, v, shape, causal, layout, f, m)
    };
    let linear = KvLayout::linear(300);
    let ring = sliding(37, 4096);
    let sinks = streaming(4, 37);
    let half = Some(hd / 2);

    // What fits together is accepted ...
    for (what, layout, causal, rope_half, mask) in [
        ("linear causal", linear, true, None, false),
        ("linear not causal", linear, false, None, false),
        ("linear with mask", linear, true, None, true),
        ("sliding causal", ring, true, None, false),
        ("streaming with inv_freq", sinks, true, half, false),
        (
            "streaming, partial rotation",
            sinks,
            true,
            Some(hd / 4),
            false,
        ),
    ] {
        attend(layout, causal, rope_half, mask).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // ... and what does not is rejected, by the graph and by validate_mode alike.
    for (what, layout, causal, rope_half, mask) in [
        ("streaming without inv_freq", sinks, true, None, false),
        ("inv_freq with a linear layout", linear, true, half, false),
        ("inv_freq with a sliding layout", ring, true, half, false),
        (
            "inv_freq longer than head_dim / 2",
            sinks,
            true,
            Some(hd / 2 + 1),
            false,
        ),
        ("mask with a sliding layout", ring, true, None, true),
        ("mask with a streaming layout", sinks, true, half, true),
        ("mask, not causal", linear, false, None, true),
        ("not causal with a window", ring, false, None, false),
        ("not causal with sinks", sinks, false, half, false),
        (
            "sliding window without a ring, not causal",
            sliding(37, 60),
            false,
            None,
            false,
        ),
    ] {
        rejected(what, attend(layout, causal, rope_half, mask));
        rejected(
            &format!("validate_mode: {what}"),
            attention::validate_mode(&shape, &layout, causal, rope_half, mask),
        );
    }

    // cache_write: up to the ring's chunk, never more.
    for layout in [ring, sinks, sliding(8, 4096)] {
        let chunk = layout.max_chunk.unwrap();
        for (t, ok) in [(1, true), (chunk, true), (chunk + 1, false)] {
            let (mut g, _, k, _, _, _) = build(layout, t, None, false);
            let src = g.input("k_new", &[t, kvw], DType::F32);
            let r = g.cache_write(src, k, layout);
            let what = format!("cache_write of {t} rows into {layout:?}");
            match ok {
                true => r.unwrap_or_else(|e| panic!("{what}: {e}")),
                false => rejected(&what, r),
            }
        }
    }
    // A linear cache takes any chunk.
    let (mut g, _, k, _, _, _) = build(linear, 300, None, false);
    let src = g.input("k_new", &[300, kvw], DType::F32);
    g.cache_write(src, k, linear).unwrap();
}

//! Counters of the device: a decode token's GPU time by kernel class from timestamp queries
//! (`kestrel_runtime::profile`), pipeline creation counted, and the driver's pipeline cache
//! handed from one device to the next (`Gpu::pipeline_cache_data` /
//! `Gpu::load_pipeline_cache`), garbage refused without harm; pipelines made ahead of use on
//! threads (`Gpu::prebuild`), bad hints dropped without harm. On the fixture llama_gqa.

use std::collections::BTreeMap;
use std::sync::Arc;

use kestrel_models::Model;
use kestrel_runtime::arch::Head;
use kestrel_runtime::profile;
use kestrel_runtime::session::Sampling;
use kestrel_runtime::{BackendChoice, Gpu};
use kestrel_tests::{backends, fixture, gpus};

const PROMPT: [u32; 5] = [5, 17, 42, 3, 9];

fn llama_gqa(gpu: &Arc<Gpu>) -> Model {
    kestrel_models::load(gpu, &fixture("llama_gqa")).expect("load llama_gqa")
}

#[test]
fn a_decode_token_is_timed_by_kernel_class() {
    for gpu in gpus() {
        let backend = gpu.backend_name();
        let model = llama_gqa(&gpu);
        let mut s = model.session(&gpu, 16).expect("session");
        let greedy = Sampling::default();
        let next = pollster::block_on(s.next_token(&PROMPT, &greedy)).expect("prefill");
        pollster::block_on(s.next_token(&[next], &greedy)).expect("decode");
        let plan = s.plan(1, Head::Sample).expect("decode plan");
        let mut want: BTreeMap<&str, usize> = BTreeMap::new();
        for d in plan.dispatches() {
            *want.entry(d.name).or_default() += 1;
        }
        let times = pollster::block_on(profile::kernel_times(&gpu, plan.dispatches()))
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let Some(times) = times else {
            assert!(!gpu.caps.timestamps, "{backend}: timestamps but no times");
            eprintln!("{backend}: no timestamp queries, no profile");
            continue;
        };
        assert!(gpu.caps.timestamps);
        let got: BTreeMap<&str, usize> = times
            .classes
            .iter()
            .map(|c| (c.name, c.dispatches))
            .collect();
        assert_eq!(got, want, "{backend}: every class of the plan, each once");
        for c in &times.classes {
            assert!(c.ms.is_finite() && c.ms >= 0.0, "{backend}: {c:?}");
            eprintln!(
                "{backend}: {:<18} {:>3} dispatches {:>9.4} ms",
                c.name, c.dispatches, c.ms
            );
        }
        let total = times.total_ms();
        let sum: f64 = times.classes.iter().map(|c| c.ms).sum();
        assert_eq!(total, sum, "{backend}: the total is the classes' sum");
        // A dispatch takes time: all zeros would be timestamps that were never written.
        assert!(total > 0.0, "{backend}: no GPU time at all");
        // The passes run one after another, so their times fit in the span (both are sums
        // of whole ticks; the slack is the rounding of the per-class conversions to ms).
        assert!(
            total <= times.span_ms * (1.0 + 1e-9),
            "{backend}: dispatches {total} ms > span {} ms",
            times.span_ms
        );
        gpu.check().unwrap_or_else(|e| panic!("{backend}: {e}"));
    }
}

/// Logits of the prompt on a fresh session of `model` (one prefill).
fn logits(gpu: &Arc<Gpu>, model: &Model) -> Vec<f32> {
    let mut s = model.session(gpu, 16).expect("session");
    pollster::block_on(s.logits(&PROMPT)).expect("logits")
}

fn open(choice: BackendChoice) -> Arc<Gpu> {
    pollster::block_on(Gpu::new(choice)).unwrap_or_else(|e| panic!("{choice}: {e}"))
}

#[test]
fn a_second_device_starts_from_the_first_ones_pipeline_cache() {
    // Take the test process's GPU turn (this test opens devices of its own).
    let _ = gpus();
    for choice in backends() {
        let first = open(choice);
        let model = llama_gqa(&first);
        let before = first.pipeline_work().pipelines;
        let reference = logits(&first, &model);
        let created = first.pipeline_work();
        assert!(
            created.pipelines > before,
            "{choice}: a prefill creates pipelines"
        );
        assert!(
            created.secs.is_some_and(|s| s > 0.0),
            "{choice}: {created:?}"
        );
        let Some(key) = first.pipeline_cache_key() else {
            // GL has no pipeline cache: nothing to hand over, and loading is a no-op.
            assert_eq!(first.pipeline_cache_data(), None, "{choice}");
            pollster::block_on(first.load_pipeline_cache(b"anything")).expect("no-op");
            eprintln!("{choice}: no pipeline cache on this backend");
            continue;
        };
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{choice}: {key:?} is not a safe file name"
        );
        let data = first
            .pipeline_cache_data()
            .unwrap_or_else(|| panic!("{choice}: no pipeline cache data"));
        eprintln!("{choice}: {} bytes of pipeline cache ({key})", data.len());

        let second = open(choice);
        assert_eq!(second.pipeline_cache_key(), Some(key.clone()));
        pollster::block_on(second.load_pipeline_cache(&data))
            .unwrap_or_else(|e| panic!("{choice}: refused its own data: {e}"));
        let model2 = llama_gqa(&second);
        let out = logits(&second, &model2);
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{choice}: the cached pipelines compute the same logits"
        );
        second.check().unwrap_or_else(|e| panic!("{choice}: {e}"));

        // Garbage, a changed header and a torn copy are refused; the device stays usable.
        let third = open(choice);
        let mut wrong_magic = data.clone();
        wrong_magic[0] ^= 0xff;
        let torn = &data[..data.len() / 2];
        for (what, bad) in [
            ("garbage", &b"not a pipeline cache"[..]),
            ("empty", &[][..]),
            ("a changed header", &wrong_magic[..]),
            ("a torn copy", torn),
        ] {
            let r = pollster::block_on(third.load_pipeline_cache(bad));
            assert!(r.is_err(), "{choice}: {what} was accepted");
            third
                .check()
                .unwrap_or_else(|e| panic!("{choice}: {what} left an error: {e}"));
        }
        let model3 = llama_gqa(&third);
        assert_eq!(
            logits(&third, &model3)
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{choice}: after refused data"
        );
        third.check().unwrap_or_else(|e| panic!("{choice}: {e}"));
    }
}

#[test]
fn pipelines_made_ahead_of_use_are_the_ones_a_plan_takes() {
    // Take the test process's GPU turn (this test opens devices of its own).
    let _ = gpus();
    for choice in backends() {
        let first = open(choice);
        let reference = logits(&first, &llama_gqa(&first));
        let keys = first.pipeline_keys();
        assert!(!keys.is_empty(), "{choice}: a prefill lists its pipelines");

        let second = open(choice);
        let mut hints = keys.clone();
        // A key of no kernel, one without a specialisation, one whose value is no WGSL
        // constant, and one the device refuses (rms_norm needs BIAS): skipped or dropped.
        hints.extend(
            [
                "no_such_kernel|",
                "rms_norm",
                "rms_norm|CENTERED=Bool(maybe);BIAS=Bool(false);",
                "rms_norm|CENTERED=Bool(false);",
            ]
            .map(String::from),
        );
        for thread in second.prebuild(hints, 2) {
            thread.join().expect("a prebuild thread");
        }
        second
            .check()
            .unwrap_or_else(|e| panic!("{choice}: a refused pipeline reached the device: {e}"));
        // Every listed pipeline, and the refused one, was created; the plan creates none.
        let made = second.pipeline_work().pipelines;
        assert_eq!(made, keys.len() as u64 + 1, "{choice}");
        assert!(second.pipeline_keys().is_empty(), "{choice}: none used yet");
        let out = logits(&second, &llama_gqa(&second));
        assert_eq!(
            second.pipeline_work().pipelines,
            made,
            "{choice}: made again"
        );
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{choice}: the pipelines made ahead compute the same logits"
        );
        let mut used = second.pipeline_keys();
        let mut want = keys.clone();
        used.sort();
        want.sort();
        assert_eq!(used, want, "{choice}: the same pipelines used");
        second.check().unwrap_or_else(|e| panic!("{choice}: {e}"));
    }
}

#[test]
fn the_first_prompts_pipelines_are_told_from_later_ones() {
    // Take the test process's GPU turn (this test opens devices of its own: the shared ones
    // have run other tests' dispatches).
    let _ = gpus();
    for choice in backends() {
        let gpu = open(choice);
        let backend = choice;
        let model = llama_gqa(&gpu);
        let mut s = model.session(&gpu, 16).expect("session");
        let greedy = Sampling::default();
        let next = pollster::block_on(s.next_token(&PROMPT, &greedy)).expect("prefill");
        let prefill = gpu.pipeline_keys().len();
        assert!(prefill > 0, "{backend}: a prefill lists its pipelines");
        assert_eq!(
            gpu.pipeline_keys_before_first_dispatch(),
            prefill,
            "{backend}: every prefill pipeline came before the first dispatch"
        );
        // The decode plan's pipelines (matvec, decode attention) come after it.
        pollster::block_on(s.next_token(&[next], &greedy)).expect("decode");
        assert!(
            gpu.pipeline_keys().len() > prefill,
            "{backend}: decode adds pipelines"
        );
        assert_eq!(
            gpu.pipeline_keys_before_first_dispatch(),
            prefill,
            "{backend}: decode's pipelines are not the first prompt's"
        );
    }
}

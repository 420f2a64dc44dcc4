//! LLaDA-style masked diffusion against tests/fixtures/llada (made by
//! tests/fixtures/generate_llada.py): the bidirectional network's logits (relative error
//! <= 1e-4, as for the causal fixtures), and the sampler's step-by-step trajectory, which
//! must be identical at temperature 0 (the fixture records every step's confidence gap,
//! all >= 1e-3, far above f32 rounding). The sampler runs as a step machine, one block per
//! call, as the generator drives it.

use std::path::{Path, PathBuf};

use kestrel_runtime::diffusion::{
    self, BlockCache, DiffusionConfig, DiffusionError, DiffusionSampler, StepReport,
};
use kestrel_tests::{gpus, rel_err};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llada")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture().join(name)).expect(name);
    serde_json::from_str(&text).expect("json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("npy");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytemuck::pod_collect_to_vec(&bytes[10 + hlen..])
}

#[test]
fn bidirectional_logits_match_the_reference() {
    let tokens = ids(&json("tokens.json")["tokens"]);
    let want = read_npy(&fixture().join("logits.npy"));
    for gpu in gpus() {
        let model = kestrel_models::load(&gpu, &fixture()).expect("load");
        assert!(!model.config().causal);
        assert_eq!(model.config().mask_token, Some(274));
        let mut s = model.session(&gpu, tokens.len()).expect("session");
        let got = pollster::block_on(s.logits(&tokens)).expect("forward");
        let e = rel_err(&got, &want);
        assert!(e <= 1e-4, "{}: relative error {e:e}", gpu.backend_name());
    }
}

fn case_config(case: &Value) -> DiffusionConfig {
    let threshold = case["threshold"].as_f64().map(|t| t as f32);
    DiffusionConfig {
        gen_length: case["gen_length"].as_u64().unwrap() as usize,
        block_length: case["block_length"].as_u64().unwrap() as usize,
        steps: case["steps"].as_u64().unwrap_or(0) as usize,
        temperature: 0.0,
        cfg_scale: case["cfg_scale"].as_f64().unwrap() as f32,
        random_remasking: false,
        threshold,
        cache: BlockCache::None,
        seed: 0,
    }
}

#[test]
fn sampler_trajectories_match_the_reference() {
    let cases = json("trajectories.json")["cases"].clone();
    for gpu in gpus() {
        let model = kestrel_models::load(&gpu, &fixture()).expect("load");
        let mask = model.config().mask_token.expect("mask token");
        for case in cases.as_array().expect("cases") {
            let name = case["name"].as_str().unwrap();
            let prompt = ids(&case["prompt"]);
            let config = case_config(case);
            let mut s = model
                .session(&gpu, prompt.len() + config.gen_length)
                .expect("session");
            let mut sampler =
                DiffusionSampler::new(&mut s, &prompt, mask, &config).expect("sampler");
            let mut trace: Vec<StepReport> = Vec::new();
            let mut blocks = 0;
            while let Some(block) =
                pollster::block_on(sampler.next_block(&mut s)).expect("next block")
            {
                // Each call fills exactly its block, in order.
                assert_eq!(block.index, blocks, "{name}");
                let start = prompt.len() + blocks * config.block_length;
                assert_eq!(
                    block.tokens,
                    sampler.sequence()[start..start + config.block_length],
                    "{name}"
                );
                assert!(!block.tokens.contains(&mask), "{name}");
                assert!(block.steps.iter().all(|t| t.block == blocks), "{name}");
                trace.extend(block.steps);
                blocks += 1;
            }
            assert_eq!(blocks, config.gen_length / config.block_length, "{name}");
            assert_eq!(sampler.generated(), config.gen_length, "{name}");
            let (out, stats) = (sampler.sequence().to_vec(), sampler.stats());
            let want: Vec<Vec<(u32, u32)>> = case["trace"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    t["committed"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_u64().unwrap() as u32))
                        .collect()
                })
                .collect();
            let got: Vec<Vec<(u32, u32)>> = trace.iter().map(|t| t.committed.clone()).collect();
            assert_eq!(got, want, "{name} on {}", gpu.backend_name());
            assert_eq!(out, ids(&case["final"]), "{name}");
            let cfg_passes = 1 + (config.cfg_scale != 0.0) as usize;
            assert_eq!(stats.forwards, want.len() * cfg_passes, "{name}");
        }
    }
}

#[test]
fn a_block_run_over_cached_prefix_and_suffix_equals_the_full_forward() {
    // The dual cache's step: after a full forward, re-running only positions 8..16 attends
    // over the cached rows before and after them; with the same tokens the logits must be
    // the full forward's rows.
    let tokens = ids(&json("tokens.json")["tokens"]);
    for gpu in gpus() {
        let model = kestrel_models::load(&gpu, &fixture()).expect("load");
        let vocab = model.config().vocab;
        let mut s = model.session(&gpu, tokens.len()).expect("session");
        let full = pollster::block_on(s.logits(&tokens)).expect("full");
        assert_eq!(s.truncate(8), 8);
        let block = pollster::block_on(s.logits(&tokens[8..16])).expect("block");
        let e = rel_err(&block, &full[8 * vocab..16 * vocab]);
        assert!(e <= 1e-5, "{}: relative error {e:e}", gpu.backend_name());
    }
}

#[test]
fn block_caches_run_fewer_positions() {
    let cases = json("trajectories.json")["cases"].clone();
    let case = &cases[1];
    let prompt = ids(&case["prompt"]);
    let gpu = gpus().into_iter().next().expect("gpu");
    let model = kestrel_models::load(&gpu, &fixture()).expect("load");
    let mask = model.config().mask_token.expect("mask");
    let run = |cache| {
        let config = DiffusionConfig {
            cache,
            ..case_config(case)
        };
        let mut s = model
            .session(&gpu, prompt.len() + config.gen_length)
            .expect("session");
        pollster::block_on(diffusion::generate(&mut s, &prompt, mask, &config)).expect("generate")
    };
    let (exact, e) = run(BlockCache::None);
    let (prefix, p) = run(BlockCache::Prefix);
    let (dual, d) = run(BlockCache::Dual);
    // Same number of steps; each block's first step is a full forward, later ones run from
    // the block to the end (prefix) or the block alone (dual).
    assert_eq!((e.forwards, p.forwards, d.forwards), (8, 8, 8));
    assert_eq!(e.positions_run, 8 * 24);
    assert_eq!(p.positions_run, 24 + 3 * 16 + 24 + 3 * 8);
    assert_eq!(d.positions_run, 2 * 24 + 6 * 8);
    for out in [&exact, &prefix, &dual] {
        assert_eq!(out.len(), 24);
        assert!(!out.contains(&mask));
    }
}

#[test]
fn a_sampler_refuses_what_it_cannot_run_naming_the_setting() {
    let gpu = gpus().into_iter().next().expect("gpu");
    let model = kestrel_models::load(&gpu, &fixture()).expect("load");
    let mask = model.config().mask_token.expect("mask");
    let case = &json("trajectories.json")["cases"][1];
    let ok = case_config(case);
    let mut s = model.session(&gpu, 24).expect("session");
    let refuse = |s: &mut kestrel_runtime::session::Session, prompt: &[u32], c: DiffusionConfig| {
        match DiffusionSampler::new(s, prompt, mask, &c) {
            Err(e) => e,
            Ok(_) => panic!("{c:?} was accepted"),
        }
    };
    let e = refuse(&mut s, &[1, 2], DiffusionConfig { steps: 7, ..ok });
    assert!(
        matches!(e, DiffusionError::Config(_)) && e.to_string().contains("steps 7"),
        "{e}"
    );
    let e = refuse(&mut s, &[1, mask], ok);
    assert!(
        matches!(e, DiffusionError::MaskInPrompt(m) if m == mask),
        "{e}"
    );
    let e = refuse(&mut s, &[1; 9], ok);
    assert!(
        matches!(
            e,
            DiffusionError::PastContext {
                prompt: 9,
                gen_length: 16,
                context: 24
            }
        ),
        "{e}"
    );
}

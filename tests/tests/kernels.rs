//! Every kernel against its CPU reference, from the runtime's table of kernel cases
//! (`kestrel_runtime::cases`, where the sizes, inputs and tolerances are defined and
//! justified), on every backend of `kestrel_tests::gpus()`: one test per kernel family here
//! for the plain kernels; attention, the linear recurrences, mixtures of experts, the
//! diffusion sampler and quantized weights have their own files. Besides the table:
//! Llama-3 RoPE scaling (CPU), the sampler's ties and draw statistics, and
//! `shaders_validate_without_gpu`, which checks every specialisation of every kernel in
//! `kernels::ALL` with naga on the CPU alone.

use std::collections::BTreeSet;

use kestrel_runtime::cases;
use kestrel_runtime::kernels::rope::{self, Llama3Scaling};
use kestrel_runtime::kernels::{sample, Step};
use kestrel_runtime::requirements::{INVOCATIONS_PER_WORKGROUP, STORAGE_BUFFERS_PER_STAGE};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::shader::INCLUDES;
use kestrel_runtime::Gpu;
use kestrel_tests::*;
use std::sync::Arc;

/// The family's cases that read no quantized weight (tests/tests/quant.rs runs the others).
fn plain(kernel: &str) -> Vec<cases::Case> {
    cases::family(kernel)
        .into_iter()
        .filter(|c| !c.quantized)
        .collect()
}

/// Every case is named uniquely within its family (a failure says which), and the browser's
/// subset spans at least ten kernel families (web/tests/browser.mjs expects ten).
#[test]
fn the_table_of_cases_is_well_formed() {
    let all = cases::all();
    let mut names = BTreeSet::new();
    for c in &all {
        assert!(
            names.insert((c.kernel, c.what.clone())),
            "{} {} is in the table twice",
            c.kernel,
            c.what
        );
    }
    let browser: BTreeSet<&str> = all.iter().filter(|c| c.browser).map(|c| c.kernel).collect();
    assert!(browser.len() >= 10, "the browser runs only {browser:?}");
    eprintln!(
        "{} kernel cases, {} in the browser",
        all.len(),
        all.iter().filter(|c| c.browser).count()
    );
}

#[test]
fn matmul_matches_reference() {
    check_cases(plain("matmul"));
}

#[test]
fn matvec_matches_reference() {
    check_cases(plain("matvec"));
}

#[test]
fn embedding_matches_reference() {
    check_cases(plain("embedding"));
}

#[test]
fn elementwise_matches_reference() {
    check_cases(cases::family("elementwise"));
}

#[test]
fn rms_norm_matches_reference() {
    check_cases(cases::family("rms_norm"));
}

#[test]
fn softmax_matches_reference() {
    check_cases(cases::family("softmax"));
}

#[test]
fn conv1d_matches_reference_and_carries_its_state() {
    check_cases(cases::family("conv1d"));
}

#[test]
fn head_concat_and_head_dot_match_reference() {
    check_cases(cases::family("head_concat"));
    check_cases(cases::family("head_dot"));
}

#[test]
fn token_mix_matches_reference() {
    check_cases(cases::family("token_mix"));
}

#[test]
fn delta_ab_matches_reference() {
    check_cases(cases::family("delta_ab"));
}

#[test]
fn rope_matches_reference() {
    check_cases(cases::family("rope"));
}

#[test]
fn rope_cache_write_matches_reference() {
    check_cases(cases::family("rope_cache_write"));
}

#[test]
fn copy_matches_reference() {
    check_cases(cases::family("copy"));
}

#[test]
fn decode_gate_matches_reference() {
    check_cases(cases::family("decode_gate"));
}

#[test]
fn sample_greedy_matches_reference() {
    check_cases(cases::family("sample"));
}

#[test]
fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
    let s = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    };
    let plain = rope::inv_freq(500000.0, 128, None);
    let scaled = rope::inv_freq(500000.0, 128, Some(s));
    let mut regimes = [0; 3];
    for (&p, &q) in plain.iter().zip(&scaled) {
        let wavelen = 2.0 * std::f32::consts::PI / p;
        if wavelen < 8192.0 / 4.0 {
            assert_eq!(p, q);
            regimes[0] += 1;
        } else if wavelen > 8192.0 {
            assert_eq!(p / 8.0, q);
            regimes[2] += 1;
        } else {
            assert!(
                q < p && q > p / 8.0,
                "smoothed frequency {q} outside ({}, {p})",
                p / 8.0
            );
            regimes[1] += 1;
        }
    }
    assert!(
        regimes.iter().all(|&c| c > 0),
        "all three regimes exercised: {regimes:?}"
    );
}

// ---------------------------------------------------------------- sampling

/// Sample once per step from row `row` of `rows` rows of logits; one submission for all steps.
fn sample_all(
    gpu: &Arc<Gpu>,
    logits: &[f32],
    vocab: usize,
    row: usize,
    steps: &[Step],
) -> Vec<u32> {
    let lb = upload_f32(gpu, logits);
    let outs: Vec<_> = steps.iter().map(|_| upload_u32(gpu, &[u32::MAX])).collect();
    let step_bufs: Vec<_> = steps.iter().map(|s| step_buffer(gpu, s)).collect();
    let d: Vec<_> = step_bufs
        .iter()
        .zip(&outs)
        .map(|(sb, ob)| sample::launch(gpu, sb, &lb, ob, vocab, row * vocab).unwrap())
        .collect();
    run(gpu, &d);
    outs.iter().map(|o| read_u32(gpu, o, 1)[0]).collect()
}

#[test]
fn sample_greedy_is_argmax_with_ties_to_lowest() {
    // Tied maxima placed in the same lane (44, 300), neighbouring lanes, the first and the last id.
    let ties: [(usize, &[usize]); 7] = [
        (1000, &[700, 5, 999]),
        (1000, &[513, 258]),
        (1000, &[300, 44]),
        (1000, &[999]),
        (1000, &[1, 0]),
        (49152, &[49151, 30000, 256]),
        (49152, &[40000, 39999]),
    ];
    for gpu in gpus() {
        for (i, &(vocab, at)) in ties.iter().enumerate() {
            let mut rng = Rng::new(1300 + i as u64);
            let mut logits = rng.vec(3 * vocab, 4.0);
            for &j in at {
                logits[2 * vocab + j] = 9.5;
            }
            let expect = *at.iter().min().unwrap() as u32;
            assert_eq!(sample::argmax(&logits[2 * vocab..]), expect);
            let greedy = Step {
                temperature: 0.0,
                ..step(0, 1)
            };
            let top1 = Step {
                temperature: 0.8,
                top_k: 1,
                seed: 5,
                ..step(0, 1)
            };
            let got = sample_all(&gpu, &logits, vocab, 2, &[greedy, top1]);
            assert_eq!(
                got,
                [expect, expect],
                "vocab {vocab} ties {at:?} on {}",
                gpu.backend_name()
            );
        }
        // All logits equal: the first id.
        let got = sample_all(&gpu, &vec![0.25; 1000], 1000, 0, &[step(0, 1)]);
        assert_eq!(got, [0], "all-equal logits on {}", gpu.backend_name());
    }
}

#[test]
fn sample_temperature_top_k_top_p_matches_reference() {
    const SEEDS: u32 = 20;
    for gpu in gpus() {
        for (vi, vocab) in [1000usize, 49152].into_iter().enumerate() {
            let mut rng = Rng::new(1400 + vi as u64);
            let logits = rng.vec(2 * vocab, 4.0);
            let row = &logits[vocab..];
            for (top_k, top_p) in [(0, 1.0), (20, 1.0), (0, 0.9), (20, 0.9)] {
                let steps: Vec<Step> = (0..SEEDS)
                    .map(|s| Step {
                        temperature: 0.8,
                        top_k,
                        top_p,
                        seed: s.wrapping_mul(2_654_435_761).wrapping_add(vi as u32),
                        ..step(0, 1)
                    })
                    .collect();
                let got = sample_all(&gpu, &logits, vocab, 1, &steps);
                let mut exact = 0;
                for (s, &tok) in steps.iter().zip(&got) {
                    let cands = sample::reference(row, s);
                    let what = format!(
                        "sample vocab={vocab} top_k={top_k} top_p={top_p} seed={} on {}: token {tok}, reference pick {}, {} candidates",
                        s.seed,
                        gpu.backend_name(),
                        cands.pick(),
                        cands.kept.len()
                    );
                    assert!(cands.accepts(tok, 1e-4), "{what}: not an acceptable draw");
                    exact += (tok == cands.pick()) as u32;
                }
                assert!(
                    exact >= SEEDS - 2,
                    "vocab={vocab} top_k={top_k} top_p={top_p} on {}: only {exact}/{SEEDS} draws equal the exact pick",
                    gpu.backend_name()
                );
            }
        }
    }
}

// ---------------------------------------------------------------- shaders on the CPU

/// Parse, validate, and translate to SPIR-V and GLSL ES 3.10 (the GL backend's language)
/// every specialisation of every kernel in `kernels::ALL`; also check what the runtime
/// requires of an adapter (`requirements`) and WebGPU's default workgroup memory: at most
/// `STORAGE_BUFFERS_PER_STAGE` storage buffers, 16 KiB of workgroup memory and
/// `INVOCATIONS_PER_WORKGROUP` invocations per workgroup. Every shaders/*.wgsl file must be a
/// kernel of the list, the prelude or an included snippet.
#[test]
fn shaders_validate_without_gpu() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    let mut listed = BTreeSet::new();
    let mut checked = 0;
    for kernel in kestrel_runtime::kernels::ALL {
        assert!(
            listed.insert(kernel.name),
            "{} is listed twice",
            kernel.name
        );
        let on_disk = std::fs::read_to_string(dir.join(format!("{}.wgsl", kernel.name)));
        assert_eq!(
            on_disk.ok().as_deref(),
            Some(kernel.source),
            "kernels::ALL's {} is not shaders/{0}.wgsl",
            kernel.name
        );
        let variants = (kernel.variants)();
        assert!(!variants.is_empty(), "{} has no variants", kernel.name);
        for defs in variants {
            let what = format!("shaders/{}.wgsl with {}", kernel.name, defs.key());
            for shader_f16 in [false, true] {
                check_shader(&what, &defs.render(kernel.source, shader_f16));
            }
            checked += 1;
        }
    }
    let included: BTreeSet<String> = std::iter::once("common")
        .chain(
            INCLUDES
                .iter()
                .map(|(name, _)| name.trim_end_matches(".wgsl")),
        )
        .map(String::from)
        .collect();
    for name in &files {
        assert!(
            listed.contains(name.as_str()) || included.contains(name),
            "shaders/{name}.wgsl is neither in kernels::ALL nor the prelude or an #include"
        );
    }
    assert!(checked >= 100, "only {checked} specialisations checked");
}

fn check_shader(what: &str, code: &str) {
    use naga::back::{glsl, spv};
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    let module = naga::front::wgsl::parse_str(code)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(code)));
    // unpack2x16float is core WGSL; wgpu grants naga this capability on Vulkan, GL and the web.
    let caps = Capabilities::default() | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    // A kernel that needs subgroup operations or f16 arithmetic (`enable f16`; the runtime
    // picks either only on adapters with the feature, never on GL) is validated with that
    // capability and not as GLSL.
    let subgroups = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .is_err();
    let caps = match subgroups {
        true => caps | Capabilities::SUBGROUP | Capabilities::SHADER_FLOAT16,
        false => caps,
    };
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(code)));

    let storage = module
        .global_variables
        .iter()
        .filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. }))
        .count();
    assert!(
        storage <= STORAGE_BUFFERS_PER_STAGE as usize,
        "{what}: {storage} storage buffers (the runtime requires {STORAGE_BUFFERS_PER_STAGE})"
    );
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let workgroup_bytes: u32 = module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| layouter[g.ty].size)
        .sum();
    assert!(
        workgroup_bytes <= 16384,
        "{what}: {workgroup_bytes} bytes of workgroup memory (WebGPU allows 16384)"
    );
    let [ep] = module.entry_points.as_slice() else {
        panic!("{what}: expected one entry point");
    };
    assert_eq!(ep.name, "main", "{what}");
    let invocations: u32 = ep.workgroup_size.iter().product();
    assert!(
        invocations <= INVOCATIONS_PER_WORKGROUP,
        "{what}: workgroup of {invocations} invocations (the runtime requires {INVOCATIONS_PER_WORKGROUP})"
    );

    spv::write_vec(&module, &info, &spv::Options::default(), None)
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    if subgroups {
        return;
    }
    let mut glsl_code = String::new();
    let options = glsl::Options {
        version: glsl::Version::new_gles(310),
        ..glsl::Options::default()
    };
    let pipeline = glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
        multiview: None,
    };
    glsl::Writer::new(
        &mut glsl_code,
        &module,
        &info,
        &options,
        &pipeline,
        Default::default(),
    )
    .and_then(|mut w| w.write())
    .unwrap_or_else(|e| panic!("{what}: GLSL: {e}"));
}

//! The diffusion-LM sampler (`kernels::unmask`: LLaDA low-confidence / random remasking,
//! Fast-dLLM threshold) against its f64 CPU reference, on every backend of
//! `kestrel_tests::gpus()`. Outputs and scratch start poisoned (NaN bits); the committed
//! (position, token) pairs must equal the reference exactly, and the words after them must
//! stay poisoned.
//!
//! Exact agreement needs every decision away from f32 rounding: cases are drawn from a seed
//! and redrawn (next seed) until every argmax margin is >= 1e-4 (logit units; f32 rounding of
//! the scores is ~1e-6) and, for softmax confidences, neighbouring confidences and the
//! threshold differ by >= 1e-5 relative (the GPU's f32 softmax is within ~1e-6). Random
//! remasking confidences and the Gumbel uniforms come from the same PCG hash on both sides,
//! so ties there are exact and resolved by the same rule.

use std::sync::Arc;

use kestrel_runtime::kernels::unmask::{self, Params, Prediction};
use kestrel_runtime::kernels::Step;
use kestrel_runtime::rng::Rng;
use kestrel_runtime::Gpu;
use kestrel_tests::*;

const NAN_BITS: u32 = 0x7fc0_0000;
const NEG_INF_BITS: u32 = 0xff80_0000;
const MARGIN: f64 = 1e-4;
const CONF_GAP: f64 = 1e-5;

#[derive(Clone)]
struct Case {
    logits: Vec<f32>,
    uncond: Option<Vec<f32>>,
    tokens: Vec<u32>,
    params: Params,
    step: Step,
}

impl Case {
    fn reference(&self) -> Vec<(u32, u32)> {
        unmask::reference(
            &self.logits,
            self.uncond.as_deref(),
            &self.tokens,
            &self.params,
            &self.step,
        )
    }
    fn predictions(&self) -> Vec<Prediction> {
        unmask::predictions(
            &self.logits,
            self.uncond.as_deref(),
            &self.tokens,
            &self.params,
            &self.step,
        )
    }
    fn describe(&self) -> String {
        let (p, s) = (&self.params, &self.step);
        format!(
            "rows {} vocab {} pos {} window [{}, {}) top_k {} threshold {} T {} seed {} cfg {} \
             random {}",
            p.rows,
            p.vocab,
            s.pos,
            s.window_start,
            s.window_end,
            s.unmask_k,
            s.threshold,
            s.temperature,
            s.seed,
            p.cfg_scale,
            p.random_remasking
        )
    }
}

/// Whether every decision of `case` is far from f32 rounding (see the module notes).
fn robust(case: &Case) -> bool {
    let preds = case.predictions();
    if preds.iter().any(|p| p.margin < MARGIN) {
        return false;
    }
    if case.params.random_remasking {
        return true;
    }
    let mut c: Vec<f64> = preds.iter().map(|p| p.confidence).collect();
    c.sort_by(|a, b| b.total_cmp(a));
    // Wider gaps, so that thresholds placed midway keep CONF_GAP.
    let gaps_ok = c.windows(2).all(|w| w[0] - w[1] >= 3.0 * CONF_GAP * w[0]);
    let thr = case.step.threshold as f64;
    let threshold_ok =
        case.step.unmask_k > 0 || c.iter().all(|&v| (v - thr).abs() >= CONF_GAP * v.max(thr));
    gaps_ok && threshold_ok
}

/// The settings of a drawn case.
#[derive(Clone, Copy)]
struct Spec {
    rows: usize,
    vocab: usize,
    pos: u32,
    top_k: u32,
    threshold: f32,
    temperature: f32,
    cfg_scale: f32,
    random_remasking: bool,
}

impl Spec {
    fn new(rows: usize, vocab: usize, pos: u32) -> Spec {
        Spec {
            rows,
            vocab,
            pos,
            top_k: 1,
            threshold: 1.0,
            temperature: 0.0,
            cfg_scale: 0.0,
            random_remasking: false,
        }
    }
}

/// Random logits with a per-row scale (so confidences spread), about 3/4 of the rows masked.
/// With 3 or more rows the window leaves out the first and last rows, both masked; row 1 is
/// inside but not masked, and from 4 rows on, row `rows - 2` is a masked row inside (so at
/// least one candidate). With fewer rows the window takes all and row 0 is masked.
fn draw(spec: Spec, seed: u64) -> Case {
    let Spec {
        rows, vocab, pos, ..
    } = spec;
    let mut rng = Rng::new(seed);
    let mask_id = (2 * vocab / 3) as u32;
    let mut logits = Vec::with_capacity(rows * vocab);
    for _ in 0..rows {
        let scale = 1.0 + 7.0 * (rng.uniform() + 1.0) / 2.0;
        logits.extend(rng.vec(vocab, scale));
    }
    let uncond = (spec.cfg_scale != 0.0).then(|| rng.vec(rows * vocab, 3.0));
    let mut tokens: Vec<u32> = (0..rows)
        .map(|_| {
            if rng.below(4) == 0 {
                (mask_id + 1 + rng.below(vocab as u32 - 1)) % vocab as u32
            } else {
                mask_id
            }
        })
        .collect();
    let (window_start, window_end) = if rows >= 3 {
        tokens[0] = mask_id;
        tokens[rows - 1] = mask_id;
        tokens[1] = (mask_id + 1) % vocab as u32;
        if rows >= 4 {
            tokens[rows - 2] = mask_id;
        }
        (pos + 1, pos + rows as u32 - 1)
    } else {
        tokens[0] = mask_id;
        (pos, pos + rows as u32)
    };
    Case {
        logits,
        uncond,
        tokens,
        params: Params {
            rows,
            vocab,
            mask_id,
            cfg_scale: spec.cfg_scale,
            random_remasking: spec.random_remasking,
        },
        step: Step {
            pos,
            n_tokens: rows as u32,
            seed: (seed as u32).wrapping_mul(2_654_435_761),
            unmask_k: spec.top_k,
            temperature: spec.temperature,
            threshold: spec.threshold,
            window_start,
            window_end,
            ..Step::default()
        },
    }
}

/// The first robust case drawn from `seed`, `seed + 1`, ...
fn robust_case(spec: Spec, seed: u64) -> Case {
    for s in seed..seed + 50 {
        let case = draw(spec, s);
        if robust(&case) {
            return case;
        }
    }
    panic!("no robust case in 50 draws from seed {seed}");
}

/// Run one case; returns the committed pairs and the scratch words. Checks the words after
/// the pairs are untouched.
fn run_case(gpu: &Arc<Gpu>, case: &Case) -> (Vec<(u32, u32)>, Vec<u32>) {
    let rows = case.params.rows;
    let lb = upload_f32(gpu, &case.logits);
    let ub = case.uncond.as_ref().map(|u| upload_f32(gpu, u));
    let tb = upload_u32(gpu, &case.tokens);
    let scratch = poisoned(gpu, unmask::scratch_words(rows));
    let out = poisoned(gpu, unmask::out_words(rows));
    let sb = step_buffer(gpu, &case.step);
    let d = unmask::launch(
        gpu,
        &sb,
        &lb,
        ub.as_ref(),
        &tb,
        &scratch,
        &out,
        &case.params,
    )
    .unwrap_or_else(|e| panic!("{}: launch: {e}", case.describe()));
    run(gpu, &d);
    let words = read_u32(gpu, &out, unmask::out_words(rows));
    let count = words[0] as usize;
    assert!(
        count <= rows,
        "{} on {}: count {count:#x}",
        case.describe(),
        gpu.backend_name()
    );
    let pairs: Vec<(u32, u32)> = (0..count)
        .map(|i| (words[1 + 2 * i], words[2 + 2 * i]))
        .collect();
    assert!(
        words[1 + 2 * count..].iter().all(|&w| w == NAN_BITS),
        "{} on {}: words after the {count} pairs were written",
        case.describe(),
        gpu.backend_name()
    );
    let scratch = read_u32(gpu, &scratch, unmask::scratch_words(rows));
    (pairs, scratch)
}

/// Run `case` on every backend: pairs equal to the reference, scratch consistent with the
/// reference's predictions. Returns the pairs.
fn check(case: &Case) -> Vec<(u32, u32)> {
    let expect = case.reference();
    let preds = case.predictions();
    for gpu in gpus() {
        let what = format!("{} on {}", case.describe(), gpu.backend_name());
        let (pairs, scratch) = run_case(&gpu, case);
        if std::env::var_os("KESTREL_TEST_VERBOSE").is_some() {
            eprintln!("{what}: {pairs:?}");
        }
        if pairs != expect {
            let i = pairs
                .iter()
                .zip(&expect)
                .take_while(|(a, b)| a == b)
                .count();
            panic!(
                "{what}: committed {} pairs, reference {}; first difference at {i}: gpu {:?}, \
                 reference {:?}",
                pairs.len(),
                expect.len(),
                pairs.get(i),
                expect.get(i)
            );
        }
        for r in 0..case.params.rows {
            let position = case.step.pos + r as u32;
            let (id, conf) = (scratch[2 * r], scratch[2 * r + 1]);
            match preds.iter().find(|p| p.position == position) {
                Some(p) => {
                    assert_eq!(id, p.token, "{what}: row {r} token");
                    let c = f32::from_bits(conf) as f64;
                    if case.params.random_remasking {
                        assert_eq!(c, p.confidence, "{what}: row {r} random confidence");
                    } else {
                        assert!(
                            (c - p.confidence).abs() <= 1e-5 * p.confidence + 1e-30,
                            "{what}: row {r} confidence {c} vs {}",
                            p.confidence
                        );
                    }
                }
                None => {
                    assert_eq!(
                        (id, conf),
                        (case.tokens[r], NEG_INF_BITS),
                        "{what}: row {r} is no candidate"
                    );
                }
            }
        }
    }
    expect
}

const SHAPES: [(usize, usize, u32); 7] = [
    (1, 37, 0),
    (7, 37, 5),
    (33, 37, 100),
    (1, 320, 9),
    (7, 320, 0),
    (33, 1000, 3),
    (7, 1000, 64),
];

/// Top-k over greedy (or noisy) argmaxes: k = 1, 2, 5 and more than the candidates.
fn top_k_cases(base: Spec, seed: u64) {
    let mut seed = seed;
    for (rows, vocab, pos) in SHAPES {
        for k in [1u32, 2, 5, rows as u32 + 3] {
            seed += 100;
            let spec = Spec {
                top_k: k,
                ..Spec {
                    rows,
                    vocab,
                    pos,
                    ..base
                }
            };
            let case = robust_case(spec, seed);
            let n = case.predictions().len();
            let got = check(&case);
            assert_eq!(got.len(), n.min(k as usize), "{}", case.describe());
            // Never a position outside the window or not masked.
            for (p, _) in &got {
                let r = (p - case.step.pos) as usize;
                assert_eq!(case.tokens[r], case.params.mask_id);
                assert!(*p >= case.step.window_start && *p < case.step.window_end);
            }
        }
    }
}

/// Threshold mode with thresholds that let 0 (still the top-1 is committed), 1, 3 and all
/// candidates pass.
fn threshold_cases(base: Spec, seed: u64) {
    let mut seed = seed;
    for (rows, vocab, pos) in SHAPES {
        seed += 100;
        let spec = Spec {
            top_k: 0,
            ..Spec {
                rows,
                vocab,
                pos,
                ..base
            }
        };
        // Draw with a threshold above every confidence, then place the others between them.
        let first = robust_case(
            Spec {
                threshold: 1.5,
                ..spec
            },
            seed,
        );
        let mut c: Vec<f64> = first.predictions().iter().map(|p| p.confidence).collect();
        c.sort_by(|a, b| b.total_cmp(a));
        let mut thresholds = vec![(((1.0 + c[0]) / 2.0) as f32, 1)];
        if c.len() >= 2 {
            thresholds.push((((c[0] + c[1]) / 2.0) as f32, 1));
        }
        if c.len() >= 4 {
            thresholds.push((((c[2] + c[3]) / 2.0) as f32, 3));
        }
        thresholds.push(((c[c.len() - 1] / 2.0) as f32, c.len()));
        for (threshold, n) in thresholds {
            let mut case = first.clone();
            case.step.threshold = threshold;
            if !base.random_remasking {
                assert!(robust(&case), "{}: not robust", case.describe());
            }
            let got = check(&case);
            assert_eq!(got.len(), n, "{}", case.describe());
        }
    }
}

#[test]
fn unmask_top_k_greedy() {
    top_k_cases(Spec::new(0, 0, 0), 1000);
}

#[test]
fn unmask_threshold_greedy() {
    threshold_cases(Spec::new(0, 0, 0), 2000);
}

#[test]
fn unmask_cfg() {
    for cfg_scale in [1.0, 0.5] {
        let base = Spec {
            cfg_scale,
            ..Spec::new(0, 0, 0)
        };
        top_k_cases(base, 3000);
        threshold_cases(base, 3500);
    }
}

#[test]
fn unmask_temperature() {
    let base = Spec {
        temperature: 0.7,
        ..Spec::new(0, 0, 0)
    };
    top_k_cases(base, 4000);
    threshold_cases(base, 4500);
    let cfg = Spec {
        cfg_scale: 1.0,
        ..base
    };
    top_k_cases(cfg, 4700);
}

/// With temperature the choice depends on the seed and differs from the argmax.
#[test]
fn unmask_temperature_draws_vary() {
    let spec = Spec {
        top_k: 1000,
        temperature: 1.0,
        ..Spec::new(33, 320, 0)
    };
    let (a_case, b_case) = (5000..5050)
        .map(|s| {
            let a = draw(spec, s);
            let mut b = a.clone();
            b.step.seed ^= 0x1234_5678;
            (a, b)
        })
        .find(|(a, b)| robust(a) && robust(b))
        .expect("no robust case");
    let a = check(&a_case);
    let b = check(&b_case);
    let mut greedy = a_case.clone();
    greedy.step.temperature = 0.0;
    let g = greedy.reference();
    assert_eq!(a.len(), g.len());
    assert!(a != b, "two seeds gave the same draw");
    assert!(a != g, "temperature 1 gave the argmax everywhere");
}

/// The GPU's Gumbel noise to ~1e-4: two-token rows whose logit gap cancels the noise gap up
/// to a margin of 2e-4 to 1e-3 either way, so a noise error above the margin flips the
/// choice. Also at draws u within 2^-17 of 1 (the largest noise, where -ln u needs care).
#[test]
fn unmask_gumbel_noise_is_accurate() {
    let seed = 0x5eed_u32;
    let tight = |pos: u32, rows: usize, rng: &mut Rng| {
        let mut logits = Vec::with_capacity(2 * rows);
        for r in 0..rows {
            let position = pos + r as u32;
            let gap = unmask::gumbel(seed, position, 0) - unmask::gumbel(seed, position, 1);
            let delta = (2e-4 + 8e-4 * (rng.uniform() as f64 + 1.0) / 2.0)
                * if rng.below(2) == 0 { 1.0 } else { -1.0 };
            logits.extend([0.0, (gap + delta) as f32]);
        }
        Case {
            logits,
            uncond: None,
            tokens: vec![5; rows],
            params: Params {
                rows,
                vocab: 2,
                mask_id: 5,
                cfg_scale: 0.0,
                random_remasking: false,
            },
            step: Step {
                pos,
                n_tokens: rows as u32,
                seed,
                unmask_k: rows as u32,
                temperature: 1.0,
                threshold: 1.0,
                window_start: 0,
                window_end: u32::MAX,
                ..Step::default()
            },
        }
    };
    let mut rng = Rng::new(9500);
    let case = tight(1000, unmask::MAX_ROWS, &mut rng);
    assert!(case.predictions().iter().all(|p| p.margin >= MARGIN));
    let got = check(&case);
    let ones = got.iter().filter(|&&(_, t)| t == 1).count();
    assert!(
        ones > 400 && ones < 624,
        "{ones} of 1024 rows chose token 1"
    );
    let near_one: Vec<u32> = (0..1u32 << 21)
        .filter(|&p| unmask::token_hash(seed, p, 0) >> 9 >= (1 << 23) - 64)
        .collect();
    assert!(near_one.len() >= 8, "{} draws near 1", near_one.len());
    for &p in &near_one {
        let case = tight(p, 1, &mut rng);
        assert!(case.predictions()[0].margin >= MARGIN);
        assert!(unmask::gumbel(seed, p, 0) > 11.0);
        check(&case);
    }
}

#[test]
fn unmask_random_remasking() {
    for temperature in [0.0, 0.7] {
        let base = Spec {
            random_remasking: true,
            temperature,
            ..Spec::new(0, 0, 0)
        };
        top_k_cases(base, 6000);
        threshold_cases(base, 6500);
    }
}

/// Nothing to commit: no masked row, or the window holds none.
#[test]
fn unmask_nothing_to_commit() {
    for top_k in [0, 3] {
        let mut case = draw(
            Spec {
                top_k,
                threshold: 0.0,
                ..Spec::new(7, 37, 10)
            },
            7000,
        );
        let all = case.clone();
        case.tokens = vec![1; 7];
        assert_eq!(check(&case), vec![]);
        for (ws, we) in [(0, 10), (17, 40), (12, 12), (14, 12)] {
            let mut c = all.clone();
            c.step.window_start = ws;
            c.step.window_end = we;
            assert_eq!(check(&c), vec![], "window [{ws}, {we})");
        }
    }
}

/// Argmax ties go to the lowest id; confidence ties to the lower position (in top-k and as the
/// threshold mode's top-1).
#[test]
fn unmask_ties() {
    let (rows, vocab) = (5, 300);
    let mask_id = 299;
    let mut rng = Rng::new(7100);
    let mut logits = rng.vec(rows * vocab, 2.0);
    // Row 0: tied maxima at 259, 3, 131 (259 and 3 in the same lane of 256).
    for &j in &[259, 3, 131] {
        logits[j] = 5.0;
    }
    // Rows 1 and 3 identical and the most confident; row 2 and 4 less.
    let peak: Vec<f32> = (0..vocab)
        .map(|v| if v == 77 { 9.0 } else { (v % 7) as f32 * 0.1 })
        .collect();
    logits[vocab..2 * vocab].copy_from_slice(&peak);
    logits[3 * vocab..4 * vocab].copy_from_slice(&peak);
    let params = Params {
        rows,
        vocab,
        mask_id,
        cfg_scale: 0.0,
        random_remasking: false,
    };
    let step = Step {
        pos: 40,
        n_tokens: rows as u32,
        window_start: 40,
        window_end: 45,
        unmask_k: 1,
        threshold: 1.0,
        ..Step::default()
    };
    let base = Case {
        logits,
        uncond: None,
        tokens: vec![mask_id; rows],
        params,
        step,
    };
    assert_eq!(check(&base), vec![(41, 77)]);
    let mut two = base.clone();
    two.step.unmask_k = 2;
    assert_eq!(check(&two), vec![(41, 77), (43, 77)]);
    let mut thr = base.clone();
    thr.step.unmask_k = 0;
    thr.step.threshold = 1.0;
    assert_eq!(check(&thr), vec![(41, 77)]);
    // Row 0's argmax: the lowest of the tied ids.
    let mut row0 = base.clone();
    row0.tokens = vec![mask_id, 1, 1, 1, 1];
    assert_eq!(check(&row0), vec![(40, 3)]);
}

/// LLaDA's vocab (126464): the strided loops over a long row, greedy and with noise.
#[test]
fn unmask_large_vocab() {
    for (temperature, seed) in [(0.0, 8000), (0.7, 8100)] {
        let spec = Spec {
            top_k: 2,
            temperature,
            ..Spec::new(3, 126_464, 30)
        };
        // Rows 0 and 2 masked, row 1 not; the window takes all three.
        let case = (seed..seed + 50)
            .map(|s| {
                let mut c = draw(spec, s);
                c.step.window_start = 30;
                c.step.window_end = 33;
                c
            })
            .find(robust)
            .expect("no robust case");
        assert_eq!(check(&case).len(), 2);
    }
}

/// The largest launch, 1024 rows: distinct confidences by construction (one peak per row,
/// heights a permutation), and random remasking.
#[test]
fn unmask_max_rows() {
    let (rows, vocab) = (unmask::MAX_ROWS, 37);
    let mask_id = 36;
    let mut rng = Rng::new(9000);
    let mut perm: Vec<usize> = (0..rows).collect();
    for i in (1..rows).rev() {
        perm.swap(i, rng.below(i as u32 + 1) as usize);
    }
    let mut logits = vec![0.0f32; rows * vocab];
    for r in 0..rows {
        let peak = rng.below(36) as usize;
        logits[r * vocab + peak] = 1.0 + 6.0 * perm[r] as f32 / rows as f32;
    }
    let tokens: Vec<u32> = (0..rows)
        .map(|r| if r % 5 == 4 { 2 } else { mask_id })
        .collect();
    for random_remasking in [false, true] {
        for (top_k, top_p) in [(300, 1.0), (0, 0.5), (1, 1.0), (2000, 1.0)] {
            let case = Case {
                logits: logits.clone(),
                uncond: None,
                tokens: tokens.clone(),
                params: Params {
                    rows,
                    vocab,
                    mask_id,
                    cfg_scale: 0.0,
                    random_remasking,
                },
                step: Step {
                    pos: 7,
                    n_tokens: rows as u32,
                    seed: 99,
                    unmask_k: top_k,
                    temperature: 0.0,
                    threshold: top_p,
                    window_start: 20,
                    window_end: 1000,
                    ..Step::default()
                },
            };
            assert!(random_remasking || robust(&case), "{}", case.describe());
            let got = check(&case);
            assert!(!got.is_empty());
        }
    }
}

#[test]
fn unmask_rejects_bad_launches() {
    let gpu = &gpus()[0];
    let params = Params {
        rows: 4,
        vocab: 10,
        mask_id: 9,
        cfg_scale: 0.0,
        random_remasking: false,
    };
    let logits = upload_f32(gpu, &[0.0; 40]);
    let tokens = upload_u32(gpu, &[9; 4]);
    let scratch = poisoned(gpu, unmask::scratch_words(4));
    let out = poisoned(gpu, unmask::out_words(4));
    let sb = step_buffer(gpu, &step(0, 4));
    let launch = |p: &Params, uncond: Option<&wgpu::Buffer>, out: &wgpu::Buffer| {
        unmask::launch(gpu, &sb, &logits, uncond, &tokens, &scratch, out, p)
    };
    assert!(launch(&params, None, &out).is_ok());
    for rows in [0, unmask::MAX_ROWS + 1] {
        let e = launch(&Params { rows, ..params }, None, &out).unwrap_err();
        assert!(e.to_string().contains("rows"), "{e}");
    }
    let cfg = Params {
        cfg_scale: 1.0,
        ..params
    };
    let e = launch(&cfg, None, &out).unwrap_err();
    assert!(e.to_string().contains("unconditional"), "{e}");
    let small_out = poisoned(gpu, unmask::out_words(4) - 1);
    let e = launch(&params, None, &small_out).unwrap_err();
    assert!(e.to_string().contains("out"), "{e}");
    let e = launch(
        &Params {
            vocab: 11,
            ..params
        },
        None,
        &out,
    )
    .unwrap_err();
    assert!(e.to_string().contains("logits"), "{e}");
}

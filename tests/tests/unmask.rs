//! The diffusion-LM sampler (`kernels::unmask`: LLaDA low-confidence / random remasking,
//! Fast-dLLM threshold) against its f64 CPU reference, exactly: top-k and threshold modes,
//! greedy and with Gumbel noise, with classifier-free guidance, random remasking, LLaDA's
//! vocabulary and the largest launch — the runtime's table of kernel cases
//! (`kestrel_runtime::cases`, where cases are drawn until every decision is far from f32
//! rounding) on every backend. Besides the table: seeds that change the draw, the accuracy
//! of the GPU's Gumbel noise, steps with nothing to commit, ties, and bad launches.

use kestrel_runtime::cases::{self, unmask_draw as draw, unmask_robust as robust};
use kestrel_runtime::cases::{UnmaskCase as Case, UnmaskSpec as Spec};
use kestrel_runtime::kernels::unmask::{self, Params};
use kestrel_runtime::kernels::Step;
use kestrel_runtime::rng::Rng;
use kestrel_tests::*;

/// Argmax margins below this are too close to f32 rounding for an exact comparison.
const MARGIN: f64 = 1e-4;

/// Run `case` on every backend (pairs, untouched words and scratch as the reference says);
/// returns the committed pairs.
fn check(case: &Case) -> Vec<(u32, u32)> {
    check_cases([case.clone().check()]);
    case.reference()
}

#[test]
fn unmask_matches_reference() {
    check_cases(cases::family("unmask"));
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

//! The diffusion-LM sampler (`kernels::unmask`: LLaDA low-confidence / random remasking,
//! Fast-dLLM threshold) against its f64 CPU reference. Outputs and scratch start poisoned
//! (NaN bits); the committed (position, token) pairs must equal the reference exactly, the
//! words after them must stay poisoned, and the scratch must hold each row's prediction.
//!
//! Exact agreement needs every decision away from f32 rounding: cases are drawn from a seed
//! and redrawn (next seed) until every argmax margin is >= 1e-4 (logit units; f32 rounding of
//! the scores is ~1e-6) and, for softmax confidences, neighbouring confidences and the
//! threshold differ by >= 1e-5 relative (the GPU's f32 softmax is within ~1e-6, the
//! tolerance of the confidences in the scratch). Random remasking confidences and the Gumbel
//! uniforms come from the same PCG hash on both sides, so ties there are exact and resolved
//! by the same rule.

use super::{
    bad_case, poisoned, step_buffer, upload_f32, upload_u32, Case, Expect, Output, Prepared,
};
use crate::device::Gpu;
use crate::error::Result;
use crate::kernels::unmask::{self, Params, Prediction};
use crate::kernels::{Dispatch, Step};
use crate::rng::Rng;

const NAN_BITS: u32 = 0x7fc0_0000;
const MARGIN: f64 = 1e-4;
const CONF_GAP: f64 = 1e-5;

/// One launch's inputs.
#[derive(Clone)]
pub struct UnmaskCase {
    pub logits: Vec<f32>,
    pub uncond: Option<Vec<f32>>,
    pub tokens: Vec<u32>,
    pub params: Params,
    pub step: Step,
}

impl UnmaskCase {
    pub fn reference(&self) -> Vec<(u32, u32)> {
        unmask::reference(
            &self.logits,
            self.uncond.as_deref(),
            &self.tokens,
            &self.params,
            &self.step,
        )
    }

    pub fn predictions(&self) -> Vec<Prediction> {
        unmask::predictions(
            &self.logits,
            self.uncond.as_deref(),
            &self.tokens,
            &self.params,
            &self.step,
        )
    }

    pub fn describe(&self) -> String {
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

    /// The launch, its outputs poisoned, and what they must hold: the committed pairs (the
    /// words after them untouched) and each row's prediction in the scratch.
    fn launch(&self, gpu: &Gpu, label: &str) -> Result<(Vec<Dispatch>, Vec<Output>)> {
        let rows = self.params.rows;
        let lb = upload_f32(gpu, &self.logits);
        let ub = self.uncond.as_ref().map(|u| upload_f32(gpu, u));
        let tb = upload_u32(gpu, &self.tokens);
        let scratch = poisoned(gpu, unmask::scratch_words(rows));
        let out = poisoned(gpu, unmask::out_words(rows));
        let sb = step_buffer(gpu, &self.step);
        let d = unmask::launch(
            gpu,
            &sb,
            &lb,
            ub.as_deref(),
            &tb,
            &scratch,
            &out,
            &self.params,
        )?;
        let pairs = self.reference();
        let mut want_out = vec![pairs.len() as u32];
        want_out.extend(pairs.iter().flat_map(|&(p, t)| [p, t]));
        want_out.resize(unmask::out_words(rows), NAN_BITS);
        // Each row's prediction; a row that is no candidate keeps its token and -inf.
        let preds = self.predictions();
        let (mut tokens, mut confidences) = (Vec::new(), Vec::new());
        for r in 0..rows {
            let position = self.step.pos + r as u32;
            match preds.iter().find(|p| p.position == position) {
                Some(p) => {
                    tokens.push(p.token);
                    confidences.push(p.confidence as f32);
                }
                None => {
                    tokens.push(self.tokens[r]);
                    confidences.push(f32::NEG_INFINITY);
                }
            }
        }
        // Random confidences are the same hash on both sides: exact.
        let tol = if self.params.random_remasking {
            0.0
        } else {
            CONF_GAP
        };
        let words = unmask::scratch_words(rows);
        let even = |w: &[u32]| w.iter().step_by(2).copied().collect();
        let odd = |w: &[u32]| w.iter().skip(1).step_by(2).copied().collect();
        let outputs = vec![
            Output::new(&format!("{label}pairs"), &out, Expect::Words(want_out)),
            Output::new(&format!("{label}tokens"), &scratch, Expect::Words(tokens))
                .derived(words, even),
            Output::new(
                &format!("{label}confidences"),
                &scratch,
                Expect::Each(confidences, tol),
            )
            .derived(words, odd),
        ];
        Ok((d.to_vec(), outputs))
    }

    /// A table case of this launch.
    pub fn check(self) -> Case {
        Case::new("unmask", self.describe(), move |gpu| {
            let (d, outputs) = self.launch(gpu, "")?;
            Ok(Prepared::new(gpu, d, outputs))
        })
    }
}

/// Whether every decision of `case` is far from f32 rounding (see the module notes).
pub fn robust(case: &UnmaskCase) -> bool {
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
#[derive(Debug, Clone, Copy)]
pub struct UnmaskSpec {
    pub rows: usize,
    pub vocab: usize,
    pub pos: u32,
    pub top_k: u32,
    pub threshold: f32,
    pub temperature: f32,
    pub cfg_scale: f32,
    pub random_remasking: bool,
}

impl UnmaskSpec {
    pub fn new(rows: usize, vocab: usize, pos: u32) -> UnmaskSpec {
        UnmaskSpec {
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
pub fn draw(spec: UnmaskSpec, seed: u64) -> UnmaskCase {
    let UnmaskSpec {
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
    UnmaskCase {
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
fn robust_case(spec: UnmaskSpec, seed: u64) -> Result<UnmaskCase> {
    (seed..seed + 50)
        .map(|s| draw(spec, s))
        .find(robust)
        .ok_or_else(|| bad_case(format!("no robust case in 50 draws from seed {seed}")))
}

/// (rows, vocab, pos) of the drawn cases.
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
fn top_k_cases(base: UnmaskSpec, seed: u64, cases: &mut Vec<Case>) {
    let mut seed = seed;
    for (rows, vocab, pos) in SHAPES {
        for k in [1u32, 2, 5, rows as u32 + 3] {
            seed += 100;
            let spec = UnmaskSpec {
                rows,
                vocab,
                pos,
                top_k: k,
                ..base
            };
            let what = format!("{spec:?} seed {seed}");
            cases.push(Case::new("unmask", what, move |gpu| {
                let case = robust_case(spec, seed)?;
                let n = case.predictions().len();
                if case.reference().len() != n.min(k as usize) {
                    return Err(bad_case("the reference commits the wrong count".into()));
                }
                let (d, outputs) = case.launch(gpu, "")?;
                Ok(Prepared::new(gpu, d, outputs))
            }));
        }
    }
}

/// Threshold mode with thresholds that let 0 (still the top-1 is committed), 1, 3 and all
/// candidates pass: one launch each, from one draw per shape.
fn threshold_cases(base: UnmaskSpec, seed: u64, cases: &mut Vec<Case>) {
    let mut seed = seed;
    for (rows, vocab, pos) in SHAPES {
        seed += 100;
        let spec = UnmaskSpec {
            rows,
            vocab,
            pos,
            top_k: 0,
            ..base
        };
        let what = format!("{spec:?} thresholds seed {seed}");
        cases.push(Case::new("unmask", what, move |gpu| {
            // Draw with a threshold above every confidence, then place the others between.
            let above = UnmaskSpec {
                threshold: 1.5,
                ..spec
            };
            let first = robust_case(above, seed)?;
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
            let (mut d, mut outputs) = (Vec::new(), Vec::new());
            for (threshold, n) in thresholds {
                let mut case = first.clone();
                case.step.threshold = threshold;
                let fits = base.random_remasking || robust(&case);
                if !fits || case.reference().len() != n {
                    return Err(bad_case(format!(
                        "threshold {threshold}: not robust or miscounted"
                    )));
                }
                let (dt, ot) = case.launch(gpu, &format!("threshold {threshold}: "))?;
                d.extend(dt);
                outputs.extend(ot);
            }
            Ok(Prepared::new(gpu, d, outputs))
        }));
    }
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let greedy = UnmaskSpec::new(0, 0, 0);
    let temperature = UnmaskSpec {
        temperature: 0.7,
        ..greedy
    };
    top_k_cases(greedy, 1000, &mut cases);
    threshold_cases(greedy, 2000, &mut cases);
    for cfg_scale in [1.0, 0.5] {
        let base = UnmaskSpec {
            cfg_scale,
            ..greedy
        };
        top_k_cases(base, 3000, &mut cases);
        threshold_cases(base, 3500, &mut cases);
    }
    top_k_cases(temperature, 4000, &mut cases);
    threshold_cases(temperature, 4500, &mut cases);
    let cfg = UnmaskSpec {
        cfg_scale: 1.0,
        ..temperature
    };
    top_k_cases(cfg, 4700, &mut cases);
    for t in [0.0, 0.7] {
        let base = UnmaskSpec {
            random_remasking: true,
            temperature: t,
            ..greedy
        };
        top_k_cases(base, 6000, &mut cases);
        threshold_cases(base, 6500, &mut cases);
    }
    // LLaDA's vocab (126464): the strided loops over a long row, greedy and with noise.
    // Rows 0 and 2 masked, row 1 not; the window takes all three.
    for (temperature, seed) in [(0.0, 8000), (0.7, 8100)] {
        let spec = UnmaskSpec {
            top_k: 2,
            temperature,
            ..UnmaskSpec::new(3, 126_464, 30)
        };
        cases.push(Case::new(
            "unmask",
            format!("{spec:?} large vocab"),
            move |gpu| {
                let case = (seed..seed + 50)
                    .map(|s| {
                        let mut c = draw(spec, s);
                        c.step.window_start = 30;
                        c.step.window_end = 33;
                        c
                    })
                    .find(robust)
                    .ok_or_else(|| bad_case("no robust case".into()))?;
                if case.reference().len() != 2 {
                    return Err(bad_case("two positions should be committed".into()));
                }
                let (d, outputs) = case.launch(gpu, "")?;
                Ok(Prepared::new(gpu, d, outputs))
            },
        ));
    }
    for random_remasking in [false, true] {
        for (top_k, threshold) in [(300, 1.0), (0, 0.5), (1, 1.0), (2000, 1.0)] {
            let what = format!(
                "{} rows random={random_remasking} top_k={top_k} threshold={threshold}",
                unmask::MAX_ROWS
            );
            cases.push(Case::new("unmask", what, move |gpu| {
                let case = max_rows(random_remasking, top_k, threshold);
                if !(random_remasking || robust(&case)) || case.reference().is_empty() {
                    return Err(bad_case("not robust, or nothing committed".into()));
                }
                let (d, outputs) = case.launch(gpu, "")?;
                Ok(Prepared::new(gpu, d, outputs))
            }));
        }
    }
    cases
}

/// The largest launch, 1024 rows: distinct confidences by construction (one peak per row,
/// heights a permutation).
fn max_rows(random_remasking: bool, top_k: u32, threshold: f32) -> UnmaskCase {
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
    UnmaskCase {
        logits,
        uncond: None,
        tokens,
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
            threshold,
            window_start: 20,
            window_end: 1000,
            ..Step::default()
        },
    }
}

//! Greedy sampling (temperature 0): the argmax of a row of random logits, exactly. Ties,
//! top-k / top-p and the seeded draw have their own tests (tests/tests/kernels.rs).

use super::{step, step_buffer, upload_f32, upload_u32, Case, Expect, Output, Prepared};
use crate::kernels::sample;
use crate::rng::Rng;

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // (rows, vocab): the last row sampled; a small vocab and a real one (SmolLM2's).
    for (i, (rows, vocab)) in [(3, 1000), (1, 37), (2, 49152)].into_iter().enumerate() {
        let seed = 1500 + i as u64;
        cases.push(Case::new(
            "sample",
            format!("{rows}x{vocab} greedy"),
            move |gpu| {
                let logits = Rng::new(seed).vec(rows * vocab, 4.0);
                let (lb, out) = (upload_f32(gpu, &logits), upload_u32(gpu, &[u32::MAX]));
                let greedy = step_buffer(gpu, &step(0, 1));
                let offset = (rows - 1) * vocab;
                let d = sample::launch(gpu, &greedy, &lb, &out, vocab, offset)?;
                let want = sample::argmax(&logits[offset..]);
                let output = Output::new("", &out, Expect::Words(vec![want]));
                Ok(Prepared::new(gpu, vec![d], vec![output]).work(0.0, 4.0 * vocab as f64))
            },
        ));
    }
    cases
}

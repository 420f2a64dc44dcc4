//! Greedy sampling (temperature 0): the argmax of a row of random logits, exactly, and of
//! every row at once (speculative verification: one workgroup and one id per row). Ties,
//! top-k / top-p and the seeded draws have their own tests (tests/tests/kernels.rs,
//! tests/tests/speculate.rs).

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
    // Every row (rows, vocab): ragged row counts and vocabularies; each output word starts
    // poisoned (u32::MAX), so a row the kernel skips fails.
    for (i, (rows, vocab)) in [(2, 37), (5, 1000), (9, 4099), (3, 49152)]
        .into_iter()
        .enumerate()
    {
        let seed = 1510 + i as u64;
        cases.push(Case::new(
            "sample",
            format!("{rows}x{vocab} greedy every row"),
            move |gpu| {
                let logits = Rng::new(seed).vec(rows * vocab, 4.0);
                let lb = upload_f32(gpu, &logits);
                let out = upload_u32(gpu, &vec![u32::MAX; rows]);
                let greedy = step_buffer(gpu, &step(7, rows as u32));
                let d = sample::launch_rows(gpu, &greedy, &lb, &out, vocab, 0, rows)?;
                let want = logits.chunks(vocab).map(sample::argmax).collect();
                let output = Output::new("", &out, Expect::Words(want));
                Ok(
                    Prepared::new(gpu, vec![d], vec![output])
                        .work(0.0, 4.0 * (rows * vocab) as f64),
                )
            },
        ));
    }
    cases
}

//! The embedding gather from f32, f16, bf16 and quantized tables, whole and split into chunks:
//! exact (a gather copies, widening f16 and bf16 exactly; a quantized value is a scale times a
//! small integer).

use super::{poisoned, upload_u32, weights, Case, Expect, Output, Prepared};
use crate::kernels::embedding;
use crate::quant::{self, QuantFormat};
use crate::rng::Rng;
use crate::tensor::DType;

fn case(vocab: usize, dim: usize, dtype: DType, split: Option<usize>, seed: u64) -> Case {
    let mut what = format!("{vocab}x{dim} {}", dtype.name());
    if let Some(r) = split {
        what += &format!(" split={r}");
    }
    let quantized = matches!(dtype, DType::Quant(_));
    Case::new("embedding", what, move |gpu| {
        let gpu = &weights::limited(gpu, split, dtype, dim);
        let mut rng = Rng::new(seed);
        let (table, table_ref) = weights::random(gpu, dtype, 1, vocab, dim, &mut rng)?;
        if split.is_some() && table.chunks.len() <= 2 {
            return Err(super::bad_case(format!(
                "table not split: {} chunk(s)",
                table.chunks.len()
            )));
        }
        // The first and last ids, a repeat, and the first and last rows of chunks of 8 and 9.
        let v = vocab as u32;
        let mut ids = vec![0, v - 1, 1, 17, 17, v / 2, v - 2, 8, 9, 16, 18, 26, 27];
        ids.extend((0..6).map(|_| rng.below(v)));
        let idb = upload_u32(gpu, &ids);
        let out = poisoned(gpu, ids.len() * dim);
        let d = embedding::launch(gpu, &idb, &table, &out, ids.len())?;
        let want = embedding::reference(&ids, &table_ref, dim);
        // Quantized values may come back as -0 where the reference has +0 (see mod.rs).
        let expect = match quantized {
            true => Expect::Equal(want),
            false => Expect::Bits(want),
        };
        let bytes = (ids.len() * dim * 4) as f64 * 2.0;
        Ok(Prepared::new(gpu, d, vec![Output::new("", &out, expect)]).work(0.0, bytes))
    })
    .quantized(quantized)
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 500;
    for (vocab, dim) in [(103, 45), (103, 64), (1000, 7)] {
        for dtype in [DType::F32, DType::F16] {
            seed += 1;
            let browser = (vocab, dim, dtype) == (103, 45, DType::F16);
            cases.push(case(vocab, dim, dtype, None, seed).browser(browser));
            // Odd dims with f16 need chunks with an even number of rows.
            cases.push(case(vocab, dim, dtype, Some(9), seed + 50));
        }
        let browser = (vocab, dim) == (103, 64);
        cases.push(case(vocab, dim, DType::BF16, None, seed + 20).browser(browser));
        cases.push(case(vocab, dim, DType::BF16, Some(9), seed + 70));
    }
    // The browser runs two 32-value formats at a real hidden size (18 groups) and two
    // K-quants at two superblocks.
    let browser = [
        QuantFormat::Q4_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4_K,
        QuantFormat::Q6_K,
    ];
    for (i, format) in quant::ALL.into_iter().enumerate() {
        let (dtype, dim) = (DType::Quant(format), 2 * format.block_elems());
        let seed = 4000 + 10 * i as u64;
        let in_browser = browser.contains(&format) && format.block_elems() > 32;
        cases.push(case(103, dim, dtype, None, seed).browser(in_browser));
        cases.push(case(103, dim, dtype, Some(9), seed + 1));
        if browser.contains(&format) && format.block_elems() == 32 {
            cases.push(case(103, 576, dtype, None, seed + 2).browser(true));
        }
    }
    cases
}

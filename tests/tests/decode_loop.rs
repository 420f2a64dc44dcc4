//! The token loop on the GPU (`Session::decode`, runtime/src/decode_loop.rs): a batch of
//! decode steps in one submission draws exactly the tokens of the same number of
//! `next_token` calls and leaves the sequence in the same state — for an attention model, a
//! mixture of experts and recurrent models (whose states would show any step that ran
//! twice or too far) — greedy and sampled; a batch stops at an end token without running the
//! steps after it; and it takes one submit and one readback.

use kestrel_runtime::session::{Sampling, Session};
use kestrel_tests::{fixture, gpus};

const PROMPT: [u32; 5] = [3, 17, 42, 5, 9];

/// Prefill `PROMPT`, then draw `n` more tokens one `next_token` call at a time.
fn one_by_one(s: &mut Session, n: usize, sampling: &Sampling) -> Vec<u32> {
    let mut out = vec![pollster::block_on(s.next_token(&PROMPT, sampling)).expect("prefill")];
    for _ in 0..n {
        let last = *out.last().expect("a token");
        out.push(pollster::block_on(s.next_token(&[last], sampling)).expect("decode"));
    }
    out
}

/// Prefill `PROMPT`, then draw `n` more tokens in batches of `batch`.
fn batched(s: &mut Session, n: usize, batch: usize, sampling: &Sampling) -> Vec<u32> {
    let mut out = vec![pollster::block_on(s.next_token(&PROMPT, sampling)).expect("prefill")];
    while out.len() <= n {
        let last = *out.last().expect("a token");
        let k = batch.min(n + 1 - out.len());
        out.extend(pollster::block_on(s.decode(last, k, sampling, &[])).expect("batch"));
    }
    out
}

/// The logits after one more token: equal states give bit-identical logits.
fn next_logits(s: &mut Session, token: u32) -> Vec<u32> {
    let l = pollster::block_on(s.logits(&[token])).expect("logits");
    l.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn batches_draw_the_tokens_of_single_steps_and_leave_the_same_state() {
    let sampled = Sampling {
        temperature: 0.9,
        top_k: 0,
        top_p: 0.95,
        seed: 7,
    };
    for gpu in gpus() {
        for name in ["llama_gqa", "mixtral", "mamba2", "rwkv7"] {
            let model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
            for sampling in [Sampling::default(), sampled] {
                let mut a = model.session(&gpu, 64).expect("session");
                let mut b = model.session(&gpu, 64).expect("session");
                let want = one_by_one(&mut a, 20, &sampling);
                let got = batched(&mut b, 20, 8, &sampling);
                assert_eq!(got, want, "{name} {sampling:?}");
                // The last token drawn is not fed yet on either side.
                assert_eq!(a.tokens(), b.tokens(), "{name}");
                let last = *want.last().expect("tokens");
                assert_eq!(
                    next_logits(&mut a, last),
                    next_logits(&mut b, last),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn a_batch_ends_at_an_end_token_and_runs_nothing_after_it() {
    for gpu in gpus() {
        for name in ["llama_gqa", "rwkv7"] {
            let model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
            let greedy = Sampling::default();
            let mut a = model.session(&gpu, 64).expect("session");
            let want = one_by_one(&mut a, 12, &greedy);
            // End at the 5th token the batch draws (the first time it appears).
            let end = want[5];
            let stop = want[1..].iter().position(|&t| t == end).expect("present") + 1;
            let mut b = model.session(&gpu, 64).expect("session");
            let first = pollster::block_on(b.next_token(&PROMPT, &greedy)).expect("prefill");
            let before = gpu.work();
            let got = pollster::block_on(b.decode(first, 12, &greedy, &[end])).expect("batch");
            let work = gpu.work().since(&before);
            assert_eq!(got, want[1..=stop], "{name}");
            assert_eq!((work.submits, work.readbacks), (1, 1), "{name}");
            // Fed: the prompt, then every drawn token before the end token.
            assert_eq!(b.tokens(), [&PROMPT[..], &want[..stop]].concat(), "{name}");
            // The steps after the end ran nothing: the state is that of the tokens fed.
            // (Fed one step at a time, as the batch fed them: the same kernels.)
            let mut c = model.session(&gpu, 64).expect("session");
            pollster::block_on(c.next_token(&PROMPT, &greedy)).expect("prefill");
            for &t in &want[..stop] {
                pollster::block_on(c.next_token(&[t], &greedy)).expect("decode");
            }
            assert_eq!(next_logits(&mut b, end), next_logits(&mut c, end), "{name}");
        }
    }
}

#[test]
fn a_batch_past_the_context_is_refused() {
    let gpu = gpus().remove(0);
    let model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
    let mut s = model.session(&gpu, 8).expect("session");
    let greedy = Sampling::default();
    let first = pollster::block_on(s.next_token(&PROMPT, &greedy)).expect("prefill");
    let e = pollster::block_on(s.decode(first, 4, &greedy, &[])).expect_err("past the context");
    assert!(e.to_string().contains("exceed the context"), "{e}");
    assert_eq!(s.pos(), PROMPT.len());
    let e = pollster::block_on(s.decode(first, 33, &greedy, &[])).expect_err("too many steps");
    assert!(e.to_string().contains("at most 32"), "{e}");
}

//! The generator (kestrel_models::generate) on the fixture models: its text is the
//! detokenized tokens of a plain `next_token` loop (the session is checked against the
//! reference implementations elsewhere), and its limits, stop strings, prefix reuse and
//! errors behave as every front end relies on. Greedy sampling throughout, so runs repeat.

use std::sync::Arc;

use kestrel_models::generate::{
    Finish, GenerateError, Generation, Prompt, Request, RequestError, Step,
};
use kestrel_models::Model;
use kestrel_runtime::diffusion::{self, BlockCache, DiffusionConfig};
use kestrel_runtime::session::{Sampling, Session};
use kestrel_runtime::Gpu;
use kestrel_tests::{fixture, fixture_with_eos, gpus};

/// Run `g` to its end; returns the pieces (one per step until Done) and how it ended.
fn run(g: &mut Generation, model: &Model, session: &mut Session) -> (Vec<String>, Finish) {
    let mut pieces = Vec::new();
    loop {
        match pollster::block_on(g.step(model, session)).expect("step") {
            Step::Text(t) => pieces.push(t),
            Step::Done(f) => {
                // Done stays done.
                let again = pollster::block_on(g.step(model, session)).expect("step");
                assert_eq!(again, Step::Done(f));
                return (pieces, f);
            }
        }
    }
}

/// The tokens a plain greedy loop draws after `prompt`, `n` at most, up to an EOS.
fn reference(model: &Model, gpu: &Arc<Gpu>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = model.session(gpu, 64).expect("session");
    let greedy = Sampling::default();
    let mut out = Vec::new();
    let mut next = pollster::block_on(s.next_token(prompt, &greedy)).expect("prefill");
    while out.len() < n && !model.eos().contains(&next) {
        out.push(next);
        if out.len() < n {
            next = pollster::block_on(s.next_token(&[next], &greedy)).expect("decode");
        }
    }
    out
}

/// Two characters from the second half of `reply`, neither a replacement character: a stop
/// string that cuts it.
fn stop_in_second_half(reply: &str) -> String {
    let chars: Vec<char> = reply.chars().collect();
    assert!(chars.len() >= 8, "a reply long enough to cut: {reply:?}");
    (chars.len() / 2..chars.len() - 1)
        .map(|i| chars[i..i + 2].iter().collect::<String>())
        .find(|s: &String| !s.contains('\u{FFFD}'))
        .expect("a stop string")
}

/// A text prompt and a request for exactly 30 tokens (EOS ignored): fresh sessions draw the
/// same reply, long enough to cut with a stop string.
fn once_upon(model: &Model) -> (Vec<u32>, Request) {
    let ids = Prompt::Text("Once upon".into())
        .encode(model, None)
        .expect("encode");
    let thirty = Request {
        max_tokens: 30,
        ignore_eos: true,
        ..Request::default()
    };
    (ids, thirty)
}

fn greedy(max_tokens: usize) -> Request {
    Request {
        max_tokens,
        ..Request::default()
    }
}

#[test]
fn text_is_the_greedy_tokens_detokenized() {
    for gpu in gpus() {
        let model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
        let tok = model.tokenizer.as_ref().expect("tokenizer");
        let ids = Prompt::Text("Hello there".into())
            .encode(&model, None)
            .expect("encode");
        assert_eq!(ids, tok.encode("Hello there").expect("encode"));
        let want = reference(&model, &gpu, &ids, 20);
        let mut s = model.session(&gpu, 64).expect("session");
        let mut g = Generation::new(&model, &mut s, ids.clone(), &greedy(20)).expect("start");
        let (pieces, finish) = run(&mut g, &model, &mut s);
        let text = tok.decode(&want).expect("decode");
        assert!(want.len() > 6, "a reply to compare");
        eprintln!("{}: {} tokens, {text:?}", gpu.backend_name(), want.len());
        assert_eq!(pieces.concat(), text, "{}", gpu.backend_name());
        assert_eq!(g.reply(), text);
        assert_eq!(g.completion_tokens(), want.len());
        assert_eq!(g.prompt_tokens(), ids.len());
        let ended_by_eos = want.len() < 20;
        let expected = if ended_by_eos {
            Finish::Stop
        } else {
            Finish::Length
        };
        assert_eq!(finish, expected);
        // One step per token drawn (each gives text, maybe empty), then Done.
        assert!(pieces.len() >= g.sampled_tokens() - ended_by_eos as usize);

        // The same model with a token of that reply as its end-of-sequence token stops there.
        let eos = want[6];
        let end = want.iter().position(|&t| t == eos).expect("in the reply");
        let dir = fixture_with_eos("llama_gqa", eos);
        let model = kestrel_models::load(&gpu, &dir).expect("load");
        let mut s = model.session(&gpu, 64).expect("session");
        let mut g = Generation::new(&model, &mut s, ids, &greedy(20)).expect("start");
        let (pieces, finish) = run(&mut g, &model, &mut s);
        assert_eq!(finish, Finish::Stop);
        assert_eq!(g.completion_tokens(), end);
        assert_eq!(g.sampled_tokens(), end + 1);
        assert_eq!(pieces.concat(), tok.decode(&want[..end]).expect("decode"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn limits_stop_strings_and_prefix_reuse() {
    let gpu = gpus().into_iter().next().expect("gpu");
    let model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
    let mut s = model.session(&gpu, 64).expect("session");
    // Token prompts; EOS ignored so the counts are exact whatever the weights draw.
    let prompt: Vec<u32> = (1..=20).collect();
    let count = |max_tokens: usize, prompt: &[u32], s: &mut Session| {
        let request = Request {
            max_tokens,
            ignore_eos: true,
            ..Request::default()
        };
        let mut g = Generation::new(&model, s, prompt.to_vec(), &request).expect("start");
        let (_, finish) = run(&mut g, &model, s);
        (
            g.completion_tokens(),
            g.sampled_tokens(),
            g.reused_tokens(),
            finish,
        )
    };
    assert_eq!(count(5, &prompt, &mut s), (5, 5, 0, Finish::Length));
    // The same prompt again: all but its last token come from the cache.
    assert_eq!(count(3, &prompt, &mut s).2, prompt.len() - 1);
    // The context ends a reply: 44 positions after a 20-token prompt; a benchmark run also
    // draws the token after the last position.
    s.reset();
    let request = greedy(1000);
    let mut g = Generation::new(&model, &mut s, prompt.clone(), &request).expect("start");
    run(&mut g, &model, &mut s);
    assert!(g.completion_tokens() <= 44, "{}", g.completion_tokens());
    assert_eq!(count(1000, &prompt, &mut s).0, 45);

    // Stop strings: the reply ends before the first one, which no piece shows. (Fresh
    // sessions and a fixed length, so both runs draw the same tokens.)
    let (ids, thirty) = once_upon(&model);
    s.reset();
    let mut g = Generation::new(&model, &mut s, ids.clone(), &thirty).expect("start");
    run(&mut g, &model, &mut s);
    let full = g.reply().to_string();
    let stop = stop_in_second_half(&full);
    let want = &full[..full.find(&stop).expect("in the reply")];
    eprintln!("stop {stop:?} cuts {full:?} to {want:?}");
    let request = Request {
        stop: vec!["not in the reply at all".into(), stop.clone()],
        ..thirty
    };
    s.reset();
    let mut g = Generation::new(&model, &mut s, ids, &request).expect("start");
    let (pieces, finish) = run(&mut g, &model, &mut s);
    assert_eq!(finish, Finish::Stop);
    assert_eq!(pieces.concat(), want);
    assert_eq!(g.reply(), want);
    let mut shown = String::new();
    for p in &pieces {
        shown.push_str(p);
        assert!(!shown.contains(&stop), "{shown:?} shows the stop string");
    }

    // Cancelling keeps the text so far and says so.
    let mut g = Generation::new(&model, &mut s, prompt.clone(), &greedy(30)).expect("start");
    pollster::block_on(g.step(&model, &mut s)).expect("step");
    g.cancel();
    assert_eq!(
        pollster::block_on(g.step(&model, &mut s)).expect("step"),
        Step::Done(Finish::Cancelled)
    );
}

/// A recurrent model's state cannot be cut back, and a reply cut at a stop string has run
/// past it (decode batches sample several tokens before the host sees the text): the
/// session goes back to the checkpoint the generator takes after the prompt, so the next
/// turn reuses the prompt and the reply instead of starting over, and continues exactly as
/// a fresh session would.
#[test]
fn a_recurrent_reply_cut_at_a_stop_string_is_reused_by_the_next_turn() {
    let gpu = gpus().into_iter().next().expect("gpu");
    for name in ["mamba2", "rwkv7", "jamba"] {
        let model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
        let (ids, thirty) = once_upon(&model);
        let mut s = model.session(&gpu, 128).expect("session");
        let mut g = Generation::new(&model, &mut s, ids.clone(), &thirty).expect("start");
        run(&mut g, &model, &mut s);
        let stop = stop_in_second_half(g.reply());
        s.reset();
        let request = Request {
            stop: vec![stop],
            ..thirty
        };
        let mut g = Generation::new(&model, &mut s, ids.clone(), &request).expect("start");
        assert_eq!(run(&mut g, &model, &mut s).1, Finish::Stop, "{name}");
        // The next turn: the prompt, the reply's first tokens, then new tokens.
        let kept = ids.len() + 3;
        let mut next = s.tokens()[..kept].to_vec();
        next.extend([1, 2]);
        let mut g = Generation::new(&model, &mut s, next.clone(), &greedy(8)).expect("start");
        assert_eq!(g.reused_tokens(), kept, "{name}");
        let (pieces, _) = run(&mut g, &model, &mut s);
        let mut fresh = model.session(&gpu, 128).expect("session");
        let mut f = Generation::new(&model, &mut fresh, next, &greedy(8)).expect("start");
        let (want, _) = run(&mut f, &model, &mut fresh);
        assert_eq!(pieces.concat(), want.concat(), "{name}");
    }
}

#[test]
fn bad_requests_are_refused_before_anything_runs() {
    let gpu = gpus().into_iter().next().expect("gpu");
    let model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
    let mut s = model.session(&gpu, 64).expect("session");
    let start = |s: &mut Session, prompt: Vec<u32>, r: &Request| match Generation::new(
        &model, s, prompt, r,
    ) {
        Err(e) => e,
        Ok(_) => panic!("{r:?} was accepted"),
    };
    let mut hot = greedy(4);
    hot.sampling.temperature = 2.5;
    assert!(matches!(
        start(&mut s, vec![1, 2], &hot),
        GenerateError::Request(RequestError::Temperature(_))
    ));
    let e = start(&mut s, vec![1; 64], &greedy(4));
    assert!(
        matches!(
            e,
            GenerateError::PromptTooLong {
                tokens: 64,
                context: 64
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("context holds 64"), "{e}");
    assert!(matches!(
        start(&mut s, vec![], &greedy(4)),
        GenerateError::EmptyPrompt
    ));
    assert_eq!(s.pos(), 0, "a refused request runs nothing");
}

#[test]
fn a_diffusion_model_gives_one_block_per_step() {
    let gpu = gpus().into_iter().next().expect("gpu");
    let model = kestrel_models::load(&gpu, &fixture("llada")).expect("load");
    let tok = model.tokenizer.as_ref().expect("tokenizer");
    let mask = model.config().mask_token.expect("mask");
    let config = DiffusionConfig {
        gen_length: 16,
        block_length: 4,
        steps: 8,
        temperature: 0.0,
        cfg_scale: 0.0,
        random_remasking: false,
        threshold: None,
        cache: BlockCache::None,
        seed: 0,
    };
    let ids = Prompt::Text("Hello".into())
        .encode(&model, None)
        .expect("encode");
    let mut s = model
        .session(&gpu, ids.len() + config.gen_length)
        .expect("session");
    let (all, _) =
        pollster::block_on(diffusion::generate(&mut s, &ids, mask, &config)).expect("sampler");
    let generated = &all[ids.len()..];
    let end = generated
        .iter()
        .position(|t| model.eos().contains(t))
        .unwrap_or(generated.len());
    // Without settings the generator cannot sample a diffusion model.
    assert!(matches!(
        Generation::new(&model, &mut s, ids.clone(), &greedy(16)),
        Err(GenerateError::NoDiffusionSettings(_))
    ));
    let request = Request {
        diffusion: Some(config),
        ..greedy(16)
    };
    let g_ids = ids.clone();
    let mut g = Generation::new(&model, &mut s, ids, &request).expect("start");
    let (pieces, finish) = run(&mut g, &model, &mut s);
    assert_eq!(g.reply(), tok.decode(&generated[..end]).expect("decode"));
    let (tokens, stats) = g.diffusion_stats().expect("diffusion");
    // Blocks stop at the first EOS; each step filled one.
    let blocks_run = if end < 16 { end / 4 + 1 } else { 4 };
    assert_eq!(tokens, blocks_run * 4);
    assert!(stats.forwards >= tokens / 4);
    let expected = if end < 16 {
        Finish::Stop
    } else {
        Finish::Length
    };
    assert_eq!(finish, expected);
    assert!(pieces.len() <= blocks_run + 1);

    // With a token of the second block as end-of-sequence, the reply stops there and the
    // blocks after it are never run.
    let eos = generated[5];
    let end = generated
        .iter()
        .position(|&t| t == eos)
        .expect("in the reply");
    let dir = fixture_with_eos("llada", eos);
    let model = kestrel_models::load(&gpu, &dir).expect("load");
    let mut g = Generation::new(&model, &mut s, g_ids, &request).expect("start");
    let (_, finish) = run(&mut g, &model, &mut s);
    assert_eq!(finish, Finish::Stop);
    assert_eq!(g.reply(), tok.decode(&generated[..end]).expect("decode"));
    assert_eq!(g.diffusion_stats().expect("diffusion").0, (end / 4 + 1) * 4);
    assert!(end / 4 + 1 < 4, "blocks left unrun");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smollm2_replies_stream_like_whole_decodes() {
    // SmolLM2: a real 49152-token byte-level BPE vocabulary.
    let Some(path) =
        kestrel_tests::real_model::smollm2("SmolLM2 replies streamed by the generator")
    else {
        return;
    };
    let gpu = gpus().into_iter().next().expect("gpu");
    let model = kestrel_models::load(&gpu, &path).expect("load SmolLM2");
    let tok = model.tokenizer.as_ref().expect("tokenizer");
    // Its greedy reply to the fixture prompt (tests/fixtures/smollm2), through the generator.
    let prompt: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("smollm2/prompt.json")).expect("prompt"),
    )
    .expect("json");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|t| t.as_u64().expect("id") as u32)
            .collect()
    };
    let greedy_ids = ids(&prompt["greedy"]);
    let mut s = model.session(&gpu, 128).expect("session");
    let request = Request {
        max_tokens: greedy_ids.len(),
        ignore_eos: true,
        ..Request::default()
    };
    let mut g = Generation::new(&model, &mut s, ids(&prompt["tokens"]), &request).expect("start");
    let (pieces, _) = run(&mut g, &model, &mut s);
    let want = tok.decode(&greedy_ids).expect("decode");
    eprintln!("SmolLM2: {want:?}");
    assert_eq!(pieces.concat(), want);

    // Thousands of random ids (split characters, invalid bytes, special tokens) stream as
    // they decode whole.
    let vocab = tok.vocab_size() as u32;
    let mut state = 99u32;
    let random: Vec<u32> = (0..3000)
        .map(|_| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 8) % vocab
        })
        .collect();
    let mut stream = kestrel_models::TextStream::default();
    let mut text = String::new();
    for &id in &random {
        text.push_str(&stream.push(tok, id).expect("push"));
    }
    text.push_str(&stream.finish(tok).expect("finish"));
    assert_eq!(text, tok.decode(&random).expect("decode"));
}

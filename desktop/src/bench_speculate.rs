//! `kestrel bench --speculate ngram` / `--draft-model PATH`: greedy decode tokens/s with and
//! without speculative decoding on a prompt whose answer repeats it, in alternated runs on
//! fresh caches, with the acceptance rate and whether every reply is the same text.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kestrel_models::chat_template::Message;
use kestrel_models::generate::{Generation, Prompt, Request, Step};
use kestrel_models::speculate::{SpeculationStats, Speculator};
use kestrel_models::Model;
use kestrel_runtime::session::Session;
use kestrel_runtime::Gpu;
use serde_json::{json, Value};

use crate::cli::{BenchArgs, Speculation};
use crate::generate::cli_error;
use crate::stdout::outln;
use crate::{open_model, speculate};

/// The text the prompt asks the model to repeat.
const PARAGRAPH: &str = "The kestrel is a small falcon that hunts over open country. It hovers \
    in place, facing into the wind, with its tail fanned and its head perfectly still, then \
    drops onto voles, mice and large insects in the grass below. Kestrels nest in tree holes, \
    on cliff ledges and on buildings, and a pair may use the same site for many years.";

/// Measured runs of each kind, alternated (plain, speculative, plain, ...) after a warm-up.
const ROUNDS: usize = 3;

/// One reply timed: its text, tokens, decode seconds after the first token, and counters.
struct Timed {
    text: String,
    tokens: usize,
    decode_s: f64,
    stats: Option<SpeculationStats>,
}

impl Timed {
    fn tokens_per_s(&self) -> f64 {
        self.tokens.saturating_sub(1) as f64 / self.decode_s.max(1e-9)
    }
}

fn reply(
    model: &Model,
    session: &mut Session,
    prompt: &[u32],
    request: &Request,
    speculator: &mut Option<Speculator>,
) -> Result<Timed, String> {
    session.reset();
    let mut g = Generation::new(model, session, prompt.to_vec(), request).map_err(cli_error)?;
    g.unstreamed();
    if let Some(s) = speculator.take() {
        g.speculate(model, session, s).map_err(cli_error)?;
    }
    // The first step runs the prompt and draws the first token; the rest is decode.
    pollster::block_on(g.step(model, session)).map_err(cli_error)?;
    let t = Instant::now();
    while let Step::Text(_) = pollster::block_on(g.step(model, session)).map_err(cli_error)? {}
    let decode_s = t.elapsed().as_secs_f64();
    let stats = g.speculation_stats();
    *speculator = g.take_speculator();
    Ok(Timed {
        text: g.reply().to_string(),
        tokens: g.completion_tokens(),
        decode_s,
        stats,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The comparison's report (printed when `text`).
pub fn run(
    gpu: &Arc<Gpu>,
    path: &Path,
    a: &BenchArgs,
    spec: &Speculation,
    text: bool,
) -> Result<Value, String> {
    let model = open_model(gpu, path, a.attention_options.options())?;
    let ask = format!("Repeat the following text exactly: {PARAGRAPH}");
    let prompt = Prompt::Chat(vec![Message::new("user", &ask)])
        .encode(&model, None)
        .or_else(|_| Prompt::Text(format!("{ask}\n\n")).encode(&model, None))
        .map_err(cli_error)?;
    let decode = a.decode_tokens.unwrap_or(128);
    let capacity = prompt.len() + decode + 1;
    let mut speculator = speculate::open(gpu, spec, &model, capacity, a.fetch.offline)?;
    let request = Request {
        max_tokens: decode,
        ..Request::default()
    };
    let mut plain_s = model.session(gpu, capacity).map_err(|e| e.to_string())?;
    let mut spec_s = model.session(gpu, capacity).map_err(|e| e.to_string())?;
    // Warm-up: every pipeline and plan of both ways.
    let reference = reply(&model, &mut plain_s, &prompt, &request, &mut None)?;
    reply(&model, &mut spec_s, &prompt, &request, &mut speculator)?;
    let (mut plain, mut fast) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.push(reply(&model, &mut plain_s, &prompt, &request, &mut None)?);
        fast.push(reply(
            &model,
            &mut spec_s,
            &prompt,
            &request,
            &mut speculator,
        )?);
    }
    let identical = plain.iter().chain(&fast).all(|r| r.text == reference.text);
    let plain_tps = median(plain.iter().map(Timed::tokens_per_s).collect());
    let spec_tps = median(fast.iter().map(Timed::tokens_per_s).collect());
    let mut stats = SpeculationStats::default();
    for s in fast.iter().filter_map(|r| r.stats) {
        stats.drafted += s.drafted;
        stats.accepted += s.accepted;
        stats.passes += s.passes;
    }
    let drafter = match speculator.as_ref().and_then(Speculator::draft) {
        Some(d) => d.model.name.clone(),
        None => "prompt lookup".to_string(),
    };
    let draft_tokens = speculator.as_ref().map_or(0, Speculator::draft_tokens);
    if text {
        outln!(
            "speculative decoding ({drafter}, {draft_tokens} drafts), greedy, {} prompt tokens, \
             {} reply tokens, {ROUNDS} alternated runs each:",
            prompt.len(),
            reference.tokens
        );
        outln!(
            "  plain decode: {plain_tps:.2} tokens/s (runs: {})",
            rates(&plain)
        );
        outln!(
            "  speculative:  {spec_tps:.2} tokens/s (runs: {})",
            rates(&fast)
        );
        outln!(
            "  speed-up {:.2}x; {}; identical text: {identical}",
            spec_tps / plain_tps,
            speculate::describe(&stats)
        );
    }
    Ok(json!({
        "drafter": drafter,
        "draft_tokens": draft_tokens,
        "prompt_tokens": prompt.len(),
        "reply_tokens": reference.tokens,
        "rounds": ROUNDS,
        "plain_decode_tokens_per_s": plain_tps,
        "speculative_decode_tokens_per_s": spec_tps,
        "plain_runs_tokens_per_s": plain.iter().map(Timed::tokens_per_s).collect::<Vec<_>>(),
        "speculative_runs_tokens_per_s": fast.iter().map(Timed::tokens_per_s).collect::<Vec<_>>(),
        "speed_up": spec_tps / plain_tps,
        "drafted": stats.drafted,
        "accepted": stats.accepted,
        "verification_passes": stats.passes,
        "acceptance_rate": stats.acceptance(),
        "identical_text": identical,
    }))
}

fn rates(runs: &[Timed]) -> String {
    runs.iter()
        .map(|r| format!("{:.2}", r.tokens_per_s()))
        .collect::<Vec<_>>()
        .join(", ")
}

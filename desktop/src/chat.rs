//! `kestrel chat`: an interactive terminal chat that streams replies, keeps the KV cache
//! between turns (a new turn prefills only the tokens the cache does not hold yet), stops a
//! reply on Ctrl-C, and drops the oldest turns when the context fills up.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kestrel_models::chat_template::Message;
use kestrel_models::generate::{Generation, Prompt};
use kestrel_runtime::diffusion::DEFAULT_BLOCK_LENGTH;

use crate::cli::{ChatArgs, CHAT_SAMPLING};
use crate::generate::{cli_error, print_reply};
use crate::{catalogue, model_ref, open_gpu, open_model, speculate};

/// Set by Ctrl-C while a reply is streaming; Ctrl-C at the prompt ends the program.
static STOP: AtomicBool = AtomicBool::new(false);
static GENERATING: AtomicBool = AtomicBool::new(false);

pub fn run(a: &ChatArgs) -> Result<(), String> {
    let attention = a.attention.options();
    let max_tokens = a.max_tokens;
    let mut request = a.sampling.request(max_tokens, CHAT_SAMPLING)?;
    // With attention sinks the conversation may grow without bound in a fixed cache.
    let default_ctx = if attention.streaming.is_some() {
        usize::MAX
    } else {
        4096
    };
    let ctx = a.ctx.unwrap_or(default_ctx);
    let default = || catalogue::default_model().name.into();
    let path = model_ref::resolve(&a.model.clone().unwrap_or_else(default), a.fetch.offline)?;
    let gpu = open_gpu(&a.device)?;
    a.precision.apply(&gpu)?;
    let t = Instant::now();
    let model = open_model(&gpu, &path, attention)?;
    if model.tokenizer.is_none() {
        return Err("the model has no tokenizer, so it cannot chat".into());
    }
    let template = model.chat_template().map_err(|e| e.to_string())?;
    let mut session = model.session(&gpu, ctx).map_err(|e| e.to_string())?;
    // Kept between turns (a draft model's session reuses the conversation's prefix too).
    let capacity = session.capacity();
    let spec = a.speculate.speculation();
    let mut speculator = speculate::open(&gpu, &spec, &model, capacity, a.fetch.offline)?;
    if let Some(s) = &speculator {
        s.check_target(&model, &session).map_err(cli_error)?;
    }
    eprintln!(
        "{} on {} — loaded in {:.1} s, context {} tokens{}",
        model.name,
        gpu.info.name,
        t.elapsed().as_secs_f64(),
        session.capacity(),
        if template.is_fallback {
            " (no chat template in the model: using ChatML)"
        } else {
            ""
        }
    );
    eprintln!("type a message; /reset starts over, /exit quits; Ctrl-C stops a reply");
    ctrlc::set_handler(|| {
        if GENERATING.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
        } else {
            eprintln!();
            std::process::exit(130);
        }
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;

    let system: Vec<Message> = a
        .system
        .as_deref()
        .map(|s| Message::new("system", s))
        .into_iter()
        .collect();
    let mut history: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?
            == 0
        {
            eprintln!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                history.clear();
                session.reset();
                eprintln!("[conversation cleared]");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        // Render the conversation; drop the oldest turns until it fits with room for a reply.
        let room = max_tokens.min(session.capacity() / 2);
        let ids = loop {
            let msgs: Vec<Message> = system.iter().chain(history.iter()).cloned().collect();
            let ids = Prompt::Chat(msgs)
                .encode(&model, Some(&template))
                .map_err(cli_error)?;
            if ids.len() + room <= session.capacity() {
                break Some(ids);
            }
            if history.len() <= 1 {
                break None;
            }
            let dropped = if history.len() >= 3 { 2 } else { 1 };
            history.drain(..dropped);
            eprintln!("[context full: dropped the {dropped} oldest message(s)]");
        };
        let Some(ids) = ids else {
            history.pop();
            eprintln!(
                "[that message is too long for the context of {} tokens]",
                session.capacity()
            );
            continue;
        };
        request.sampling.seed = request.sampling.seed.wrapping_add(1);
        request.max_tokens = room.max(1);
        let stopped = || STOP.load(Ordering::SeqCst);
        let _generating = Generating::start();
        let reply = if model.config().causal {
            // Reuses the cached prefix; prefills only what differs.
            let mut g = Generation::new(&model, &mut session, ids, &request).map_err(cli_error)?;
            if let Some(s) = speculator.take() {
                g.speculate(&model, &session, s).map_err(cli_error)?;
            }
            let times = print_reply(&model, &mut session, &mut g, stopped)?;
            if stopped() {
                eprintln!("[stopped]");
            }
            if let Some(stats) = g.speculation_stats() {
                eprintln!("[{}]", speculate::describe(&stats));
            }
            speculator = g.take_speculator();
            let new = g.prompt_tokens() - g.reused_tokens();
            let produced = g.completion_tokens();
            eprintln!(
                "[{} new prompt tokens at {:.0} tokens/s; {} tokens at {:.1} tokens/s]",
                new,
                new as f64 / times.first.max(1e-9),
                produced,
                produced.saturating_sub(1) as f64 / times.rest.max(1e-9)
            );
            eprintln!(
                "[{} prompt tokens reused from the cache]",
                g.reused_tokens()
            );
            g.reply().to_string()
        } else {
            // A diffusion model regenerates the reply region from masks every turn.
            let block = a
                .diffusion
                .block_length
                .unwrap_or(DEFAULT_BLOCK_LENGTH)
                .max(1);
            let config = a.diffusion.config(
                room.div_ceil(block) * block,
                a.sampling.temperature.unwrap_or(0.0),
                a.sampling.seed.unwrap_or(0),
            )?;
            request.diffusion = Some(config);
            let mut s = model
                .session(&gpu, ids.len() + config.gen_length)
                .map_err(|e| e.to_string())?;
            let mut g = Generation::new(&model, &mut s, ids, &request).map_err(cli_error)?;
            let times = print_reply(&model, &mut s, &mut g, stopped)?;
            if let Some((generated, stats)) = g.diffusion_stats() {
                crate::diffuse::report(&gpu, generated, &stats, times.first + times.rest);
            }
            g.reply().to_string()
        };
        history.push(Message::new("assistant", &reply));
    }
}

/// Marks a reply as streaming (so Ctrl-C stops it) until dropped, even on an error.
struct Generating;

impl Generating {
    fn start() -> Generating {
        STOP.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        Generating
    }
}

impl Drop for Generating {
    fn drop(&mut self) {
        GENERATING.store(false, Ordering::SeqCst);
    }
}

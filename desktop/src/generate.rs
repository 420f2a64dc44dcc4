//! `kestrel generate`: text from a prompt, streamed on stdout, then prefill and decode
//! speed on stderr; and the reply printer that `chat` shares.

use std::time::Instant;

use kestrel_models::generate::{GenerateError, Generation, Prompt, Step};
use kestrel_models::Model;
use kestrel_runtime::diffusion::DiffusionError;
use kestrel_runtime::session::{Sampling, Session};

use crate::cli::{self, GenerateArgs};
use crate::stdout::{out, outln};
use crate::{diffuse, model_ref, open_gpu, open_model, speculate, CliResult};

pub fn run(a: &GenerateArgs) -> CliResult {
    let mut request = a.sampling.request(a.max_tokens, Sampling::default())?;
    let path = model_ref::resolve(&a.model, a.fetch.offline)?;
    let gpu = open_gpu(&a.device)?;
    a.precision.apply(&gpu)?;
    let model = open_model(&gpu, &path, a.attention.options())?;
    let ids = Prompt::Text(a.prompt.clone())
        .encode(&model, None)
        .map_err(cli_error)?;
    // A diffusion model's sequence is the prompt and the region it fills.
    let capacity = match model.config().causal {
        true => a.ctx,
        false => {
            let config = a.diffusion.config(
                a.gen_length.unwrap_or(a.max_tokens),
                a.sampling.temperature.unwrap_or(0.0),
                a.sampling.seed.unwrap_or(0),
            )?;
            request.diffusion = Some(config);
            ids.len() + config.gen_length
        }
    };
    let mut session = model.session(&gpu, capacity).map_err(|e| e.to_string())?;
    let mut g = Generation::new(&model, &mut session, ids, &request).map_err(cli_error)?;
    let spec = a.speculate.speculation();
    let offline = a.fetch.offline;
    if let Some(s) = speculate::open(&gpu, &spec, &model, session.capacity(), offline)? {
        g.speculate(&model, &session, s).map_err(cli_error)?;
    }
    let times = print_reply(&model, &mut session, &mut g, || false)?;
    if let Some((generated, stats)) = g.diffusion_stats() {
        diffuse::report(&gpu, generated, &stats, times.first + times.rest);
        return Ok(());
    }
    let prompt_tokens = g.prompt_tokens();
    let decoded = g.sampled_tokens().saturating_sub(1);
    let speculation = match g.speculation_stats() {
        Some(stats) => format!("; {}", speculate::describe(&stats)),
        None => String::new(),
    };
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.1} tokens/s); decode: {} tokens in {:.3} s ({:.1} tokens/s) on {}{speculation}",
        prompt_tokens,
        times.first,
        prompt_tokens as f64 / times.first,
        decoded,
        times.rest,
        if times.rest > 0.0 { decoded as f64 / times.rest } else { 0.0 },
        gpu.info.name
    );
    Ok(())
}

/// A generator error in the command line's words (settings named by their flags).
pub fn cli_error(e: GenerateError) -> String {
    match e {
        GenerateError::Request(e) => e.message(cli::flag),
        GenerateError::Diffusion(DiffusionError::Config(e)) => cli::diffusion_error(&e),
        e => e.to_string(),
    }
}

/// How long a reply took: its first step (the prompt and the first token, or the first
/// diffusion block) and the rest.
pub struct ReplyTimes {
    pub first: f64,
    pub rest: f64,
}

/// Drive `g` to its end, printing each piece on stdout as it comes (then a newline);
/// `stop()` ends it early (Ctrl-C in `chat`).
pub fn print_reply(
    model: &Model,
    session: &mut Session,
    g: &mut Generation,
    stop: impl Fn() -> bool,
) -> Result<ReplyTimes, String> {
    let start = Instant::now();
    let mut first = None;
    let mut rest = Instant::now();
    loop {
        let t = Instant::now();
        let step = pollster::block_on(g.step(model, session)).map_err(cli_error)?;
        g.observe_step_time(t.elapsed().as_secs_f64());
        if first.is_none() {
            first = Some(start.elapsed().as_secs_f64());
            rest = Instant::now();
        }
        match step {
            Step::Done(_) => break,
            Step::Text(piece) => out!("{piece}"),
        }
        if stop() {
            g.cancel();
            break;
        }
    }
    outln!();
    Ok(ReplyTimes {
        first: first.unwrap_or(0.0),
        rest: rest.elapsed().as_secs_f64(),
    })
}

//! The `kestrel` command. Native front end: the only place that blocks on GPU futures.

mod app;
mod args;
mod bench;
mod bench_attention;
mod bench_kernels;
mod chat;
mod diffuse;
mod engine;
mod fetch;
mod npy;
mod serve;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use kestrel_models::generate::{GenerateError, Generation, Prompt, Request, Step};
use kestrel_models::AttentionOptions;
use kestrel_models::Model;
use kestrel_runtime::block_mask::SparseConfig;
use kestrel_runtime::diffusion::DiffusionError;
use kestrel_runtime::session::{Sampling, Session};
use kestrel_runtime::{BackendChoice, Gpu};

use args::Args;

const USAGE: &str = "kestrel — LLMs on any GPU through WebGPU/wgpu

usage:
  kestrel info [--backend auto|vulkan|gl|metal|dx12]
  kestrel logits --model PATH --tokens 5,17,42 [--mode prefill|decode] [--backend B] --out FILE.npy
  kestrel generate --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K]
                   [--top-p P] [--seed S] [--stop TEXT] [--ctx N] [--backend B]
  kestrel bench [--model PATH] [--attention [--max-len N]] [--prompt-tokens N]
                [--decode-tokens N] [--report-every N] [--json] [--backend B]
  kestrel bench --kernels [--json] [--backend B]   (every kernel case, timed and checked)
  kestrel chat [--model PATH] [--system TEXT] [--max-tokens N] [--temperature T] [--top-k K]
               [--top-p P] [--seed S] [--stop TEXT] [--ctx N] [--backend B]
               (without --model: SmolLM2-135M-Instruct, downloaded once into the cache)
  kestrel diffuse --model PATH --tokens IDS --gen-length G --steps S --block-length B
                  --out FILE.json [--temperature T] [--cfg-scale C]
                  [--remasking low_confidence|random] [--threshold X] [--cache none|prefix|dual]
                  [--seed S] [--backend B]
  kestrel serve --model PATH [--host 127.0.0.1] [--port 8080] [--ctx N] [--max-body BYTES]
                [--backend B]
               (OpenAI-compatible HTTP: /v1/chat/completions, /v1/completions, /v1/models,
                /health; --port 0 picks a free port)
  kestrel app [--model PATH] [--system TEXT] [--ctx N] [--backend B]
              (a desktop chat window; without --model it asks for a model path)

sampling (generate, chat): --temperature in [0, 2] (0 is greedy), --top-p in (0, 1], --top-k
(0 = off); a reply ends before --stop TEXT

diffusion models (LLaDA): generate and chat sample by masked diffusion and print each block
as it fills; they take --block-length, --steps, --threshold, --cache, --cfg-scale, --remasking

attention options (logits, generate, chat, bench, serve):
  --attention-sinks N --kv-window W   StreamingLLM: keep the first N tokens and the last W
                                      (keys cached before RoPE, positions inside the cache),
                                      so a sequence can grow without bound in fixed memory
  --block-sparse SPEC                 block-sparse attention over 64x64 blocks, e.g.
                                      local=4,global=1,random=1,dilation=1,seed=0[@LAYERS];...";

/// Options every command that loads a model accepts.
pub const ATTENTION_OPTIONS: &[&str] = &["attention-sinks", "kv-window", "block-sparse"];

type CliResult = Result<(), String>;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = Args::parse(&argv).and_then(|a| run(&a));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> CliResult {
    match a.command.as_str() {
        "info" => info(a),
        "logits" => logits(a),
        "generate" => generate(a),
        "bench" => bench::run(a),
        "chat" => chat::run(a),
        "diffuse" => diffuse::run(a),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        "serve" => serve::run(a),
        "app" => app::run(a),
        other => Err(format!("unknown command '{other}'\n{USAGE}")),
    }
}

pub fn open_gpu(a: &Args) -> Result<Arc<Gpu>, String> {
    let choice: BackendChoice = a
        .get("backend")
        .unwrap_or("auto")
        .parse()
        .map_err(|e| format!("{e}"))?;
    pollster::block_on(Gpu::new(choice)).map_err(|e| e.to_string())
}

pub fn open_model(gpu: &Arc<Gpu>, a: &Args) -> Result<Model, String> {
    let path = a.required("model")?;
    let options = attention_options(a)?;
    let mut model = kestrel_models::load(gpu, Path::new(path)).map_err(|e| e.to_string())?;
    apply_attention(&mut model, options)?;
    Ok(model)
}

/// The attention options given on the command line (checked against the model later).
pub fn attention_options(a: &Args) -> Result<AttentionOptions, String> {
    let streaming = match (a.get("attention-sinks"), a.get("kv-window")) {
        (None, None) => None,
        (Some(_), Some(_)) => Some((a.parsed("attention-sinks", 0)?, a.parsed("kv-window", 0)?)),
        _ => return Err("--attention-sinks and --kv-window go together".into()),
    };
    let sparse = a
        .get("block-sparse")
        .map(SparseConfig::parse)
        .transpose()
        .map_err(|e| format!("--block-sparse: {e}"))?;
    Ok(AttentionOptions { streaming, sparse })
}

pub fn apply_attention(model: &mut Model, options: AttentionOptions) -> CliResult {
    if options != AttentionOptions::default() {
        model.set_attention(options).map_err(|e| match e {
            // The model names the option; the command line names its flag.
            kestrel_models::ModelError::Attention(e) => e.describe(|field| match field {
                kestrel_models::AttentionField::AttentionSinks => "--attention-sinks",
                kestrel_models::AttentionField::KvWindow => "--kv-window",
                kestrel_models::AttentionField::BlockSparse => "--block-sparse",
            }),
            e => e.to_string(),
        })?;
    }
    Ok(())
}

/// `known` plus the attention options.
pub fn with_attention<'a>(known: &[&'a str]) -> Vec<&'a str> {
    known.iter().chain(ATTENTION_OPTIONS).copied().collect()
}

fn info(a: &Args) -> CliResult {
    a.only(&["backend"])?;
    let gpu = open_gpu(a)?;
    let c = &gpu.caps;
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("adapter: {}", gpu.info.name);
    println!("backend: {}", gpu.backend_name());
    println!("device type: {:?}", gpu.info.device_type);
    println!("driver: {} {}", gpu.info.driver, gpu.info.driver_info);
    println!("features:");
    println!("  shader-f16: {}", yes(c.shader_f16));
    if c.subgroups {
        println!(
            "  subgroups: yes (size {}..{})",
            c.subgroup_min_size, c.subgroup_max_size
        );
    } else {
        println!("  subgroups: no");
    }
    println!("  timestamp queries: {}", yes(c.timestamps));
    println!("limits:");
    println!(
        "  max storage buffer binding: {} MiB",
        c.max_storage_binding >> 20
    );
    println!("  max buffer size: {} MiB", c.max_buffer_size >> 20);
    println!(
        "  storage buffers per stage: {}",
        c.max_storage_buffers_per_stage
    );
    println!(
        "  invocations per workgroup: {}",
        c.max_invocations_per_workgroup
    );
    println!("  workgroup storage: {} bytes", c.max_workgroup_storage);
    println!("  workgroups per dimension: {}", c.max_workgroups_per_dim);
    Ok(())
}

pub fn parse_tokens(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("--tokens: '{t}' is not a token id"))
        })
        .collect()
}

fn logits(a: &Args) -> CliResult {
    a.only(&with_attention(&[
        "model", "tokens", "mode", "backend", "out",
    ]))?;
    let tokens = parse_tokens(a.required("tokens")?)?;
    let out = a.required("out")?;
    let mode = a.get("mode").unwrap_or("prefill");
    if mode != "prefill" && mode != "decode" {
        return Err(format!("--mode must be prefill or decode, not '{mode}'"));
    }
    let gpu = open_gpu(a)?;
    let model = open_model(&gpu, a)?;
    let vocab = model.config().vocab;
    let max = model.architecture().max_context();
    if tokens.len() > max {
        return Err(format!(
            "{} tokens exceed the model's context of {max} positions",
            tokens.len()
        ));
    }
    let mut session = model
        .session(&gpu, tokens.len())
        .map_err(|e| e.to_string())?;
    let rows = if mode == "prefill" {
        pollster::block_on(session.logits(&tokens)).map_err(|e| e.to_string())?
    } else {
        let mut all = Vec::with_capacity(tokens.len() * vocab);
        for t in &tokens {
            all.extend(pollster::block_on(session.logits(&[*t])).map_err(|e| e.to_string())?);
        }
        all
    };
    npy::write_f32(Path::new(out), &[tokens.len(), vocab], &rows)
        .map_err(|e| format!("cannot write {out}: {e}"))
}

fn generate(a: &Args) -> CliResult {
    a.only(&with_attention(&[
        "model",
        "prompt",
        "max-tokens",
        "temperature",
        "top-k",
        "top-p",
        "seed",
        "stop",
        "ctx",
        "backend",
        "gen-length",
        "steps",
        "block-length",
        "cfg-scale",
        "remasking",
        "threshold",
        "cache",
    ]))?;
    let prompt = a.required("prompt")?;
    let max_tokens: usize = a.parsed("max-tokens", 64)?;
    let mut request = request(a, max_tokens, Sampling::default())?;
    let ctx: usize = a.parsed("ctx", 4096)?;
    let gpu = open_gpu(a)?;
    let model = open_model(&gpu, a)?;
    let ids = Prompt::Text(prompt.to_string())
        .encode(&model, None)
        .map_err(cli_error)?;
    // A diffusion model's sequence is the prompt and the region it fills.
    let capacity = match model.config().causal {
        true => ctx,
        false => {
            let config = diffuse::config(a, max_tokens)?;
            request.diffusion = Some(config);
            ids.len() + config.gen_length
        }
    };
    let mut session = model.session(&gpu, capacity).map_err(|e| e.to_string())?;
    let mut g = Generation::new(&model, &mut session, ids, &request).map_err(cli_error)?;
    let times = print_reply(&model, &mut session, &mut g, || false)?;
    if let Some((generated, stats)) = g.diffusion_stats() {
        diffuse::report(&gpu, generated, &stats, times.first + times.rest);
        return Ok(());
    }
    let prompt_tokens = g.prompt_tokens();
    let decoded = g.sampled_tokens().saturating_sub(1);
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.1} tokens/s); decode: {} tokens in {:.3} s ({:.1} tokens/s) on {}",
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

/// The generator's request from `--temperature`, `--top-k`, `--top-p`, `--seed` and
/// `--stop` (`sampling` where a flag is absent) and `max_tokens`, checked, its errors
/// naming the flags.
pub fn request(a: &Args, max_tokens: usize, sampling: Sampling) -> Result<Request, String> {
    let request = Request {
        sampling: Sampling {
            temperature: a.parsed("temperature", sampling.temperature)?,
            top_k: a.parsed("top-k", sampling.top_k)?,
            top_p: a.parsed("top-p", sampling.top_p)?,
            seed: a.parsed("seed", sampling.seed)?,
        },
        max_tokens,
        stop: a.get("stop").map(str::to_string).into_iter().collect(),
        ..Request::default()
    };
    request
        .validate()
        .map_err(|e| e.message(|field| format!("--{}", field.replace('_', "-"))))?;
    Ok(request)
}

/// A generator error in the command line's words (settings named by their flags).
pub fn cli_error(e: GenerateError) -> String {
    match e {
        GenerateError::Request(e) => e.message(|field| format!("--{}", field.replace('_', "-"))),
        GenerateError::Diffusion(DiffusionError::Config(e)) => diffuse::config_error(&e),
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
    let mut out = std::io::stdout();
    let start = Instant::now();
    let mut first = None;
    let mut rest = Instant::now();
    loop {
        let step = pollster::block_on(g.step(model, session)).map_err(cli_error)?;
        if first.is_none() {
            first = Some(start.elapsed().as_secs_f64());
            rest = Instant::now();
        }
        match step {
            Step::Done(_) => break,
            Step::Text(piece) => {
                print!("{piece}");
                let _ = out.flush();
            }
        }
        if stop() {
            g.cancel();
            break;
        }
    }
    println!();
    Ok(ReplyTimes {
        first: first.unwrap_or(0.0),
        rest: rest.elapsed().as_secs_f64(),
    })
}

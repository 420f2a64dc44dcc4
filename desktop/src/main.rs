//! The `kestrel` command. Native front end: the only place that blocks on GPU futures.

mod app;
mod bench;
mod bench_attention;
mod bench_batch;
mod bench_kernels;
mod bench_speculate;
mod catalogue;
mod chat;
mod cli;
mod diffuse;
mod engine;
mod fetch;
mod generate;
mod hub;
mod info;
mod logits;
mod model_ref;
mod npy;
mod pipeline_cache;
mod prebuild;
mod pull;
mod runtime_dir;
mod scheduler;
mod serve;
mod speculate;
mod stdout;
mod tune;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kestrel_models::{AttentionOptions, Model, ModelError};
use kestrel_runtime::Gpu;

use cli::{Cli, Command, DeviceArgs};

type CliResult = Result<(), String>;

fn main() -> ExitCode {
    // A usage error ends here: clap prints it with the usage line and a hint, and exits 2.
    let cli = Cli::parse();
    // Before any thread starts (it sets an environment variable) and any device opens.
    runtime_dir::ensure();
    let result = run(cli.command);
    // Whatever the command's outcome, the pipelines it compiled are kept for the next run.
    pipeline_cache::save_all();
    prebuild::save_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> CliResult {
    match command {
        Command::Info(a) => info::run(&a),
        Command::Logits(a) => logits::run(&a),
        Command::Generate(a) => generate::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Chat(a) => chat::run(&a),
        Command::Diffuse(a) => diffuse::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::App(a) => app::run(&a),
        Command::Models(a) => pull::models(&a),
        Command::Pull(a) => pull::pull(&a),
    }
}

/// `KESTREL_MAX_STORAGE_BINDING=BYTES` lowers the adapter's storage-binding limit (never
/// raises it), so a large adapter can try what a small one does: split weights, prompts
/// run in several passes.
const MAX_BINDING_VAR: &str = "KESTREL_MAX_STORAGE_BINDING";

/// Open the device for `device`, its pipeline cache started from the cache directory's file
/// (see [`pipeline_cache`]; `main` writes it back when the command ends) and its kernel
/// choices from `bench --tune`'s (see [`tune`]).
pub fn open_gpu(device: &DeviceArgs) -> Result<Arc<Gpu>, String> {
    let gpu = pollster::block_on(Gpu::new(device.backend)).map_err(|e| e.to_string())?;
    pipeline_cache::load(&gpu);
    match std::env::var(MAX_BINDING_VAR) {
        Ok(v) => match v.parse::<u64>() {
            Ok(bytes) if bytes >= 1024 => Ok(gpu.with_max_binding(bytes)),
            _ => Err(format!(
                "{MAX_BINDING_VAR}={v} is not a number of bytes (at least 1024)"
            )),
        },
        Err(_) => Ok(gpu),
    }
}

/// Load the model at `path` and set its attention options, creating the pipelines it used in
/// an earlier run meanwhile (see `prebuild`).
pub fn open_model(gpu: &Arc<Gpu>, path: &Path, options: AttentionOptions) -> Result<Model, String> {
    prebuild::start(gpu, path);
    let mut model = kestrel_models::load(gpu, path).map_err(|e| e.to_string())?;
    apply_attention(&mut model, options)?;
    tune::ensure(gpu, &model);
    if let Some(note) = unread_keys_note(&model) {
        eprintln!("{note}");
    }
    Ok(model)
}

/// A line naming the config.json keys no table of the model's family lists: tolerated (as
/// llama.cpp tolerates unknown metadata) but said, since Kestrel does not act on them.
pub fn unread_keys_note(model: &Model) -> Option<String> {
    let keys = &model.config().unread_keys;
    (!keys.is_empty()).then(|| {
        format!(
            "note: config.json keys that Kestrel's {} table does not list, so not read: {}",
            model.config().architecture,
            keys.join(", ")
        )
    })
}

pub fn apply_attention(model: &mut Model, options: AttentionOptions) -> CliResult {
    if options != AttentionOptions::default() {
        model.set_attention(options).map_err(|e| match e {
            // The model names the option; the command line names its flag.
            ModelError::Attention(e) => e.describe(cli::attention_flag),
            e => e.to_string(),
        })?;
    }
    Ok(())
}

//! Diffusion LMs on the command line: `kestrel diffuse` (the contract: ids in, the whole
//! sequence out as JSON), the sampler settings that `generate` and `chat` also take for a
//! bidirectional model (the generator then streams it block by block), and its bench.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kestrel_models::generate::mask_token;
use kestrel_models::Model;
use kestrel_runtime::diffusion::{
    self, BlockCache, ConfigError, DiffusionConfig, DiffusionStats, Setting,
};
use kestrel_runtime::Gpu;

use crate::args::Args;
use crate::{open_gpu, open_model, parse_tokens, with_attention};

/// Options of the diffusion sampler, shared by `diffuse`, `generate` and `chat`.
pub const OPTIONS: &[&str] = &[
    "gen-length",
    "steps",
    "block-length",
    "temperature",
    "cfg-scale",
    "remasking",
    "threshold",
    "cache",
    "seed",
];

/// The sampler settings from the command line; `gen_length` when `--gen-length` is absent.
pub fn config(a: &Args, gen_length: usize) -> Result<DiffusionConfig, String> {
    let gen_length = a.parsed("gen-length", gen_length)?;
    let block_length = a.parsed("block-length", gen_length.min(32))?;
    let random_remasking = match a.get("remasking").unwrap_or("low_confidence") {
        "low_confidence" => false,
        "random" => true,
        other => {
            return Err(format!(
                "--remasking must be low_confidence or random, not '{other}'"
            ))
        }
    };
    let cache = match a.get("cache").unwrap_or("none") {
        "none" => BlockCache::None,
        "prefix" => BlockCache::Prefix,
        "dual" => BlockCache::Dual,
        other => {
            return Err(format!(
                "--cache must be none, prefix or dual, not '{other}'"
            ))
        }
    };
    let threshold = a
        .get("threshold")
        .map(|t| {
            t.parse::<f32>()
                .map_err(|_| format!("--threshold: cannot parse '{t}'"))
        })
        .transpose()?;
    let config = DiffusionConfig {
        gen_length,
        block_length,
        steps: a.parsed("steps", gen_length)?,
        temperature: a.parsed("temperature", 0.0)?,
        cfg_scale: a.parsed("cfg-scale", 0.0)?,
        random_remasking,
        threshold,
        cache,
        seed: a.parsed("seed", 0)?,
    };
    config.validate().map_err(|e| config_error(&e))?;
    Ok(config)
}

/// A sampler setting error in the command line's words: the settings named by their flags.
pub fn config_error(e: &ConfigError) -> String {
    let flag = |s: Setting| format!("--{}", s.field().replace('_', "-"));
    format!("input out of range: {}", e.message(flag))
}

/// Run the sampler after `prompt`, block by block; returns the whole sequence and the
/// counters.
pub fn generate(
    gpu: &Arc<Gpu>,
    model: &Model,
    prompt: &[u32],
    config: &DiffusionConfig,
) -> Result<(Vec<u32>, DiffusionStats), String> {
    let mask = mask_token(model).map_err(|e| e.to_string())?;
    let mut session = model
        .session(gpu, prompt.len() + config.gen_length)
        .map_err(|e| e.to_string())?;
    pollster::block_on(diffusion::generate(&mut session, prompt, mask, config))
        .map_err(|e| e.to_string())
}

/// `kestrel diffuse`: write {"tokens": [...]} for prompt + generation.
pub fn run(a: &Args) -> Result<(), String> {
    let mut known = vec!["model", "tokens", "out", "backend"];
    known.extend(OPTIONS);
    a.only(&with_attention(&known))?;
    let tokens = parse_tokens(a.required("tokens")?)?;
    let out = a.required("out")?;
    a.required("gen-length")?;
    let config = config(a, 0)?;
    let gpu = open_gpu(a)?;
    let model = open_model(&gpu, a)?;
    let t = Instant::now();
    let (all, stats) = generate(&gpu, &model, &tokens, &config)?;
    report(&gpu, config.gen_length, &stats, t.elapsed().as_secs_f64());
    let text = serde_json::json!({ "tokens": all }).to_string();
    std::fs::write(Path::new(out), text).map_err(|e| format!("cannot write {out}: {e}"))
}

/// Forward passes per generated token and tokens/s, on stderr.
pub fn report(gpu: &Gpu, generated: usize, stats: &DiffusionStats, secs: f64) {
    eprintln!(
        "diffusion: {generated} tokens in {} forward passes ({:.2} per token), {:.3} s ({:.1} tokens/s) on {}",
        stats.forwards,
        stats.forwards as f64 / generated.max(1) as f64,
        secs,
        generated as f64 / secs.max(1e-9),
        gpu.info.name
    );
}

/// `kestrel bench` on a diffusion model: forward passes per token, tokens/s and agreement
/// with exact decoding (one token per step, no cache) for fewer steps, threshold decoding
/// and threshold decoding with the prefix cache.
pub fn bench(gpu: &Arc<Gpu>, model: &Model, text: bool) -> Result<serde_json::Value, String> {
    let vocab = model.config().vocab as u32;
    let mask = mask_token(model).map_err(|e| e.to_string())?;
    let prompt: Vec<u32> = (1..=16u32)
        .map(|i| i * 37 % vocab)
        .filter(|&t| t != mask)
        .collect();
    let room = model
        .architecture()
        .max_context()
        .saturating_sub(prompt.len());
    let block = 8usize.min(room.max(1));
    let gen_length = (room.min(64) / block) * block;
    if gen_length == 0 {
        return Err("the model's context leaves no room to generate".into());
    }
    let exact = DiffusionConfig {
        gen_length,
        block_length: block,
        steps: gen_length,
        temperature: 0.0,
        cfg_scale: 0.0,
        random_remasking: false,
        threshold: None,
        cache: BlockCache::None,
        seed: 0,
    };
    let variants = [
        ("exact: 1 token per step", exact),
        (
            "fixed: 2 tokens per step",
            DiffusionConfig {
                steps: gen_length / 2,
                ..exact
            },
        ),
        (
            "threshold 0.5",
            DiffusionConfig {
                threshold: Some(0.5),
                ..exact
            },
        ),
        (
            "threshold 0.5 + prefix cache",
            DiffusionConfig {
                threshold: Some(0.5),
                cache: BlockCache::Prefix,
                ..exact
            },
        ),
        (
            "threshold 0.5 + dual cache",
            DiffusionConfig {
                threshold: Some(0.5),
                cache: BlockCache::Dual,
                ..exact
            },
        ),
        (
            "fixed 1 per step + prefix cache",
            DiffusionConfig {
                cache: BlockCache::Prefix,
                ..exact
            },
        ),
        (
            "fixed 1 per step + dual cache",
            DiffusionConfig {
                cache: BlockCache::Dual,
                ..exact
            },
        ),
    ];
    if text {
        println!(
            "diffusion: prompt {} tokens, {gen_length} generated in blocks of {block}",
            prompt.len()
        );
        println!(
            "  {:<34}{:>9}{:>10}{:>12}{:>10}{:>9}",
            "sampler", "forwards", "per token", "positions", "tokens/s", "match"
        );
    }
    // Warm the pipelines and plans once.
    generate(gpu, model, &prompt, &exact)?;
    let mut reference: Option<Vec<u32>> = None;
    let mut rows = Vec::new();
    for (name, config) in variants {
        let t = Instant::now();
        let (out, stats) = generate(gpu, model, &prompt, &config)?;
        let secs = t.elapsed().as_secs_f64();
        let generated = &out[prompt.len()..];
        let reference = reference.get_or_insert_with(|| generated.to_vec());
        let same = generated
            .iter()
            .zip(reference.iter())
            .filter(|(a, b)| a == b)
            .count();
        let rate = same as f64 / gen_length as f64;
        if text {
            println!(
                "  {name:<34}{:>9}{:>10.2}{:>12}{:>10.1}{:>8.0}%",
                stats.forwards,
                stats.forwards as f64 / gen_length as f64,
                stats.positions_run,
                gen_length as f64 / secs,
                rate * 100.0
            );
        }
        rows.push(serde_json::json!({
            "sampler": name,
            "forwards": stats.forwards,
            "forwards_per_token": stats.forwards as f64 / gen_length as f64,
            "positions_run": stats.positions_run,
            "tokens_per_s": gen_length as f64 / secs,
            "match_rate_vs_exact": rate,
        }));
    }
    Ok(serde_json::json!({ "diffusion": {
        "prompt_tokens": prompt.len(),
        "gen_length": gen_length,
        "block_length": block,
        "samplers": rows,
    }}))
}

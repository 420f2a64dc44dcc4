//! Diffusion LMs on the command line: `kestrel diffuse` (the contract: ids in, the whole
//! sequence out as JSON), the speed report that `generate` and `chat` also print for a
//! bidirectional model, and its bench. The sampler's options are `cli::DiffusionArgs`.

use std::sync::Arc;
use std::time::Instant;

use kestrel_models::generate::mask_token;
use kestrel_models::Model;
use kestrel_runtime::diffusion::{self, BlockCache, DiffusionConfig, DiffusionStats};
use kestrel_runtime::Gpu;

use crate::cli::DiffuseArgs;
use crate::stdout::outln;
use crate::{open_gpu, open_model};

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
pub fn run(a: &DiffuseArgs) -> Result<(), String> {
    let config = a.diffusion.config(a.gen_length, a.temperature, a.seed)?;
    let path = crate::model_ref::resolve(&a.model, a.fetch.offline)?;
    let gpu = open_gpu(&a.device)?;
    let model = open_model(&gpu, &path, a.attention.options())?;
    let t = Instant::now();
    let (all, stats) = generate(&gpu, &model, &a.tokens.0, &config)?;
    report(&gpu, config.gen_length, &stats, t.elapsed().as_secs_f64());
    let text = serde_json::json!({ "tokens": all }).to_string();
    std::fs::write(&a.out, text).map_err(|e| format!("cannot write {}: {e}", a.out.display()))
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
        outln!(
            "diffusion: prompt {} tokens, {gen_length} generated in blocks of {block}",
            prompt.len()
        );
        outln!(
            "  {:<34}{:>9}{:>10}{:>12}{:>10}{:>9}",
            "sampler",
            "forwards",
            "per token",
            "positions",
            "tokens/s",
            "match"
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
            outln!(
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

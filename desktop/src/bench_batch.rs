//! `kestrel bench --batch N`: decode tokens/s of 1, 2, 4, ... N sequences decoded together in
//! batched steps (the server's continuous batching), each after its own prompt, and the GPU
//! time of the N-sequence step by kernel class.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kestrel_runtime::batch::{BatchConfig, BatchSession, Work, KV_BLOCK};
use kestrel_runtime::session::Sampling;
use kestrel_runtime::Gpu;
use serde_json::{json, Value};

use crate::cli::BenchArgs;
use crate::open_model;
use crate::stdout::outln;

/// Prompt tokens of each sequence, and decode steps timed, unless the options say.
const PROMPT: usize = 16;
const DECODE: usize = 32;

pub fn run(
    gpu: &Arc<Gpu>,
    path: &Path,
    a: &BenchArgs,
    most: usize,
    text: bool,
) -> Result<Value, String> {
    let model = open_model(gpu, path, a.attention_options.options())?;
    let arch = model.architecture();
    let vocab = arch.vocab_size() as u32;
    let prompt = a.prompt_tokens.unwrap_or(PROMPT).max(1);
    let decode = a.decode_tokens.unwrap_or(DECODE).max(1);
    let config = BatchConfig {
        max_seqs: most,
        context: prompt + decode + 1,
        pool_tokens: most * (prompt + decode + 1).next_multiple_of(KV_BLOCK),
    };
    let mut batch = BatchSession::new(gpu, arch, config).map_err(|e| e.to_string())?;
    if text {
        outln!(
            "batched decode of {} ({prompt}-token prompts, {decode} steps):",
            model.name
        );
    }
    // 1, 2, 4, ... below `most`, then `most`.
    let mut sizes: Vec<usize> = (0..).map(|i| 1 << i).take_while(|&n| n < most).collect();
    sizes.push(most);
    let mut rows = Vec::new();
    for &n in &sizes {
        let tokens_per_s = decode_rate(&mut batch, n, prompt, decode, vocab)?;
        if text {
            outln!(
                "  {n:>3} sequences: {tokens_per_s:>8.2} tokens/s together, {:>7.2} each",
                tokens_per_s / n as f64
            );
        }
        rows.push(json!({"sequences": n, "tokens_per_s": tokens_per_s}));
    }
    let times = match batch.plan_of(most) {
        Some(plan) => pollster::block_on(kestrel_runtime::profile::kernel_times(
            gpu,
            plan.dispatches(),
        ))
        .map_err(|e| e.to_string())?,
        None => None,
    };
    if text {
        outln!("GPU time of a {most}-sequence step:");
        crate::bench::print_kernel_times(times.as_ref());
    }
    Ok(json!({
        "prompt_tokens": prompt,
        "decode_steps": decode,
        "sizes": rows,
        "step_kernel_ms": times.as_ref().map(|k| crate::bench::class_map(k, |ms| ms)),
    }))
}

/// Aggregate decode tokens/s of `n` sequences: each reads a prompt of `prompt` tokens (one
/// step for all), then `decode` greedy steps are timed.
fn decode_rate(
    batch: &mut BatchSession,
    n: usize,
    prompt: usize,
    decode: usize,
    vocab: u32,
) -> Result<f64, String> {
    // Prompts of their own: each sequence reads its whole prompt (no shared prefix).
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|s| {
            (0..prompt)
                .map(|i| ((s * 7919 + i * 104_729) as u32 + 1) % vocab)
                .collect()
        })
        .collect();
    let mut seqs = Vec::new();
    for p in &prompts {
        let opened = batch
            .open(p, prompt + decode + 1)
            .map_err(|e| e.to_string())?;
        let (seq, _) = opened.ok_or("the batch has no room")?;
        seqs.push(seq);
    }
    let step = |batch: &mut BatchSession, feeds: &[Vec<u32>]| -> Result<Vec<Vec<u32>>, String> {
        let work: Vec<Work> = (seqs.iter().zip(feeds))
            .map(|(&seq, f)| Work {
                seq,
                tokens: f,
                sampling: Sampling::default(),
            })
            .collect();
        let ids = pollster::block_on(batch.step(&work)).map_err(|e| e.to_string())?;
        Ok(ids.into_iter().map(|t| vec![t]).collect())
    };
    let mut feeds = step(batch, &prompts)?;
    // One untimed step makes the n-row plan.
    feeds = step(batch, &feeds)?;
    let t = Instant::now();
    for _ in 1..decode {
        feeds = step(batch, &feeds)?;
    }
    let s = t.elapsed().as_secs_f64();
    for seq in seqs {
        batch.close(seq);
    }
    Ok((n * (decode - 1)) as f64 / s.max(1e-9))
}

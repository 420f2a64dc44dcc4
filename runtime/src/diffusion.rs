//! Masked-diffusion generation (LLaDA): the generation region starts as mask tokens and is
//! filled in over steps, block by block (semi-autoregressive). Each step runs the
//! bidirectional network and lets the GPU pick which masked positions of the current block
//! to commit (`kernels::unmask`); only those (position, token) pairs come back.
//!
//! Commit rules: LLaDA's schedule (a block's masks spread evenly over its steps, the most
//! confident committed first; or random remasking), or Fast-dLLM's confidence threshold
//! (every position at or above it, at least one per step). Caching: none (every step runs
//! the whole sequence), or Fast-dLLM's prefix cache (a full forward at each block start,
//! then steps run only from the block on, over the prefix's cached keys and values) or dual
//! cache (steps run only the block, over the cached prefix and suffix) — approximate,
//! refreshed every block.

use crate::arch::{UnmaskHead, UnmaskStep};
use crate::error::{Error, Result};
use crate::rng::pcg_hash;
use crate::session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockCache {
    /// Every step runs the whole sequence (exact).
    None,
    /// Each block's first step runs everything; later steps run from the block on.
    Prefix,
    /// Each block's first step runs everything; later steps run only the block, over the
    /// cached keys and values of the prefix and of the suffix (Fast-dLLM's dual cache).
    Dual,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffusionConfig {
    pub gen_length: usize,
    pub block_length: usize,
    /// Steps over the whole generation (split evenly across blocks); ignored by threshold
    /// decoding, which steps until the block is full.
    pub steps: usize,
    pub temperature: f32,
    /// Classifier-free guidance scale (0 = off).
    pub cfg_scale: f32,
    pub random_remasking: bool,
    /// Fast-dLLM confidence-threshold parallel decoding.
    pub threshold: Option<f32>,
    pub cache: BlockCache,
    pub seed: u32,
}

impl DiffusionConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InputOutOfRange(m));
        if self.gen_length == 0 || self.block_length == 0 {
            return bad("--gen-length and --block-length must be at least 1".into());
        }
        if !self.gen_length.is_multiple_of(self.block_length) {
            return bad(format!(
                "--gen-length {} is not a multiple of --block-length {}",
                self.gen_length, self.block_length
            ));
        }
        let blocks = self.gen_length / self.block_length;
        if self.threshold.is_none() && (self.steps == 0 || !self.steps.is_multiple_of(blocks)) {
            return bad(format!(
                "--steps {} cannot be divided evenly across {blocks} blocks",
                self.steps
            ));
        }
        if let Some(t) = self.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return bad(format!("--threshold {t} must be in (0, 1]"));
            }
        }
        if self.cfg_scale < 0.0 || !self.cfg_scale.is_finite() {
            return bad(format!("--cfg-scale {} must be 0 or more", self.cfg_scale));
        }
        if self.cfg_scale != 0.0 && self.cache != BlockCache::None {
            return bad("classifier-free guidance runs without the block cache".into());
        }
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            return bad(format!(
                "--temperature {} must be 0 or more",
                self.temperature
            ));
        }
        Ok(())
    }

    fn blocks(&self) -> usize {
        self.gen_length / self.block_length
    }
}

/// LLaDA's schedule: `masked` commits spread over `steps`, the remainder to the first steps.
pub fn transfer_schedule(masked: usize, steps: usize) -> Vec<usize> {
    (0..steps)
        .map(|i| masked / steps + (i < masked % steps) as usize)
        .collect()
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub block: usize,
    /// The (position, token) pairs committed, by position.
    pub committed: Vec<(u32, u32)>,
}

/// Counters for the figures: forward passes and the positions they ran.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiffusionStats {
    pub forwards: usize,
    pub positions_run: usize,
}

/// Generate `config.gen_length` tokens after `prompt`; returns the whole sequence.
/// `on_step` sees each step's commits and the sequence after them (stream a block when its
/// last mask is filled). The session's capacity must hold prompt + generation.
pub async fn generate(
    session: &mut Session,
    prompt: &[u32],
    mask_id: u32,
    config: &DiffusionConfig,
    mut on_step: impl FnMut(&StepReport, &[u32]),
) -> Result<(Vec<u32>, DiffusionStats)> {
    config.validate()?;
    if prompt.contains(&mask_id) {
        return Err(Error::InputOutOfRange(format!(
            "the prompt contains the mask token {mask_id}"
        )));
    }
    let mut x = prompt.to_vec();
    x.resize(prompt.len() + config.gen_length, mask_id);
    let len = x.len();
    if len > session.capacity() {
        return Err(Error::InputOutOfRange(format!(
            "{} prompt tokens and {} to generate exceed the context of {} tokens",
            prompt.len(),
            config.gen_length,
            session.capacity()
        )));
    }
    let head = UnmaskHead {
        mask_id,
        cfg_scale_bits: config.cfg_scale.to_bits(),
        random_remasking: config.random_remasking,
    };
    let mut stats = DiffusionStats::default();
    session.reset();
    for block in 0..config.blocks() {
        let start = prompt.len() + block * config.block_length;
        let end = start + config.block_length;
        let masked = |x: &[u32]| x[start..end].iter().filter(|&&t| t == mask_id).count();
        let schedule = match config.threshold {
            Some(_) => Vec::new(),
            None => transfer_schedule(masked(&x), config.steps / config.blocks()),
        };
        let mut step = 0;
        while masked(&x) > 0 {
            let k = match config.threshold {
                Some(_) => 0,
                None => match schedule.get(step) {
                    Some(&k) => k,
                    None => break,
                },
            };
            step += 1;
            if k == 0 && config.threshold.is_none() {
                // LLaDA runs a step that commits nothing here; skipping it changes nothing.
                continue;
            }
            let (from, to) = match config.cache {
                BlockCache::Prefix if step > 1 => (start, len),
                BlockCache::Dual if step > 1 => (start, end),
                _ => (0, len),
            };
            let uncond: Option<Vec<u32>> = (config.cfg_scale != 0.0).then(|| {
                let mut u = x.clone();
                u[..prompt.len()].fill(mask_id);
                u
            });
            let choice = UnmaskStep {
                k: k as u32,
                threshold: config.threshold.unwrap_or(1.0),
                window: (start as u32, end as u32),
                temperature: config.temperature,
                seed: pcg_hash(config.seed ^ pcg_hash((block * 65536 + step) as u32)),
            };
            let committed = session
                .unmask(from, &x[from..to], uncond.as_deref(), head, &choice)
                .await?;
            stats.forwards += 1 + uncond.is_some() as usize;
            stats.positions_run += (to - from) * (1 + uncond.is_some() as usize);
            if committed.is_empty() {
                return Err(Error::Readback(
                    "a diffusion step committed no token".into(),
                ));
            }
            for &(p, t) in &committed {
                let p = p as usize;
                if p < start || p >= end || x[p] != mask_id {
                    return Err(Error::Readback(format!(
                        "the sampler committed position {p}, not a masked one of block {start}..{end}"
                    )));
                }
                x[p] = t;
            }
            on_step(&StepReport { block, committed }, &x);
        }
    }
    Ok((x, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_the_remainder_first() {
        assert_eq!(transfer_schedule(8, 4), vec![2, 2, 2, 2]);
        assert_eq!(transfer_schedule(7, 3), vec![3, 2, 2]);
        assert_eq!(transfer_schedule(2, 4), vec![1, 1, 0, 0]);
    }

    #[test]
    fn bad_settings_are_named() {
        let ok = DiffusionConfig {
            gen_length: 16,
            block_length: 8,
            steps: 8,
            temperature: 0.0,
            cfg_scale: 0.0,
            random_remasking: false,
            threshold: None,
            cache: BlockCache::None,
            seed: 0,
        };
        assert!(ok.validate().is_ok());
        let msg = |c: DiffusionConfig| c.validate().unwrap_err().to_string();
        assert!(msg(DiffusionConfig {
            gen_length: 12,
            ..ok
        })
        .contains("multiple"));
        assert!(msg(DiffusionConfig { steps: 7, ..ok }).contains("divided"));
        assert!(msg(DiffusionConfig {
            cfg_scale: 1.0,
            cache: BlockCache::Prefix,
            ..ok
        })
        .contains("guidance"));
        assert!(msg(DiffusionConfig {
            threshold: Some(1.5),
            ..ok
        })
        .contains("threshold"));
    }
}

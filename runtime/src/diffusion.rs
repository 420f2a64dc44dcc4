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

/// Tokens a block holds where the caller names no block length (LLaDA's), at most the
/// generation's.
pub const DEFAULT_BLOCK_LENGTH: usize = 32;

impl DiffusionConfig {
    /// `gen_length` tokens in blocks of `block_length` (default [`DEFAULT_BLOCK_LENGTH`], at
    /// most `gen_length`) over `steps` (default one per token), LLaDA's sampler otherwise:
    /// low-confidence remasking, no guidance, no threshold, no cache. Not yet validated.
    pub fn new(
        gen_length: usize,
        block_length: Option<usize>,
        steps: Option<usize>,
        temperature: f32,
        seed: u32,
    ) -> DiffusionConfig {
        DiffusionConfig {
            gen_length,
            block_length: block_length.unwrap_or(DEFAULT_BLOCK_LENGTH.min(gen_length)),
            steps: steps.unwrap_or(gen_length),
            temperature,
            cfg_scale: 0.0,
            random_remasking: false,
            threshold: None,
            cache: BlockCache::None,
            seed,
        }
    }
}

/// A setting of [`DiffusionConfig`] that an error names; front ends map it to their own
/// spelling (a command-line flag, a request field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    GenLength,
    BlockLength,
    Steps,
    Threshold,
    CfgScale,
    Temperature,
}

impl Setting {
    /// The field's name in [`DiffusionConfig`].
    pub fn field(self) -> &'static str {
        match self {
            Setting::GenLength => "gen_length",
            Setting::BlockLength => "block_length",
            Setting::Steps => "steps",
            Setting::Threshold => "threshold",
            Setting::CfgScale => "cfg_scale",
            Setting::Temperature => "temperature",
        }
    }
}

/// Settings that do not make a sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConfigError {
    ZeroLength,
    NotMultiple {
        gen_length: usize,
        block_length: usize,
    },
    UnevenSteps {
        steps: usize,
        blocks: usize,
    },
    Threshold(f32),
    CfgScale(f32),
    GuidanceWithCache,
    Temperature(f32),
}

impl ConfigError {
    /// The message, with every setting spelled by `name`.
    pub fn message(&self, name: impl Fn(Setting) -> String) -> String {
        use Setting::*;
        match *self {
            ConfigError::ZeroLength => {
                format!(
                    "{} and {} must be at least 1",
                    name(GenLength),
                    name(BlockLength)
                )
            }
            ConfigError::NotMultiple {
                gen_length,
                block_length,
            } => format!(
                "{} {gen_length} is not a multiple of {} {block_length}",
                name(GenLength),
                name(BlockLength)
            ),
            ConfigError::UnevenSteps { steps, blocks } => format!(
                "{} {steps} cannot be divided evenly across {blocks} blocks",
                name(Steps)
            ),
            ConfigError::Threshold(t) => format!("{} {t} must be in (0, 1]", name(Threshold)),
            ConfigError::CfgScale(c) => format!("{} {c} must be 0 or more", name(CfgScale)),
            ConfigError::GuidanceWithCache => {
                "classifier-free guidance runs without the block cache".to_string()
            }
            ConfigError::Temperature(t) => {
                format!("{} {t} must be 0 or more", name(Temperature))
            }
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message(|s| s.field().to_string()))
    }
}

impl std::error::Error for ConfigError {}

/// Why a sampler could not start or a step failed.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error("input out of range: {0}")]
    Config(#[from] ConfigError),
    #[error("input out of range: the prompt contains the mask token {0}")]
    MaskInPrompt(u32),
    #[error("input out of range: {prompt} prompt tokens and {gen_length} to generate exceed the context of {context} tokens")]
    PastContext {
        prompt: usize,
        gen_length: usize,
        context: usize,
    },
    #[error(transparent)]
    Runtime(#[from] Error),
}

impl DiffusionConfig {
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.gen_length == 0 || self.block_length == 0 {
            return Err(ConfigError::ZeroLength);
        }
        if !self.gen_length.is_multiple_of(self.block_length) {
            return Err(ConfigError::NotMultiple {
                gen_length: self.gen_length,
                block_length: self.block_length,
            });
        }
        let blocks = self.blocks();
        if self.threshold.is_none() && (self.steps == 0 || !self.steps.is_multiple_of(blocks)) {
            return Err(ConfigError::UnevenSteps {
                steps: self.steps,
                blocks,
            });
        }
        if let Some(t) = self.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return Err(ConfigError::Threshold(t));
            }
        }
        if self.cfg_scale < 0.0 || !self.cfg_scale.is_finite() {
            return Err(ConfigError::CfgScale(self.cfg_scale));
        }
        if self.cfg_scale != 0.0 && self.cache != BlockCache::None {
            return Err(ConfigError::GuidanceWithCache);
        }
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            return Err(ConfigError::Temperature(self.temperature));
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

/// One filled block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub index: usize,
    /// The block's tokens.
    pub tokens: Vec<u32>,
    /// Each step's commits, in order.
    pub steps: Vec<StepReport>,
}

/// The sampler as a step machine: each [`DiffusionSampler::next_block`] fills one block (in
/// as many network passes as its steps take), so a front end can show each block as it
/// fills and stop between blocks. It owns its sequence and borrows the session per call.
pub struct DiffusionSampler {
    config: DiffusionConfig,
    prompt_len: usize,
    mask_id: u32,
    /// Prompt then generation region: mask tokens until committed.
    x: Vec<u32>,
    head: UnmaskHead,
    /// The next block to fill.
    block: usize,
    stats: DiffusionStats,
}

impl DiffusionSampler {
    /// A sampler for `config.gen_length` tokens after `prompt`, on `session` (which must
    /// hold prompt + generation; it is reset).
    pub fn new(
        session: &mut Session,
        prompt: &[u32],
        mask_id: u32,
        config: &DiffusionConfig,
    ) -> std::result::Result<DiffusionSampler, DiffusionError> {
        config.validate()?;
        if prompt.contains(&mask_id) {
            return Err(DiffusionError::MaskInPrompt(mask_id));
        }
        let mut x = prompt.to_vec();
        x.resize(prompt.len() + config.gen_length, mask_id);
        if x.len() > session.capacity() {
            return Err(DiffusionError::PastContext {
                prompt: prompt.len(),
                gen_length: config.gen_length,
                context: session.capacity(),
            });
        }
        session.reset();
        Ok(DiffusionSampler {
            config: *config,
            prompt_len: prompt.len(),
            mask_id,
            x,
            head: UnmaskHead {
                mask_id,
                cfg_scale_bits: config.cfg_scale.to_bits(),
                random_remasking: config.random_remasking,
            },
            block: 0,
            stats: DiffusionStats::default(),
        })
    }

    /// The whole sequence: the prompt, filled blocks, then masks.
    pub fn sequence(&self) -> &[u32] {
        &self.x
    }

    pub fn stats(&self) -> DiffusionStats {
        self.stats
    }

    /// Tokens generated so far (the filled blocks).
    pub fn generated(&self) -> usize {
        self.block * self.config.block_length
    }

    /// Fill the next block; None once every block is filled.
    pub async fn next_block(&mut self, session: &mut Session) -> Result<Option<Block>> {
        let config = &self.config;
        if self.block == config.blocks() {
            return Ok(None);
        }
        let block = self.block;
        let mask_id = self.mask_id;
        let len = self.x.len();
        let start = self.prompt_len + block * config.block_length;
        let end = start + config.block_length;
        let masked = |x: &[u32]| x[start..end].iter().filter(|&&t| t == mask_id).count();
        let schedule = match config.threshold {
            Some(_) => Vec::new(),
            None => transfer_schedule(masked(&self.x), config.steps / config.blocks()),
        };
        let mut steps = Vec::new();
        let mut step = 0;
        while masked(&self.x) > 0 {
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
                let mut u = self.x.clone();
                u[..self.prompt_len].fill(mask_id);
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
                .unmask(
                    from,
                    &self.x[from..to],
                    uncond.as_deref(),
                    self.head,
                    &choice,
                )
                .await?;
            let passes = 1 + uncond.is_some() as usize;
            self.stats.forwards += passes;
            self.stats.positions_run += (to - from) * passes;
            if committed.is_empty() {
                return Err(Error::Readback(
                    "a diffusion step committed no token".into(),
                ));
            }
            for &(p, t) in &committed {
                let p = p as usize;
                if p < start || p >= end || self.x[p] != mask_id {
                    return Err(Error::Readback(format!(
                        "the sampler committed position {p}, not a masked one of block {start}..{end}"
                    )));
                }
                self.x[p] = t;
            }
            steps.push(StepReport { block, committed });
        }
        self.block += 1;
        Ok(Some(Block {
            index: block,
            tokens: self.x[start..end].to_vec(),
            steps,
        }))
    }
}

/// Generate `config.gen_length` tokens after `prompt` (every block, in one call); returns
/// the whole sequence and the counters.
pub async fn generate(
    session: &mut Session,
    prompt: &[u32],
    mask_id: u32,
    config: &DiffusionConfig,
) -> std::result::Result<(Vec<u32>, DiffusionStats), DiffusionError> {
    let mut sampler = DiffusionSampler::new(session, prompt, mask_id, config)?;
    while sampler.next_block(session).await?.is_some() {}
    Ok((sampler.x, sampler.stats))
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
        // Errors name the config's fields; a front end may spell them its own way.
        let e = DiffusionConfig {
            gen_length: 12,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "gen_length 12 is not a multiple of block_length 8"
        );
        let flag = |s: Setting| format!("--{}", s.field().replace('_', "-"));
        assert_eq!(
            e.message(flag),
            "--gen-length 12 is not a multiple of --block-length 8"
        );
    }
}

//! Diffusion models (LLaDA) in the browser: `chat.completions.create({ diffusion: {...} })`
//! takes the sampler settings of `kestrel diffuse` under their snake_case names
//! (`block_length`, `steps`, `threshold`, `cache`, `cfg_scale`, `remasking`); the reply
//! streams a block at a time as each fills. The reply length is `max_tokens` (default
//! [`DEFAULT_REPLY_TOKENS`]) within the context, in whole blocks.

use kestrel_runtime::diffusion::{BlockCache, DiffusionConfig, Setting, DEFAULT_BLOCK_LENGTH};
use serde::Deserialize;

use crate::error::{Result, WebError};

/// A diffusion reply's length when the request gives no `max_tokens`: every step runs the
/// whole reply region, so the rest of the context (an autoregressive reply's bound) would
/// make each step as long as the context.
pub const DEFAULT_REPLY_TOKENS: usize = 128;

/// A request's `diffusion` settings; absent ones take `kestrel diffuse`'s defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionFields {
    #[serde(default)]
    block_length: Option<usize>,
    #[serde(default)]
    steps: Option<usize>,
    #[serde(default)]
    threshold: Option<f32>,
    #[serde(default)]
    cache: Option<String>,
    #[serde(default)]
    cfg_scale: Option<f32>,
    #[serde(default)]
    remasking: Option<String>,
}

/// A setting's name in a request.
fn field(s: Setting) -> String {
    match s {
        Setting::GenLength => "max_tokens".into(),
        Setting::Temperature => "temperature".into(),
        s => format!("diffusion.{}", s.field()),
    }
}

impl DiffusionFields {
    /// The sampler's settings for a reply of at most `max_tokens` (the default when absent)
    /// within `room` positions, rounded down to whole blocks of `block_length` (default
    /// [`DEFAULT_BLOCK_LENGTH`], or the reply's length when shorter); steps default to one per
    /// token.
    pub fn config(
        &self,
        max_tokens: Option<usize>,
        room: usize,
        temperature: f32,
        seed: u32,
    ) -> Result<DiffusionConfig> {
        let bad = |m: String| WebError::BadRequest(m);
        let want = max_tokens.unwrap_or(DEFAULT_REPLY_TOKENS).min(room);
        if want == 0 {
            return Err(bad(format!(
                "the prompt leaves no room in the context for a reply (room {room})"
            )));
        }
        let block_length = self.block_length.unwrap_or(DEFAULT_BLOCK_LENGTH.min(want));
        // A block length of 0 is left for the sampler's own check to name.
        let gen_length = want / block_length.max(1) * block_length;
        if gen_length == 0 && block_length > 0 {
            return Err(bad(format!(
                "a reply of {want} tokens (max_tokens, within the {room} positions the prompt \
                 leaves) is shorter than one block of {block_length} (diffusion.block_length)"
            )));
        }
        let cache = match self.cache.as_deref().unwrap_or("none") {
            "none" => BlockCache::None,
            "prefix" => BlockCache::Prefix,
            "dual" => BlockCache::Dual,
            other => {
                return Err(bad(format!(
                    "diffusion.cache must be 'none', 'prefix' or 'dual', not {other:?}"
                )))
            }
        };
        let random_remasking = match self.remasking.as_deref().unwrap_or("low_confidence") {
            "low_confidence" => false,
            "random" => true,
            other => {
                return Err(bad(format!(
                    "diffusion.remasking must be 'low_confidence' or 'random', not {other:?}"
                )))
            }
        };
        let config = DiffusionConfig {
            cfg_scale: self.cfg_scale.unwrap_or(0.0),
            random_remasking,
            threshold: self.threshold,
            cache,
            ..DiffusionConfig::new(
                gen_length,
                Some(block_length),
                self.steps,
                temperature,
                seed,
            )
        };
        config.validate().map_err(|e| bad(e.message(field)))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> DiffusionFields {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn replies_fill_whole_blocks_within_the_room() {
        let d = DiffusionFields::default();
        let c = d.config(None, 1000, 0.0, 1).unwrap();
        assert_eq!((c.gen_length, c.block_length, c.steps), (128, 32, 128));
        // Rounded down to whole blocks; short replies are one block.
        let c = d.config(Some(40), 1000, 0.0, 1).unwrap();
        assert_eq!((c.gen_length, c.block_length), (32, 32));
        let c = d.config(Some(8), 1000, 0.0, 1).unwrap();
        assert_eq!((c.gen_length, c.block_length), (8, 8));
        let c = d.config(None, 20, 0.0, 1).unwrap();
        assert_eq!((c.gen_length, c.block_length), (20, 20));
        let c = fields(r#"{"block_length": 4, "steps": 4, "threshold": 0.9, "cache": "dual"}"#)
            .config(Some(16), 100, 0.5, 7)
            .unwrap();
        assert_eq!((c.gen_length, c.steps, c.cache), (16, 4, BlockCache::Dual));
        assert_eq!((c.threshold, c.temperature, c.seed), (Some(0.9), 0.5, 7));
    }

    #[test]
    fn bad_settings_name_the_request_field() {
        let err = |json: &str, max: Option<usize>, room: usize| {
            fields(json)
                .config(max, room, 0.0, 0)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"block_length": 16}"#, Some(8), 100).contains("diffusion.block_length"));
        assert!(err("{}", None, 0).contains("no room"));
        assert!(err(r#"{"block_length": 4, "steps": 3}"#, Some(8), 100).contains("diffusion.steps"));
        assert!(err(r#"{"cache": "full"}"#, Some(8), 100).contains("diffusion.cache"));
        assert!(err(r#"{"remasking": "x"}"#, Some(8), 100).contains("diffusion.remasking"));
        assert!(err(r#"{"threshold": 2}"#, Some(8), 100).contains("diffusion.threshold"));
        let e = fields("{}").config(Some(8), 100, -1.0, 0).unwrap_err();
        assert!(e.to_string().contains("temperature"));
        assert!(serde_json::from_str::<DiffusionFields>(r#"{"gen_length": 8}"#).is_err());
    }
}

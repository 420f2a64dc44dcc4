//! Attention choices made when running a model rather than stored in its checkpoint
//! (StreamingLLM sinks, block-sparse patterns), their checks against the model, and typed
//! errors that name the option they are about, so each front end can name it its own way
//! (`--kv-window` on the command line).

use std::fmt;

use kestrel_runtime::block_mask::SparseConfig;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttentionOptions {
    /// StreamingLLM: keep the first `sinks` tokens and the last `window` (keys cached before
    /// RoPE, positions counted inside the cache).
    pub streaming: Option<(usize, usize)>,
    /// Block-sparse attention patterns per layer.
    pub sparse: Option<SparseConfig>,
}

/// The option an [`AttentionError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionField {
    /// `streaming`'s sinks.
    AttentionSinks,
    /// `streaming`'s window.
    KvWindow,
    /// `sparse`.
    BlockSparse,
}

impl AttentionField {
    /// The field's name in messages that are not about one front end.
    pub fn name(self) -> &'static str {
        match self {
            AttentionField::AttentionSinks => "attention_sinks",
            AttentionField::KvWindow => "kv_window",
            AttentionField::BlockSparse => "block_sparse",
        }
    }
}

/// Attention options a model cannot run with.
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionError {
    /// The network has no attention the options could change.
    NoAttention { architecture: String },
    /// StreamingLLM needs at least one sink and a window of at least one position.
    Empty { sinks: usize, window: usize },
    /// Sinks and window together exceed the model's position limit.
    PastContext {
        sinks: usize,
        window: usize,
        context: usize,
    },
    /// The window is wider than the model's own sliding window.
    WiderThanModel { window: usize, model_window: usize },
    /// Sinks and block-sparse patterns at once.
    SinksWithSparse,
    /// Sinks rotate keys inside attention, which has no LongRoPE attention factor.
    SinksWithLongRope,
    /// The block-sparse patterns do not fit the model's layers (the runtime's message).
    SparseLayers { message: String },
    /// A block-sparse pattern on a sliding-window layer.
    SparseOnSlidingLayer { layer: usize },
}

impl AttentionError {
    /// The options the error is about.
    pub fn fields(&self) -> &'static [AttentionField] {
        use AttentionField::*;
        match self {
            AttentionError::NoAttention { .. } => &[],
            AttentionError::Empty { .. } | AttentionError::PastContext { .. } => {
                &[AttentionSinks, KvWindow]
            }
            AttentionError::WiderThanModel { .. } => &[KvWindow],
            AttentionError::SinksWithSparse => &[AttentionSinks, BlockSparse],
            AttentionError::SinksWithLongRope => &[AttentionSinks],
            AttentionError::SparseLayers { .. } | AttentionError::SparseOnSlidingLayer { .. } => {
                &[BlockSparse]
            }
        }
    }

    /// The message, with each option called what `name` calls it.
    pub fn describe(&self, name: impl Fn(AttentionField) -> &'static str) -> String {
        let (sinks, kv_window) = (
            name(AttentionField::AttentionSinks),
            name(AttentionField::KvWindow),
        );
        match self {
            AttentionError::NoAttention { architecture } => {
                format!("attention options apply to attention models; {architecture} has none")
            }
            AttentionError::Empty { sinks: s, window } => {
                format!("{sinks} ({s}) and {kv_window} ({window}) must be at least 1")
            }
            AttentionError::PastContext {
                sinks: s,
                window,
                context,
            } => format!(
                "{sinks} {s} plus {kv_window} {window} exceed the model's context of {context} positions"
            ),
            AttentionError::WiderThanModel {
                window,
                model_window,
            } => format!(
                "{kv_window} {window} is larger than the model's own sliding window of {model_window}"
            ),
            AttentionError::SinksWithSparse => {
                "attention sinks and block-sparse attention cannot be combined".into()
            }
            AttentionError::SinksWithLongRope => {
                "attention sinks are not supported with LongRoPE scaling".into()
            }
            AttentionError::SparseLayers { message } => message.clone(),
            AttentionError::SparseOnSlidingLayer { layer } => format!(
                "layer {layer} has a sliding window; block-sparse patterns apply to full-attention layers"
            ),
        }
    }
}

impl fmt::Display for AttentionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(AttentionField::name))
    }
}

impl std::error::Error for AttentionError {}

impl AttentionOptions {
    /// Check the options against a model whose attention layers have the sliding windows
    /// `windows` (None: full attention) and whose positions stop at `context`.
    pub fn check(&self, windows: &[Option<usize>], context: usize) -> Result<(), AttentionError> {
        if let Some((sinks, window)) = self.streaming {
            if sinks == 0 || window == 0 {
                return Err(AttentionError::Empty { sinks, window });
            }
            if sinks + window > context {
                return Err(AttentionError::PastContext {
                    sinks,
                    window,
                    context,
                });
            }
            if let Some(w) = windows
                .iter()
                .flatten()
                .copied()
                .min()
                .filter(|&w| window > w)
            {
                return Err(AttentionError::WiderThanModel {
                    window,
                    model_window: w,
                });
            }
            if self.sparse.is_some() {
                return Err(AttentionError::SinksWithSparse);
            }
        }
        if let Some(sparse) = &self.sparse {
            sparse
                .validate(windows.len())
                .map_err(|e| AttentionError::SparseLayers {
                    message: e.to_string(),
                })?;
            if let Some(layer) =
                (0..windows.len()).find(|&l| sparse.for_layer(l).is_some() && windows[l].is_some())
            {
                return Err(AttentionError::SparseOnSlidingLayer { layer });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streaming(sinks: usize, window: usize) -> AttentionOptions {
        AttentionOptions {
            streaming: Some((sinks, window)),
            sparse: None,
        }
    }

    #[test]
    fn checks_name_the_fields() {
        let full = [None, None];
        let e = streaming(0, 8).check(&full, 64).unwrap_err();
        assert_eq!(
            e,
            AttentionError::Empty {
                sinks: 0,
                window: 8
            }
        );
        assert_eq!(
            e.to_string(),
            "attention_sinks (0) and kv_window (8) must be at least 1"
        );
        let flag = |f: AttentionField| match f {
            AttentionField::AttentionSinks => "--attention-sinks",
            AttentionField::KvWindow => "--kv-window",
            AttentionField::BlockSparse => "--block-sparse",
        };
        let e = streaming(40, 40).check(&full, 64).unwrap_err();
        assert_eq!(
            e.describe(flag),
            "--attention-sinks 40 plus --kv-window 40 exceed the model's context of 64 positions"
        );
        let e = streaming(2, 20).check(&[Some(8), None], 64).unwrap_err();
        assert_eq!(e.fields(), &[AttentionField::KvWindow]);
        assert!(e.to_string().contains("sliding window of 8"));
        assert_eq!(streaming(2, 8).check(&[Some(8), None], 64), Ok(()));
    }

    #[test]
    fn sparse_patterns_stay_on_full_attention_layers() {
        let sparse = |s: &str| AttentionOptions {
            streaming: None,
            sparse: Some(SparseConfig::parse(s).expect("pattern")),
        };
        assert_eq!(sparse("local=2").check(&[None, None], 64), Ok(()));
        let e = sparse("local=2").check(&[None, Some(8)], 64).unwrap_err();
        assert_eq!(e, AttentionError::SparseOnSlidingLayer { layer: 1 });
        let e = sparse("local=2@5").check(&[None, None], 64).unwrap_err();
        assert!(matches!(e, AttentionError::SparseLayers { .. }), "{e}");
        let both = AttentionOptions {
            streaming: Some((4, 8)),
            ..sparse("local=2")
        };
        assert_eq!(
            both.check(&[None], 64),
            Err(AttentionError::SinksWithSparse)
        );
    }
}

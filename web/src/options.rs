//! `createEngine`'s options that shape the engine (the rest, such as `speculate`, are set on
//! the engine after it loads): the context, the decode matvec's precision and the attention
//! options of the command line (`--attention-sinks`, `--kv-window`, `--block-sparse`), under
//! their JavaScript names. Checked whole before anything is downloaded; the attention options
//! are checked against the model once it loads, errors naming the JavaScript option.

use kestrel_models::{AttentionField, AttentionOptions, Model, ModelError};
use kestrel_runtime::block_mask::SparseConfig;
use kestrel_runtime::kernels::matvec_q8::MatvecPrecision;
use serde::Deserialize;

use crate::error::{Result, WebError};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Fields {
    #[serde(default)]
    ctx: u32,
    #[serde(default)]
    matvec_precision: Option<String>,
    #[serde(default)]
    attention_sinks: Option<usize>,
    #[serde(default)]
    kv_window: Option<usize>,
    #[serde(default)]
    block_sparse: Option<String>,
}

/// The options, parsed and checked as far as they can be without the model.
#[derive(Debug)]
pub struct EngineOptions {
    /// Tokens per conversation (0: the model's own, at most 2048).
    pub ctx: u32,
    pub precision: MatvecPrecision,
    pub attention: AttentionOptions,
}

/// The JavaScript name of an attention option.
fn js_name(field: AttentionField) -> &'static str {
    match field {
        AttentionField::AttentionSinks => "attentionSinks",
        AttentionField::KvWindow => "kvWindow",
        AttentionField::BlockSparse => "blockSparse",
    }
}

impl EngineOptions {
    /// Parse `createEngine`'s options (JSON); each error names the option.
    pub fn parse(json: &str) -> Result<EngineOptions> {
        let f: Fields =
            serde_json::from_str(json).map_err(|e| WebError::BadRequest(e.to_string()))?;
        let precision = f
            .matvec_precision
            .as_deref()
            .unwrap_or("f32")
            .parse()
            .map_err(|e| WebError::BadRequest(format!("matvecPrecision: {e}")))?;
        let streaming = match (f.attention_sinks, f.kv_window) {
            (None, None) => None,
            (Some(sinks), Some(window)) => Some((sinks, window)),
            _ => {
                return Err(WebError::BadRequest(
                    "attentionSinks and kvWindow go together: give both or neither".into(),
                ))
            }
        };
        let sparse = f
            .block_sparse
            .as_deref()
            .map(SparseConfig::parse)
            .transpose()
            .map_err(|e| WebError::BadRequest(format!("blockSparse: {e}")))?;
        Ok(EngineOptions {
            ctx: f.ctx,
            precision,
            attention: AttentionOptions { streaming, sparse },
        })
    }

    /// Set the attention options on `model` (checked against it).
    pub fn apply(&self, model: &mut Model) -> Result<()> {
        if self.attention == AttentionOptions::default() {
            return Ok(());
        }
        model
            .set_attention(self.attention.clone())
            .map_err(|e| match e {
                ModelError::Attention(e) => WebError::BadRequest(e.describe(js_name)),
                e => WebError::Model(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_name_their_errors() {
        let o =
            EngineOptions::parse(r#"{"ctx": 64, "attentionSinks": 4, "kvWindow": 60}"#).unwrap();
        assert_eq!((o.ctx, o.attention.streaming), (64, Some((4, 60))));
        assert_eq!(o.precision, MatvecPrecision::F32);
        let o = EngineOptions::parse(r#"{"blockSparse": "local=2,global=1"}"#).unwrap();
        assert!(o.attention.sparse.is_some());
        let err = |json: &str| EngineOptions::parse(json).unwrap_err().to_string();
        assert!(err(r#"{"attentionSinks": 4}"#).contains("kvWindow"));
        assert!(err(r#"{"blockSparse": "local=0"}"#).starts_with("bad request: blockSparse"));
        assert!(err(r#"{"matvecPrecision": "f8"}"#).contains("matvecPrecision"));
        assert!(err(r#"{"kvWindows": 4}"#).contains("kvWindows"));
    }
}

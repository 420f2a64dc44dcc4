//! Reading config.json with errors that name the file and the key, and hyper-parameters
//! checked against sane limits ([`Dim`]) before anything is sized from them. The keys each
//! family reads are tabled in `config/keys.rs`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};

pub mod keys;

/// A parsed config.json that remembers its path for error messages.
pub struct JsonConfig {
    pub path: PathBuf,
    pub value: Value,
}

impl JsonConfig {
    pub fn parse(path: &Path, text: &str) -> Result<JsonConfig> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(ModelError::Json {
                path: path.to_path_buf(),
                message: "expected a JSON object".into(),
            });
        }
        Ok(JsonConfig {
            path: path.to_path_buf(),
            value,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn bad(&self, key: &str, message: &str) -> ModelError {
        ModelError::BadConfigValue {
            file: self.path.clone(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingConfigKey {
            file: self.path.clone(),
            key: key.to_string(),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            // try_from: on 32-bit targets a large u64 must not wrap to a small size.
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(key, "must be a non-negative integer that fits usize")),
        }
    }

    /// A required hyper-parameter of kind `dim`: positive and within the kind's limit.
    pub fn dim(&self, key: &str, dim: Dim) -> Result<usize> {
        self.opt_dim(key, dim)?.ok_or_else(|| self.missing(key))
    }

    /// An optional hyper-parameter of kind `dim`: when given (not null), positive and within
    /// the kind's limit.
    pub fn opt_dim(&self, key: &str, dim: Dim) -> Result<Option<usize>> {
        match self.opt_usize(key)? {
            None => Ok(None),
            Some(v) => dim.check(v).map(Some).map_err(|m| self.bad(key, &m)),
        }
    }

    /// `factors` multiplied with checked arithmetic, the product a hyper-parameter of kind
    /// `dim` (an error names `key`, the setting the product is derived from).
    pub fn product(&self, key: &str, dim: Dim, factors: &[usize]) -> Result<usize> {
        let product = factors
            .iter()
            .try_fold(1usize, |p, &f| p.checked_mul(f))
            .ok_or_else(|| self.bad(key, &format!("gives a size {factors:?} that overflows")))?;
        dim.check(product)
            .map_err(|m| self.bad(key, &format!("gives {} = {m}", join_product(factors))))
    }

    /// `base * factor` (a width given as a ratio, e.g. fla's expand_k), positive, finite and
    /// within the limit of `dim`, before any cast to an integer; an error names `key`.
    pub fn scaled(&self, key: &str, dim: Dim, base: usize, factor: f64) -> Result<f64> {
        let v = base as f64 * factor;
        if !v.is_finite() || v < 1.0 || v > dim.max() as f64 {
            return Err(self.bad(
                key,
                &format!("({factor}) gives a size of {v}, outside 1..={}", dim.max()),
            ));
        }
        Ok(v)
    }

    /// `whole / parts` when `parts` divides `whole` (e.g. the head dim from hidden and heads);
    /// an error names `key`.
    pub fn divide(&self, key: &str, whole: usize, parts: usize) -> Result<usize> {
        if parts == 0 || !whole.is_multiple_of(parts) {
            return Err(self.bad(key, &format!("({parts}) must divide {whole}")));
        }
        Ok(whole / parts)
    }

    pub fn positive(&self, key: &str) -> Result<usize> {
        let v = self.usize(key)?;
        if v == 0 {
            return Err(self.bad(key, "must be positive"));
        }
        Ok(v)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "must be a number")),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, "must be true or false")),
        }
    }

    /// A token id that may be given as a number or a list of numbers (the first is used).
    pub fn opt_token_ids(&self, key: &str) -> Vec<u32> {
        match self.get(key) {
            Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The architecture name: `architectures[0]`, else `model_type`.
    pub fn architecture(&self) -> Result<String> {
        if let Some(Value::Array(a)) = self.get("architectures") {
            if let Some(s) = a.first().and_then(|v| v.as_str()) {
                return Ok(s.to_string());
            }
        }
        self.get("model_type")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| self.missing("architectures"))
    }
}

fn join_product(factors: &[usize]) -> String {
    factors
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(" * ")
}

/// Kinds of hyper-parameters and their limits. A config beyond them is refused by name before
/// anything is allocated: the limits are far above any released model (the largest have
/// ~200 layers, 128 heads, head dim 256, hidden 16k-25k, intermediate ~100k, vocab ~260k,
/// 256 experts, 10M positions) yet keep every product of two or three of them far from
/// overflowing 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Layers,
    /// Attention heads, k/v heads, Mamba-2 heads and groups.
    Heads,
    HeadDim,
    /// The model width (and widths derived from it, e.g. Mamba's inner size).
    Hidden,
    /// Feed-forward widths (dense or per expert).
    Intermediate,
    Vocab,
    Experts,
    /// The position limit (max_position_embeddings and its synonyms).
    Context,
    /// Other sizes: state sizes, low ranks, convolution kernels, sliding windows.
    Size,
}

impl Dim {
    /// The largest value accepted.
    pub const fn max(self) -> usize {
        match self {
            Dim::Layers => 4096,
            Dim::Heads => 4096,
            Dim::HeadDim => 4096,
            Dim::Hidden => 1 << 20,
            Dim::Intermediate => 1 << 22,
            Dim::Vocab => 1 << 24,
            Dim::Experts => 4096,
            Dim::Context => 1 << 30,
            Dim::Size => 1 << 20,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Dim::Layers => "layers",
            Dim::Heads => "heads",
            Dim::HeadDim => "head dim",
            Dim::Hidden => "hidden size",
            Dim::Intermediate => "intermediate size",
            Dim::Vocab => "vocabulary size",
            Dim::Experts => "experts",
            Dim::Context => "positions",
            Dim::Size => "size",
        }
    }

    /// `v` if positive and within the limit, else why not.
    pub fn check(self, v: usize) -> std::result::Result<usize, String> {
        if v == 0 {
            return Err("must be positive".into());
        }
        if v > self.max() {
            return Err(format!(
                "({v}) is beyond the limit of {} {}",
                self.max(),
                self.what()
            ));
        }
        Ok(v)
    }
}

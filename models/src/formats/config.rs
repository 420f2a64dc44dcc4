//! Reading config.json with errors that name the file and the key.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};

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

    fn bad(&self, key: &str, message: &str) -> ModelError {
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
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.bad(key, "must be a non-negative integer")),
        }
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

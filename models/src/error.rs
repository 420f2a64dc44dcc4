//! Typed errors of model loading and running, each naming the file and tensor involved.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model path {0} does not exist")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path} is not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{file}: missing config key '{key}'")]
    MissingConfigKey { file: PathBuf, key: String },
    #[error("{file}: config key '{key}' {message}")]
    BadConfigValue {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{file}: unsupported architecture '{arch}' (supported: {supported})")]
    UnsupportedArchitecture {
        file: PathBuf,
        arch: String,
        supported: String,
    },
    #[error("{path}: unsupported model format ({message})")]
    UnsupportedFormat { path: PathBuf, message: String },
    #[error("{file}: missing tensor '{name}'")]
    MissingTensor { file: PathBuf, name: String },
    #[error("{file}: tensor '{name}' has shape {got:?}, expected {expected:?}")]
    TensorShape {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{file}: tensor '{name}' has a zero dimension (shape {shape:?})")]
    EmptyTensor {
        file: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{file}: tensor '{name}' has unsupported dtype {dtype}")]
    UnsupportedDtype {
        file: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{file}: invalid safetensors data: {message}")]
    Safetensors { file: PathBuf, message: String },
    #[error("{file}: invalid PyTorch checkpoint: {error}")]
    Pth {
        file: PathBuf,
        error: crate::formats::pth::PthError,
    },
    #[error("{file}: invalid GGUF file: {message}")]
    Gguf { file: PathBuf, message: String },
    #[error("{file}: '{entry}' {message}")]
    OutsideFolder {
        file: PathBuf,
        entry: String,
        message: String,
    },
    #[error("{file}: cannot load tokenizer: {message}")]
    Tokenizer { file: PathBuf, message: String },
    #[error("{0}")]
    BadOption(String),
    #[error("{0}")]
    Attention(#[from] crate::blocks::attention_options::AttentionError),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("{0}")]
    Runtime(#[from] kestrel_runtime::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

//! The web crate's errors. Each becomes a JavaScript `Error` whose `name` says the kind
//! (`KestrelLimitsError`, `KestrelModelError`, ...) so the page can show a clear message.

use kestrel_models::ModelError;
use wasm_bindgen::JsValue;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The adapter could not be opened (no WebGPU, or it refused a device).
    #[error("WebGPU is not available: {0}")]
    NoWebGpu(String),
    /// The adapter's limits are below what the kernels need.
    #[error("{0}")]
    Limits(String),
    /// Loading or running the model failed (file, tensor, shape, tokenizer, template).
    #[error("{0}")]
    Model(#[from] ModelError),
    /// A GPU error while running (validation, device lost, out of memory).
    #[error("{0}")]
    Gpu(#[from] kestrel_runtime::Error),
    /// A request the engine cannot take (bad JSON, bad values, prompt too long).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Another call is still running on this engine.
    #[error("the engine is busy with another request")]
    Busy,
    /// A reply was asked for in one conversation while another's is generating (one reply
    /// generates at a time; kestrel.js's worker queues them, so only direct callers see it).
    #[error("conversation {replying:?} is generating a reply: a reply in conversation {asked:?} can start once it ends")]
    Replying { replying: String, asked: String },
}

impl WebError {
    fn name(&self) -> &'static str {
        match self {
            WebError::NoWebGpu(_) => "KestrelNoWebGpuError",
            WebError::Limits(_) => "KestrelLimitsError",
            WebError::Model(_) => "KestrelModelError",
            WebError::Gpu(_) => "KestrelGpuError",
            WebError::BadRequest(_) => "KestrelRequestError",
            WebError::Busy | WebError::Replying { .. } => "KestrelBusyError",
        }
    }
}

impl From<WebError> for JsValue {
    fn from(e: WebError) -> JsValue {
        let err = js_sys::Error::new(&e.to_string());
        err.set_name(e.name());
        err.into()
    }
}

pub type Result<T> = std::result::Result<T, WebError>;

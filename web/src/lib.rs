//! kestrel-web: the browser engine. The runtime and the models compiled to wasm32, on
//! wgpu's WebGPU backend, behind wasm-bindgen entry points that web/www/worker.js drives
//! (the page talks to the worker through web/www/kestrel.js, an OpenAI-shaped API).
//!
//! * [`engine`]: load a model from bytes, chat replies one token per call, logits, info.
//! * [`kernel_check`]: the runtime's kernels against their CPU references, in the browser.

pub mod diffusion;
pub mod error;
pub mod load;
pub mod options;

#[cfg(target_arch = "wasm32")]
pub mod engine;
#[cfg(target_arch = "wasm32")]
pub mod js_file;
#[cfg(target_arch = "wasm32")]
pub mod kernel_check;

use wasm_bindgen::prelude::*;

/// Describe the WebGPU adapter: name, backend, features and limits (a JSON string).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen(js_name = adapterInfo)]
pub async fn adapter_info() -> Result<String, JsValue> {
    let gpu = engine::open_gpu().await?;
    Ok(engine::gpu_info(&gpu).to_string())
}

/// The runtime version, to check the module loaded.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

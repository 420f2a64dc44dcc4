//! kestrel-web: the browser entry points (wasm-bindgen). A skeleton for now: it opens the
//! WebGPU device through the same runtime and reports what the adapter offers.

use wasm_bindgen::prelude::*;

use kestrel_runtime::{BackendChoice, Gpu};

/// Describe the WebGPU adapter: name, backend and features (a JSON string).
#[wasm_bindgen]
pub async fn adapter_info() -> Result<String, JsValue> {
    let gpu = Gpu::new(BackendChoice::WebGpu)
        .await
        .map_err(|e| JsValue::from_str(&e.to_string()))?;
    Ok(format!(
        "{{\"adapter\":\"{}\",\"backend\":\"{}\",\"shader_f16\":{},\"max_storage_binding\":{}}}",
        gpu.info.name.replace('"', "'"),
        gpu.backend_name(),
        gpu.caps.shader_f16,
        gpu.caps.max_storage_binding
    ))
}

/// The runtime version, to check the module loaded.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

// Keep the models crate linked so the wasm build checks it too.
pub use kestrel_models::ModelError;

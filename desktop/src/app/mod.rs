//! `kestrel app`: a desktop chat window. egui draws through the runtime's own wgpu device, and
//! the model runs on the engine's worker thread, so the window never waits on generation.

mod state;
mod ui;

use std::sync::Arc;
use std::time::Instant;

use eframe::egui;
use eframe::egui_wgpu::{WgpuConfiguration, WgpuSetup, WgpuSetupExisting};

use crate::args::Args;
use crate::CliResult;

/// What the window starts with.
pub struct Options {
    pub model: Option<String>,
    pub ctx: usize,
    pub system: String,
    pub attention: kestrel_models::AttentionOptions,
    pub launched: Instant,
}

pub fn run(a: &Args) -> CliResult {
    let launched = Instant::now();
    a.only(&crate::with_attention(&[
        "model", "backend", "ctx", "system",
    ]))?;
    let options = Options {
        model: a.get("model").map(str::to_string),
        ctx: a.parsed("ctx", 4096)?,
        system: a.get("system").unwrap_or_default().to_string(),
        attention: crate::attention_options(a)?,
        launched,
    };
    if options.ctx == 0 {
        return Err("--ctx must be at least 1".into());
    }
    let gpu = crate::open_gpu(a)?;
    let wgpu_options = WgpuConfiguration {
        wgpu_setup: WgpuSetup::Existing(WgpuSetupExisting {
            instance: gpu.instance.clone(),
            adapter: gpu.adapter.clone(),
            device: gpu.device.clone(),
            queue: gpu.queue.clone(),
        }),
        ..Default::default()
    };
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Kestrel")
            .with_app_id("kestrel")
            .with_inner_size([960.0, 680.0])
            .with_min_inner_size([480.0, 320.0]),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options,
        ..Default::default()
    };
    eframe::run_native(
        "Kestrel",
        native,
        Box::new(move |cc| Ok(Box::new(ui::KestrelApp::new(cc, gpu, options)))),
    )
    .map_err(|e| format!("cannot open the window: {e}"))
}

/// Shared by the window and its loader thread.
pub(crate) type SharedGpu = Arc<kestrel_runtime::Gpu>;

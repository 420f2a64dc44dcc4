//! `kestrel app`: a desktop chat window. egui draws through the runtime's own wgpu device, and
//! the model runs on the engine's worker thread, so the window never waits on generation.

mod state;
mod ui;

use std::sync::Arc;
use std::time::Instant;

use eframe::egui;
use eframe::egui_wgpu::{WgpuConfiguration, WgpuSetup, WgpuSetupExisting};

use crate::cli::AppArgs;
use crate::CliResult;

/// What the window starts with.
pub struct Options {
    pub model: Option<String>,
    pub ctx: usize,
    pub system: String,
    pub attention: kestrel_models::AttentionOptions,
    pub offline: bool,
    pub launched: Instant,
}

pub fn run(a: &AppArgs) -> CliResult {
    let launched = Instant::now();
    let options = Options {
        model: a.model.as_ref().map(|p| p.display().to_string()),
        ctx: a.ctx,
        system: a.system.clone().unwrap_or_default(),
        attention: a.attention.options(),
        offline: a.fetch.offline,
        launched,
    };
    if options.ctx == 0 {
        return Err("--ctx must be at least 1".into());
    }
    let gpu = crate::open_gpu(&a.device)?;
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

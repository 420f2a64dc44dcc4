//! Drawing the chat window and turning clicks and keys into state changes.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use eframe::egui::{self, Key, Modifiers, RichText};

use super::state::{Chat, EntryStatus, LoadEvent, ModelStatus, Outcome, Role};
use super::{Options, SharedGpu};
use crate::engine::{Engine, EngineConfig, Finish};

const MIB: f64 = 1024.0 * 1024.0;
/// How often the window looks for new pieces while a reply streams.
const STREAM_POLL: Duration = Duration::from_millis(40);

pub struct KestrelApp {
    gpu: SharedGpu,
    options: Options,
    chat: Chat,
    model: ModelStatus,
    engine: Option<Engine>,
    loader: Option<mpsc::Receiver<LoadEvent<Engine>>>,
    model_path: String,
    input: String,
    /// A one-line message about the last thing that could not be done.
    notice: Option<String>,
    show_settings: bool,
    focus_input: bool,
    first_frame: bool,
}

impl KestrelApp {
    pub fn new(cc: &eframe::CreationContext<'_>, gpu: SharedGpu, options: Options) -> KestrelApp {
        let model_path = options.model.clone().unwrap_or_default();
        let mut app = KestrelApp {
            gpu,
            chat: Chat::new(options.system.clone()),
            options,
            model: ModelStatus::Empty,
            engine: None,
            loader: None,
            model_path,
            input: String::new(),
            notice: None,
            show_settings: true,
            focus_input: true,
            first_frame: true,
        };
        if !app.model_path.is_empty() {
            app.open_model(&cc.egui_ctx);
        }
        app
    }

    /// Load the model at `model_path` on a background thread.
    fn open_model(&mut self, ctx: &egui::Context) {
        if self.model.loading() {
            return;
        }
        let status = match ModelStatus::start(&self.model_path) {
            Ok(s) => s,
            Err(e) => {
                self.notice = Some(e);
                return;
            }
        };
        self.notice = None;
        // The old model goes away once its reply (if any) has stopped.
        self.chat.stop();
        self.engine = None;
        self.model = status;
        let config = EngineConfig {
            path: PathBuf::from(self.model_path.trim()),
            ctx: self.options.ctx,
            attention: self.options.attention.clone(),
            offline: self.options.offline,
            speculation: crate::cli::Speculation::Off,
            // One conversation at a time: its cache is reused from turn to turn.
            max_batch: 1,
            kv_pool: None,
        };
        let (tx, rx) = mpsc::channel();
        self.loader = Some(rx);
        let gpu = self.gpu.clone();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("kestrel-loader".into())
            .spawn(move || {
                let progress_tx = tx.clone();
                let progress_ctx = ctx.clone();
                let result = Engine::start(gpu, config, move |p| {
                    eprintln!("model: {p}");
                    let _ = progress_tx.send(LoadEvent::Progress(p.to_string()));
                    progress_ctx.request_repaint();
                });
                let _ = tx.send(LoadEvent::Loaded(result));
                ctx.request_repaint();
            });
        if let Err(e) = spawned {
            self.loader = None;
            self.model = ModelStatus::Failed(format!("cannot start the loader thread: {e}"));
        }
    }

    fn poll_loader(&mut self) {
        let Some(rx) = &self.loader else { return };
        let mut events = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    events.push(LoadEvent::Loaded(Err("the loader thread ended".into())));
                    break;
                }
            }
        }
        for event in events {
            let finished = matches!(event, LoadEvent::Loaded(_));
            if let Some(engine) = self.model.apply(event, |e: &Engine| e.info.clone()) {
                let i = &engine.info;
                eprintln!(
                    "model ready: {} on {} ({}) in {:.2} s",
                    i.id, i.adapter, i.backend, i.load_seconds
                );
                self.chat.max_tokens = self.chat.max_tokens.min(i.context.saturating_sub(1)).max(1);
                self.engine = Some(engine);
                self.focus_input = true;
            } else if let ModelStatus::Failed(e) = &self.model {
                eprintln!("error: {e}");
            }
            if finished {
                self.loader = None;
                break;
            }
        }
    }

    fn poll_chat(&mut self) {
        match self.chat.poll() {
            Some(Outcome::Finished { tokens, finish }) => {
                let how = match finish {
                    Finish::Stop => "end of reply",
                    Finish::Length => "length limit",
                    Finish::Cancelled => "stopped",
                };
                let rate = self.chat.last_tokens_per_second.unwrap_or(0.0);
                eprintln!("reply done: {tokens} tokens ({how}, {rate:.1} tokens/s)");
            }
            Some(Outcome::Failed(e)) => eprintln!("reply failed: {e}"),
            None => {}
        }
    }

    fn send(&mut self) {
        let Some(engine) = &self.engine else {
            self.notice = Some("load a model first".into());
            return;
        };
        match self.chat.send(&self.input) {
            Ok(job) => {
                self.input.clear();
                self.notice = None;
                if let Err(e) = engine.submit(job) {
                    self.chat.submit_failed(e);
                }
            }
            Err(e) => self.notice = Some(e),
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label("Model");
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.model_path)
                    .hint_text(
                        "a model folder or .gguf file, a catalogue name, or org/name on the Hub",
                    )
                    .desired_width((ui.available_width() - 220.0).max(160.0)),
            );
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
            let open = ui
                .add_enabled(!self.model.loading(), egui::Button::new("Open"))
                .on_hover_text("load the model at this path (on a background thread)");
            if open.clicked() || (enter && !self.model.loading()) {
                self.open_model(ui.ctx());
            }
            ui.toggle_value(&mut self.show_settings, "Settings");
        });
        ui.horizontal_wrapped(|ui| {
            match &self.model {
                ModelStatus::Empty => {
                    ui.label(RichText::new("no model loaded").weak());
                }
                ModelStatus::Loading { progress, .. } => {
                    ui.spinner();
                    ui.label(progress);
                }
                ModelStatus::Failed(e) => {
                    ui.label(RichText::new(e).color(ui.visuals().error_fg_color));
                }
                ModelStatus::Ready(i) => {
                    ui.label(RichText::new(&i.name).strong())
                        .on_hover_text(format!("loaded in {:.2} s", i.load_seconds));
                    ui.separator();
                    ui.label(format!("context {}", i.context));
                    if i.fallback_template {
                        ui.label(RichText::new("(no chat template: ChatML stands in)").weak());
                    }
                }
            }
            ui.separator();
            ui.label(format!(
                "{} ({})",
                self.gpu.info.name,
                self.gpu.backend_name()
            ));
            ui.separator();
            match self.chat.last_tokens_per_second {
                Some(r) => ui.label(format!("{r:.1} tokens/s")),
                None => ui.label(RichText::new("– tokens/s").weak()),
            };
            if let ModelStatus::Ready(i) = &self.model {
                ui.separator();
                let w = i.weight_bytes as f64 / MIB;
                let kv = i.state_bytes as f64 / MIB;
                ui.label(format!(
                    "GPU memory {} (weights {} + KV {})",
                    mib(w + kv),
                    mib(w),
                    mib(kv)
                ));
            }
        });
    }

    fn settings(&mut self, ui: &mut egui::Ui) {
        ui.heading("Settings");
        ui.add_space(4.0);
        ui.label("System prompt");
        ui.add(
            egui::TextEdit::multiline(&mut self.chat.system)
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .hint_text("optional"),
        );
        ui.add_space(8.0);
        ui.label("Temperature");
        ui.add(egui::Slider::new(&mut self.chat.temperature, 0.0..=2.0).step_by(0.05))
            .on_hover_text("0 picks the most likely token every time");
        ui.add_space(4.0);
        ui.label("Max tokens");
        let limit = match &self.model {
            ModelStatus::Ready(i) => i.context.saturating_sub(1).max(1),
            _ => 1 << 20,
        };
        ui.add(egui::DragValue::new(&mut self.chat.max_tokens).range(1..=limit));
        ui.add_space(4.0);
        ui.label("Seed");
        ui.add(egui::DragValue::new(&mut self.chat.seed));
        ui.add_space(12.0);
        if ui.button("New chat").clicked() {
            self.chat.new_chat();
            self.notice = None;
            self.focus_input = true;
        }
    }

    fn input_bar(&mut self, ui: &mut egui::Ui) {
        let input_id = egui::Id::unique("kestrel-chat-input");
        // Enter sends; Shift+Enter falls through to the text field as a new line.
        let focused = ui.memory(|m| m.has_focus(input_id));
        let enter = focused
            && ui.input_mut(|i| !i.modifiers.shift && i.consume_key(Modifiers::NONE, Key::Enter));
        let generating = self.chat.generating();
        let ready = self.engine.is_some();
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            let buttons = 80.0;
            let edit = ui.add(
                egui::TextEdit::multiline(&mut self.input)
                    .id(input_id)
                    .desired_rows(3)
                    .desired_width(ui.available_width() - buttons)
                    .hint_text("Message (Enter sends, Shift+Enter for a new line)"),
            );
            if self.focus_input {
                edit.request_focus();
                self.focus_input = false;
            }
            ui.vertical(|ui| {
                if generating {
                    let stop = ui.add_enabled(!self.chat.stopping(), egui::Button::new("Stop"));
                    if stop.clicked() {
                        self.chat.stop();
                    }
                } else {
                    let send = ui.add_enabled(ready, egui::Button::new("Send"));
                    if send.clicked() || (enter && ready) {
                        self.send();
                        self.focus_input = true;
                    } else if enter {
                        self.notice = Some("load a model first".into());
                    }
                }
            });
        });
        if let Some(n) = &self.notice {
            ui.label(RichText::new(n).color(ui.visuals().warn_fg_color));
        }
        ui.add_space(4.0);
    }

    fn messages(&mut self, ui: &mut egui::Ui) {
        if self.chat.entries.is_empty() {
            ui.add_space(24.0);
            ui.vertical_centered(|ui| {
                let text = match &self.model {
                    ModelStatus::Ready(_) => "Ask something below.",
                    ModelStatus::Loading { .. } => "Loading the model…",
                    _ => {
                        "No model loaded. Enter a model folder or file, a name from \
                         `kestrel models` or a Hugging Face repository above and press Open."
                    }
                };
                ui.label(RichText::new(text).size(16.0).weak());
            });
            return;
        }
        egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .stick_to_bottom(true)
            .show(ui, |ui| {
                for entry in &self.chat.entries {
                    let (who, fill) = match entry.role {
                        Role::User => ("You", ui.visuals().faint_bg_color),
                        Role::Assistant => ("Kestrel", ui.visuals().extreme_bg_color),
                    };
                    egui::Frame::new()
                        .fill(fill)
                        .corner_radius(6.0)
                        .inner_margin(8.0)
                        .show(ui, |ui| {
                            ui.set_width(ui.available_width());
                            ui.label(RichText::new(who).strong());
                            match &entry.status {
                                EntryStatus::Waiting => {
                                    ui.horizontal(|ui| {
                                        ui.spinner();
                                        ui.label(RichText::new("thinking…").weak());
                                    });
                                }
                                EntryStatus::Streaming if entry.text.is_empty() => {
                                    ui.horizontal(|ui| {
                                        ui.spinner();
                                        let n = entry.prompt_tokens.unwrap_or(0);
                                        ui.label(
                                            RichText::new(format!("reading {n} prompt tokens…"))
                                                .weak(),
                                        );
                                    });
                                }
                                EntryStatus::Streaming => {
                                    ui.add(
                                        egui::Label::new(format!("{}▌", entry.text))
                                            .selectable(true),
                                    );
                                }
                                EntryStatus::Complete | EntryStatus::Stopped => {
                                    ui.add(egui::Label::new(&entry.text).selectable(true));
                                }
                                EntryStatus::Failed(e) => {
                                    if !entry.text.is_empty() {
                                        ui.label(&entry.text);
                                    }
                                    ui.label(
                                        RichText::new(format!("error: {e}"))
                                            .color(ui.visuals().error_fg_color),
                                    );
                                }
                            }
                            if let Some(s) = &entry.summary {
                                let mut note = format!(
                                    "{} tokens · {:.1} tokens/s · first token {:.2} s",
                                    s.completion_tokens, s.tokens_per_second, s.first_token_seconds
                                );
                                if s.reused_tokens > 0 {
                                    note.push_str(&format!(
                                        " · {} of {} prompt tokens cached",
                                        s.reused_tokens, s.prompt_tokens
                                    ));
                                }
                                if entry.status == EntryStatus::Stopped {
                                    note.push_str(" · stopped");
                                }
                                ui.label(RichText::new(note).small().weak());
                            }
                        });
                    ui.add_space(6.0);
                }
            });
    }
}

impl eframe::App for KestrelApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        if self.first_frame {
            self.first_frame = false;
            eprintln!(
                "window ready after {:.2} s",
                self.options.launched.elapsed().as_secs_f64()
            );
        }
        self.poll_loader();
        self.poll_chat();
        if self.chat.generating() {
            ui.ctx().request_repaint_after(STREAM_POLL);
        }
        let frame = egui::Frame::central_panel(ui.style());
        egui::Panel::top("kestrel-top")
            .frame(frame)
            .show(ui, |ui| self.top_bar(ui));
        egui::Panel::bottom("kestrel-input")
            .frame(frame)
            .show(ui, |ui| self.input_bar(ui));
        let mut show = self.show_settings;
        egui::Panel::left("kestrel-settings")
            .frame(frame)
            .resizable(true)
            .default_size(230.0)
            .show_collapsible(ui, &mut show, |ui| self.settings(ui));
        self.show_settings = show;
        egui::CentralPanel::default().show(ui, |ui| self.messages(ui));
    }
}

/// A size in MiB, with a decimal for small ones (KiB below one MiB).
fn mib(m: f64) -> String {
    if m < 1.0 {
        format!("{:.0} KiB", m * 1024.0)
    } else if m < 10.0 {
        format!("{m:.1} MiB")
    } else {
        format!("{m:.0} MiB")
    }
}

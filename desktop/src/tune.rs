//! Kernel choices by timing on this adapter (issue 17's tuning). The first command that
//! opens a model on an adapter with no saved choice for it tunes ([`ensure`]): the runtime's
//! quick tuner (`kestrel_runtime::autotune`, about a second) times the decode matvec's layouts
//! and the prefill matmuls on the model's own weights, the choice is kept in the cache
//! directory and said in one line on stderr, and later commands read it back. A choice is kept
//! per adapter (its name, backend, driver and driver info) and per weight-dtype class of the
//! model (e.g. `q4_1+q8_0`): the kernels' relative speed depends on how a format is decoded,
//! so a Q4_K model's best layout need not be a Q4_1 model's. `kestrel bench --tune` tunes
//! again, by timing whole decodes and prefills ([`tune`]). CPU drivers are not tuned on first
//! use unless `KESTREL_TUNE=on` (see [`on_first_use`]); `KESTREL_TUNE=off` turns it off
//! everywhere (saved choices are still read).
//! Each choice is one the kernel cases check, so it changes speed only. A file that does not
//! read back is ignored with a note and tuned again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Instant;

use kestrel_runtime::autotune::{self, Report};
use kestrel_runtime::kernels::{matmul, matvec};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::session::{Sampling, Session};
use kestrel_runtime::tuning::{self, Tuning};
use kestrel_runtime::Gpu;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::stdout::outln;

/// Prompt and decode lengths of one `bench --tune` timing (short: the choice is relative).
const PROMPT: usize = 32;
const DECODE: usize = 16;

/// The variable that turns tuning on first use off (`off`) or on for CPU drivers too (`on`).
pub const TUNE_VAR: &str = "KESTREL_TUNE";

fn path(gpu: &Gpu, class: &str) -> PathBuf {
    let info = &gpu.info;
    let identity = format!(
        "{}\n{:?}\n{}\n{}",
        info.name, info.backend, info.driver, info.driver_info
    );
    let hash: String = Sha256::digest(identity.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    kestrel_models::cache_dir()
        .join("tuning")
        .join(format!("{hash}-{class}.txt"))
}

/// Whether tuning on first use is on (not turned off by [`TUNE_VAR`]).
/// Whether to tune on first use: `KESTREL_TUNE=off` (or 0, no, false) never, `on` (or 1,
/// yes, true) always, and by default on every adapter but CPU drivers. There the quick
/// tuner's one-matrix timings misjudge the fused model kernels (on a busy lavapipe it kept
/// matvec 4x4 for SmolLM2, which whole decodes time at 0.78x the default 16x16), while the
/// CPU defaults were chosen by A/B runs of whole decodes; `bench --tune` still tunes them.
fn on_first_use(gpu: &Gpu) -> bool {
    match std::env::var(TUNE_VAR).as_deref() {
        Ok("off" | "0" | "no" | "false") => false,
        Ok("on" | "1" | "yes" | "true") => true,
        _ => gpu.info.device_type != eframe::wgpu::DeviceType::Cpu,
    }
}

/// Start `gpu` with the choices saved for its adapter and `model`'s dtype class; where there
/// are none (or they do not read back), tune now, save and say so, unless [`TUNE_VAR`] turns
/// that off. Call before any session of the model plans. A tuning that fails is a note: the
/// adapter's defaults serve.
pub fn ensure(gpu: &Arc<Gpu>, model: &kestrel_models::Model) {
    if let Err(e) = load_or_tune(gpu, model) {
        eprintln!("note: the kernels were not tuned ({e}); the adapter's defaults serve");
    }
}

fn load_or_tune(gpu: &Arc<Gpu>, model: &kestrel_models::Model) -> Result<(), String> {
    let class = class_of(model)?;
    let file = path(gpu, &class);
    if let Ok(text) = std::fs::read_to_string(&file) {
        match Tuning::from_text(&text) {
            Ok(t) => {
                gpu.set_tuning(t);
                return Ok(());
            }
            Err(why) => eprintln!(
                "note: ignoring the kernel tuning in {}: {why}",
                file.display()
            ),
        }
    }
    if !on_first_use(gpu) {
        return Ok(());
    }
    let report = run(gpu, model, &class)?;
    eprintln!(
        "tuned the kernels for {} ({}) on {class} weights in {:.1} s: matvec {}, matmul {} \
         (kept in {}; {TUNE_VAR}=off skips this)",
        gpu.info.name,
        gpu.backend_name(),
        report.seconds,
        matvec_name(&report.tuning).unwrap_or_default(),
        matmul_name(&report.tuning).unwrap_or_default(),
        file.display()
    );
    Ok(())
}

/// Decode and prefill tokens/s of `model` on `gpu` as it is tuned now, the better of two
/// runs each, on a fresh session (so plans are made with the current choices).
fn time(gpu: &Arc<Gpu>, model: &kestrel_models::Model) -> Result<(f64, f64), String> {
    let rt = |e: kestrel_runtime::Error| e.to_string();
    let vocab = model.config().vocab as u32;
    let mut rng = Rng::new(5);
    let prompt: Vec<u32> = (0..PROMPT).map(|_| rng.below(vocab)).collect();
    let greedy = Sampling::default();
    let mut session: Session = model
        .session(gpu, PROMPT + 2 * DECODE + 2)
        .map_err(|e| e.to_string())?;
    let (mut decode, mut prefill) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        session.reset();
        let t = Instant::now();
        let first = pollster::block_on(session.next_token(&prompt, &greedy)).map_err(rt)?;
        let prefill_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        pollster::block_on(session.decode(first, DECODE, &greedy, &[])).map_err(rt)?;
        let decode_s = t.elapsed().as_secs_f64();
        // The best of three: the first run also makes the pipelines.
        prefill = prefill.max(PROMPT as f64 / prefill_s.max(1e-9));
        decode = decode.max(DECODE as f64 / decode_s.max(1e-9));
    }
    Ok((decode, prefill))
}

/// `kestrel bench --tune`: time the candidates on whole decodes and prefills of `model`
/// (best of three short runs each, about a minute for SmolLM2 on lavapipe), keep the fastest
/// for this adapter and the model's class and set them on `gpu`; the report of what was
/// timed. Slower than the quick tuner of a first use, and its measure is the real one (on a
/// loaded lavapipe the quick tuner's kernel timings did not always pick the same layout).
pub fn tune(gpu: &Arc<Gpu>, model: &kestrel_models::Model, text: bool) -> Result<Value, String> {
    if !model.config().causal {
        return Err("--tune times decode and prefill, which a diffusion model has not".into());
    }
    let mut chosen = Tuning::default();
    let mut decode_rates = serde_json::Map::new();
    // First the adapter's defaults (on CPU drivers a layout per weight type), then each
    // candidate for every weight.
    gpu.set_tuning(Tuning {
        matvec: None,
        ..chosen
    });
    let (decode, _) = time(gpu, model)?;
    if text {
        outln!("tune: matvec default: {decode:.2} decode tokens/s");
    }
    decode_rates.insert("default".into(), json!(decode));
    let mut best = (decode, None);
    for layout in tuning::matvec_candidates(gpu) {
        gpu.set_tuning(Tuning {
            matvec: Some(layout),
            ..chosen
        });
        let (decode, _) = time(gpu, model)?;
        let name = layout_name(layout);
        if text {
            outln!("tune: matvec {name}: {decode:.2} decode tokens/s");
        }
        decode_rates.insert(name, json!(decode));
        if decode > best.0 {
            best = (decode, Some(layout));
        }
    }
    chosen.matvec = best.1;
    let mut prefill_rates = serde_json::Map::new();
    let mut best_rows = (0.0, false);
    for rows in [false, true] {
        gpu.set_tuning(Tuning {
            matmul_rows: Some(rows),
            ..chosen
        });
        if rows && !matmul::runs_rows(gpu) {
            // Too few subgroup lanes for the rows matmul.
            continue;
        }
        let (_, prefill) = time(gpu, model)?;
        let name = if rows { "rows" } else { "tiles" };
        if text {
            outln!("tune: matmul {name}: {prefill:.2} prefill tokens/s");
        }
        prefill_rates.insert(name.into(), json!(prefill));
        if prefill > best_rows.0 {
            best_rows = (prefill, rows);
        }
    }
    chosen.matmul_rows = Some(best_rows.1);
    gpu.set_tuning(chosen);
    let class = class_of(model)?;
    let file = path(gpu, &class);
    save(&file, &chosen)?;
    Ok(json!({
        "decode_tokens_per_s": decode_rates,
        "prefill_tokens_per_s": prefill_rates,
        "class": class,
        "file": file.display().to_string(),
    }))
}

fn class_of(model: &kestrel_models::Model) -> Result<String, String> {
    autotune::dtype_class(model.architecture().as_ref()).map_err(|e| e.to_string())
}

fn run(gpu: &Arc<Gpu>, model: &kestrel_models::Model, class: &str) -> Result<Report, String> {
    let report = pollster::block_on(autotune::tune(gpu, model.architecture().as_ref()))
        .map_err(|e| format!("tuning the kernels: {e}"))?;
    save(&path(gpu, class), &report.tuning)?;
    Ok(report)
}

fn matvec_name(t: &Tuning) -> Option<String> {
    t.matvec.map(layout_name)
}

/// `LANESxROWS`, then ` subgroup` when its lanes are summed by subgroup.
fn layout_name(l: matvec::Layout) -> String {
    let by = if l.subgroup { " subgroup" } else { "" };
    format!("{}x{}{by}", l.lanes, l.rows_per_lane)
}

fn matmul_name(t: &Tuning) -> Option<&'static str> {
    t.matmul_rows
        .map(|rows| if rows { "rows" } else { "tiles" })
}

/// The choices in a report: each layout, or null where the adapter's kind decides.
pub fn report(t: &Tuning) -> Value {
    json!({ "matvec": matvec_name(t), "matmul": matmul_name(t) })
}

/// Write the choices atomically (a temporary file renamed over the old one).
fn save(file: &Path, t: &Tuning) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let io = |e: std::io::Error| format!("writing the kernel tuning to {}: {e}", file.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, t.to_text()).map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)
}

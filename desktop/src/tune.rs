//! Kernel choices by timing on this adapter (issue 17's tuning): `kestrel bench --tune`
//! times each matvec layout of [`MATVEC_CANDIDATES`] on the model's decode and the tiled
//! and rows matmuls on its prefill, keeps the fastest in the cache directory
//! (`tuning/<hash>.txt`, one file per adapter: SHA-256 of its name, backend, driver and
//! driver info), and every later command on that adapter starts with it ([`load`]). Each
//! choice is one the kernel cases check, so it changes speed only. A file that does not
//! read back is ignored with a note.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kestrel_runtime::kernels::{matmul, matvec};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::session::{Sampling, Session};
use kestrel_runtime::tuning::{Tuning, MATVEC_CANDIDATES};
use kestrel_runtime::Gpu;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::stdout::outln;

/// Prompt and decode lengths of one timing (short: the choice is relative).
const PROMPT: usize = 32;
const DECODE: usize = 16;

fn path(gpu: &Gpu) -> PathBuf {
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
        .join(format!("{hash}.txt"))
}

/// Start `gpu` with the choices saved for its adapter, if any.
pub fn load(gpu: &Gpu) {
    let file = path(gpu);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return;
    };
    match Tuning::from_text(&text) {
        Ok(t) => gpu.set_tuning(t),
        Err(why) => eprintln!(
            "note: ignoring the kernel tuning in {}: {why} (`kestrel bench --tune` rewrites it)",
            file.display()
        ),
    }
}

/// The choices in a report: each layout, or null where the adapter's kind decides.
pub fn report(t: &Tuning) -> Value {
    json!({
        "matvec": t.matvec.map(|l| format!("{}x{}", l.lanes, l.rows_per_lane)),
        "matmul": t.matmul_rows.map(|rows| if rows { "rows" } else { "tiles" }),
    })
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

/// Time the candidates on the model at `path`, keep the fastest for this adapter and set
/// them on `gpu`; the report of what was timed.
pub fn tune(gpu: &Arc<Gpu>, path: &Path, text: bool) -> Result<Value, String> {
    let model = kestrel_models::load(gpu, path).map_err(|e| e.to_string())?;
    if !model.config().causal {
        return Err("--tune times decode and prefill, which a diffusion model has not".into());
    }
    let mut chosen = Tuning::default();
    let mut decode_rates = serde_json::Map::new();
    let mut best = (0.0, matvec::Layout::for_device(gpu));
    for layout in MATVEC_CANDIDATES {
        gpu.set_tuning(Tuning {
            matvec: Some(layout),
            ..chosen
        });
        let (decode, _) = time(gpu, &model)?;
        let name = format!("{}x{}", layout.lanes, layout.rows_per_lane);
        if text {
            outln!("tune: matvec {name}: {decode:.2} decode tokens/s");
        }
        decode_rates.insert(name, json!(decode));
        if decode > best.0 {
            best = (decode, layout);
        }
    }
    chosen.matvec = Some(best.1);
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
        let (_, prefill) = time(gpu, &model)?;
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
    save(gpu, &chosen)?;
    Ok(json!({
        "decode_tokens_per_s": decode_rates,
        "prefill_tokens_per_s": prefill_rates,
        "file": path_string(gpu),
    }))
}

fn path_string(gpu: &Gpu) -> String {
    path(gpu).display().to_string()
}

/// Write the choices atomically (a temporary file renamed over the old one).
fn save(gpu: &Gpu, t: &Tuning) -> Result<(), String> {
    let file = path(gpu);
    let dir = file.parent().unwrap_or(Path::new("."));
    let io = |e: std::io::Error| format!("writing the kernel tuning to {}: {e}", file.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, t.to_text()).map_err(io)?;
    std::fs::rename(&tmp, &file).map_err(io)
}

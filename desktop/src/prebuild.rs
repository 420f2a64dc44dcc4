//! Pipelines made ahead of use: the keys of the pipelines a model used on an adapter
//! ([`Gpu::pipeline_keys`]) are kept in the cache directory, `pipeline_keys/<hash>.txt`, one
//! key a line, one file per model file and adapter (the hash: SHA-256 of the model's
//! canonical path, the adapter's name, backend, driver and driver info, and the binding
//! limit). A later run on the same model and adapter creates them on background threads
//! ([`Gpu::prebuild`]) while the model loads, so its first prompt finds them made (on a CPU
//! adapter only the first prompt's, see [`start`]). A list
//! is only a hint: a key that no kernel has, or a pipeline the device refuses, is skipped
//! (see `Gpu::prebuild`), and the list is rewritten when the command ends (atomically: a
//! temporary file renamed over the old one).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kestrel_runtime::Gpu;
use sha2::{Digest, Sha256};

/// Devices, the list files of the models loaded on them, and the list if already taken (see
/// [`settle`]), for [`save_all`].
type Started = (Arc<Gpu>, PathBuf, Option<Vec<String>>);
static STARTED: Mutex<Vec<Started>> = Mutex::new(Vec::new());

/// A list longer than this is not Kestrel's (a model uses a few dozen pipelines).
const MAX_FILE_BYTES: u64 = 1 << 20;

fn path(gpu: &Gpu, model: &Path) -> PathBuf {
    let model = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
    let info = &gpu.info;
    let identity = format!(
        "{}\n{}\n{:?}\n{}\n{}\n{}",
        model.display(),
        info.name,
        info.backend,
        info.driver,
        info.driver_info,
        gpu.caps.max_storage_binding
    );
    let hash: String = Sha256::digest(identity.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    kestrel_models::cache_dir()
        .join("pipeline_keys")
        .join(format!("{hash}.txt"))
}

/// The line that ends, in a list file, the keys a first prompt waits for (those asked for
/// before the device's first compute dispatch, [`Gpu::pipeline_keys_before_first_dispatch`]);
/// not a key, so an older Kestrel reading the file skips it.
const FIRST_DISPATCH: &str = "# first dispatch";

/// Start creating the pipelines that `model` used on this adapter in an earlier run, if there
/// is a list, on background threads; remember the model so that [`save_all`] writes the list
/// of this run. On a GPU every pipeline of the list, on a thread per core but one.
pub fn start(gpu: &Arc<Gpu>, model: &Path) {
    // On a CPU adapter (lavapipe), whose cores also run the kernels, only the first prompt's
    // pipelines and on one thread: made while the weights upload (one core) and the tokenizer
    // builds, and beside the plan that asks for them; the decode plan's would run inside the
    // first prefill and slow it (all of them, on every core but one, were a net loss on 2
    // cores). Measured on lavapipe, 2 cores at load 9-13, alternated: Qwen2.5-Coder-0.5B cold
    // start with a 64-token prompt 17.6, 16.5, 17.7 s against 16.5, 18.0, 19.0 s without,
    // with a 30-token one 13.7, 11.3, 11.8 s against 13.1, 12.1, 11.1 s: within the noise
    // (the plans' wait for pipelines fell from 3.3-5.0 s to 1.4-2.2 s, the weight upload and
    // the tokenizer, sharing the cores, slowed by as much). Not measured on an idle machine,
    // where the thread would share the upload's free core with the tokenizer only.
    let cpu = gpu.info.device_type == eframe::wgpu::DeviceType::Cpu;
    let file = path(gpu, model);
    let text = match std::fs::metadata(&file) {
        Ok(m) if m.len() <= MAX_FILE_BYTES => std::fs::read_to_string(&file).unwrap_or_default(),
        _ => String::new(),
    };
    let keys: Vec<String> = text
        .lines()
        .take_while(|l| !(cpu && *l == FIRST_DISPATCH))
        .filter(|l| *l != FIRST_DISPATCH)
        .map(str::to_string)
        .collect();
    if !keys.is_empty() {
        let threads = if cpu {
            1
        } else {
            // The load takes a core (and builds the tokenizer on a second one for a while).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_sub(1).max(1)
        };
        // Detached: a run that ends first simply stops them.
        drop(gpu.prebuild(keys, threads));
    }
    if let Ok(mut started) = STARTED.lock() {
        started.push((gpu.clone(), file, None));
    }
}

/// The list of `gpu`'s pipelines as a file holds it: the keys in first-use order, with
/// [`FIRST_DISPATCH`] after those a first prompt waits for.
fn list(gpu: &Gpu) -> Vec<String> {
    let mut keys = gpu.pipeline_keys();
    let first = gpu.pipeline_keys_before_first_dispatch().min(keys.len());
    keys.insert(first, FIRST_DISPATCH.to_string());
    keys
}

/// Take the list of `gpu`'s pipelines now: every pipeline the model needs exists, and what
/// the command creates later (`kestrel bench`'s kernel figures) is not the model's.
pub fn settle(gpu: &Arc<Gpu>) {
    if let Ok(mut started) = STARTED.lock() {
        for (g, _, keys) in started.iter_mut() {
            if Arc::ptr_eq(g, gpu) && keys.is_none() {
                *keys = Some(list(gpu));
            }
        }
    }
}

/// Write the list of pipelines each device that [`start`] saw has used, or the list
/// [`settle`] took (errors are notes: the list only saves time).
pub fn save_all() {
    let started = match STARTED.lock() {
        Ok(mut s) => std::mem::take(&mut *s),
        Err(_) => return,
    };
    for (gpu, file, keys) in started {
        let keys = keys.unwrap_or_else(|| list(&gpu));
        if keys.len() <= 1 {
            continue;
        }
        if let Err(e) = save(&file, &keys) {
            eprintln!("note: could not save the list of pipelines used: {e}");
        }
    }
}

fn save(file: &Path, keys: &[String]) -> Result<(), String> {
    let dir = file.parent().ok_or("bad cache path")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut text = keys.join("\n");
    text.push('\n');
    // A name of this process's own, so concurrent runs never write the same temporary file.
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", file.display())
    })
}

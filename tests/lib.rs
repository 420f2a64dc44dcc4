//! Shared helpers of Kestrel's cross-crate tests: the GPUs to test on, buffers poisoned with
//! NaN, blocking readback, and error measures.
//!
//! GPU tests run on every backend named in `KESTREL_TEST_BACKENDS` (comma-separated, default
//! `vulkan,gl`). A backend that cannot be opened fails the test loudly: tests never skip.
//! With `KESTREL_TEST_VERBOSE` set, every comparison prints its error (run with --nocapture).
//!
//! GPU tests of one process take turns: the first call of [`gpus`] in a test thread waits
//! for the GPUs and holds them until that thread ends. wgpu's GL backend panics ("Could not
//! lock adapter context") when another thread holds its one GL context for more than 6 s,
//! which llvmpipe does while it compiles a shader or runs a long dispatch; and lavapipe and
//! llvmpipe use every core for one dispatch anyway.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kestrel_runtime::kernels::{self, Dispatch, Step};
use kestrel_runtime::{readback, BackendChoice, Gpu};

/// The backends the GPU tests run on.
pub fn backends() -> Vec<BackendChoice> {
    let list = std::env::var("KESTREL_TEST_BACKENDS").unwrap_or_else(|_| "vulkan,gl".to_string());
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<BackendChoice>()
                .unwrap_or_else(|e| panic!("KESTREL_TEST_BACKENDS={list:?}: {e}"))
        })
        .collect()
}

/// Mesa prints a warning on every device open when XDG_RUNTIME_DIR is unset; give it a private dir.
fn quiet_xdg_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let dir = std::env::temp_dir().join("kestrel-tests-xdg");
    if std::fs::create_dir_all(&dir).is_ok() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

static TURN: Mutex<()> = Mutex::new(());

thread_local! {
    static HELD: RefCell<Option<MutexGuard<'static, ()>>> = const { RefCell::new(None) };
}

/// Wait until no other test thread uses the GPUs; hold them until this thread ends.
fn take_turn() {
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        if held.is_none() {
            // A test that panicked while holding the GPUs poisons the lock; the GPUs are fine.
            *held = Some(TURN.lock().unwrap_or_else(|e| e.into_inner()));
        }
    });
}

/// One device per backend in `KESTREL_TEST_BACKENDS`, opened once per test process.
/// Panics (naming the backend and the error) if any of them cannot be opened. The calling
/// thread then has the GPUs to itself until it ends (see the module notes).
pub fn gpus() -> Vec<Arc<Gpu>> {
    take_turn();
    static GPUS: OnceLock<Vec<Arc<Gpu>>> = OnceLock::new();
    GPUS.get_or_init(|| {
        quiet_xdg_runtime_dir();
        backends()
            .into_iter()
            .map(|choice| {
                let gpu = pollster::block_on(Gpu::new(choice)).unwrap_or_else(|e| {
                    panic!(
                        "cannot open the {choice} backend for tests: {e}\n\
                         (set KESTREL_TEST_BACKENDS to the backends this machine has, e.g. \"vulkan\")"
                    )
                });
                eprintln!("test device [{choice}]: {}", gpu.describe());
                gpu
            })
            .collect()
    })
    .clone()
}

/// A storage buffer of `n` f32 values, all NaN: whatever a kernel fails to write stays NaN
/// and makes the comparison fail.
pub fn poisoned(gpu: &Gpu, n: usize) -> wgpu::Buffer {
    gpu.storage_buffer_init("poisoned", bytemuck::cast_slice(&vec![f32::NAN; n.max(1)]))
}

/// A storage buffer holding `data`.
pub fn upload_f32(gpu: &Gpu, data: &[f32]) -> wgpu::Buffer {
    gpu.storage_buffer_init("test f32", bytemuck::cast_slice(data))
}

/// A storage buffer holding `data`.
pub fn upload_u32(gpu: &Gpu, data: &[u32]) -> wgpu::Buffer {
    gpu.storage_buffer_init("test u32", bytemuck::cast_slice(data))
}

/// A `Step` with the given position and token count, greedy sampling settings.
pub fn step(pos: u32, n_tokens: u32) -> Step {
    Step {
        pos,
        n_tokens,
        top_p: 1.0,
        ..Step::default()
    }
}

/// The uniform buffer of a `Step`.
pub fn step_buffer(gpu: &Gpu, step: &Step) -> wgpu::Buffer {
    gpu.uniform_buffer_init("step", bytemuck::bytes_of(step))
}

/// Submit `dispatches` in one pass, wait for them, and panic on any GPU error they raised.
pub fn run(gpu: &Gpu, dispatches: &[Dispatch]) {
    kernels::submit(gpu, dispatches);
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap_or_else(|e| panic!("{}: waiting for the GPU failed: {e}", gpu.backend_name()));
    gpu.check()
        .unwrap_or_else(|e| panic!("{}: GPU error: {e}", gpu.backend_name()));
}

/// Read `n` f32 values from the start of `buf`.
pub fn read(gpu: &Arc<Gpu>, buf: &wgpu::Buffer, n: usize) -> Vec<f32> {
    pollster::block_on(readback::read_f32(gpu, buf, 0, n))
        .unwrap_or_else(|e| panic!("{}: readback failed: {e}", gpu.backend_name()))
}

/// Read `n` u32 values from the start of `buf`.
pub fn read_u32(gpu: &Arc<Gpu>, buf: &wgpu::Buffer, n: usize) -> Vec<u32> {
    pollster::block_on(readback::read_u32(gpu, buf, 0, n))
        .unwrap_or_else(|e| panic!("{}: readback failed: {e}", gpu.backend_name()))
}

/// `||out - reference|| / ||reference||` in f64 (the plain norm of `out - reference` when the
/// reference is zero). NaN if `out` holds a NaN, so `rel_err(..) <= tol` fails on it.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "rel_err: lengths differ");
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&o, &r) in out.iter().zip(reference) {
        let d = o as f64 - r as f64;
        diff += d * d;
        norm += (r as f64) * (r as f64);
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Panic unless `rel_err(out, reference) <= tol`, naming the first NaN and the largest
/// deviation so a failure says where to look.
pub fn assert_close(what: &str, out: &[f32], reference: &[f32], tol: f64) {
    assert_eq!(
        out.len(),
        reference.len(),
        "{what}: output has {} values, reference {}",
        out.len(),
        reference.len()
    );
    let err = rel_err(out, reference);
    if std::env::var_os("KESTREL_TEST_VERBOSE").is_some() {
        eprintln!("{what}: relative error {err:.2e} (tolerance {tol:.0e})");
    }
    if err <= tol {
        return;
    }
    let nan = out.iter().position(|v| !v.is_finite());
    let (worst, diff) = out
        .iter()
        .zip(reference)
        .map(|(&o, &r)| (o as f64 - r as f64).abs())
        .enumerate()
        .filter(|(_, d)| !d.is_nan())
        .fold(
            (0, 0.0),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        );
    panic!(
        "{what}: relative error {err:.3e} > {tol:.0e}; first non-finite output at {nan:?}; \
         largest difference {diff:.3e} at {worst} (gpu {}, reference {})",
        out[worst], reference[worst]
    );
}

/// Panic unless `out` equals `reference` bit for bit (NaN included).
pub fn assert_same_bits(what: &str, out: &[f32], reference: &[f32]) {
    assert_eq!(out.len(), reference.len(), "{what}: lengths differ");
    if let Some(i) = out
        .iter()
        .zip(reference)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        panic!(
            "{what}: first difference at {i}: gpu {} reference {}",
            out[i], reference[i]
        );
    }
}

/// Panic unless the outputs of every backend agree with the first one within `tol`.
pub fn assert_backends_agree(what: &str, outputs: &[(String, Vec<f32>)], tol: f64) {
    if let Some(((first_name, first), rest)) = outputs.split_first() {
        for (name, out) in rest {
            assert_close(&format!("{what}: {name} vs {first_name}"), out, first, tol);
        }
    }
}

/// Round to f16: the bit patterns to upload and the values the GPU will read.
pub fn to_f16(v: &[f32]) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = v
        .iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect();
    let rounded = bits
        .iter()
        .map(|&b| half::f16::from_bits(b).to_f32())
        .collect();
    (bits, rounded)
}

//! Shared helpers of Kestrel's cross-crate tests: the GPUs to test on, the runner of the
//! runtime's table of kernel cases ([`check_cases`]), blocking readback, and error measures
//! (the runtime's [`rel_err`] and the buffer helpers of its case table, re-exported).
//!
//! GPU tests run on every backend named in `KESTREL_TEST_BACKENDS` (comma-separated, default
//! `vulkan,gl`). A backend that cannot be opened fails the test loudly: tests never skip.
//! With `KESTREL_TEST_VERBOSE` set, every comparison prints its error (run with --nocapture).
//! Tests against the real model find it through [`real_model`]: missing, they fail, unless
//! `KESTREL_OFFLINE=1` says to leave them unchecked (and they say what they did not check).
//!
//! GPU tests of one process take turns: the first call of [`gpus`] in a test thread waits
//! for the GPUs and holds them until that thread ends. wgpu's GL backend panics ("Could not
//! lock adapter context") when another thread holds its one GL context for more than 6 s,
//! which llvmpipe does while it compiles a shader or runs a long dispatch; and lavapipe and
//! llvmpipe use every core for one dispatch anyway.

pub mod fixture;
pub mod real_model;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kestrel_runtime::cases::{Case, BACKEND_TOL};
use kestrel_runtime::kernels::{self, Dispatch};
use kestrel_runtime::{readback, BackendChoice, Gpu};

pub use kestrel_runtime::cases::weights::to_f16;
pub use kestrel_runtime::cases::{poisoned, rel_err, step, step_buffer, upload_f32, upload_u32};

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
                // On CPU adapters weight matrices live in textures; GL (llvmpipe) keeps them in
                // storage buffers here, so the tests run both paths (GPUs and browsers take
                // buffers).
                let gpu = match choice {
                    BackendChoice::Gl => gpu.without_weight_textures(),
                    _ => gpu,
                };
                eprintln!(
                    "test device [{choice}]: {} (weights in {})",
                    gpu.describe(),
                    match gpu.caps.weight_texture_bytes {
                        0 => "storage buffers",
                        _ => "textures",
                    }
                );
                gpu
            })
            .collect()
    })
    .clone()
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

/// Run `cases` on every backend: every output within its tolerance, and for cases marked
/// `agree`, every backend's outputs within `BACKEND_TOL` of the first backend's. Panics at
/// the first failure, naming the case, the output, the backend and where it went wrong.
pub fn check_cases(cases: impl IntoIterator<Item = Case>) {
    let gpus = gpus();
    let verbose = std::env::var_os("KESTREL_TEST_VERBOSE").is_some();
    let mut count = 0;
    for case in cases {
        let mut first: Option<(String, Vec<Vec<f32>>)> = None;
        for gpu in &gpus {
            let backend = gpu.backend_name();
            let outcomes =
                pollster::block_on(case.run(gpu)).unwrap_or_else(|e| panic!("on {backend}: {e}"));
            for o in &outcomes {
                if verbose {
                    eprintln!(
                        "{} {} on {backend}: error {:.2e} (tolerance {:.0e})",
                        o.kernel, o.what, o.err, o.tol
                    );
                }
                assert!(
                    o.ok,
                    "{} {} on {backend}: error {:.3e} > {:.0e}; {}",
                    o.kernel, o.what, o.err, o.tol, o.note
                );
            }
            let values: Vec<Vec<f32>> = outcomes.into_iter().map(|o| o.values).collect();
            match &first {
                None => first = Some((backend, values)),
                Some((name, want)) if case.agree => {
                    for (got, want) in values.iter().zip(want) {
                        let what = format!("{} {}: {backend} vs {name}", case.kernel, case.what);
                        assert_close(&what, got, want, BACKEND_TOL);
                    }
                }
                Some(_) => {}
            }
        }
        count += 1;
    }
    assert!(count > 0, "no cases to check");
}

/// The test fixture folder `name` (tests/fixtures, made by the fixture generator).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A private copy of fixture `name` whose config names `eos` as its end-of-sequence token.
pub fn fixture_with_eos(name: &str, eos: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-eos{eos}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for e in std::fs::read_dir(fixture(name)).expect("fixture") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
    }
    let config = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("json");
    v["eos_token_id"] = eos.into();
    std::fs::write(&config, v.to_string()).expect("write");
    dir
}

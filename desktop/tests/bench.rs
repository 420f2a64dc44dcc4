//! `kestrel bench` on a fixture model (a few tokens, on lavapipe): the `--json` report has
//! exactly the keys listed here, with their types and sane values (the keys the design's
//! command-line contract keeps stable among them), and the human output has its lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// The backend the GPU tests run on first (`KESTREL_TEST_BACKENDS`, default vulkan).
fn backend() -> String {
    std::env::var("KESTREL_TEST_BACKENDS")
        .ok()
        .and_then(|l| l.split(',').next().map(|b| b.trim().to_string()))
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "vulkan".to_string())
}

const PROMPT: usize = 8;
const DECODE: usize = 6;
const EVERY: usize = 3;

/// `kestrel bench` on llama_gqa with a short prompt and decode; its stdout. Fails on a
/// non-zero exit or any "error:" line.
fn bench(extra: &[&str]) -> String {
    // The pipeline cache goes to a directory of the tests', not the user's cache.
    bench_in(
        &std::env::temp_dir().join("kestrel-tests-bench-cache"),
        extra,
    )
    .0
}

/// [`bench`] with `cache` as the cache directory; stdout and stderr. Without tuning on first
/// use (the tests' default: no process pays it; [`first_use_tunes_once_and_later_runs_reuse_it`]
/// turns it on).
fn bench_in(cache: &Path, extra: &[&str]) -> (String, String) {
    bench_env(cache, extra, &[("KESTREL_TUNE", "off")])
}

/// [`bench_in`] with these environment variables.
fn bench_env(cache: &Path, extra: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let xdg = std::env::temp_dir().join("kestrel-tests-xdg");
    let _ = std::fs::create_dir_all(&xdg);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700));
    }
    let model = fixture("llama_gqa");
    let (prompt, decode, every) = (PROMPT.to_string(), DECODE.to_string(), EVERY.to_string());
    let mut args = vec![
        "bench",
        "--model",
        model.to_str().expect("utf-8 path"),
        "--prompt-tokens",
        &prompt,
        "--decode-tokens",
        &decode,
        "--report-every",
        &every,
    ];
    let backend = backend();
    args.extend(["--backend", backend.as_str()]);
    args.extend(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(&args)
        .env("XDG_RUNTIME_DIR", &xdg)
        .env("KESTREL_CACHE", cache)
        .envs(env.iter().copied())
        .output()
        .expect("run kestrel");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "kestrel {args:?}: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("error:"), "{stderr}");
    (stdout, stderr)
}

fn positive(r: &Value, key: &str) -> f64 {
    let v = r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key}: not a number: {}", r[key]));
    assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    v
}

fn count(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key}: not an unsigned integer: {}", r[key]))
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

/// Every key of the report. The design's contract keeps prefill_tokens_per_s,
/// decode_tokens_per_s, kv_cache_bytes, weight_bytes_read_per_decode_token,
/// dispatches_per_decode_token, submits_per_decode_token, host_round_trips_per_decode_token
/// and cold_start_s stable; the README documents the rest (adapter, the roofline figures,
/// decode windows, KV bytes at start and end, GPU buffer bytes).
const REPORT_KEYS: &[&str] = &[
    "adapter",
    "attention",
    "backend",
    "cold_start_prompt",
    "cold_start_prompt_tokens",
    "cold_start_s",
    "copy_gbs",
    "decode_kernel_ms",
    "decode_kernel_share",
    "decode_kernel_span_ms",
    "decode_tokens",
    "decode_tokens_per_s",
    "decode_weight_gbs",
    "device_open_s",
    "dispatches_per_decode_token",
    "first_step_s",
    "gpu_bytes",
    "gpu_peak_bytes",
    "host_round_trips_per_decode_token",
    "kv_cache_bytes",
    "load_parse_s",
    "matmul_512_gflops",
    "matvec_4096x4096_f16_gbs",
    "matvec_4096x4096_f32_gbs",
    "matvec_precision",
    "model",
    "model_load_s",
    "pipeline_creation_s",
    "pipeline_wait_s",
    "pipelines_created",
    "prefill_tokens",
    "prefill_tokens_per_s",
    "routing",
    "submits_per_decode_token",
    "tokenizer_s",
    "tuning",
    "weight_bytes",
    "weight_bytes_read_per_decode_token",
    "weight_file_bytes",
    "weight_upload_s",
];

const ATTENTION_KEYS: &[&str] = &[
    "decode_last_over_first_window",
    "decode_report_every",
    "decode_windows",
    "kv_cache_bytes_end",
    "kv_cache_bytes_start",
    "max_context",
    "options",
    "session_capacity",
];

#[test]
fn bench_json_has_every_documented_key_with_sane_values() {
    let out = bench(&["--json"]);
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut want = REPORT_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys(&r), want, "{r:#}");

    assert!(!r["adapter"].as_str().expect("adapter").is_empty());
    assert_eq!(r["backend"].as_str(), Some(backend().as_str()));
    assert!(r["model"].as_str().expect("model").ends_with("llama_gqa"));
    // The fixture has no chat template: the cold start is the benchmark prompt's, and the
    // matvec stays exact unless asked.
    assert_eq!(r["cold_start_prompt"].as_str(), Some("benchmark prompt"));
    assert_eq!(r["cold_start_prompt_tokens"], r["prefill_tokens"]);
    assert_eq!(r["matvec_precision"].as_str(), Some("f32"));
    for key in [
        "cold_start_s",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "matmul_512_gflops",
        "matvec_4096x4096_f32_gbs",
        "matvec_4096x4096_f16_gbs",
        "copy_gbs",
        "pipeline_creation_s",
        "pipeline_wait_s",
        "decode_weight_gbs",
        "device_open_s",
        "model_load_s",
        "load_parse_s",
        "tokenizer_s",
        "weight_upload_s",
        "first_step_s",
    ] {
        positive(&r, key);
    }
    // The phases of a cold start lie within it (the tokenizer is built beside the upload).
    let load = positive(&r, "model_load_s");
    assert!(positive(&r, "load_parse_s") + positive(&r, "weight_upload_s") <= load);
    assert!(
        positive(&r, "device_open_s") + load + positive(&r, "first_step_s")
            <= positive(&r, "cold_start_s")
    );
    assert!(count(&r, "pipelines_created") > 0);
    let gbs = r["weight_bytes_read_per_decode_token"]
        .as_f64()
        .expect("bytes")
        * r["decode_tokens_per_s"].as_f64().expect("tokens/s")
        / 1e9;
    assert!(
        (positive(&r, "decode_weight_gbs") - gbs).abs() <= 1e-12 * gbs,
        "decode_weight_gbs is bytes per token x tokens/s"
    );
    check_kernel_times(&r);
    assert_eq!(count(&r, "prefill_tokens"), PROMPT as u64);
    assert_eq!(count(&r, "decode_tokens"), DECODE as u64);

    // Bytes: the weights on the GPU, all read by a dense model's decoded token but for one
    // row of its untied embedding table (320 x 64 f32); the KV cache fits the prompt and
    // decode; the runtime's buffer count holds both, and its peak more.
    let weights = count(&r, "weight_bytes");
    assert!(weights > 0 && count(&r, "weight_file_bytes") > 0);
    assert_eq!(
        count(&r, "weight_bytes_read_per_decode_token"),
        weights - 319 * 64 * 4
    );
    let kv = count(&r, "kv_cache_bytes");
    assert!(kv > 0);
    let gpu = count(&r, "gpu_bytes");
    assert!(
        gpu >= weights + kv,
        "gpu_bytes {gpu} < weights {weights} + KV {kv}"
    );
    assert!(count(&r, "gpu_peak_bytes") >= gpu);

    // GPU work per decoded token: decode steps run in batches on the GPU (the sampled token
    // feeds the next step there), MAX_DECODE_BATCH steps each (the bench does not stream),
    // with one readback of the batch's ids each.
    let dispatches = positive(&r, "dispatches_per_decode_token");
    let submits = positive(&r, "submits_per_decode_token");
    assert!(
        dispatches >= submits,
        "{dispatches} dispatches, {submits} submits"
    );
    let batches = DECODE.div_ceil(kestrel_models::generate::MAX_DECODE_BATCH);
    assert_eq!(
        r["host_round_trips_per_decode_token"].as_f64(),
        Some(batches as f64 / DECODE as f64)
    );
    assert_eq!(
        r["routing"],
        Value::Array(vec![]),
        "a dense model routes nothing"
    );

    let a = &r["attention"];
    let mut want = ATTENTION_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys(a), want, "{a:#}");
    assert_eq!(count(a, "kv_cache_bytes_start"), kv);
    assert_eq!(count(a, "kv_cache_bytes_end"), kv);
    assert_eq!(count(a, "decode_report_every"), EVERY as u64);
    assert!(count(a, "session_capacity") >= (PROMPT + DECODE) as u64);
    assert!(count(a, "max_context") >= count(a, "session_capacity"));
    let windows = a["decode_windows"].as_array().expect("decode_windows");
    assert_eq!(windows.len(), DECODE / EVERY);
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(
            keys(w),
            [
                "from_token",
                "position",
                "tokens",
                "tokens_per_s",
                "us_per_token"
            ]
        );
        assert_eq!(count(w, "from_token"), (i * EVERY) as u64);
        assert_eq!(count(w, "position"), (PROMPT + i * EVERY) as u64);
        assert_eq!(count(w, "tokens"), EVERY as u64);
        positive(w, "tokens_per_s");
        positive(w, "us_per_token");
    }
    positive(a, "decode_last_over_first_window");
    assert_eq!(
        a["options"],
        serde_json::json!({"attention_sinks": null, "kv_window": null, "block_sparse": null})
    );
}

/// The decode token's time by kernel class: on lavapipe (Vulkan, with timestamp queries) an
/// object per figure over the same classes, times non-negative, not all zero and within the
/// span, shares summing to 1; elsewhere null where the adapter has no timestamp queries.
fn check_kernel_times(r: &Value) {
    let ms = &r["decode_kernel_ms"];
    if ms.is_null() && backend() != "vulkan" {
        assert!(r["decode_kernel_share"].is_null() && r["decode_kernel_span_ms"].is_null());
        return;
    }
    let share = &r["decode_kernel_share"];
    assert_eq!(keys(ms), keys(share), "{ms} {share}");
    for class in ["matvec", "sample"] {
        assert!(ms.get(class).is_some(), "no {class} in {ms}");
    }
    // The tiled kernel, or the lanes kernel of CPU drivers with subgroups.
    assert!(
        keys(ms).iter().any(|k| k.starts_with("decode_attention")),
        "no decode attention in {ms}"
    );
    let values = |v: &Value| -> Vec<f64> {
        v.as_object()
            .expect("an object")
            .values()
            .map(|x| x.as_f64().expect("a number"))
            .collect()
    };
    let total: f64 = values(ms).iter().sum();
    assert!(
        values(ms).iter().all(|&v| v.is_finite() && v >= 0.0),
        "{ms}"
    );
    assert!(total > 0.0, "{ms}");
    assert!(total <= positive(r, "decode_kernel_span_ms") * (1.0 + 1e-9));
    let shares: f64 = values(share).iter().sum();
    assert!((shares - 1.0).abs() < 1e-9, "shares sum to {shares}");
}

#[test]
fn bench_prints_each_figure_on_its_line() {
    let out = bench(&[]);
    // Each line's prefix, and whether a positive figure must follow it.
    let lines: &[(&str, bool)] = &[
        ("adapter: ", false),
        ("model: ", false),
        ("attention: the model's own, context ", true),
        ("weights on GPU: ", true),
        ("GPU buffers: ", true),
        ("cold start: ", true),
        ("pipeline creation: ", true),
        ("prefill: ", true),
        ("decode: ", true),
        ("per decoded token: ", true),
        ("weights read in decode: ", true),
        ("decode by kernel class", false),
        ("decode per token, every 3 tokens:", false),
        ("  positions ", true),
        ("sequence state bytes: ", true),
        ("matmul 512x512x512 f32: ", true),
        ("matvec 4096x4096: ", true),
        ("buffer copy: ", true),
    ];
    for &(prefix, figure) in lines {
        let line = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"));
        if figure {
            // The first word that is a number ("8..11" is not; "13775.6" is).
            let first = line[prefix.len()..]
                .split(|c: char| c.is_whitespace() || c == '(' || c == ',')
                .find_map(|w| w.parse::<f64>().ok());
            assert!(
                first.is_some_and(|v| v > 0.0),
                "{line:?}: no positive figure"
            );
        }
    }
    let windows = out
        .lines()
        .filter(|l| l.starts_with("  positions "))
        .count();
    assert_eq!(windows, DECODE / EVERY, "{out}");
    if backend() == "vulkan" {
        // lavapipe has timestamp queries: the table has a row per class and a total row.
        assert!(out.lines().any(|l| l.starts_with("  matvec ")), "{out}");
        assert!(out.lines().any(|l| l.starts_with("  all ")), "{out}");
    }
}

/// The name of the largest figure of `rates` (an object of tokens/s).
fn fastest(rates: &Value) -> String {
    let m = rates.as_object().expect("an object of rates");
    let (name, _) = m
        .iter()
        .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).expect("numbers"))
        .expect("a rate");
    name.clone()
}

/// `bench --tune` times every matvec layout and matmul, keeps the fastest for the adapter,
/// and the next command starts with them; a damaged file is ignored with a note.
#[test]
fn first_use_tunes_once_and_later_runs_reuse_it() {
    let cache =
        std::env::temp_dir().join(format!("kestrel-tests-first-use-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let on = [("KESTREL_TUNE", "on")];
    let (out, err) = bench_env(&cache, &["--json"], &on);
    let first: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("tuned the kernels"))
        .collect();
    assert_eq!(said.len(), 1, "one line says the tuning: {err}");
    let files: Vec<_> = std::fs::read_dir(cache.join("tuning"))
        .expect("a tuning folder")
        .map(|e| e.expect("an entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let saved = std::fs::read_to_string(&files[0]).expect("read the tuning");
    assert!(
        saved.contains("matvec ") && saved.contains("matmul "),
        "{saved}"
    );
    // The choice is in use, and it is the one saved.
    let t = &first["tuning"];
    let matvec = t["matvec"]
        .as_str()
        .expect("a matvec layout")
        .replace('x', " ");
    assert!(
        saved.contains(&format!("matvec {matvec}\n")),
        "{t:#} against {saved}"
    );
    assert!(saved.contains(&format!(
        "matmul {}\n",
        t["matmul"].as_str().expect("a matmul")
    )));
    // The second start reads it back and times nothing.
    let modified = std::fs::metadata(&files[0]).and_then(|m| m.modified()).ok();
    let (out, err) = bench_env(&cache, &["--json"], &on);
    let second: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(!err.contains("tuned the kernels"), "{err}");
    assert_eq!(second["tuning"], first["tuning"]);
    assert_eq!(
        std::fs::metadata(&files[0]).and_then(|m| m.modified()).ok(),
        modified
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn bench_tune_keeps_the_fastest_choices_for_the_adapter() {
    let cache = std::env::temp_dir().join(format!("kestrel-tests-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let (out, _) = bench_in(&cache, &["--json", "--tune"]);
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let t = &r["tuning"];
    let decode = &t["timed"]["decode_tokens_per_s"];
    let (by_subgroup, plain): (Vec<&str>, Vec<&str>) = keys(decode)
        .into_iter()
        .partition(|k| k.ends_with(" subgroup"));
    assert_eq!(
        plain,
        ["16x16", "2x16", "32x2", "32x4", "4x4", "8x8", "default"],
        "the defaults and every matvec candidate timed: {t:#}"
    );
    // Those summed by subgroup only where the adapter's subgroups hold their lanes.
    let subgroup_layouts = ["32x2", "32x4", "4x4", "8x8"].map(|l| format!("{l} subgroup"));
    assert!(
        by_subgroup
            .iter()
            .all(|k| subgroup_layouts.iter().any(|l| l == k)),
        "{t:#}"
    );
    // The defaults (a layout per weight type) are kept as no choice: null.
    let want = match fastest(decode) {
        d if d == "default" => Value::Null,
        l => Value::String(l),
    };
    assert_eq!(t["matvec"], want, "{t:#}");
    assert_eq!(
        t["matmul"],
        Value::String(fastest(&t["timed"]["prefill_tokens_per_s"])),
        "{t:#}"
    );
    let files: Vec<_> = std::fs::read_dir(cache.join("tuning"))
        .expect("a tuning folder")
        .collect();
    assert_eq!(files.len(), 1, "one file per adapter");
    // The next command starts with the choices.
    let (out, _) = bench_in(&cache, &["--json"]);
    let again: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(again["tuning"]["matvec"], t["matvec"]);
    assert_eq!(again["tuning"]["matmul"], t["matmul"]);
    assert!(again["tuning"].get("timed").is_none());
    // A damaged file: ignored, with a note, and the adapter's defaults.
    let file = files[0].as_ref().expect("an entry").path();
    std::fs::write(&file, "matvec 3 3\n").expect("write");
    let (out, err) = bench_in(&cache, &["--json"]);
    let plain: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(err.contains("ignoring the kernel tuning"), "{err}");
    assert_eq!(plain["tuning"]["matvec"], Value::Null);
    let _ = std::fs::remove_dir_all(&cache);
}

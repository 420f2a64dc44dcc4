//! The `kestrel` command line: help and version; usage errors exit 2 with clap's message
//! and a hint; bad input (files, models, settings out of range) exits non-zero with exactly
//! one line on stderr that starts with "error:" and names the cause; nothing ever panics; a
//! successful run prints no "error:" line, even without XDG_RUNTIME_DIR; a closed stdout
//! ends the program quietly.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// A private copy of a fixture directory to break.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for e in std::fs::read_dir(fixture(name)).expect("fixture") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
    }
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).expect("json")).expect("write");
}

fn kestrel(args: &[&str]) -> (i32, String, String) {
    kestrel_with_input(args, b"")
}

/// Run the binary with `input` on stdin; returns (exit code, stdout, stderr).
fn kestrel_with_input(args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let xdg = std::env::temp_dir().join("kestrel-tests-xdg");
    let _ = std::fs::create_dir_all(&xdg);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .env("KESTREL_TUNE", "off")
        .args(args)
        .env("XDG_RUNTIME_DIR", &xdg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kestrel");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for kestrel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `logits` and expect a one-line error containing every fragment of `expect`.
fn expect_error(model: &Path, tokens: &str, expect: &[&str]) {
    expect_error_with(model, tokens, &[], expect)
}

/// As [`expect_error`], with more options.
fn expect_error_with(model: &Path, tokens: &str, options: &[&str], expect: &[&str]) {
    let out = std::env::temp_dir().join(format!("kestrel-cli-{}.npy", std::process::id()));
    let mut args = vec![
        "logits",
        "--model",
        model.to_str().expect("utf8"),
        "--tokens",
        tokens,
        "--out",
        out.to_str().expect("utf8"),
    ];
    args.extend(options);
    let (code, _, err) = kestrel(&args);
    assert_ne!(code, 0, "expected failure, stderr: {err}");
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for e in expect {
        assert!(
            lines[0].contains(e),
            "'{}' does not mention '{e}'",
            lines[0]
        );
    }
}

#[test]
fn missing_config_key() {
    let dir = copy_fixture("llama_tied", "nokey");
    edit_config(&dir, |v| {
        v.as_object_mut().expect("object").remove("hidden_size");
    });
    expect_error(&dir, "1,2,3", &["config.json", "hidden_size"]);
}

#[test]
fn missing_tensor() {
    // The config asks for a third layer the weights do not have.
    let dir = copy_fixture("llama_tied", "notensor");
    edit_config(&dir, |v| v["num_hidden_layers"] = 3.into());
    expect_error(&dir, "1,2,3", &["missing tensor", "model.layers.2."]);
}

#[test]
fn misshaped_tensor() {
    let dir = copy_fixture("llama_tied", "shape");
    edit_config(&dir, |v| v["intermediate_size"] = 100.into());
    expect_error(&dir, "1,2,3", &["mlp.gate_proj.weight", "shape"]);
}

#[test]
fn truncated_weights() {
    let dir = copy_fixture("llama_tied", "truncated");
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    expect_error(&dir, "1,2,3", &["model.safetensors"]);
}

#[test]
fn unknown_architecture() {
    let dir = copy_fixture("llama_tied", "arch");
    edit_config(&dir, |v| {
        v["architectures"] = serde_json::json!(["FooForCausalLM"])
    });
    expect_error(
        &dir,
        "1,2,3",
        &["unsupported architecture", "FooForCausalLM"],
    );
}

#[test]
fn token_id_past_vocab() {
    expect_error(
        &fixture("llama_tied"),
        "1,300,2",
        &["token id 300", "vocabulary size 300"],
    );
}

#[test]
fn sequence_past_context() {
    let tokens: Vec<String> = (0..65).map(|i| (i % 10).to_string()).collect();
    expect_error(
        &fixture("llama_tied"),
        &tokens.join(","),
        &["65 tokens", "64"],
    );
}

#[test]
fn model_path_missing() {
    expect_error(
        Path::new("/nonexistent/kestrel-model"),
        "1",
        &["/nonexistent/kestrel-model", "does not exist"],
    );
}

/// A .npy file's bytes and its header text.
fn read_npy_header(path: &Path) -> (Vec<u8>, String) {
    let bytes = std::fs::read(path).expect("npy");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + len]).into_owned();
    (bytes, header)
}

#[test]
fn logits_writes_npy_of_the_contract_shape() {
    let out = std::env::temp_dir().join(format!("kestrel-cli-ok-{}.npy", std::process::id()));
    let (code, _, err) = kestrel(&[
        "logits",
        "--model",
        fixture("llama_tied").to_str().expect("utf8"),
        "--tokens",
        "5,17,42",
        "--mode",
        "decode",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (bytes, header) = read_npy_header(&out);
    assert!(header.contains("'shape': (3, 300)"), "{header}");
    assert_eq!(bytes.len(), 10 + header.len() + 3 * 300 * 4);
}

#[test]
fn generate_streams_text_and_reports_speed() {
    let (code, _, err) = kestrel(&[
        "generate",
        "--model",
        fixture("llama_tied").to_str().expect("utf8"),
        "--prompt",
        "Hello",
        "--max-tokens",
        "8",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("prefill:") && err.contains("decode:") && err.contains("tokens/s"),
        "{err}"
    );
}

#[test]
fn generate_ends_before_a_stop_string_and_checks_ranges() {
    let model = fixture("llama_tied");
    let base = [
        "generate",
        "--model",
        model.to_str().expect("utf8"),
        "--prompt",
        "Hello",
        "--max-tokens",
        "12",
    ];
    let (code, out, err) = kestrel(&base);
    assert_eq!(code, 0, "{err}");
    let full = out.strip_suffix('\n').expect("a reply line");
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 4, "a reply long enough to cut: {full:?}");
    // Two characters from the middle (a command line cannot carry a NUL).
    let stop: String = (chars.len() / 2..chars.len() - 1)
        .map(|i| chars[i..i + 2].iter().collect::<String>())
        .find(|s: &String| !s.contains('\0'))
        .expect("a stop string");
    let want = &full[..full.find(&stop).expect("in the reply")];
    let mut args = base.to_vec();
    args.extend(["--stop", &stop]);
    let (code, out, err) = kestrel(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{want}\n"));
    // The ranges every front end shares, named by their flags.
    for (flag, value) in [
        ("--temperature", "3"),
        ("--top-p", "0"),
        ("--max-tokens", "0"),
    ] {
        let mut args = base.to_vec();
        args.extend([flag, value]);
        let (code, _, err) = kestrel(&args);
        assert_ne!(code, 0);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with(&format!("error: {flag} must be")),
            "{err}"
        );
    }
}

#[test]
fn chat_keeps_the_cache_between_turns_and_resets() {
    // The fixture's 64 positions hold one ChatML turn; give the copy room for three.
    let dir = copy_fixture("llama_gqa", "chat");
    edit_config(&dir, |v| v["max_position_embeddings"] = 256.into());
    let args = [
        "chat",
        "--model",
        dir.to_str().expect("utf8"),
        "--max-tokens",
        "4",
        "--ctx",
        "256",
    ];
    let (code, _, err) = kestrel_with_input(&args, b"hi\nok\n/reset\nhi\n");
    assert_eq!(code, 0, "{err}");
    // Each turn reports how many prompt tokens it prefilled and how many it reused.
    let count = |marker: &str| -> Vec<usize> {
        err.lines()
            .filter(|l| l.contains(marker))
            .filter_map(|l| l.rsplit('[').next().and_then(|l| l.split(marker).next()))
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let new_tokens = count(" new prompt tokens");
    let reused = count(" prompt tokens reused");
    assert_eq!((new_tokens.len(), reused.len()), (3, 3), "{err}");
    // The second turn reuses the first turn's cache and prefills only the rest; the turn
    // after /reset starts over like the first.
    assert_eq!(reused[0], 0, "{err}");
    assert!(
        reused[1] >= new_tokens[0],
        "second turn should reuse the first prompt: {err}"
    );
    assert_eq!((reused[2], new_tokens[2]), (0, new_tokens[0]), "{err}");
    assert!(err.contains("[conversation cleared]"), "{err}");
    assert!(!err.contains("context full"), "{err}");
}

#[test]
fn chat_drops_the_oldest_turns_when_the_context_is_full() {
    let model = fixture("llama_gqa");
    let args = [
        "chat",
        "--model",
        model.to_str().expect("utf8"),
        "--max-tokens",
        "4",
    ];
    let long = "x".repeat(200);
    let (code, _, err) =
        kestrel_with_input(&args, format!("hi\nagain\n{long}\nstill here\n").as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("[context full: dropped the"), "{err}");
    assert!(
        err.contains("too long for the context of 64 tokens"),
        "{err}"
    );
    assert_eq!(err.matches(" new prompt tokens").count(), 3, "{err}");
}

#[test]
fn bad_attention_options() {
    let gqa = fixture("llama_gqa");
    let cases: &[(&Path, &[&str], &[&str])] = &[
        (
            &gqa,
            &["--attention-sinks", "40", "--kv-window", "40"],
            &["exceed the model's context of 64"],
        ),
        (
            &gqa,
            &["--attention-sinks", "4", "--kv-window", "0"],
            &["must be at least 1"],
        ),
        (
            &gqa,
            &["--attention-sinks", "0", "--kv-window", "8"],
            &["must be at least 1"],
        ),
        (&gqa, &["--block-sparse", "local=2@5"], &["layer"]),
        (
            &gqa,
            &[
                "--block-sparse",
                "local=2",
                "--attention-sinks",
                "4",
                "--kv-window",
                "8",
            ],
            &["cannot be combined"],
        ),
    ];
    for (model, options, expect) in cases {
        expect_error_with(model, "1,2,3", options, expect);
    }
    let mistral = fixture("mistral_window");
    expect_error_with(
        &mistral,
        "1,2,3",
        &["--attention-sinks", "2", "--kv-window", "20"],
        &["larger than the model's own sliding window of 8"],
    );
    expect_error_with(
        &mistral,
        "1,2,3",
        &["--block-sparse", "local=2"],
        &["sliding window"],
    );
    let dir = copy_fixture("mistral_window", "window0");
    edit_config(&dir, |c| c["sliding_window"] = 0.into());
    expect_error(&dir, "1,2,3", &["sliding_window", "at least 1"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn attention_sinks_decode_past_the_trained_context() {
    // llama_gqa has 64 positions; with sinks the 100 positions stay inside a 20-row window.
    let out = std::env::temp_dir().join(format!("kestrel-cli-sinks-{}.npy", std::process::id()));
    let tokens: Vec<String> = (0..100).map(|i| (i * 7 % 300).to_string()).collect();
    let (code, _, err) = kestrel(&[
        "logits",
        "--model",
        fixture("llama_gqa").to_str().expect("utf8"),
        "--tokens",
        &tokens.join(","),
        "--mode",
        "decode",
        "--attention-sinks",
        "4",
        "--kv-window",
        "16",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, header) = read_npy_header(&out);
    assert!(header.contains("'shape': (100, 320)"), "{header}");
    let (code, _, err) = kestrel(&[
        "generate",
        "--model",
        fixture("llama_tied").to_str().expect("utf8"),
        "--prompt",
        "Hello",
        "--max-tokens",
        "150",
        "--attention-sinks",
        "4",
        "--kv-window",
        "20",
    ]);
    assert_eq!(code, 0, "{err}");
}

/// Run `diffuse` on a model; returns (exit code, stderr, tokens written).
fn diffuse(model: &Path, options: &[&str]) -> (i32, String, Vec<u32>) {
    let out = std::env::temp_dir().join(format!("kestrel-cli-diffuse-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut args = vec![
        "diffuse",
        "--model",
        model.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ];
    args.extend(options);
    let (code, _, err) = kestrel(&args);
    let tokens = std::fs::read_to_string(&out)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| {
            v["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .map(|t| t.as_u64().expect("id") as u32)
                .collect()
        })
        .unwrap_or_default();
    (code, err, tokens)
}

#[test]
fn diffuse_writes_the_reference_trajectory_result() {
    // Case b of tests/fixtures/llada/trajectories.json (two commits per step).
    let text = std::fs::read_to_string(fixture("llada").join("trajectories.json")).expect("json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let case = &v["cases"][1];
    assert_eq!(case["steps"], 8);
    let prompt: Vec<String> = case["prompt"]
        .as_array()
        .expect("prompt")
        .iter()
        .map(|t| t.to_string())
        .collect();
    let want: Vec<u32> = case["final"]
        .as_array()
        .expect("final")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect();
    let (code, err, got) = diffuse(
        &fixture("llada"),
        &[
            "--tokens",
            &prompt.join(","),
            "--gen-length",
            "16",
            "--steps",
            "8",
            "--block-length",
            "8",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(got, want);
    assert!(err.contains("forward passes"), "{err}");
}

#[test]
fn diffuse_rejects_bad_settings() {
    let llada = fixture("llada");
    let cases: &[(&Path, &[&str], &str)] = &[
        (
            &llada,
            &["--gen-length", "12", "--block-length", "8", "--steps", "8"],
            "multiple",
        ),
        (
            &llada,
            &["--gen-length", "16", "--block-length", "8", "--steps", "7"],
            "divided",
        ),
        (
            &llada,
            &["--gen-length", "16", "--threshold", "2"],
            "threshold",
        ),
        (
            &llada,
            &["--gen-length", "16", "--tokens", "1,274"],
            "mask token",
        ),
        (&llada, &["--gen-length", "512"], "context"),
        (
            &fixture("llama_gqa"),
            &["--gen-length", "8"],
            "not a diffusion model",
        ),
    ];
    for (model, options, expect) in cases {
        let mut args = vec!["--tokens", "1,2,3"];
        args.extend(options.iter());
        if options.contains(&"--tokens") {
            args.drain(..2);
        }
        let (code, err, _) = diffuse(model, &args);
        assert_ne!(code, 0, "{options:?}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(expect),
            "{options:?}: {err}"
        );
    }
    let dir = copy_fixture("llada", "nomask");
    edit_config(&dir, |c| {
        c.as_object_mut().expect("object").remove("mask_token_id");
    });
    let (code, err, _) = diffuse(&dir, &["--tokens", "1,2", "--gen-length", "8"]);
    assert_ne!(code, 0);
    assert!(err.contains("mask_token_id"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_on_a_diffusion_model_streams_blocks() {
    let (code, _, err) = kestrel(&[
        "generate",
        "--model",
        fixture("llada").to_str().expect("utf8"),
        "--prompt",
        "Hello",
        "--max-tokens",
        "16",
        "--block-length",
        "8",
        "--threshold",
        "0.3",
        "--cache",
        "prefix",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("forward passes"), "{err}");
}

/// Every command and the options `--help` must mention (its own and the shared groups').
const COMMANDS: &[(&str, &[&str])] = &[
    ("info", &["--backend"]),
    (
        "logits",
        &[
            "--model",
            "--tokens",
            "--mode",
            "--out",
            "--backend",
            "--kv-window",
        ],
    ),
    (
        "generate",
        &[
            "--model",
            "--prompt",
            "--max-tokens",
            "--temperature",
            "--top-k",
            "--top-p",
            "--seed",
            "--stop",
            "--ctx",
            "--gen-length",
            "--block-length",
            "--attention-sinks",
            "--backend",
        ],
    ),
    (
        "bench",
        &[
            "--model",
            "--json",
            "--attention",
            "--max-len",
            "--prompt-tokens",
            "--decode-tokens",
            "--report-every",
            "--block-sparse",
        ],
    ),
    (
        "chat",
        &[
            "--model",
            "--system",
            "--max-tokens",
            "--temperature",
            "--stop",
            "--ctx",
            "--threshold",
            "--kv-window",
        ],
    ),
    (
        "diffuse",
        &[
            "--model",
            "--tokens",
            "--gen-length",
            "--steps",
            "--block-length",
            "--out",
            "--temperature",
            "--cfg-scale",
            "--remasking",
            "--threshold",
            "--cache",
            "--seed",
        ],
    ),
    (
        "serve",
        &[
            "--model",
            "--host",
            "--port",
            "--ctx",
            "--max-body",
            "--backend",
        ],
    ),
    (
        "app",
        &["--model", "--system", "--ctx", "--backend", "--offline"],
    ),
    ("models", &["--json"]),
    ("pull", &["<NAME>"]),
];

#[test]
fn help_for_the_program_and_every_command() {
    let (code, out, err) = kestrel(&["--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Usage: kestrel <COMMAND>"), "{out}");
    for (command, options) in COMMANDS {
        assert!(out.contains(&format!("  {command} ")), "{command} in {out}");
        for help in [
            vec![*command, "--help"],
            vec![*command, "-h"],
            vec!["help", command],
        ] {
            let (code, out, err) = kestrel(&help);
            assert_eq!(code, 0, "{help:?}: {err}");
            assert!(err.is_empty(), "{help:?}: {err}");
            assert!(
                out.contains(&format!("Usage: kestrel {command}")),
                "{help:?}: {out}"
            );
            for option in *options {
                assert!(out.contains(option), "{help:?} lacks {option}: {out}");
            }
        }
    }
}

#[test]
fn version() {
    let (code, out, err) = kestrel(&["--version"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("kestrel {}\n", env!("CARGO_PKG_VERSION")));
}

/// Usage errors: status 2, clap's message naming the option, a hint, nothing on stdout.
#[test]
fn usage_errors_exit_2_with_a_hint() {
    let logits = [
        "logits", "--model", "m", "--tokens", "1,2", "--out", "o.npy",
    ];
    let diffuse = [
        "diffuse",
        "--model",
        "m",
        "--tokens",
        "1",
        "--out",
        "o.json",
        "--gen-length",
        "8",
    ];
    let with = |base: &[&'static str], extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(extra).copied().collect()
    };
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        // No command at all: the program's help, on stderr.
        (vec![], &["Usage: kestrel <COMMAND>"]),
        (
            vec!["frobnicate"],
            &["unrecognized subcommand 'frobnicate'"],
        ),
        // Unknown options.
        (
            vec!["chat", "--hlep"],
            &["unexpected argument '--hlep'", "--help"],
        ),
        (
            with(&logits, &["--prompt", "hi"]),
            &["unexpected argument '--prompt'"],
        ),
        (vec!["info", "extra"], &["unexpected argument 'extra'"]),
        // Missing required options, or options that need another.
        (
            vec!["logits", "--model", "m", "--out", "o.npy"],
            &["required", "--tokens <IDS>", "Usage: kestrel logits"],
        ),
        (vec!["generate", "--prompt", "hi"], &["--model <PATH>"]),
        (vec!["bench"], &["--model <PATH>"]),
        (
            vec!["bench", "--attention", "--decode-tokens", "8"],
            &["--model <PATH>"],
        ),
        (
            vec!["bench", "--model", "m", "--max-len", "8"],
            &["--attention"],
        ),
        (
            with(&logits, &["--kv-window", "8"]),
            &["--attention-sinks <N>"],
        ),
        (
            with(&logits, &["--attention-sinks", "4"]),
            &["--kv-window <W>"],
        ),
        (
            vec!["logits", "--model"],
            &["a value is required for '--model <PATH>'"],
        ),
        // Values that do not parse.
        (
            vec!["logits", "--model", "m", "--tokens", "1,a", "--out", "o"],
            &["'1,a'", "--tokens", "'a' is not a token id"],
        ),
        (
            with(&logits, &["--attention-sinks", "x", "--kv-window", "8"]),
            &["'x'", "--attention-sinks"],
        ),
        (
            with(&logits, &["--block-sparse", "local=0"]),
            &["--block-sparse", "local"],
        ),
        (
            with(&logits, &["--block-sparse", "wide=3"]),
            &["--block-sparse", "wide"],
        ),
        (
            vec![
                "generate",
                "--model",
                "m",
                "--prompt",
                "p",
                "--max-tokens",
                "-1",
            ],
            &["--max-tokens"],
        ),
        (
            vec!["serve", "--model", "m", "--port", "70000"],
            &["'70000'", "--port"],
        ),
        // Values outside a fixed set.
        (
            vec!["info", "--backend", "quantum"],
            &["unknown backend 'quantum'"],
        ),
        (
            with(&logits, &["--mode", "sideways"]),
            &["'sideways'", "--mode", "prefill, decode"],
        ),
        (
            with(&diffuse, &["--cache", "all"]),
            &["'all'", "--cache", "none, prefix, dual"],
        ),
        (
            with(&diffuse, &["--remasking", "lowest"]),
            &["'lowest'", "--remasking", "low_confidence, random"],
        ),
    ];
    for (args, expect) in cases {
        let (code, out, err) = kestrel(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if !args.is_empty() {
            assert!(err.starts_with("error: "), "{args:?}: {err}");
            assert!(
                err.contains("For more information, try '--help'."),
                "{args:?}: no hint in {err}"
            );
        }
        for e in expect {
            assert!(err.contains(e), "{args:?}: '{e}' not in {err}");
        }
    }
}

/// The spellings the old parser accepted still parse: `--name=value`, case-insensitive
/// backend aliases, text that starts with a dash, negative numbers (then refused by range).
#[test]
fn values_keep_their_spellings() {
    let model = fixture("llama_tied");
    let model = model.to_str().expect("utf8");
    let (code, _, err) = kestrel(&[
        "generate",
        &format!("--model={model}"),
        "--prompt",
        "-dash",
        "--max-tokens=2",
        "--backend",
        "VK",
        "--stop",
        "-",
        "--stop",
        "--x",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kestrel(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "hi",
        "--temperature",
        "-1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim_end(),
        "error: --temperature must be a number from 0 to 2, not -1"
    );
    // Four stop strings at most (the generator's limit), named by the flag.
    let mut args = vec!["generate", "--model", model, "--prompt", "hi"];
    for _ in 0..5 {
        args.extend(["--stop", "x"]);
    }
    let (code, _, err) = kestrel(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: --stop holds 5 strings"), "{err}");
}

/// Run `args` with XDG_RUNTIME_DIR unset; returns (exit code, stdout, stderr).
fn kestrel_without_runtime_dir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .env("KESTREL_TUNE", "off")
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run kestrel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Mesa (through libwayland) prints "error: XDG_RUNTIME_DIR is invalid or not set in the
/// environment." on every device open when the variable is unset; kestrel sets a private
/// one first, so a successful run prints no error line.
#[test]
fn no_error_lines_on_a_successful_run_without_xdg_runtime_dir() {
    let (code, out, err) = kestrel_without_runtime_dir(&["info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("adapter: "), "{out}");
    assert!(!err.contains("error"), "{err}");
    let npy = std::env::temp_dir().join(format!("kestrel-cli-xdg-{}.npy", std::process::id()));
    for backend in ["vulkan", "gl"] {
        let (code, _, err) = kestrel_without_runtime_dir(&[
            "logits",
            "--model",
            fixture("llama_tied").to_str().expect("utf8"),
            "--tokens",
            "5,17,42",
            "--backend",
            backend,
            "--out",
            npy.to_str().expect("utf8"),
        ]);
        assert_eq!(code, 0, "{backend}: {err}");
        assert!(!err.contains("error"), "{backend}: {err}");
    }
    let _ = std::fs::remove_file(&npy);
}

/// Run `args` with stdout a pipe whose reader is gone before the first write; returns the
/// exit code and stderr.
fn kestrel_into_a_closed_pipe(args: &[&str]) -> (i32, String) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .env("KESTREL_TUNE", "off")
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kestrel");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    let status = child.wait().expect("wait for kestrel");
    (status.code().unwrap_or(-1), err)
}

/// `kestrel info | head -1` and `kestrel generate ... | head -c 10`: the reader leaves, and
/// the program ends quietly with the status of a closed pipe (141), no panic, no error line.
#[test]
fn a_closed_stdout_ends_the_program_quietly() {
    let model = fixture("llama_tied");
    let runs: [&[&str]; 3] = [
        &["info"],
        &[
            "generate",
            "--model",
            model.to_str().expect("utf8"),
            "--prompt",
            "Hello",
            "--max-tokens",
            "8",
        ],
        &["--help"],
    ];
    for args in runs {
        let (code, err) = kestrel_into_a_closed_pipe(args);
        assert!(code == 141 || code == 0, "{args:?}: status {code}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("error"), "{args:?}: {err}");
    }
    let (code, _) = kestrel_into_a_closed_pipe(&["info"]);
    assert_eq!(code, 141, "info writes after its reader left");
}

/// A config.json key no table of the family lists is tolerated (the logits are the
/// fixture's) and named in one note on stderr; a fixture's own keys give no note.
#[test]
fn unknown_config_keys_are_tolerated_and_named() {
    let dir = copy_fixture("llama_gqa", "unread");
    edit_config(&dir, |v| v["kestrel_unheard_of"] = serde_json::json!(3));
    let out = std::env::temp_dir().join(format!("kestrel-cli-unread-{}.npy", std::process::id()));
    let run = |model: &Path| {
        kestrel(&[
            "logits",
            "--model",
            model.to_str().expect("path"),
            "--tokens",
            "1,2,3",
            "--out",
            out.to_str().expect("path"),
        ])
    };
    let (code, _, err) = run(&dir);
    assert_eq!(code, 0, "{err}");
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(notes[0].contains("kestrel_unheard_of"), "{err}");
    let (code, _, err) = run(&fixture("llama_gqa"));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("note:"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&out);
}

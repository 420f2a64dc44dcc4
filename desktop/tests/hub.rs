//! Models by name: Hugging Face Hub repositories (`--model org/name`, `org/name:FILE.gguf`)
//! fetched from a local server that answers as the Hub does (`HF_ENDPOINT`), into a Hugging
//! Face cache of the test's own (`HF_HOME`), and used again offline; the catalogue's
//! listing and its errors (no download: CI pulls the real models once, elsewhere).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const COMMIT: &str = "4b6c0a7e1f2d3c4b5a69788796a5b4c3d2e1f001";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// A repository the fake Hub serves: its files by name; `missing` are listed but answer
/// 404 (a repository whose listing and files disagree).
struct FakeRepo {
    id: &'static str,
    files: Vec<(String, Vec<u8>)>,
    missing: Vec<&'static str>,
}

fn repo_of_folder(id: &'static str, dir: &Path) -> FakeRepo {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("fixture")
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read"))
        })
        .collect();
    files.sort();
    FakeRepo {
        id,
        files,
        missing: Vec::new(),
    }
}

/// The Hub's URL layout on 127.0.0.1: `GET /api/models/{repo}/revision/main` (the commit
/// and the file list) and `GET /{repo}/resolve/main/{file}` with the headers hf-hub reads
/// (etag: the SHA-256 for weights, as for LFS files, else a git-like 40-digit id;
/// x-repo-commit; Content-Range for `Range: bytes=A-B` and `bytes=A-`). The first `cut`
/// answers for *.safetensors stop halfway through, as a dropped connection does.
struct FakeHub {
    endpoint: String,
    /// Requests answered so far.
    requests: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
}

impl FakeHub {
    fn start(repos: Vec<FakeRepo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let cut = Arc::new(AtomicUsize::new(0));
        let ranges: Arc<Mutex<Vec<String>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r, d, n) = (cut.clone(), ranges.clone(), down.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if d.load(Ordering::SeqCst) {
                    break; // the listener closes: the Hub is unreachable from now on
                }
                n.fetch_add(1, Ordering::SeqCst);
                answer(stream, &repos, &c, &r);
            }
        });
        FakeHub {
            endpoint,
            requests,
            cut,
            ranges,
            down,
        }
    }

    /// Close the server's port.
    fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn answer(stream: TcpStream, repos: &[FakeRepo], cut: &AtomicUsize, ranges: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = Some(v.trim().to_string());
        }
    }
    let mut s = stream;
    // As the Hub answers without a token: 401 for a repository that is not there.
    let not_found = |s: &mut TcpStream, status: &str, code: &str| {
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nx-error-code: {code}\r\nconnection: close\r\n\r\n"
        );
    };
    if let Some(rest) = path.strip_prefix("/api/models/") {
        // A gated repository, asked without a token.
        if rest == "kestrel-test/gated/revision/main" {
            return not_found(&mut s, "401 Unauthorized", "GatedRepo");
        }
        let Some(repo) = rest
            .strip_suffix("/revision/main")
            .and_then(|id| repos.iter().find(|r| r.id == id))
        else {
            return not_found(&mut s, "401 Unauthorized", "RepoNotFound");
        };
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|f| f.0.as_str())
            .chain(repo.missing.iter().copied())
            .map(|name| serde_json::json!({ "rfilename": name }))
            .collect();
        let body = serde_json::json!({ "id": repo.id, "sha": COMMIT, "siblings": siblings });
        let body = body.to_string();
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let file = repos.iter().find_map(|r| {
        let rest = path.strip_prefix(&format!("/{}/resolve/main/", r.id))?;
        r.files.iter().find(|f| f.0 == rest)
    });
    let Some((name, body)) = file else {
        return not_found(&mut s, "404 Not Found", "EntryNotFound");
    };
    let n = body.len();
    let (a, b) = match &range {
        Some(r) => {
            ranges.lock().expect("lock").push(format!("{name} {r}"));
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().map_or(n - 1, |b: usize| b.min(n - 1));
            (a, b)
        }
        None => (0, n - 1),
    };
    let etag = if name.ends_with(".safetensors") || name.ends_with(".gguf") {
        sha256_hex(body)
    } else {
        sha256_hex(body)[..40].to_string()
    };
    let head = match range {
        Some(_) => format!("HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {a}-{b}/{n}\r\n"),
        None => "HTTP/1.1 200 OK\r\n".to_string(),
    };
    let slice = &body[a..=b];
    let _ = write!(
        s,
        "{head}etag: \"{etag}\"\r\nx-repo-commit: {COMMIT}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        slice.len()
    );
    let cut_now =
        name.ends_with(".safetensors") && slice.len() > 1 && cut.load(Ordering::SeqCst) > 0;
    if cut_now {
        cut.fetch_sub(1, Ordering::SeqCst);
        let _ = s.write_all(&slice[..slice.len() / 2]);
    } else {
        let _ = s.write_all(slice);
    }
}

/// SHA-256 in hex, by the system's sha256sum (the test crate has no hash of its own).
fn sha256_hex(bytes: &[u8]) -> String {
    use std::process::Stdio;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// A test's own folders: a Hugging Face home and a Kestrel cache.
fn homes(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-hub-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Run kestrel with `env` set and the Hub's and Kestrel's caches in `home`; (status,
/// stdout, stderr).
fn kestrel(home: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let xdg = std::env::temp_dir().join("kestrel-tests-xdg");
    let _ = std::fs::create_dir_all(&xdg);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .env("KESTREL_TUNE", "off")
        .args(args)
        .env("XDG_RUNTIME_DIR", &xdg)
        .env("HF_HOME", home.join("hf"))
        .env("KESTREL_CACHE", home.join("kestrel"))
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_ENDPOINT")
        .envs(env.iter().copied())
        .output()
        .expect("run kestrel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kestrel logits` of `model` over `tokens`: the .npy's bytes (and stderr), or the one
/// error line.
fn logits(
    home: &Path,
    env: &[(&str, &str)],
    model: &str,
    tokens: &str,
    extra: &[&str],
) -> Result<(Vec<u8>, String), String> {
    let out = home.join("logits.npy");
    let _ = std::fs::remove_file(&out);
    let mut args = vec![
        "logits",
        "--model",
        model,
        "--tokens",
        tokens,
        "--out",
        out.to_str().expect("utf8"),
    ];
    args.extend(extra);
    let (code, _, err) = kestrel(home, env, &args);
    if code != 0 {
        assert!(!err.contains("panicked"), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "one error line: {err}");
        return Err(lines[0].to_string());
    }
    assert!(!err.contains("error:"), "{err}");
    Ok((std::fs::read(&out).expect("npy"), err))
}

fn tokens_of(fixture_name: &str) -> String {
    let text = std::fs::read_to_string(fixture(fixture_name).join("tokens.json")).expect("tokens");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ids: Vec<String> = v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.to_string())
        .collect();
    ids.join(",")
}

#[test]
fn a_hub_folder_repository_gives_the_local_folders_logits_resumed_and_offline() {
    let home = homes("folder");
    let hub = FakeHub::start(vec![repo_of_folder(
        "kestrel-test/llama-gqa",
        &fixture("llama_gqa"),
    )]);
    let env = [("HF_ENDPOINT", hub.endpoint.as_str())];
    let tokens = tokens_of("llama_gqa");
    let local = fixture("llama_gqa");
    let want = logits(&home, &[], local.to_str().expect("utf8"), &tokens, &[])
        .expect("local logits")
        .0;

    // The first weights answer is cut off: one error line naming the repository and file.
    hub.cut.store(1, Ordering::SeqCst);
    let err = logits(&home, &env, "kestrel-test/llama-gqa", &tokens, &[]).expect_err("cut off");
    assert!(
        err.contains("kestrel-test/llama-gqa") && err.contains(".safetensors"),
        "{err}"
    );
    // The next run continues that file where it stopped.
    let got = logits(&home, &env, "kestrel-test/llama-gqa", &tokens, &[])
        .expect("hub logits")
        .0;
    assert_eq!(
        got, want,
        "logits of the Hub's copy equal the local folder's"
    );
    let ranges = hub.ranges.lock().expect("lock").clone();
    assert!(
        ranges
            .iter()
            .any(|r| r.contains(".safetensors") && !r.contains(" 0-")),
        "a download resumed past its start: {ranges:?}"
    );
    // Online again with everything cached: the Hub is asked for the commit only.
    let asked = hub.requests.load(Ordering::SeqCst);
    let got = logits(&home, &env, "kestrel-test/llama-gqa", &tokens, &[])
        .expect("cached")
        .0;
    assert_eq!(got, want);
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        asked + 1,
        "one request: the commit"
    );

    // The standard cache layout, which transformers and huggingface_hub read.
    let repo = home.join("hf/hub/models--kestrel-test--llama-gqa");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).expect("ref"),
        COMMIT
    );
    let snapshot = repo.join("snapshots").join(COMMIT);
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        "model-00002-of-00003.safetensors",
    ] {
        let link = std::fs::symlink_metadata(snapshot.join(f)).expect(f);
        assert!(link.file_type().is_symlink(), "{f} links into blobs/");
    }
    // Only what the loader reads was fetched (not the fixture's .npy files).
    assert!(!snapshot.join("logits_prefill.npy").exists());

    // Offline, by the environment or by the flag: the cache only, nothing asked of the Hub,
    // whether it is up or gone.
    let offline = [("HF_HUB_OFFLINE", "1"), env[0]];
    let asked = hub.requests.load(Ordering::SeqCst);
    for stop in [false, true] {
        if stop {
            hub.stop();
        }
        let got = logits(&home, &offline, "kestrel-test/llama-gqa", &tokens, &[])
            .expect("HF_HUB_OFFLINE");
        assert_eq!(got.0, want);
        let got = logits(
            &home,
            &env,
            "kestrel-test/llama-gqa",
            &tokens,
            &["--offline"],
        )
        .expect("--offline");
        assert_eq!(got.0, want);
        assert!(!got.1.contains("cannot reach"), "{}", got.1);
    }
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        asked,
        "offline runs ask nothing"
    );
    // Online with the Hub unreachable: the cached snapshot, with a note.
    let (got, note) =
        logits(&home, &env, "kestrel-test/llama-gqa", &tokens, &[]).expect("unreachable");
    assert_eq!(got, want);
    assert!(
        note.contains("note: cannot reach") && note.contains("from the cache"),
        "{note}"
    );
    // Offline and not cached: a clear error.
    let err =
        logits(&home, &env, "kestrel-test/other", &tokens, &["--offline"]).expect_err("absent");
    assert!(
        err.contains("kestrel-test/other")
            && err.contains("not in the Hugging Face cache")
            && err.contains("offline"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_gguf_file_of_a_hub_repository_and_the_hubs_404s() {
    let home = homes("gguf");
    let gguf = fixture("mixtral_q8").join("model.gguf");
    let weights = std::fs::read(&gguf).expect("gguf");
    let broken = FakeRepo {
        id: "kestrel-test/broken",
        files: vec![(
            "config.json".into(),
            std::fs::read(fixture("llama_gqa").join("config.json")).expect("config"),
        )],
        missing: vec!["model.safetensors"],
    };
    let hub = FakeHub::start(vec![
        FakeRepo {
            id: "kestrel-test/mixtral-q8-GGUF",
            files: vec![
                ("model.gguf".into(), weights),
                ("README.md".into(), b"# test".to_vec()),
            ],
            missing: Vec::new(),
        },
        broken,
    ]);
    let env = [("HF_ENDPOINT", hub.endpoint.as_str())];
    let tokens = tokens_of("mixtral_q8");
    let want = logits(&home, &[], gguf.to_str().expect("utf8"), &tokens, &[])
        .expect("local")
        .0;
    let got = logits(
        &home,
        &env,
        "kestrel-test/mixtral-q8-GGUF:model.gguf",
        &tokens,
        &[],
    )
    .expect("hub gguf")
    .0;
    assert_eq!(got, want);
    let snapshot = home
        .join("hf/hub/models--kestrel-test--mixtral-q8-GGUF/snapshots")
        .join(COMMIT);
    assert!(snapshot.join("model.gguf").exists() && !snapshot.join("README.md").exists());

    let cases: [(&str, &[&str]); 5] = [
        (
            "kestrel-test/gated",
            &["kestrel-test/gated on", "private or gated", "HF_TOKEN"],
        ),
        (
            "kestrel-test/absent",
            &["no model repository kestrel-test/absent", &hub.endpoint],
        ),
        (
            "kestrel-test/mixtral-q8-GGUF:other.gguf",
            &[
                "kestrel-test/mixtral-q8-GGUF has no file other.gguf",
                "model.gguf",
            ],
        ),
        (
            "kestrel-test/mixtral-q8-GGUF",
            &[
                "no safetensors weights",
                "kestrel-test/mixtral-q8-GGUF:FILE.gguf",
                "model.gguf",
            ],
        ),
        (
            "kestrel-test/broken",
            &["kestrel-test/broken has no file model.safetensors", "404"],
        ),
    ];
    for (model, expect) in cases {
        let err = logits(&home, &env, model, &tokens, &[]).expect_err(model);
        for e in expect {
            assert!(err.contains(e), "{model}: '{e}' not in {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&home);
}

/// The catalogue: listed with its fields, by text and JSON, nothing cached in a new cache;
/// an unknown name is one line listing the names; offline, a model not pulled is an error.
#[test]
fn the_catalogue_lists_its_models_and_names_them_in_errors() {
    let home = homes("catalogue");
    let names = [
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "gemma-3-270m",
        "qwen2.5-coder-1.5b-instruct",
    ];
    let (code, out, err) = kestrel(&home, &[], &["models", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let models = v["models"].as_array().expect("models");
    let listed: Vec<&str> = models
        .iter()
        .map(|m| m["name"].as_str().expect("name"))
        .collect();
    assert_eq!(listed, names);
    for m in models {
        assert_eq!(m["sha256"].as_str().expect("sha").len(), 64);
        assert!(m["size"].as_u64().expect("size") > 50_000_000);
        assert!(!m["licence"].as_str().expect("licence").is_empty());
        assert!(m["source"].as_str().expect("source").starts_with("PyPI "));
        assert_eq!(m["cached"], false, "a new cache holds nothing");
        assert!(m["path"]
            .as_str()
            .expect("path")
            .starts_with(home.join("kestrel/models").to_str().expect("utf8")));
        for w in m["wheels"].as_array().expect("wheels") {
            assert_eq!(w["sha256"].as_str().expect("sha").len(), 64);
        }
    }
    assert_eq!(
        models[2]["sha256"],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    );
    assert_eq!(models[2]["wheels"].as_array().expect("wheels").len(), 4);
    let (code, out, err) = kestrel(&home, &[], &["models"]);
    assert_eq!(code, 0, "{err}");
    for n in names {
        assert!(
            out.lines().any(|l| l.starts_with(n) && l.contains(" no ")),
            "{n} in {out}"
        );
    }

    let expect_one_line = |args: &[&str], expect: &[&str]| {
        let (code, out, err) = kestrel(&home, &[], args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        for e in expect {
            assert!(
                lines[0].starts_with("error: ") && lines[0].contains(e),
                "{args:?}: '{e}' not in {err}"
            );
        }
    };
    let all = names.join(", ");
    expect_one_line(
        &["pull", "smollm3"],
        &["no model 'smollm3' in the catalogue", &all],
    );
    let out = home.join("o.npy");
    let out = out.to_str().expect("utf8");
    expect_one_line(
        &[
            "logits", "--model", "gemma-3", "--tokens", "1", "--out", out,
        ],
        &["no file or folder 'gemma-3'", &all],
    );
    expect_one_line(
        &[
            "logits",
            "--model",
            "gemma-3-270m",
            "--offline",
            "--tokens",
            "1",
            "--out",
            out,
        ],
        &[
            "gemma-3-270m is not in Kestrel's cache",
            "kestrel pull gemma-3-270m",
        ],
    );
    let _ = std::fs::remove_dir_all(&home);
}

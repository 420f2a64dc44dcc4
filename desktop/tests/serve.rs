//! `kestrel serve` end to end: the binary serves the tiny fixture model on a free port and
//! is driven over raw HTTP/1.1 (the server closes every connection after its reply, so a
//! reply is everything read until EOF).

mod support;

use std::io::{Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{error_message, post_request, Server};

/// The tests time replies, so they run one at a time (the machine may have two cores).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn chat(content: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": "llama_gqa",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// The `data:` payloads of an event stream, checked to end with [DONE].
fn events(body: &str) -> Vec<Value> {
    let data: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("a data event"))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("a JSON chunk"))
        .collect()
}

/// Content of a non-streaming chat reply, after checking its shape.
fn chat_content(v: &Value, max_tokens: u64) -> String {
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().is_some_and(|i| i.starts_with("chatcmpl-")));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(matches!(
        choice["finish_reason"].as_str(),
        Some("stop" | "length")
    ));
    let u = &v["usage"];
    let (p, c) = (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64());
    let (Some(p), Some(c)) = (p, c) else {
        panic!("no usage in {v}")
    };
    assert!(p > 0 && c > 0 && c <= max_tokens, "{u}");
    assert_eq!(u["total_tokens"].as_u64(), Some(p + c));
    choice["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

/// Concatenated deltas of a streamed chat reply and its finish reason.
fn streamed_chat(body: &str) -> (String, String) {
    let chunks = events(body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        let choice = &c["choices"][0];
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish)
}

#[test]
fn serves_models_chat_and_completions() {
    let _one = serial();
    let server = Server::start(&[]);
    let (status, body) = server.get("/health");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["status"],
        "ok"
    );
    let (status, body) = server.get("/v1/models");
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "llama_gqa");
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["owned_by"], "kestrel");
    assert_eq!(server.get("/v1/models/llama_gqa").0, 200);
    assert_eq!(server.get("/v1/models/gpt-4").0, 404);

    // Greedy replies are deterministic, whole or streamed.
    let first = chat_content(
        &server.post("/v1/chat/completions", &chat("hi", 8, false)),
        8,
    );
    assert!(!first.is_empty());
    let again = chat_content(
        &server.post("/v1/chat/completions", &chat("hi", 8, false)),
        8,
    );
    assert_eq!(first, again);
    let (status, body) = server.post_text("/v1/chat/completions", &chat("hi", 8, true).to_string());
    assert_eq!(status, 200);
    let (streamed, finish) = streamed_chat(&body);
    assert_eq!(streamed, first);
    assert_eq!(finish, "length");

    // A stop string ends the reply before it, whole or streamed; its text never shows.
    let chars: Vec<char> = first.chars().collect();
    let stop: String = chars[chars.len() / 2..].iter().take(2).collect();
    let want = &first[..first.find(&stop).expect("in the reply")];
    let mut stopped = chat("hi", 8, false);
    stopped["stop"] = json!([stop, "never said"]);
    let whole = server.post("/v1/chat/completions", &stopped);
    assert_eq!(chat_content(&whole, 8), want);
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    let (_, body) = server.post_text("/v1/chat/completions", &stopped.to_string());
    assert_eq!(streamed_chat(&body), (want.to_string(), "stop".to_string()));

    // include_usage adds a last chunk with no choices and the usage.
    let mut with_usage = chat("hi", 8, true);
    with_usage["stream_options"] = json!({"include_usage": true});
    let (_, body) = server.post_text("/v1/chat/completions", &with_usage.to_string());
    let chunks = events(&body);
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 8);

    // Text completions, whole and streamed.
    let text = json!({"prompt": "Once upon", "max_tokens": 6, "temperature": 0});
    let whole = server.post("/v1/completions", &text);
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["usage"]["completion_tokens"], 6);
    let mut streamed = text.clone();
    streamed["stream"] = json!(true);
    let (_, body) = server.post_text("/v1/completions", &streamed.to_string());
    let joined: String = events(&body)
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(joined, whole["choices"][0]["text"].as_str().expect("text"));

    // Four clients at once each get their own whole reply.
    let prompts = ["hi", "hello", "hi", "hello"];
    let expected: Vec<String> = ["hi", "hello"]
        .iter()
        .map(|p| chat_content(&server.post("/v1/chat/completions", &chat(p, 8, false)), 8))
        .collect();
    let port = server.port;
    let replies: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let server = &server;
                s.spawn(move || {
                    assert_eq!(server.port, port);
                    chat_content(&server.post("/v1/chat/completions", &chat(p, 8, false)), 8)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r, &expected[i % 2], "client {i}");
    }
}

#[test]
fn refuses_bad_requests_in_openai_form() {
    let _one = serial();
    let server = Server::start(&["--max-body", "4096"]);
    let chat_path = "/v1/chat/completions";
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    let msg = server.error(chat_path, "{\"messages\": [", 400);
    assert!(msg.contains("JSON"), "{msg}");
    let msg = server.error(chat_path, &format!("{{{m},\"bogus\":1}}"), 400);
    assert!(msg.contains("bogus"), "{msg}");
    let msg = server.error(chat_path, &format!("{{{m},\"n\":2}}"), 400);
    assert!(msg.contains("'n'"), "{msg}");
    server.error(chat_path, "{\"model\":\"x\"}", 400);
    server.error(chat_path, &format!("{{{m},\"max_tokens\":\"ten\"}}"), 400);
    // The generator's ranges, the same as the browser's and the command line's.
    let msg = server.error(chat_path, &format!("{{{m},\"temperature\":2.5}}"), 400);
    assert!(
        msg.contains("'temperature'") && msg.contains("from 0 to 2"),
        "{msg}"
    );
    let five = r#""stop":["a","b","c","d","e"]"#;
    let msg = server.error(chat_path, &format!("{{{m},{five}}}"), 400);
    assert!(msg.contains("'stop'"), "{msg}");
    server.error("/v1/completions", "{\"prompt\":[1,2]}", 400);
    // A prompt past the 64-token context of the fixture.
    let long = "hello there ".repeat(100);
    let msg = server.error("/v1/completions", &json!({"prompt": long}).to_string(), 400);
    assert!(msg.contains("context"), "{msg}");

    // A body over --max-body is refused from its Content-Length, before it is sent.
    let (status, body) = server
        .raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n");
    assert_eq!(status, 413);
    error_message(&body);
    let big = format!("{{{m},\"user\":\"{}\"}}", "x".repeat(5000));
    server.error(chat_path, &big, 413);

    let (status, body) = server.raw(b"GARBAGE\r\n\r\n");
    assert_eq!(status, 400);
    error_message(&body);
    let (status, _) = server.raw(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']);
    assert_eq!(status, 400);
    let header = format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(20_000));
    assert_eq!(server.raw(header.as_bytes()).0, 431);
    let (status, body) = server.get("/v1/nothing");
    assert_eq!(status, 404);
    error_message(&body);
    assert_eq!(server.get("/v1/chat/completions").0, 405);
    assert_eq!(server.post_text("/health", "{}").0, 405);

    // Still serving after all that.
    assert_eq!(server.get("/health").0, 200);
}

/// Clients that leave cancel their jobs, running or queued: the next request does not wait
/// for replies nobody reads.
#[test]
fn disconnected_clients_cancel_their_jobs() {
    let _one = serial();
    // Attention sinks let the 64-position fixture run long replies.
    let server = Server::start(&[
        "--attention-sinks",
        "4",
        "--kv-window",
        "32",
        "--ctx",
        "2048",
    ]);
    const LONG: usize = 400;
    // How long a full reply takes here (and that this prompt really runs that long).
    let t = Instant::now();
    let full = server.post("/v1/chat/completions", &chat("hello", LONG, false));
    let full_seconds = t.elapsed().as_secs_f64();
    assert_eq!(full["usage"]["completion_tokens"], LONG, "{full}");

    // A streaming client reads a little and stays; a second one queues behind it.
    let mut streaming = server.connect();
    let request = post_request(
        "/v1/chat/completions",
        &chat("hello", LONG, true).to_string(),
    );
    streaming.write_all(request.as_bytes()).expect("send");
    let mut first = [0u8; 512];
    let n = streaming.read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let mut queued = server.connect();
    let request = post_request(
        "/v1/chat/completions",
        &chat("hello", LONG, false).to_string(),
    );
    queued.write_all(request.as_bytes()).expect("send");
    std::thread::sleep(Duration::from_millis(200));
    // Both leave.
    drop(queued);
    drop(streaming);

    let t = Instant::now();
    let reply = server.post("/v1/chat/completions", &chat("hi", 4, false));
    let waited = t.elapsed().as_secs_f64();
    chat_content(&reply, 4);
    assert!(
        waited < full_seconds / 2.0,
        "the next reply took {waited:.2} s; a whole long reply takes {full_seconds:.2} s"
    );
    // Each connection thread logs its cancellation when it notices; give the last a moment.
    let t = Instant::now();
    while server.log_count("cancelled") < 2 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.log_count("cancelled"), 2);
}

/// A context far beyond what the adapter can hold is refused with one clear line, before
/// any KV cache is allocated, and the server exits 1.
#[test]
fn a_context_beyond_the_adapter_is_refused_before_allocating() {
    // The fixture with a context of 10^8 positions (its KV cache would be 12.8 GB a layer).
    let dir = std::env::temp_dir().join(format!("kestrel-huge-ctx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for entry in std::fs::read_dir(support::FIXTURE).expect("fixture") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
    }
    let config = dir.join("config.json");
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("config")).expect("json");
    c["max_position_embeddings"] = json!(100_000_000);
    std::fs::write(&config, c.to_string()).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .env("KESTREL_TUNE", "off")
        .args(["serve", "--port", "0", "--ctx", "100000000", "--model"])
        .arg(&dir)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::temp_dir().join("kestrel-tests-xdg"),
        )
        .output()
        .expect("run kestrel serve");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        error.contains("100000000 tokens") && error.contains("--ctx"),
        "{error}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

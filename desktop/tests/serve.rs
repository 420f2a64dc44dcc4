//! `kestrel serve` end to end: the binary serves the tiny fixture model on a free port and
//! is driven over raw HTTP/1.1 (most requests say `Connection: close`, so a reply is
//! everything read until EOF; the keep-alive test reads replies by their length).

mod support;

use std::io::{Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{error_message, post_request, split_reply, Server};

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

/// `client(i, prompt)` for every prompt at once, each on its own thread started 15 ms after
/// the one before (later requests join a batch already decoding); the replies in order.
fn staggered(prompts: &[&str], client: impl Fn(usize, &str) -> String + Sync) -> Vec<String> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (prompts.iter().enumerate())
            .map(|(i, p)| {
                let client = &client;
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(15 * i as u64));
                    client(i, p)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    })
}

/// Continuous batching: replies that run together, streamed or not and started at different
/// times, are each the reply the same request gets alone.
#[test]
fn concurrent_replies_are_the_replies_alone() {
    let _one = serial();
    let server = Server::start(&["--max-batch", "4"]);
    let prompts = ["hi", "hello there", "a b c d e f", "one", "tell me", "x"];
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            chat_content(
                &server.post("/v1/chat/completions", &chat(p, 12, false)),
                12,
            )
        })
        .collect();
    let together = staggered(&prompts, |i, p| {
        let stream = i % 2 == 1;
        let (status, body) =
            server.post_text("/v1/chat/completions", &chat(p, 12, stream).to_string());
        assert_eq!(status, 200, "{body}");
        match stream {
            true => streamed_chat(&body).0,
            false => chat_content(&serde_json::from_str(&body).expect("json"), 12),
        }
    });
    assert_eq!(together, alone);

    // Prefix caching: the same long prompt again finds its full blocks in the pool.
    let long = "a b c d e f g h";
    let first = server.post("/v1/chat/completions", &chat(long, 4, false));
    let again = server.post("/v1/chat/completions", &chat(long, 4, false));
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert_eq!(chat_content(&first, 4), chat_content(&again, 4));
    let prompt = again["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt tokens");
    assert!(prompt > 16, "{again}");
    assert_eq!(cached(&again), Some((prompt - 1) / 16 * 16), "{again}");
    let (_, text) = server.get("/metrics");
    assert!(metric(&text, "kestrel_prompt_tokens_cached_total") >= ((prompt - 1) / 16 * 16) as f64);
}

/// Recurrent models batch too (a state slot per sequence): concurrent completions of the
/// RWKV-7 and Jamba (Mamba + attention + experts) fixtures, started at different times, are
/// each the completion alone.
#[test]
fn concurrent_recurrent_replies_are_the_replies_alone() {
    let _one = serial();
    for name in ["rwkv7", "jamba"] {
        let model = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let server = Server::start_model(&model, &["--max-batch", "3"]);
        assert_eq!(
            server.log_count("continuous batching"),
            1,
            "{name} is batched"
        );
        let prompts = ["Once upon", "a b c", "hello there, how", "x"];
        let text = |p: &str| json!({"prompt": p, "max_tokens": 10, "temperature": 0});
        let reply = |v: &Value| v["choices"][0]["text"].as_str().expect("text").to_string();
        let alone: Vec<String> = (prompts.iter())
            .map(|p| reply(&server.post("/v1/completions", &text(p))))
            .collect();
        let together = staggered(&prompts, |_, p| {
            reply(&server.post("/v1/completions", &text(p)))
        });
        assert_eq!(together, alone, "{name}");
    }
}

/// A request the KV pool could never hold (its prompt and max_tokens) gets a 400 naming the
/// pool at once; smaller ones still run.
#[test]
fn a_request_larger_than_the_kv_pool_is_refused() {
    let _one = serial();
    let server = Server::start(&["--max-batch", "2", "--kv-pool", "32"]);
    let text = |max_tokens: usize| {
        json!({"model": "llama_gqa", "prompt": "hi", "max_tokens": max_tokens,
               "temperature": 0})
    };
    let message = server.error("/v1/completions", &text(40).to_string(), 400);
    assert!(message.contains("KV pool of 32 tokens"), "{message}");
    let v = server.post("/v1/completions", &text(4));
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
}

/// The fixture with a context of `n` positions, in a temporary folder (removed on drop).
struct LongFixture(std::path::PathBuf);

impl LongFixture {
    fn new(n: usize) -> LongFixture {
        let dir = std::env::temp_dir().join(format!("kestrel-ctx{n}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for entry in std::fs::read_dir(support::FIXTURE).expect("fixture") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config).expect("config");
        let mut c: Value = serde_json::from_str(&text).expect("json");
        c["max_position_embeddings"] = json!(n);
        std::fs::write(&config, c.to_string()).expect("write config");
        LongFixture(dir)
    }
}

impl Drop for LongFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// In a batch: a streaming client that leaves mid-reply cancels its job and frees its KV
/// blocks at once, so a request that was waiting for them runs.
#[test]
fn a_client_leaving_mid_batch_frees_its_blocks() {
    let _one = serial();
    let model = LongFixture::new(4096);
    let path = model.0.to_str().expect("utf-8 path");
    let server = Server::start_model(path, &["--max-batch", "2", "--kv-pool", "4096"]);
    let body = |max_tokens: usize, stream: bool| {
        json!({"model": "m", "prompt": "hi", "max_tokens": max_tokens,
               "temperature": 0, "stream": stream})
        .to_string()
    };
    // The first reply reserves the whole pool (its prompt and 4000 tokens: seconds).
    let mut leaving = server.connect();
    leaving
        .write_all(post_request("/v1/completions", &body(4000, true)).as_bytes())
        .expect("send");
    let mut first = [0u8; 256];
    let n = leaving.read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // The second waits for blocks; the first leaves; the second runs.
    let t = Instant::now();
    let waiting = std::thread::scope(|scope| {
        let second = scope.spawn(|| server.post_text("/v1/completions", &body(4, false)));
        std::thread::sleep(Duration::from_millis(200));
        drop(leaving);
        second.join().expect("second client")
    });
    assert_eq!(waiting.0, 200, "{}", waiting.1);
    let waited = t.elapsed();
    let t = Instant::now();
    while server.log_count("cancelled") < 1 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.log_count("cancelled"), 1, "waited {waited:?}");
    let (_, text) = server.get("/metrics");
    assert_eq!(metric(&text, "kestrel_running_jobs"), 0.0);
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

    // Bytes that are not HTTP get hyper's own 400, which has no body.
    let (status, _) = server.raw(b"GARBAGE\r\n\r\n");
    assert_eq!(status, 400);
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
    let model = LongFixture::new(100_000_000);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .env("KESTREL_TUNE", "off")
        .args(["serve", "--port", "0", "--ctx", "100000000", "--model"])
        .arg(&model.0)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::temp_dir().join("kestrel-tests-xdg"),
        )
        .output()
        .expect("run kestrel serve");
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

/// One reply read off a kept-alive connection (by its Content-Length): status, head, body.
fn read_reply(s: &mut std::net::TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("a reply head"), 1, "closed early");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).expect("the body");
    buf.extend_from_slice(&body);
    split_reply(&buf)
}

/// A header's value in a reply head (names compared without case).
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A metric's value in the Prometheus text (the line starting with `series `).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Several requests on one connection, a chunked request body, and /metrics after them.
#[test]
fn keeps_connections_alive_reads_chunked_bodies_and_counts_metrics() {
    let _one = serial();
    let server = Server::start(&[]);
    let whole = chat_content(
        &server.post("/v1/chat/completions", &chat("hi", 8, false)),
        8,
    );

    // Three requests on one TCP connection: a GET, a POST, a chunked POST.
    let mut s = server.connect();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (status, _, body) = read_reply(&mut s);
    assert_eq!(status, 200, "{body}");
    let body = chat("hi", 8, false).to_string();
    s.write_all(
        post_request("/v1/chat/completions", &body)
            .replace("Connection: close\r\n", "")
            .as_bytes(),
    )
    .expect("send on the same connection");
    let (status, _, reply) = read_reply(&mut s);
    assert_eq!(status, 200, "{reply}");
    let v: Value = serde_json::from_str(&reply).expect("json");
    assert_eq!(chat_content(&v, 8), whole);
    // The body in three chunks of its own sizes.
    let (a, rest) = body.split_at(5);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut chunked = String::from(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
    );
    for part in [a, b, c] {
        chunked.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
    }
    chunked.push_str("0\r\n\r\n");
    s.write_all(chunked.as_bytes()).expect("send chunked");
    let (status, _, reply) = read_reply(&mut s);
    assert_eq!(status, 200, "{reply}");
    let v: Value = serde_json::from_str(&reply).expect("json");
    assert_eq!(chat_content(&v, 8), whole);
    drop(s);

    // A streamed reply too, then the counters.
    let (status, _) = server.post_text("/v1/chat/completions", &chat("hi", 8, true).to_string());
    assert_eq!(status, 200);
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    let chats = r#"kestrel_requests_total{route="/v1/chat/completions",status="200"}"#;
    assert_eq!(metric(&text, chats), 4.0, "{text}");
    assert_eq!(metric(&text, "kestrel_completion_tokens_total"), 32.0);
    assert!(metric(&text, "kestrel_prompt_tokens_total") > 0.0);
    assert_eq!(metric(&text, "kestrel_queue_length"), 0.0);
    assert_eq!(metric(&text, "kestrel_running_jobs"), 0.0);
    for name in [
        "kestrel_time_to_first_token_seconds",
        "kestrel_time_per_output_token_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} histogram\n")),
            "{text}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
            .map(|l| {
                let (le, n) = l.split_once("\"} ").expect("a bucket");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                (le, n.parse().expect("a count"))
            })
            .collect();
        assert!(buckets.len() > 2, "{text}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{name} buckets not cumulative: {buckets:?}"
        );
        let (last_le, last) = *buckets.last().expect("buckets");
        assert_eq!(last_le, f64::INFINITY);
        assert_eq!(last, metric(&text, &format!("{name}_count")));
        assert!(metric(&text, &format!("{name}_sum")) > 0.0);
    }
    // Four replies, each timed to its first token; 7 tokens after the first in each.
    assert_eq!(
        metric(&text, "kestrel_time_to_first_token_seconds_count"),
        4.0
    );
    assert_eq!(
        metric(&text, "kestrel_time_per_output_token_seconds_count"),
        28.0
    );
}

/// CORS preflights and headers, and the bearer check.
#[test]
fn answers_cors_and_checks_the_api_key() {
    let _one = serial();
    let origin = "http://app.example";
    let server = Server::start(&["--cors-origin", origin, "--api-key", "sekret"]);
    let send = |request: String| {
        let mut s = server.connect();
        s.write_all(request.as_bytes()).expect("send");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).expect("read");
        split_reply(&reply)
    };
    let get = |path: &str, extra: &str| {
        send(format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"
        ))
    };
    // A preflight needs no key.
    let (status, head, _) = send(format!(
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: authorization, content-type\r\n\r\n"
    ));
    assert_eq!(status, 204, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some(origin));
    assert!(header(&head, "access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    assert_eq!(
        header(&head, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    // Another origin is not named.
    let (status, head, _) = get("/health", "Origin: http://elsewhere.example\r\n");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "access-control-allow-origin"), None);

    // /health is open; the rest need the key, and the refusal is readable cross-origin.
    let with_origin = format!("Origin: {origin}\r\n");
    let (status, head, _) = get("/health", &with_origin);
    assert_eq!(status, 200);
    assert_eq!(header(&head, "access-control-allow-origin"), Some(origin));
    let (status, head, body) = get("/v1/models", &with_origin);
    assert_eq!(status, 401, "{body}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some(origin));
    assert!(error_message(&body).contains("API key"));
    let (status, _, body) = get("/metrics", "Authorization: Bearer wrong\r\n");
    assert_eq!(status, 401, "{body}");
    error_message(&body);
    let key = "Authorization: Bearer sekret\r\n";
    assert_eq!(get("/v1/models", key).0, 200);
    assert_eq!(get("/metrics", key).0, 200);

    // A streamed reply carries the header too.
    let body = chat("hi", 4, true).to_string();
    let request = post_request("/v1/chat/completions", &body)
        .replace("Host: x\r\n", &format!("Host: x\r\n{key}{with_origin}"));
    let (status, head, body) = send(request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&head, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&head, "access-control-allow-origin"), Some(origin));
    assert_eq!(streamed_chat(&body).1, "length");
}

/// With the queue full (--max-queue 1: one job waiting behind the running one, --max-batch
/// 1 so that it waits), a request is answered 429 at once.
#[test]
fn a_full_queue_answers_429() {
    let _one = serial();
    let server = Server::start(&[
        "--max-queue",
        "1",
        "--max-batch",
        "1",
        "--attention-sinks",
        "4",
        "--kv-window",
        "32",
        "--ctx",
        "2048",
    ]);
    let send = |body: Value| {
        let mut s = server.connect();
        let request = post_request("/v1/chat/completions", &body.to_string());
        s.write_all(request.as_bytes()).expect("send");
        s
    };
    // One running (its reply started), one queued behind it.
    let mut running = send(chat("hello", 1500, true));
    let mut first = [0u8; 64];
    let n = running.read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let queued = send(chat("hello", 1500, false));
    let t = Instant::now();
    loop {
        let (_, body) = server.get("/health");
        let v: Value = serde_json::from_str(&body).expect("json");
        if v["jobs"] == 2 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let (status, head, body) = {
        let mut s = send(chat("hi", 4, false));
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).expect("read");
        split_reply(&reply)
    };
    assert_eq!(status, 429, "{body}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(header(&head, "retry-after"), Some("1"));
    assert!(error_message(&body).contains("--max-queue"));
    let (_, text) = server.get("/metrics");
    assert_eq!(metric(&text, "kestrel_queue_length"), 1.0);
    assert_eq!(metric(&text, "kestrel_running_jobs"), 1.0);
    drop(queued);
    drop(running);
}

/// SIGTERM: the server stops accepting, lets a running streamed reply finish, and exits 0.
#[cfg(unix)]
#[test]
fn sigterm_lets_running_replies_finish() {
    let _one = serial();
    let mut server = Server::start(&[
        "--attention-sinks",
        "4",
        "--kv-window",
        "32",
        "--ctx",
        "2048",
    ]);
    let mut s = server.connect();
    let request = post_request(
        "/v1/chat/completions",
        &chat("hello", 200, true).to_string(),
    );
    s.write_all(request.as_bytes()).expect("send");
    let mut reply = vec![0u8; 64];
    let n = s.read(&mut reply).expect("first bytes");
    reply.truncate(n);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    s.read_to_end(&mut reply).expect("the rest of the reply");
    let (status, _, body) = split_reply(&reply);
    assert_eq!(status, 200);
    let (_, finish) = streamed_chat(&body);
    assert_eq!(finish, "length");
    let t = Instant::now();
    let code = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status.code();
        }
        assert!(t.elapsed() < Duration::from_secs(15), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    // The log thread may still be reading the last lines.
    let t = Instant::now();
    while server.log_count("exiting") == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.log_count("SIGTERM"), 1);
    assert_eq!(server.log_count("all connections closed; exiting"), 1);
    // Nobody listens any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err());
}

/// --max-reply-seconds ends a long reply with what it has, as finish_reason "length".
#[test]
fn a_reply_past_its_time_ends_as_length() {
    let _one = serial();
    let server = Server::start(&[
        "--max-reply-seconds",
        "0.2",
        "--attention-sinks",
        "4",
        "--kv-window",
        "32",
        "--ctx",
        "2048",
    ]);
    // Unlimited, this reply runs its 2000 tokens to the context (1998) in over a second.
    let t = Instant::now();
    let whole = server.post("/v1/chat/completions", &chat("hello", 2000, false));
    let seconds = t.elapsed().as_secs_f64();
    let tokens = whole["usage"]["completion_tokens"].as_u64().expect("usage");
    assert_eq!(whole["choices"][0]["finish_reason"], "length", "{whole}");
    assert!(
        tokens > 0 && tokens < 1998,
        "{tokens} tokens in {seconds:.2} s"
    );
    let (status, body) = server.post_text(
        "/v1/chat/completions",
        &chat("hello", 2000, true).to_string(),
    );
    assert_eq!(status, 200);
    let (text, finish) = streamed_chat(&body);
    assert_eq!(finish, "length");
    assert!(!text.is_empty());
    // A short reply is not cut.
    let short = server.post("/v1/chat/completions", &chat("hi", 4, false));
    assert_eq!(short["usage"]["completion_tokens"], 4);
}

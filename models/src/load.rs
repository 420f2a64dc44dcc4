//! From files to a [`Model`]: a Hugging Face-layout folder or a GGUF file, natively or from
//! bytes in the browser, all through one path — the registry finds the family and parses
//! its config (before any weight is read, so config errors come first), then
//! [`build_model`] uploads the weights through scoped names.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kestrel_runtime::Gpu;

use crate::error::{ModelError, Result};
use crate::families::{self, NetworkConfig};
use crate::formats::config::JsonConfig;
#[cfg(not(target_arch = "wasm32"))]
use crate::formats::folder::file_in_folder;
use crate::formats::gguf::GgufFile;
use crate::formats::gguf_tokenizer::GgufVocab;
use crate::formats::host::TensorSource;
use crate::formats::pth::PthFile;
use crate::formats::range_read::{FileBytes, ThreadSafe};
use crate::formats::rwkv_tokenizer::RwkvTokenizer;
use crate::formats::safetensors::{Blob, SafetensorsFiles};
use crate::formats::{gguf_hf, gguf_hf_recurrent, gguf_tokenizer, tokenizer_config};
use crate::model::{ChatInfo, Model};
use crate::tokenizer::TextTokenizer;
use crate::vars::{Vars, WeightBytes};

/// Where loading a model spent its time, in seconds (zeros on wasm32, where the crate reads
/// no clock). Natively the tokenizer is built on a thread of its own while the weights
/// upload, so `tokenizer_s` overlaps `upload_s`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadTimes {
    /// Opening and parsing the files up to the weights: headers, metadata, the config.
    pub parse_s: f64,
    /// Building the tokenizer and reading the chat template.
    pub tokenizer_s: f64,
    /// Reading the weights (with any conversion on the host) and uploading them.
    pub upload_s: f64,
}

/// Seconds since it was started (always 0 on wasm32, where std has no clock).
struct Stopwatch(#[cfg(not(target_arch = "wasm32"))] std::time::Instant);

#[cfg(not(target_arch = "wasm32"))]
impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch(std::time::Instant::now())
    }
    fn secs(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

#[cfg(target_arch = "wasm32")]
impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch()
    }
    fn secs(&self) -> f64 {
        0.0
    }
}

/// `f`'s result and the seconds it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let started = Stopwatch::start();
    let out = f();
    (out, started.secs())
}

/// The tokenizer and chat template of a model, made by a [`build_model`] caller.
type TextParts = (Option<TextTokenizer>, ChatInfo);

/// Load the weights `config` describes from `source` and make the model (`path` names it),
/// with the tokenizer and chat template that `text` makes: natively on a thread of its own
/// while the weights upload (both take a CPU core for a while), in turn on wasm32. A
/// tokenizer error is reported before an upload error, as if it had been made first.
/// `parse_s`: the seconds the caller spent reading the files up to here.
pub fn build_model(
    gpu: &Arc<Gpu>,
    path: PathBuf,
    config: Box<dyn NetworkConfig>,
    source: &dyn TensorSource,
    // Built on a thread of its own natively (so Send there), where the weights upload.
    text: impl FnOnce() -> Result<TextParts> + ThreadSafe,
    parse_s: f64,
) -> Result<Model> {
    let bytes = Cell::new(WeightBytes::default());
    let upload = || -> Result<_> {
        let network = config.load(&Vars::root(gpu, source, &bytes))?;
        gpu.check()?;
        Ok(network)
    };
    #[cfg(not(target_arch = "wasm32"))]
    let ((text, tokenizer_s), (network, upload_s)) = std::thread::scope(|s| {
        let text = s.spawn(|| timed(text));
        let network = timed(upload);
        match text.join() {
            Ok(text) => (text, network),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    #[cfg(target_arch = "wasm32")]
    let ((text, tokenizer_s), (network, upload_s)) = (timed(text), timed(upload));
    let (tokenizer, chat) = text?;
    let times = LoadTimes {
        parse_s,
        tokenizer_s,
        upload_s,
    };
    Ok(Model::new(
        path,
        network?,
        bytes.get(),
        tokenizer,
        chat,
        times,
    ))
}

/// Everything of a GGUF model that needs no GPU: its family's config (checked), its tensors
/// under Hugging Face names, its tokenizer and chat template. [`model_from_gguf`] uploads the
/// weights from here; the fuzz targets stop here.
pub struct GgufParts<'a> {
    pub config: JsonConfig,
    pub network: Box<dyn NetworkConfig>,
    pub source: gguf_hf::GgufSource<'a>,
    pub tokenizer: Option<TextTokenizer>,
    pub chat: ChatInfo,
}

/// Read a parsed GGUF file up to the weights' upload (see [`GgufParts`]).
pub fn gguf_parts(file: &GgufFile) -> Result<GgufParts<'_>> {
    let (config, network, source) = gguf_network(file)?;
    let (tokenizer, chat) = gguf_text(file)?;
    Ok(GgufParts {
        config,
        network,
        source,
        tokenizer,
        chat,
    })
}

/// A GGUF file's family config (checked) and its tensors under Hugging Face names.
fn gguf_network(
    file: &GgufFile,
) -> Result<(JsonConfig, Box<dyn NetworkConfig>, gguf_hf::GgufSource<'_>)> {
    let path = file.path();
    let arch =
        file.get_str("general.architecture")
            .ok_or_else(|| ModelError::MissingConfigKey {
                file: path.to_path_buf(),
                key: "general.architecture".into(),
            })?;
    let class = families::for_gguf(arch, path)?;
    let config = gguf_hf::config_from_gguf(file, arch, class);
    let network = gguf_hf_recurrent::network_config(file, &config, arch)?;
    let source = gguf_hf::GgufSource::new(file, &config)?;
    Ok((config, network, source))
}

/// A GGUF file's tokenizer and chat template, from its metadata.
fn gguf_text(file: &GgufFile) -> Result<TextParts> {
    let path = file.path();
    let tokenizer = match file.get("tokenizer.ggml.model") {
        None => None,
        Some(m) if m.as_str() == Some("rwkv") => Some(TextTokenizer::from_rwkv(
            path,
            RwkvTokenizer::new(&GgufVocab::from_gguf(file)?),
        )),
        Some(_) => Some(TextTokenizer::from_tokenizer(
            path,
            gguf_tokenizer::tokenizer_from_gguf(file)?,
        )),
    };
    Ok((tokenizer, gguf_hf::chat_info_from_gguf(file)))
}

/// Build a model from a parsed GGUF file (native or in the browser): weights stay quantized
/// on the GPU; the tokenizer and chat template come from its metadata.
pub fn model_from_gguf(gpu: &Arc<Gpu>, file: &GgufFile) -> Result<Model> {
    model_from_gguf_since(gpu, file, Stopwatch::start())
}

/// [`model_from_gguf`], its parse time counted from `started`.
fn model_from_gguf_since(gpu: &Arc<Gpu>, file: &GgufFile, started: Stopwatch) -> Result<Model> {
    let (_, network, source) = gguf_network(file)?;
    build_model(
        gpu,
        file.path().to_path_buf(),
        network,
        &source,
        || gguf_text(file),
        started.secs(),
    )
}

/// A model from the files of a Hugging Face folder given as (file name, bytes), as the browser
/// has them: config.json (or, for BlinkDL's RWKV-7, none), *.safetensors (or BlinkDL's
/// `.pth`), tokenizer.json, tokenizer_config.json. Only the base name of each file counts;
/// other files are ignored. `dir` names the folder in errors. A file's bytes may be whole or
/// read a range at a time ([`FileBytes`]): safetensors shards are then read a tensor at a
/// time; the others are small, and read whole (a `.pth` too, for now).
pub fn model_from_files(
    gpu: &Arc<Gpu>,
    dir: &Path,
    files: Vec<(String, impl Into<FileBytes>)>,
) -> Result<Model> {
    let started = Stopwatch::start();
    let mut config = None;
    let mut tokenizer = None;
    let mut tokenizer_config = None;
    let mut shards = Vec::new();
    let mut pth = Vec::new();
    for (name, bytes) in files {
        let base = name.rsplit('/').next().unwrap_or(&name).to_string();
        let path = dir.join(&base);
        let bytes: FileBytes = bytes.into();
        match base.as_str() {
            "config.json" => config = Some((path.clone(), bytes.into_vec(&path)?)),
            "tokenizer.json" => tokenizer = Some((path.clone(), bytes.into_vec(&path)?)),
            "tokenizer_config.json" => {
                tokenizer_config = Some((path.clone(), bytes.into_vec(&path)?))
            }
            b if b.ends_with(".safetensors") => shards.push((path, bytes)),
            b if b.ends_with(".pth") => pth.push((path.clone(), bytes.into_vec(&path)?)),
            _ => {}
        }
    }
    if shards.is_empty() && pth.is_empty() {
        return Err(ModelError::NotFound(dir.join("model.safetensors")));
    }
    let json = |(path, bytes): (PathBuf, Vec<u8>)| {
        JsonConfig::parse(&path, &String::from_utf8_lossy(&bytes))
    };
    // The family and its config before any weight is read, as from a directory.
    let network = match config {
        Some(file) => Some(families::from_config(&json(file)?)?),
        None => None,
    };
    let source: Box<dyn TensorSource> = if shards.is_empty() {
        let (path, bytes) = one_pth(pth, dir)?;
        Box::new(PthFile::parse(&path, Blob::Owned(bytes))?)
    } else {
        // Shards in name order, like the index of a sharded checkpoint.
        shards.sort_by(|a, b| a.0.cmp(&b.0));
        Box::new(SafetensorsFiles::from_files(dir, shards)?)
    };
    let network = match network {
        Some(n) => n,
        None => families::from_tensors(source.as_ref())?
            .ok_or_else(|| ModelError::NotFound(dir.join("config.json")))?,
    };
    let text = move || -> Result<TextParts> {
        let tokenizer = match tokenizer {
            Some((path, bytes)) => Some(TextTokenizer::from_bytes(&path, &bytes)?),
            None => None,
        };
        let chat = match tokenizer_config {
            Some(file) => tokenizer_config::chat_info_from_tokenizer_config(&json(file)?),
            None => ChatInfo::default(),
        };
        Ok((tokenizer, chat))
    };
    build_model(
        gpu,
        dir.to_path_buf(),
        network,
        source.as_ref(),
        text,
        started.secs(),
    )
}

/// The one `.pth` checkpoint among `found` (a folder holding several is ambiguous).
fn one_pth<T>(mut found: Vec<(PathBuf, T)>, dir: &Path) -> Result<(PathBuf, T)> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ModelError::NotFound(dir.join("model.safetensors"))),
        n => Err(ModelError::UnsupportedFormat {
            path: dir.to_path_buf(),
            message: format!("{n} .pth checkpoints and no config.json; pass one .pth file"),
        }),
    }
}

/// The family of a `.pth` checkpoint, recognised by its tensors (BlinkDL's RWKV-7).
#[cfg(not(target_arch = "wasm32"))]
fn pth_network(file: &PthFile) -> Result<Box<dyn NetworkConfig>> {
    families::from_tensors(file)?.ok_or_else(|| ModelError::UnsupportedFormat {
        path: file.origin().to_path_buf(),
        message: "a PyTorch checkpoint whose tensors are no family's Kestrel recognises \
                  without config.json (BlinkDL's RWKV-7 is); other models need config.json \
                  and *.safetensors"
            .into(),
    })
}

/// Load a model: a GGUF file, or a Hugging Face-layout directory (config.json, *.safetensors,
/// tokenizer.json, tokenizer_config.json; BlinkDL's RWKV-7 folders have no config.json),
/// every file of which must be inside the directory (see `formats::folder`).
#[cfg(not(target_arch = "wasm32"))]
pub fn load(gpu: &Arc<Gpu>, path: &Path) -> Result<Model> {
    let started = Stopwatch::start();
    if !path.exists() {
        return Err(ModelError::NotFound(path.to_path_buf()));
    }
    let extension = |ext: &str| {
        path.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case(ext))
    };
    if path.is_file() {
        if extension("gguf") {
            return model_from_gguf_since(gpu, &GgufFile::open(path)?, started);
        }
        if extension("pth") {
            return load_pth(gpu, path);
        }
        return Err(ModelError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: "expected a .gguf file, a BlinkDL RWKV-7 .pth, or a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)"
                .to_string(),
        });
    }
    let config_path = file_in_folder(path, "config.json", path)?;
    let (network, source): (_, Box<dyn TensorSource>) = if config_path.exists() {
        let text = read(&config_path)?;
        let config = JsonConfig::parse(&config_path, &String::from_utf8_lossy(&text))?;
        let network = families::from_config(&config)?;
        (network, Box::new(SafetensorsFiles::open_dir(path)?))
    } else if let Some(found) = without_config(path)? {
        found
    } else {
        // Neither: the error of reading the missing config.json.
        read(&config_path)?;
        return Err(ModelError::NotFound(config_path));
    };
    build_model(
        gpu,
        path.to_path_buf(),
        network,
        source.as_ref(),
        || read_tokenizer_files(path),
        started.secs(),
    )
}

/// A directory without config.json: a family recognised by the tensors of its
/// model.safetensors or, failing that, of its one `.pth` checkpoint (BlinkDL's RWKV-7); or
/// `None`.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::type_complexity)]
fn without_config(dir: &Path) -> Result<Option<(Box<dyn NetworkConfig>, Box<dyn TensorSource>)>> {
    if !dir.join("model.safetensors").exists() {
        let mut pth: Vec<(PathBuf, ())> = std::fs::read_dir(dir)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pth")))
            .map(|p| (p, ()))
            .collect();
        if pth.is_empty() {
            return Ok(None);
        }
        pth.sort();
        let (p, ()) = one_pth(pth, dir)?;
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let p = file_in_folder(dir, name.as_deref().unwrap_or_default(), dir)?;
        let file = PthFile::open(&p)?;
        return Ok(Some((pth_network(&file)?, Box::new(file))));
    }
    let files = SafetensorsFiles::open_dir(dir)?;
    Ok(families::from_tensors(&files)?.map(|network| (network, Box::new(files) as _)))
}

/// Load a PyTorch checkpoint of a family recognised by its tensors (BlinkDL's RWKV-7), with
/// the tokenizer.json and tokenizer_config.json beside it, where they exist.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_pth(gpu: &Arc<Gpu>, path: &Path) -> Result<Model> {
    let started = Stopwatch::start();
    let file = PthFile::open(path)?;
    let network = pth_network(&file)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let text = || read_tokenizer_files(dir);
    build_model(
        gpu,
        path.to_path_buf(),
        network,
        &file,
        text,
        started.secs(),
    )
}

#[cfg(not(target_arch = "wasm32"))]
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Load a GGUF file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_gguf(gpu: &Arc<Gpu>, path: &Path) -> Result<Model> {
    let started = Stopwatch::start();
    model_from_gguf_since(gpu, &GgufFile::open(path)?, started)
}

/// tokenizer.json and tokenizer_config.json of a model directory, where they exist.
#[cfg(not(target_arch = "wasm32"))]
fn read_tokenizer_files(dir: &Path) -> Result<TextParts> {
    let tok_path = file_in_folder(dir, "tokenizer.json", dir)?;
    let tokenizer = match tok_path.exists() {
        true => Some(TextTokenizer::from_bytes(&tok_path, &read(&tok_path)?)?),
        false => None,
    };
    let config_path = file_in_folder(dir, "tokenizer_config.json", dir)?;
    let chat = match config_path.exists() {
        true => {
            let text = read(&config_path)?;
            let config = JsonConfig::parse(&config_path, &String::from_utf8_lossy(&text))?;
            tokenizer_config::chat_info_from_tokenizer_config(&config)
        }
        false => ChatInfo::default(),
    };
    Ok((tokenizer, chat))
}

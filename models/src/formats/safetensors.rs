//! Safetensors files: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Memory-mapped natively, owned bytes in the browser.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};
#[cfg(not(target_arch = "wasm32"))]
use crate::formats::folder::file_in_folder;
use crate::formats::host::{HostDType, HostTensor, TensorSource};

pub enum Blob {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Blob::Mapped(m) => m,
            Blob::Owned(v) => v,
        }
    }
}

struct Shard {
    path: PathBuf,
    blob: Blob,
    meta: Metadata,
    data_start: usize,
}

pub struct SafetensorsFiles {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
    origin: PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
fn io_err(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn map_file(path: &Path) -> Result<Blob> {
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the file is opened read-only and model files are not modified while loaded.
    let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io_err(path, e))?;
    Ok(Blob::Mapped(m))
}

impl SafetensorsFiles {
    /// Open the safetensors of a Hugging Face model directory: the shards its index lists,
    /// else model.safetensors, else every *.safetensors; all inside the directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &Path) -> Result<SafetensorsFiles> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read(&index).map_err(|e| io_err(&index, e))?;
            shard_names(&index, &text)?
                .iter()
                .map(|name| file_in_folder(dir, name, &index))
                .collect::<Result<_>>()?
        } else if single.exists() {
            vec![file_in_folder(dir, "model.safetensors", dir)?]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| io_err(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(ModelError::UnsupportedFormat {
                    path: dir.to_path_buf(),
                    message: "no *.safetensors files in the model directory".into(),
                });
            }
            for p in &found {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                file_in_folder(dir, &name, dir)?;
            }
            found
        };
        let blobs = files
            .into_iter()
            .map(|p| {
                if !p.exists() {
                    return Err(ModelError::Io {
                        path: p.clone(),
                        message: "shard listed in the index is missing".into(),
                    });
                }
                let b = map_file(&p)?;
                Ok((p, b))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_blobs(dir, blobs)
    }

    /// Parse already loaded files (each a whole safetensors file).
    pub fn from_blobs(origin: &Path, blobs: Vec<(PathBuf, Blob)>) -> Result<SafetensorsFiles> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (path, blob) in blobs {
            // Full validation (header, offsets within the file) before anything is used.
            SafeTensors::deserialize(&blob).map_err(|e| ModelError::Safetensors {
                file: path.clone(),
                message: e.to_string(),
            })?;
            let (n, meta) =
                SafeTensors::read_metadata(&blob).map_err(|e| ModelError::Safetensors {
                    file: path.clone(),
                    message: e.to_string(),
                })?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path,
                blob,
                meta,
                data_start: 8 + n,
            });
        }
        Ok(SafetensorsFiles {
            shards,
            index,
            origin: origin.to_path_buf(),
        })
    }

    /// The names of every tensor of every shard.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }
}

/// The shard file names of a sharded checkpoint's index (`weight_map`: tensor name → file
/// name), sorted and without repeats; `index` names the file in errors. The names are not
/// yet checked to be inside the folder (see [`file_in_folder`]).
pub fn shard_names(index: &Path, text: &[u8]) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| ModelError::Json {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::MissingConfigKey {
            file: index.to_path_buf(),
            key: "weight_map".into(),
        })?;
    let mut names = map
        .iter()
        .map(|(tensor, file)| {
            file.as_str()
                .map(str::to_string)
                .ok_or_else(|| ModelError::BadConfigValue {
                    file: index.to_path_buf(),
                    key: format!("weight_map.{tensor}"),
                    message: format!("should be a file name, got {file}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    names.dedup();
    Ok(names)
}

impl TensorSource for SafetensorsFiles {
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let missing = || ModelError::MissingTensor {
            file: self.origin.clone(),
            name: name.to_string(),
        };
        let shard = &self.shards[*self.index.get(name).ok_or_else(missing)?];
        let info = shard.meta.info(name).ok_or_else(missing)?;
        let dtype = match info.dtype {
            Dtype::F32 => HostDType::F32,
            Dtype::F16 => HostDType::F16,
            Dtype::BF16 => HostDType::BF16,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    file: shard.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let (a, b) = info.data_offsets;
        // In the file: from_blobs checked every tensor's offsets against its shard.
        let bytes = &shard.blob[shard.data_start + a..shard.data_start + b];
        HostTensor {
            name: name.to_string(),
            file: shard.path.clone(),
            shape: info.shape.clone(),
            dtype,
            bytes: std::borrow::Cow::Borrowed(bytes),
        }
        .non_empty()
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn origin(&self) -> &Path {
        &self.origin
    }
}

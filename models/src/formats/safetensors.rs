//! Safetensors files: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Memory-mapped natively; in the browser read a range at a
//! time (the header, then each tensor when asked for), or owned bytes.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::{ModelError, Result};
#[cfg(not(target_arch = "wasm32"))]
use crate::formats::folder::file_in_folder;
use crate::formats::host::{HostDType, HostTensor, TensorSource};
use crate::formats::range_read::FileBytes;

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

impl Blob {
    /// The bytes, owned (copied out of a mapping).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Blob::Mapped(m) => m.to_vec(),
            Blob::Owned(v) => v,
        }
    }
}

struct Shard {
    path: PathBuf,
    bytes: FileBytes,
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
        let files = blobs.into_iter().map(|(p, b)| (p, FileBytes::Whole(b)));
        Self::from_files(origin, files.collect())
    }

    /// Parse files whole or read a range at a time: each one's header is read and checked
    /// (offsets contiguous and covering the file exactly) before anything is used.
    pub fn from_files(origin: &Path, files: Vec<(PathBuf, FileBytes)>) -> Result<SafetensorsFiles> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (path, bytes) in files {
            let err = |e: SafeTensorError| ModelError::Safetensors {
                file: path.clone(),
                message: e.to_string(),
            };
            let (n, meta) = match &bytes {
                FileBytes::Whole(blob) => SafeTensors::read_metadata(blob).map_err(err)?,
                FileBytes::Ranged(_) => ranged_metadata(&path, &bytes)?.map_err(err)?,
            };
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path,
                bytes,
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

/// The header of a safetensors file read a range at a time, checked as
/// `SafeTensors::read_metadata` checks a whole file (the same errors): its length, the JSON,
/// offsets contiguous and covering the rest of the file exactly. The outer error is a read
/// that failed.
fn ranged_metadata(
    path: &Path,
    bytes: &FileBytes,
) -> Result<std::result::Result<(usize, Metadata), SafeTensorError>> {
    /// safetensors' own bound on a header.
    const MAX_HEADER_SIZE: u64 = 100_000_000;
    let size = bytes.size();
    if size < 8 {
        return Ok(Err(SafeTensorError::HeaderTooSmall));
    }
    let n = u64::from_le_bytes(
        bytes
            .range(path, 0, 8)?
            .as_ref()
            .try_into()
            .expect("8 bytes"),
    );
    if n > MAX_HEADER_SIZE {
        return Ok(Err(SafeTensorError::HeaderTooLarge));
    }
    if 8 + n > size {
        return Ok(Err(SafeTensorError::InvalidHeaderLength));
    }
    let header = bytes.range(path, 8, n)?;
    let text = match std::str::from_utf8(&header) {
        Ok(t) => t,
        Err(e) => return Ok(Err(SafeTensorError::InvalidHeader(e))),
    };
    let meta: Metadata = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return Ok(Err(SafeTensorError::InvalidHeaderDeserialization(e))),
    };
    // Metadata checked the offsets are contiguous from 0; they must end at the file's end.
    let end = meta
        .tensors()
        .values()
        .map(|t| t.data_offsets.1)
        .max()
        .unwrap_or(0);
    if 8 + n + end as u64 != size {
        return Ok(Err(SafeTensorError::MetadataIncompleteBuffer));
    }
    Ok(Ok((n as usize, meta)))
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
        // In the file: from_files checked every tensor's offsets against its shard.
        let start = (shard.data_start + a) as u64;
        let bytes = shard.bytes.range(&shard.path, start, (b - a) as u64)?;
        HostTensor {
            name: name.to_string(),
            file: shard.path.clone(),
            shape: info.shape.clone(),
            dtype,
            bytes,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// Every fixture safetensors file read a range at a time equals the file read whole:
    /// tensor names and every tensor's bytes; a file cut inside its header or its data is
    /// refused both ways, with the same message.
    #[test]
    fn ranged_files_read_as_whole_ones() {
        let files = crate::formats::range_read::fixture_files("safetensors");
        assert!(files.len() >= 20, "fixture safetensors files: {files:?}");
        let open = |path: &Path, bytes: FileBytes| {
            SafetensorsFiles::from_files(path, vec![(path.to_path_buf(), bytes)])
        };
        for path in files {
            let bytes = std::fs::read(&path).expect("read");
            let whole = open(&path, FileBytes::from(bytes.clone())).expect("whole");
            let ranged = open(&path, FileBytes::Ranged(Box::new(bytes.clone()))).expect("ranged");
            let mut names: Vec<_> = whole.tensor_names().collect();
            let mut ranged_names: Vec<_> = ranged.tensor_names().collect();
            names.sort();
            ranged_names.sort();
            assert_eq!(names, ranged_names, "{}", path.display());
            for name in names {
                let (a, b) = (
                    whole.tensor(name).expect("a"),
                    ranged.tensor(name).expect("b"),
                );
                assert!(
                    matches!(b.bytes, Cow::Owned(_)),
                    "{}: {name} not read",
                    path.display()
                );
                assert_eq!(
                    (a.shape, a.bytes),
                    (b.shape, b.bytes),
                    "{}: {name}",
                    path.display()
                );
            }
            let header = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
            for cut in [4, header / 2, bytes.len() - 1] {
                let short = bytes[..cut].to_vec();
                let a = open(&path, FileBytes::from(short.clone()))
                    .err()
                    .expect("whole refused");
                let b = open(&path, FileBytes::Ranged(Box::new(short)))
                    .err()
                    .expect("refused");
                assert_eq!(
                    a.to_string(),
                    b.to_string(),
                    "{} cut at {cut}",
                    path.display()
                );
            }
        }
    }
}

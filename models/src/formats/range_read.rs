//! Files read a range at a time instead of whole: a browser's model file (in the Origin
//! Private File System, a user's `File`, or a download kept as a `Blob`), which the wasm
//! engine must not copy whole into its memory. A GGUF or safetensors file read so holds its
//! header in memory and reads each tensor's bytes when the loader asks for them.

use std::borrow::Cow;
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::formats::safetensors::Blob;

/// A model file's bytes: whole (memory-mapped, or in memory), or read a range at a time.
pub enum FileBytes {
    Whole(Blob),
    Ranged(Box<dyn RangeRead>),
}

impl From<Vec<u8>> for FileBytes {
    fn from(bytes: Vec<u8>) -> FileBytes {
        FileBytes::Whole(Blob::Owned(bytes))
    }
}

impl FileBytes {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            FileBytes::Whole(b) => b.len() as u64,
            FileBytes::Ranged(r) => r.size(),
        }
    }

    /// `len` bytes at `offset`, which the caller has checked lie in the file: borrowed from a
    /// whole file, read from a ranged one. `path` names the file in errors.
    pub fn range(&self, path: &Path, offset: u64, len: u64) -> Result<Cow<'_, [u8]>> {
        let io = |message: String| ModelError::Io {
            path: path.to_path_buf(),
            message,
        };
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| {
                io(format!(
                    "{len} bytes at {offset} lie past the end of the file"
                ))
            })?;
        match self {
            FileBytes::Whole(b) => Ok(Cow::Borrowed(&b[offset as usize..end as usize])),
            FileBytes::Ranged(r) => Ok(Cow::Owned(r.read(offset, len as usize).map_err(io)?)),
        }
    }

    /// The whole file, in memory (a small file: a config, a tokenizer, a `.pth` archive).
    pub fn into_vec(self, path: &Path) -> Result<Vec<u8>> {
        match self {
            FileBytes::Whole(b) => Ok(b.into_vec()),
            r => Ok(r.range(path, 0, r.size())?.into_owned()),
        }
    }
}

/// A file's bytes, read on demand.
pub trait RangeRead: ThreadSafe {
    /// The file's size in bytes.
    fn size(&self) -> u64;
    /// `len` bytes at `offset` (within the file), or why they could not be read.
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String>;
}

/// Send + Sync natively, where loaders share files and work with threads; nothing in a
/// browser, whose wasm runs on one thread and whose readers are JavaScript objects.
#[cfg(not(target_arch = "wasm32"))]
pub trait ThreadSafe: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync> ThreadSafe for T {}
#[cfg(target_arch = "wasm32")]
pub trait ThreadSafe {}
#[cfg(target_arch = "wasm32")]
impl<T> ThreadSafe for T {}

/// Bytes in memory as a [`RangeRead`] (for tests of the ranged paths).
impl RangeRead for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let start = usize::try_from(offset).map_err(|_| "offset out of range".to_string())?;
        self.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                format!(
                    "{len} bytes at {offset} lie past the end ({} bytes)",
                    self.len()
                )
            })
    }
}

/// The files of tests/fixtures' folders whose names end in `.{ext}` (for the tests that read
/// them whole and ranged).
#[cfg(test)]
pub(crate) fn fixture_files(ext: &str) -> Vec<std::path::PathBuf> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&fixtures).expect("fixtures") {
        for f in std::fs::read_dir(dir.expect("entry").path())
            .into_iter()
            .flatten()
        {
            let p = f.expect("entry").path();
            if p.extension().is_some_and(|e| e == ext) {
                files.push(p);
            }
        }
    }
    files
}

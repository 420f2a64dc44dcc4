//! Files read a range at a time instead of whole: a browser's model file (in the Origin
//! Private File System, a user's `File`, or a download kept as a `Blob`), which the wasm
//! engine must not copy whole into its memory. A GGUF file read so holds its header in
//! memory and reads each tensor's bytes when the loader asks for them.

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

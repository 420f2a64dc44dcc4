//! Crafted model files for the hostile-file tests: a small GGUF writer and a temporary folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A GGUF v3 file built key by key and tensor by tensor (alignment 32).
#[derive(Default)]
pub struct Gguf {
    kvs: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

impl Gguf {
    /// Metadata entry: key, type id, value bytes.
    fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
        put_str(&mut self.kvs, key);
        self.kvs.extend_from_slice(&ty.to_le_bytes());
        self.kvs.extend_from_slice(value);
        self.n_kv += 1;
        self
    }

    pub fn str(self, key: &str, v: &str) -> Self {
        let mut b = Vec::new();
        put_str(&mut b, v);
        self.kv(key, 8, &b)
    }

    pub fn u32(self, key: &str, v: u32) -> Self {
        self.kv(key, 4, &v.to_le_bytes())
    }

    pub fn u64(self, key: &str, v: u64) -> Self {
        self.kv(key, 10, &v.to_le_bytes())
    }

    pub fn f32(self, key: &str, v: f32) -> Self {
        self.kv(key, 6, &v.to_le_bytes())
    }

    pub fn strs(self, key: &str, v: &[&str]) -> Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut b, s);
        }
        self.kv(key, 9, &b)
    }

    /// An f32 tensor with `dims` in ggml order (row length first), filled with 0.5.
    pub fn tensor(mut self, name: &str, dims: &[u64]) -> Self {
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        put_str(&mut self.infos, name);
        self.infos
            .extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend_from_slice(&d.to_le_bytes());
        }
        self.infos.extend_from_slice(&0u32.to_le_bytes()); // F32
        self.infos
            .extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        let n: u64 = dims.iter().product();
        for _ in 0..n {
            self.data.extend_from_slice(&0.5f32.to_le_bytes());
        }
        self.n_tensors += 1;
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&self.n_tensors.to_le_bytes());
        b.extend_from_slice(&self.n_kv.to_le_bytes());
        b.extend_from_slice(&self.kvs);
        b.extend_from_slice(&self.infos);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend_from_slice(&self.data);
        b
    }
}

/// A tiny llama GGUF's metadata (hidden 8, 2 heads, 1 layer, vocab 4), without tensors;
/// `block_count` and the q tensor's dims are what the tests vary.
pub fn llama(block_count: u64) -> Gguf {
    Gguf::default()
        .str("general.architecture", "llama")
        .u32("llama.embedding_length", 8)
        .u32("llama.feed_forward_length", 16)
        .u64("llama.block_count", block_count)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 2)
        .u32("llama.context_length", 64)
        .u32("llama.vocab_size", 4)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
}

/// A fresh empty folder under the target directory's tmp, named after the test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test folder");
    dir
}

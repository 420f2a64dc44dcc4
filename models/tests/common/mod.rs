//! Crafted model files for the GGUF and hostile-file tests (models, tests and desktop include
//! this file): a GGUF writer (any version, alignment and metadata type) and a temporary folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kestrel_models::formats::gguf::{GgmlType, GgufArray, GgufValue, DEFAULT_ALIGNMENT};

/// A minimal GGUF writer for the tests.
pub struct Writer {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

pub fn put_array(buf: &mut Vec<u8>, a: &GgufArray) {
    buf.extend_from_slice(&a.element_type().id().to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        GgufArray::U8(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::I8(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::U16(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::I16(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::U32(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::I32(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::F32(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::Bool(v) => v.iter().for_each(|&x| buf.push(x as u8)),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(buf, s)),
        GgufArray::Array(v) => v.iter().for_each(|x| put_array(buf, x)),
        GgufArray::U64(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::I64(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgufArray::F64(v) => v
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
    }
}

pub fn put_value(buf: &mut Vec<u8>, v: &GgufValue) {
    buf.extend_from_slice(&v.value_type().id().to_le_bytes());
    match v {
        GgufValue::U8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(*x as u8),
        GgufValue::String(s) => put_str(buf, s),
        GgufValue::Array(a) => put_array(buf, a),
        GgufValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
    }
}

pub fn pad_to(buf: &mut Vec<u8>, align: u64) {
    while !(buf.len() as u64).is_multiple_of(align) {
        buf.push(0);
    }
}

impl Writer {
    pub fn new(version: u32) -> Writer {
        Writer {
            version,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(&mut self, key: &str, v: GgufValue) -> &mut Self {
        if key == "general.alignment" {
            self.alignment = v.as_u64().unwrap();
        }
        self.metadata.push((key.to_string(), v));
        self
    }

    /// A tensor with `dims` in ggml order, filled with a recognisable byte pattern.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> &mut Self {
        let n: u64 = dims.iter().product();
        let bytes = (n / ty.block_size() as u64 * ty.type_size() as u64) as usize;
        let seed = self.tensors.len() as u8;
        let data = (0..bytes)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect();
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty.id(), data));
        self
    }

    /// An f32 tensor with `dims` in ggml order, every element `value`.
    pub fn f32_tensor(&mut self, name: &str, dims: &[u64], value: f32) -> &mut Self {
        let n: u64 = dims.iter().product();
        let data = (0..n).flat_map(|_| value.to_le_bytes()).collect();
        self.tensors
            .push((name.to_string(), dims.to_vec(), GgmlType::F32.id(), data));
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut b, k);
            put_value(&mut b, v);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += data.len() as u64;
            offset = offset.div_ceil(self.alignment) * self.alignment;
        }
        pad_to(&mut b, self.alignment);
        for (i, (_, _, _, data)) in self.tensors.iter().enumerate() {
            b.extend_from_slice(data);
            if i + 1 < self.tensors.len() {
                pad_to(&mut b, self.alignment);
            }
        }
        b
    }
}

/// The crafted-file tests' GGUF builder: [`Writer`] (v3, alignment 32) by value, with
/// typed metadata and f32 tensors filled with 0.5.
pub struct Gguf(Writer);

impl Default for Gguf {
    fn default() -> Gguf {
        Gguf(Writer::new(3))
    }
}

impl Gguf {
    fn kv(mut self, key: &str, v: GgufValue) -> Self {
        self.0.kv(key, v);
        self
    }

    pub fn str(self, key: &str, v: &str) -> Self {
        self.kv(key, GgufValue::String(v.to_string()))
    }

    pub fn u32(self, key: &str, v: u32) -> Self {
        self.kv(key, GgufValue::U32(v))
    }

    pub fn u64(self, key: &str, v: u64) -> Self {
        self.kv(key, GgufValue::U64(v))
    }

    pub fn f32(self, key: &str, v: f32) -> Self {
        self.kv(key, GgufValue::F32(v))
    }

    pub fn strs(self, key: &str, v: &[&str]) -> Self {
        let v = v.iter().map(|s| s.to_string()).collect();
        self.kv(key, GgufValue::Array(GgufArray::String(v)))
    }

    /// An f32 tensor with `dims` in ggml order (row length first), filled with 0.5.
    pub fn tensor(mut self, name: &str, dims: &[u64]) -> Self {
        self.0.f32_tensor(name, dims, 0.5);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.bytes()
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

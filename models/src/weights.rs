//! Host-side tensors from model files, and their upload to the GPU with shape checks.
//! Matrices keep their f16 storage on the GPU; BF16 is widened to f32; vectors become f32.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kestrel_runtime::quant::{self, QuantFormat};
use kestrel_runtime::tensor::{GpuWeight, HostData};
use kestrel_runtime::Gpu;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDType {
    F32,
    F16,
    BF16,
    /// ggml blocks, kept quantized on the GPU.
    Quant(QuantFormat),
}

/// A tensor's bytes as stored in its file.
pub struct HostTensor<'a> {
    pub name: String,
    pub file: PathBuf,
    pub shape: Vec<usize>,
    pub dtype: HostDType,
    /// Borrowed from the file, or owned when loading had to reorder rows.
    pub bytes: Cow<'a, [u8]>,
}

/// Anything that yields named tensors (safetensors shards today; GGUF next).
pub trait TensorSource {
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>>;
    fn contains(&self, name: &str) -> bool;
    /// The file reported in errors about this source.
    fn origin(&self) -> &Path;
}

impl HostTensor<'_> {
    fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            HostDType::F32 => bytemuck::pod_collect_to_vec(&self.bytes),
            HostDType::Quant(q) => quant::dequantize(q, &self.bytes),
            HostDType::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            HostDType::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    fn expect_numel(&self, expected: &[usize]) -> Result<()> {
        let n: usize = expected.iter().product();
        let shape_ok = self.shape == expected
            || (self.shape.iter().product::<usize>() == n && expected.len() == 1);
        if !shape_ok {
            return Err(ModelError::TensorShape {
                file: self.file.clone(),
                name: self.name.clone(),
                expected: expected.to_vec(),
                got: self.shape.clone(),
            });
        }
        Ok(())
    }
}

/// Uploads tensors from a source, checking shapes, and counts the bytes on the GPU.
pub struct Uploader<'a> {
    pub gpu: &'a Arc<Gpu>,
    pub source: &'a dyn TensorSource,
    pub gpu_bytes: u64,
    /// Bytes those tensors take in the file (to report GPU memory against it).
    pub file_bytes: u64,
}

impl<'a> Uploader<'a> {
    pub fn new(gpu: &'a Arc<Gpu>, source: &'a dyn TensorSource) -> Self {
        Uploader {
            gpu,
            source,
            gpu_bytes: 0,
            file_bytes: 0,
        }
    }

    /// A matrix [rows, cols], kept in f16 when stored as f16.
    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Arc<GpuWeight>> {
        let t = self.source.tensor(name)?;
        t.expect_numel(&[rows, cols])?;
        self.file_bytes += t.bytes.len() as u64;
        let w = match t.dtype {
            HostDType::F16 => {
                let bits: Vec<u16> = bytemuck::pod_collect_to_vec(&t.bytes);
                GpuWeight::upload(self.gpu, name, rows, cols, HostData::F16(&bits))?
            }
            HostDType::Quant(q) => {
                GpuWeight::upload(self.gpu, name, rows, cols, HostData::Quant(q, &t.bytes))?
            }
            _ => GpuWeight::upload(self.gpu, name, rows, cols, HostData::F32(&t.to_f32()))?,
        };
        self.gpu_bytes += w.bytes();
        Ok(w)
    }

    /// The output projection `lm_head.weight` [vocab, hidden], or the embedding table when
    /// the embeddings are tied and the file has no separate head.
    pub fn lm_head(
        &mut self,
        embed: &Arc<GpuWeight>,
        tie: bool,
        vocab: usize,
        hidden: usize,
    ) -> Result<Arc<GpuWeight>> {
        if tie && !self.source.contains("lm_head.weight") {
            return Ok(embed.clone());
        }
        self.matrix("lm_head.weight", vocab, hidden)
    }

    /// A vector of `n` values, always f32 on the GPU.
    pub fn vector(&mut self, name: &str, n: usize) -> Result<Arc<GpuWeight>> {
        let t = self.source.tensor(name)?;
        t.expect_numel(&[n])?;
        self.file_bytes += t.bytes.len() as u64;
        self.vector_from(name, &t.to_f32())
    }

    /// Upload computed values (e.g. RoPE frequencies) as a vector.
    pub fn vector_from(&mut self, name: &str, data: &[f32]) -> Result<Arc<GpuWeight>> {
        let w = GpuWeight::upload(self.gpu, name, 1, data.len(), HostData::F32(data))?;
        self.gpu_bytes += w.bytes();
        Ok(w)
    }

    /// Upload computed values (a re-laid-out matrix) as a matrix [rows, cols] in f32.
    pub fn matrix_from(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Arc<GpuWeight>> {
        let w = GpuWeight::upload(self.gpu, name, rows, cols, HostData::F32(data))?;
        self.gpu_bytes += w.bytes();
        Ok(w)
    }

    /// A tensor of `shape` read to the host as f32 (to derive constants from it).
    pub fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.source.tensor(name)?;
        let n: usize = shape.iter().product();
        if t.shape.iter().product::<usize>() != n {
            return Err(ModelError::TensorShape {
                file: t.file.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        self.file_bytes += t.bytes.len() as u64;
        Ok(t.to_f32())
    }

    /// Rows `start..start + count` of a matrix [rows, cols] as a weight of its own (a fused
    /// projection split into the parts a graph uses separately), kept in f16 or quantized
    /// when stored so.
    pub fn matrix_rows(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        start: usize,
        count: usize,
    ) -> Result<Arc<GpuWeight>> {
        let t = self.source.tensor(name)?;
        t.expect_numel(&[rows, cols])?;
        let row_bytes = t.bytes.len() / rows.max(1);
        let bytes = &t.bytes[start * row_bytes..(start + count) * row_bytes];
        if start == 0 {
            self.file_bytes += t.bytes.len() as u64;
        }
        let part = format!("{name}[{start}..{}]", start + count);
        let w = match t.dtype {
            HostDType::F16 => {
                let bits: Vec<u16> = bytemuck::pod_collect_to_vec(bytes);
                GpuWeight::upload(self.gpu, &part, count, cols, HostData::F16(&bits))?
            }
            HostDType::Quant(q) => {
                GpuWeight::upload(self.gpu, &part, count, cols, HostData::Quant(q, bytes))?
            }
            _ => {
                let sub = HostTensor {
                    name: part.clone(),
                    file: t.file.clone(),
                    shape: vec![count, cols],
                    dtype: t.dtype,
                    bytes: Cow::Borrowed(bytes),
                };
                GpuWeight::upload(self.gpu, &part, count, cols, HostData::F32(&sub.to_f32()))?
            }
        };
        self.gpu_bytes += w.bytes();
        Ok(w)
    }

    /// A mixture of experts' matrices, each [rows, cols], stacked by rows into one weight
    /// [experts * rows, cols] (kept f16 or quantized when stored so): from one tensor per
    /// expert (`per_expert(e)`, Hugging Face checkpoints), or from one 3-D tensor
    /// [experts, rows, cols] named `stacked` (GGUF's `ffn_*_exps`).
    pub fn experts(
        &mut self,
        stacked: &str,
        per_expert: impl Fn(usize) -> String,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Arc<GpuWeight>> {
        if !self.source.contains(&per_expert(0)) && self.source.contains(stacked) {
            let t = self.source.tensor(stacked)?;
            if t.shape != [experts, rows, cols] {
                return Err(ModelError::TensorShape {
                    file: t.file.clone(),
                    name: t.name.clone(),
                    expected: vec![experts, rows, cols],
                    got: t.shape.clone(),
                });
            }
            return self.upload_stacked(stacked, experts, rows, cols, vec![t]);
        }
        let mut parts = Vec::with_capacity(experts);
        for e in 0..experts {
            let t = self.source.tensor(&per_expert(e))?;
            t.expect_numel(&[rows, cols])?;
            if t.dtype != parts.first().map_or(t.dtype, |p: &HostTensor<'_>| p.dtype) {
                return Err(ModelError::UnsupportedDtype {
                    file: t.file.clone(),
                    name: t.name.clone(),
                    dtype: format!("{:?}, unlike expert 0's {:?}", t.dtype, parts[0].dtype),
                });
            }
            parts.push(t);
        }
        self.upload_stacked(stacked, experts, rows, cols, parts)
    }

    fn upload_stacked(
        &mut self,
        name: &str,
        experts: usize,
        rows: usize,
        cols: usize,
        parts: Vec<HostTensor<'_>>,
    ) -> Result<Arc<GpuWeight>> {
        let all = experts * rows;
        self.file_bytes += parts.iter().map(|t| t.bytes.len() as u64).sum::<u64>();
        let stored = || -> Vec<u8> { parts.iter().flat_map(|t| t.bytes.iter().copied()).collect() };
        let w = match parts.first().map(|t| t.dtype) {
            Some(HostDType::F16) => {
                let bits: Vec<u16> = bytemuck::pod_collect_to_vec(&stored());
                GpuWeight::upload_experts(self.gpu, name, experts, all, cols, HostData::F16(&bits))?
            }
            Some(HostDType::Quant(q)) => {
                let bytes = stored();
                let data = HostData::Quant(q, &bytes);
                GpuWeight::upload_experts(self.gpu, name, experts, all, cols, data)?
            }
            _ => {
                let f: Vec<f32> = parts.iter().flat_map(|t| t.to_f32()).collect();
                GpuWeight::upload_experts(self.gpu, name, experts, all, cols, HostData::F32(&f))?
            }
        };
        self.gpu_bytes += w.bytes();
        Ok(w)
    }

    pub fn optional_vector(&mut self, name: &str, n: usize) -> Result<Option<Arc<GpuWeight>>> {
        if self.source.contains(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }
}

//! Tensors as a model file stores them (name, shape, dtype, bytes), and the trait every
//! format implements to hand them out by name.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use kestrel_runtime::quant::{self, QuantFormat};

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

/// Anything that yields named tensors: safetensors shards, a GGUF file, or a renaming view
/// of either.
pub trait TensorSource {
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>>;
    fn contains(&self, name: &str) -> bool;
    /// The file reported in errors about this source.
    fn origin(&self) -> &Path;
}

impl HostTensor<'_> {
    /// The values widened (or dequantized) to f32.
    pub fn to_f32(&self) -> Vec<f32> {
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

    /// Check the shape against `expected` (a vector may be stored with extra unit dims).
    pub fn expect_numel(&self, expected: &[usize]) -> Result<()> {
        let shape_ok = self.shape == expected
            || (expected.len() == 1
                && numel(&self.shape).is_some()
                && numel(&self.shape) == numel(expected));
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

    /// This tensor, or an error when a dimension is zero: every weight holds values.
    pub fn non_empty(self) -> Result<Self> {
        if self.shape.contains(&0) {
            return Err(ModelError::EmptyTensor {
                file: self.file,
                name: self.name,
                shape: self.shape,
            });
        }
        Ok(self)
    }
}

/// The element count of `shape`, or `None` when it overflows.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

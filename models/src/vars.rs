//! Scoped tensor names and their upload (after candle's `VarBuilder::pp`). A family walks its
//! checkpoint's name tree — `vb.pp("model").pp("layers").pp(3).pp("self_attn")` — and asks
//! for leaves (`attn.matrix("q_proj.weight", rows, cols)`); it never formats a full name.
//! Errors still name the full tensor and its file.
//!
//! Uploads check shapes and count bytes: matrices keep their f16 or bf16 storage or ggml
//! blocks on the GPU (see [`upload_as_stored`]), vectors become f32.

use std::cell::Cell;
use std::fmt::Display;
use std::sync::Arc;

use kestrel_runtime::tensor::{GpuWeight, HostData};
use kestrel_runtime::Gpu;

use crate::error::{ModelError, Result};
use crate::formats::host::{HostDType, HostTensor, TensorSource};

/// Bytes of the loaded weights: on the GPU, and the same tensors in the model file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightBytes {
    pub gpu: u64,
    pub file: u64,
}

/// The tensors of a source under a name prefix, with the GPU they go to and the byte counters
/// every scope of one load shares.
#[derive(Clone)]
pub struct Vars<'a> {
    gpu: &'a Arc<Gpu>,
    source: &'a dyn TensorSource,
    bytes: &'a Cell<WeightBytes>,
    prefix: String,
}

impl<'a> Vars<'a> {
    /// The root scope (no prefix) of `source`; uploads add to `bytes`.
    pub fn root(
        gpu: &'a Arc<Gpu>,
        source: &'a dyn TensorSource,
        bytes: &'a Cell<WeightBytes>,
    ) -> Vars<'a> {
        Vars {
            gpu,
            source,
            bytes,
            prefix: String::new(),
        }
    }

    /// The scope `part` below this one (`part` may itself hold dots, or be a layer index;
    /// an empty part is this scope).
    pub fn pp(&self, part: impl Display) -> Vars<'a> {
        let part = part.to_string();
        Vars {
            prefix: match part.is_empty() {
                true => self.prefix.clone(),
                false => self.name(&part),
            },
            ..self.clone()
        }
    }

    /// The same scope over another source (a renaming view of this one), sharing the counters.
    pub fn with_source<'b>(&self, source: &'b dyn TensorSource) -> Vars<'b>
    where
        'a: 'b,
    {
        Vars {
            gpu: self.gpu,
            source,
            bytes: self.bytes,
            prefix: self.prefix.clone(),
        }
    }

    pub fn source(&self) -> &'a dyn TensorSource {
        self.source
    }

    /// The full name of `leaf` in this scope.
    pub fn name(&self, leaf: &str) -> String {
        match self.prefix.is_empty() {
            true => leaf.to_string(),
            false => format!("{}.{leaf}", self.prefix),
        }
    }

    pub fn contains(&self, leaf: &str) -> bool {
        self.source.contains(&self.name(leaf))
    }

    fn tensor(&self, leaf: &str) -> Result<HostTensor<'a>> {
        self.source.tensor(&self.name(leaf))
    }

    fn count(&self, gpu: u64, file: u64) {
        let b = self.bytes.get();
        self.bytes.set(WeightBytes {
            gpu: b.gpu + gpu,
            file: b.file + file,
        });
    }

    /// Upload `data` as `name` [rows, cols], counting its GPU bytes.
    fn upload(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        data: HostData,
    ) -> Result<Arc<GpuWeight>> {
        let w = GpuWeight::upload(self.gpu, name, rows, cols, data)?;
        self.count(w.bytes(), 0);
        Ok(w)
    }

    /// `experts` stacked matrices [rows, cols] in all stored as `dtype` (see
    /// [`upload_as_stored`]), counting their GPU bytes.
    fn upload_stored(
        &self,
        name: &str,
        experts: usize,
        [rows, cols]: [usize; 2],
        dtype: HostDType,
        bytes: &[u8],
    ) -> Result<Arc<GpuWeight>> {
        let w = upload_as_stored(self.gpu, name, experts, [rows, cols], dtype, bytes)?;
        self.count(w.bytes(), 0);
        Ok(w)
    }

    /// A matrix [rows, cols], kept as stored (see [`upload_as_stored`]).
    pub fn matrix(&self, leaf: &str, rows: usize, cols: usize) -> Result<Arc<GpuWeight>> {
        let t = self.tensor(leaf)?;
        t.expect_numel(&[rows, cols])?;
        self.count(0, t.bytes.len() as u64);
        self.upload_stored(&self.name(leaf), 1, [rows, cols], t.dtype, &t.bytes)
    }

    /// A vector of `n` values, always f32 on the GPU.
    pub fn vector(&self, leaf: &str, n: usize) -> Result<Arc<GpuWeight>> {
        let t = self.tensor(leaf)?;
        t.expect_numel(&[n])?;
        self.count(0, t.bytes.len() as u64);
        self.computed_vector(leaf, &t.to_f32())
    }

    /// [`Vars::vector`] when the file has the tensor, else none.
    pub fn optional_vector(&self, leaf: &str, n: usize) -> Result<Option<Arc<GpuWeight>>> {
        match self.contains(leaf) {
            true => self.vector(leaf, n).map(Some),
            false => Ok(None),
        }
    }

    /// Computed values (e.g. RoPE frequencies) as a vector labelled `label` in this scope.
    pub fn computed_vector(&self, label: &str, data: &[f32]) -> Result<Arc<GpuWeight>> {
        self.upload(&self.name(label), 1, data.len(), HostData::F32(data))
    }

    /// Computed values (a re-laid-out matrix) as a matrix [rows, cols] in f32.
    pub fn computed_matrix(
        &self,
        label: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Arc<GpuWeight>> {
        self.upload(&self.name(label), rows, cols, HostData::F32(data))
    }

    /// A tensor of `shape` read to the host as f32 (to derive constants from it).
    pub fn host(&self, leaf: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensor(leaf)?;
        let n: usize = shape.iter().product();
        if t.shape.iter().product::<usize>() != n {
            return Err(ModelError::TensorShape {
                file: t.file.clone(),
                name: self.name(leaf),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        self.count(0, t.bytes.len() as u64);
        Ok(t.to_f32())
    }

    /// Check a tensor's exact shape (its element count alone would not show, e.g., a config
    /// whose head size disagrees with the file).
    pub fn expect_shape(&self, leaf: &str, shape: &[usize]) -> Result<()> {
        let t = self.tensor(leaf)?;
        if t.shape != shape {
            return Err(ModelError::TensorShape {
                file: t.file.clone(),
                name: self.name(leaf),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(())
    }

    /// Rows `start..start + count` of a matrix [rows, cols] as a weight of its own (a fused
    /// projection split into the parts a graph uses separately), kept as stored. The file's
    /// bytes are counted with the part at row 0.
    pub fn matrix_rows(
        &self,
        leaf: &str,
        [rows, cols]: [usize; 2],
        start: usize,
        count: usize,
    ) -> Result<Arc<GpuWeight>> {
        let t = self.tensor(leaf)?;
        t.expect_numel(&[rows, cols])?;
        let row_bytes = t.bytes.len() / rows.max(1);
        if start == 0 {
            self.count(0, t.bytes.len() as u64);
        }
        let name = format!("{}[{start}..{}]", self.name(leaf), start + count);
        let part = &t.bytes[start * row_bytes..(start + count) * row_bytes];
        self.upload_stored(&name, 1, [count, cols], t.dtype, part)
    }

    /// Matrices `parts` (leaf, rows) of width `cols` as one weight labelled `label`, when the
    /// file stores them in one dtype (None otherwise: the caller keeps them apart). Stacked
    /// by rows (q, k and v as one projection), or with `interleave` row i of each part in
    /// turn (gate and up as (gate, up) row pairs; every part then has the same rows), kept as
    /// stored.
    pub fn concat_matrices(
        &self,
        label: &str,
        parts: &[(&str, usize)],
        cols: usize,
        interleave: bool,
    ) -> Result<Option<Arc<GpuWeight>>> {
        let mut tensors = Vec::with_capacity(parts.len());
        for &(leaf, rows) in parts {
            let t = self.tensor(leaf)?;
            t.expect_numel(&[rows, cols])?;
            tensors.push(t);
        }
        let Some(first) = tensors.first() else {
            return Ok(None);
        };
        if tensors.iter().any(|t| t.dtype != first.dtype)
            || (interleave && parts.iter().any(|p| p.1 != parts[0].1))
        {
            return Ok(None);
        }
        let rows: usize = parts.iter().map(|p| p.1).sum();
        self.count(0, tensors.iter().map(|t| t.bytes.len() as u64).sum());
        // The parts' rows in the weight's order, as (part, row) pairs.
        let order: Vec<(usize, usize)> = match interleave {
            true => (0..parts[0].1)
                .flat_map(|r| (0..parts.len()).map(move |p| (p, r)))
                .collect(),
            false => (0..parts.len())
                .flat_map(|p| (0..parts[p].1).map(move |r| (p, r)))
                .collect(),
        };
        // Rows are whole in every stored dtype (a quantized row is whole blocks).
        let row = |p: usize| tensors[p].bytes.len() / parts[p].1.max(1);
        // Whole rows at a time: a byte-by-byte iterator copy took most of a load's time.
        let mut bytes = Vec::with_capacity(tensors.iter().map(|t| t.bytes.len()).sum());
        for &(p, r) in &order {
            bytes.extend_from_slice(&tensors[p].bytes[r * row(p)..(r + 1) * row(p)]);
        }
        let name = self.name(label);
        let w = self.upload_stored(&name, 1, [rows, cols], first.dtype, &bytes)?;
        Ok(Some(w))
    }

    /// Vectors `parts` (leaf, length) one after another as one f32 vector labelled `label`;
    /// a part the file lacks is zeros, unless `required`. None when the file has none.
    pub fn concat_vectors(
        &self,
        label: &str,
        parts: &[(&str, usize)],
        required: bool,
    ) -> Result<Option<Arc<GpuWeight>>> {
        if !required && !parts.iter().any(|(leaf, _)| self.contains(leaf)) {
            return Ok(None);
        }
        let mut all = Vec::new();
        for &(leaf, n) in parts {
            match required || self.contains(leaf) {
                true => all.extend(self.host(leaf, &[n])?),
                false => all.resize(all.len() + n, 0.0),
            }
        }
        self.computed_vector(label, &all).map(Some)
    }

    /// A mixture of experts' matrices, each [rows, cols], stacked by rows into one weight
    /// [experts * rows, cols] (kept as stored). This scope is the
    /// experts' (e.g. `model.layers.3.mlp.experts`): one tensor per expert `{e}.{leaf}`
    /// (Hugging Face checkpoints), or one 3-D tensor [experts, rows, cols] named `leaf`
    /// (GGUF's `ffn_*_exps`).
    pub fn experts(
        &self,
        leaf: &str,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Arc<GpuWeight>> {
        let stacked = self.name(leaf);
        if !self.pp(0).contains(leaf) && self.contains(leaf) {
            let t = self.tensor(leaf)?;
            if t.shape != [experts, rows, cols] {
                return Err(ModelError::TensorShape {
                    file: t.file.clone(),
                    name: t.name.clone(),
                    expected: vec![experts, rows, cols],
                    got: t.shape.clone(),
                });
            }
            return self.upload_stacked(&stacked, experts, [rows, cols], vec![t]);
        }
        let mut parts = Vec::with_capacity(experts);
        for e in 0..experts {
            let t = self.pp(e).tensor(leaf)?;
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
        self.upload_stacked(&stacked, experts, [rows, cols], parts)
    }

    fn upload_stacked(
        &self,
        name: &str,
        experts: usize,
        [rows, cols]: [usize; 2],
        parts: Vec<HostTensor<'_>>,
    ) -> Result<Arc<GpuWeight>> {
        self.count(0, parts.iter().map(|t| t.bytes.len() as u64).sum::<u64>());
        let dtype = parts.first().map_or(HostDType::F32, |t| t.dtype);
        let bytes = parts
            .iter()
            .map(|t| &t.bytes[..])
            .collect::<Vec<_>>()
            .concat();
        self.upload_stored(name, experts, [experts * rows, cols], dtype, &bytes)
    }
}

/// `experts` stacked matrices [rows, cols] in all, from `bytes` stored as `dtype`: f16, bf16
/// and ggml blocks stay as stored on the GPU (the kernels read them as they are), f32 stays
/// f32.
fn upload_as_stored(
    gpu: &Gpu,
    name: &str,
    experts: usize,
    [rows, cols]: [usize; 2],
    dtype: HostDType,
    bytes: &[u8],
) -> Result<Arc<GpuWeight>> {
    let up = |data: HostData<'_>| GpuWeight::upload_experts(gpu, name, experts, rows, cols, data);
    Ok(match dtype {
        HostDType::F32 => up(HostData::F32(&bytemuck::pod_collect_to_vec(bytes)))?,
        HostDType::F16 => up(HostData::F16(&bytemuck::pod_collect_to_vec(bytes)))?,
        HostDType::BF16 => up(HostData::BF16(&bytemuck::pod_collect_to_vec(bytes)))?,
        HostDType::Quant(q) => up(HostData::Quant(q, bytes))?,
    })
}

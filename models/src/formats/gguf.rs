//! GGUF files (llama.cpp's single-file format, versions 2 and 3): metadata, tensor infos and
//! the tensors' bytes. Memory-mapped natively, owned bytes in the browser.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata (key string, u32 value type, value), the tensor infos (name, u32 n_dims,
//! u64 dims in ggml order — `dims[0]` is the row length, the fastest-varying index —, u32 ggml
//! type, u64 offset into the data section), padding to `general.alignment` (default 32), and
//! the data section. Strings are a u64 byte length and UTF-8 bytes, without a terminator.
//!
//! Every read is bounds-checked: a truncated or corrupt file gives [`ModelError::Gguf`]
//! naming the file, never a panic, and no count read from the file allocates more than the
//! bytes that remain could hold.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::formats::range_read::{FileBytes, RangeRead};
use crate::formats::safetensors::Blob;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are rejected (a corrupt file must not overflow the stack).
const MAX_ARRAY_DEPTH: usize = 16;

/// The metadata value types of GGUF, by their ids in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    pub fn from_id(id: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The fewest bytes one value of this type takes in a file.
    fn min_size(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            // u64 length
            String => 8,
            // u32 element type + u64 count
            Array => 12,
        }
    }
}

/// A typed array of metadata values (arrays may nest).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufArray {
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The type of the elements.
    pub fn element_type(&self) -> GgufValueType {
        match self {
            GgufArray::U8(_) => GgufValueType::U8,
            GgufArray::I8(_) => GgufValueType::I8,
            GgufArray::U16(_) => GgufValueType::U16,
            GgufArray::I16(_) => GgufValueType::I16,
            GgufArray::U32(_) => GgufValueType::U32,
            GgufArray::I32(_) => GgufValueType::I32,
            GgufArray::F32(_) => GgufValueType::F32,
            GgufArray::Bool(_) => GgufValueType::Bool,
            GgufArray::String(_) => GgufValueType::String,
            GgufArray::Array(_) => GgufValueType::Array,
            GgufArray::U64(_) => GgufValueType::U64,
            GgufArray::I64(_) => GgufValueType::I64,
            GgufArray::F64(_) => GgufValueType::F64,
        }
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }

    /// The elements as i64 when they are integers of any width (u64 values above
    /// `i64::MAX` give `None`).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            GgufArray::U8(v) => conv(v, |x| Some(x.into())),
            GgufArray::I8(v) => conv(v, |x| Some(x.into())),
            GgufArray::U16(v) => conv(v, |x| Some(x.into())),
            GgufArray::I16(v) => conv(v, |x| Some(x.into())),
            GgufArray::U32(v) => conv(v, |x| Some(x.into())),
            GgufArray::I32(v) => conv(v, |x| Some(x.into())),
            GgufArray::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            GgufArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The elements as f32 when they are numbers (floats, or integers converted).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        match self {
            GgufArray::F32(v) => Some(v.clone()),
            GgufArray::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            other => other
                .to_i64_vec()
                .map(|v| v.into_iter().map(|x| x as f32).collect()),
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// Any integer value, of any width, as i128 (which holds them all).
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(x) => x.into(),
            GgufValue::I8(x) => x.into(),
            GgufValue::U16(x) => x.into(),
            GgufValue::I16(x) => x.into(),
            GgufValue::U32(x) => x.into(),
            GgufValue::I32(x) => x.into(),
            GgufValue::U64(x) => x.into(),
            GgufValue::I64(x) => x.into(),
            _ => return None,
        })
    }

    /// An integer of any width that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|x| u64::try_from(x).ok())
    }

    /// An integer of any width that fits in u32.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_i128().and_then(|x| u32::try_from(x).ok())
    }

    /// An integer of any width that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|x| i64::try_from(x).ok())
    }

    /// A float, or an integer converted to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(x) => Some(x.into()),
            GgufValue::F64(x) => Some(x),
            _ => self.as_i128().map(|x| x as f64),
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        self.as_f64().map(|x| x as f32)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types, by their ids in GGUF files (ids 4 and 5, and 31–33 and 36–38, were
/// removed from ggml and are not valid).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
}

impl GgmlType {
    pub const ALL: [GgmlType; 34] = {
        use GgmlType::*;
        [
            F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
            IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64,
            IQ1_M, BF16, TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0,
        ]
    };

    /// The type with this id, or `None` for an id ggml does not define.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> usize {
        self.layout().0
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.layout().1
    }

    /// (block size, bytes per block), as ggml's `type_traits` (and gguf-py's
    /// `GGML_QUANT_SIZES`) define them; QK_K = 256.
    fn layout(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 40),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            F64 => (1, 8),
            IQ1_M => (256, 56),
            BF16 => (1, 2),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
            MXFP4 => (32, 17),
            NVFP4 => (64, 36),
            Q1_0 => (128, 18),
        }
    }

    /// Whether the type is block-quantized (block size above 1).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// ggml's name of the type ("Q4_0", "F16", ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
            NVFP4 => "NVFP4",
            Q1_0 => "Q1_0",
        }
    }

    /// Bytes of a tensor of `n_elements` whose row length is `row_len`; `None` when the row
    /// length is not a multiple of the block size or the size overflows.
    pub fn bytes_for(self, row_len: u64, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !row_len.is_multiple_of(bs) || !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a tensor is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (fastest-varying).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the tensor's data from the start of the data section.
    pub offset: u64,
    /// Bytes of the tensor's data.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in row-major order, outermost first (PyTorch / safetensors order), i.e.
    /// `dims` reversed: a ggml matrix with `dims [576, 49152]` has shape `[49152, 576]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: its metadata and tensor infos, and the bytes they point into.
pub struct GgufFile {
    path: PathBuf,
    data: FileBytes,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_start: usize,
}

/// What the header says: the metadata and tensor infos, and where the data starts.
struct Header {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_start: u64,
}

/// How much of a ranged file is read for its header at first (four times more each time the
/// header turns out longer: a large vocabulary's tokens and merges take tens of MB).
const HEADER_PREFIX: u64 = 1 << 20;

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .finish()
    }
}

struct Reader<'a> {
    /// The file, or the first part of it.
    buf: &'a [u8],
    /// The whole file's length.
    file_len: u64,
    pos: usize,
    path: &'a Path,
    /// Whether a read ran past `buf` but not past the file: more of it is needed.
    short: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], file_len: u64, path: &'a Path) -> Reader<'a> {
        Reader {
            buf,
            file_len,
            pos: 0,
            path,
            short: false,
        }
    }

    /// The header: magic, version, metadata, tensor infos.
    fn header(&mut self) -> Result<Header> {
        let header = |s: &'static str| Ctx(move |f: &mut fmt::Formatter<'_>| f.write_str(s));
        let magic: [u8; 4] = self.array(&header("the magic"))?;
        if magic != GGUF_MAGIC {
            return Err(self.err(format!(
                "not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = self.u32(&header("the version"))?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(self.err(
                    "GGUF version 1 is not supported (only versions 2 and 3); \
                     convert the model again with a recent llama.cpp",
                ))
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(self.err("big-endian GGUF files are not supported"))
            }
            v => return Err(self.err(format!("unsupported GGUF version {v} (expected 2 or 3)"))),
        }
        let n_tensors = self.u64(&header("the tensor count"))?;
        let n_kv = self.u64(&header("the metadata count"))?;
        // Each metadata entry takes at least a key length, a type and one byte; each
        // tensor info at least a name length, n_dims, a type and an offset.
        let n_kv = self.check_count(n_kv, 8 + 4 + 1, &header("metadata"))?;

        let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(prealloc(n_kv));
        let mut meta_index = HashMap::with_capacity(prealloc(n_kv));
        for i in 0..n_kv {
            let key = self.string(&Ctx(|f: &mut fmt::Formatter<'_>| {
                write!(f, "the key of metadata entry {i}")
            }))?;
            let what = Ctx(|f: &mut fmt::Formatter<'_>| write!(f, "metadata '{key}'"));
            let ty = self.value_type(&what)?;
            let value = self.value(ty, &what)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(self.err(format!("duplicate metadata key '{key}'")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .map(|(_, v)| v)
        {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(self.err(format!(
                        "general.alignment must be a power of two, got {v:?}"
                    )))
                }
            },
        };

        let n_tensors = self.check_count(n_tensors, 8 + 4 + 4 + 8, &header("tensor infos"))?;
        let mut tensors = Vec::with_capacity(prealloc(n_tensors));
        for i in 0..n_tensors {
            let name = self.string(&Ctx(|f: &mut fmt::Formatter<'_>| {
                write!(f, "the name of tensor {i}")
            }))?;
            let what = Ctx(|f: &mut fmt::Formatter<'_>| write!(f, "tensor '{name}'"));
            let n_dims = self.u32(&what)? as usize;
            if n_dims > MAX_DIMS {
                return Err(self.err(format!(
                    "tensor '{name}' has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(self.u64(&what)?);
            }
            let type_id = self.u32(&what)?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                self.err(format!(
                    "tensor '{name}' has unknown ggml type id {type_id}"
                ))
            })?;
            let offset = self.u64(&what)?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    self.err(format!(
                        "tensor '{name}': element count of {dims:?} overflows"
                    ))
                })?;
            let row = dims.first().copied().unwrap_or(1);
            if !row.is_multiple_of(ggml_type.block_size() as u64) {
                return Err(self.err(format!(
                    "tensor '{name}' of type {ggml_type} has row length {row}, \
                     not a multiple of its block size {}",
                    ggml_type.block_size()
                )));
            }
            let n_bytes = ggml_type.bytes_for(row, n_elements).ok_or_else(|| {
                self.err(format!("tensor '{name}': byte size of {dims:?} overflows"))
            })?;
            if !offset.is_multiple_of(alignment) {
                return Err(self.err(format!(
                    "tensor '{name}' has offset {offset}, not a multiple of the alignment {alignment}"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_bytes,
            });
        }
        let data_start = align_up(self.pos as u64, alignment)
            .ok_or_else(|| self.err("data section offset overflows"))?;
        Ok(Header {
            version,
            metadata,
            meta_index,
            tensors,
            alignment,
            data_start,
        })
    }
    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            file: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    /// Bytes of the file after the position.
    fn remaining(&self) -> u64 {
        self.file_len - self.pos as u64
    }

    fn take(&mut self, n: u64, what: &dyn fmt::Display) -> Result<&'a [u8]> {
        let rem = self.remaining();
        if n > rem {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {}, but only {rem} remain",
                self.pos
            )));
        }
        if n > (self.buf.len() - self.pos) as u64 {
            self.short = true;
            return Err(self.err("the header is longer than the part of the file read"));
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn fmt::Display) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn fmt::Display) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn fmt::Display) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn fmt::Display) -> Result<String> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            // llama.cpp treats strings as bytes; keep what can be kept.
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        })
    }

    /// Check that `count` values of at least `min_size` bytes each can still be read.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn fmt::Display) -> Result<usize> {
        let rem = self.remaining();
        match count.checked_mul(min_size) {
            Some(need) if need <= rem => Ok(count as usize),
            _ => Err(self.err(format!(
                "{what}: count {count} cannot fit in the {rem} bytes that remain (corrupt or truncated)"
            ))),
        }
    }

    fn value_type(&mut self, what: &dyn fmt::Display) -> Result<GgufValueType> {
        let id = self.u32(what)?;
        GgufValueType::from_id(id)
            .ok_or_else(|| self.err(format!("{what}: unknown metadata value type {id}")))
    }

    fn value(&mut self, ty: GgufValueType, what: &dyn fmt::Display) -> Result<GgufValue> {
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.array::<1>(what)?[0]),
            GgufValueType::I8 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            GgufValueType::Bool => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            GgufValueType::String => GgufValue::String(self.string(what)?),
            GgufValueType::Array => GgufValue::Array(self.array_value(what, 0)?),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }

    fn fixed<T, const N: usize>(
        &mut self,
        n: usize,
        what: &dyn fmt::Display,
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let bytes = self.take((n * N) as u64, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }

    fn array_value(&mut self, what: &dyn fmt::Display, depth: usize) -> Result<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!(
                "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
            )));
        }
        let ty = self.value_type(what)?;
        let count = self.u64(what)?;
        let n = self.check_count(count, ty.min_size(), what)?;
        Ok(match ty {
            GgufValueType::U8 => GgufArray::U8(self.fixed(n, what, |[b]: [u8; 1]| b)?),
            GgufValueType::I8 => GgufArray::I8(self.fixed(n, what, |[b]: [u8; 1]| b as i8)?),
            GgufValueType::U16 => GgufArray::U16(self.fixed(n, what, u16::from_le_bytes)?),
            GgufValueType::I16 => GgufArray::I16(self.fixed(n, what, i16::from_le_bytes)?),
            GgufValueType::U32 => GgufArray::U32(self.fixed(n, what, u32::from_le_bytes)?),
            GgufValueType::I32 => GgufArray::I32(self.fixed(n, what, i32::from_le_bytes)?),
            GgufValueType::F32 => GgufArray::F32(self.fixed(n, what, f32::from_le_bytes)?),
            GgufValueType::Bool => GgufArray::Bool(self.fixed(n, what, |[b]: [u8; 1]| b != 0)?),
            GgufValueType::U64 => GgufArray::U64(self.fixed(n, what, u64::from_le_bytes)?),
            GgufValueType::I64 => GgufArray::I64(self.fixed(n, what, i64::from_le_bytes)?),
            GgufValueType::F64 => GgufArray::F64(self.fixed(n, what, f64::from_le_bytes)?),
            GgufValueType::String => {
                let mut v = Vec::with_capacity(prealloc(n));
                for _ in 0..n {
                    v.push(self.string(what)?);
                }
                GgufArray::String(v)
            }
            GgufValueType::Array => {
                let mut v = Vec::with_capacity(prealloc(n));
                for _ in 0..n {
                    v.push(self.array_value(what, depth + 1)?);
                }
                GgufArray::Array(v)
            }
        })
    }
}

/// Capacity to reserve for `n` items read from the file: counts are checked against the
/// bytes that remain, but an item in memory can be larger than in the file, so a corrupt
/// count must not reserve more than a little; real items grow the vectors as they are read.
fn prealloc(n: usize) -> usize {
    n.min(4096)
}

fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|y| y / align * align)
}

/// A `Display` for error context that is only formatted when an error happens.
struct Ctx<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Ctx<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

impl GgufFile {
    /// Memory-map and parse a GGUF file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<GgufFile> {
        let io = |e: std::io::Error| ModelError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if !path.exists() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        let f = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only and model files are not modified while loaded.
        let m = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
        GgufFile::parse(path, Blob::Mapped(m))
    }

    /// Parse a whole GGUF file already in memory. `path` names the file in errors.
    pub fn parse(path: &Path, blob: Blob) -> Result<GgufFile> {
        let header = Reader::new(&blob, blob.len() as u64, path).header()?;
        GgufFile::new(path, FileBytes::Whole(blob), header)
    }

    /// Parse a GGUF file read a range at a time: its header is read (a growing prefix until it
    /// fits) and kept; each tensor's bytes are read when asked for. `path` names the file in
    /// errors.
    pub fn parse_ranged(path: &Path, file: Box<dyn RangeRead>) -> Result<GgufFile> {
        GgufFile::parse_ranged_from(path, file, HEADER_PREFIX)
    }

    /// [`GgufFile::parse_ranged`], reading `first` bytes for the header at first (tests and
    /// fuzzing start small, so the prefix has to grow).
    pub fn parse_ranged_from(
        path: &Path,
        file: Box<dyn RangeRead>,
        first: u64,
    ) -> Result<GgufFile> {
        let len = file.size();
        let mut prefix = len.min(first.max(1));
        let header = loop {
            let buf = file
                .read(0, prefix as usize)
                .map_err(|message| ModelError::Io {
                    path: path.to_path_buf(),
                    message,
                })?;
            let mut r = Reader::new(&buf, len, path);
            match r.header() {
                Ok(h) => break h,
                Err(_) if r.short => prefix = len.min(prefix.saturating_mul(4)),
                Err(e) => return Err(e),
            }
        };
        GgufFile::new(path, FileBytes::Ranged(file), header)
    }

    fn new(path: &Path, data: FileBytes, header: Header) -> Result<GgufFile> {
        let Header {
            version,
            metadata,
            meta_index,
            tensors,
            alignment,
            data_start,
        } = header;
        let err = |message: String| ModelError::Gguf {
            file: path.to_path_buf(),
            message,
        };

        let len = data.size();
        let mut tensor_index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(err(format!("duplicate tensor name '{}'", t.name)));
            }
            let end = data_start
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes));
            match end {
                Some(end) if end <= len => {}
                _ => {
                    return Err(err(format!(
                        "truncated: tensor '{}' ({} bytes at data offset {}) ends past the end \
                         of the file ({len} bytes, data section at {data_start})",
                        t.name, t.n_bytes, t.offset
                    )))
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            data,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            // data_start <= len when there is a tensor; without tensors it is never used to
            // index, so clamp it for a consistent value.
            data_start: data_start.min(len) as usize,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> usize {
        self.data_start
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.data.size()
    }

    /// The metadata, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// An integer of any width that fits in u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u32()
    }

    /// An integer of any width that fits in u64.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// An integer of any width that fits in i64.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// A float (f32 or f64), or an integer converted.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    /// A float (f32 or f64), or an integer converted.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn get_array(&self, key: &str) -> Option<&GgufArray> {
        self.get(key)?.as_array()
    }

    pub fn get_str_array(&self, key: &str) -> Option<&[String]> {
        self.get_array(key)?.as_strings()
    }

    /// `general.architecture` ("llama", "qwen2", ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingConfigKey {
            file: self.path.clone(),
            key: key.to_string(),
        }
    }

    fn bad(&self, key: &str, expected: &str) -> ModelError {
        let got = self
            .get(key)
            .map(|v| format!("{:?}", v.value_type()))
            .unwrap_or_default();
        ModelError::BadConfigValue {
            file: self.path.clone(),
            key: key.to_string(),
            message: format!("should be {expected}, got a value of type {got}"),
        }
    }

    /// Like [`get_u32`](Self::get_u32), with an error naming the file and key.
    pub fn require_u32(&self, key: &str) -> Result<u32> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_u32()
            .ok_or_else(|| self.bad(key, "an integer that fits in u32"))
    }

    /// Like [`get_u64`](Self::get_u64), with an error naming the file and key.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_u64()
            .ok_or_else(|| self.bad(key, "a non-negative integer"))
    }

    /// Like [`get_f32`](Self::get_f32), with an error naming the file and key.
    pub fn require_f32(&self, key: &str) -> Result<f32> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_f32().ok_or_else(|| self.bad(key, "a number"))
    }

    /// Like [`get_str`](Self::get_str), with an error naming the file and key.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_str().ok_or_else(|| self.bad(key, "a string"))
    }

    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn contains_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    /// A tensor's info and exactly its bytes (borrowed from a file in memory, read from a
    /// ranged one).
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, Cow<'_, [u8]>)> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.path.clone(),
                name: name.to_string(),
            })?;
        // Inside the file: parsing checked every tensor's end against it.
        let start = self.data_start as u64 + info.offset;
        Ok((info, self.data.range(&self.path, start, info.n_bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixture GGUF read a range at a time, its header from a 16-byte first read that
    /// grows, equals the file read whole: metadata, tensor infos, every tensor's bytes; a
    /// file cut inside its header or its data is refused with the same message both ways.
    #[test]
    fn ranged_files_read_as_whole_ones() {
        let files = crate::formats::range_read::fixture_files("gguf");
        assert!(files.len() >= 10, "fixture GGUF files: {files:?}");
        for path in files {
            let bytes = std::fs::read(&path).expect("read");
            let whole = GgufFile::parse(&path, Blob::Owned(bytes.clone())).expect("whole");
            let ranged =
                GgufFile::parse_ranged_from(&path, Box::new(bytes.clone()), 16).expect("ranged");
            assert_eq!(whole.metadata, ranged.metadata, "{}", path.display());
            assert_eq!(whole.tensors, ranged.tensors, "{}", path.display());
            assert_eq!(whole.data_start, ranged.data_start);
            for t in &whole.tensors {
                let (_, a) = whole.tensor(&t.name).expect("tensor");
                let (_, b) = ranged.tensor(&t.name).expect("tensor");
                assert!(
                    matches!(b, Cow::Owned(_)) && a == b,
                    "{}: {}",
                    path.display(),
                    t.name
                );
            }
            // Inside the header, and (where there are tensors) inside the last tensor's data.
            let cuts = [whole.data_start / 2, bytes.len() - 1];
            for cut in &cuts[..1 + !whole.tensors.is_empty() as usize] {
                let cut = *cut;
                let short = bytes[..cut].to_vec();
                let a = GgufFile::parse(&path, Blob::Owned(short.clone())).unwrap_err();
                let b = GgufFile::parse_ranged_from(&path, Box::new(short), 16).unwrap_err();
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

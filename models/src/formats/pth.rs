//! PyTorch checkpoints (`torch.save` of a state dict, e.g. BlinkDL's RWKV `.pth` releases),
//! read without executing anything. The file is a zip of stored (uncompressed) entries
//! (`zip_stored`):
//! `<root>/data.pkl`, a pickle of the state dict, and `<root>/data/<key>`, the raw
//! little-endian bytes of each storage. The pickle is run by a small machine that knows only
//! what torch.save writes for a dict of tensors — dicts, tuples, strings, numbers, the
//! persistent-load storage records, and the callables `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the f32 / f16 /
//! bf16 storage types — and refuses any other opcode or GLOBAL by name. It builds values
//! only; nothing named in the file is ever called.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::formats::host::{numel, HostDType, HostTensor, TensorSource};
use crate::formats::safetensors::Blob;
use crate::formats::zip_stored::{stored_entries, ZipError};

/// What is wrong with a `.pth` file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PthError {
    #[error("{0}")]
    Zip(#[from] ZipError),
    #[error("no '<root>/data.pkl' entry (not a torch.save checkpoint)")]
    NoPickle,
    #[error("the pickle ends early")]
    Truncated,
    #[error("pickle opcode 0x{0:02x} is not one torch.save writes for a state dict")]
    Opcode(u8),
    #[error("pickle GLOBAL '{0}' is refused (only tensors, storages and OrderedDict are read)")]
    Global(String),
    #[error("malformed pickle: {0}")]
    Malformed(String),
    #[error("'{name}': {message}")]
    Tensor { name: String, message: String },
}

fn malformed(m: impl Into<String>) -> PthError {
    PthError::Malformed(m.into())
}

/// A tensor of the checkpoint: where its bytes are in the file.
#[derive(Debug, Clone, PartialEq)]
struct PthTensor {
    shape: Vec<usize>,
    dtype: HostDType,
    start: usize,
    len: usize,
}

/// A parsed `.pth` checkpoint: its tensors by name, in the file's order.
pub struct PthFile {
    path: PathBuf,
    blob: Blob,
    names: Vec<String>,
    tensors: HashMap<String, PthTensor>,
}

impl PthFile {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<PthFile> {
        PthFile::parse(path, crate::formats::safetensors::map_file(path)?)
    }

    /// Parse the checkpoint in `blob` (`path` names it in errors).
    pub fn parse(path: &Path, blob: Blob) -> Result<PthFile> {
        let err = |error| ModelError::Pth {
            file: path.to_path_buf(),
            error,
        };
        let entries = stored_entries(&blob).map_err(|e| err(e.into()))?;
        let pickle_name = entries
            .keys()
            .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .min()
            .ok_or(PthError::NoPickle)
            .map_err(err)?
            .clone();
        let root = &pickle_name[..pickle_name.len() - "data.pkl".len()];
        let (start, len) = entries[&pickle_name];
        let records = read_state_dict(&blob[start..start + len]).map_err(err)?;
        let mut names = Vec::with_capacity(records.len());
        let mut tensors = HashMap::with_capacity(records.len());
        for (name, r) in records {
            let t = r.locate(&name, root, &entries).map_err(err)?;
            if tensors.insert(name.clone(), t).is_some() {
                return Err(err(PthError::Tensor {
                    name,
                    message: "appears twice".into(),
                }));
            }
            names.push(name);
        }
        Ok(PthFile {
            path: path.to_path_buf(),
            blob,
            names,
            tensors,
        })
    }

    /// The tensor names, in the file's order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl TensorSource for PthFile {
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.path.clone(),
                name: name.to_string(),
            })?;
        HostTensor {
            name: name.to_string(),
            file: self.path.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype,
            bytes: Cow::Borrowed(&self.blob[t.start..t.start + t.len]),
        }
        .non_empty()
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn origin(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------------------
// The pickle: a stack machine over values it builds (and never calls).

/// The callables the machine knows: it builds their results itself.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(HostDType),
}

impl Global {
    fn find(module: &str, name: &str) -> std::result::Result<Global, PthError> {
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", "FloatStorage") => Global::Storage(HostDType::F32),
            ("torch", "HalfStorage") => Global::Storage(HostDType::F16),
            ("torch", "BFloat16Storage") => Global::Storage(HostDType::BF16),
            _ => return Err(PthError::Global(format!("{module}.{name}"))),
        })
    }
}

/// A tensor record: a view of a storage.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    dtype: HostDType,
    /// The storage's key: its data is `<root>/data/<key>`.
    key: String,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl Record {
    /// The tensor's bytes in the file, after checking the view is a whole row-major block
    /// inside its storage.
    fn locate(
        &self,
        name: &str,
        root: &str,
        entries: &HashMap<String, (usize, usize)>,
    ) -> std::result::Result<PthTensor, PthError> {
        let bad = |message: String| PthError::Tensor {
            name: name.to_string(),
            message,
        };
        let mut want = 1usize;
        for (d, s) in self.shape.iter().zip(&self.stride).rev() {
            if *d != 1 && *s != want {
                return Err(bad(format!(
                    "strides {:?} of shape {:?} are not row-major (a view; save .contiguous())",
                    self.stride, self.shape
                )));
            }
            want = want.saturating_mul(*d);
        }
        let entry = format!("{root}data/{}", self.key);
        let &(start, len) = entries
            .get(&entry)
            .ok_or_else(|| bad(format!("its storage '{entry}' is not in the archive")))?;
        let size = match self.dtype {
            HostDType::F32 => 4,
            _ => 2,
        };
        let count = numel(&self.shape).ok_or_else(|| bad("too many elements".into()))?;
        let range = self
            .offset
            .checked_add(count)
            .and_then(|end| end.checked_mul(size))
            .filter(|&end| end <= len);
        match range {
            Some(_) => Ok(PthTensor {
                shape: self.shape.clone(),
                dtype: self.dtype,
                start: start + self.offset * size,
                len: count * size,
            }),
            None => Err(bad(format!(
                "{count} elements at offset {} overrun its storage of {len} bytes",
                self.offset
            ))),
        }
    }
}

/// A value the machine builds; containers hold indices into its arena, so a memo lookup is
/// a copy of an index (no value is ever duplicated).
#[derive(Debug, Clone, PartialEq)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Global(Global),
    /// A persistent-load storage record: its dtype and key.
    Storage(HostDType, String),
    Tensor(Record),
}

/// Enough for any real state dict's depth of MARKs; more is a hostile file.
const MAX_MARKS: usize = 64;

struct Machine<'a> {
    data: &'a [u8],
    at: usize,
    arena: Vec<Obj>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u64, usize>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], PthError> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.data.get(self.at..end))
            .ok_or(PthError::Truncated)?;
        self.at += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> std::result::Result<u64, PthError> {
        let s = self.take(n)?;
        Ok(s.iter().rev().fold(0u64, |v, &x| (v << 8) | x as u64))
    }

    fn line(&mut self) -> std::result::Result<&'a str, PthError> {
        let rest = self.data.get(self.at..).ok_or(PthError::Truncated)?;
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or(PthError::Truncated)?;
        let s = self.take(n + 1)?;
        std::str::from_utf8(&s[..n]).map_err(|_| malformed("a GLOBAL name is not UTF-8"))
    }

    fn push(&mut self, o: Obj) {
        self.arena.push(o);
        self.stack.push(self.arena.len() - 1);
    }

    fn pop(&mut self) -> std::result::Result<usize, PthError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(malformed("pop from an empty stack"));
        }
        self.stack
            .pop()
            .ok_or_else(|| malformed("pop from an empty stack"))
    }

    fn top(&self) -> std::result::Result<usize, PthError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.len() > floor {
            true => Ok(self.stack[self.stack.len() - 1]),
            false => Err(malformed("empty stack")),
        }
    }

    /// The items above the last MARK, and the mark removed.
    fn pop_mark(&mut self) -> std::result::Result<Vec<usize>, PthError> {
        let m = self.marks.pop().ok_or_else(|| malformed("no MARK"))?;
        Ok(self.stack.split_off(m))
    }

    fn str_of(&self, i: usize) -> Option<&str> {
        match &self.arena[i] {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }

    fn int_of(&self, i: usize) -> std::result::Result<usize, PthError> {
        match self.arena[i] {
            Obj::Int(v) => usize::try_from(v).map_err(|_| malformed("a negative size")),
            _ => Err(malformed("an integer was expected")),
        }
    }

    fn ints_of(&self, i: usize) -> std::result::Result<Vec<usize>, PthError> {
        match &self.arena[i] {
            Obj::Tuple(items) => items.iter().map(|&x| self.int_of(x)).collect(),
            _ => Err(malformed("a tuple of sizes was expected")),
        }
    }

    /// A persistent id: ('storage', storage type, key, location, numel).
    fn persistent(&self, pid: usize) -> std::result::Result<Obj, PthError> {
        let Obj::Tuple(items) = &self.arena[pid] else {
            return Err(malformed("a persistent id that is not a tuple"));
        };
        match items[..] {
            [kind, ty, key, _, _] if self.str_of(kind) == Some("storage") => {
                match (&self.arena[ty], self.str_of(key)) {
                    (Obj::Global(Global::Storage(d)), Some(k)) => Ok(Obj::Storage(*d, k.into())),
                    _ => Err(malformed("a storage record without its type and key")),
                }
            }
            _ => Err(malformed("a persistent id that is not a storage record")),
        }
    }

    /// What calling `f` with `args` would build, for the callables torch.save uses.
    fn reduce(&self, f: usize, args: usize) -> std::result::Result<Obj, PthError> {
        let Obj::Tuple(args) = &self.arena[args] else {
            return Err(malformed("REDUCE arguments are not a tuple"));
        };
        match (&self.arena[f], &args[..]) {
            (Obj::Global(Global::OrderedDict), []) => Ok(Obj::Dict(Vec::new())),
            (Obj::Global(Global::RebuildTensor), [storage, offset, shape, stride, ..]) => {
                let Obj::Storage(dtype, key) = &self.arena[*storage] else {
                    return Err(malformed("_rebuild_tensor_v2 without a storage"));
                };
                let (shape, stride) = (self.ints_of(*shape)?, self.ints_of(*stride)?);
                if shape.len() != stride.len() {
                    return Err(malformed("a tensor's shape and strides differ in length"));
                }
                Ok(Obj::Tensor(Record {
                    dtype: *dtype,
                    key: key.clone(),
                    offset: self.int_of(*offset)?,
                    shape,
                    stride,
                }))
            }
            (Obj::Global(Global::RebuildParameter), [data, ..]) => match &self.arena[*data] {
                t @ Obj::Tensor(_) => Ok(t.clone()),
                _ => Err(malformed("_rebuild_parameter without a tensor")),
            },
            (Obj::Global(g), _) => Err(malformed(format!("{g:?} called with other arguments"))),
            _ => Err(malformed(
                "REDUCE of something that is not a known callable",
            )),
        }
    }

    fn set_items(&mut self, dict: usize, items: &[usize]) -> std::result::Result<(), PthError> {
        if !items.len().is_multiple_of(2) {
            return Err(malformed("SETITEMS with an odd number of items"));
        }
        match &mut self.arena[dict] {
            Obj::Dict(d) => {
                d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            _ => Err(malformed("SETITEM(S) on something that is not a dict")),
        }
    }

    fn run(&mut self) -> std::result::Result<usize, PthError> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    self.take(1)?; // PROTO n
                }
                0x95 => {
                    self.take(8)?; // FRAME length
                }
                b'.' => return self.pop(), // STOP
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(malformed("MARKs nested too deep"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'}' => self.push(Obj::Dict(Vec::new())),
                b']' => self.push(Obj::List(Vec::new())),
                b')' => self.push(Obj::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items));
                }
                b'N' => self.push(Obj::None),
                0x88 => self.push(Obj::Bool(true)),
                0x89 => self.push(Obj::Bool(false)),
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.push(Obj::Int(v));
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.push(Obj::Int(v));
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32 as i64;
                    self.push(Obj::Int(v));
                }
                0x8a => {
                    // LONG1: a little-endian two's complement integer of n bytes.
                    let n = self.uint(1)? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(malformed("an integer wider than 64 bits"));
                    }
                    let mut v = bytes.iter().rev().fold(0i64, |v, &x| (v << 8) | x as i64);
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Obj::Int(v));
                }
                b'G' => {
                    let v = f64::from_bits(u64::from_be_bytes(
                        self.take(8)?.try_into().map_err(|_| PthError::Truncated)?,
                    ));
                    self.push(Obj::Float(v));
                }
                b'X' | 0x8c => {
                    let n = match op {
                        b'X' => self.uint(4)?,
                        _ => self.uint(1)?,
                    } as usize;
                    let s = std::str::from_utf8(self.take(n)?)
                        .map_err(|_| malformed("a string is not UTF-8"))?;
                    self.push(Obj::Str(s.to_string()));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = Global::find(module, name)?;
                    self.push(Obj::Global(g));
                }
                0x93 => {
                    // STACK_GLOBAL: module and name strings from the stack.
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else {
                        return Err(malformed("STACK_GLOBAL without two strings"));
                    };
                    let g = Global::find(m, n)?;
                    self.push(Obj::Global(g));
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => self.uint(1)?,
                        b'r' => self.uint(4)?,
                        _ => self.memo.len() as u64,
                    };
                    let top = self.top()?;
                    self.memo.insert(key, top);
                }
                b'h' | b'j' => {
                    let key = self.uint(if op == b'h' { 1 } else { 4 })?;
                    let i = *self
                        .memo
                        .get(&key)
                        .ok_or_else(|| malformed(format!("memo {key} is not set")))?;
                    self.stack.push(i);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent(pid)?;
                    self.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let value = self.reduce(f, args)?;
                    self.push(value);
                }
                b'b' => {
                    // BUILD: an OrderedDict's attributes (a state dict's `_metadata`), which
                    // say nothing about the tensors: dropped.
                    let _state = self.pop()?;
                    let target = self.top()?;
                    if !matches!(self.arena[target], Obj::Dict(_)) {
                        return Err(malformed("BUILD of something that is not a dict"));
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, &[k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, &items)?;
                }
                b'a' | b'e' => {
                    let items = match op {
                        b'a' => vec![self.pop()?],
                        _ => self.pop_mark()?,
                    };
                    let l = self.top()?;
                    match &mut self.arena[l] {
                        Obj::List(list) => list.extend(items),
                        _ => return Err(malformed("APPEND(S) to something that is not a list")),
                    }
                }
                other => return Err(PthError::Opcode(other)),
            }
        }
    }
}

/// The state dict in a pickle: (name, tensor record) in order.
fn read_state_dict(pickle: &[u8]) -> std::result::Result<Vec<(String, Record)>, PthError> {
    let mut m = Machine {
        data: pickle,
        at: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    let Obj::Dict(items) = &m.arena[root] else {
        return Err(malformed("the pickle holds no dict of tensors"));
    };
    items
        .iter()
        .map(|&(k, v)| {
            let name = m
                .str_of(k)
                .ok_or_else(|| malformed("a state dict key that is not a string"))?;
            match &m.arena[v] {
                Obj::Tensor(r) => Ok((name.to_string(), r.clone())),
                other => Err(PthError::Tensor {
                    name: name.to_string(),
                    message: format!("is not a tensor ({})", kind(other)),
                }),
            }
        })
        .collect()
}

fn kind(o: &Obj) -> &'static str {
    match o {
        Obj::None => "None",
        Obj::Bool(_) => "a bool",
        Obj::Int(_) => "an int",
        Obj::Float(_) => "a float",
        Obj::Str(_) => "a string",
        Obj::Tuple(_) => "a tuple",
        Obj::List(_) => "a list",
        Obj::Dict(_) => "a dict",
        Obj::Global(_) => "a callable",
        Obj::Storage(..) => "a storage",
        Obj::Tensor(_) => "a tensor",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(module: &str, name: &str) -> Vec<u8> {
        [b"c", module.as_bytes(), b"\n", name.as_bytes(), b"\n"].concat()
    }

    #[test]
    fn a_global_outside_the_list_is_refused_by_name() {
        // What pickle writes for os.system("echo"): GLOBAL, the argument tuple, REDUCE.
        let p = [
            &b"\x80\x02"[..],
            &global("posix", "system"),
            b"X\x04\x00\x00\x00echo\x85R.",
        ]
        .concat();
        assert_eq!(
            read_state_dict(&p),
            Err(PthError::Global("posix.system".into()))
        );
        let p = [&b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93"[..], b")R."].concat();
        assert_eq!(
            read_state_dict(&p),
            Err(PthError::Global("builtins.eval".into()))
        );
    }

    #[test]
    fn other_opcodes_and_shapes_are_errors() {
        // INST (a class instantiated by name) is never written by torch.save.
        assert_eq!(
            read_state_dict(b"\x80\x02ios\nsystem\n."),
            Err(PthError::Opcode(b'i'))
        );
        assert_eq!(read_state_dict(b"\x80\x02}"), Err(PthError::Truncated));
        assert!(matches!(
            read_state_dict(b"\x80\x02."),
            Err(PthError::Malformed(_))
        ));
        assert!(matches!(
            read_state_dict(b"\x80\x02K\x01."),
            Err(PthError::Malformed(_))
        ));
        // A dict whose value is not a tensor is named.
        let p = b"\x80\x02}(X\x01\x00\x00\x00aK\x01u.";
        assert!(matches!(read_state_dict(p), Err(PthError::Tensor { name, .. }) if name == "a"));
        // MARKs nested without end.
        assert!(matches!(
            read_state_dict(&[b'('; 100]),
            Err(PthError::Malformed(_))
        ));
    }

    #[test]
    fn a_tensor_record_is_read() {
        let p = [
            &b"\x80\x02}q\x00(X\x01\x00\x00\x00w"[..],
            &global("torch._utils", "_rebuild_tensor_v2"),
            b"((X\x07\x00\x00\x00storage",
            &global("torch", "BFloat16Storage"),
            b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89",
            &global("collections", "OrderedDict"),
            b")Rtq\x01Ru.",
        ]
        .concat();
        let dict = read_state_dict(&p).expect("state dict");
        assert_eq!(
            dict,
            vec![(
                "w".to_string(),
                Record {
                    dtype: HostDType::BF16,
                    key: "0".into(),
                    offset: 0,
                    shape: vec![2, 3],
                    stride: vec![3, 1],
                }
            )]
        );
        let entries = HashMap::from([("m/data/0".to_string(), (100, 12))]);
        let t = dict[0]
            .1
            .locate("w", "m/", &entries)
            .expect("in the storage");
        assert_eq!((t.start, t.len), (100, 12));
        let short = HashMap::from([("m/data/0".to_string(), (100, 10))]);
        assert!(dict[0].1.locate("w", "m/", &short).is_err());
        let mut view = dict[0].1.clone();
        view.stride = vec![1, 2];
        assert!(view.locate("w", "m/", &entries).is_err());
    }
}

//! A small typed preprocessor: each kernel is one WGSL file in shaders/, specialised by typed
//! constants that are prepended as `const NAME: T = v;` declarations, after the shared
//! prelude (shaders/common.wgsl: the `Step` uniform and grid helpers). A kernel line
//! `#include "NAME.wgsl"` is replaced by that shared snippet of shaders/ (see [`INCLUDES`]).

use std::borrow::Cow;
use std::fmt::Write;

pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// Snippets a kernel may `#include`: block dequantization (matvec, matmul, embedding), the
/// gated linear recurrence (the linear_scan passes), the elementwise ops (plain and fused),
/// the keys a decode attention query sees (both decode attention kernels), the tiled matmul
/// (its f32 and f16 kernels).
pub const INCLUDES: &[(&str, &str)] = &[
    (
        "decode_keys.wgsl",
        include_str!("../../shaders/decode_keys.wgsl"),
    ),
    (
        "elementwise_ops.wgsl",
        include_str!("../../shaders/elementwise_ops.wgsl"),
    ),
    ("quant.wgsl", include_str!("../../shaders/quant.wgsl")),
    (
        "matmul_tiles.wgsl",
        include_str!("../../shaders/matmul_tiles.wgsl"),
    ),
    (
        "linear_recurrence.wgsl",
        include_str!("../../shaders/linear_recurrence.wgsl"),
    ),
    (
        "wkv4_state.wgsl",
        include_str!("../../shaders/wkv4_state.wgsl"),
    ),
];

/// Whether a kernel line is an `enable` directive, which [`ShaderDefs::render`] moves to the top.
fn is_directive(line: &str) -> bool {
    line.trim_start().starts_with("enable ")
}

/// `kernel` with every `#include "NAME"` line replaced by the snippet NAME, expanded in turn
/// (and directives left out). An unknown name is left in place, where the WGSL parser reports it with its line.
fn expand_includes(kernel: &str, out: &mut String) {
    for line in kernel.lines().filter(|l| !is_directive(l)) {
        let name = line
            .trim()
            .strip_prefix("#include")
            .map(|r| r.trim().trim_matches('"'));
        match name.and_then(|n| INCLUDES.iter().find(|(i, _)| *i == n)) {
            Some((_, snippet)) => expand_includes(snippet, out),
            None => out.push_str(line),
        }
        out.push('\n');
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Def {
    U32(u32),
    F32(f32),
    Bool(bool),
}

impl Def {
    /// The value as [`ShaderDefs::key`] writes it (`U32(3)`, `F32(0.5)`, `Bool(true)`).
    fn parse(s: &str) -> Option<Def> {
        let (kind, rest) = s.split_once('(')?;
        let v = rest.strip_suffix(')')?;
        match kind {
            "U32" => v.parse().ok().map(Def::U32),
            "F32" => v.parse().ok().map(Def::F32),
            "Bool" => v.parse().ok().map(Def::Bool),
            _ => None,
        }
    }
}

/// Typed specialisation constants for one pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShaderDefs(Vec<(Cow<'static, str>, Def)>);

impl ShaderDefs {
    pub fn new() -> Self {
        ShaderDefs(Vec::new())
    }
    pub fn u32(mut self, name: &'static str, v: u32) -> Self {
        self.0.push((name.into(), Def::U32(v)));
        self
    }
    pub fn f32(mut self, name: &'static str, v: f32) -> Self {
        self.0.push((name.into(), Def::F32(v)));
        self
    }
    pub fn bool(mut self, name: &'static str, v: bool) -> Self {
        self.0.push((name.into(), Def::Bool(v)));
        self
    }
    /// The cache key of this specialisation.
    pub fn key(&self) -> String {
        let mut s = String::new();
        for (n, d) in &self.0 {
            let _ = write!(s, "{n}={d:?};");
        }
        s
    }
    /// The specialisation `key` wrote, where every constant is a WGSL name with a value of
    /// its type (a key from a file of an earlier run may be neither; it is then None).
    pub fn from_key(key: &str) -> Option<ShaderDefs> {
        let mut defs = ShaderDefs::new();
        for item in key.split_terminator(';') {
            let (name, value) = item.split_once('=')?;
            let word = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !word {
                return None;
            }
            defs.0
                .push((Cow::Owned(name.to_string()), Def::parse(value)?));
        }
        Some(defs)
    }
    /// The full WGSL source: constants, prelude, kernel (with its includes expanded).
    /// A kernel's `enable` directives (e.g. `enable f16;`) come first, as WGSL requires.
    pub fn render(&self, kernel: &str, _shader_f16: bool) -> String {
        let mut s = String::new();
        for line in kernel.lines().filter(|l| is_directive(l)) {
            s.push_str(line);
            s.push('\n');
        }
        for (n, d) in &self.0 {
            let _ = match d {
                Def::U32(v) => writeln!(s, "const {n}: u32 = {v}u;"),
                Def::F32(v) => writeln!(s, "const {n}: f32 = {v:?};"),
                Def::Bool(v) => writeln!(s, "const {n}: bool = {v};"),
            };
        }
        s.push_str(COMMON);
        s.push('\n');
        expand_includes(kernel, &mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gives_back_its_defs() {
        let defs = ShaderDefs::new()
            .u32("HEAD_DIM", 64)
            .f32("SCALE", 0.125)
            .f32("EPS", 1e-6)
            .bool("HAS_BIAS", true);
        assert_eq!(ShaderDefs::from_key(&defs.key()), Some(defs.clone()));
        assert_eq!(ShaderDefs::from_key(""), Some(ShaderDefs::new()));
        // Not a WGSL name, a value of no type, a value that does not parse, no `=`.
        for bad in ["A B=U32(1);", "A=I32(1);", "A=U32(-1);", "A=F32(x);", "A;"] {
            assert_eq!(ShaderDefs::from_key(bad), None, "{bad}");
        }
    }
}

//! A small typed preprocessor: each kernel is one WGSL file in shaders/, specialised by typed
//! constants that are prepended as `const NAME: T = v;` declarations, after the shared
//! prelude (shaders/common.wgsl: the `Step` uniform and grid helpers). A kernel line
//! `#include "NAME.wgsl"` is replaced by that shared snippet of shaders/ (see [`INCLUDES`]).

use std::fmt::Write;

pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// Snippets a kernel may `#include`: block dequantization (matvec, matmul, embedding), the
/// gated linear recurrence (the linear_scan passes), the elementwise ops (plain and fused).
pub const INCLUDES: &[(&str, &str)] = &[
    (
        "elementwise_ops.wgsl",
        include_str!("../../shaders/elementwise_ops.wgsl"),
    ),
    ("quant.wgsl", include_str!("../../shaders/quant.wgsl")),
    (
        "linear_recurrence.wgsl",
        include_str!("../../shaders/linear_recurrence.wgsl"),
    ),
    (
        "wkv4_state.wgsl",
        include_str!("../../shaders/wkv4_state.wgsl"),
    ),
];

/// `kernel` with every `#include "NAME"` line replaced by the snippet NAME. An unknown name
/// is left in place, where the WGSL parser reports it with its line.
fn expand_includes(kernel: &str, out: &mut String) {
    for line in kernel.lines() {
        let name = line
            .trim()
            .strip_prefix("#include")
            .map(|r| r.trim().trim_matches('"'));
        match name.and_then(|n| INCLUDES.iter().find(|(i, _)| *i == n)) {
            Some((_, snippet)) => out.push_str(snippet),
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

/// Typed specialisation constants for one pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShaderDefs(Vec<(&'static str, Def)>);

impl ShaderDefs {
    pub fn new() -> Self {
        ShaderDefs(Vec::new())
    }
    pub fn u32(mut self, name: &'static str, v: u32) -> Self {
        self.0.push((name, Def::U32(v)));
        self
    }
    pub fn f32(mut self, name: &'static str, v: f32) -> Self {
        self.0.push((name, Def::F32(v)));
        self
    }
    pub fn bool(mut self, name: &'static str, v: bool) -> Self {
        self.0.push((name, Def::Bool(v)));
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
    /// The full WGSL source: constants, prelude, kernel (with its includes expanded).
    pub fn render(&self, kernel: &str, _shader_f16: bool) -> String {
        let mut s = String::new();
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

//! A small typed preprocessor: each kernel is one WGSL file in shaders/, specialised by typed
//! constants that are prepended as `const NAME: T = v;` declarations, after the shared
//! prelude (shaders/common.wgsl: the `Step` uniform and grid helpers). A kernel line
//! `#include "NAME.wgsl"` is replaced by that shared snippet of shaders/ (see [`INCLUDES`]).
//! Lines between `#if NAME` and `#else` (or `#endif`) are kept only where the bool constant
//! NAME is true, those between `#else` and `#endif` only where it is false (nested blocks
//! allowed): for code a device without a feature must not see at all, such as subgroup
//! builtins, which naga refuses without the SUBGROUP capability even in an untaken branch.
//! Lines between `#for NAME in COUNT` and `#endfor` (COUNT a u32 constant or a number,
//! optionally `/ N`; nested blocks allowed) are repeated COUNT times, with `${NAME}` replaced by 0, 1, ...:
//! loops unrolled in the source, for drivers that keep private arrays indexed in a loop in
//! memory (lavapipe; see shaders/decode_attention_lanes.wgsl).

use std::borrow::Cow;
use std::fmt::Write;

pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// Snippets a kernel may `#include`: block dequantization (matvec, matmul, embedding), the
/// gated linear recurrence (the linear_scan passes), the elementwise ops (plain and fused),
/// the keys a decode attention query sees (both decode attention kernels), the tiled matmul
/// (its f32 and f16 kernels), the decode matvecs' row stores (f32, int8 and f16).
pub const INCLUDES: &[(&str, &str)] = &[
    ("batch.wgsl", include_str!("../../shaders/batch.wgsl")),
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
        "matvec_store.wgsl",
        include_str!("../../shaders/matvec_store.wgsl"),
    ),
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

/// One line of `#if` / `#else` / `#endif`, as [`Cond::parse`] reads it.
enum Cond<'a> {
    If(&'a str),
    Else,
    EndIf,
}

impl Cond<'_> {
    fn parse(line: &str) -> Option<Cond<'_>> {
        let mut words = line.split_whitespace();
        let cond = match (words.next()?, words.next()) {
            ("#if", Some(name)) => Cond::If(name),
            ("#else", None) => Cond::Else,
            ("#endif", None) => Cond::EndIf,
            _ => return None,
        };
        words.next().is_none().then_some(cond)
    }
}

/// A `#for NAME in COUNT` line's name and count: a u32 constant of `defs` or a number,
/// optionally divided by another (`#for c in HEAD_DIM / 4`).
fn parse_for(line: &str, defs: &ShaderDefs) -> Option<(String, u32)> {
    let value = |w: &str| match defs.get(w) {
        Some(Def::U32(n)) => Some(n),
        _ => w.parse().ok(),
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let count = match words[..] {
        ["#for", _, "in", n] => value(n)?,
        ["#for", _, "in", n, "/", d] => value(n)?.checked_div(value(d)?)?,
        _ => return None,
    };
    Some((format!("${{{}}}", words[1]), count))
}

/// `lines` with their `#for` blocks repeated (see the module's doc) and `bound`'s
/// placeholders replaced, into `out`. A `#for` whose count is no u32 constant or number, or
/// that has no `#endfor`, is left in place, where the WGSL parser reports it with its line.
fn unroll(lines: &[&str], defs: &ShaderDefs, bound: &mut Vec<(String, u32)>, out: &mut String) {
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at];
        at += 1;
        let head = parse_for(line, defs);
        // The matching `#endfor`: the first one at depth 0 after the body's own blocks.
        let end = head.as_ref().and_then(|_| {
            let mut depth = 0usize;
            lines[at..].iter().position(|l| match l.trim() {
                t if t.starts_with("#for ") => {
                    depth += 1;
                    false
                }
                "#endfor" if depth == 0 => true,
                "#endfor" => {
                    depth -= 1;
                    false
                }
                _ => false,
            })
        });
        match (head, end) {
            (Some((name, count)), Some(len)) => {
                for i in 0..count {
                    bound.push((name.clone(), i));
                    unroll(&lines[at..at + len], defs, bound, out);
                    bound.pop();
                }
                at += len + 1;
            }
            _ => {
                let mut line = line.to_string();
                for (name, i) in bound.iter() {
                    line = line.replace(name.as_str(), &i.to_string());
                }
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
}

/// `kernel` with every `#include "NAME"` line replaced by the snippet NAME, expanded in turn,
/// its `#for` blocks repeated, and the lines of `#if` blocks kept or dropped by `defs` (each kept `enable` directive goes
/// to `directives` instead). `#if` lines push to `stack` (whether the lines around the block
/// are kept, whether its `#if` part is), `#endif` lines pop. An unknown include or a condition
/// that is not a bool constant is left in place, where the WGSL parser reports it with its
/// line; so is an `#else` or `#endif` without its `#if`.
fn expand(
    kernel: &str,
    defs: &ShaderDefs,
    stack: &mut Vec<(bool, bool)>,
    out: &mut String,
    directives: &mut String,
) {
    let mut unrolled = String::new();
    let lines: Vec<&str> = kernel.lines().collect();
    unroll(&lines, defs, &mut Vec::new(), &mut unrolled);
    for line in unrolled.lines() {
        let active = stack.last().is_none_or(|&(outer, this)| outer && this);
        // Whether the line was a condition, consumed here.
        let consumed = match Cond::parse(line) {
            Some(Cond::If(name)) => {
                // A condition that is no bool constant still opens a block, so that the
                // `#else` and `#endif` after it stay paired with it.
                let v = defs.get(name);
                stack.push((active, v != Some(Def::Bool(false))));
                matches!(v, Some(Def::Bool(_)))
            }
            Some(Cond::Else) => match stack.last_mut() {
                Some((_, this)) => {
                    *this = !*this;
                    true
                }
                None => false,
            },
            Some(Cond::EndIf) => stack.pop().is_some(),
            None => false,
        };
        if consumed {
            continue;
        }
        if !active {
            continue;
        }
        if is_directive(line) {
            directives.push_str(line);
            directives.push('\n');
            continue;
        }
        let name = line
            .trim()
            .strip_prefix("#include")
            .map(|r| r.trim().trim_matches('"'));
        match name.and_then(|n| INCLUDES.iter().find(|(i, _)| *i == n)) {
            Some((_, snippet)) => expand(snippet, defs, stack, out, directives),
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
    /// The value of constant `name`, the last one given under that name.
    pub(crate) fn get(&self, name: &str) -> Option<Def> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|&(_, d)| d)
    }
    /// The full WGSL source: constants, prelude, kernel (with its includes expanded and its
    /// `#if` blocks resolved). A kernel's `enable` directives (e.g. `enable f16;`) come
    /// first, as WGSL requires.
    pub fn render(&self, kernel: &str, _shader_f16: bool) -> String {
        let (mut body, mut directives) = (String::new(), String::new());
        expand(kernel, self, &mut Vec::new(), &mut body, &mut directives);
        let mut s = directives;
        for (n, d) in &self.0 {
            let _ = match d {
                Def::U32(v) => writeln!(s, "const {n}: u32 = {v}u;"),
                Def::F32(v) => writeln!(s, "const {n}: f32 = {v:?};"),
                Def::Bool(v) => writeln!(s, "const {n}: bool = {v};"),
            };
        }
        s.push_str(COMMON);
        s.push('\n');
        s.push_str(&body);
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

    #[test]
    fn if_blocks_keep_the_lines_of_their_condition() {
        let kernel = "a\n#if A\nenable x;\nb\n#if B\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf\n";
        let body = |a: bool, b: bool| {
            let s = ShaderDefs::new()
                .bool("A", a)
                .bool("B", b)
                .render(kernel, false);
            let tail = &s[s.find(COMMON).unwrap() + COMMON.len()..];
            (
                s.starts_with("enable x;\n"),
                tail.split_whitespace().collect::<String>(),
            )
        };
        assert_eq!(body(true, true), (true, "abcf".into()));
        assert_eq!(body(true, false), (true, "abdf".into()));
        assert_eq!(body(false, true), (false, "aef".into()));
        assert_eq!(body(false, false), (false, "aef".into()));
        // Not a bool constant (its block still pairs with its `#endif`), no `#if` to close:
        // left for the WGSL parser to report.
        let s = ShaderDefs::new()
            .u32("N", 1)
            .render("#if N\n#if M\n#endif\n#endif\n#endif\n", false);
        let kept: Vec<&str> = s.lines().filter(|l| l.starts_with('#')).collect();
        assert_eq!(kept, ["#if N", "#if M", "#endif"]);
    }

    #[test]
    fn for_blocks_repeat_their_lines() {
        let kernel = "a\n#for g in G\n#for c in G2 / 2\nx${g}_${c}\n#endfor\n#if B\ny${g}\n#endif\n#endfor\nz\n";
        let tail = |defs: ShaderDefs| {
            let s = defs.render(kernel, false);
            s[s.find(COMMON).unwrap() + COMMON.len()..]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let b = |g: u32, b: bool| ShaderDefs::new().u32("G", g).u32("G2", 5).bool("B", b);
        assert_eq!(tail(b(2, true)), "a x0_0 x0_1 y0 x1_0 x1_1 y1 z");
        assert_eq!(tail(b(1, false)), "a x0_0 x0_1 z");
        assert_eq!(tail(b(0, true)), "a z");
        // A count that is no u32 constant or number, a block without its `#endfor`: left
        // for the WGSL parser to report.
        let s = ShaderDefs::new()
            .bool("B", true)
            .render("#for g in B\nx\n#endfor\n", false);
        assert!(s.contains("#for g in B"));
        let s = ShaderDefs::new().render("#for g in 2\nx${g}\n", false);
        assert!(s.contains("#for g in 2\nx${g}"));
    }
}

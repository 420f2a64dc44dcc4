//! Block-sparse attention masks. Attention scores are cut into `BLOCK x BLOCK` tiles and a mask
//! lists, per head and query block, the key blocks the attention kernel computes, so its cost
//! follows the number of listed blocks (linear in the sequence for a fixed pattern) instead of
//! the quadratic causal triangle. Causality inside a listed block is the kernel's job.
//!
//! A pattern combines a (dilated) local band, global blocks and BigBird random blocks. Random
//! draws come from [`pcg_hash`] keyed by (seed, layer, head, query block), so a mask is a pure
//! function of its inputs and CPU references rebuild exactly what the GPU walks.

use std::fmt;

use crate::error::{Error, Result};
use crate::rng::pcg_hash;

/// Queries and keys per tile (the kernel's workgroup covers one query block).
pub const BLOCK: usize = 64;

fn bad(msg: String) -> Error {
    Error::InputOutOfRange(msg)
}

/// A block-sparse pattern (block granularity). All counts are in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SparsePattern {
    /// Key blocks in the local band of each query block, the query's own block included (>= 1).
    pub local: usize,
    /// Band stride (LongNet-style dilation). The diagonal block is always in the band; head `h`
    /// takes the other `local - 1` from the nearest earlier blocks whose distance to the query
    /// block is congruent to `h % dilation` (mod `dilation`): distances d, 2d, ... for shift 0,
    /// s, s + d, ... for shift s > 0. Heads together thus cover every distance up to
    /// `(local - 1) * dilation`. dilation = 1 is a plain sliding band.
    pub dilation: usize,
    /// The first `global` key blocks are seen by every query block (Longformer/BigBird global
    /// tokens), and the first `global` query blocks see every (earlier) key block.
    pub global: usize,
    /// BigBird random blocks: per (layer, head, query block), this many extra key blocks drawn
    /// uniformly from the causally allowed blocks not already chosen (fewer when not enough remain).
    pub random: usize,
    pub seed: u64,
}

impl Default for SparsePattern {
    fn default() -> Self {
        SparsePattern {
            local: 4,
            dilation: 1,
            global: 1,
            random: 0,
            seed: 0,
        }
    }
}

impl SparsePattern {
    /// Parse "local=4,dilation=1,global=1,random=1,seed=7" (any order, every key optional;
    /// defaults local=4, dilation=1, global=1, random=0, seed=0). Unknown or repeated keys,
    /// non-numbers, local=0 or dilation=0 are errors that name the offending item.
    pub fn parse(spec: &str) -> Result<SparsePattern> {
        let mut p = SparsePattern::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let err = |why: &str| bad(format!("sparse pattern item '{item}': {why}"));
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| err("expected key=value"))?;
            let key = key.trim();
            if seen.contains(&key) {
                return Err(err("key given twice"));
            }
            seen.push(key);
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| err("not a non-negative integer"))?;
            let small = usize::try_from(n).map_err(|_| err("too large"));
            match key {
                "local" | "dilation" if n == 0 => return Err(err("must be at least 1")),
                "local" => p.local = small?,
                "dilation" => p.dilation = small?,
                "global" => p.global = small?,
                "random" => p.random = small?,
                "seed" => p.seed = n,
                _ => {
                    return Err(err(
                        "unknown key (expected local, dilation, global, random or seed)",
                    ))
                }
            }
        }
        Ok(p)
    }

    /// Append the key blocks of one row (unsorted, possibly repeated) to `row`.
    fn fill_row(&self, layer: usize, head: usize, q: usize, row: &mut Vec<usize>) {
        if q < self.global {
            row.extend(0..=q);
            return;
        }
        row.extend(0..self.global);
        row.push(q);
        let d = self.dilation.max(1);
        let shift = head % d;
        let mut dist = if shift == 0 { d } else { shift };
        for _ in 1..self.local {
            if dist > q {
                break;
            }
            row.push(q - dist);
            dist = dist.saturating_add(d);
        }
        if self.random > 0 {
            row.sort_unstable();
            row.dedup();
            // Partial Fisher-Yates over the unchosen earlier blocks: uniform, without repeats.
            let mut pool: Vec<usize> = (0..q).filter(|b| row.binary_search(b).is_err()).collect();
            for i in 0..self.random.min(pool.len()) {
                let j = i + draw(self.seed, layer, head, q, i) as usize % (pool.len() - i);
                pool.swap(i, j);
                row.push(pool[i]);
            }
        }
    }
}

/// One hash word per (seed, layer, head, query block, draw).
fn draw(seed: u64, layer: usize, head: usize, q: usize, i: usize) -> u32 {
    let words = [
        seed as u32,
        (seed >> 32) as u32,
        layer as u32,
        head as u32,
        q as u32,
        i as u32,
    ];
    words.iter().fold(0x6b65_7374, |h, &w| pcg_hash(h ^ w))
}

impl fmt::Display for SparsePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self;
        write!(
            f,
            "local={},dilation={},global={},",
            p.local, p.dilation, p.global
        )?;
        write!(f, "random={},seed={}", p.random, p.seed)
    }
}

/// Which layers use which pattern: "SPEC" applies to every layer; "SPEC@A-B" or "SPEC@A" to a
/// layer range (inclusive); several separated by ';'. Layers no entry names use dense attention.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseConfig {
    pub entries: Vec<(Option<(usize, usize)>, SparsePattern)>,
}

impl SparseConfig {
    pub fn parse(spec: &str) -> Result<SparseConfig> {
        let mut entries = Vec::new();
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (pattern, range) = match item.split_once('@') {
                None => (item, None),
                Some((pattern, range)) => (pattern, Some(parse_range(range.trim(), item)?)),
            };
            entries.push((range, SparsePattern::parse(pattern)?));
        }
        Ok(SparseConfig { entries })
    }

    /// The pattern for `layer`; when several entries name it, the last wins.
    pub fn for_layer(&self, layer: usize) -> Option<SparsePattern> {
        let names = |r: &Option<(usize, usize)>| r.is_none_or(|(a, b)| (a..=b).contains(&layer));
        self.entries
            .iter()
            .rev()
            .find(|(r, _)| names(r))
            .map(|&(_, p)| p)
    }

    /// Error if a range names a layer >= `layers` (the model's layer count).
    pub fn validate(&self, layers: usize) -> Result<()> {
        for &(range, _) in &self.entries {
            if let Some((a, b)) = range.filter(|&(_, b)| b >= layers) {
                return Err(bad(format!(
                    "sparse layers {a}-{b}: the model has {layers} layers"
                )));
            }
        }
        Ok(())
    }
}

fn parse_range(range: &str, item: &str) -> Result<(usize, usize)> {
    let err = || {
        bad(format!(
            "sparse config entry '{item}': expected @A or @A-B with A <= B"
        ))
    };
    let num = |s: &str| s.trim().parse::<usize>().map_err(|_| err());
    let (a, b) = match range.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(range)?, num(range)?),
    };
    if a > b {
        return Err(err());
    }
    Ok((a, b))
}

impl fmt::Display for SparseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (range, pattern)) in self.entries.iter().enumerate() {
            f.write_str(if i > 0 { ";" } else { "" })?;
            match range {
                None => write!(f, "{pattern}")?,
                Some((a, b)) if a == b => write!(f, "{pattern}@{a}")?,
                Some((a, b)) => write!(f, "{pattern}@{a}-{b}")?,
            }
        }
        Ok(())
    }
}

/// A block mask in compressed-row form, for `heads` heads and `blocks` query blocks (= key
/// blocks, the sequence capacity divided by BLOCK, rounded up). Row r = head * blocks +
/// query_block; its key blocks are cols[offsets[r]..offsets[r+1]], strictly increasing.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMask {
    pub heads: usize,
    pub blocks: usize,
    pub offsets: Vec<u32>,
    pub cols: Vec<u32>,
}

impl BlockMask {
    /// Build the causal mask of `pattern` for one layer (`layer` feeds the random draw together
    /// with seed, head and row, so layers and heads differ). Only key blocks <= query block
    /// appear, and every row holds its diagonal block.
    pub fn causal(pattern: &SparsePattern, heads: usize, blocks: usize, layer: usize) -> BlockMask {
        Self::from_rows(heads, blocks, |h, q, row| {
            pattern.fill_row(layer, h, q, row)
        })
    }

    /// Every block at or below the diagonal (what dense causal attention computes).
    pub fn dense_causal(heads: usize, blocks: usize) -> BlockMask {
        Self::from_rows(heads, blocks, |_, q, row| row.extend(0..=q))
    }

    fn from_rows(
        heads: usize,
        blocks: usize,
        mut fill: impl FnMut(usize, usize, &mut Vec<usize>),
    ) -> BlockMask {
        let mut offsets = Vec::with_capacity(heads * blocks + 1);
        offsets.push(0u32);
        let (mut cols, mut row) = (Vec::new(), Vec::new());
        for head in 0..heads {
            for q in 0..blocks {
                row.clear();
                fill(head, q, &mut row);
                row.sort_unstable();
                row.dedup();
                debug_assert_eq!(row.last(), Some(&q), "row must end at its diagonal block");
                cols.extend(row.iter().map(|&b| b as u32));
                offsets.push(u32::try_from(cols.len()).expect("block mask exceeds u32 indices"));
            }
        }
        BlockMask {
            heads,
            blocks,
            offsets,
            cols,
        }
    }

    pub fn row(&self, head: usize, query_block: usize) -> &[u32] {
        assert!(
            head < self.heads && query_block < self.blocks,
            "block mask row out of range"
        );
        let r = head * self.blocks + query_block;
        &self.cols[self.offsets[r] as usize..self.offsets[r + 1] as usize]
    }

    /// Whether the query at position q may see the key at position k under this mask (block
    /// listed AND k <= q) — the explicit element mask the CPU reference uses.
    pub fn allows(&self, head: usize, q: usize, k: usize) -> bool {
        k <= q
            && self
                .row(head, q / BLOCK)
                .binary_search(&((k / BLOCK) as u32))
                .is_ok()
    }

    /// Listed blocks in total (the kernel's work).
    pub fn nonzero(&self) -> usize {
        self.cols.len()
    }

    /// offsets followed by cols, as uploaded to the GPU (one u32 array); row r's columns start at
    /// word `heads * blocks + 1 + offsets[r]`.
    pub fn to_words(&self) -> Vec<u32> {
        let mut words = Vec::with_capacity(self.offsets.len() + self.cols.len());
        words.extend_from_slice(&self.offsets);
        words.extend_from_slice(&self.cols);
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(spec: &str) -> SparsePattern {
        SparsePattern::parse(spec).unwrap()
    }

    /// Structural invariants every mask must keep: CSR shape, non-empty sorted causal rows
    /// ending at the diagonal.
    fn check(m: &BlockMask) {
        assert_eq!(m.offsets.len(), m.heads * m.blocks + 1);
        assert_eq!(
            (m.offsets[0], *m.offsets.last().unwrap() as usize),
            (0, m.cols.len())
        );
        for h in 0..m.heads {
            for q in 0..m.blocks {
                let row = m.row(h, q);
                assert_eq!(row.last(), Some(&(q as u32)), "head {h} row {q}: {row:?}");
                assert!(
                    row.windows(2).all(|w| w[0] < w[1]),
                    "head {h} row {q}: {row:?}"
                );
            }
        }
    }

    #[test]
    fn pattern_parse_defaults_and_round_trip() {
        assert_eq!(pat(""), SparsePattern::default());
        let p = pat(" seed=7 , random=1,local=3,dilation=2,global=0");
        assert_eq!(
            p,
            SparsePattern {
                local: 3,
                dilation: 2,
                global: 0,
                random: 1,
                seed: 7
            }
        );
        assert_eq!(pat(&p.to_string()), p);
        assert_eq!(
            pat("local=8"),
            SparsePattern {
                local: 8,
                ..Default::default()
            }
        );
        assert_eq!(pat("seed=18446744073709551615").seed, u64::MAX);
    }

    #[test]
    fn pattern_parse_errors_name_the_item() {
        for (spec, item) in [
            ("local=4,width=2", "width=2"),
            ("local=four", "local=four"),
            ("global=-1", "global=-1"),
            ("local=0", "local=0"),
            ("dilation=0", "dilation=0"),
            ("local", "local"),
            ("local=2,local=3", "local=3"),
        ] {
            let e = SparsePattern::parse(spec).unwrap_err();
            assert!(matches!(e, Error::InputOutOfRange(_)), "{spec}: {e}");
            assert!(e.to_string().contains(&format!("'{item}'")), "{spec}: {e}");
        }
    }

    #[test]
    fn config_parse_ranges_last_wins_validate() {
        let c = SparseConfig::parse("local=2@0-3; local=8@5;global=0@2").unwrap();
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.entries[1].0, Some((5, 5)));
        assert_eq!(c.for_layer(0).unwrap().local, 2);
        assert_eq!(c.for_layer(2), Some(pat("global=0")), "last entry wins");
        assert_eq!(c.for_layer(4), None, "unnamed layers are dense");
        assert_eq!(c.for_layer(5).unwrap().local, 8);
        assert_eq!(SparseConfig::parse(&c.to_string()).unwrap(), c);
        assert!(c.validate(6).is_ok());
        assert!(c.validate(5).unwrap_err().to_string().contains("5-5"));
        let all = SparseConfig::parse("random=1;local=2@1").unwrap();
        assert_eq!(all.for_layer(1000), Some(pat("random=1")));
        assert_eq!(SparseConfig::parse("").unwrap(), SparseConfig::default());
        for bad in [
            "local=2@3-1",
            "local=2@x",
            "local=2@1-",
            "local=2@1@2",
            "local=0@1",
        ] {
            assert!(SparseConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_band_is_linear_dense_is_quadratic() {
        let p = pat("local=4,global=0");
        for (blocks, exact) in [(8, 26), (16, 58), (32, 122)] {
            let (m, d) = (
                BlockMask::causal(&p, 2, blocks, 0),
                BlockMask::dense_causal(2, blocks),
            );
            check(&m);
            check(&d);
            // Every row holds min(q + 1, local) blocks: local * blocks - local * (local - 1) / 2.
            assert_eq!(m.nonzero(), 2 * exact);
            assert!(exact <= p.local * blocks);
            assert_eq!(d.nonzero(), 2 * blocks * (blocks + 1) / 2);
        }
        let m = BlockMask::causal(&p, 1, 12, 0);
        assert_eq!(m.row(0, 2), [0, 1, 2]);
        assert_eq!(m.row(0, 10), [7, 8, 9, 10]);
    }

    #[test]
    fn dilated_band_exact_rows_and_head_shifts() {
        let m = BlockMask::causal(&pat("local=3,dilation=2,global=1"), 3, 12, 0);
        check(&m);
        assert_eq!(m.row(0, 10), [0, 6, 8, 10]);
        assert_eq!(m.row(1, 10), [0, 7, 9, 10]);
        assert_eq!(m.row(2, 10), m.row(0, 10), "head 2 shifts like head 0");
        assert_eq!(m.row(0, 0), [0]);
        assert_eq!(m.row(0, 1), [0, 1]);
        assert_eq!(m.row(1, 1), [0, 1]);
        assert_eq!(m.row(0, 3), [0, 1, 3]);
        assert_eq!(m.row(1, 3), [0, 2, 3]);
        // Heads together cover every distance up to (local - 1) * dilation.
        let m = BlockMask::causal(&pat("local=3,dilation=3,global=0"), 3, 20, 0);
        let mut union: Vec<u32> = (0..3).flat_map(|h| m.row(h, 19).to_vec()).collect();
        union.sort_unstable();
        union.dedup();
        assert_eq!(union, (13..=19).collect::<Vec<u32>>());
    }

    #[test]
    fn global_blocks_see_and_are_seen() {
        let m = BlockMask::causal(&pat("local=1,global=3"), 2, 10, 0);
        check(&m);
        for h in 0..2 {
            for q in 0..3 {
                assert_eq!(m.row(h, q), (0..=q as u32).collect::<Vec<_>>());
            }
            for q in 3..10 {
                assert_eq!(m.row(h, q), [0, 1, 2, q as u32]);
            }
        }
    }

    #[test]
    fn random_blocks_causal_deterministic_and_varied() {
        let p = pat("local=2,global=1,random=2,seed=5");
        let m = BlockMask::causal(&p, 4, 32, 0);
        check(&m);
        // Rows 0-3 have fewer than 2 spare blocks, later rows get exactly 2 extra.
        for h in 0..4 {
            assert_eq!(m.row(h, 0), [0]);
            assert_eq!(m.row(h, 2), [0, 1, 2]);
            assert_eq!(m.row(h, 3).len(), 4);
            assert!((4..32).all(|q| m.row(h, q).len() == 5));
        }
        assert_eq!(BlockMask::causal(&p, 4, 32, 0), m, "same seed, same mask");
        assert_ne!(BlockMask::causal(&p, 4, 32, 1), m, "layers differ");
        for seed in [6, 5 + (1 << 32)] {
            let other = SparsePattern { seed, ..p };
            assert_ne!(BlockMask::causal(&other, 4, 32, 0), m, "seed {seed}");
        }
        assert!(
            (1..4).all(|h| (4..32).any(|q| m.row(h, q) != m.row(0, q))),
            "heads differ"
        );
        // Uniform over the 19 spare blocks of row 20 (local=1, global=1): each drawn ~100 times.
        let mut hits = [0usize; 21];
        for layer in 0..1900 {
            let m = BlockMask::causal(&pat("local=1,random=1"), 1, 21, layer);
            hits[m.row(0, 20)[1] as usize] += 1;
        }
        assert_eq!((hits[0], hits[20]), (0, 0));
        assert!(
            hits[1..20].iter().all(|&n| (50..160).contains(&n)),
            "{hits:?}"
        );
    }

    #[test]
    fn allows_matches_rows_at_block_edges() {
        let m = BlockMask::causal(&pat("local=1,global=0"), 2, 3, 0);
        assert!(m.allows(0, 63, 63) && m.allows(0, 64, 64) && m.allows(0, 127, 64));
        assert!(!m.allows(0, 63, 64), "k > q");
        assert!(!m.allows(0, 64, 65), "k > q inside a listed block");
        assert!(!m.allows(0, 64, 63), "block 0 not listed for query block 1");
        let m = BlockMask::causal(&pat("local=2,global=0"), 2, 3, 0);
        assert!(m.allows(1, 64, 63) && m.allows(1, 64, 0) && !m.allows(1, 128, 63));
        let m = BlockMask::causal(&pat("local=2,dilation=2,random=1,seed=3"), 2, 4, 0);
        for (h, q, k) in
            (0..2).flat_map(|h| (0..256).flat_map(move |q| (0..256).map(move |k| (h, q, k))))
        {
            let listed = m.row(h, q / BLOCK).contains(&((k / BLOCK) as u32));
            assert_eq!(m.allows(h, q, k), listed && k <= q, "head {h} q {q} k {k}");
        }
    }

    #[test]
    fn words_are_offsets_then_cols() {
        let d = BlockMask::dense_causal(2, 3);
        assert_eq!(d.offsets, [0, 1, 3, 6, 7, 9, 12]);
        assert_eq!(d.cols, [0, 0, 1, 0, 1, 2, 0, 0, 1, 0, 1, 2]);
        let w = d.to_words();
        assert_eq!(w[..7], d.offsets[..]);
        assert_eq!(w[7..], d.cols[..]);
        let m = BlockMask::causal(&pat("local=2,dilation=2,random=1,seed=9"), 3, 9, 2);
        let (w, base) = (m.to_words(), m.heads * m.blocks + 1);
        for r in 0..m.heads * m.blocks {
            let cols = &w[base + w[r] as usize..base + w[r + 1] as usize];
            assert_eq!(cols, m.row(r / m.blocks, r % m.blocks));
        }
        assert_eq!(BlockMask::dense_causal(4, 0).to_words(), [0]);
    }
}

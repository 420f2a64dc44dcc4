//! Kernel choices made by timing on one adapter (`kestrel bench --tune`) instead of by the
//! adapter's kind: which layout the decode matvec takes and whether prefill uses the rows
//! matmul. A [`Gpu`](crate::Gpu) starts untuned (each kernel's `Layout::for_device`
//! decides); front ends load a saved choice with [`crate::Gpu::set_tuning`] before they plan.
//! Every choice offered here is one the kernel cases check against the CPU reference, so a
//! tuning changes speed, never results beyond their tolerances.

use crate::kernels::matvec;
use crate::Gpu;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tuning {
    /// The decode matvec's layout.
    pub matvec: Option<matvec::Layout>,
    /// Prefill through the rows matmul (true; only where the adapter runs it) or the tiled
    /// one (false).
    pub matmul_rows: Option<bool>,
}

/// The matvec layouts `bench --tune` times: the CPU (two) and GPU defaults and three between,
/// each with an even number of rows per lane (a SwiGLU epilogue takes row pairs, within a
/// row group when summed by subgroup) and each among the kernel cases' layouts or as the
/// defaults; then the four that fit in subgroups of 32 or fewer lanes again, summed by
/// subgroup (timed only where the adapter runs them: [`matvec_candidates`]).
pub const MATVEC_CANDIDATES: [matvec::Layout; 10] = [
    matvec::Layout::CPU,
    matvec::Layout::CPU_STREAM,
    matvec::Layout::GPU,
    L8X8,
    L32X4,
    L4X4,
    matvec::Layout::GPU.by_subgroup(),
    L8X8.by_subgroup(),
    L32X4.by_subgroup(),
    L4X4.by_subgroup(),
];

const L8X8: matvec::Layout = layout(8, 8);
const L32X4: matvec::Layout = layout(32, 4);
const L4X4: matvec::Layout = layout(4, 4);

/// `lanes` by `rows_per_lane`, summed through workgroup memory.
const fn layout(lanes: u32, rows_per_lane: u32) -> matvec::Layout {
    matvec::Layout {
        lanes,
        rows_per_lane,
        subgroup: false,
    }
}

/// The [`MATVEC_CANDIDATES`] that `gpu` runs (those summed by subgroup only where its
/// subgroups hold their lanes).
pub fn matvec_candidates(gpu: &Gpu) -> Vec<matvec::Layout> {
    MATVEC_CANDIDATES
        .into_iter()
        .filter(|&l| matvec::runs(gpu, l))
        .collect()
}

impl Tuning {
    /// One line a value: `matvec LANES ROWS_PER_LANE` (then ` subgroup` when summed by
    /// subgroup), `matmul rows|tiles`.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(l) = self.matvec {
            let by = if l.subgroup { " subgroup" } else { "" };
            s.push_str(&format!("matvec {} {}{by}\n", l.lanes, l.rows_per_lane));
        }
        if let Some(rows) = self.matmul_rows {
            s.push_str(&format!("matmul {}\n", if rows { "rows" } else { "tiles" }));
        }
        s
    }

    /// Read [`Tuning::to_text`]'s format back; a line it does not know, or a matvec layout
    /// that is not one of [`MATVEC_CANDIDATES`], is an error naming it.
    pub fn from_text(text: &str) -> Result<Tuning, String> {
        let mut t = Tuning::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["matvec", lanes, rows, by @ ..] if matches!(by, [] | ["subgroup"]) => {
                    let layout = matvec::Layout {
                        lanes: lanes.parse().map_err(|_| format!("bad line {line:?}"))?,
                        rows_per_lane: rows.parse().map_err(|_| format!("bad line {line:?}"))?,
                        subgroup: !by.is_empty(),
                    };
                    if !MATVEC_CANDIDATES.contains(&layout) {
                        return Err(format!("{line:?} is not a matvec layout Kestrel times"));
                    }
                    t.matvec = Some(layout);
                }
                ["matmul", "rows"] => t.matmul_rows = Some(true),
                ["matmul", "tiles"] => t.matmul_rows = Some(false),
                _ => return Err(format!("bad line {line:?}")),
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunings_read_back_and_odd_files_are_refused() {
        for t in [
            Tuning::default(),
            Tuning {
                matvec: Some(MATVEC_CANDIDATES[2]),
                matmul_rows: Some(false),
            },
            Tuning {
                matvec: Some(matvec::Layout::GPU),
                matmul_rows: Some(true),
            },
            Tuning {
                matvec: Some(matvec::Layout::GPU.by_subgroup()),
                matmul_rows: None,
            },
        ] {
            assert_eq!(Tuning::from_text(&t.to_text()), Ok(t));
        }
        for bad in [
            "matvec 3 3",
            "matvec x 2",
            "matmul fast",
            "speed 9",
            "matvec 16",
            "matvec 32 2 shuffle",
            "matvec 32 2 subgroup x",
            "matvec 16 16 subgroup",
        ] {
            assert!(Tuning::from_text(bad).is_err(), "{bad}");
        }
    }
}

//! How one attention layer keeps keys and values: which absolute positions a query sees and in
//! which cache row each position lives.
//!
//! One rule covers the three cache kinds. A query at absolute position `p` sees the positions
//! `[0, min(sinks, lo)) ∪ [lo, p]`, with `lo = max(0, p + 1 - window)`:
//! - linear (no window): every earlier position; row = position.
//! - sliding window (Mistral): the last `window` positions, the query's own included; rows form
//!   a ring of `window + chunk` rows, so a prefill chunk of up to `chunk` tokens never overwrites
//!   a key that one of its queries still needs (a context no longer than that ring gets one
//!   row per position instead). Keys are cached after RoPE.
//! - attention sinks (StreamingLLM): the first `sinks` positions forever plus the last `window`;
//!   keys are cached before RoPE and rotated inside attention by their index in that list
//!   ("positions counted inside the cache"), the query by the list's length minus one, so
//!   positions never exceed `sinks + window - 1` and generation can run indefinitely.
//!
//! In a batched step (`crate::batch`) each layout is one sequence's, paged into a shared pool
//! ([`KvLayout::paged`]): the sequence's cache row c lies in the block its block table row
//! lists at c / KV_BLOCK.

use crate::error::{Error, Result};

/// Largest prefill chunk a ring cache is sized for.
pub const MAX_RING_CHUNK: usize = 512;

/// Marks "no window" in kernel parameters.
pub const NO_WINDOW: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvLayout {
    /// Positions kept forever at the start of the cache (rows 0..sinks).
    pub sinks: usize,
    /// Positions a query sees at the end of the sequence, itself included; None: all of them.
    pub window: Option<usize>,
    /// Rows in the cache: `sinks` fixed rows, then a ring.
    pub rows: usize,
    /// Keys are cached before RoPE and rotated in attention with in-cache positions.
    pub rope_in_attention: bool,
    /// The longest run of new tokens one pass may append, when the ring can wrap.
    pub max_chunk: Option<usize>,
    /// Paged (a batched step, `crate::batch`): the rows of the pool the cache tensor is, one
    /// sequence's `rows` lying in its blocks (found through its row of the block table).
    pub pool_rows: Option<usize>,
}

impl KvLayout {
    /// One row per position, up to `capacity` positions.
    pub fn linear(capacity: usize) -> KvLayout {
        KvLayout {
            sinks: 0,
            window: None,
            rows: capacity.max(1),
            rope_in_attention: false,
            max_chunk: None,
            pool_rows: None,
        }
    }

    /// A sliding window of `window` positions (Mistral's `sliding_window`) for a sequence of
    /// up to `capacity` positions.
    pub fn sliding(window: usize, capacity: usize) -> Result<KvLayout> {
        check_positive("sliding window", window)?;
        if window >= capacity {
            return Ok(KvLayout::linear(capacity));
        }
        let chunk = ring_chunk(window);
        let wraps = capacity > window + chunk;
        Ok(KvLayout {
            sinks: 0,
            window: Some(window),
            rows: if wraps { window + chunk } else { capacity },
            rope_in_attention: false,
            max_chunk: wraps.then_some(chunk),
            pool_rows: None,
        })
    }

    /// StreamingLLM: `sinks` first positions plus the last `window`.
    pub fn streaming(sinks: usize, window: usize) -> Result<KvLayout> {
        check_positive("attention sink count", sinks)?;
        check_positive("KV window", window)?;
        Ok(KvLayout {
            sinks,
            window: Some(window),
            rows: sinks + window + ring_chunk(window),
            rope_in_attention: true,
            max_chunk: Some(ring_chunk(window)),
            pool_rows: None,
        })
    }

    /// This layout as one sequence's share of a batched step's pool of `pool_rows` rows
    /// (`crate::batch`): cache row c of the sequence is row c % KV_BLOCK of the block its
    /// block table row lists at c / KV_BLOCK.
    pub fn paged(self, pool_rows: usize) -> KvLayout {
        KvLayout {
            pool_rows: Some(pool_rows),
            ..self
        }
    }

    /// Whether the layout is a batched step's ([`KvLayout::paged`]).
    pub fn pages(&self) -> bool {
        self.pool_rows.is_some()
    }

    /// Rows of the cache tensor: the pool's when paged, else the layout's.
    pub fn cache_rows(&self) -> usize {
        self.pool_rows.unwrap_or(self.rows)
    }

    /// This layout with its ring sized for appends of up to `chunk` tokens at a time (a
    /// batched step's rows of one sequence) in a sequence of up to `capacity` positions: a
    /// sliding window that then never wraps keeps a row per position; a layout without a
    /// ring stays as it is.
    pub fn for_chunks(self, chunk: usize, capacity: usize) -> KvLayout {
        let (Some(_), Some(window)) = (self.max_chunk, self.window) else {
            return self;
        };
        let ring = window + chunk;
        if !self.rope_in_attention && capacity <= ring {
            return KvLayout {
                rows: capacity.max(1),
                max_chunk: None,
                ..self
            };
        }
        KvLayout {
            rows: self.sinks + ring,
            max_chunk: Some(chunk),
            ..self
        }
    }

    /// Rows of the ring after the sink rows.
    pub fn ring(&self) -> usize {
        self.rows - self.sinks
    }

    /// The cache row of absolute position `pos`.
    pub fn row(&self, pos: usize) -> usize {
        if pos < self.sinks {
            pos
        } else {
            self.sinks + (pos - self.sinks) % self.ring()
        }
    }

    /// What the query at `pos` sees: `(sink_end, lo)` for positions `[0, sink_end) ∪ [lo, pos]`.
    pub fn visible(&self, pos: usize) -> (usize, usize) {
        let lo = match self.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        (self.sinks.min(lo), lo)
    }

    /// The absolute positions the query at `pos` sees, in cache order.
    pub fn visible_positions(&self, pos: usize) -> Vec<usize> {
        let (sink_end, lo) = self.visible(pos);
        (0..sink_end).chain(lo..=pos).collect()
    }

    /// The RoPE position of the query at `pos`: its absolute position, or with
    /// `rope_in_attention` its index inside the cache.
    pub fn query_position(&self, pos: usize) -> usize {
        if self.rope_in_attention {
            self.visible_positions(pos).len() - 1
        } else {
            pos
        }
    }

    /// Whether, after running up to `pos`, the keys a query at `len` (and later) needs are
    /// still in the cache, so the sequence can be cut back to `len` and continued.
    pub fn can_truncate(&self, pos: usize, len: usize) -> bool {
        match (self.max_chunk, self.window) {
            (Some(_), Some(w)) => pos - len <= self.ring() - w,
            _ => true,
        }
    }

    /// Cache bytes per layer for keys and values of `width` f32 each.
    pub fn bytes(&self, width: usize) -> u64 {
        2 * (self.rows * width * 4) as u64
    }

    /// The `window` kernel parameter.
    pub fn window_param(&self) -> u32 {
        self.window.map_or(NO_WINDOW, |w| w as u32)
    }
}

/// Prefill chunk a ring is sized for: the window itself up to `MAX_RING_CHUNK`.
fn ring_chunk(window: usize) -> usize {
    window.clamp(1, MAX_RING_CHUNK)
}

fn check_positive(what: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InputOutOfRange(format!("{what} must be at least 1")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_sees_everything() {
        let l = KvLayout::linear(16);
        assert_eq!(l.visible_positions(5), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(l.row(7), 7);
        assert_eq!(l.max_chunk, None);
    }

    #[test]
    fn sliding_window_ring() {
        let l = KvLayout::sliding(4, 100).unwrap();
        assert_eq!(l.rows, 8);
        assert_eq!(l.max_chunk, Some(4));
        assert_eq!(l.visible_positions(2), vec![0, 1, 2]);
        assert_eq!(l.visible_positions(9), vec![6, 7, 8, 9]);
        assert_eq!(l.row(9), 1);
        assert_eq!(l.query_position(9), 9);
        // A chunk of 4 starting at 12 needs keys 9..=15: 7 distinct rows of 8.
        let rows: std::collections::HashSet<_> = (9..16).map(|p| l.row(p)).collect();
        assert_eq!(rows.len(), 7);
    }

    #[test]
    fn sinks_keep_the_start() {
        let l = KvLayout::streaming(2, 3).unwrap();
        assert_eq!(l.visible_positions(1), vec![0, 1]);
        assert_eq!(l.visible_positions(4), vec![0, 1, 2, 3, 4]);
        assert_eq!(l.visible_positions(10), vec![0, 1, 8, 9, 10]);
        assert_eq!(l.query_position(10), 4);
        assert_eq!(l.row(0), 0);
        assert_eq!(l.row(2), 2);
        assert_eq!(l.row(2 + l.ring()), 2);
    }

    #[test]
    fn short_contexts_need_no_ring() {
        assert_eq!(KvLayout::sliding(8, 8).unwrap(), KvLayout::linear(8));
        let l = KvLayout::sliding(4, 6).unwrap();
        assert_eq!((l.rows, l.max_chunk, l.window), (6, None, Some(4)));
        assert_eq!(l.visible_positions(5), vec![2, 3, 4, 5]);
    }

    #[test]
    fn zero_is_rejected() {
        assert!(KvLayout::sliding(0, 8).is_err());
        assert!(KvLayout::streaming(0, 4).is_err());
        assert!(KvLayout::streaming(4, 0).is_err());
    }

    #[test]
    fn truncation_needs_surviving_keys() {
        let l = KvLayout::sliding(4, 100).unwrap();
        assert!(l.can_truncate(20, 16));
        assert!(!l.can_truncate(20, 15));
        assert!(KvLayout::linear(8).can_truncate(8, 0));
    }
}

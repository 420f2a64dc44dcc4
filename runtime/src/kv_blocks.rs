//! The blocks of a batched session's KV pool (`crate::batch`): which sequences hold each, and
//! which full blocks of tokens are kept for reuse (prefix caching).
//!
//! A block is full once all [`KV_BLOCK`] of its positions are written, and a full block is
//! never written again (a sequence only appends), so sequences whose tokens begin alike can
//! share their leading full blocks with no copy: a sequence's first partial block is always
//! its own. A full block is registered under (its predecessor's entry, its tokens), so a
//! lookup follows a prompt block by block and matches only the exact same prefix. When its
//! last holder leaves, a registered block stays idle, still findable, until a new block is
//! needed and none is free; then the least recently released idle block is reused (and
//! forgotten: blocks registered after it can no longer be reached and are reused in turn).

use std::collections::{BTreeMap, HashMap};

use crate::batch::KV_BLOCK;

/// A registered block's key: its predecessor's entry (0: the sequence's first block) and its
/// tokens.
type Key = (u64, [u32; KV_BLOCK]);

pub struct BlockPool {
    /// Holders of each block.
    refs: Vec<u32>,
    /// Blocks nobody holds and nothing refers to.
    free: Vec<u32>,
    /// Registered blocks nobody holds, by release order (the oldest first).
    idle: BTreeMap<u64, u32>,
    /// When each idle block was released (its key in `idle`).
    released: Vec<Option<u64>>,
    index: HashMap<Key, u32>,
    /// Each registered block's key and entry (the number its successors' keys name).
    key: Vec<Option<(Key, u64)>>,
    next_entry: u64,
    clock: u64,
}

/// The tokens of block `i` of `tokens` (which holds it whole).
fn block_tokens(tokens: &[u32], i: usize) -> [u32; KV_BLOCK] {
    let mut b = [0; KV_BLOCK];
    b.copy_from_slice(&tokens[i * KV_BLOCK..][..KV_BLOCK]);
    b
}

impl BlockPool {
    /// A pool of `blocks` blocks, block 0 kept out (a batch's padding rows write there).
    pub fn new(blocks: usize) -> BlockPool {
        BlockPool {
            refs: vec![0; blocks],
            free: (1..blocks as u32).rev().collect(),
            idle: BTreeMap::new(),
            released: vec![None; blocks],
            index: HashMap::new(),
            key: vec![None; blocks],
            next_entry: 1,
            clock: 0,
        }
    }

    /// Blocks a sequence could take now (free or idle).
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Registered blocks that hold the leading full blocks of `tokens`, at most `most`.
    pub fn lookup(&self, tokens: &[u32], most: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut parent = 0;
        for i in 0..(tokens.len() / KV_BLOCK).min(most) {
            match self.index.get(&(parent, block_tokens(tokens, i))) {
                Some(&b) => {
                    out.push(b);
                    parent = self.entry_of(Some(b));
                }
                None => break,
            }
        }
        out
    }

    /// Hold `cached` (from [`BlockPool::lookup`]) and `fresh` new blocks: the sequence's
    /// blocks in order, or None (nothing taken) when too few are available.
    pub fn take(&mut self, cached: &[u32], fresh: usize) -> Option<Vec<u32>> {
        let cached_idle = cached
            .iter()
            .filter(|&&b| self.refs[b as usize] == 0)
            .count();
        if fresh > self.available() - cached_idle {
            return None;
        }
        for &b in cached {
            self.hold(b);
        }
        let mut blocks = cached.to_vec();
        for _ in 0..fresh {
            let b = match self.free.pop() {
                Some(b) => b,
                None => {
                    let (_, b) = self.idle.pop_first()?;
                    self.released[b as usize] = None;
                    self.forget(b);
                    b
                }
            };
            self.refs[b as usize] = 1;
            blocks.push(b);
        }
        Some(blocks)
    }

    fn hold(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            if let Some(t) = self.released[b as usize].take() {
                self.idle.remove(&t);
            }
        }
        self.refs[b as usize] += 1;
    }

    /// Drop a block's registration.
    fn forget(&mut self, b: u32) {
        if let Some((k, _)) = self.key[b as usize].take() {
            self.index.remove(&k);
        }
    }

    /// Let go of `blocks`: each that nobody else holds becomes idle (registered) or free.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            *r = r.saturating_sub(1);
            if *r > 0 {
                continue;
            }
            if self.key[b as usize].is_some() {
                self.clock += 1;
                self.idle.insert(self.clock, b);
                self.released[b as usize] = Some(self.clock);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The entry a registered block's successors name (0 for none: a first block's parent).
    pub fn entry_of(&self, block: Option<u32>) -> u64 {
        block
            .and_then(|b| self.key[b as usize])
            .map_or(0, |(_, e)| e)
    }

    /// Register a sequence's full blocks after `chain` (those registered or found before):
    /// `blocks` its blocks, `tokens` the tokens written so far. A block whose prefix is
    /// already registered under another block keeps that one, whose entry its successors
    /// then name. Returns the chain to pass next time.
    pub fn register(&mut self, blocks: &[u32], tokens: &[u32], chain: Chain) -> Chain {
        let full = (tokens.len() / KV_BLOCK).min(blocks.len());
        let mut parent = chain.entry;
        for (i, &own) in blocks.iter().enumerate().take(full).skip(chain.blocks) {
            let k = (parent, block_tokens(tokens, i));
            let b = match self.index.get(&k) {
                Some(&b) => b,
                None => {
                    self.forget(own);
                    self.key[own as usize] = Some((k, self.next_entry));
                    self.next_entry += 1;
                    self.index.insert(k, own);
                    own
                }
            };
            parent = self.entry_of(Some(b));
        }
        Chain {
            blocks: full.max(chain.blocks),
            entry: parent,
        }
    }
}

/// How far a sequence's blocks are registered: its first `blocks` blocks, the last of them
/// under `entry` (the number the next one's key names; entries are never reused, so a chain
/// whose blocks were reused meanwhile only stops matching).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chain {
    pub blocks: usize,
    pub entry: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + seed).collect()
    }

    #[test]
    fn shares_full_blocks_of_the_same_prefix_only() {
        let mut pool = BlockPool::new(9);
        let a = toks(40, 1); // two full blocks and a partial one
        let blocks = pool.take(&[], 3).expect("room");
        assert_eq!(pool.register(&blocks, &a, Chain::default()).blocks, 2);
        // The same prefix finds both full blocks; a different second block finds one.
        assert_eq!(pool.lookup(&a, 8), blocks[..2]);
        let mut b = a.clone();
        b[20] += 1;
        assert_eq!(pool.lookup(&b, 8), blocks[..1]);
        // At most `most`, and never a block of another first block.
        assert_eq!(pool.lookup(&a, 1), blocks[..1]);
        assert!(pool.lookup(&toks(40, 2), 8).is_empty());
        // Shared: holding them again takes no new block.
        let shared = pool.take(&blocks[..2], 1).expect("room");
        assert_eq!(pool.available(), 8 - 4);
        pool.release(&blocks);
        pool.release(&shared);
        // Idle blocks stay findable and count as available.
        assert_eq!(pool.available(), 8);
        assert_eq!(pool.lookup(&a, 8), blocks[..2]);
    }

    #[test]
    fn reuses_idle_blocks_oldest_first_and_forgets_them() {
        let mut pool = BlockPool::new(4); // 3 usable
        let a = toks(32, 1);
        let blocks = pool.take(&[], 2).expect("room");
        pool.register(&blocks, &a, Chain::default());
        pool.release(&blocks);
        // Needing all three blocks reuses both idle ones: the prefix is gone.
        let all = pool.take(&[], 3).expect("room");
        assert_eq!(all.len(), 3);
        assert!(pool.lookup(&a, 8).is_empty());
        assert!(pool.take(&[], 1).is_none());
        pool.release(&all);
        assert_eq!(pool.available(), 3);
    }

    #[test]
    fn a_second_writer_of_a_prefix_continues_the_first_ones_chain() {
        let mut pool = BlockPool::new(9);
        let a = toks(48, 1);
        let first = pool.take(&[], 3).expect("room");
        let second = pool.take(&[], 3).expect("room");
        let chain = pool.register(&first, &a[..16], Chain::default());
        // The second sequence wrote the same tokens into its own blocks.
        assert_eq!(pool.register(&second, &a, Chain::default()).blocks, 3);
        assert_eq!(pool.register(&first, &a, chain).blocks, 3);
        let found = pool.lookup(&a, 8);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0], first[0]);
    }
}

//! The RWKV world tokenizer of GGUF files (`tokenizer.ggml.model` = "rwkv"): a trie over the
//! tokens' bytes, and text split by greedy longest match from the left — llama.cpp's
//! `llm_tokenizer_rwkv` and BlinkDL's `TRIE_TOKENIZER`. llama.cpp's converter stores each
//! token as Python's escaped form of its bytes (`repr(b)[2:-1]`: `\n`, `\t`, `\r`, `\xNN`,
//! `\\`, `\'`); [`unescape`] gives the bytes back as llama.cpp does.

use std::collections::{HashMap, HashSet};

use crate::formats::gguf_tokenizer::{token_type, GgufVocab};

pub struct RwkvTokenizer {
    /// Each id's bytes.
    tokens: Vec<Vec<u8>>,
    /// Trie edges: (node, byte) -> node; node 0 is the root.
    edges: HashMap<(u32, u8), u32>,
    /// The token that ends at each node, if any (a later duplicate wins, as in llama.cpp).
    ends: Vec<Option<u32>>,
    /// Control tokens (`<s>`): decoding skips them.
    special: HashSet<u32>,
    /// The id given to a byte no token starts with (none in a world vocabulary).
    unk: Option<u32>,
}

/// A token's bytes from its escaped text (llama.cpp's `llama_unescape_rwkv_token`).
pub fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(c) = bytes.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match bytes.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'x') => {
                let hex = |c: Option<u8>| match c {
                    Some(c) => (c as char).to_digit(16).unwrap_or(0) as u8,
                    None => 0,
                };
                let hi = hex(bytes.next());
                out.push((hi << 4) | hex(bytes.next()));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

impl RwkvTokenizer {
    pub fn new(vocab: &GgufVocab) -> RwkvTokenizer {
        let tokens: Vec<Vec<u8>> = vocab.tokens.iter().map(|t| unescape(t)).collect();
        let mut edges = HashMap::new();
        let mut ends = vec![None];
        for (id, bytes) in tokens.iter().enumerate() {
            let mut node = 0u32;
            for &b in bytes {
                let next = ends.len() as u32;
                node = *edges.entry((node, b)).or_insert_with(|| {
                    ends.push(None);
                    next
                });
            }
            if node != 0 {
                ends[node as usize] = Some(id as u32);
            }
        }
        let special = (0..tokens.len())
            .filter(|&i| vocab.token_type(i) == token_type::CONTROL)
            .map(|i| i as u32)
            .collect();
        RwkvTokenizer {
            tokens,
            edges,
            ends,
            special,
            unk: vocab.unk,
        }
    }

    /// Greedy longest match from the left; a byte no token starts with becomes the unknown
    /// token (or is dropped when there is none, as llama.cpp's null id would be).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = text.as_bytes();
        let mut out = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let mut node = 0u32;
            let mut best = None;
            for (i, &b) in text[at..].iter().enumerate() {
                match self.edges.get(&(node, b)) {
                    Some(&n) => node = n,
                    None => break,
                }
                if let Some(id) = self.ends[node as usize] {
                    best = Some((id, i + 1));
                }
            }
            match best {
                Some((id, len)) => {
                    out.push(id);
                    at += len;
                }
                None => {
                    out.extend(self.unk);
                    at += 1;
                }
            }
        }
        out
    }

    /// The ids' bytes as text (invalid UTF-8 replaced), control tokens skipped; ids past the
    /// vocabulary decode to nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|id| !self.special.contains(id))
            .filter_map(|&id| self.tokens.get(id as usize))
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_undone_like_llama_cpp() {
        assert_eq!(unescape(r"a\nb\t\r"), b"a\nb\t\r");
        assert_eq!(unescape(r"\xe4\xb8"), [0xe4, 0xb8]);
        assert_eq!(unescape(r"\\n\'"), b"\\n'");
        assert_eq!(unescape("é"), "é".as_bytes());
    }
}

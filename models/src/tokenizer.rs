//! Text to token ids and back, through the `tokenizers` crate (tokenizer.json and GGUF
//! vocabularies) or, for RWKV's world vocabulary in GGUF files, its trie.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::formats::rwkv_tokenizer::RwkvTokenizer;

pub struct TextTokenizer {
    inner: Inner,
    path: PathBuf,
    /// Special tokens: decoding skips them.
    special: HashSet<u32>,
}

enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Rwkv(RwkvTokenizer),
}

impl TextTokenizer {
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<TextTokenizer> {
        let err = |message: String| ModelError::Tokenizer {
            file: path.to_path_buf(),
            message,
        };
        // Parsed as JSON first, then read from the parsed value: tokenizers 0.22 panics
        // (an `expect`) on a JSON syntax error inside the "decoder" object (found by the
        // tokenizer fuzz target), which cannot happen on an already parsed value.
        let json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(json).map_err(|e| err(e.to_string()))?;
        Ok(TextTokenizer::from_tokenizer(path, inner))
    }

    pub fn from_tokenizer(path: &Path, inner: tokenizers::Tokenizer) -> TextTokenizer {
        let special = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        TextTokenizer {
            inner: Inner::Hf(Box::new(inner)),
            path: path.to_path_buf(),
            special,
        }
    }

    pub fn from_rwkv(path: &Path, rwkv: RwkvTokenizer) -> TextTokenizer {
        let special = (0..rwkv.vocab_size() as u32)
            .filter(|&id| rwkv.is_special(id))
            .collect();
        TextTokenizer {
            inner: Inner::Rwkv(rwkv),
            path: path.to_path_buf(),
            special,
        }
    }

    fn err(&self, e: tokenizers::Error) -> ModelError {
        ModelError::Tokenizer {
            file: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Token ids of `text`, with the tokenizer's own special-token handling.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => {
                let enc = t.encode(text, true).map_err(|e| self.err(e))?;
                Ok(enc.get_ids().to_vec())
            }
            Inner::Rwkv(t) => Ok(t.encode(text)),
        }
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Hf(t) => t.decode(ids, true).map_err(|e| self.err(e)),
            Inner::Rwkv(t) => Ok(t.decode(ids)),
        }
    }

    /// True for a special token (which [`TextTokenizer::decode`] skips).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The underlying Hugging Face tokenizer; None for RWKV's world tokenizer.
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.inner {
            Inner::Hf(t) => Some(t),
            Inner::Rwkv(_) => None,
        }
    }

    /// The number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Rwkv(t) => t.vocab_size(),
        }
    }
}

/// Turns generated ids into text pieces as soon as they are complete, in time linear in the
/// reply: each push decodes only a short window of recent ids (the prefix/read offsets
/// technique of Hugging Face's text-generation-inference), not the whole reply. The window
/// starts with the ids of the last piece (so a decoder that treats a sequence's first token
/// differently, such as SentencePiece dropping its leading space, sees the same context as
/// in a whole decode), followed by the ids not shown yet. A multi-byte character split over
/// tokens is held back until it is whole. For text a model writes (valid UTF-8) the pieces
/// add up to the whole decode; so they do for any ids under byte-level (GPT-2 style)
/// vocabularies, whose decoding resynchronises after invalid bytes.
#[derive(Default)]
pub struct TextStream {
    /// The last piece's ids, then the ids not shown yet.
    window: Vec<u32>,
    /// How many ids of `window` belong to the last piece.
    prefix: usize,
    /// The decode of `window[..prefix]`.
    prefix_text: String,
}

/// Ids held back at most while their text stays incomplete (a character has at most four
/// bytes, so only invalid bytes hold text this long).
const MAX_PENDING: usize = 16;

impl TextStream {
    /// Add `id`; returns the text it completes (often empty while a character is split).
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        if tok.is_special(id) {
            // Decoding skips it anyway; left out, a run of them cannot grow the window.
            return Ok(String::new());
        }
        self.window.push(id);
        let text = tok.decode(&self.window)?;
        let full = self.window.len() - self.prefix >= MAX_PENDING;
        if text.ends_with('\u{FFFD}') && !full {
            // An incomplete character, most likely: wait for its other bytes.
            return Ok(String::new());
        }
        let piece = match self.new_text(tok, &text)? {
            Some(piece) => piece,
            // No text yet (a token that only shapes the next one's, such as a space a
            // SentencePiece decoder strips at the start).
            None if !full => return Ok(String::new()),
            None => String::new(),
        };
        self.window.drain(..self.prefix);
        self.prefix = self.window.len();
        self.prefix_text = tok.decode(&self.window)?;
        Ok(piece)
    }

    /// The text still held back (an incomplete character at the very end, shown as U+FFFD
    /// as a whole decode would); call once the reply is over.
    pub fn finish(&mut self, tok: &TextTokenizer) -> Result<String> {
        let text = tok.decode(&self.window)?;
        let rest = self.new_text(tok, &text)?.unwrap_or_default();
        *self = TextStream::default();
        Ok(rest)
    }

    /// What `text` (the window's decode) adds to the last piece's text, if anything.
    fn new_text(&self, tok: &TextTokenizer, text: &str) -> Result<Option<String>> {
        let at = self.prefix_text.len();
        if text.starts_with(&self.prefix_text) {
            return Ok((text.len() > at).then(|| text[at..].to_string()));
        }
        // The last piece's text changed: byte-fallback tokens of an invalid UTF-8 run all
        // decode to U+FFFD, earlier ones of the run included. What was shown stays shown;
        // the new ids are decoded on their own.
        let rest = tok.decode(&self.window[self.prefix..])?;
        Ok((!rest.is_empty()).then_some(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_tokenizer() -> TextTokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/llama_gqa/tokenizer.json");
        let bytes = std::fs::read(&path).expect("fixture tokenizer");
        TextTokenizer::from_bytes(&path, &bytes).expect("tokenizer")
    }

    /// A SentencePiece-style vocabulary as Llama 2's tokenizer.json declares it: "▁" for
    /// spaces, byte-fallback tokens, and a decoder that strips the one leading space of a
    /// whole decode (so a window that starts mid-reply must not lose its space).
    fn sentencepiece_tokenizer() -> TextTokenizer {
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(t.to_string(), i.into());
        }
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), (3 + b).into());
        }
        let words = [
            "▁", "▁Hello", "▁world", "!", "é", "▁the", "s", "▁▁", "ü", "▁a",
        ];
        for (i, w) in words.iter().enumerate() {
            vocab.insert(w.to_string(), (259 + i).into());
        }
        let special = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": []}
        });
        let path = Path::new("sentencepiece.json");
        TextTokenizer::from_bytes(path, json.to_string().as_bytes()).expect("tokenizer")
    }

    /// Stream `ids` and check the pieces add up to the whole decode; returns the largest
    /// window seen.
    fn stream_matches_whole_decode(tok: &TextTokenizer, ids: &[u32]) -> usize {
        let mut stream = TextStream::default();
        let mut text = String::new();
        let mut widest = 0;
        for &id in ids {
            text.push_str(&stream.push(tok, id).expect("push"));
            widest = widest.max(stream.window.len());
        }
        text.push_str(&stream.finish(tok).expect("finish"));
        assert_eq!(text, tok.decode(ids).expect("decode"));
        widest
    }

    #[test]
    fn multi_byte_characters_split_over_tokens_come_out_whole() {
        let tok = fixture_tokenizer();
        // A byte-level vocabulary of 272: most of these characters are several tokens.
        let text = "Grüße, 世界! Ωmega — ok 🦅 done";
        let ids = tok.encode(text).expect("encode");
        assert!(
            ids.len() > text.chars().count(),
            "characters split over tokens"
        );
        let mut stream = TextStream::default();
        let mut pieces = Vec::new();
        for &id in &ids {
            let piece = stream.push(&tok, id).expect("push");
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            pieces.push(piece);
        }
        assert_eq!(stream.finish(&tok).expect("finish"), "");
        assert_eq!(pieces.concat(), tok.decode(&ids).expect("decode"));
        assert!(
            pieces.iter().filter(|p| p.is_empty()).count() > 0,
            "held back"
        );
    }

    #[test]
    fn sentencepiece_spaces_and_byte_fallback_stream_like_a_whole_decode() {
        let tok = sentencepiece_tokenizer();
        // "▁Hello ▁world ! é <0xE4><0xB8><0x96> ▁the": the window after the first piece
        // starts at "▁world", which a whole decode of the window alone would strip.
        let ids = [260, 261, 262, 263, 3 + 0xE4, 3 + 0xB8, 3 + 0x96, 264];
        stream_matches_whole_decode(&tok, &ids);
        assert_eq!(tok.decode(&ids).expect("decode"), "Hello world!é世 the");
        // A reply that starts with a lone "▁" (stripped alone, kept before "▁world") and a
        // special token amid it.
        let ids = [259, 2, 261, 262, 259, 259, 265];
        stream_matches_whole_decode(&tok, &ids);
        assert_eq!(tok.decode(&ids).expect("decode"), " world!  s");
        // A long reply a model could write: words and whole characters as byte runs.
        let mut state = 777u32;
        let mut random = move |n: u32| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 8) % n
        };
        let mut ids = Vec::new();
        while ids.len() < 3000 {
            match random(4) {
                0 => {
                    let c = ['é', '世', '🦅', 'ß', 'Ω'][random(5) as usize];
                    let mut buf = [0u8; 4];
                    ids.extend(c.encode_utf8(&mut buf).bytes().map(|b| 3 + b as u32));
                }
                1 => ids.push(random(3)),
                _ => ids.push(259 + random(10)),
            }
        }
        let widest = stream_matches_whole_decode(&tok, &ids);
        assert!(widest <= 8, "window of {widest} ids");
        // Random ids, mostly bytes: invalid runs turn into U+FFFD, even bytes already shown,
        // so no stream can match the whole decode; it must still keep every word and never
        // hold more than a short window.
        let ids: Vec<u32> = (0..3000).map(|_| random(269)).collect();
        let mut stream = TextStream::default();
        let mut text = String::new();
        for &id in &ids {
            text.push_str(&stream.push(&tok, id).expect("push"));
            assert!(
                stream.window.len() <= 2 * MAX_PENDING,
                "{}",
                stream.window.len()
            );
        }
        text.push_str(&stream.finish(&tok).expect("finish"));
        let whole = tok.decode(&ids).expect("decode");
        for word in ["Hello", "world", "the", "!"] {
            assert_eq!(
                text.matches(word).count(),
                whole.matches(word).count(),
                "{word}"
            );
        }
    }

    #[test]
    fn a_long_random_reply_streams_like_a_whole_decode_in_a_short_window() {
        let tok = fixture_tokenizer();
        let vocab = tok.vocab_size() as u32;
        // Random ids: invalid byte sequences, split characters and special tokens included.
        let mut state = 12345u32;
        let ids: Vec<u32> = (0..4000)
            .map(|_| {
                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                (state >> 8) % vocab
            })
            .collect();
        let widest = stream_matches_whole_decode(&tok, &ids);
        // The window holds the last piece and an unfinished character (at most 4 bytes, but
        // random bytes may leave an invalid one at the end for a while): never the reply.
        assert!(widest < 40, "window of {widest} ids");
        // Text a model would write, and a run of special tokens in the middle.
        let mut ids = tok
            .encode("Hello there, how are you? Fine: ünïcödé 世界")
            .expect("encode");
        // `</s>` in the fixtures' tokenizer (tests/fixtures/README.md).
        let special = 273;
        assert!(tok.is_special(special));
        ids.splice(5..5, std::iter::repeat_n(special, 50));
        let widest = stream_matches_whole_decode(&tok, &ids);
        assert!(widest <= 8, "window of {widest} ids");
    }
}

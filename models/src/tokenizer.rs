//! Text to token ids and back, through the `tokenizers` crate (tokenizer.json).

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<TextTokenizer> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer {
                file: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(TextTokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    pub fn from_tokenizer(path: &Path, inner: tokenizers::Tokenizer) -> TextTokenizer {
        TextTokenizer {
            inner,
            path: path.to_path_buf(),
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
        let enc = self.inner.encode(text, true).map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| self.err(e))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns generated ids into text pieces as soon as they are complete, in time linear in the
/// reply: each push decodes only a short window of recent ids (the prefix/read offsets
/// technique of Hugging Face's text-generation-inference), not the whole reply. The window
/// starts with the ids of the last piece (so a decoder that treats a sequence's first token
/// differently, such as SentencePiece dropping its leading space, sees the same context as
/// in a whole decode), followed by the ids not shown yet. A multi-byte character split over
/// tokens is held back until it is whole.
#[derive(Default)]
pub struct TextStream {
    /// The last piece's ids, then the ids not shown yet.
    window: Vec<u32>,
    /// How many ids of `window` belong to the last piece.
    prefix: usize,
    /// The decode of `window[..prefix]`.
    prefix_text: String,
}

impl TextStream {
    /// Add `id`; returns the text it completes (often empty while a character is split).
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.window.push(id);
        let text = tok.decode(&self.window)?;
        if text.ends_with('\u{FFFD}') {
            // An incomplete character, most likely: wait for its other bytes.
            return Ok(String::new());
        }
        if text == self.prefix_text {
            // The id decodes to nothing here (a special token): drop it, so a run of them
            // cannot grow the window.
            self.window.pop();
            return Ok(String::new());
        }
        match self.new_text(&text) {
            Some(piece) => {
                let piece = piece.to_string();
                self.window.drain(..self.prefix);
                self.prefix = self.window.len();
                self.prefix_text = tok.decode(&self.window)?;
                Ok(piece)
            }
            None => Ok(String::new()),
        }
    }

    /// The text still held back (an incomplete character at the very end, shown as U+FFFD
    /// as a whole decode would); call once the reply is over.
    pub fn finish(&mut self, tok: &TextTokenizer) -> Result<String> {
        let text = tok.decode(&self.window)?;
        let rest = self.new_text(&text).unwrap_or_default().to_string();
        *self = TextStream::default();
        Ok(rest)
    }

    /// What `text` (the window's decode) adds to the last piece's text, if that is a prefix.
    fn new_text<'t>(&self, text: &'t str) -> Option<&'t str> {
        let at = self.prefix_text.len();
        (text.len() > at && text.is_char_boundary(at) && text.starts_with(&self.prefix_text))
            .then(|| &text[at..])
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
    fn a_long_random_reply_streams_like_a_whole_decode_in_a_short_window() {
        let tok = fixture_tokenizer();
        let vocab = tok.inner().get_vocab_size(true) as u32;
        // Random ids: invalid byte sequences, split characters and special tokens included.
        let mut state = 12345u32;
        let ids: Vec<u32> = (0..4000)
            .map(|_| {
                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                (state >> 8) % vocab
            })
            .collect();
        let widest = stream_matches_whole_decode(&tok, &ids);
        eprintln!("4000 random ids: widest window {widest} ids");
        // The window holds the last piece and an unfinished character (at most 4 bytes, but
        // random bytes may leave an invalid one at the end for a while): never the reply.
        assert!(widest < 40, "window of {widest} ids");
        // Text a model would write, and a run of special tokens in the middle.
        let mut ids = tok
            .encode("Hello there, how are you? Fine: ünïcödé 世界")
            .expect("encode");
        let special = tok.inner().token_to_id("</s>").expect("a special token");
        ids.splice(5..5, std::iter::repeat_n(special, 50));
        let widest = stream_matches_whole_decode(&tok, &ids);
        assert!(widest <= 8, "window of {widest} ids");
    }
}

//! Arbitrary bytes as tokenizer.json (up to a first NUL byte, which JSON never holds raw);
//! the bytes after it as text to encode, and as ids to decode, whole and streamed.

#![no_main]

use std::path::Path;

use kestrel_models::{TextStream, TextTokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (json, rest) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"Hello world! 1234 w\xc3\xb6rld <s>"[..]),
    };
    let Ok(tok) = TextTokenizer::from_bytes(Path::new("fuzz/tokenizer.json"), json) else {
        return;
    };
    if let Ok(ids) = tok.encode(&String::from_utf8_lossy(rest)) {
        let _ = tok.decode(&ids);
    }
    let ids: Vec<u32> = rest
        .chunks(2)
        .map(|c| u32::from(c[0]) | u32::from(*c.get(1).unwrap_or(&0)) << 8)
        .chain([u32::MAX])
        .collect();
    let _ = tok.decode(&ids);
    let mut stream = TextStream::default();
    for &id in &ids {
        let _ = stream.push(&tok, id);
    }
    let _ = stream.finish(&tok);
});

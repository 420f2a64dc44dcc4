//! OpenAI request validation on arbitrary bodies (the first byte picks the endpoint): a
//! checked request or a 400 naming the problem, never a panic; an accepted request's ranges
//! hold (the generator's own validation passes).
#![no_main]

use kestrel::serve::openai::{parse, Endpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let endpoint = match first & 1 {
        0 => Endpoint::Chat,
        _ => Endpoint::Text,
    };
    match parse(endpoint, body) {
        Ok(r) => {
            assert!(r.request.validate().is_ok());
        }
        Err(e) => {
            assert_eq!(e.status, 400, "{e:?}");
            assert!(!e.message.is_empty());
        }
    }
});

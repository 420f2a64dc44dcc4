//! An arbitrary chat template and messages, rendered: the input split at NUL bytes is the
//! template, then (role, content) pairs; an odd count of parts asks for the generation
//! prompt. Rendering is bounded (minijinja's fuel, chat_template::RENDER_FUEL_BASE).

#![no_main]

use kestrel_models::chat_template::{ChatTemplate, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let messages: Vec<Message> = rest
        .chunks(2)
        .map(|m| Message::new(m[0], m.get(1).copied().unwrap_or_default()))
        .collect();
    let Ok(template) = ChatTemplate::or_fallback(Some(source), "<s>", "</s>") else {
        return;
    };
    let _ = template.render(&messages, rest.len() % 2 == 1);
});

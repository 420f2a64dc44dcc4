//! The `kestrel` package's library: the server's request parsers, here so that the fuzz
//! targets (tests/fuzz) run the very code `kestrel serve` runs. Everything else is the
//! binary's (src/main.rs).

pub mod serve {
    pub mod http;
    pub mod openai;
}

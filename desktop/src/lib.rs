//! The `kestrel` package's library: the server's request parser, here so that the fuzz
//! target (tests/fuzz) runs the very code `kestrel serve` runs. Everything else is the
//! binary's (src/main.rs).

pub mod serve {
    pub mod openai;
}

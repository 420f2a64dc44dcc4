//! Model file formats: config.json, safetensors, GGUF (the reader, its metadata read as a
//! config and its tensors under Hugging Face names, its tokenizer), tokenizer_config.json,
//! PyTorch `.pth` state dicts (read without running their pickles), RWKV's world tokenizer,
//! the host tensors every format hands out, and files kept inside their model folder.

pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod folder;
pub mod gguf;
pub mod gguf_decoders;
pub mod gguf_hf;
pub mod gguf_hf_recurrent;
pub mod gguf_tokenizer;
pub mod host;
pub mod pth;
pub mod range_read;
pub mod rwkv_tokenizer;
pub mod safetensors;
pub mod tokenizer_config;
pub mod zip_stored;

//! The blocks families are built from, each with its weights (loaded through scoped names)
//! and its graph: attention with its KV caches and run-time options, MLPs, norms, the Mamba
//! mixer, RWKV's mixes and time mixes, sparse experts and the LM head. Families use them;
//! nothing here knows a family.

pub mod attention;
pub mod attention_options;
pub mod lm_head;
pub mod mamba;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rwkv;

/// Results of graph building (runtime errors).
pub(crate) type GResult<T> = kestrel_runtime::Result<T>;

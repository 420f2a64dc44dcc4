//! Arbitrary bytes as a GGUF file, then everything of loading it that needs no GPU: its
//! metadata, the family's config (`gguf_parts`), the tensors a decoder family asks for under
//! their Hugging Face names with their shapes checked and their values read, and the
//! tokenizer from its metadata (built, then encoding and decoding). The upload itself needs
//! a GPU and is not reached.

#![no_main]

use std::path::Path;

use kestrel_models::formats::gguf::GgufFile;
use kestrel_models::formats::gguf_tokenizer::tokenizer_from_gguf;
use kestrel_models::formats::host::{numel, TensorSource};
use kestrel_models::formats::safetensors::Blob;
use kestrel_models::TextTokenizer;
use libfuzzer_sys::fuzz_target;

/// Names outside the layers.
const MODEL: &[&str] = &[
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
];

/// Names inside each layer (`model.layers.N.`): attention, MLP, experts.
const LAYER: &[&str] = &[
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "block_sparse_moe.gate.weight",
    "block_sparse_moe.experts.w1.weight",
    "block_sparse_moe.experts.w2.weight",
    "block_sparse_moe.experts.w3.weight",
    "block_sparse_moe.experts.0.w1.weight",
    "mlp.shared_expert.gate_proj.weight",
    "mlp.shared_expert_gate.weight",
];

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.gguf");
    let whole = GgufFile::parse(path, Blob::Owned(data.to_vec()));
    // Read a range at a time, from a prefix that must grow: the same file, or the same error.
    let ranged = GgufFile::parse_ranged_from(path, Box::new(data.to_vec()), 16);
    match (&whole, &ranged) {
        (Ok(a), Ok(b)) => {
            let meta = |f: &GgufFile| format!("{:?}", f.metadata().collect::<Vec<_>>());
            assert_eq!(meta(a), meta(b), "metadata read whole vs ranged");
            assert_eq!(
                a.tensor_infos(),
                b.tensor_infos(),
                "tensor infos whole vs ranged"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "errors whole vs ranged"),
        _ => panic!("whole {:?} vs ranged {:?}", whole.is_ok(), ranged.is_ok()),
    }
    let Ok(file) = whole else {
        return;
    };
    for (_, v) in file.metadata() {
        let _ = (v.as_u64(), v.as_i64(), v.as_f32(), v.as_bool(), v.as_str());
        if let Some(a) = v.as_array() {
            let _ = (a.to_i64_vec(), a.to_f32_vec());
        }
    }
    if let Ok(t) = tokenizer_from_gguf(&file) {
        round_trip(&TextTokenizer::from_tokenizer(file.path(), t));
    }
    let Ok(parts) = kestrel_models::gguf_parts(&file) else {
        return;
    };
    let dim = |key: &str| {
        let v = parts.config.get(key).and_then(|v| v.as_u64()).unwrap_or(1);
        usize::try_from(v).unwrap_or(usize::MAX)
    };
    let (hidden, layers) = (dim("hidden_size"), dim("num_hidden_layers"));
    let names = MODEL.iter().map(|n| n.to_string()).chain(
        (0..layers.min(4)).flat_map(|l| LAYER.iter().map(move |n| format!("model.layers.{l}.{n}"))),
    );
    for name in names {
        let Ok(t) = parts.source.tensor(&name) else {
            continue;
        };
        let _ = t.expect_numel(&[hidden, hidden]);
        let _ = t.expect_numel(&[hidden]);
        let n = numel(&t.shape).expect("a parsed tensor's element count fits");
        assert_eq!(
            t.to_f32().len(),
            n,
            "{name}: values read vs shape {:?}",
            t.shape
        );
    }
});

/// Encode a sample text and decode ids in and out of the vocabulary, whole and streamed.
fn round_trip(tok: &TextTokenizer) {
    let text = "Hello wörld! 1234 \u{1F600}\n\t<s> </s> [INST] 日本語";
    if let Ok(ids) = tok.encode(text) {
        let _ = tok.decode(&ids);
    }
    let ids = [0, 1, 2, 3, 255, 256, 1000, 65535, u32::MAX];
    let _ = tok.decode(&ids);
    let mut stream = kestrel_models::TextStream::default();
    for id in ids {
        let _ = stream.push(tok, id);
    }
    let _ = stream.finish(tok);
}

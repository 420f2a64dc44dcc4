//! llama.cpp's GGUF conventions for the families configured on the shared decoder (Qwen3,
//! Qwen3-MoE, Gemma 2 and 3, SmolLM3, OLMo-2, Phi-3), beside Llama's in `gguf_hf.rs`: the config values their
//! parsers need that the common metadata lacks (some of which llama.cpp fixes in code rather
//! than in the file), the tensor names that differ from Llama's, and Gemma's norm weights,
//! which llama.cpp's converter stores as 1 + w (read back as w, the Hugging Face value).

use serde_json::{json, Map, Value};

use crate::formats::gguf::{GgmlType, GgufFile};

/// `arch`'s config.json keys that the common metadata mapping (`gguf_hf::config_from_gguf`)
/// does not give, added to `m`.
pub fn config_keys(file: &GgufFile, arch: &str, m: &mut Map<String, Value>) {
    let u64_key = |key: &str| file.get_u64(&format!("{arch}.{key}"));
    match arch {
        // llama.cpp's qwen3moe always renormalises the top-k weights.
        "qwen3moe" => {
            m.insert("norm_topk_prob".into(), json!(true));
        }
        // llama.cpp (llama-model.cpp) fixes Gemma 3's layer pattern (every sixth layer
        // global), its local RoPE base (10000) and its attention scale (1/sqrt(head_dim), but
        // 1/sqrt(hidden / heads) for the 62-layer 27B) in code.
        "gemma3" => {
            m.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
            if let Some(w) = u64_key("attention.sliding_window") {
                m.insert("sliding_window".into(), json!(w));
            }
            let layers = u64_key("block_count").unwrap_or(0);
            let types: Vec<&str> = (0..layers)
                .map(|l| match (l + 1) % 6 {
                    0 => "full_attention",
                    _ => "sliding_attention",
                })
                .collect();
            m.insert("layer_types".into(), json!(types));
            let mut full = json!({"rope_type": "default"});
            if let Some(theta) = file.get_f64(&format!("{arch}.rope.freq_base")) {
                full["rope_theta"] = json!(theta);
            }
            if let Some(kind) = file.get_str(&format!("{arch}.rope.scaling.type")) {
                if kind != "none" {
                    full["rope_type"] = json!(kind);
                    if let Some(f) = file.get_f64(&format!("{arch}.rope.scaling.factor")) {
                        full["factor"] = json!(f);
                    }
                }
            }
            m.insert(
                "rope_parameters".into(),
                json!({
                    "full_attention": full,
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                }),
            );
            m.remove("rope_theta");
            let heads = u64_key("attention.head_count").unwrap_or(1).max(1);
            let scalar = match layers {
                62 => u64_key("embedding_length").map(|h| h / heads),
                _ => u64_key("attention.key_length"),
            };
            if let Some(s) = scalar {
                m.insert("query_pre_attn_scalar".into(), json!(s));
            }
        }
        // llama.cpp fixes Gemma 2's pattern (even layers local) and scale as Gemma 3's; the
        // soft-caps are in the file.
        "gemma2" => {
            m.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
            if let Some(w) = u64_key("attention.sliding_window") {
                m.insert("sliding_window".into(), json!(w));
            }
            let layers = u64_key("block_count").unwrap_or(0);
            let types: Vec<&str> = (0..layers)
                .map(|l| match l % 2 {
                    0 => "sliding_attention",
                    _ => "full_attention",
                })
                .collect();
            m.insert("layer_types".into(), json!(types));
            for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
                let cap = file.get_f64(&format!("{arch}.{key}"));
                m.insert(key.into(), json!(cap));
            }
            let heads = u64_key("attention.head_count").unwrap_or(1).max(1);
            let scalar = match layers {
                46 => u64_key("embedding_length").map(|h| h / heads),
                _ => u64_key("attention.key_length"),
            };
            if let Some(s) = scalar {
                m.insert("query_pre_attn_scalar".into(), json!(s));
            }
        }
        // Phi-3: its window and rotated dims (partial rotary) are in the file; LongRoPE's
        // factors are f32 tensors beside its attention factor and pretraining context
        // (llama.cpp's converter, Phi3MiniModel). Factors that cannot be read are left out,
        // for the config to refuse by name.
        "phi3" => {
            let factors = |name: &str| -> Value {
                match file.tensor(name) {
                    Ok((info, bytes)) if info.ggml_type == GgmlType::F32 => {
                        let f: Vec<f32> = bytes
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect();
                        json!(f)
                    }
                    _ => Value::Null,
                }
            };
            if file.tensor_info("rope_factors_long.weight").is_some() {
                let mut rope = json!({
                    "rope_type": "longrope",
                    "long_factor": factors("rope_factors_long.weight"),
                    "short_factor": factors("rope_factors_short.weight"),
                });
                if let Some(a) = file.get_f64(&format!("{arch}.rope.scaling.attn_factor")) {
                    rope["attention_factor"] = json!(a);
                }
                m.insert("rope_scaling".into(), rope);
                if let Some(n) = u64_key("rope.scaling.original_context_length") {
                    m.insert("original_max_position_embeddings".into(), json!(n));
                }
            }
            if let Some(w) = u64_key("attention.sliding_window").filter(|&w| w > 0) {
                m.insert("sliding_window".into(), json!(w));
            }
            let heads = u64_key("attention.head_count").unwrap_or(1).max(1);
            let head_dim = u64_key("embedding_length").map(|h| h / heads);
            if let (Some(rot), Some(d)) = (u64_key("rope.dimension_count"), head_dim) {
                if d > 0 && rot != d {
                    m.insert("partial_rotary_factor".into(), json!(rot as f64 / d as f64));
                }
            }
        }
        // llama.cpp's smollm3 skips RoPE on every fourth layer, fixed in code.
        "smollm3" => {
            m.insert("no_rope_layer_interval".into(), json!(4));
        }
        _ => {}
    }
}

/// The GGUF name of the tensor `name` of a layer (`self_attn.q_norm.weight`) where `arch`
/// names it other than Llama's table in `gguf_hf::gguf_name` does.
pub fn layer_name(arch: &str, name: &str) -> Option<&'static str> {
    let gemma = matches!(arch, "gemma2" | "gemma3");
    let post_norms = gemma || arch == "olmo2";
    Some(match name {
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        // Phi-3's fused projections (gate's rows, then up's, in ffn_up).
        "self_attn.qkv_proj.weight" => "attn_qkv.weight",
        "mlp.gate_up_proj.weight" if arch == "phi3" => "ffn_up.weight",
        // Sandwich norms: the norm after attention has its own name, the MLP's pre-norm is
        // ffn_norm.
        "post_attention_layernorm.weight" if post_norms => "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight" if gemma => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" if post_norms => "post_ffw_norm.weight",
        _ => return None,
    })
}

/// What llama.cpp's converter added to `arch`'s RMSNorm weights (Gemma's `1 + w` norms are
/// stored with the 1 added), to subtract on load for the Hugging Face value.
pub fn norm_offset(arch: &str) -> f32 {
    match arch {
        "gemma2" | "gemma3" => 1.0,
        _ => 0.0,
    }
}

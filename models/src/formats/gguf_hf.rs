//! A GGUF file read as a Hugging Face checkpoint, so the same family code loads both: its
//! metadata becomes a config.json-shaped value, its tensor names answer to Hugging Face
//! names, and llama.cpp's Q/K row permutation is undone on load.

use std::borrow::Cow;
use std::path::Path;

use kestrel_runtime::quant::QuantFormat;
use serde_json::{json, Map, Value};

use crate::error::{ModelError, Result};
use crate::formats::config::JsonConfig;
use crate::formats::gguf::{GgmlType, GgufFile};
use crate::formats::gguf_decoders;
use crate::formats::gguf_hf_recurrent;
use crate::formats::host::{HostDType, HostTensor, TensorSource};
use crate::model::ChatInfo;

/// A config.json-shaped view of the GGUF metadata, so one parser serves both sources. `arch`
/// is the file's `general.architecture`, `class` the config.json class its family reads it
/// as (see `families::for_gguf`); llama.cpp stores Mixtral as `llama` with
/// `llama.expert_count`, which makes it Mixtral's class here.
pub fn config_from_gguf(file: &GgufFile, arch: &str, class: &str) -> JsonConfig {
    let experts = file
        .get_u64(&format!("{arch}.expert_count"))
        .filter(|&n| n > 0);
    let class = match (arch, experts) {
        ("llama", Some(_)) => "MixtralForCausalLM",
        _ => class,
    };
    let mut m = Map::new();
    m.insert("architectures".into(), json!([class]));
    let experts_key = match arch {
        "qwen2moe" => "num_experts",
        _ => "num_local_experts",
    };
    let mut int = |hf: &str, key: &str| {
        if let Some(v) = file.get_u64(&format!("{arch}.{key}")) {
            m.insert(hf.into(), json!(v));
        }
    };
    int("hidden_size", "embedding_length");
    int("intermediate_size", "feed_forward_length");
    int("num_hidden_layers", "block_count");
    int("num_attention_heads", "attention.head_count");
    int("num_key_value_heads", "attention.head_count_kv");
    int("head_dim", "attention.key_length");
    int("max_position_embeddings", "context_length");
    int("vocab_size", "vocab_size");
    int(experts_key, "expert_count");
    int("num_experts_per_tok", "expert_used_count");
    int("moe_intermediate_size", "expert_feed_forward_length");
    int(
        "shared_expert_intermediate_size",
        "expert_shared_feed_forward_length",
    );
    if !m.contains_key("vocab_size") {
        let n = file
            .get_array("tokenizer.ggml.tokens")
            .map(|a| a.len())
            .or_else(|| {
                file.tensor_info("token_embd.weight")
                    .and_then(|t| t.dims.get(1).map(|&d| d as usize))
            });
        if let Some(n) = n {
            m.insert("vocab_size".into(), json!(n));
        }
    }
    if let Some(eps) = file.get_f64(&format!("{arch}.attention.layer_norm_rms_epsilon")) {
        m.insert("rms_norm_eps".into(), json!(eps));
    }
    if let Some(theta) = file.get_f64(&format!("{arch}.rope.freq_base")) {
        m.insert("rope_theta".into(), json!(theta));
    }
    m.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor_info("output.weight").is_none()),
    );
    if let Some(v) = file.get_u64("tokenizer.ggml.bos_token_id") {
        m.insert("bos_token_id".into(), json!(v));
    }
    let ends = end_of_generation_ids(file);
    if !ends.is_empty() {
        m.insert("eos_token_id".into(), json!(ends));
    }
    gguf_decoders::config_keys(file, arch, &mut m);
    gguf_hf_recurrent::adapt_config(file, arch, &mut m);
    JsonConfig {
        path: file.path().to_path_buf(),
        value: Value::Object(m),
    }
}

/// Tokens that end a turn although the file may not name them as its EOS: llama.cpp
/// treats these as end-of-generation whatever the metadata says (a Gemma GGUF's EOS is
/// `<eos>`, yet its chat turns end with `<end_of_turn>`; Qwen's `<|endoftext|>` beside its
/// `<|im_end|>`).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<|end_of_text|>",
];

/// The ids that end generation: the file's EOS, EOT and EOM ids, then the end-of-turn
/// tokens of its vocabulary (llama.cpp's end-of-generation set).
fn end_of_generation_ids(file: &GgufFile) -> Vec<u64> {
    let mut ids: Vec<u64> = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .iter()
    .filter_map(|key| file.get_u64(key))
    .collect();
    let tokens = file.get_str_array("tokenizer.ggml.tokens").unwrap_or(&[]);
    for (id, text) in tokens.iter().enumerate() {
        if END_OF_TURN_TOKENS.contains(&text.as_str()) && !ids.contains(&(id as u64)) {
            ids.push(id as u64);
        }
    }
    ids
}

/// The chat template and BOS/EOS strings stored in the GGUF.
pub fn chat_info_from_gguf(file: &GgufFile) -> ChatInfo {
    let tokens = file.get_str_array("tokenizer.ggml.tokens").unwrap_or(&[]);
    let token = |key: &str| {
        file.get_u64(key)
            .and_then(|id| tokens.get(id as usize))
            .cloned()
            .unwrap_or_default()
    };
    ChatInfo {
        template: file.get_str("tokenizer.chat_template").map(str::to_string),
        bos_token: token("tokenizer.ggml.bos_token_id"),
        eos_token: token("tokenizer.ggml.eos_token_id"),
    }
}

/// Tensors of a GGUF file under their Hugging Face names.
pub struct GgufSource<'a> {
    file: &'a GgufFile,
    /// Heads of q and k, whose rows llama.cpp permuted (llama architecture only).
    unpermute: Option<(usize, usize)>,
    /// `general.architecture`, for its own tensor names (`gguf_decoders`).
    arch: String,
    /// The architecture of a recurrent file (`gguf_hf_recurrent` names its tensors).
    recurrent: Option<String>,
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a GgufFile, config: &JsonConfig) -> Result<GgufSource<'a>> {
        let unpermute = if file.get_str("general.architecture") == Some("llama") {
            let heads = config.positive("num_attention_heads")?;
            let kv = config.opt_usize("num_key_value_heads")?.unwrap_or(heads);
            Some((heads, kv))
        } else {
            None
        };
        let arch = file
            .get_str("general.architecture")
            .unwrap_or("")
            .to_string();
        let recurrent = Some(arch.clone()).filter(|a| gguf_hf_recurrent::is_recurrent(a));
        Ok(GgufSource {
            file,
            unpermute,
            arch,
            recurrent,
        })
    }

    /// The GGUF name of a Hugging Face tensor name in this file's architecture.
    fn gguf_name(&self, hf: &str) -> Option<String> {
        let own = hf.strip_prefix("model.layers.").and_then(|rest| {
            let (layer, name) = rest.split_once('.')?;
            let mapped = gguf_decoders::layer_name(&self.arch, name)?;
            Some(format!("blk.{layer}.{mapped}"))
        });
        own.or_else(|| gguf_name(hf))
    }
}

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let mapped = match name {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        // Experts: the router, stacked [E, rows, cols] expert tensors, Qwen2-MoE's shared one.
        "block_sparse_moe.gate.weight" | "mlp.gate.weight" => "ffn_gate_inp.weight",
        "block_sparse_moe.experts.w1.weight" | "mlp.experts.gate_proj.weight" => {
            "ffn_gate_exps.weight"
        }
        "block_sparse_moe.experts.w3.weight" | "mlp.experts.up_proj.weight" => "ffn_up_exps.weight",
        "block_sparse_moe.experts.w2.weight" | "mlp.experts.down_proj.weight" => {
            "ffn_down_exps.weight"
        }
        "mlp.shared_expert.gate_proj.weight" => "ffn_gate_shexp.weight",
        "mlp.shared_expert.up_proj.weight" => "ffn_up_shexp.weight",
        "mlp.shared_expert.down_proj.weight" => "ffn_down_shexp.weight",
        "mlp.shared_expert_gate.weight" => "ffn_gate_inp_shexp.weight",
        _ => return expert_gguf_name(layer, name),
    };
    Some(format!("blk.{layer}.{mapped}"))
}

/// Older Mixtral GGUFs keep one tensor per expert: `blk.L.ffn_gate.E.weight`.
fn expert_gguf_name(layer: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix("block_sparse_moe.experts.")?;
    let (e, proj) = rest.split_once('.')?;
    let e: usize = e.parse().ok()?;
    let kind = match proj {
        "w1.weight" => "ffn_gate",
        "w3.weight" => "ffn_up",
        "w2.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{kind}.{e}.weight"))
}

pub(crate) fn host_dtype(t: GgmlType) -> Option<HostDType> {
    Some(match t {
        GgmlType::F32 => HostDType::F32,
        GgmlType::F16 => HostDType::F16,
        GgmlType::BF16 => HostDType::BF16,
        GgmlType::Q4_0 => HostDType::Quant(QuantFormat::Q4_0),
        GgmlType::Q4_1 => HostDType::Quant(QuantFormat::Q4_1),
        GgmlType::Q5_0 => HostDType::Quant(QuantFormat::Q5_0),
        GgmlType::Q5_1 => HostDType::Quant(QuantFormat::Q5_1),
        GgmlType::Q8_0 => HostDType::Quant(QuantFormat::Q8_0),
        GgmlType::Q4_K => HostDType::Quant(QuantFormat::Q4_K),
        GgmlType::Q5_K => HostDType::Quant(QuantFormat::Q5_K),
        GgmlType::Q6_K => HostDType::Quant(QuantFormat::Q6_K),
        _ => return None,
    })
}

/// Undo llama.cpp's permutation of q/k rows: within each head, GGUF row `2*i + p` holds
/// Hugging Face row `p*half + i` (rotary pairs interleaved instead of split in halves).
/// `None` unless `rows` is a positive multiple of `2 * heads` that divides the bytes.
pub fn unpermute_rows(bytes: &[u8], rows: usize, heads: usize) -> Option<Vec<u8>> {
    let pairs = heads.checked_mul(2)?;
    if rows == 0 || pairs == 0 || !rows.is_multiple_of(pairs) || !bytes.len().is_multiple_of(rows) {
        return None;
    }
    let row_bytes = bytes.len() / rows;
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for p in 0..2 {
            for i in 0..half {
                let hf = h * head_rows + p * half + i;
                let gg = h * head_rows + 2 * i + p;
                out[hf * row_bytes..(hf + 1) * row_bytes]
                    .copy_from_slice(&bytes[gg * row_bytes..(gg + 1) * row_bytes]);
            }
        }
    }
    Some(out)
}

impl TensorSource for GgufSource<'_> {
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        if let Some(arch) = &self.recurrent {
            return gguf_hf_recurrent::tensor(self.file, arch, name);
        }
        let missing = || ModelError::MissingTensor {
            file: self.file.path().to_path_buf(),
            name: self
                .gguf_name(name)
                .map_or(name.to_string(), |g| format!("{g} ({name})")),
        };
        let gname = self.gguf_name(name).ok_or_else(missing)?;
        if self.file.tensor_info(&gname).is_none() {
            return Err(missing());
        }
        let (info, bytes) = self.file.tensor(&gname)?;
        let dtype = host_dtype(info.ggml_type).ok_or_else(|| ModelError::UnsupportedDtype {
            file: self.file.path().to_path_buf(),
            name: gname.clone(),
            dtype: info.ggml_type.name().to_string(),
        })?;
        let mut t = HostTensor {
            name: gname,
            file: self.file.path().to_path_buf(),
            shape: info.shape(),
            dtype,
            bytes,
        }
        .non_empty()?;
        // Gemma's converter stored its norms' 1 + w: back to w, as the Hugging Face file has it.
        let offset = gguf_decoders::norm_offset(&self.arch);
        if offset != 0.0 && name.ends_with("norm.weight") {
            let w: Vec<f32> = t.to_f32().iter().map(|w| w - offset).collect();
            t.bytes = Cow::Owned(bytemuck::cast_slice(&w).to_vec());
            t.dtype = HostDType::F32;
        }
        if let Some((heads, kv_heads)) = self.unpermute {
            let name = &t.name;
            let n_heads = if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
                Some(heads)
            } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
                Some(kv_heads)
            } else {
                None
            };
            if let Some(n) = n_heads {
                let rows = t.shape.first().copied().unwrap_or(0);
                // Only f32 vectors can be unpermuted (a quantized bias's blocks span rows).
                let permutable = t.shape.len() > 1 || dtype == HostDType::F32;
                match unpermute_rows(&t.bytes, rows, n).filter(|_| permutable) {
                    Some(rows) => t.bytes = Cow::Owned(rows),
                    None => {
                        return Err(ModelError::TensorShape {
                            file: t.file,
                            name: t.name,
                            expected: vec![
                                n.saturating_mul(2),
                                t.shape.last().copied().unwrap_or(0),
                            ],
                            got: t.shape,
                        })
                    }
                }
            }
        }
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        if let Some(arch) = &self.recurrent {
            return gguf_hf_recurrent::contains(self.file, arch, name);
        }
        self.gguf_name(name)
            .is_some_and(|g| self.file.tensor_info(&g).is_some())
    }

    fn origin(&self) -> &Path {
        self.file.path()
    }
}

//! GGUF files of llama.cpp's recurrent families — `mamba`, `mamba2`, `rwkv6`, `rwkv7`, and the
//! hybrid `jamba` — read as the checkpoints Kestrel's families load (Hugging Face's Mamba /
//! Mamba-2 / Jamba, fla's RWKV-6 and RWKV-7), the
//! other half of [`gguf_hf`](super::gguf_hf): the metadata becomes their config.json keys,
//! their tensor names find llama.cpp's (`convert_hf_to_gguf.py` and gguf-py's
//! `tensor_mapping.py` are the reference), and the converter's transforms are undone:
//!
//! - Mamba `ssm_a` holds -exp(A_log): A_log = ln(-ssm_a) is handed out (the mixer takes
//!   -exp again);
//! - `ssm_conv1d.weight` was squeezed from [channels, 1, kernel]; Mamba-2's `ssm_a`/`ssm_d`
//!   were unsqueezed to [heads, 1] and `ssm_norm` reshaped to [groups, inner / groups];
//! - Jamba's layer pattern is stored per layer (`head_count_kv` 0 for Mamba layers, router
//!   tensors only in expert layers): [`network_config`] checks it is the periodic one
//!   transformers' config describes, from which [`adapt_config`] read its period and offset;
//! - RWKV-7's six token-shift mixes are stacked in `time_mix_lerp_fused` [6, 1, 1, hidden]
//!   (order r, w, k, v, a, g), `r_k` is flattened, and LoRA factors keep fla's layout.
//! - RWKV-6 (BlinkDL's Finch, key width = hidden: fla's `expand_k` 1) keeps its five
//!   token-shift mixes in BlinkDL's order w, k, v, r, g where fla has r, w, k, v, g: the
//!   stacked `time_mix_lerp_fused` [5, 1, 1, hidden] (fla's `x_bias`), `time_mix_w1`
//!   [5 * rank, hidden] (the LoRA downs, a block of rows each) and `time_mix_w2`
//!   [5, hidden, rank] (the ups, which fla keeps side by side as [hidden, 5 * rank]) are
//!   restacked in fla's order (llama.cpp's quantizer leaves these three unquantized). The
//!   decay LoRA, the bonus (`time_mix_first`) and the rest keep fla's layout.
//!
//! llama.cpp runs every `rwkv6` and `rwkv7` file with BlinkDL's fixed `ln_x` eps (64e-5), and
//! RWKV-7 with its L2-norm clamp, so those are what [`network_config`] sets, whatever fla
//! would derive. An `rwkv6` file's `rescale_every_n_layers` (the converter divided layer l's
//! output projections by 2^(l / n)) becomes the family's `rescale_every`: the hidden states
//! are halved after every n-th layer, as llama.cpp does.

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use crate::error::{ModelError, Result};
use crate::families::rwkv::RwkvConfig;
use crate::families::rwkv7_blink::LN_X_EPS;
use crate::families::{self, NetworkConfig};
use crate::formats::config::JsonConfig;
use crate::formats::gguf::GgufFile;
use crate::formats::gguf_hf::host_dtype;
use crate::formats::host::{numel, HostDType, HostTensor};

/// The GGUF architectures this file reads.
pub fn is_recurrent(arch: &str) -> bool {
    matches!(arch, "mamba" | "mamba2" | "rwkv6" | "rwkv7" | "jamba")
}

/// Rewrite the config.json-shaped view `m` that `gguf_hf::config_from_gguf` made of a
/// recurrent file's metadata into the keys its family reads (nothing for other files).
pub fn adapt_config(file: &GgufFile, arch: &str, m: &mut Map<String, Value>) {
    if !is_recurrent(arch) {
        return;
    }
    let key = |k: &str| format!("{arch}.{k}");
    // Written by the converter only because llama.cpp requires them (0, or an arbitrary 2^20
    // context): not part of these networks (Jamba's attention has them).
    if arch != "jamba" {
        for k in [
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rms_norm_eps",
            "intermediate_size",
        ] {
            m.remove(k);
        }
    }
    // The embedding's rows (the converter pads the token list, never the weights).
    if let Some(rows) = file
        .tensor_info("token_embd.weight")
        .and_then(|t| t.dims.get(1))
    {
        m.insert("vocab_size".into(), json!(rows));
    }
    let copy = |m: &mut Map<String, Value>, hf: &str, k: &str| {
        if let Some(v) = file.get(&key(k)).and_then(|v| v.as_f64()) {
            let v = if v.fract() == 0.0 && v >= 0.0 {
                json!(v as u64)
            } else {
                json!(v)
            };
            m.insert(hf.into(), v);
        }
    };
    match arch {
        "mamba" | "mamba2" => {
            copy(m, "state_size", "ssm.state_size");
            copy(m, "conv_kernel", "ssm.conv_kernel");
            copy(m, "layer_norm_epsilon", "attention.layer_norm_rms_epsilon");
            m.insert("expand".into(), expand(file, arch));
            let inner = file.get_u64(&key("ssm.inner_size")).unwrap_or(0);
            let has = |t: &str| file.contains_tensor(t);
            m.insert("use_conv_bias".into(), json!(has("blk.0.ssm_conv1d.bias")));
            m.insert("use_bias".into(), json!(has("blk.0.ssm_in.bias")));
            let rank = file.get_u64(&key("ssm.time_step_rank"));
            if arch == "mamba" {
                if let Some(r) = rank {
                    m.insert("time_step_rank".into(), json!(r));
                }
                // Falcon-Mamba's RMSNorms of dt, B and C: a network Kestrel does not have.
                if file.get_bool(&key("ssm.dt_b_c_rms")) == Some(true) {
                    m.insert("architectures".into(), json!(["FalconMambaForCausalLM"]));
                }
            } else {
                // Mamba-2 stores its head count as the time-step rank.
                if let Some(heads) = rank.filter(|&h| h > 0) {
                    m.insert("num_heads".into(), json!(heads));
                    m.insert("head_dim".into(), json!(inner / heads));
                }
                copy(m, "n_groups", "ssm.group_count");
            }
        }
        "jamba" => {
            copy(m, "mamba_d_state", "ssm.state_size");
            copy(m, "mamba_d_conv", "ssm.conv_kernel");
            copy(m, "mamba_dt_rank", "ssm.time_step_rank");
            m.insert("mamba_expand".into(), expand(file, arch));
            let layers = jamba_layers(file);
            let any =
                |t: &str| (0..layers.len()).any(|l| file.contains_tensor(&format!("blk.{l}.{t}")));
            m.insert("mamba_conv_bias".into(), json!(any("ssm_conv1d.bias")));
            m.insert("mamba_proj_bias".into(), json!(any("ssm_in.bias")));
            if let Some(&kv) = layers.iter().filter_map(|l| l.0).max().as_ref() {
                m.insert("num_key_value_heads".into(), json!(kv));
            }
            for (what, period_key, offset_key) in [
                (0, "attn_layer_period", "attn_layer_offset"),
                (1, "expert_layer_period", "expert_layer_offset"),
            ] {
                let at: Vec<usize> = (0..layers.len())
                    .filter(|&l| match what {
                        0 => layers[l].0.is_some(),
                        _ => layers[l].1,
                    })
                    .collect();
                if let Some(&offset) = at.first() {
                    let period = match at.get(1) {
                        Some(next) => next - offset,
                        None => layers.len().max(offset + 1),
                    };
                    m.insert(period_key.into(), json!(period));
                    m.insert(offset_key.into(), json!(offset));
                }
            }
        }
        "rwkv6" => {
            copy(m, "intermediate_size", "feed_forward_length");
            copy(m, "norm_eps", "attention.layer_norm_epsilon");
            copy(m, "proj_low_rank_dim", "time_mix_extra_dim");
            copy(m, "gate_low_rank_dim", "time_decay_extra_dim");
            copy(m, "rescale_every", "rescale_every_n_layers");
            // Keys, receptances and decays as wide as the hidden state, in heads of
            // `wkv.head_size` (a size that does not divide it stays fractional, which the
            // family's parser refuses by name).
            let hidden = file.get_u64("rwkv6.embedding_length").unwrap_or(0);
            if let Some(size) = file.get_u64("rwkv6.wkv.head_size").filter(|&s| s > 0) {
                let heads = match hidden.is_multiple_of(size) {
                    true => json!(hidden / size),
                    false => json!(hidden as f64 / size as f64),
                };
                m.insert("num_heads".into(), heads);
            }
            m.insert("expand_k".into(), json!(1.0));
            m.insert("expand_v".into(), json!(1.0));
            m.insert(
                "norm_first".into(),
                json!(file.contains_tensor("token_embd_norm.weight")),
            );
        }
        _ => {
            copy(m, "head_dim", "wkv.head_size");
            copy(m, "intermediate_size", "feed_forward_length");
            copy(m, "norm_eps", "attention.layer_norm_epsilon");
            copy(m, "decay_low_rank_dim", "attention.decay_lora_rank");
            copy(m, "a_low_rank_dim", "attention.iclr_lora_rank");
            copy(
                m,
                "v_low_rank_dim",
                "attention.value_residual_mix_lora_rank",
            );
            copy(m, "gate_low_rank_dim", "attention.gate_lora_rank");
            m.insert(
                "norm_first".into(),
                json!(file.contains_tensor("token_embd_norm.weight")),
            );
        }
    }
}

/// The Mamba mixer's `expand` (inner width / hidden size). transformers derives the inner
/// width from it; a width that is no multiple of the hidden size stays fractional, which the
/// family's parser refuses by name.
fn expand(file: &GgufFile, arch: &str) -> Value {
    let hidden = file
        .get_u64(&format!("{arch}.embedding_length"))
        .unwrap_or(0);
    let inner = file.get_u64(&format!("{arch}.ssm.inner_size")).unwrap_or(0);
    match hidden > 0 && inner.is_multiple_of(hidden) {
        true => json!(inner / hidden),
        false => json!(inner as f64 / hidden.max(1) as f64),
    }
}

/// Per layer of a Jamba file: its attention's KV heads (`None`: a Mamba layer) and whether
/// it has experts.
fn jamba_layers(file: &GgufFile) -> Vec<(Option<u64>, bool)> {
    let n = file.get_u64("jamba.block_count").unwrap_or(0) as usize;
    let kv = file
        .get_array("jamba.attention.head_count_kv")
        .and_then(|a| a.to_i64_vec())
        .unwrap_or_default();
    (0..n)
        .map(|l| {
            let heads = kv.get(l).copied().filter(|&h| h > 0).map(|h| h as u64);
            (
                heads,
                file.contains_tensor(&format!("blk.{l}.ffn_gate_inp.weight")),
            )
        })
        .collect()
}

/// The network a GGUF file's config describes: its family's, with llama.cpp's fixed RWKV eps
/// for `rwkv6` and `rwkv7` files, and for `jamba` files once their layers are checked to
/// follow the periods and offsets read from them.
pub fn network_config(
    file: &GgufFile,
    config: &JsonConfig,
    arch: &str,
) -> Result<Box<dyn NetworkConfig>> {
    if arch == "jamba" {
        jamba_check(file, config)?;
    }
    if !matches!(arch, "rwkv6" | "rwkv7") {
        return families::from_config(config);
    }
    let mut c = RwkvConfig::from_json(config)?;
    c.layer.ln_x_eps = LN_X_EPS;
    // ggml_l2_norm clamps the norm at 1e-12, i.e. the squared norm at 1e-24 (RWKV-7's).
    c.layer.l2_eps = 1e-24;
    Ok(Box::new(c))
}

/// Jamba's config can only say "every `period` layers from `offset`": a file whose attention
/// or expert layers follow another pattern is refused, naming it.
fn jamba_check(file: &GgufFile, config: &JsonConfig) -> Result<()> {
    let layers = jamba_layers(file);
    let rule = |period: &str, offset: &str| -> Result<(usize, usize)> {
        Ok((
            config.opt_usize(period)?.unwrap_or(usize::MAX).max(1),
            config.opt_usize(offset)?.unwrap_or(usize::MAX),
        ))
    };
    let (ap, ao) = rule("attn_layer_period", "attn_layer_offset")?;
    let (ep, eo) = rule("expert_layer_period", "expert_layer_offset")?;
    let kv = layers.iter().filter_map(|l| l.0).max();
    for (l, &(heads, experts)) in layers.iter().enumerate() {
        let irregular = |key: &str, what: &str| ModelError::BadConfigValue {
            file: file.path().to_path_buf(),
            key: key.into(),
            message: format!(
                "gives layer {l} {what}, which Jamba's periodic layout (a period and an \
                 offset) cannot describe"
            ),
        };
        if heads.is_some() != (l % ap == ao) || (heads.is_some() && heads != kv) {
            return Err(irregular(
                "jamba.attention.head_count_kv",
                "another kind or KV width",
            ));
        }
        if experts != (l % ep == eo) {
            return Err(irregular(
                "blk.N.ffn_gate_inp.weight",
                "experts out of period",
            ));
        }
    }
    Ok(())
}

/// How a Hugging Face tensor is stored in a recurrent GGUF file.
#[derive(Debug, Clone, PartialEq)]
enum Stored {
    /// As is.
    Plain(String),
    /// A squeezed conv1d weight [channels, kernel], handed out as [channels, 1, kernel].
    Unsqueezed(String),
    /// A flat vector, split into heads of the file's `wkv.head_size`.
    Heads(String),
    /// -exp(A_log): A_log is ln(-value).
    NegExp(String),
    /// Part `index` of `parts` equal parts along the outermost dimension.
    Part {
        name: String,
        index: usize,
        parts: usize,
    },
    /// Equal parts stacked along the outermost dimension, restacked so that part `i` is the
    /// file's part `order[i]`: one after the other (unit dimensions dropped), or with
    /// `side_by_side` parts of shape [rows, cols] placed next to each other as
    /// [rows, parts * cols].
    Restacked {
        name: String,
        order: [usize; 5],
        side_by_side: bool,
    },
}

impl Stored {
    fn name(&self) -> &str {
        match self {
            Stored::Plain(n) | Stored::Unsqueezed(n) | Stored::Heads(n) | Stored::NegExp(n) => n,
            Stored::Part { name, .. } | Stored::Restacked { name, .. } => name,
        }
    }
}

/// Where the Hugging Face tensor `hf` is in a file of `arch` (`None`: nowhere).
fn stored(arch: &str, hf: &str) -> Option<Stored> {
    match arch {
        "mamba" | "mamba2" => mamba_stored(hf),
        "rwkv6" => rwkv6_stored(hf),
        "rwkv7" => rwkv7_stored(hf),
        "jamba" => jamba_stored(hf),
        _ => None,
    }
}

fn mamba_stored(hf: &str) -> Option<Stored> {
    let plain = |s: &str| Some(Stored::Plain(s.to_string()));
    match hf {
        "backbone.embeddings.weight" => return plain("token_embd.weight"),
        "backbone.norm_f.weight" => return plain("output_norm.weight"),
        "lm_head.weight" => return plain("output.weight"),
        _ => {}
    }
    let rest = hf.strip_prefix("backbone.layers.")?;
    let (layer, leaf) = rest.split_once('.')?;
    match leaf {
        "norm.weight" => Some(Stored::Plain(format!("blk.{layer}.attn_norm.weight"))),
        _ => mixer_stored(layer, leaf.strip_prefix("mixer.")?),
    }
}

/// A Mamba mixer's tensor `leaf` in layer `layer` (Mamba, Mamba-2 and Jamba's).
fn mixer_stored(layer: &str, leaf: &str) -> Option<Stored> {
    let b = |s: &str| format!("blk.{layer}.{s}");
    Some(match leaf {
        "in_proj.weight" => Stored::Plain(b("ssm_in.weight")),
        "in_proj.bias" => Stored::Plain(b("ssm_in.bias")),
        "conv1d.weight" => Stored::Unsqueezed(b("ssm_conv1d.weight")),
        "conv1d.bias" => Stored::Plain(b("ssm_conv1d.bias")),
        "x_proj.weight" => Stored::Plain(b("ssm_x.weight")),
        "dt_proj.weight" => Stored::Plain(b("ssm_dt.weight")),
        // Mamba's dt_proj bias and Mamba-2's dt_bias are both `ssm_dt.bias`.
        "dt_proj.bias" | "dt_bias" => Stored::Plain(b("ssm_dt.bias")),
        "A_log" => Stored::NegExp(b("ssm_a")),
        "D" => Stored::Plain(b("ssm_d")),
        "norm.weight" => Stored::Plain(b("ssm_norm.weight")),
        "out_proj.weight" => Stored::Plain(b("ssm_out.weight")),
        "out_proj.bias" => Stored::Plain(b("ssm_out.bias")),
        // Jamba's RMSNorms of dt, B and C.
        "dt_layernorm.weight" => Stored::Plain(b("ssm_dt_norm.weight")),
        "b_layernorm.weight" => Stored::Plain(b("ssm_b_norm.weight")),
        "c_layernorm.weight" => Stored::Plain(b("ssm_c_norm.weight")),
        _ => return None,
    })
}

fn jamba_stored(hf: &str) -> Option<Stored> {
    let plain = |s: String| Some(Stored::Plain(s));
    match hf {
        "model.embed_tokens.weight" => return plain("token_embd.weight".into()),
        "model.final_layernorm.weight" => return plain("output_norm.weight".into()),
        "lm_head.weight" => return plain("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, leaf) = rest.split_once('.')?;
    if let Some(m) = leaf.strip_prefix("mamba.") {
        return mixer_stored(layer, m);
    }
    let name = match leaf {
        "input_layernorm.weight" => "attn_norm.weight",
        "pre_ff_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "feed_forward.gate_proj.weight" => "ffn_gate.weight",
        "feed_forward.up_proj.weight" => "ffn_up.weight",
        "feed_forward.down_proj.weight" => "ffn_down.weight",
        "feed_forward.router.weight" => "ffn_gate_inp.weight",
        // The experts stacked [experts, rows, cols].
        "feed_forward.experts.gate_proj.weight" => "ffn_gate_exps.weight",
        "feed_forward.experts.up_proj.weight" => "ffn_up_exps.weight",
        "feed_forward.experts.down_proj.weight" => "ffn_down_exps.weight",
        _ => return None,
    };
    plain(format!("blk.{layer}.{name}"))
}

/// A name of fla's RWKV-6 and RWKV-7 models: one llama.cpp stores under a name of its own
/// that all layers share, or a layer's tensor as (layer, part, leaf).
enum FlaName<'a> {
    Whole(Stored),
    Layer(&'a str, &'a str, &'a str),
}

/// The embeddings, head and final norm, which fla's RWKV-6 and RWKV-7 name alike, or a
/// layer's tensor name split.
fn fla_rwkv_name(hf: &str) -> Option<FlaName<'_>> {
    let whole = |s: String| Some(FlaName::Whole(Stored::Plain(s)));
    match hf {
        "model.embeddings.weight" => return whole("token_embd.weight".into()),
        "lm_head.weight" => return whole("output.weight".into()),
        _ => {}
    }
    if let Some(leaf) = hf.strip_prefix("model.norm.") {
        return whole(format!("output_norm.{leaf}"));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, leaf) = rest.split_once('.')?;
    Some(FlaName::Layer(layer, part, leaf))
}

/// Where fla's RWKV-6 token-shift mixes (r, w, k, v, g) are in llama.cpp's stacks (BlinkDL's
/// order w, k, v, r, g).
const RWKV6_MIXES: [usize; 5] = [3, 0, 1, 2, 4];

fn rwkv6_stored(hf: &str) -> Option<Stored> {
    let plain = |s: String| Some(Stored::Plain(s));
    let (layer, part, leaf) = match fla_rwkv_name(hf)? {
        FlaName::Whole(stored) => return Some(stored),
        FlaName::Layer(layer, part, leaf) => (layer, part, leaf),
    };
    let b = |s: &str| format!("blk.{layer}.{s}");
    let restacked = |s: &str, side_by_side| {
        Some(Stored::Restacked {
            name: b(s),
            order: RWKV6_MIXES,
            side_by_side,
        })
    };
    let name = match (part, leaf) {
        ("pre_norm", _) if layer == "0" => return plain(format!("token_embd_norm.{leaf}")),
        ("attn_norm", _) => return plain(b(&format!("attn_norm.{leaf}"))),
        ("ffn_norm", _) => return plain(b(&format!("attn_norm_2.{leaf}"))),
        ("attn", "g_norm.weight" | "g_norm.bias") => {
            return plain(b(&format!("time_mix_ln.{}", &leaf["g_norm.".len()..])))
        }
        ("attn", "x_bias") => return restacked("time_mix_lerp_fused.weight", false),
        ("attn", "x_proj.0.linear.weight") => return restacked("time_mix_w1.weight", false),
        ("attn", "x_proj.2.weight") => return restacked("time_mix_w2.weight", true),
        ("attn", "x_proj.0.mu") => "time_mix_lerp_x.weight",
        ("attn", "w_proj.linear.lora.0.weight") => "time_mix_decay_w1.weight",
        ("attn", "w_proj.linear.lora.2.weight") => "time_mix_decay_w2.weight",
        ("attn", "w_proj.linear.lora.2.bias") => "time_mix_decay.weight",
        ("attn", "bonus") => "time_mix_first.weight",
        ("attn", "r_proj.linear.weight") => "time_mix_receptance.weight",
        ("attn", "k_proj.linear.weight") => "time_mix_key.weight",
        ("attn", "v_proj.linear.weight") => "time_mix_value.weight",
        ("attn", "g_proj.linear.weight") => "time_mix_gate.weight",
        ("attn", "o_proj.weight") => "time_mix_output.weight",
        ("ffn", "key.mu") => "channel_mix_lerp_k.weight",
        ("ffn", "receptance.mu") => "channel_mix_lerp_r.weight",
        ("ffn", "key.linear.weight") => "channel_mix_key.weight",
        ("ffn", "receptance.linear.weight") => "channel_mix_receptance.weight",
        ("ffn", "value.weight") => "channel_mix_value.weight",
        _ => return None,
    };
    plain(b(name))
}

/// fla's token-shift mixes, in the order llama.cpp stacks them.
const RWKV7_LERPS: [&str; 6] = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"];

fn rwkv7_stored(hf: &str) -> Option<Stored> {
    let plain = |s: String| Some(Stored::Plain(s));
    let (layer, part, leaf) = match fla_rwkv_name(hf)? {
        FlaName::Whole(stored) => return Some(stored),
        FlaName::Layer(layer, part, leaf) => (layer, part, leaf),
    };
    let b = |s: &str| format!("blk.{layer}.{s}");
    match part {
        "pre_norm" if layer == "0" => return plain(format!("token_embd_norm.{leaf}")),
        "attn_norm" => return plain(b(&format!("attn_norm.{leaf}"))),
        "ffn_norm" => return plain(b(&format!("attn_norm_2.{leaf}"))),
        "ffn" => {
            return plain(b(match leaf {
                "x_k" => "channel_mix_lerp_k.weight",
                "key.weight" => "channel_mix_key.weight",
                "value.weight" => "channel_mix_value.weight",
                _ => return None,
            }))
        }
        "attn" => {}
        _ => return None,
    }
    if let Some(index) = RWKV7_LERPS.iter().position(|&l| l == leaf) {
        return Some(Stored::Part {
            name: b("time_mix_lerp_fused.weight"),
            index,
            parts: RWKV7_LERPS.len(),
        });
    }
    if let Some((lora, tail)) = leaf.split_once("_lora.lora.") {
        if !matches!(lora, "w" | "a" | "v" | "g") {
            return None;
        }
        let n = match tail {
            "0.weight" => 1,
            "2.weight" => 2,
            "2.bias" => 0,
            _ => return None,
        };
        return plain(b(&format!("time_mix_{lora}{n}.weight")));
    }
    let name = match leaf {
        "r_k" => return Some(Stored::Heads(b("time_mix_r_k.weight"))),
        "k_k" => "time_mix_k_k.weight",
        "k_a" => "time_mix_k_a.weight",
        "r_proj.weight" => "time_mix_receptance.weight",
        "k_proj.weight" => "time_mix_key.weight",
        "v_proj.weight" => "time_mix_value.weight",
        "o_proj.weight" => "time_mix_output.weight",
        "g_norm.weight" => "time_mix_ln.weight",
        "g_norm.bias" => "time_mix_ln.bias",
        _ => return None,
    };
    plain(b(name))
}

/// Whether the file holds the Hugging Face tensor `hf`.
pub fn contains(file: &GgufFile, arch: &str, hf: &str) -> bool {
    stored(arch, hf).is_some_and(|s| file.contains_tensor(s.name()))
}

/// The Hugging Face tensor `hf` of a recurrent file, the converter's transform undone.
pub fn tensor<'a>(file: &'a GgufFile, arch: &str, hf: &str) -> Result<HostTensor<'a>> {
    let path = || file.path().to_path_buf();
    let Some(how) = stored(arch, hf).filter(|s| file.contains_tensor(s.name())) else {
        let name = match stored(arch, hf) {
            Some(s) => format!("{} ({hf})", s.name()),
            None => hf.to_string(),
        };
        return Err(ModelError::MissingTensor { file: path(), name });
    };
    let (info, bytes) = file.tensor(how.name())?;
    let dtype = host_dtype(info.ggml_type).ok_or_else(|| ModelError::UnsupportedDtype {
        file: path(),
        name: info.name.clone(),
        dtype: info.ggml_type.name().to_string(),
    })?;
    let mut t = HostTensor {
        name: info.name.clone(),
        file: path(),
        shape: info.shape(),
        dtype,
        bytes,
    }
    .non_empty()?;
    let bad_shape = |t: HostTensor<'_>, expected: Vec<usize>| ModelError::TensorShape {
        file: t.file,
        name: t.name,
        expected,
        got: t.shape,
    };
    // Reordering values needs whole elements, not quantized blocks.
    let unquantized = !matches!(dtype, HostDType::Quant(_));
    match how {
        Stored::Plain(_) => {}
        Stored::Unsqueezed(_) => match t.shape[..] {
            [ch, k] => t.shape = vec![ch, 1, k],
            _ => return Err(bad_shape(t, vec![0, 0])),
        },
        Stored::Heads(_) => {
            let size = file
                .get_u64(&format!("{arch}.wkv.head_size"))
                .map(|s| s as usize)
                .filter(|&s| s > 0);
            let n = numel(&t.shape).unwrap_or(0);
            match size.filter(|s| n.is_multiple_of(*s)) {
                Some(s) => t.shape = vec![n / s, s],
                None => return Err(bad_shape(t, vec![0, size.unwrap_or(0)])),
            }
        }
        Stored::NegExp(_) => {
            let values = t.to_f32();
            if !unquantized || values.iter().any(|&a| a.is_nan() || a >= 0.0) {
                return Err(ModelError::UnsupportedFormat {
                    path: path(),
                    message: format!(
                        "tensor '{}' must hold -exp(A_log) (negative values, not quantized)",
                        t.name
                    ),
                });
            }
            let a_log: Vec<f32> = values.iter().map(|&a| (-a).ln()).collect();
            t.bytes = Cow::Owned(bytemuck::cast_slice(&a_log).to_vec());
            t.dtype = HostDType::F32;
        }
        Stored::Part { index, parts, .. } => {
            let outer = t.shape.first().copied().unwrap_or(0);
            if !unquantized || outer != parts {
                return Err(bad_shape(t, vec![parts]));
            }
            let len = t.bytes.len() / parts;
            let rest: Vec<usize> = t.shape[1..].iter().copied().filter(|&d| d != 1).collect();
            t.shape = if rest.is_empty() { vec![1] } else { rest };
            t.bytes = match t.bytes {
                Cow::Borrowed(b) => Cow::Borrowed(&b[index * len..(index + 1) * len]),
                Cow::Owned(b) => Cow::Owned(b[index * len..(index + 1) * len].to_vec()),
            };
        }
        Stored::Restacked {
            order,
            side_by_side,
            ..
        } => {
            let parts = order.len();
            let outer = t.shape.first().copied().unwrap_or(0);
            let rows = match side_by_side {
                true => t.shape.get(1).copied().unwrap_or(0),
                false => 1,
            };
            let fits = match side_by_side {
                true => outer == parts && t.shape.len() == 3,
                false => outer.is_multiple_of(parts),
            };
            if !unquantized || !fits || rows == 0 || outer == 0 {
                return Err(bad_shape(t, vec![parts]));
            }
            // Each part is [rows, cols]: row r of every part in turn.
            let row = t.bytes.len() / parts / rows;
            let mut out = Vec::with_capacity(t.bytes.len());
            for r in 0..rows {
                for &p in &order {
                    let at = (p * rows + r) * row;
                    out.extend_from_slice(&t.bytes[at..at + row]);
                }
            }
            t.shape = match side_by_side {
                true => vec![rows, parts * t.shape[2]],
                false => t.shape.iter().copied().filter(|&d| d != 1).collect(),
            };
            t.bytes = Cow::Owned(out);
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fla_rwkv7_tensor_has_a_gguf_name() {
        for (hf, gguf) in [
            ("model.layers.0.pre_norm.bias", "token_embd_norm.bias"),
            ("model.layers.1.ffn_norm.weight", "blk.1.attn_norm_2.weight"),
            (
                "model.layers.1.attn.w_lora.lora.2.bias",
                "blk.1.time_mix_w0.weight",
            ),
            (
                "model.layers.1.attn.v_lora.lora.0.weight",
                "blk.1.time_mix_v1.weight",
            ),
            (
                "model.layers.1.attn.g_norm.weight",
                "blk.1.time_mix_ln.weight",
            ),
            (
                "model.layers.3.attn.x_g",
                "blk.3.time_mix_lerp_fused.weight",
            ),
            ("model.layers.1.ffn.x_k", "blk.1.channel_mix_lerp_k.weight"),
        ] {
            assert_eq!(
                stored("rwkv7", hf).map(|s| s.name().to_string()),
                Some(gguf.into())
            );
        }
        assert_eq!(stored("rwkv7", "model.layers.1.pre_norm.weight"), None);
        assert_eq!(
            stored("rwkv7", "model.layers.1.attn.q_lora.lora.0.weight"),
            None
        );
    }

    #[test]
    fn every_fla_rwkv6_tensor_has_a_gguf_name() {
        for (hf, gguf) in [
            ("model.layers.0.pre_norm.bias", "token_embd_norm.bias"),
            ("model.layers.1.ffn_norm.weight", "blk.1.attn_norm_2.weight"),
            (
                "model.layers.1.attn.x_bias",
                "blk.1.time_mix_lerp_fused.weight",
            ),
            (
                "model.layers.1.attn.x_proj.0.mu",
                "blk.1.time_mix_lerp_x.weight",
            ),
            (
                "model.layers.1.attn.w_proj.linear.lora.2.bias",
                "blk.1.time_mix_decay.weight",
            ),
            ("model.layers.1.attn.bonus", "blk.1.time_mix_first.weight"),
            ("model.layers.1.attn.g_norm.bias", "blk.1.time_mix_ln.bias"),
            (
                "model.layers.1.ffn.receptance.mu",
                "blk.1.channel_mix_lerp_r.weight",
            ),
        ] {
            assert_eq!(
                stored("rwkv6", hf).map(|s| s.name().to_string()),
                Some(gguf.into())
            );
        }
        assert_eq!(
            stored("rwkv6", "model.layers.0.attn.x_proj.2.weight"),
            Some(Stored::Restacked {
                name: "blk.0.time_mix_w2.weight".into(),
                order: [3, 0, 1, 2, 4],
                side_by_side: true,
            })
        );
        assert_eq!(stored("rwkv6", "model.layers.1.pre_norm.weight"), None);
        assert_eq!(stored("rwkv6", "model.layers.0.attn.x_k"), None);
    }

    /// rwkv6.gguf (llama.cpp's converter over the rwkv6_finch fixture's weights, f32, no
    /// rescaling) gives back every fla tensor of the fixture with its shape and bytes — the
    /// restacked mixes included — and uses every tensor of the file.
    #[test]
    fn the_rwkv6_gguf_gives_back_every_fla_tensor() {
        use crate::formats::host::TensorSource;
        use crate::formats::safetensors::SafetensorsFiles;
        use std::path::Path;

        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let fla = SafetensorsFiles::open_dir(&fixtures.join("rwkv6_finch")).expect("fixture");
        let file = GgufFile::open(&fixtures.join("gguf_recurrent/rwkv6.gguf")).expect("GGUF");
        let mut used = std::collections::BTreeSet::new();
        for name in fla.tensor_names() {
            let want = fla.tensor(name).expect("fla tensor");
            let got = tensor(&file, "rwkv6", name).expect("GGUF tensor");
            assert_eq!(got.shape, want.shape, "{name}");
            assert!(got.bytes == want.bytes, "{name}: other values");
            used.insert(stored("rwkv6", name).expect("stored").name().to_string());
        }
        assert_eq!(used.len(), file.tensor_infos().len());
    }

    #[test]
    fn mamba_transforms_are_named() {
        assert_eq!(
            stored("mamba2", "backbone.layers.2.mixer.A_log"),
            Some(Stored::NegExp("blk.2.ssm_a".into()))
        );
        assert_eq!(
            stored("mamba", "backbone.layers.0.mixer.dt_proj.bias"),
            stored("mamba2", "backbone.layers.0.mixer.dt_bias")
        );
        assert_eq!(stored("mamba", "backbone.layers.0.mixer.A"), None);
    }
}

//! RWKV-7 checkpoints in BlinkDL's own naming (`emb.weight`, `blocks.{i}.att.*`, ...): a
//! directory with `model.safetensors` and no config.json, or BlinkDL's `.pth` release itself
//! (`formats::pth`), recognised by its tensors. Sizes
//! come from the tensor shapes (`att.r_k` is [heads, head_size]), the tensors answer to fla's
//! names through [`BlinkSource`] (LoRA factors transposed) so the RWKV network (`rwkv.rs`)
//! loads them, and `ln_x` takes BlinkDL's fixed eps 64e-5.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::rwkv::{Rwkv, RwkvConfig};
use super::{Family, Network, NetworkConfig};
use crate::blocks::rwkv::LayerConfig;
use crate::error::{ModelError, Result};
use crate::formats::host::{HostDType, HostTensor, TensorSource};
use crate::model::ModelConfig;
use crate::vars::Vars;

/// BlinkDL's `ln_x` GroupNorm eps (the `rwkv` package and RWKV-LM), whatever the head size.
pub const LN_X_EPS: f32 = 64e-5;

pub const FAMILY: Family = Family {
    classes: &[],
    model_types: &[],
    gguf: &[],
    parse: None,
    from_tensors: Some(|source| Ok(blink_config(source)?.map(|c| Box::new(c) as _))),
    // No config.json: everything is read from the tensors.
    keys: &[],
};

/// An RWKV-7 config read from a BlinkDL checkpoint's shapes.
#[derive(Debug)]
struct BlinkConfig(RwkvConfig);

impl NetworkConfig for BlinkConfig {
    fn load(self: Box<Self>, vb: &Vars<'_>) -> Result<Arc<dyn Network>> {
        let source = BlinkSource {
            files: vb.source(),
            file: checkpoint_file(vb.source()),
        };
        Ok(Arc::new(Rwkv::load(self.0, &vb.with_source(&source))?))
    }
}

/// `Ok(None)` unless `files` hold BlinkDL's RWKV-7 names (`emb.weight`, `blocks.0.att.r_k`).
fn blink_config(files: &dyn TensorSource) -> Result<Option<BlinkConfig>> {
    if !(files.contains("emb.weight") && files.contains("blocks.0.att.r_k")) {
        return Ok(None);
    }
    let file = checkpoint_file(files);
    Ok(Some(BlinkConfig(config_from_shapes(files, &file)?)))
}

/// The file errors name: a `.pth` checkpoint itself, or a folder's model.safetensors.
fn checkpoint_file(files: &dyn TensorSource) -> PathBuf {
    let origin = files.origin();
    match origin.extension().is_some_and(|e| e.eq_ignore_ascii_case("pth")) {
        true => origin.to_path_buf(),
        false => origin.join("model.safetensors"),
    }
}

fn shape(files: &dyn TensorSource, name: &str) -> Result<Vec<usize>> {
    Ok(files.tensor(name)?.shape)
}

/// The config BlinkDL does not ship, from the tensor shapes.
fn config_from_shapes(files: &dyn TensorSource, file: &Path) -> Result<RwkvConfig> {
    let bad = |name: &str, expected: Vec<usize>, got: Vec<usize>| ModelError::TensorShape {
        file: file.to_path_buf(),
        name: name.to_string(),
        expected,
        got,
    };
    let two = |name: &str| -> Result<(usize, usize)> {
        match shape(files, name)?[..] {
            [a, b] => Ok((a, b)),
            ref s => Err(bad(name, vec![0, 0], s.to_vec())),
        }
    };
    let (vocab, hidden) = two("emb.weight")?;
    let (heads, head_size) = two("blocks.0.att.r_k")?;
    if heads * head_size != hidden {
        return Err(bad(
            "blocks.0.att.r_k",
            vec![hidden / head_size.max(1), head_size],
            vec![heads, head_size],
        ));
    }
    let mut layers = 0;
    while files.contains(&format!("blocks.{layers}.ln1.weight")) {
        layers += 1;
    }
    if layers == 0 {
        return Err(ModelError::MissingTensor {
            file: file.to_path_buf(),
            name: "blocks.0.ln1.weight".into(),
        });
    }
    let rank = |name: &str| -> Result<usize> { Ok(two(name)?.1) };
    let v_rank = match layers {
        1 => 32,
        _ => rank("blocks.1.att.v1")?,
    };
    let config = RwkvConfig {
        model: ModelConfig::recurrent("RWKV7ForCausalLM", vocab),
        layer: LayerConfig {
            version: 7,
            hidden,
            heads,
            head_k: head_size,
            head_v: head_size,
            intermediate: two("blocks.0.ffn.key.weight")?.0,
            mix_rank: 0,
            decay_rank: rank("blocks.0.att.w1")?,
            a_rank: rank("blocks.0.att.a1")?,
            v_rank,
            gate_rank: rank("blocks.0.att.g1")?,
            ln_x_eps: LN_X_EPS,
            l2_eps: 1e-24,
            norm_bias: true,
        },
        layers,
        norm_eps: 1e-5,
        pre_norm: true,
        tie_embeddings: false,
        rescale_every: 0,
    };
    config
        .layer
        .scan_shape()
        .validate()
        .map_err(|e| ModelError::UnsupportedFormat {
            path: file.to_path_buf(),
            message: format!("head size {head_size} (from blocks.0.att.r_k): {e}"),
        })?;
    Ok(config)
}

/// The checkpoint's tensors under fla's names.
struct BlinkSource<'a> {
    files: &'a dyn TensorSource,
    file: PathBuf,
}

/// BlinkDL's name for an fla name, and whether the tensor is stored transposed.
fn blink_name(fla: &str) -> Option<(String, bool)> {
    let plain = |s: &str| Some((s.to_string(), false));
    match fla {
        "model.embeddings.weight" => return plain("emb.weight"),
        "lm_head.weight" => return plain("head.weight"),
        _ => {}
    }
    if let Some(rest) = fla.strip_prefix("model.norm.") {
        return plain(&format!("ln_out.{rest}"));
    }
    let rest = fla.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let b = format!("blocks.{layer}");
    let (part, leaf) = rest.split_once('.')?;
    let norm = |n: &str| plain(&format!("{b}.{n}.{leaf}"));
    match part {
        "pre_norm" => return norm("ln0"),
        "attn_norm" => return norm("ln1"),
        "ffn_norm" => return norm("ln2"),
        "ffn" => return plain(&format!("{b}.ffn.{leaf}")),
        "attn" => {}
        _ => return None,
    }
    let att = |n: &str, t: bool| Some((format!("{b}.att.{n}"), t));
    match leaf {
        "r_proj.weight" => att("receptance.weight", false),
        "k_proj.weight" => att("key.weight", false),
        "v_proj.weight" => att("value.weight", false),
        "o_proj.weight" => att("output.weight", false),
        "g_norm.weight" => att("ln_x.weight", false),
        "g_norm.bias" => att("ln_x.bias", false),
        _ => {
            if let Some((lora, tail)) = leaf.split_once("_lora.lora.") {
                return match tail {
                    "0.weight" => att(&format!("{lora}1"), true),
                    "2.weight" => att(&format!("{lora}2"), true),
                    "2.bias" => att(&format!("{lora}0"), false),
                    _ => None,
                };
            }
            att(leaf, false)
        }
    }
}

impl TensorSource for BlinkSource<'_> {
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let Some((blink, transposed)) = blink_name(name) else {
            return Err(ModelError::MissingTensor {
                file: self.file.clone(),
                name: name.to_string(),
            });
        };
        let t = self.files.tensor(&blink)?;
        if !transposed {
            return Ok(t);
        }
        let (rows, cols) = match t.shape[..] {
            [r, c] => (r, c),
            _ => {
                return Err(ModelError::TensorShape {
                    file: t.file.clone(),
                    name: blink,
                    expected: vec![0, 0],
                    got: t.shape.clone(),
                })
            }
        };
        let size = match t.dtype {
            HostDType::F32 => 4,
            HostDType::F16 | HostDType::BF16 => 2,
            HostDType::Quant(_) => {
                return Err(ModelError::UnsupportedDtype {
                    file: t.file.clone(),
                    name: blink,
                    dtype: "quantized (a LoRA factor must be f32, f16 or bf16)".into(),
                })
            }
        };
        let mut bytes = vec![0u8; t.bytes.len()];
        for r in 0..rows {
            for c in 0..cols {
                let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                bytes[to..to + size].copy_from_slice(&t.bytes[from..from + size]);
            }
        }
        Ok(HostTensor {
            name: blink,
            file: t.file.clone(),
            shape: vec![cols, rows],
            dtype: t.dtype,
            bytes: Cow::Owned(bytes),
        })
    }

    fn contains(&self, name: &str) -> bool {
        blink_name(name).is_some_and(|(b, _)| self.files.contains(&b))
    }

    fn origin(&self) -> &Path {
        &self.file
    }
}

//! Tokenizers from GGUF metadata (`tokenizer.ggml.*`), built as `tokenizers::Tokenizer`s
//! that reproduce llama.cpp's tokenization (`src/llama-vocab.cpp`):
//!
//! - `gpt2`: byte-level BPE with the file's merges. The pre-tokenizer is llama.cpp's list of
//!   regexes for `tokenizer.ggml.pre`, applied in turn (each splits the pieces of the one
//!   before, keeping the text between matches), then GPT-2's byte-to-unicode mapping.
//!   Pre-types that llama.cpp tokenizes with `ignore_merges` (llama3, ...) emit a piece that
//!   is itself a token directly.
//! - `llama`: SentencePiece-style BPE as llama.cpp's SPM tokenizer does it: spaces become
//!   `▁`, a `▁` is prepended to each run of text (at the start and after special tokens)
//!   when `add_space_prefix`, adjacent pieces merge when their concatenation is a token,
//!   highest score first, and characters without a token fall back to `<0xXX>` byte tokens.
//!   The merges are derived from the vocabulary and scores the way Hugging Face's
//!   `LlamaTokenizerFast` conversion does (by the merged token's score, then ids).
//!
//! Tokens of type control (3), user-defined (4) and unknown (2) become added tokens, split
//! out of the text before the model sees it; control and unknown ones are special (skipped
//! by `decode(ids, true)`). `add_bos` / `add_eos` become a post-processor, so that
//! `encode(text, true)` matches llama.cpp's `llama_tokenize(..., add_special = true,
//! parse_special = true)`; `encode(text, false)` matches it with `add_special = false`.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

pub use tokenizers;
pub use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};
use crate::formats::gguf::{GgufFile, GgufValue};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata, with llama.cpp's
/// defaults applied (the special ids and `add_*` flags are the effective ones).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufVocab {
    /// The file named in errors.
    pub origin: PathBuf,
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre` ("" when absent, which llama.cpp treats as "default").
    pub pre: String,
    pub tokens: Vec<String>,
    /// One per token; empty when the file has none (all 0).
    pub scores: Vec<f32>,
    /// One per token; empty when the file has none (all normal).
    pub token_types: Vec<i32>,
    /// "left right" pairs, highest priority first (gpt2 only).
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// Prepend a space to text (SentencePiece models).
    pub add_space_prefix: bool,
}

/// How llama.cpp pre-tokenizes one `tokenizer.ggml.pre` type of the BPE model.
struct BpePre {
    regexes: &'static [&'static str],
    ignore_merges: bool,
    add_bos: bool,
}

// The regexes of `llm_tokenizer_bpe` in llama.cpp's src/llama-vocab.cpp (where llama.cpp
// adapted a tokenizer.json regex, its adapted form).
const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const RE_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const RE_MINICPM5: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
const RE_DEEPSEEK3_MAIN: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const RE_CJK: &str = "[\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
const RE_HAN_KANA: &str = "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+";
// DeepSeek LLM's cased-letter class, as code points (the literal characters include
// singletons that Unicode normalization would change, e.g. U+1F7D, U+2126, U+212A).
const RE_DEEPSEEK_LETTERS: &str = "\\s?[\u{41}-\u{5A}\u{61}-\u{7A}\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}-\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}-\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}-\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+";
const RE_DEEPSEEK_PUNCT: &str =
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+";

/// llama.cpp's handling of each `tokenizer.ggml.pre` value of a BPE vocabulary.
fn bpe_pre(pre: &str) -> Option<BpePre> {
    let p = |regexes: &'static [&'static str]| BpePre {
        regexes,
        ignore_merges: false,
        add_bos: false,
    };
    Some(match pre {
        "" | "default" => p(&[
            r"[\p{P}\$\+<=>\^~\|]+",
            RE_GPT2,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => BpePre {
            regexes: &[RE_LLAMA3],
            ignore_merges: true,
            add_bos: true,
        },
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => p(&[RE_LLAMA3]),
        "minicpm5" => BpePre {
            regexes: &[r"\p{N}{1,3}", RE_MINICPM5],
            ignore_merges: true,
            add_bos: false,
        },
        "deepseek-llm" => p(&[
            "[\r\n]",
            RE_DEEPSEEK_LETTERS,
            RE_DEEPSEEK_PUNCT,
            r"\s+$",
            RE_CJK,
            r"\p{N}+",
        ]),
        "deepseek-coder" => p(&["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", RE_CJK, r"\p{N}"]),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
            p(&[r"\p{N}{1,3}", RE_HAN_KANA, RE_DEEPSEEK3_MAIN])
        }
        "falcon" => p(&[r"[\p{P}\$\+<=>\^~\|`]+", RE_GPT2, "[0-9][0-9][0-9]"]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => p(&[r"\p{N}", RE_GPT2]),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo" | "jais"
        | "trillion" | "granite-docling" => p(&[RE_GPT2]),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => p(&[RE_QWEN2]),
        "qwen35" => p(&[RE_QWEN35]),
        "poro-chat" | "bloom" | "gpt3-finnish" => p(&[RE_PORO]),
        "viking" => p(&[RE_PORO, r"\p{N}"]),
        "tekken" => BpePre {
            regexes: &[RE_TEKKEN],
            ignore_merges: true,
            add_bos: true,
        },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => p(&[RE_GPT4O]),
        "seed-coder" => p(&[RE_SEED_CODER]),
        "grok-2" => p(&[RE_QWEN2]),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => p(&[RE_BAILINGMOE]),
        _ => return None,
    })
}

/// The `tokenizer.ggml.pre` values [`build_tokenizer`] supports for "gpt2" vocabularies.
pub fn supported_pre_types() -> &'static [&'static str] {
    &[
        "default",
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
        "dbrx",
        "smaug-bpe",
        "glm4",
        "chatglm-bpe",
        "minicpm5",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "hunyuan-dense",
        "joyai-llm",
        "hy_v4",
        "falcon",
        "starcoder",
        "refact",
        "command-r",
        "smollm",
        "codeshell",
        "exaone",
        "minerva-7b",
        "mellum2",
        "gpt-2",
        "phi-2",
        "jina-es",
        "jina-de",
        "gigachat",
        "jina-v2-es",
        "jina-v2-de",
        "a.x-4.0",
        "mellum",
        "modern-bert",
        "exaone4",
        "mpt",
        "olmo",
        "jais",
        "trillion",
        "granite-docling",
        "qwen2",
        "deepseek-r1-qwen",
        "kormo",
        "f2llmv2",
        "megrez",
        "stablelm2",
        "hunyuan",
        "solar-open",
        "qwen35",
        "poro-chat",
        "bloom",
        "gpt3-finnish",
        "viking",
        "tekken",
        "gpt-4o",
        "llama4",
        "kanana2",
        "talkie",
        "minimax-m2",
        "seed-coder",
        "grok-2",
        "bailingmoe",
        "bailingmoe2",
        "llada-moe",
    ]
}

fn tok_err(origin: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Tokenizer {
        file: origin.to_path_buf(),
        message: message.into(),
    }
}

impl GgufVocab {
    /// The vocabulary of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<GgufVocab> {
        GgufVocab::from_metadata(file.path(), |k| file.get(k))
    }

    /// The vocabulary from `tokenizer.ggml.*` values looked up by `get`, applying llama.cpp's
    /// defaults (`llama_vocab::impl::load`). `origin` names the source in errors.
    pub fn from_metadata<'a>(
        origin: &Path,
        get: impl Fn(&str) -> Option<&'a GgufValue>,
    ) -> Result<GgufVocab> {
        let err = |m: String| tok_err(origin, m);
        let model = get("tokenizer.ggml.model")
            .ok_or_else(|| err("missing metadata 'tokenizer.ggml.model'".into()))?
            .as_str()
            .ok_or_else(|| err("'tokenizer.ggml.model' is not a string".into()))?
            .to_string();
        let pre = match get("tokenizer.ggml.pre") {
            None => String::new(),
            Some(v) => v
                .as_str()
                .ok_or_else(|| err("'tokenizer.ggml.pre' is not a string".into()))?
                .to_string(),
        };
        let tokens = get("tokenizer.ggml.tokens")
            .ok_or_else(|| err("missing metadata 'tokenizer.ggml.tokens'".into()))?
            .as_array()
            .and_then(|a| a.as_strings())
            .ok_or_else(|| err("'tokenizer.ggml.tokens' is not an array of strings".into()))?
            .to_vec();
        let n = tokens.len();
        let scores = match get("tokenizer.ggml.scores") {
            None => Vec::new(),
            Some(v) => {
                let s = v.as_array().and_then(|a| a.to_f32_vec()).ok_or_else(|| {
                    err("'tokenizer.ggml.scores' is not an array of numbers".into())
                })?;
                if s.len() < n {
                    return Err(err(format!(
                        "'tokenizer.ggml.scores' has {} entries for {n} tokens",
                        s.len()
                    )));
                }
                s
            }
        };
        let token_types = match get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(v) => {
                let t = v
                    .as_array()
                    .and_then(|a| a.to_i64_vec())
                    .ok_or_else(|| {
                        err("'tokenizer.ggml.token_type' is not an array of integers".into())
                    })?
                    .into_iter()
                    .map(|x| i32::try_from(x).unwrap_or(token_type::UNDEFINED))
                    .collect::<Vec<_>>();
                if t.len() < n {
                    return Err(err(format!(
                        "'tokenizer.ggml.token_type' has {} entries for {n} tokens",
                        t.len()
                    )));
                }
                t
            }
        };
        let merges = match get("tokenizer.ggml.merges") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| a.as_strings())
                .ok_or_else(|| err("'tokenizer.ggml.merges' is not an array of strings".into()))?
                .to_vec(),
        };

        // Defaults per model type: (bos, eos, unk, add_bos, add_space_prefix).
        let (mut bos, mut eos, mut unk, mut add_bos, mut add_space_prefix) = match model.as_str()
        {
            "llama" => (Some(1), Some(2), Some(0), true, true),
            "gpt2" => {
                if get("tokenizer.ggml.merges").is_none() {
                    return Err(err("missing metadata 'tokenizer.ggml.merges'".into()));
                }
                let p = bpe_pre(&pre).ok_or_else(|| {
                    err(format!(
                        "unsupported pre-tokenizer type '{pre}' (tokenizer.ggml.pre); supported: {}",
                        supported_pre_types().join(", ")
                    ))
                })?;
                let bos = if pre == "glm4" || pre == "chatglm-bpe" {
                    None
                } else {
                    Some(11)
                };
                (bos, Some(11), None, p.add_bos, false)
            }
            // RWKV's world vocabulary: no special ids unless the file names them
            // (formats::rwkv_tokenizer).
            "rwkv" => (None, None, None, false, false),
            other => {
                return Err(err(format!(
                    "unsupported tokenizer model '{other}' (tokenizer.ggml.model; supported: gpt2, llama, rwkv)"
                )))
            }
        };
        let (mut pad, mut add_eos) = (None, false);
        if let Some(b) = get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()) {
            add_space_prefix = b;
        }
        // Default ids outside the vocabulary are disabled; ids from the file that are outside
        // it are ignored (llama.cpp warns and keeps the default).
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let special = |slot: &mut Option<u32>, key: &str| {
            *slot = in_range(*slot);
            if let Some(id) = get(key).and_then(|v| v.as_u32()) {
                if (id as usize) < n {
                    *slot = Some(id);
                } else {
                    log::warn!(
                        "{}: {key} = {id} is outside the vocabulary",
                        origin.display()
                    );
                }
            }
        };
        special(&mut bos, "tokenizer.ggml.bos_token_id");
        special(&mut eos, "tokenizer.ggml.eos_token_id");
        special(&mut unk, "tokenizer.ggml.unknown_token_id");
        special(&mut pad, "tokenizer.ggml.padding_token_id");
        if let Some(b) = get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()) {
            add_bos = b;
        }
        if let Some(b) = get("tokenizer.ggml.add_eos_token").and_then(|v| v.as_bool()) {
            add_eos = b;
        }
        if add_bos && bos.is_none() {
            return Err(err(
                "tokenizer.ggml.add_bos_token is true, but there is no BOS token".into(),
            ));
        }
        if add_eos && eos.is_none() {
            return Err(err(
                "tokenizer.ggml.add_eos_token is true, but there is no EOS token".into(),
            ));
        }
        Ok(GgufVocab {
            origin: origin.to_path_buf(),
            model,
            pre,
            tokens,
            scores,
            token_types,
            merges,
            bos,
            eos,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The type of token `id` (normal when the file has no types).
    pub fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .get(id)
            .copied()
            .unwrap_or(token_type::NORMAL)
    }

    pub fn score(&self, id: usize) -> f32 {
        self.scores.get(id).copied().unwrap_or(0.0)
    }

    /// Whether llama.cpp emits a pre-tokenized piece that is itself a token without merging.
    pub fn ignore_merges(&self) -> bool {
        self.model == "gpt2" && bpe_pre(&self.pre).is_some_and(|p| p.ignore_merges)
    }

    /// Ids of the tokens that llama.cpp splits out of text before tokenizing it (control,
    /// user-defined and unknown types).
    pub fn special_token_ids(&self) -> Vec<u32> {
        (0..self.tokens.len())
            .filter(|&i| {
                matches!(
                    self.token_type(i),
                    token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN
                )
            })
            .map(|i| i as u32)
            .collect()
    }

    /// The token texts as llama.cpp uses them (an empty token becomes `[EMPTY_<id>]`).
    fn texts(&self) -> Vec<String> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect()
    }
}

/// text → id, the first id for a text that occurs more than once.
fn vocab_map(texts: &[String], origin: &Path) -> Vocab {
    let mut vocab = Vocab::default();
    let mut dups = 0usize;
    for (i, t) in texts.iter().enumerate() {
        if vocab.contains_key(t) {
            dups += 1;
        } else {
            vocab.insert(t.clone(), i as u32);
        }
    }
    if dups > 0 {
        log::warn!(
            "{}: {dups} duplicate token texts; the first id of each is used",
            origin.display()
        );
    }
    vocab
}

/// The BPE merges of a gpt2 vocabulary: llama.cpp's split of "left right" (at the first
/// space after the first byte), first occurrence of a pair kept, pairs whose parts or
/// result are not tokens dropped.
fn bpe_merges(v: &GgufVocab, vocab: &Vocab) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(v.merges.len());
    let mut dropped = 0usize;
    for m in &v.merges {
        let Some(pos) = m
            .as_bytes()
            .iter()
            .skip(1)
            .position(|&b| b == b' ')
            .map(|p| p + 1)
        else {
            dropped += 1;
            continue;
        };
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        if !vocab.contains_key(a) || !vocab.contains_key(b) {
            dropped += 1;
            continue;
        }
        let merged = format!("{a}{b}");
        if !vocab.contains_key(&merged) {
            dropped += 1;
            continue;
        }
        if seen.insert((a, b)) {
            out.push((a.to_string(), b.to_string()));
        }
    }
    if dropped > 0 {
        log::warn!(
            "{}: {dropped} merges are malformed or name tokens outside the vocabulary; ignored",
            v.origin.display()
        );
    }
    out
}

/// Merges for a SentencePiece vocabulary: every split of a token into two tokens, ordered
/// by the merged token's score (highest first), then by the merged token's id, then by the
/// ids of the parts — Hugging Face's `SentencePieceExtractor` order, under which BPE picks
/// the same merges as llama.cpp's score-ordered SPM tokenizer.
fn spm_merges(v: &GgufVocab, texts: &[String], vocab: &Vocab) -> Result<Vec<(String, String)>> {
    // Each split of a token looks both halves up: quadratic in its length, so a corrupt
    // vocabulary's megabyte-long token is refused instead of computed for hours.
    if let Some((id, t)) = texts
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() > MAX_SPM_TOKEN_BYTES)
    {
        return Err(tok_err(
            &v.origin,
            format!(
                "token {id} is {} bytes long (a SentencePiece vocabulary's tokens are at most \
                 {MAX_SPM_TOKEN_BYTES} here)",
                t.len()
            ),
        ));
    }
    let mut merges: Vec<(f32, u32, u32, u32, usize)> = Vec::new();
    for (id, t) in texts.iter().enumerate() {
        if vocab.get(t) != Some(&(id as u32)) {
            continue; // a duplicate text
        }
        for (split, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merges.push((v.score(id), id as u32, li, ri, split));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    Ok(merges
        .into_iter()
        .map(|(_, id, _, _, split)| {
            let t = &texts[id as usize];
            (t[..split].to_string(), t[split..].to_string())
        })
        .collect())
}

/// The longest token text of a SentencePiece vocabulary (real ones stay under a hundred).
const MAX_SPM_TOKEN_BYTES: usize = 1024;

/// Build the tokenizer that reproduces llama.cpp's tokenization of this vocabulary.
pub fn build_tokenizer(v: &GgufVocab) -> Result<Tokenizer> {
    let origin = v.origin.as_path();
    let terr = |e: tokenizers::Error| tok_err(origin, e.to_string());
    let n = v.tokens.len();
    if n == 0 {
        return Err(tok_err(origin, "the vocabulary is empty"));
    }
    if n > u32::MAX as usize {
        return Err(tok_err(origin, "the vocabulary has too many tokens"));
    }
    if !v.scores.is_empty() && v.scores.len() < n {
        return Err(tok_err(origin, "fewer scores than tokens"));
    }
    if !v.token_types.is_empty() && v.token_types.len() < n {
        return Err(tok_err(origin, "fewer token types than tokens"));
    }
    for (name, id) in [
        ("bos", v.bos),
        ("eos", v.eos),
        ("unk", v.unk),
        ("pad", v.pad),
    ] {
        if id.is_some_and(|i| i as usize >= n) {
            return Err(tok_err(
                origin,
                format!(
                    "{name} id {} is outside the vocabulary of {n}",
                    id.unwrap_or(0)
                ),
            ));
        }
    }
    let texts = v.texts();
    let vocab = vocab_map(&texts, origin);

    let mut tokenizer = match v.model.as_str() {
        "gpt2" => {
            let pre = bpe_pre(&v.pre).ok_or_else(|| {
                tok_err(
                    origin,
                    format!("unsupported pre-tokenizer type '{}'", v.pre),
                )
            })?;
            let merges = bpe_merges(v, &vocab);
            let bpe = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .ignore_merges(pre.ignore_merges)
                .build()
                .map_err(terr)?;
            let mut pts: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre.regexes.len() + 1);
            for re in pre.regexes {
                let split = Split::new(
                    SplitPattern::Regex((*re).to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err(origin, format!("pre-tokenizer regex {re:?}: {e}")))?;
                pts.push(split.into());
            }
            pts.push(ByteLevel::new(false, true, false).into());
            let mut t = Tokenizer::new(bpe);
            t.with_pre_tokenizer(Some(PreTokenizerSequence::new(pts)));
            t.with_decoder(Some(ByteLevel::new(false, true, false)));
            t
        }
        "llama" => {
            let merges = spm_merges(v, &texts, &vocab)?;
            let mut b = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .byte_fallback(true)
                .fuse_unk(true);
            if let Some(u) = v.unk {
                b = b.unk_token(texts[u as usize].clone());
            }
            let bpe = b.build().map_err(terr)?;
            let mut norms: Vec<NormalizerWrapper> = Vec::new();
            if v.add_space_prefix {
                norms.push(Prepend::new("\u{2581}".into()).into());
            }
            norms.push(Replace::new(" ", "\u{2581}").map_err(terr)?.into());
            let mut decs: Vec<DecoderWrapper> = vec![
                Replace::new("\u{2581}", " ").map_err(terr)?.into(),
                ByteFallback::new().into(),
                Fuse::new().into(),
            ];
            if v.add_space_prefix {
                decs.push(Strip::new(' ', 1, 0).into());
            }
            let mut t = Tokenizer::new(bpe);
            t.with_normalizer(Some(NormalizerSequence::new(norms)));
            t.with_decoder(Some(DecoderSequence::new(decs)));
            t
        }
        other => {
            return Err(tok_err(
                origin,
                format!("unsupported tokenizer model '{other}' (supported: gpt2, llama)"),
            ))
        }
    };

    // Control, user-defined and unknown tokens are matched in the raw text first (longest
    // first, as llama.cpp's special-token cache is ordered).
    let mut specials: Vec<u32> = v.special_token_ids();
    specials.sort_by_key(|&i| std::cmp::Reverse(texts[i as usize].len()));
    let added: Vec<AddedToken> = specials
        .iter()
        .filter(|&&i| tokenizer.token_to_id(&texts[i as usize]) == Some(i))
        .map(|&i| {
            let special = v.token_type(i as usize) != token_type::USER_DEFINED;
            AddedToken::from(texts[i as usize].clone(), special).normalized(false)
        })
        .collect();
    tokenizer.add_special_tokens(&added);

    if v.add_bos || v.add_eos {
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut special_tokens = Vec::new();
        for (name, id, add) in [("bos", v.bos, v.add_bos), ("eos", v.eos, v.add_eos)] {
            if let (true, Some(id)) = (add, id) {
                special_tokens.push(
                    SpecialToken::new(name.into(), vec![id], vec![texts[id as usize].clone()])
                        .map_err(terr)?,
                );
            }
        }
        if v.add_bos {
            single.push("bos".to_string());
            pair.push("bos".to_string());
        }
        single.push("$A:0".into());
        pair.push("$A:0".into());
        if v.add_eos {
            single.push("eos".into());
            pair.push("eos".into());
        }
        if v.add_bos {
            pair.push("bos:1".into());
        }
        pair.push("$B:1".into());
        if v.add_eos {
            pair.push("eos:1".into());
        }
        let mut builder = TemplateProcessing::builder();
        builder
            .try_single(single)
            .map_err(|e| tok_err(origin, e))?
            .try_pair(pair)
            .map_err(|e| tok_err(origin, e))?
            .special_tokens(special_tokens);
        let processor = builder
            .build()
            .map_err(|e| tok_err(origin, e.to_string()))?;
        tokenizer.with_post_processor(Some(processor));
    }
    Ok(tokenizer)
}

/// The tokenizer of a GGUF file (`GgufVocab::from_gguf` then [`build_tokenizer`]).
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    build_tokenizer(&GgufVocab::from_gguf(file)?)
}

//! The command line as clap types: every command and its options, with their defaults. The
//! option groups that several commands take (device, attention, sampling, the diffusion
//! sampler) are defined once and flattened into those commands; each group turns itself
//! into the libraries' settings. The libraries' errors name their own fields (`top_p`,
//! `kv_window`, `block_length`); [`flag`] gives them back under the flags' names.
//!
//! Usage errors (an unknown option, a missing or unparsable value, options that go
//! together) are clap's: its message, the usage line and a hint, exit status 2.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use kestrel_models::generate::Request;
use kestrel_models::speculate::{DEFAULT_DRAFT_TOKENS, MAX_DRAFT_TOKENS};
use kestrel_models::{AttentionField, AttentionOptions};
use kestrel_runtime::block_mask::SparseConfig;
use kestrel_runtime::diffusion::{BlockCache, ConfigError, DiffusionConfig, Setting};
use kestrel_runtime::kernels::matvec_q8::MatvecPrecision;
use kestrel_runtime::session::Sampling;
use kestrel_runtime::{BackendChoice, Gpu};

const MODEL_HELP: &str = "A Hugging Face-layout directory (config.json, *.safetensors, \
    tokenizer.json) or a .gguf file; or a name from `kestrel models`; or a Hugging Face \
    repository, org/name or org/name:FILE.gguf";

#[derive(Parser, Debug)]
#[command(
    name = "kestrel",
    version,
    about = "LLMs on any GPU through WebGPU/wgpu",
    arg_required_else_help = true,
    after_help = "'kestrel <COMMAND> --help' lists a command's options.",
    // As the hand-written parser did: an option given twice keeps its last value, and a
    // negative number is a value (which its range then refuses, naming the option).
    mut_subcommands = |c: clap::Command| c.args_override_self(true).allow_negative_numbers(true)
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The adapter Kestrel would use, its features and limits
    Info(InfoArgs),
    /// Logits after each token of a sequence, as float32 .npy of shape [T, vocab]
    Logits(LogitsArgs),
    /// Text from a prompt, streamed, then prefill and decode tokens/s on stderr
    Generate(GenerateArgs),
    /// Prefill and decode tokens/s, a decoded token's GPU work and time by kernel class,
    /// cold start, kernel roofline figures, attention kernels
    Bench(BenchArgs),
    /// A chat in the terminal that keeps the KV cache between turns
    Chat(ChatArgs),
    /// Masked diffusion (LLaDA): token ids in, the whole sequence out as JSON
    Diffuse(DiffuseArgs),
    /// An OpenAI-compatible HTTP server on one model
    Serve(ServeArgs),
    /// A desktop chat window (without --model it asks for a model path)
    App(AppArgs),
    /// The catalogue of verified models: name, size, licence, SHA-256, source, cached or not
    Models(ModelsArgs),
    /// Download a model of the catalogue (or a Hugging Face repository) into its cache
    Pull(PullArgs),
}

/// Where a model named by catalogue name or Hugging Face repository comes from.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Use only models already downloaded (Kestrel's cache, the Hugging Face cache), as
    /// HF_HUB_OFFLINE=1 does
    #[arg(long)]
    pub offline: bool,
}

/// The device: every command opens one.
#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// The wgpu backend: auto (a discrete GPU first, then integrated, then any, CPU Vulkan
    /// included), vulkan, gl, metal or dx12
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendChoice,
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    s.parse().map_err(|e: kestrel_runtime::Error| e.to_string())
}

/// The decode matvec's arithmetic, chosen when running (before any plan is made).
#[derive(Args, Debug)]
#[command(next_help_heading = "Kernel options")]
pub struct PrecisionArgs {
    /// The decode matvec's arithmetic: f32 (exact, the default), int8 (x quantized to 8-bit
    /// integers per 32-value block, llama.cpp's q8_1, and integer dot products with Q4_0,
    /// Q4_1, Q5_0, Q5_1 and Q8_0 weights; other weights stay f32) or f16 (x, weights and
    /// products in f16, sums in f32, for f16 weights and those five formats; needs an adapter
    /// with shader-f16). int8 and f16 change the logits slightly (see the README)
    #[arg(long, value_name = "MODE", default_value = "f32", value_parser = parse_precision)]
    pub matvec_precision: MatvecPrecision,
}

fn parse_precision(s: &str) -> Result<MatvecPrecision, String> {
    s.parse().map_err(|e: kestrel_runtime::Error| e.to_string())
}

impl PrecisionArgs {
    /// Set the precision on `gpu` (before any model's plans are made); f16 on an adapter
    /// without shader-f16 is an error naming the option.
    pub fn apply(&self, gpu: &Gpu) -> Result<(), String> {
        gpu.set_matvec_precision(self.matvec_precision)
            .map_err(|e| e.to_string())
    }
}

/// Attention chosen when running, checked against the model once it is loaded.
#[derive(Args, Debug)]
#[command(next_help_heading = "Attention options")]
pub struct AttentionArgs {
    /// StreamingLLM: keep the first N tokens and (--kv-window) the last W, keys cached
    /// before RoPE with positions counted inside the cache, so a sequence can grow without
    /// bound in fixed memory
    #[arg(long, value_name = "N", requires = "kv_window")]
    pub attention_sinks: Option<usize>,
    /// StreamingLLM: the last W tokens kept beside the --attention-sinks
    #[arg(long, value_name = "W", requires = "attention_sinks")]
    pub kv_window: Option<usize>,
    /// Block-sparse attention over 64x64 blocks, e.g.
    /// local=4,global=1,random=1,dilation=1,seed=0[@LAYERS];...
    #[arg(long, value_name = "SPEC", value_parser = parse_sparse)]
    pub block_sparse: Option<SparseConfig>,
}

/// A duration in seconds: finite, above 0 and at most a day.
fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86400.0 => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds in (0, 86400]")),
    }
}

fn parse_sparse(s: &str) -> Result<SparseConfig, String> {
    SparseConfig::parse(s).map_err(|e| e.to_string())
}

impl AttentionArgs {
    pub fn options(&self) -> AttentionOptions {
        AttentionOptions {
            // clap makes the two go together.
            streaming: self.attention_sinks.zip(self.kv_window),
            sparse: self.block_sparse.clone(),
        }
    }
}

/// Sampling for `generate` and `chat`. The defaults differ by command (`Sampling`'s for
/// generate, a chat's for chat), so each is optional here.
#[derive(Args, Debug)]
#[command(next_help_heading = "Sampling")]
pub struct SamplingArgs {
    /// In [0, 2]; 0 is greedy (default: generate 0, chat 0.7; a diffusion model's Gumbel
    /// noise: 0)
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Sample among the K most likely tokens; 0 = off (default: generate 0, chat 40)
    #[arg(long, value_name = "K")]
    pub top_k: Option<u32>,
    /// Nucleus sampling, in (0, 1] (default: generate 1, chat 0.95)
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Random seed (default 0)
    #[arg(long, value_name = "S")]
    pub seed: Option<u32>,
    /// End the reply before this text (up to 4: --stop A --stop B)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub stop: Vec<String>,
}

/// Speculative decoding for `generate`, `chat`, `serve` and `bench`: drafts verified in one
/// forward of the model, the reply unchanged (token for token when greedy).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Speculative decoding")]
pub struct SpeculateArgs {
    /// Draft by prompt lookup: the tokens that followed the latest earlier occurrence of the
    /// last 3 (else 2, else 1) tokens; fastest where the reply repeats its prompt
    #[arg(long, value_name = "KIND")]
    pub speculate: Option<SpeculateKind>,
    /// Draft with this smaller model (same vocabulary and tokenizer as --model), decoding
    /// greedily: a path, catalogue name or Hugging Face repository, as --model
    #[arg(long, value_name = "PATH", conflicts_with = "speculate")]
    pub draft_model: Option<PathBuf>,
    /// Draft tokens per verification, 1 to 16
    #[arg(long, value_name = "K", default_value_t = DEFAULT_DRAFT_TOKENS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_DRAFT_TOKENS as u64))]
    pub draft_tokens: usize,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeculateKind {
    /// Prompt lookup (n-grams of the text so far)
    Ngram,
}

/// What to speculate with, as plain settings (the engine loads a draft model on its thread).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Speculation {
    #[default]
    Off,
    Ngram {
        draft_tokens: usize,
    },
    Draft {
        path: PathBuf,
        draft_tokens: usize,
    },
}

impl SpeculateArgs {
    pub fn speculation(&self) -> Speculation {
        let draft_tokens = self.draft_tokens;
        match (&self.draft_model, self.speculate) {
            (Some(path), _) => Speculation::Draft {
                path: path.clone(),
                draft_tokens,
            },
            (None, Some(SpeculateKind::Ngram)) => Speculation::Ngram { draft_tokens },
            (None, None) => Speculation::Off,
        }
    }
}

/// The sampling defaults of `chat`.
pub const CHAT_SAMPLING: Sampling = Sampling {
    temperature: 0.7,
    top_k: 40,
    top_p: 0.95,
    seed: 0,
};

impl SamplingArgs {
    /// The generator's request for `max_tokens` (`defaults` where an option is absent),
    /// checked, its errors naming the flags.
    pub fn request(&self, max_tokens: usize, defaults: Sampling) -> Result<Request, String> {
        let request = Request {
            sampling: Sampling {
                temperature: self.temperature.unwrap_or(defaults.temperature),
                top_k: self.top_k.unwrap_or(defaults.top_k),
                top_p: self.top_p.unwrap_or(defaults.top_p),
                seed: self.seed.unwrap_or(defaults.seed),
            },
            max_tokens,
            stop: self.stop.clone(),
            ..Request::default()
        };
        request.validate().map_err(|e| e.message(flag))?;
        Ok(request)
    }
}

/// The masked-diffusion sampler (LLaDA), for `diffuse` and for `generate` and `chat` on a
/// diffusion model. The generation length, temperature and seed come from each command.
#[derive(Args, Debug)]
#[command(next_help_heading = "Diffusion sampler (LLaDA models)")]
pub struct DiffusionArgs {
    /// Tokens filled per block (default: the generation length, at most 32)
    #[arg(long, value_name = "B")]
    pub block_length: Option<usize>,
    /// Steps over the whole generation, spread over the blocks (default: one per token)
    #[arg(long, value_name = "S")]
    pub steps: Option<usize>,
    /// Fast-dLLM parallel decoding: commit every position at least this confident (at
    /// least one per step)
    #[arg(long, value_name = "X")]
    pub threshold: Option<f32>,
    /// Reuse the block-start forward's keys and values within a block
    #[arg(long, value_enum, default_value_t = CacheArg::None)]
    pub cache: CacheArg,
    /// Classifier-free guidance scale (0 = off)
    #[arg(long, value_name = "C", default_value_t = 0.0)]
    pub cfg_scale: f32,
    /// Which positions of a step's candidates stay masked
    #[arg(long, value_enum, default_value_t = Remasking::LowConfidence)]
    pub remasking: Remasking,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheArg {
    None,
    Prefix,
    Dual,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remasking {
    #[value(name = "low_confidence")]
    LowConfidence,
    Random,
}

impl DiffusionArgs {
    /// The sampler settings for `gen_length` tokens, checked, its errors naming the flags.
    pub fn config(
        &self,
        gen_length: usize,
        temperature: f32,
        seed: u32,
    ) -> Result<DiffusionConfig, String> {
        let config = DiffusionConfig {
            cfg_scale: self.cfg_scale,
            random_remasking: self.remasking == Remasking::Random,
            threshold: self.threshold,
            cache: match self.cache {
                CacheArg::None => BlockCache::None,
                CacheArg::Prefix => BlockCache::Prefix,
                CacheArg::Dual => BlockCache::Dual,
            },
            ..DiffusionConfig::new(gen_length, self.block_length, self.steps, temperature, seed)
        };
        config.validate().map_err(|e| diffusion_error(&e))?;
        Ok(config)
    }
}

/// A list of token ids: `5,17,42`.
#[derive(Clone, Debug)]
pub struct TokenIds(pub Vec<u32>);

impl FromStr for TokenIds {
    type Err = String;

    fn from_str(s: &str) -> Result<TokenIds, String> {
        s.split(',')
            .map(|t| {
                t.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("'{t}' is not a token id"))
            })
            .collect::<Result<_, _>>()
            .map(TokenIds)
    }
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Prefill,
    Decode,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[arg(long, value_name = "PATH", help = MODEL_HELP)]
    pub model: PathBuf,
    /// Token ids, comma-separated: 5,17,42
    #[arg(long, value_name = "IDS")]
    pub tokens: TokenIds,
    /// prefill: one forward over the sequence; decode: one token at a time through the
    /// cache or state
    #[arg(long, value_enum, default_value_t = Mode::Prefill)]
    pub mode: Mode,
    /// The .npy file to write (row t: the logits after tokens 0..=t)
    #[arg(long, value_name = "FILE.npy")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub attention: AttentionArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

#[derive(Args, Debug)]
#[command(
    after_help = "On a diffusion model (LLaDA) the reply is sampled by masked diffusion \
                        and printed block by block."
)]
pub struct GenerateArgs {
    #[arg(long, value_name = "PATH", help = MODEL_HELP)]
    pub model: PathBuf,
    /// The prompt, as it is (no chat template)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub prompt: String,
    /// Most tokens to generate
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_tokens: usize,
    /// Context (KV cache) length in tokens
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub ctx: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub attention: AttentionArgs,
    /// A diffusion model's generation length (default: --max-tokens)
    #[arg(
        long,
        value_name = "G",
        help_heading = "Diffusion sampler (LLaDA models)"
    )]
    pub gen_length: Option<usize>,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    #[command(flatten)]
    pub speculate: SpeculateArgs,
}

#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("model_runs")
        .args(["prompt_tokens", "decode_tokens", "report_every",
               "attention_sinks", "kv_window", "block_sparse", "speculate", "draft_model"])
        .multiple(true)
        .requires("model")
))]
#[command(
    after_help = "With --model: cold start (process start to the first token) and the \
    time spent creating pipelines; prefill and decode tokens/s; per decoded token the \
    dispatches, submits and host round trips, the weight bytes read per second and, where the \
    adapter has timestamp queries, the GPU time by kernel class (one decode token replayed with \
    timestamps around each dispatch, fastest of 3). Every command keeps the pipelines it \
    compiles in the cache directory ($KESTREL_CACHE, else $XDG_CACHE_HOME/kestrel) where the \
    backend has a pipeline cache (Vulkan). With --speculate or --draft-model instead: greedy \
    decode tokens/s with and without speculative decoding on a prompt whose answer repeats \
    it (--decode-tokens reply tokens, default 128; alternated runs), the acceptance rate and \
    whether the text is identical."
)]
pub struct BenchArgs {
    /// The model to time (optional with --attention and --kernels). A Hugging Face-layout
    /// directory or a .gguf file, a catalogue name or a Hugging Face repository
    #[arg(long, value_name = "PATH", required_unless_present_any = ["attention", "kernels"])]
    pub model: Option<PathBuf>,
    /// Print one JSON report instead of text
    #[arg(long)]
    pub json: bool,
    /// Prompt tokens to prefill (default: 64, at most half the model's context)
    #[arg(long, value_name = "N")]
    pub prompt_tokens: Option<usize>,
    /// Tokens to decode after the prompt (default: 32, as many as fit the context)
    #[arg(long, value_name = "N")]
    pub decode_tokens: Option<usize>,
    /// Report decode time per token over windows of N tokens (default: 1000 from 2000
    /// decoded tokens on, else none)
    #[arg(long, value_name = "N")]
    pub report_every: Option<usize>,
    /// Time the attention kernels alone, each checked against its CPU reference (prefill:
    /// full, sliding window, block-sparse; decode with and without split-K; KV bytes per
    /// cache kind)
    #[arg(long)]
    pub attention: bool,
    /// With --attention: the longest sequence timed
    #[arg(long, value_name = "N", default_value_t = 4096, requires = "attention")]
    pub max_len: usize,
    /// Time every kernel case of the runtime's table, each checked against its CPU
    /// reference (GFLOP/s or GB/s where a case declares its work)
    #[arg(long, conflicts_with_all = ["model", "attention"])]
    pub kernels: bool,
    /// Tune again, as the first command on a GPU does (KESTREL_TUNE=off turns that off,
    /// KESTREL_TUNE=on extends it to CPU drivers): time the decode matvec's layouts and the prefill matmuls on this model's
    /// weights, keep the fastest for the adapter and the model's weight types in the cache
    /// directory (later commands start with them), then bench with them (cold start then
    /// counts from after the tuning)
    #[arg(long, requires = "model")]
    pub tune: bool,
    /// Decode 1, 2, 4, ... N sequences together in batched steps (the server's continuous
    /// batching) and report tokens/s for each, instead of the model figures
    #[arg(long, value_name = "N", requires = "model", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=kestrel_runtime::batch::MAX_SEQS as u64))]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub attention_options: AttentionArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    #[command(flatten)]
    pub speculate: SpeculateArgs,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Type a message; /reset starts over, /exit quits, Ctrl-C stops a reply. \
                        On a diffusion model (LLaDA) each reply is sampled by masked diffusion \
                        and printed block by block."
)]
pub struct ChatArgs {
    /// A Hugging Face-layout directory or a .gguf file, a catalogue name or a Hugging Face
    /// repository (default: smollm2-135m-instruct, downloaded once into the cache)
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// A system prompt for the conversation
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub system: Option<String>,
    /// Most tokens per reply (and at most half the context)
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_tokens: usize,
    /// Context (KV cache) length in tokens (default: 4096; unbounded with attention sinks)
    #[arg(long, value_name = "N")]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub attention: AttentionArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    #[command(flatten)]
    pub speculate: SpeculateArgs,
}

#[derive(Args, Debug)]
pub struct DiffuseArgs {
    #[arg(long, value_name = "PATH", help = MODEL_HELP)]
    pub model: PathBuf,
    /// The prompt's token ids, comma-separated: 5,17,42
    #[arg(long, value_name = "IDS")]
    pub tokens: TokenIds,
    /// The JSON file to write: {"tokens": [...]}, the prompt included
    #[arg(long, value_name = "FILE.json")]
    pub out: PathBuf,
    /// Tokens to generate after the prompt
    #[arg(long, value_name = "G")]
    pub gen_length: usize,
    /// Gumbel noise on the logits (0 = none)
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    pub temperature: f32,
    /// Random seed (random remasking, Gumbel noise)
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u32,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
    #[command(flatten)]
    pub attention: AttentionArgs,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Answers GET /v1/models, POST /v1/chat/completions and /v1/completions \
                        (whole or streamed as server-sent events) and GET /health; prints \"listening on http://HOST:PORT\" on stderr."
)]
pub struct ServeArgs {
    #[arg(long, value_name = "PATH", help = MODEL_HELP)]
    pub model: PathBuf,
    /// The address to listen on
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// The port to listen on (0: a free one)
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Context (KV cache) length in tokens (at most the model's)
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub ctx: usize,
    /// Requests decoded together in batched steps (continuous batching over a paged KV
    /// cache); 1 runs one at a time. Models that cannot be batched, and speculative
    /// decoding, run one at a time
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=kestrel_runtime::batch::MAX_SEQS as u64))]
    pub max_batch: usize,
    /// Positions of the batched KV pool, shared by all requests (a request reserves its
    /// prompt plus max_tokens, at most --ctx, when it starts). Default: --max-batch times
    /// --ctx
    #[arg(long, value_name = "TOKENS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub kv_pool: Option<usize>,
    /// Largest request body accepted (larger ones get a 413)
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Connections open at once; more are answered 503 at once
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub max_connections: usize,
    /// Completion requests that may wait behind the running one; more are answered 429 at
    /// once
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000_000))]
    pub max_queue: usize,
    /// Seconds a client may take to send its whole request (slower ones get a 408); an idle
    /// kept-alive connection is closed after as long, and so is a reply the client stops
    /// reading (its job cancelled)
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = positive_seconds)]
    pub request_timeout: f64,
    /// The longest a completion may generate, from its start; then it ends with what it has
    /// and finish_reason "length". No limit by default
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    pub max_reply_seconds: Option<f64>,
    /// Let pages from ORIGIN (e.g. http://localhost:3000, or * for any) call the server from
    /// a browser (CORS; repeatable). Off by default
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// Require `Authorization: Bearer KEY` on every route but /health (401 otherwise)
    #[arg(
        long,
        value_name = "KEY",
        env = "KESTREL_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub attention: AttentionArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    #[command(flatten)]
    pub speculate: SpeculateArgs,
}

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// A name from `kestrel models`, or a Hugging Face repository (org/name,
    /// org/name:FILE.gguf)
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct AppArgs {
    /// A Hugging Face-layout directory or a .gguf file, a catalogue name or a Hugging Face
    /// repository (without it the window asks)
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// The system prompt the window starts with
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub system: Option<String>,
    /// Context (KV cache) length in tokens (at most the model's)
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub ctx: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub attention: AttentionArgs,
}

/// The flag for a library's field name: clap names each option after its field, so
/// `top_p` is `--top-p`.
pub fn flag(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// The flag for an attention option (the model crate's messages take `&'static str`).
pub fn attention_flag(field: AttentionField) -> &'static str {
    match field {
        AttentionField::AttentionSinks => "--attention-sinks",
        AttentionField::KvWindow => "--kv-window",
        AttentionField::BlockSparse => "--block-sparse",
    }
}

/// A diffusion sampler setting error in the command line's words.
pub fn diffusion_error(e: &ConfigError) -> String {
    format!(
        "input out of range: {}",
        e.message(|s: Setting| flag(s.field()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Each command takes exactly the options the hand-written parser took (its tables of
    /// known options before clap), so no script's command line changes; those with --model
    /// take --offline too (for catalogue and Hub models).
    #[test]
    fn the_same_option_names_as_before() {
        let attention = ["attention-sinks", "kv-window", "block-sparse"];
        let diffusion = [
            "steps",
            "block-length",
            "threshold",
            "cache",
            "cfg-scale",
            "remasking",
        ];
        let sampling = ["temperature", "top-k", "top-p", "seed", "stop"];
        // Added since: the decode matvec's precision.
        let precision = ["logits", "generate", "bench", "chat", "serve"];
        let before: &[(&str, Vec<&str>)] = &[
            ("info", vec!["backend"]),
            ("logits", vec!["model", "tokens", "mode", "backend", "out"]),
            (
                "generate",
                vec![
                    "model",
                    "prompt",
                    "max-tokens",
                    "ctx",
                    "backend",
                    "gen-length",
                ],
            ),
            (
                "bench",
                vec![
                    "model",
                    "json",
                    "backend",
                    "prompt-tokens",
                    "decode-tokens",
                    "report-every",
                    "attention",
                    "max-len",
                    "kernels",
                    "tune",
                ],
            ),
            (
                "chat",
                vec!["model", "backend", "system", "max-tokens", "ctx"],
            ),
            (
                "diffuse",
                vec![
                    "model",
                    "tokens",
                    "out",
                    "backend",
                    "gen-length",
                    "temperature",
                    "seed",
                ],
            ),
            (
                "serve",
                vec![
                    "model",
                    "host",
                    "port",
                    "ctx",
                    "backend",
                    "max-body",
                    "max-connections",
                    "max-queue",
                    "request-timeout",
                    "max-reply-seconds",
                    "cors-origin",
                    "api-key",
                ],
            ),
            ("app", vec!["model", "backend", "ctx", "system"]),
        ];
        let cli = Cli::command();
        for (command, own) in before {
            let mut want: Vec<&str> = own.iter().chain(attention.iter()).copied().collect();
            if matches!(*command, "generate" | "chat") {
                want.extend(sampling);
            }
            if matches!(*command, "generate" | "chat" | "diffuse") {
                want.extend(diffusion);
            }
            if precision.contains(command) {
                want.push("matvec-precision");
            }
            if matches!(*command, "generate" | "chat" | "serve" | "bench") {
                want.extend(["speculate", "draft-model", "draft-tokens"]);
            }
            // Added since: continuous batching.
            match *command {
                "serve" => want.extend(["max-batch", "kv-pool"]),
                "bench" => want.push("batch"),
                _ => {}
            }
            if *command == "info" {
                want.retain(|o| !attention.contains(o));
            } else {
                want.push("offline");
            }
            want.sort_unstable();
            let sub = cli.find_subcommand(command).expect("a command");
            let mut have: Vec<&str> = sub
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "help")
                .collect();
            have.sort_unstable();
            assert_eq!(have, want, "{command}");
        }
    }

    /// Every field a library error can name is an option of the commands that pass it on.
    #[test]
    fn library_fields_name_real_flags() {
        let cli = Cli::command();
        let has = |command: &str, flag: &str| {
            let sub = cli.find_subcommand(command).expect("a command");
            sub.get_arguments()
                .any(|a| a.get_long().is_some_and(|l| format!("--{l}") == flag))
        };
        for f in [
            AttentionField::AttentionSinks,
            AttentionField::KvWindow,
            AttentionField::BlockSparse,
        ] {
            assert_eq!(attention_flag(f), flag(f.name()));
            for c in [
                "logits", "generate", "bench", "chat", "diffuse", "serve", "app",
            ] {
                assert!(has(c, attention_flag(f)), "{c} {}", attention_flag(f));
            }
        }
        for s in [
            Setting::GenLength,
            Setting::BlockLength,
            Setting::Steps,
            Setting::Threshold,
            Setting::CfgScale,
            Setting::Temperature,
        ] {
            for c in ["generate", "diffuse"] {
                assert!(has(c, &flag(s.field())), "{c} {}", s.field());
            }
        }
        for field in ["temperature", "top_k", "top_p", "max_tokens", "stop"] {
            for c in ["generate", "chat"] {
                assert!(has(c, &flag(field)), "{c} {field}");
            }
        }
    }

    #[test]
    fn token_lists_and_fixed_values_keep_their_spellings() {
        let ids: TokenIds = "5, 17,42".parse().expect("ids");
        assert_eq!(ids.0, [5, 17, 42]);
        let e = "1,a".parse::<TokenIds>().expect_err("not an id");
        assert_eq!(e, "'a' is not a token id");
        let cli = Cli::try_parse_from([
            "kestrel",
            "diffuse",
            "--model",
            "m",
            "--tokens",
            "1,2",
            "--out",
            "o.json",
            "--gen-length",
            "8",
            "--remasking",
            "low_confidence",
            "--cache",
            "dual",
            "--backend",
            "VK",
        ])
        .expect("parses");
        let Command::Diffuse(d) = cli.command else {
            panic!("diffuse")
        };
        assert_eq!(d.diffusion.remasking, Remasking::LowConfidence);
        assert_eq!(d.diffusion.cache, CacheArg::Dual);
        assert_eq!(d.device.backend, BackendChoice::Vulkan);
    }
}

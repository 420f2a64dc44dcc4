//! The engine the worker drives: one model, several conversations, each with its own chat
//! session (its KV cache kept between requests, so a conversation that grows by a turn
//! prefills only the new tokens, whichever conversations ran in between), and the models
//! crate's generator advanced one step (one token) per call. The worker calls
//! [`Engine::chat_next`] in a loop and stops calling it to abort, so nothing here blocks and
//! no call outlives a reply. One reply generates at a time.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Float32Array, Promise};
use kestrel_models::chat_template::{ChatTemplate, Message};
use kestrel_models::formats::range_read::FileBytes;
use kestrel_models::generate::{mask_token, GenerateError, Generation, Prompt, Request, Step};
use kestrel_models::speculate::{Speculator, DEFAULT_DRAFT_TOKENS};
use kestrel_models::Model;
use kestrel_runtime::counters::Work;
use kestrel_runtime::session::{Sampling, Session};
use kestrel_runtime::{BackendChoice, Gpu};
use serde::Deserialize;
use serde_json::json;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::diffusion::DiffusionFields;
use crate::error::{Result, WebError};
use crate::js_file::JsFile;
use crate::load;
use crate::options::EngineOptions;

/// Open the WebGPU device; the runtime refuses an adapter whose limits are too small for the
/// kernels, with the reason.
pub async fn open_gpu() -> Result<Arc<Gpu>> {
    Gpu::new(BackendChoice::WebGpu).await.map_err(|e| match e {
        kestrel_runtime::Error::AdapterTooSmall { .. } => WebError::Limits(e.to_string()),
        e => WebError::NoWebGpu(e.to_string()),
    })
}

/// The adapter, its features and limits (what `engine.info()` returns, less the model).
pub fn gpu_info(gpu: &Gpu) -> serde_json::Value {
    let c = &gpu.caps;
    // Browsers may hide the adapter's name (SwiftShader's is empty).
    let name = match gpu.info.name.trim() {
        "" => "WebGPU adapter (name not given by the browser)",
        n => n,
    };
    json!({
        "adapter": name,
        "backend": gpu.backend_name(),
        "driver": gpu.info.driver,
        // Kernels and layouts chosen for a CPU driver: the browser calls its adapter a
        // fallback one (SwiftShader), which wgpu reports as a CPU adapter.
        "runsOnCpu": gpu.info.device_type == wgpu::DeviceType::Cpu,
        "features": {
            "shader-f16": c.shader_f16,
            "subgroups": c.subgroups,
            "timestamp-query": c.timestamps,
        },
        "limits": {
            "maxStorageBufferBindingSize": c.max_storage_binding,
            "maxBufferSize": c.max_buffer_size,
            "maxStorageBuffersPerShaderStage": c.max_storage_buffers_per_stage,
            "maxComputeInvocationsPerWorkgroup": c.max_invocations_per_workgroup,
            "maxComputeWorkgroupStorageSize": c.max_workgroup_storage,
            "maxComputeWorkgroupsPerDimension": c.max_workgroups_per_dim,
        },
        // The kernels take the f32 path (f16 weights unpacked in the shader) without it.
        "f16Kernels": c.shader_f16,
    })
}

/// The size of the engine's wasm memory: it never shrinks, so this is its peak so far
/// (loading included).
fn wasm_memory_bytes() -> f64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
}

/// One message of a request (OpenAI's shape; only the text content is used).
#[derive(Deserialize)]
struct RequestMessage {
    role: String,
    content: String,
}

/// `stop`: one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// The fields of `chat.completions.create` that the engine uses.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    messages: Vec<RequestMessage>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    seed: Option<u32>,
    #[serde(default)]
    stop: Option<StopField>,
    /// Whether the caller streams the reply (kestrel.js sends its `stream`); a whole reply
    /// decodes in the largest batches.
    #[serde(default = "streamed_by_default")]
    stream: bool,
    /// The conversation the reply belongs to (kestrel.js's `conversation`); each has its own
    /// KV cache. Absent: [`DEFAULT_CONVERSATION`].
    #[serde(default)]
    conversation: Option<String>,
    /// A diffusion model's sampler settings (see [`crate::diffusion`]).
    #[serde(default)]
    diffusion: Option<DiffusionFields>,
}

fn streamed_by_default() -> bool {
    true
}

impl ChatRequest {
    /// The generator's request (checked by it); defaults follow OpenAI: temperature 1,
    /// top_p 1, no top_k, a reply up to the end of the context.
    fn request(&self) -> Request {
        Request {
            sampling: Sampling {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
                top_p: self.top_p.unwrap_or(1.0),
                seed: self
                    .seed
                    .unwrap_or_else(|| (js_sys::Math::random() * u32::MAX as f64) as u32),
            },
            max_tokens: self.max_tokens.unwrap_or(usize::MAX),
            stop: match &self.stop {
                None => Vec::new(),
                Some(StopField::One(s)) => vec![s.clone()],
                Some(StopField::Many(list)) => list.clone(),
            },
            ..Request::default()
        }
    }
}

/// A generator error as the page sees it: the request's own faults are bad requests.
fn web_error(e: GenerateError) -> WebError {
    match e {
        GenerateError::Model(e) => WebError::Model(e),
        GenerateError::Runtime(e) => WebError::Gpu(e),
        e => WebError::BadRequest(e.to_string()),
    }
}

/// The conversation of a request that names none (and of every caller from before there
/// were several).
const DEFAULT_CONVERSATION: &str = "default";
/// Conversations whose caches are held at once unless `setMaxConversations` says otherwise.
const DEFAULT_MAX_CONVERSATIONS: usize = 8;
/// The most `setMaxConversations` takes (each conversation holds a whole KV cache).
const MAX_CONVERSATIONS: usize = 64;

/// The conversations' sessions, least recently used first. Beyond `max`, starting a reply
/// in a new conversation drops the least recently used one's cache (that conversation, if
/// it goes on, prefills its whole history again); an explicit `dropConversation` frees one.
/// A handful at most, so a list searched in order.
struct Conversations {
    held: Vec<(String, Session)>,
    max: usize,
    /// Each new session's length in tokens.
    ctx: usize,
}

impl Conversations {
    /// The session of conversation `id`, made (and the least recently used ones dropped
    /// beyond `max`) when it is new; it becomes the most recently used.
    fn session(&mut self, id: &str, model: &Model, gpu: &Arc<Gpu>) -> Result<&mut Session> {
        let entry = match self.held.iter().position(|(held, _)| held == id) {
            Some(i) => self.held.remove(i),
            None => {
                // Free the old caches before making the new one.
                let over = (self.held.len() + 1).saturating_sub(self.max);
                self.held.drain(..over);
                (id.to_string(), model.session(gpu, self.ctx)?)
            }
        };
        self.held.push(entry);
        Ok(&mut self.held.last_mut().expect("just pushed").1)
    }

    /// The session of conversation `id` if it is held (its place in the order unchanged).
    fn get(&mut self, id: &str) -> Option<&mut Session> {
        self.held
            .iter_mut()
            .find(|(held, _)| held == id)
            .map(|(_, s)| s)
    }

    /// Drop conversation `id`'s session; whether it was held.
    fn drop_one(&mut self, id: &str) -> bool {
        let before = self.held.len();
        self.held.retain(|(held, _)| held != id);
        self.held.len() < before
    }

    /// Take at most `max` caches from now on, dropping the least recently used ones beyond.
    fn set_max(&mut self, max: usize) {
        self.max = max;
        let over = self.held.len().saturating_sub(max);
        self.held.drain(..over);
    }

    /// What `info()` reports (see [`HeldConversations`]).
    fn summary(&self) -> HeldConversations {
        HeldConversations {
            ids: self.held.iter().map(|(id, _)| id.clone()).collect(),
            max: self.max,
        }
    }
}

/// The conversations held, least recently used first, and the bound: a copy kept outside
/// `Inner` so that `info()` reads it while a reply step holds the engine.
#[derive(Default)]
struct HeldConversations {
    ids: Vec<String>,
    max: usize,
}

/// A reply in progress and the conversation it belongs to.
struct Reply {
    conversation: String,
    generation: Generation,
}

struct Inner {
    model: Model,
    gpu: Arc<Gpu>,
    template: ChatTemplate,
    conversations: Conversations,
    /// The reply in progress, kept between `chatNext` calls.
    reply: Option<Reply>,
    /// Speculative decoding (`createEngine({speculate: 'ngram'})`), lent to each reply.
    speculator: Option<Speculator>,
}

impl Inner {
    /// Drop the reply in progress, taking its speculator back.
    fn end_reply(&mut self) {
        if let Some(s) = self
            .reply
            .take()
            .and_then(|mut r| r.generation.take_speculator())
        {
            self.speculator = Some(s);
        }
    }
}

/// A conversation id from JavaScript: any non-empty string.
fn conversation_id(id: Option<&str>) -> Result<&str> {
    match id {
        None => Ok(DEFAULT_CONVERSATION),
        Some("") => Err(WebError::BadRequest(
            "conversation must be a non-empty string".into(),
        )),
        Some(id) => Ok(id),
    }
}

/// GPU work summed over a reply's decode steps (every step after the prompt's).
#[derive(Default)]
struct ReplyWork {
    work: Work,
    decode_tokens: u64,
    /// Drafted and accepted tokens of the reply, when speculating.
    drafted: u64,
    accepted: u64,
}

impl ReplyWork {
    fn add(&mut self, work: Work, tokens: usize) {
        self.work.submits += work.submits;
        self.work.dispatches += work.dispatches;
        self.work.readbacks += work.readbacks;
        self.decode_tokens += tokens as u64;
    }

    /// `n` per decoded token; null before a reply has decoded a token.
    fn per_token(&self, n: u64) -> serde_json::Value {
        match self.decode_tokens {
            0 => serde_json::Value::Null,
            t => json!(n as f64 / t as f64),
        }
    }
}

/// A loaded model on the WebGPU device.
#[wasm_bindgen]
pub struct Engine {
    gpu: Arc<Gpu>,
    inner: Rc<RefCell<Option<Inner>>>,
    info: serde_json::Value,
    /// The GPU work of the decode steps of the last (or current) reply: outside `inner`, so
    /// `info()` reads it while a reply step holds the engine.
    reply: Rc<RefCell<ReplyWork>>,
    /// The conversations held (a copy, updated whenever they change), for `info()`.
    held: Rc<RefCell<HeldConversations>>,
    /// The pipelines made ahead of use at load, for `info()`.
    ahead: Ahead,
}

/// Pipelines created ahead of use from the keys an earlier engine on this model and adapter
/// gave (`pipelineKeys()`), after the weights loaded (created earlier, their compiles held up
/// the weight uploads behind them in the browser's GPU process): `createEngine` resolves
/// while the browser compiles them, and the first reply waits only for what is left. Counts
/// the keys given and keeps the device's refusal of one, if any (then the list came from
/// another version of Kestrel; the worker keeps the list this engine writes instead).
#[derive(Default)]
struct Ahead {
    keys: usize,
    refused: Rc<RefCell<Option<String>>>,
}

impl Ahead {
    /// Create the pipelines of `keys` (a JSON array of [`Gpu::pipeline_keys`]; none, or text
    /// that is not such an array, creates none) on `gpu`.
    fn start(gpu: &Gpu, keys: Option<String>) -> Ahead {
        let keys: Vec<String> = keys
            .and_then(|k| serde_json::from_str(&k).ok())
            .unwrap_or_default();
        let ahead = Ahead {
            keys: keys.len(),
            ..Ahead::default()
        };
        if !keys.is_empty() {
            let refused = gpu.prebuild_here(&keys);
            let slot = ahead.refused.clone();
            wasm_bindgen_futures::spawn_local(async move {
                *slot.borrow_mut() = refused.await.map(|e| e.to_string());
            });
        }
        ahead
    }
}

/// Check `createEngine`'s options (JSON: `ctx`, `matvecPrecision`, `attentionSinks`,
/// `kvWindow`, `blockSparse`) before anything is downloaded.
#[wasm_bindgen(js_name = checkOptions)]
pub fn check_options(options: &str) -> std::result::Result<(), JsValue> {
    EngineOptions::parse(options)?;
    Ok(())
}

/// Load a GGUF file read a range at a time through `file` (`{size, read(offset, length)}`,
/// see [`JsFile`]): the header, then each tensor as it uploads, so wasm memory holds at most
/// a tensor of it, never the file. `pipelines`: the JSON array of `pipelineKeys()` an earlier
/// engine on this model and adapter gave, created once the weights loaded (optional).
#[wasm_bindgen(js_name = loadGgufFile)]
pub async fn load_gguf_file(
    name: String,
    file: JsValue,
    options: String,
    pipelines: Option<String>,
) -> std::result::Result<Engine, JsValue> {
    let options = EngineOptions::parse(&options)?;
    let file = JsFile::new(file)?;
    let gpu = open_gpu().await?;
    let model = load::gguf_ranged(&gpu, &name, Box::new(file))?;
    let ahead = Ahead::start(&gpu, pipelines);
    Ok(Engine::new(gpu, model, &options, ahead)?)
}

/// Load a Hugging Face folder from its files: `names[i]` is the file name of `files[i]`, each
/// its bytes (a `Uint8Array`) or a reader as [`load_gguf_file`] takes, through which a
/// safetensors shard is read a tensor at a time; `pipelines` as [`load_gguf_file`] takes.
#[wasm_bindgen(js_name = loadHfFiles)]
pub async fn load_hf_files(
    folder: String,
    names: Vec<String>,
    files: Vec<JsValue>,
    options: String,
    pipelines: Option<String>,
) -> std::result::Result<Engine, JsValue> {
    let options = EngineOptions::parse(&options)?;
    if names.len() != files.len() {
        return Err(WebError::BadRequest("one name per file".into()).into());
    }
    let files = names
        .into_iter()
        .zip(files)
        .map(|(name, f)| {
            let bytes = match f.dyn_into::<js_sys::Uint8Array>() {
                Ok(a) => FileBytes::from(a.to_vec()),
                Err(f) => FileBytes::Ranged(Box::new(JsFile::new(f)?)),
            };
            Ok((name, bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let gpu = open_gpu().await?;
    let model = load::hf_files(&gpu, &folder, files)?;
    let ahead = Ahead::start(&gpu, pipelines);
    Ok(Engine::new(gpu, model, &options, ahead)?)
}

impl Engine {
    fn new(
        gpu: Arc<Gpu>,
        mut model: Model,
        options: &EngineOptions,
        ahead: Ahead,
    ) -> Result<Engine> {
        // A bidirectional model is run by diffusion, which needs its mask token.
        if !model.config().causal {
            mask_token(&model).map_err(web_error)?;
        }
        options.apply(&mut model)?;
        let template = model.chat_template()?;
        let max = model.architecture().max_context();
        let ctx = match options.ctx {
            0 => max.min(2048),
            n => (n as usize).min(max),
        };
        // Before any plan is made (plans are made on first use, and kept).
        let precision = options.precision;
        gpu.set_matvec_precision(precision)
            .map_err(|e| WebError::BadRequest(format!("matvecPrecision: {e}")))?;
        // The default conversation's session, made now as before there were several (its
        // figures are the model's below); other conversations' are made on first use.
        let session = model.session(&gpu, ctx)?;
        let c = model.config();
        let mut info = gpu_info(&gpu);
        info["matvecPrecision"] = json!(precision.name());
        info["model"] = json!({
            "name": model.name,
            "architecture": c.architecture,
            "vocab": c.vocab,
            "context": session.capacity(),
            "weightBytes": model.weight_bytes(),
            "weightBytesReadPerDecodeToken": model.weight_bytes_per_token(&session)?,
            "stateBytes": session.state_bytes(),
            "hasTokenizer": model.tokenizer.is_some(),
            "fallbackTemplate": template.is_fallback,
            "diffusion": !c.causal,
        });
        let conversations = Conversations {
            held: vec![(DEFAULT_CONVERSATION.to_string(), session)],
            max: DEFAULT_MAX_CONVERSATIONS,
            ctx,
        };
        let held = Rc::new(RefCell::new(conversations.summary()));
        Ok(Engine {
            gpu: gpu.clone(),
            info,
            inner: Rc::new(RefCell::new(Some(Inner {
                model,
                gpu,
                template,
                conversations,
                reply: None,
                speculator: None,
            }))),
            reply: Rc::default(),
            held,
            ahead,
        })
    }
}

/// The engine's state, taken out of its cell for one call and put back when the lease
/// drops (also on errors), so no `RefCell` borrow is held across an `await`; a second call
/// while one runs finds the cell empty and gets [`WebError::Busy`].
struct Lease {
    cell: Rc<RefCell<Option<Inner>>>,
    inner: Option<Inner>,
}

impl std::ops::Deref for Lease {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        self.inner
            .as_ref()
            .expect("a lease holds the state until it drops")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Inner {
        self.inner
            .as_mut()
            .expect("a lease holds the state until it drops")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.cell.borrow_mut() = self.inner.take();
    }
}

fn take(cell: &Rc<RefCell<Option<Inner>>>) -> Result<Lease> {
    let inner = cell.borrow_mut().take().ok_or(WebError::Busy)?;
    Ok(Lease {
        cell: cell.clone(),
        inner: Some(inner),
    })
}

fn promise<F, T>(f: F) -> Promise
where
    F: std::future::Future<Output = Result<T>> + 'static,
    T: Into<JsValue>,
{
    future_to_promise(async move { f.await.map(Into::into).map_err(Into::into) })
}

#[wasm_bindgen]
impl Engine {
    /// Adapter, features, limits, the model and the counters (a JSON string): GPU work per
    /// decoded token of the last reply, pipelines created, GPU buffer and weight bytes; the
    /// conversations held (`{"held", "max", "ids"}`, ids least recently used first).
    pub fn info(&self) -> String {
        let mut info = self.info.clone();
        let pipelines = self.gpu.pipeline_work();
        let r = self.reply.borrow();
        info["counters"] = json!({
            "decodeTokens": r.decode_tokens,
            "dispatchesPerDecodeToken": r.per_token(r.work.dispatches),
            "submitsPerDecodeToken": r.per_token(r.work.submits),
            "hostRoundTripsPerDecodeToken": r.per_token(r.work.readbacks),
            "pipelinesCreated": pipelines.pipelines,
            "pipelineCreationS": pipelines.secs,
            "gpuBytes": self.gpu.allocated_bytes(),
            "gpuPeakBytes": self.gpu.peak_allocated_bytes(),
            "weightBytes": self.info["model"]["weightBytes"],
            "weightBytesReadPerDecodeToken": self.info["model"]["weightBytesReadPerDecodeToken"],
            "draftTokens": r.drafted,
            "acceptedDraftTokens": r.accepted,
        });
        info["wasmMemoryBytes"] = json!(wasm_memory_bytes());
        info["pipelinesAhead"] = json!({
            "keys": self.ahead.keys,
            "refused": *self.ahead.refused.borrow(),
        });
        let held = self.held.borrow();
        info["conversations"] = json!({"held": held.ids.len(), "max": held.max, "ids": held.ids});
        info.to_string()
    }

    /// The keys of the pipelines this engine's plans used so far, first use first (a JSON
    /// array): what a later engine on this model and adapter takes to create them ahead of
    /// use (`loadGgufFile`'s `pipelines`).
    #[wasm_bindgen(js_name = pipelineKeys)]
    pub fn pipeline_keys(&self) -> String {
        json!(self.gpu.pipeline_keys()).to_string()
    }

    /// Compile the pipelines of a prefill and of a decode step by running both once on a
    /// scratch session (so the first reply does not pay for it); resolves to nothing.
    #[wasm_bindgen(js_name = warmUp)]
    pub fn warm_up(&self) -> Promise {
        let inner = self.inner.clone();
        let gpu = self.gpu.clone();
        promise(async move {
            let this = take(&inner)?;
            let mut s = this.model.session(&gpu, 4)?;
            let first = this.model.config().bos.first().copied().unwrap_or(0);
            let mut two = Request {
                max_tokens: 2,
                ignore_eos: true,
                ..Request::default()
            };
            if !this.model.config().causal {
                let fields = DiffusionFields::default();
                two.diffusion = Some(fields.config(Some(2), 2, 0.0, 0)?);
            }
            let mut g = Generation::new(&this.model, &mut s, vec![first, first], &two)
                .map_err(web_error)?;
            for _ in 0..2 {
                g.step(&this.model, &mut s).await.map_err(web_error)?;
            }
            gpu.check()?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// A decode step's GPU time by kernel class, from timestamp queries (the same figures
    /// as `kestrel bench`'s "decode by kernel class"): a scratch session prefills
    /// `prompt_tokens` tokens, decodes one, and its decode plan is replayed with a timestamp
    /// around every dispatch. Resolves to a JSON string, `{"classes": [{"name",
    /// "dispatches", "ms"}], "spanMs", "totalMs"}`, or "null" where the adapter has no
    /// timestamp queries. The conversations' own sessions are untouched.
    #[wasm_bindgen(js_name = decodeProfile)]
    pub fn decode_profile(&self, prompt_tokens: u32) -> Promise {
        let inner = self.inner.clone();
        let gpu = self.gpu.clone();
        promise(async move {
            let this = take(&inner)?;
            let limit = this.model.config().max_positions.saturating_sub(2).max(1);
            let n = (prompt_tokens as usize).clamp(1, limit);
            let mut s = this.model.session(&gpu, n + 2)?;
            let first = this.model.config().bos.first().copied().unwrap_or(0);
            let sampling = Sampling::default();
            let next = s.next_token(&vec![first; n], &sampling).await?;
            s.next_token(&[next], &sampling).await?;
            let times = kestrel_runtime::profile::decode_times(&mut s).await?;
            gpu.check()?;
            let json = times.map(|t| {
                let classes: Vec<_> = t
                    .classes
                    .iter()
                    .map(|c| json!({"name": c.name, "dispatches": c.dispatches, "ms": c.ms}))
                    .collect();
                json!({"classes": classes, "spanMs": t.span_ms, "totalMs": t.total_ms()})
            });
            Ok(JsValue::from_str(&json.unwrap_or_default().to_string()))
        })
    }

    /// Decode every later reply speculatively: `kind` "ngram" (prompt lookup) with
    /// `draft_tokens` drafts a pass (0: the default), or "off". A model whose state cannot be
    /// cut back after rejected drafts (recurrent) is refused, naming it.
    #[wasm_bindgen(js_name = setSpeculation)]
    pub fn set_speculation(
        &mut self,
        kind: &str,
        draft_tokens: u32,
    ) -> std::result::Result<(), JsValue> {
        let mut lease = take(&self.inner)?;
        let this = &mut *lease;
        this.end_reply();
        let draft_tokens = match draft_tokens {
            0 => DEFAULT_DRAFT_TOKENS,
            k => k as usize,
        };
        let bad = |e: GenerateError| WebError::BadRequest(format!("speculate: {e}"));
        this.speculator = match kind {
            "off" => None,
            "ngram" => {
                let s = Speculator::ngram(draft_tokens).map_err(bad)?;
                // Every conversation's session has the same layout: check against one (the
                // default one, made if none is held).
                if this.conversations.held.is_empty() {
                    let c = &mut this.conversations;
                    c.session(DEFAULT_CONVERSATION, &this.model, &this.gpu)?;
                    *self.held.borrow_mut() = c.summary();
                }
                let (_, session) = &this.conversations.held[0];
                s.check_target(&this.model, session).map_err(bad)?;
                Some(s)
            }
            other => {
                return Err(WebError::BadRequest(format!(
                    "speculate must be 'ngram' or 'off', not {other:?}"
                ))
                .into())
            }
        };
        self.info["speculation"] = match &this.speculator {
            Some(s) => json!({"kind": kind, "draftTokens": s.draft_tokens()}),
            None => serde_json::Value::Null,
        };
        Ok(())
    }

    /// Logits after each of `tokens` in one prefill on a fresh sequence: T×V row-major.
    pub fn logits(&self, tokens: Vec<u32>) -> Promise {
        let inner = self.inner.clone();
        let gpu = self.gpu.clone();
        promise(async move {
            let this = take(&inner)?;
            if tokens.is_empty() {
                return Err(WebError::BadRequest("logits of no tokens".into()));
            }
            let mut s = this.model.session(&gpu, tokens.len())?;
            if s.capacity() < tokens.len() {
                return Err(WebError::BadRequest(format!(
                    "{} tokens exceed the model's context of {}",
                    tokens.len(),
                    s.capacity()
                )));
            }
            let out = s.logits(&tokens).await?;
            Ok(Float32Array::from(&out[..]))
        })
    }

    /// Start a reply to `request` (the JSON of `chat.completions.create`'s fields, with
    /// `conversation`, default "default"): in that conversation's session, made on its first
    /// use (dropping the least recently used conversation's beyond the bound). Returns
    /// `{"prompt_tokens": n, "reused_tokens": r, "conversation": id}`, `r` the prompt tokens
    /// that conversation's cache already held. Ends a reply in progress in the same
    /// conversation; one in another conversation is a [`WebError::Replying`] error (one
    /// reply generates at a time: end it first).
    #[wasm_bindgen(js_name = chatBegin)]
    pub fn chat_begin(&self, request: &str) -> std::result::Result<String, JsValue> {
        Ok(self.begin(request)?)
    }

    /// The next piece of the reply: resolves to `{"text": ..., "done": bool,
    /// "finish_reason": null | "stop" | "length", "completion_tokens": n}`.
    #[wasm_bindgen(js_name = chatNext)]
    pub fn chat_next(&self) -> Promise {
        let inner = self.inner.clone();
        let gpu = self.gpu.clone();
        let reply_work = self.reply.clone();
        promise(async move {
            let mut lease = take(&inner)?;
            let this = &mut *lease;
            let done = || {
                Ok(JsValue::from_str(&json!({"text": "", "done": true, "finish_reason": null, "completion_tokens": 0}).to_string()))
            };
            let Some(reply) = this.reply.as_mut() else {
                return done();
            };
            let g = &mut reply.generation;
            // The reply's conversation is held while it runs (dropping it ends the reply).
            let Some(session) = this.conversations.get(&reply.conversation) else {
                return done();
            };
            let (work_before, drawn_before) = (gpu.work(), g.sampled_tokens());
            let t = js_sys::Date::now();
            let result = g.step(&this.model, session).await;
            // The prompt's step draws the first token; every later step decodes.
            if drawn_before > 0 {
                let drawn = g.sampled_tokens() - drawn_before;
                reply_work
                    .borrow_mut()
                    .add(gpu.work().since(&work_before), drawn);
            }
            if let Some(s) = g.speculation_stats() {
                let mut r = reply_work.borrow_mut();
                (r.drafted, r.accepted) = (s.drafted as u64, s.accepted as u64);
            }
            let step = match result {
                Ok(step) => {
                    g.observe_step_time((js_sys::Date::now() - t) / 1000.0);
                    step
                }
                Err(e) => {
                    // A failed step may leave the cache half written: start the conversation's
                    // next reply afresh.
                    session.reset();
                    this.end_reply();
                    return Err(web_error(e));
                }
            };
            let produced = g.completion_tokens();
            let reply = match step {
                Step::Text(text) => {
                    json!({"text": text, "done": false, "finish_reason": null, "completion_tokens": produced})
                }
                Step::Done(finish) => {
                    this.end_reply();
                    json!({"text": "", "done": true, "finish_reason": finish.reason(), "completion_tokens": produced})
                }
            };
            Ok(JsValue::from_str(&reply.to_string()))
        })
    }

    /// End the reply in progress (the stop button, an aborted request).
    #[wasm_bindgen(js_name = chatEnd)]
    pub fn chat_end(&self) -> std::result::Result<(), JsValue> {
        take(&self.inner)?.end_reply();
        Ok(())
    }

    /// Forget conversation `id`'s history in its KV cache (the cache stays held), or every
    /// conversation's without `id`. Ends the reply in progress.
    pub fn reset(&self, id: Option<String>) -> std::result::Result<(), JsValue> {
        let mut this = take(&self.inner)?;
        this.end_reply();
        match id {
            Some(id) => {
                if let Some(s) = this.conversations.get(&id) {
                    s.reset();
                }
            }
            None => this
                .conversations
                .held
                .iter_mut()
                .for_each(|(_, s)| s.reset()),
        }
        Ok(())
    }

    /// Drop conversation `id` and free its KV cache (its next reply, if any, starts afresh);
    /// ends its reply if one is in progress. Returns whether it was held.
    #[wasm_bindgen(js_name = dropConversation)]
    pub fn drop_conversation(&self, id: &str) -> std::result::Result<bool, JsValue> {
        let mut this = take(&self.inner)?;
        if this.reply.as_ref().is_some_and(|r| r.conversation == id) {
            this.end_reply();
        }
        let dropped = this.conversations.drop_one(id);
        *self.held.borrow_mut() = this.conversations.summary();
        Ok(dropped)
    }

    /// Hold at most `max` conversations' caches (1 to 64; 8 unless set): beyond it, a reply
    /// in a new conversation drops the least recently used one's. Lowering it drops the
    /// least recently used ones now (ending the reply in progress).
    #[wasm_bindgen(js_name = setMaxConversations)]
    pub fn set_max_conversations(&self, max: u32) -> std::result::Result<(), JsValue> {
        let max = max as usize;
        if !(1..=MAX_CONVERSATIONS).contains(&max) {
            return Err(WebError::BadRequest(format!(
                "maxConversations must be 1 to {MAX_CONVERSATIONS}, not {max}"
            ))
            .into());
        }
        let mut this = take(&self.inner)?;
        this.end_reply();
        this.conversations.set_max(max);
        *self.held.borrow_mut() = this.conversations.summary();
        Ok(())
    }
}

impl Engine {
    fn begin(&self, request: &str) -> Result<String> {
        let req: ChatRequest =
            serde_json::from_str(request).map_err(|e| WebError::BadRequest(e.to_string()))?;
        let id = conversation_id(req.conversation.as_deref())?;
        let mut lease = take(&self.inner)?;
        let this = &mut *lease;
        match &this.reply {
            Some(r) if r.conversation != id => {
                return Err(WebError::Replying {
                    replying: r.conversation.clone(),
                    asked: id.to_string(),
                })
            }
            _ => this.end_reply(),
        }
        if req.messages.is_empty() {
            return Err(WebError::BadRequest("messages is empty".into()));
        }
        let messages: Vec<Message> = req
            .messages
            .iter()
            .map(|m| Message::new(&m.role, &m.content))
            .collect();
        let ids = Prompt::Chat(messages)
            .encode(&this.model, Some(&this.template))
            .map_err(web_error)?;
        let mut request = req.request();
        // The conversations held may change (a new one, the oldest dropped) even when making
        // the new session fails.
        let opened = this
            .conversations
            .session(id, &this.model, &this.gpu)
            .map(|_| ());
        *self.held.borrow_mut() = this.conversations.summary();
        opened?;
        let session = this
            .conversations
            .get(id)
            .expect("the conversation was just opened");
        if !this.model.config().causal {
            let room = session.capacity().saturating_sub(ids.len());
            let s = &request.sampling;
            let fields = req.diffusion.unwrap_or_default();
            request.diffusion = Some(fields.config(req.max_tokens, room, s.temperature, s.seed)?);
        } else if req.diffusion.is_some() {
            return Err(WebError::BadRequest(format!(
                "diffusion settings are for diffusion models; {} is autoregressive",
                this.model.name
            )));
        }
        let mut g = Generation::new(&this.model, session, ids, &request).map_err(web_error)?;
        if !req.stream {
            g.unstreamed();
        }
        if let Some(s) = this.speculator.take() {
            g.speculate(&this.model, session, s).map_err(web_error)?;
        }
        *self.reply.borrow_mut() = ReplyWork::default();
        let begun = json!({
            "prompt_tokens": g.prompt_tokens(),
            "reused_tokens": g.reused_tokens(),
            "conversation": id,
        });
        this.reply = Some(Reply {
            conversation: id.to_string(),
            generation: g,
        });
        Ok(begun.to_string())
    }
}

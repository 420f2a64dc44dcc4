//! One model on one worker thread, answering chat and text-completion jobs in the order they
//! arrive (a fair FIFO queue): several at once in batched steps where the model allows it
//! (crate::scheduler), else one at a time. The server and the desktop window both drive it;
//! neither blocks on the GPU. Replies stream back as events over a channel, and a job stops
//! early when its cancel flag is set or its receiver goes away (a closed window, a client
//! that disconnected).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use kestrel_models::chat_template::ChatTemplate;
use kestrel_models::generate::{Generation, Request, Step};
use kestrel_models::speculate::{SpeculationStats, Speculator};
use kestrel_models::AttentionOptions;
use kestrel_models::Model;
use kestrel_runtime::batch::{BatchConfig, BatchSession};
use kestrel_runtime::session::Session;
use kestrel_runtime::Gpu;

use crate::cli::Speculation;
use crate::scheduler;

pub use kestrel_models::generate::{Finish, Prompt};

/// What to load.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub path: PathBuf,
    /// Context (KV cache) length in tokens; clipped to the model's own limit.
    pub ctx: usize,
    pub attention: AttentionOptions,
    /// Use caches only for a catalogue or Hub model.
    pub offline: bool,
    /// Every job decoded speculatively this way (a draft model is loaded with the model).
    pub speculation: Speculation,
    /// Jobs run together in batched steps (continuous batching, `scheduler.rs`); 1 runs one
    /// job at a time. Models batched steps cannot run, and speculation, take one at a time.
    pub max_batch: usize,
    /// Positions of the batched KV pool (all jobs together); None: `max_batch` contexts.
    pub kv_pool: Option<usize>,
}

/// What was loaded.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// A short id for the model (its catalogue name or Hub repository, else its folder or
    /// file name).
    pub id: String,
    pub name: String,
    pub adapter: String,
    pub backend: String,
    pub context: usize,
    pub weight_bytes: u64,
    /// GPU memory of the session's state (the KV cache), allocated once at load.
    pub state_bytes: u64,
    /// Jobs run together (1: one at a time), and the KV pool's positions when batched.
    pub max_batch: usize,
    pub kv_pool: Option<usize>,
    pub load_seconds: f64,
    /// Drafts per verification and the draft model's name, when speculating.
    pub speculation: Option<String>,
    /// True when the model has no chat template of its own and ChatML stands in.
    pub fallback_template: bool,
}

pub struct Job {
    pub prompt: Prompt,
    /// Sampling, max_tokens and stop strings, checked by the generator.
    pub request: Request,
    /// Whether the client waits for text as it comes (else the reply decodes in the largest
    /// batches: [`Generation::unstreamed`]).
    pub streamed: bool,
    /// Set to end the reply early.
    pub cancel: Arc<AtomicBool>,
    pub events: Events,
}

impl Job {
    /// Cancelled, or its receiver has gone (a client that disconnected).
    pub fn abandoned(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || self.events.is_closed()
    }
}

/// Where a job's events go: a std channel (the window polls it) or a tokio one (the server's
/// handlers await it without a thread each).
#[derive(Clone)]
pub enum Events {
    Std(mpsc::Sender<Event>),
    Tokio(tokio::sync::mpsc::UnboundedSender<Event>),
}

/// The receiver of a job's events has gone.
#[derive(Debug)]
pub struct Gone;

impl Events {
    /// Whether the receiver has gone (known for the server's channels only).
    pub fn is_closed(&self) -> bool {
        match self {
            Events::Std(_) => false,
            Events::Tokio(tx) => tx.is_closed(),
        }
    }

    pub fn send(&self, event: Event) -> Result<(), Gone> {
        match self {
            Events::Std(tx) => tx.send(event).map_err(|_| Gone),
            Events::Tokio(tx) => tx.send(event).map_err(|_| Gone),
        }
    }
}

impl From<mpsc::Sender<Event>> for Events {
    fn from(tx: mpsc::Sender<Event>) -> Events {
        Events::Std(tx)
    }
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub text: String,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the cache of the previous job (not run again).
    pub reused_tokens: usize,
    pub completion_tokens: usize,
    pub finish: Finish,
    /// Seconds from the job's start to its first token.
    pub first_token_seconds: f64,
    /// Decode rate after the first token.
    pub tokens_per_second: f64,
    /// When the first token was sampled (the server's time-to-first-token counts from the
    /// request's arrival, queueing included).
    pub first_token_at: Option<Instant>,
    /// Drafted and accepted tokens, when speculating.
    pub speculation: Option<SpeculationStats>,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// The job left the queue and its prompt is being run.
    Started {
        prompt_tokens: usize,
    },
    /// Text to append to the reply.
    Piece(String),
    Done(Summary),
    Failed(String),
}

/// A handle on the worker thread. Dropping every handle ends the thread.
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    /// Jobs running now (up to the batch's sequences; 0 or 1 one at a time).
    running: Arc<AtomicUsize>,
    pub info: ModelInfo,
    pub gpu: Arc<Gpu>,
}

impl Engine {
    /// Load the model on a new worker thread; returns once it is ready (or failed).
    /// `progress` hears what the loader is doing.
    pub fn start(
        gpu: Arc<Gpu>,
        config: EngineConfig,
        progress: impl Fn(&str) + Send + 'static,
    ) -> Result<Engine, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let worker_gpu = gpu.clone();
        let worker_waiting = waiting.clone();
        let worker_running = running.clone();
        std::thread::Builder::new()
            .name("kestrel-engine".into())
            .spawn(move || {
                let worker = match Worker::load(worker_gpu, &config, &progress) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(worker.info.clone()));
                worker.serve(job_rx, worker_waiting, worker_running);
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        let info = ready_rx
            .recv()
            .map_err(|_| "the engine thread ended while loading".to_string())??;
        Ok(Engine {
            jobs,
            waiting,
            running,
            info,
            gpu,
        })
    }

    /// Queue a job; its events arrive on `job.events`.
    pub fn submit(&self, job: Job) -> Result<(), String> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.jobs.send(job).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            "the engine has stopped".to_string()
        })
    }

    /// Queue a job unless `limit` jobs are already queued or running (then it comes back).
    pub fn try_submit(&self, job: Job, limit: usize) -> Result<(), Refused> {
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| Refused::Full)?;
        self.jobs.send(job).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            Refused::Stopped
        })
    }

    /// Jobs queued or running.
    pub fn pending(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// Why [`Engine::try_submit`] refused a job.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Full,
    Stopped,
}

struct Worker {
    model: Model,
    /// Compiled once at load, rendered for every chat job.
    template: ChatTemplate,
    /// The one sequence of one-at-a-time jobs, or the batch of batched ones.
    sequences: Sequences,
    info: ModelInfo,
    /// Lent to each job's generation and taken back after it.
    speculator: Option<Speculator>,
}

impl Worker {
    fn load(
        gpu: Arc<Gpu>,
        config: &EngineConfig,
        progress: &dyn Fn(&str),
    ) -> Result<Worker, String> {
        let t = Instant::now();
        let path = crate::model_ref::resolve(&config.path, config.offline)?;
        progress(&format!("loading {}", path.display()));
        crate::prebuild::start(&gpu, &path);
        let mut model = kestrel_models::load(&gpu, &path).map_err(|e| e.to_string())?;
        crate::apply_attention(&mut model, config.attention.clone())?;
        crate::tune::ensure(&gpu, &model);
        if let Some(note) = crate::unread_keys_note(&model) {
            progress(&note);
        }
        if !model.config().causal {
            return Err(format!(
                "{} is a diffusion model; serve and app run autoregressive models \
                 (use kestrel chat, generate or diffuse for it)",
                model.name
            ));
        }
        if model.tokenizer.is_none() {
            return Err("the model has no tokenizer, so it cannot take text".into());
        }
        let template = model.chat_template().map_err(|e| e.to_string())?;
        progress("allocating the KV cache");
        let ctx = config.ctx.min(model.architecture().max_context());
        let sequences = Sequences::new(&gpu, &model, config, ctx, progress)?;
        let (capacity, state_bytes, max_batch, kv_pool) = match &sequences {
            Sequences::One(s) => (s.capacity(), s.state_bytes(), 1, None),
            Sequences::Batch(b) => (
                b.context(),
                b.state_bytes(),
                b.max_seqs(),
                Some(b.pool_tokens()),
            ),
        };
        let speculator = match &config.speculation {
            Speculation::Off => None,
            spec => {
                progress("loading the speculative drafter");
                let s = crate::speculate::open(&gpu, spec, &model, capacity, config.offline)?;
                if let (Some(s), Sequences::One(session)) = (&s, &sequences) {
                    s.check_target(&model, session)
                        .map_err(crate::generate::cli_error)?;
                }
                s
            }
        };
        let speculation = speculator.as_ref().map(|s| match s.draft() {
            Some(d) => format!("{} drafts by {}", s.draft_tokens(), d.model.name),
            None => format!("{} drafts by prompt lookup", s.draft_tokens()),
        });
        let id = crate::model_ref::short_id(&config.path).unwrap_or_else(|| model.name.clone());
        let info = ModelInfo {
            id,
            name: model.name.clone(),
            adapter: gpu.info.name.clone(),
            backend: gpu.backend_name().to_string(),
            context: capacity,
            weight_bytes: model.weight_bytes(),
            state_bytes,
            max_batch,
            kv_pool,
            load_seconds: t.elapsed().as_secs_f64(),
            speculation,
            fallback_template: template.is_fallback,
        };
        progress("ready");
        Ok(Worker {
            model,
            template,
            sequences,
            info,
            speculator,
        })
    }

    fn serve(
        mut self,
        jobs: mpsc::Receiver<Job>,
        waiting: Arc<AtomicUsize>,
        running: Arc<AtomicUsize>,
    ) {
        let session = match &mut self.sequences {
            Sequences::Batch(batch) => {
                let (model, template) = (&self.model, &self.template);
                return scheduler::serve(model, template, batch, jobs, &waiting, &running);
            }
            Sequences::One(session) => session,
        };
        while let Ok(job) = jobs.recv() {
            let events = job.events.clone();
            running.fetch_add(1, Ordering::SeqCst);
            let outcome = run(
                &self.model,
                &self.template,
                session,
                &mut self.speculator,
                &job,
            );
            running.fetch_sub(1, Ordering::SeqCst);
            let event = match outcome {
                Ok(summary) => Event::Done(summary),
                Err(e) => {
                    // A failed step may leave the cache half written: start the next job afresh.
                    session.reset();
                    Event::Failed(e)
                }
            };
            // Counted out before its last event, so that whoever hears it sees the job gone.
            waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = events.send(event);
        }
    }
}

/// Drive the generator through one job on `session`, sending its pieces as they come
/// (lending `speculator`, when there is one, to the job).
fn run(
    model: &Model,
    template: &ChatTemplate,
    session: &mut Session,
    speculator: &mut Option<Speculator>,
    job: &Job,
) -> Result<Summary, String> {
    let started = Instant::now();
    let ids = job
        .prompt
        .encode(model, Some(template))
        .map_err(|e| e.to_string())?;
    let mut g = Generation::new(model, session, ids, &job.request).map_err(|e| e.to_string())?;
    if !job.streamed {
        g.unstreamed();
    }
    if let Some(s) = speculator.take() {
        g.speculate(model, session, s).map_err(|e| e.to_string())?;
    }
    let cancelled = || job.cancel.load(Ordering::SeqCst);
    let prompt_tokens = g.prompt_tokens();
    if cancelled() || job.events.send(Event::Started { prompt_tokens }).is_err() {
        return Ok(Summary::empty(prompt_tokens, Finish::Cancelled));
    }
    let mut first_token_seconds = None;
    let mut first_token_at = None;
    let mut decode_start = Instant::now();
    // A failed step ends the loop so that the speculator is taken back first.
    let mut failed = None;
    loop {
        let t = Instant::now();
        let step = match pollster::block_on(g.step(model, session)) {
            Ok(step) => step,
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        };
        g.observe_step_time(t.elapsed().as_secs_f64());
        if first_token_seconds.is_none() {
            first_token_seconds = Some(started.elapsed().as_secs_f64());
            first_token_at = Some(Instant::now());
            decode_start = Instant::now();
        }
        let piece = match step {
            Step::Done(_) => break,
            Step::Text(piece) => piece,
        };
        if (!piece.is_empty() && job.events.send(Event::Piece(piece)).is_err()) || cancelled() {
            g.cancel();
            break;
        }
    }
    let speculation = g.speculation_stats();
    *speculator = g.take_speculator();
    if let Some(e) = failed {
        return Err(e);
    }
    let decode = decode_start.elapsed().as_secs_f64();
    let produced = g.completion_tokens();
    Ok(Summary {
        text: g.reply().to_string(),
        prompt_tokens,
        reused_tokens: g.reused_tokens(),
        completion_tokens: produced,
        finish: g.finish().unwrap_or(Finish::Cancelled),
        first_token_seconds: first_token_seconds.unwrap_or(0.0),
        tokens_per_second: if decode > 0.0 && produced > 1 {
            (produced - 1) as f64 / decode
        } else {
            0.0
        },
        first_token_at,
        speculation,
    })
}

/// Where a worker's jobs run.
enum Sequences {
    /// One sequence, one job at a time (its KV cache reused between jobs' shared prefixes).
    One(Box<Session>),
    /// A batch of sequences over a paged KV pool (`scheduler.rs`).
    Batch(Box<BatchSession>),
}

impl Sequences {
    /// A batch where `config` asks for one and the model and options allow it (else, with a
    /// note why, one sequence); contexts of `ctx` tokens.
    fn new(
        gpu: &Arc<Gpu>,
        model: &Model,
        config: &EngineConfig,
        ctx: usize,
        progress: &dyn Fn(&str),
    ) -> Result<Sequences, String> {
        let arch = model.architecture();
        let why_not = match (config.max_batch, &config.speculation, arch.batch_refusal()) {
            (0 | 1, _, _) => None,
            (_, Speculation::Off, None) => {
                let pool = config.kv_pool.unwrap_or(config.max_batch * ctx);
                let batch = BatchConfig {
                    max_seqs: config.max_batch,
                    context: ctx,
                    pool_tokens: pool,
                };
                return BatchSession::new(gpu, arch, batch)
                    .and_then(|mut b| {
                        progress("making the batch's plans");
                        b.prepare(scheduler::max_step_rows(config.max_batch))?;
                        Ok(Sequences::Batch(Box::new(b)))
                    })
                    .map_err(|e| {
                        format!(
                            "{e} (--ctx {ctx} tokens for up to --max-batch {} requests: \
                             choose a smaller --ctx, --max-batch or --kv-pool)",
                            config.max_batch
                        )
                    });
            }
            (_, Speculation::Off, Some(why)) => Some(why),
            (_, _, _) => Some("speculative decoding runs one sequence at a time".to_string()),
        };
        if let Some(why) = why_not {
            progress(&format!(
                "one job at a time: {} cannot be decoded in batches: {why}",
                model.name
            ));
        }
        // A context whose KV cache cannot be bound is refused before anything is allocated.
        model
            .session(gpu, ctx)
            .map(|s| Sequences::One(Box::new(s)))
            .map_err(|e| format!("{e} (--ctx {ctx}: choose a smaller --ctx)"))
    }
}

impl Summary {
    pub(crate) fn empty(prompt_tokens: usize, finish: Finish) -> Summary {
        Summary {
            text: String::new(),
            prompt_tokens,
            reused_tokens: 0,
            completion_tokens: 0,
            finish,
            first_token_seconds: 0.0,
            tokens_per_second: 0.0,
            first_token_at: None,
            speculation: None,
        }
    }
}

//! Text generation: the one generator every front end drives (`kestrel generate` and
//! `chat`, the engine behind `serve` and `app`, the browser engine and `bench`).
//!
//! A front end encodes its [`Prompt`] (a conversation through the chat template, raw text,
//! or token ids), starts a [`Generation`] with a checked [`Request`] (which reuses the part
//! of the prompt the session already holds), then calls [`Generation::step`] until it says
//! [`Step::Done`]. Each step feeds what is left of the prompt or the last token, samples one
//! token (a diffusion model fills one block instead), turns it into text incrementally, and
//! holds back text that could still begin a stop string. The generation owns its state and
//! borrows the model and session only during a step, so a browser can keep it between calls;
//! it never blocks and keeps no time (front ends time steps themselves).

use std::collections::VecDeque;

use kestrel_runtime::diffusion::{
    DiffusionConfig, DiffusionError, DiffusionSampler, DiffusionStats,
};
use kestrel_runtime::kernels::decode_gate::MAX_END_IDS;
use kestrel_runtime::session::{Sampling, Session};

use crate::chat_template::{ChatTemplate, Message};
use crate::error::ModelError;
use crate::speculate::{SpeculationStats, Speculator, MAX_DRAFT_TOKENS};
use crate::tokenizer::{TextStream, TextTokenizer};
use crate::Model;

/// The highest temperature a request may ask for (OpenAI's range is [0, 2]).
pub const MAX_TEMPERATURE: f32 = 2.0;
/// The most stop strings a request may carry (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// The most decode steps run in one submission (one host round trip per batch).
pub const MAX_DECODE_BATCH: usize = 16;
const _: () = assert!(MAX_DECODE_BATCH <= kestrel_runtime::decode_loop::MAX_STEPS);
/// A streaming front end wants text at least this often: batches are sized to take no
/// longer, from the step times it reports ([`Generation::observe_step_time`]).
pub const STREAM_INTERVAL_S: f64 = 0.1;

/// What to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// A conversation, rendered by the chat template with a generation prompt.
    Chat(Vec<Message>),
    /// Raw text, tokenized as is.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

impl Prompt {
    /// The prompt's token ids. A conversation is rendered with `template` (the model's own,
    /// compiled once by a front end that renders many), or else the model's.
    pub fn encode(
        &self,
        model: &Model,
        template: Option<&ChatTemplate>,
    ) -> Result<Vec<u32>, GenerateError> {
        let ids = match self {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(text) => tokenizer(model)?.encode(text)?,
            Prompt::Chat(messages) => {
                let text = match template {
                    Some(t) => t.render(messages, true)?,
                    None => model.chat_template()?.render(messages, true)?,
                };
                tokenizer(model)?.encode(&text)?
            }
        };
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        Ok(ids)
    }
}

fn tokenizer(model: &Model) -> Result<&TextTokenizer, GenerateError> {
    model.tokenizer.as_ref().ok_or(GenerateError::NoTokenizer)
}

/// How to generate: the same checks and limits for every front end.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub sampling: Sampling,
    /// The most tokens of the reply; a reply also ends where the context does (the prompt
    /// and every token of the reply fit in it).
    pub max_tokens: usize,
    /// The reply ends before the first of these strings (which it leaves out).
    pub stop: Vec<String>,
    /// Run through end-of-sequence tokens to exactly `max_tokens` (benchmarks, as
    /// llama-bench does); such a run may also draw the token after the context's last
    /// position, which needs no room.
    pub ignore_eos: bool,
    /// The sampler of a diffusion model (ignored for autoregressive ones, which it needs).
    pub diffusion: Option<DiffusionConfig>,
}

impl Default for Request {
    fn default() -> Request {
        Request {
            sampling: Sampling::default(),
            max_tokens: usize::MAX,
            stop: Vec::new(),
            ignore_eos: false,
            diffusion: None,
        }
    }
}

impl Request {
    /// The ranges every front end accepts (OpenAI's): temperature in [0, 2], top_p in
    /// (0, 1], top_k >= 0 (its type), max_tokens >= 1, up to four non-empty stop strings.
    pub fn validate(&self) -> Result<(), RequestError> {
        let s = &self.sampling;
        if !(0.0..=MAX_TEMPERATURE).contains(&s.temperature) {
            return Err(RequestError::Temperature(s.temperature));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(RequestError::TopP(s.top_p));
        }
        if self.max_tokens == 0 {
            return Err(RequestError::MaxTokens);
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(RequestError::TooManyStops(self.stop.len()));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(RequestError::EmptyStop);
        }
        Ok(())
    }
}

/// A request field out of its range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RequestError {
    Temperature(f32),
    TopP(f32),
    MaxTokens,
    TooManyStops(usize),
    EmptyStop,
}

impl RequestError {
    /// The field at fault, as [`Request`] and OpenAI's requests name it.
    pub fn field(&self) -> &'static str {
        match self {
            RequestError::Temperature(_) => "temperature",
            RequestError::TopP(_) => "top_p",
            RequestError::MaxTokens => "max_tokens",
            RequestError::TooManyStops(_) | RequestError::EmptyStop => "stop",
        }
    }

    /// The message with the field spelled by `name` (a front end's flag or JSON key).
    pub fn message(&self, name: impl Fn(&str) -> String) -> String {
        let field = name(self.field());
        match self {
            RequestError::Temperature(t) => {
                format!("{field} must be a number from 0 to {MAX_TEMPERATURE}, not {t}")
            }
            RequestError::TopP(p) => {
                format!("{field} must be greater than 0 and at most 1, not {p}")
            }
            RequestError::MaxTokens => format!("{field} must be at least 1"),
            RequestError::TooManyStops(n) => {
                format!("{field} holds {n} strings; at most {MAX_STOP_STRINGS} are allowed")
            }
            RequestError::EmptyStop => format!("{field} strings must not be empty"),
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message(str::to_string))
    }
}

impl std::error::Error for RequestError {}

/// Why a generation could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the model has no tokenizer, so it cannot take text")]
    NoTokenizer,
    #[error("the prompt encodes to no tokens")]
    EmptyPrompt,
    #[error("the prompt has {tokens} tokens; the context holds {context}, with room for at least one more")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("{0} is not a diffusion model (it is causal and has no mask token)")]
    NotDiffusion(String),
    #[error("{0} is bidirectional but has no mask_token_id, so it cannot be sampled by diffusion")]
    NoMaskToken(String),
    #[error("{0} is a diffusion model, and the request has no diffusion settings")]
    NoDiffusionSettings(String),
    #[error("{model} cannot be decoded speculatively: {why}")]
    CannotSpeculate { model: String, why: &'static str },
    #[error("the draft model {draft} cannot draft for {target}: {why} (a draft model needs the target's vocabulary)")]
    DraftVocabulary {
        target: String,
        draft: String,
        why: String,
    },
    #[error("draft tokens must be from 1 to {MAX_DRAFT_TOKENS}, not {0}")]
    DraftTokens(usize),
    #[error("{model} cannot be decoded in batches: {why}")]
    CannotBatch { model: String, why: String },
    #[error(transparent)]
    Diffusion(#[from] DiffusionError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Runtime(#[from] kestrel_runtime::Error),
}

/// The mask token of a diffusion model, or why the model is not one.
pub fn mask_token(model: &Model) -> Result<u32, GenerateError> {
    match (model.config().causal, model.config().mask_token) {
        (false, Some(m)) => Ok(m),
        (false, None) => Err(GenerateError::NoMaskToken(model.name.clone())),
        (true, _) => Err(GenerateError::NotDiffusion(model.name.clone())),
    }
}

/// Why a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// max_tokens reached, the context is full, or every diffusion block is filled.
    Length,
    /// The front end ended it ([`Generation::cancel`]).
    Cancelled,
}

impl Finish {
    /// OpenAI's finish_reason (a cancelled reply is never seen by its client).
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Stop | Finish::Cancelled => "stop",
            Finish::Length => "length",
        }
    }
}

/// What one step gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Text to append to the reply (empty while a character or a possible stop string is
    /// incomplete).
    Text(String),
    /// The reply is over; every later step says the same.
    Done(Finish),
}

/// How tokens are drawn.
enum Sampler {
    /// One token per step; `feed` is what the next draw runs: the part of the prompt the
    /// session does not hold yet, then the last token. Decoding runs batches of steps on the
    /// GPU (`Session::decode`); `pending` holds the tokens of the last batch not yet taken.
    Autoregressive {
        feed: Vec<u32>,
        pending: VecDeque<u32>,
    },
    /// One block per step.
    Diffusion(Box<DiffusionSampler>),
}

/// A reply in progress.
pub struct Generation {
    sampler: Sampler,
    sampling: Sampling,
    /// Reply tokens allowed (max_tokens within the context).
    limit: usize,
    stop: Vec<String>,
    ignore_eos: bool,
    stream: TextStream,
    reply: String,
    /// Bytes of `reply` already given out.
    sent: usize,
    /// Bytes of `reply` known to hold no stop string.
    searched: usize,
    prompt_tokens: usize,
    reused_tokens: usize,
    completion_tokens: usize,
    sampled: usize,
    finish: Option<Finish>,
    /// The size of the next decode batch (doubling up to `max_batch`, or `max_batch` from the
    /// start when [`Generation::unstreamed`]).
    batch: usize,
    /// The largest batch: [`MAX_DECODE_BATCH`], or what keeps a batch within
    /// [`STREAM_INTERVAL_S`] once a front end reports step times.
    max_batch: usize,
    /// Tokens the last draw decoded on the GPU (0 when it took a pending token).
    last_decoded: usize,
    /// Whether a front end waits for text between steps (see [`Generation::unstreamed`]).
    streamed: bool,
    /// Speculative decoding, when asked for ([`Generation::speculate`]).
    speculator: Option<Speculator>,
}

impl Generation {
    /// Check `request`, keep the prefix of `prompt` that `session` already holds, and get
    /// ready to reply. A diffusion model's session must hold prompt + generation.
    pub fn new(
        model: &Model,
        session: &mut Session,
        prompt: Vec<u32>,
        request: &Request,
    ) -> Result<Generation, GenerateError> {
        check_start(request, &prompt)?;
        let capacity = session.capacity();
        let (sampler, limit, reused_tokens) = if model.config().causal {
            let room = room_after(&prompt, capacity)? + request.ignore_eos as usize;
            let feed = session.reuse_prefix(&prompt).to_vec();
            let reused = prompt.len() - feed.len();
            let sampler = Sampler::Autoregressive {
                feed,
                pending: VecDeque::new(),
            };
            (sampler, request.max_tokens.min(room), reused)
        } else {
            let config = request
                .diffusion
                .ok_or_else(|| GenerateError::NoDiffusionSettings(model.name.clone()))?;
            let mask = mask_token(model)?;
            let sampler = DiffusionSampler::new(session, &prompt, mask, &config)?;
            let sampler = Sampler::Diffusion(Box::new(sampler));
            (sampler, config.gen_length, 0)
        };
        let mut g = Generation::start(sampler, request, limit);
        g.prompt_tokens = prompt.len();
        g.reused_tokens = reused_tokens;
        Ok(g)
    }

    /// A generation with `request`'s settings that has produced nothing yet.
    fn start(sampler: Sampler, request: &Request, limit: usize) -> Generation {
        Generation {
            sampler,
            sampling: request.sampling,
            limit,
            stop: request.stop.clone(),
            ignore_eos: request.ignore_eos,
            stream: TextStream::default(),
            reply: String::new(),
            sent: 0,
            searched: 0,
            prompt_tokens: 0,
            reused_tokens: 0,
            completion_tokens: 0,
            sampled: 0,
            finish: None,
            batch: 2,
            max_batch: MAX_DECODE_BATCH,
            last_decoded: 0,
            streamed: true,
            speculator: None,
        }
    }

    /// Decode speculatively with `speculator` (its counters start again): the same reply,
    /// token for token at temperature 0 and in distribution with sampling. Refused by name
    /// for a model whose state cannot be cut back for free after rejected drafts.
    pub fn speculate(
        &mut self,
        model: &Model,
        session: &Session,
        mut speculator: Speculator,
    ) -> Result<(), GenerateError> {
        speculator.check_target(model, session)?;
        speculator.reset_stats();
        self.speculator = Some(speculator);
        Ok(())
    }

    /// The speculator back (a front end keeps a draft model's session between replies).
    pub fn take_speculator(&mut self) -> Option<Speculator> {
        self.speculator.take()
    }

    /// Drafted and accepted tokens so far, when speculating.
    pub fn speculation_stats(&self) -> Option<SpeculationStats> {
        self.speculator.as_ref().map(Speculator::stats)
    }

    /// A streaming front end reports how long its last [`Generation::step`] took; later
    /// decode batches are kept short enough that text arrives every
    /// [`STREAM_INTERVAL_S`]. Front ends that do not stream (benchmarks) do not call it.
    pub fn observe_step_time(&mut self, seconds: f64) {
        if !self.streamed || self.last_decoded == 0 || !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        let per_token = seconds / self.last_decoded as f64;
        let fits = (STREAM_INTERVAL_S / per_token).floor() as usize;
        self.max_batch = fits.clamp(1, MAX_DECODE_BATCH);
        self.batch = self.batch.min(self.max_batch);
    }

    /// The front end does not stream this reply (a benchmark, a request for the whole
    /// reply): decode batches are the largest from the start instead of doubling from 2, and
    /// step times do not shorten them, since nobody waits for text between them.
    pub fn unstreamed(&mut self) {
        self.streamed = false;
        self.batch = self.max_batch;
    }

    /// Advance the reply by one token (one block for a diffusion model).
    pub async fn step(
        &mut self,
        model: &Model,
        session: &mut Session,
    ) -> Result<Step, GenerateError> {
        let mut ended = false;
        if self.finish.is_none() {
            self.finish = self.draw(model, session).await?;
            ended = self.finish.is_some();
        }
        self.emit(model, ended)
    }

    /// A generation whose tokens another runs: a batched session feeds
    /// [`Generation::to_feed`] in its steps and hands back each token drawn
    /// ([`Generation::drawn`]). The same checks, limits, text and stop strings as
    /// [`Generation::new`], over a sequence of up to `capacity` tokens that starts empty
    /// (nothing reused); autoregressive models only.
    pub fn detached(
        model: &Model,
        capacity: usize,
        prompt: Vec<u32>,
        request: &Request,
    ) -> Result<Generation, GenerateError> {
        check_start(request, &prompt)?;
        if !model.config().causal {
            return Err(GenerateError::CannotBatch {
                model: model.name.clone(),
                why: "it is a diffusion model".into(),
            });
        }
        let (room, prompt_tokens) = (room_after(&prompt, capacity)?, prompt.len());
        let mut g = Generation::start(
            Sampler::Autoregressive {
                feed: prompt,
                pending: VecDeque::new(),
            },
            request,
            request.max_tokens.min(room),
        );
        g.prompt_tokens = prompt_tokens;
        Ok(g)
    }

    /// The tokens the next step must append before drawing: what is left of the prompt, then
    /// the last token drawn. Empty once the reply is finished.
    pub fn to_feed(&self) -> &[u32] {
        match (&self.sampler, self.finish) {
            (Sampler::Autoregressive { feed, .. }, None) => feed,
            _ => &[],
        }
    }

    /// Positions the sequence may come to hold: the prompt and the longest reply.
    pub fn reserve(&self) -> usize {
        self.prompt_tokens + self.limit
    }

    /// The first `n` tokens of [`Generation::to_feed`] were appended without a draw (a
    /// chunk of the prompt).
    pub fn fed(&mut self, n: usize) {
        if let Sampler::Autoregressive { feed, .. } = &mut self.sampler {
            let n = n.min(feed.len().saturating_sub(1));
            feed.drain(..n);
        }
    }

    /// All of [`Generation::to_feed`] was appended and `id` drawn after it: take it in as
    /// [`Generation::step`] would, and say what to send.
    pub fn drawn(&mut self, model: &Model, id: u32) -> Result<Step, GenerateError> {
        let mut ended = false;
        if self.finish.is_none() {
            if let Sampler::Autoregressive { feed, .. } = &mut self.sampler {
                *feed = vec![id];
            }
            self.last_decoded = 1;
            self.finish = self.take(model, &[id])?;
            if self.finish.is_none() && self.completion_tokens >= self.limit {
                self.finish = Some(Finish::Length);
            }
            ended = self.finish.is_some();
        }
        self.emit(model, ended)
    }

    /// What a step sends: the text that can no longer begin a stop string; when the reply
    /// has just `ended`, the rest of it; then [`Step::Done`].
    fn emit(&mut self, model: &Model, ended: bool) -> Result<Step, GenerateError> {
        if ended {
            // The end: no more bytes will complete a character or a stop string.
            if let Some(tok) = &model.tokenizer {
                let rest = self.stream.finish(tok)?;
                self.append(&rest);
            }
            self.sent = self.sent.min(self.reply.len());
            let rest = self.reply[self.sent..].to_string();
            self.sent = self.reply.len();
            if !rest.is_empty() {
                return Ok(Step::Text(rest));
            }
        }
        if let Some(finish) = self.finish {
            return Ok(Step::Done(finish));
        }
        let safe = self.reply.len() - held_back(&self.reply, &self.stop);
        let piece = self.reply[self.sent..safe.max(self.sent)].to_string();
        self.sent = self.sent.max(safe);
        Ok(Step::Text(piece))
    }

    /// Draw the next token (or block) and take in its text; returns how the reply ended, if
    /// it did.
    async fn draw(
        &mut self,
        model: &Model,
        session: &mut Session,
    ) -> Result<Option<Finish>, GenerateError> {
        if self.completion_tokens >= self.limit {
            return Ok(Some(Finish::Length));
        }
        self.last_decoded = 0;
        let tokens = match &mut self.sampler {
            Sampler::Autoregressive { feed, pending } => {
                if pending.is_empty() {
                    // A batch of steps when only the last token is left to feed: as many as
                    // the reply may still take and the context can hold.
                    let room = session.capacity().saturating_sub(session.pos());
                    let n = self
                        .batch
                        .min(self.limit - self.completion_tokens)
                        .min(room);
                    let ends = match self.ignore_eos {
                        true => &[][..],
                        false => model.eos(),
                    };
                    let ends = &ends[..ends.len().min(MAX_END_IDS)];
                    let ids = if let (1, Some(spec)) = (feed.len(), &mut self.speculator) {
                        // Drafts verified in one pass, as many as the reply and the context
                        // may still take (not bounded by the batch: the drafts are).
                        let most = (self.limit - self.completion_tokens).min(room);
                        let ids = spec
                            .step(session, feed[0], most, n, &self.sampling, ends)
                            .await?;
                        self.batch = (2 * self.batch).min(self.max_batch);
                        ids
                    } else if feed.len() == 1 && n > 1 {
                        let ids = session.decode(feed[0], n, &self.sampling, ends).await?;
                        self.batch = (2 * self.batch).min(self.max_batch);
                        ids
                    } else {
                        let id = session.next_token(feed, &self.sampling).await?;
                        if self.sampled == 0 {
                            // The prompt is in: a reply cut back at a stop string (past it,
                            // decode batches may have run) continues from here, not from
                            // the start, in the next turn of a recurrent model.
                            session.checkpoint()?;
                        }
                        vec![id]
                    };
                    self.last_decoded = ids.len();
                    *feed = ids.last().copied().into_iter().collect();
                    pending.extend(ids);
                }
                pending.pop_front().into_iter().collect()
            }
            Sampler::Diffusion(sampler) => match sampler.next_block(session).await? {
                Some(block) => block.tokens,
                None => return Ok(Some(Finish::Length)),
            },
        };
        self.take(model, &tokens)
    }

    /// Take in drawn tokens: the end token, the limit's count, their text and stop strings.
    fn take(&mut self, model: &Model, tokens: &[u32]) -> Result<Option<Finish>, GenerateError> {
        for &id in tokens {
            self.sampled += 1;
            if !self.ignore_eos && model.eos().contains(&id) {
                return Ok(Some(Finish::Stop));
            }
            self.completion_tokens += 1;
            if let Some(tok) = &model.tokenizer {
                let piece = self.stream.push(tok, id)?;
                if self.append(&piece) {
                    return Ok(Some(Finish::Stop));
                }
            }
        }
        Ok(None)
    }

    /// Add text to the reply; true when the reply now ends at a stop string (cut off).
    fn append(&mut self, piece: &str) -> bool {
        self.reply.push_str(piece);
        let found = find_stop(&self.reply, &self.stop, self.searched);
        self.searched = self.reply.len();
        match found {
            Some(at) => {
                self.reply.truncate(at);
                // What the stream still holds comes after the stop string.
                self.stream = TextStream::default();
                true
            }
            None => false,
        }
    }

    /// End the reply early (the caller's stop button, a client that left); a reply that
    /// already ended keeps its reason.
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(Finish::Cancelled);
    }

    /// The reply so far (all of it at the end, stop string excluded).
    pub fn reply(&self) -> &str {
        &self.reply
    }
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }
    /// Prompt tokens the session already held (not run again).
    pub fn reused_tokens(&self) -> usize {
        self.reused_tokens
    }
    /// Tokens of the reply (an end-of-sequence token is not one, unless ignored).
    pub fn completion_tokens(&self) -> usize {
        self.completion_tokens
    }
    /// Tokens drawn, an end-of-sequence token included.
    pub fn sampled_tokens(&self) -> usize {
        self.sampled
    }
    /// How the reply ended, once it has.
    pub fn finish(&self) -> Option<Finish> {
        self.finish
    }
    /// A diffusion model's counters: tokens generated (whole blocks) and forward passes.
    pub fn diffusion_stats(&self) -> Option<(usize, DiffusionStats)> {
        match &self.sampler {
            Sampler::Diffusion(s) => Some((s.generated(), s.stats())),
            Sampler::Autoregressive { .. } => None,
        }
    }
}

/// Byte offset of the earliest stop string in `text`, searching only what could end after
/// byte `from` (the text before it held none).
/// Positions left after `prompt` in a sequence of `capacity`; an error unless one is.
fn room_after(prompt: &[u32], capacity: usize) -> Result<usize, GenerateError> {
    match capacity.checked_sub(prompt.len()) {
        Some(room) if room > 0 => Ok(room),
        _ => Err(GenerateError::PromptTooLong {
            tokens: prompt.len(),
            context: capacity,
        }),
    }
}

/// What every generation checks first: the request's ranges and a prompt.
fn check_start(request: &Request, prompt: &[u32]) -> Result<(), GenerateError> {
    request.validate()?;
    match prompt.is_empty() {
        true => Err(GenerateError::EmptyPrompt),
        false => Ok(()),
    }
}

fn find_stop(text: &str, stop: &[String], from: usize) -> Option<usize> {
    let longest = stop.iter().map(String::len).max()?;
    let mut start = from
        .saturating_sub(longest.saturating_sub(1))
        .min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text[start..].find(s.as_str()).map(|at| start + at))
        .min()
}

/// How many bytes at the end of `text` could begin a stop string (and so are not given out
/// yet).
fn held_back(text: &str, stop: &[String]) -> usize {
    let mut held = 0;
    for s in stop {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                held = held.max(i);
            }
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_prefixes_held_back() {
        let stop = vec!["</end>".to_string(), "##".to_string()];
        assert_eq!(find_stop("abc</end>x", &stop, 0), Some(3));
        assert_eq!(find_stop("a##b</end>", &stop, 0), Some(1));
        assert_eq!(find_stop("abc", &stop, 0), None);
        assert_eq!(find_stop("abc", &[], 0), None);
        assert_eq!(held_back("abc</e", &stop), 3);
        assert_eq!(held_back("abc#", &stop), 1);
        assert_eq!(held_back("abc", &stop), 0);
        assert_eq!(held_back("abc", &[]), 0);
    }

    /// A reply with nothing drawn yet (stop strings "STOP" and a blank line), for the tests
    /// of its bookkeeping.
    fn bare_generation() -> Generation {
        Generation {
            sampler: Sampler::Autoregressive {
                feed: vec![],
                pending: VecDeque::new(),
            },
            sampling: Sampling::default(),
            limit: 100,
            stop: vec!["STOP".into(), "\n\n".into()],
            ignore_eos: false,
            stream: TextStream::default(),
            reply: String::new(),
            sent: 0,
            searched: 0,
            prompt_tokens: 1,
            reused_tokens: 0,
            completion_tokens: 0,
            sampled: 0,
            finish: None,
            batch: 2,
            max_batch: MAX_DECODE_BATCH,
            last_decoded: 0,
            streamed: true,
            speculator: None,
        }
    }

    #[test]
    fn a_reply_nobody_streams_decodes_in_the_largest_batches() {
        // Streamed: 2 steps took a second, so batches shrink to what fits 100 ms.
        let mut g = bare_generation();
        g.last_decoded = 2;
        g.observe_step_time(1.0);
        assert_eq!((g.batch, g.max_batch), (1, 1));
        // Not streamed: the largest from the start, whatever the step times.
        let mut g = bare_generation();
        g.unstreamed();
        g.last_decoded = 2;
        g.observe_step_time(1.0);
        assert_eq!((g.batch, g.max_batch), (MAX_DECODE_BATCH, MAX_DECODE_BATCH));
    }

    #[test]
    fn stop_search_looks_only_where_a_new_match_can_end() {
        let stop = vec!["</end>".to_string()];
        // Text before `from` was searched: a match must end after it.
        assert_eq!(find_stop("xx</end>", &stop, 7), Some(2));
        assert_eq!(find_stop("xx</end>", &stop, 3), Some(2));
        // Multi-byte characters before the window are skipped whole.
        assert_eq!(find_stop("ééé</end>", &stop, 8), Some(6));
        assert_eq!(find_stop("é</end>", &stop, 1), Some(2));
        // Piece by piece, the reply is searched once and cut at the stop string.
        let mut g = bare_generation();
        for piece in ["Hello", " wor", "ld S", "T"] {
            assert!(!g.append(piece));
        }
        assert_eq!(held_back(g.reply(), &g.stop), 2);
        assert!(g.append("OP and more"));
        assert_eq!(g.reply(), "Hello world ");
    }

    #[test]
    fn requests_are_checked_against_one_set_of_ranges() {
        let ok = Request {
            sampling: Sampling {
                temperature: 2.0,
                top_k: 0,
                top_p: 1.0,
                seed: 0,
            },
            max_tokens: 1,
            stop: vec!["a".into(); 4],
            ..Request::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let field = |r: Request| r.validate().map_err(|e| e.field());
        let with = |f: fn(&mut Request)| {
            let mut r = ok.clone();
            f(&mut r);
            r
        };
        assert_eq!(
            field(with(|r| r.sampling.temperature = 2.5)),
            Err("temperature")
        );
        assert_eq!(
            field(with(|r| r.sampling.temperature = -0.1)),
            Err("temperature")
        );
        assert_eq!(
            field(with(|r| r.sampling.temperature = f32::NAN)),
            Err("temperature")
        );
        assert_eq!(field(with(|r| r.sampling.top_p = 0.0)), Err("top_p"));
        assert_eq!(field(with(|r| r.sampling.top_p = 1.5)), Err("top_p"));
        assert_eq!(field(with(|r| r.max_tokens = 0)), Err("max_tokens"));
        assert_eq!(field(with(|r| r.stop.push("b".into()))), Err("stop"));
        assert_eq!(field(with(|r| r.stop[0].clear())), Err("stop"));
        let e = with(|r| r.sampling.temperature = 3.0)
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "temperature must be a number from 0 to 2, not 3"
        );
        assert_eq!(
            e.message(|f| format!("--{f}")),
            "--temperature must be a number from 0 to 2, not 3"
        );
    }
}

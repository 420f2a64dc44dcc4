//! The server's routes on axum: health, metrics, models and the two completion endpoints,
//! behind three layers (outermost first): counting replies for /metrics, CORS, and the
//! bearer check. Completion jobs go to the engine's queue; their events come back on a tokio
//! channel, and a reply whose future or stream is dropped (the client left) cancels its job.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::metrics::{Gauges, Metrics};
use super::reply::ReplyMeta;
use crate::engine::{Engine, Event, Events, Finish, Job, Refused, Summary};
use kestrel::serve::openai::{self, ApiError, CompletionRequest, Endpoint};

/// What every request shares.
pub struct Server {
    pub engine: Engine,
    pub max_body: usize,
    /// Jobs that may wait behind the running one; more are answered 429.
    pub max_queue: usize,
    pub max_connections: usize,
    /// How long a client may take to send a whole request (then 408).
    pub request_timeout: Duration,
    /// The longest a reply may generate (--max-reply-seconds).
    pub max_reply: Option<Duration>,
    pub cors: Option<Cors>,
    pub api_key: Option<String>,
    /// Connections open now.
    pub open: AtomicUsize,
    pub serial: AtomicU64,
    pub metrics: Metrics,
}

/// The origins allowed to call from a browser.
pub enum Cors {
    Any,
    Origins(Vec<String>),
}

/// When the request must have been read whole: set by the connection layer (the time its
/// connection went idle, plus --request-timeout).
#[derive(Clone, Copy)]
pub struct ReadDeadline(pub tokio::time::Instant);

/// Bytes of an oversized body still read (and dropped) before the 413, so that closing the
/// connection with them unread does not reset it before the client reads the reply.
const DRAIN_LIMIT: usize = 4 << 20;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route(
            "/v1/chat/completions",
            post(|s: State<Arc<Server>>, r: Request| complete(s, Endpoint::Chat, r)),
        )
        .route(
            "/v1/completions",
            post(|s: State<Arc<Server>>, r: Request| complete(s, Endpoint::Text, r)),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(server.clone(), bearer))
        .layer(middleware::from_fn_with_state(server.clone(), cors))
        .layer(middleware::from_fn_with_state(server.clone(), count))
        .with_state(server)
}

/// An OpenAI error reply.
pub fn error_reply(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, json_body(&e.body())).into_response();
    if let Some(allow) = e.allow {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

fn json_body(v: &Value) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string())
}

fn ok(v: &Value) -> Response {
    json_body(v).into_response()
}

/// The route a path counts under in /metrics (a fixed set, so the series stay few).
pub fn route_of(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/models" => "/v1/models",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        p if p.starts_with("/v1/models/") => "/v1/models/{model}",
        _ => "other",
    }
}

async fn count(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let route = route_of(request.uri().path());
    let reply = next.run(request).await;
    server.metrics.request(route, reply.status().as_u16());
    reply
}

/// CORS (with --cors-origin): preflights answered here, and every reply to an allowed origin
/// names it, event streams included.
async fn cors(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let Some(cors) = &server.cors else {
        return next.run(request).await;
    };
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allowed = match (cors, &origin) {
        (_, None) => None,
        (Cors::Any, Some(_)) => Some(HeaderValue::from_static("*")),
        (Cors::Origins(list), Some(o)) => list
            .iter()
            .any(|a| a == o)
            .then(|| HeaderValue::from_str(o).ok())
            .flatten(),
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut reply = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if allowed.is_some() {
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            let asked = request
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                asked.unwrap_or(HeaderValue::from_static("authorization, content-type")),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        r
    } else {
        next.run(request).await
    };
    let h = reply.headers_mut();
    if let Cors::Origins(_) = cors {
        // The reply differs by origin: caches must keep them apart.
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    if let Some(a) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, a);
    }
    reply
}

/// With --api-key, every route but /health needs `Authorization: Bearer KEY`.
async fn bearer(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let Some(key) = &server.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same(g.trim().as_bytes(), key.as_bytes())) {
        return next.run(request).await;
    }
    let message = match given {
        None => "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.",
        Some(_) => "Incorrect API key provided.",
    };
    let mut r = error_reply(&ApiError::with_status(401, message));
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Equal bytes, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn method_not_allowed(request: Request) -> Response {
    let allow = match request.uri().path() {
        "/v1/chat/completions" | "/v1/completions" => "POST",
        _ => "GET",
    };
    let mut e = ApiError::with_status(405, format!("this path takes only {allow}"));
    e.allow = Some(allow);
    error_reply(&e)
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    error_reply(&ApiError::with_status(404, format!("no such path: {path}")))
}

async fn health(State(server): State<Arc<Server>>) -> Response {
    ok(&json!({
        "status": "ok",
        "jobs": server.engine.pending(),
        "connections": server.open.load(Ordering::SeqCst),
    }))
}

async fn metrics(State(server): State<Arc<Server>>) -> Response {
    let running = server.engine.running();
    let text = server.metrics.render(&Gauges {
        queued: server.engine.pending().saturating_sub(running),
        running,
        connections: server.open.load(Ordering::SeqCst),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn model_card(server: &Server) -> Value {
    let i = &server.engine.info;
    json!({
        "id": i.id,
        "object": "model",
        "created": 0,
        "owned_by": "kestrel",
        "context_length": i.context,
    })
}

async fn models(State(server): State<Arc<Server>>) -> Response {
    ok(&json!({"object": "list", "data": [model_card(&server)]}))
}

async fn model(State(server): State<Arc<Server>>, Path(m): Path<String>) -> Response {
    let id = &server.engine.info.id;
    if &m == id {
        ok(&model_card(&server))
    } else {
        error_reply(&ApiError::with_status(
            404,
            format!("The model '{m}' does not exist; this server has '{id}'"),
        ))
    }
}

/// The reply to a request not read whole within --request-timeout.
pub fn too_slow(timeout: Duration) -> ApiError {
    ApiError::with_status(
        408,
        format!(
            "the request was not complete within {} s (--request-timeout)",
            timeout.as_secs_f64()
        ),
    )
}

/// The whole body, within --max-body and the request's deadline.
async fn read_body(server: &Server, request: Request) -> Result<Bytes, ApiError> {
    let deadline = request
        .extensions()
        .get::<ReadDeadline>()
        .map(|d| d.0)
        .unwrap_or_else(|| tokio::time::Instant::now() + server.request_timeout);
    let too_large = || {
        ApiError::with_status(
            413,
            format!(
                "the request body is over the limit of {} bytes (--max-body)",
                server.max_body
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = request.into_body().into_data_stream();
    // A declared length past the limit and the drain is refused before the body is sent.
    if declared.is_some_and(|n| n > server.max_body.saturating_add(DRAIN_LIMIT)) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    let mut over = false;
    let mut drained = 0;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) if over => return Err(too_large()),
            Err(_) => return Err(too_slow(server.request_timeout)),
            Ok(None) => break,
            Ok(Some(Err(_))) if over => return Err(too_large()),
            Ok(Some(Err(e))) => {
                return Err(ApiError::invalid(
                    format!("the request body is incomplete: {e}"),
                    None,
                ))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if over {
            drained += chunk.len();
            if drained > DRAIN_LIMIT {
                return Err(too_large());
            }
            continue;
        }
        bytes.extend_from_slice(&chunk);
        if bytes.len() > server.max_body {
            // Drain what follows (up to the limit and the deadline), then refuse.
            over = true;
            bytes = Vec::new();
        }
    }
    if over {
        return Err(too_large());
    }
    Ok(Bytes::from(bytes))
}

/// Run a completion request: its reply whole, or streamed as server-sent events.
async fn complete(
    State(server): State<Arc<Server>>,
    endpoint: Endpoint,
    request: Request,
) -> Response {
    let arrived = Instant::now();
    let body = match read_body(&server, request).await {
        Ok(b) => b,
        Err(e) => return error_reply(&e),
    };
    let request = match openai::parse(endpoint, &body) {
        Ok(r) => r,
        Err(e) => return error_reply(&e),
    };
    let mut job = match RunningJob::submit(&server, endpoint, &request, arrived) {
        Ok(j) => j,
        Err(e) => {
            let mut r = error_reply(&e);
            if e.status == 429 {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            return r;
        }
    };
    // Wait in the queue; a prompt the engine refuses is still the client's error.
    match job.next().await {
        Event::Started { prompt_tokens } => {
            job.prompt_tokens = Some(prompt_tokens);
            if let Some(limit) = server.max_reply {
                job.set_deadline(limit);
            }
        }
        Event::Failed(e) => {
            job.ended();
            return error_reply(&ApiError::invalid(e, Some(prompt_param(endpoint))));
        }
        Event::Done(s) => {
            // Ended before it started (cancelled): nobody asked for that, so say so.
            job.ended();
            return error_reply(&ApiError::with_status(
                500,
                format!("the job ended before it started ({})", s.finish.reason()),
            ));
        }
        Event::Piece(_) => {
            job.ended();
            return error_reply(&ApiError::with_status(500, "engine protocol error"));
        }
    }
    let serial = server.serial.fetch_add(1, Ordering::SeqCst);
    let meta = ReplyMeta::new(endpoint, &server.engine.info.id, serial);
    if request.stream {
        stream_reply(job, meta, request.include_usage)
    } else {
        whole_reply(job, &meta).await
    }
}

fn prompt_param(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Text => "prompt",
    }
}

fn path_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Text => "/v1/completions",
    }
}

/// A queued job seen from its request: events in; dropped before it ended (the client left),
/// it cancels the job and logs that.
struct RunningJob {
    server: Arc<Server>,
    endpoint: Endpoint,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
    arrived: Instant,
    /// Known once the job started.
    prompt_tokens: Option<usize>,
    ended: bool,
    /// Set when --max-reply-seconds ended the reply.
    timed_out: Arc<AtomicBool>,
    /// The timer that ends it.
    deadline: Option<tokio::task::JoinHandle<()>>,
}

impl RunningJob {
    fn submit(
        server: &Arc<Server>,
        endpoint: Endpoint,
        r: &CompletionRequest,
        arrived: Instant,
    ) -> Result<RunningJob, ApiError> {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            prompt: r.prompt.clone(),
            request: r.request.clone(),
            streamed: r.stream,
            cancel: cancel.clone(),
            events: Events::Tokio(tx),
        };
        // The queue holds --max-queue jobs behind the running one.
        match server
            .engine
            .try_submit(job, server.max_queue.saturating_add(1))
        {
            Ok(()) => {}
            Err(Refused::Full) => {
                return Err(ApiError::with_status(
                    429,
                    format!(
                        "the queue is full ({} requests waiting, --max-queue); try again later",
                        server.max_queue
                    ),
                ))
            }
            Err(Refused::Stopped) => {
                return Err(ApiError::with_status(503, "the engine has stopped"))
            }
        }
        Ok(RunningJob {
            server: server.clone(),
            endpoint,
            events,
            cancel,
            arrived,
            prompt_tokens: None,
            ended: false,
            timed_out: Arc::default(),
            deadline: None,
        })
    }

    /// End the reply `limit` from now (with what it has, as if max_tokens were reached).
    fn set_deadline(&mut self, limit: Duration) {
        let (cancel, timed_out) = (self.cancel.clone(), self.timed_out.clone());
        self.deadline = Some(tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            timed_out.store(true, Ordering::SeqCst);
            cancel.store(true, Ordering::SeqCst);
        }));
    }

    async fn next(&mut self) -> Event {
        match self.events.recv().await {
            // Cut by the deadline: the reply is as long as it could be.
            Some(Event::Done(mut s))
                if s.finish == Finish::Cancelled && self.timed_out.load(Ordering::SeqCst) =>
            {
                s.finish = Finish::Length;
                Event::Done(s)
            }
            Some(event) => event,
            None => Event::Failed("the engine stopped".into()),
        }
    }

    /// The job is over (its last event came): dropping it cancels nothing.
    fn ended(&mut self) {
        self.ended = true;
    }

    /// A finished job: logged and counted.
    fn done(&mut self, s: &Summary) {
        self.ended();
        let ttft = s
            .first_token_at
            .map(|t| t.saturating_duration_since(self.arrived).as_secs_f64());
        self.server.metrics.completion(
            s.prompt_tokens,
            s.reused_tokens,
            s.completion_tokens,
            ttft,
            s.tokens_per_second,
        );
        if let Some(spec) = &s.speculation {
            self.server.metrics.speculation(spec.drafted, spec.accepted);
        }
        eprintln!(
            "{}: {} prompt tokens ({} reused) + {} completion tokens, finish {}, \
             first token {:.3} s, {:.1} tokens/s, total {:.2} s",
            path_of(self.endpoint),
            s.prompt_tokens,
            s.reused_tokens,
            s.completion_tokens,
            s.finish.reason(),
            s.first_token_seconds,
            s.tokens_per_second,
            self.arrived.elapsed().as_secs_f64()
        );
    }

    fn failed(&mut self, e: &str) {
        self.ended();
        eprintln!("{}: failed: {e}", path_of(self.endpoint));
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if let Some(timer) = &self.deadline {
            timer.abort();
        }
        if self.ended {
            return;
        }
        self.cancel.store(true, Ordering::SeqCst);
        let when = match self.prompt_tokens {
            None => "while queued".to_string(),
            Some(n) => format!("with {n} prompt tokens"),
        };
        eprintln!(
            "{}: cancelled (client gone) {when} after {:.2} s",
            path_of(self.endpoint),
            self.arrived.elapsed().as_secs_f64()
        );
    }
}

/// Collect the reply and answer it whole.
async fn whole_reply(mut job: RunningJob, meta: &ReplyMeta) -> Response {
    loop {
        match job.next().await {
            Event::Started { .. } | Event::Piece(_) => {}
            Event::Done(s) => {
                job.done(&s);
                return ok(&meta.reply(&s));
            }
            Event::Failed(e) => {
                job.failed(&e);
                return error_reply(&ApiError::with_status(500, e));
            }
        }
    }
}

/// The reply as server-sent events, one `data:` event per chunk, ending with `[DONE]`.
fn stream_reply(job: RunningJob, meta: ReplyMeta, include_usage: bool) -> Response {
    let mut out = VecDeque::new();
    if meta.endpoint == Endpoint::Chat {
        out.push_back(meta.chunk(true, "", None, include_usage).to_string());
    }
    let state = Stream {
        job,
        meta,
        include_usage,
        out,
        over: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        let data = s.next_data().await?;
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("data: {data}\n\n"))),
            s,
        ))
    });
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        // Proxies (nginx) pass events on at once rather than buffering them.
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    (headers, Body::from_stream(events)).into_response()
}

struct Stream {
    job: RunningJob,
    meta: ReplyMeta,
    include_usage: bool,
    /// Events to send before reading the engine again.
    out: VecDeque<String>,
    /// The job's last event came.
    over: bool,
}

impl Stream {
    async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(data) = self.out.pop_front() {
                return Some(data);
            }
            if self.over {
                return None;
            }
            let (meta, usage) = (&self.meta, self.include_usage);
            match self.job.next().await {
                Event::Started { .. } => {}
                Event::Piece(text) => {
                    self.out
                        .push_back(meta.chunk(false, &text, None, usage).to_string());
                }
                Event::Done(s) => {
                    self.over = true;
                    let reason = Some(s.finish.reason());
                    self.out
                        .push_back(meta.chunk(false, "", reason, usage).to_string());
                    if usage {
                        self.out.push_back(meta.usage_chunk(&s).to_string());
                    }
                    self.out.push_back("[DONE]".into());
                    self.job.done(&s);
                }
                Event::Failed(e) => {
                    self.over = true;
                    // The 200 is already out: the error goes in the stream, as OpenAI's do.
                    self.out
                        .push_back(ApiError::with_status(500, e.clone()).body().to_string());
                    self.job.failed(&e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn paths_count_under_a_fixed_set_of_routes() {
        assert_eq!(route_of("/v1/models/abc"), "/v1/models/{model}");
        assert_eq!(route_of("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(route_of("/anything/else"), "other");
    }
}

//! `kestrel serve`: an OpenAI-compatible HTTP server on one model. A thread per connection
//! parses the request and queues a job on the engine, whose single worker runs jobs in
//! arrival order. A client that disconnects cancels its job, whether it is running or
//! still waiting in the queue.

mod reply;

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::ServeArgs;
use crate::engine::{Engine, EngineConfig, Event, Finish, Job, Summary};
use crate::open_gpu;
use kestrel::serve::http::{self, Deadline, ReadError, Request};
use kestrel::serve::openai::{self, ApiError, CompletionRequest, Endpoint};
use reply::ReplyMeta;

/// How long a write may block on a client that stops reading (then its job is cancelled).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a waiting connection checks whether its client is still there.
const POLL: Duration = Duration::from_millis(50);

struct Server {
    engine: Engine,
    max_body: usize,
    /// Connections beyond this many are refused with 503 at once (each holds a thread).
    max_connections: usize,
    /// How long a client may take to send its whole request (then 408).
    request_timeout: Duration,
    open: AtomicUsize,
    serial: AtomicU64,
}

pub fn run(a: &ServeArgs) -> Result<(), String> {
    let (host, port) = (a.host.as_str(), a.port);
    // Bind first so a taken port fails before the model loads.
    let listener = TcpListener::bind((host, port))
        .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let gpu = open_gpu(&a.device)?;
    a.precision.apply(&gpu)?;
    let config = EngineConfig {
        path: a.model.clone(),
        ctx: a.ctx,
        attention: a.attention.options(),
        offline: a.fetch.offline,
    };
    let engine = Engine::start(gpu, config, |m| eprintln!("{m}"))?;
    let i = &engine.info;
    eprintln!(
        "{} ({}, {:.1} MiB) on {} via {} (driver {}): context {} tokens, loaded in {:.1} s{}",
        i.id,
        i.name,
        i.weight_bytes as f64 / (1 << 20) as f64,
        i.adapter,
        i.backend,
        engine.gpu.info.driver,
        i.context,
        i.load_seconds,
        if i.fallback_template {
            " (no chat template in the model: using ChatML)"
        } else {
            ""
        }
    );
    eprintln!("listening on http://{addr}");
    let server = Arc::new(Server {
        engine,
        max_body: a.max_body,
        max_connections: a.max_connections,
        request_timeout: Duration::from_secs_f64(a.request_timeout),
        open: AtomicUsize::new(0),
        serial: AtomicU64::new(0),
    });
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => accept(&server, stream),
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
    Ok(())
}

fn accept(server: &Arc<Server>, mut stream: TcpStream) {
    if server.open.fetch_add(1, Ordering::SeqCst) >= server.max_connections {
        server.open.fetch_sub(1, Ordering::SeqCst);
        let e = ApiError::with_status(503, "too many connections; try again later");
        // Take what the client already sent (without waiting: this is the accept loop), so
        // closing with unread bytes does not reset the connection before it reads the 503.
        let _ = stream.set_nonblocking(true);
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = stream.set_nonblocking(false);
        let _ = http::write_json(&mut stream, e.status, &e.body(), &[]);
        let _ = stream.shutdown(Shutdown::Write);
        return;
    }
    let server = server.clone();
    let spawned = std::thread::Builder::new()
        .name("kestrel-conn".into())
        .spawn(move || {
            handle(&server, stream);
            server.open.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        eprintln!("cannot start a connection thread: {e}");
    }
}

/// Answer one request, then close the connection.
fn handle(server: &Server, mut stream: TcpStream) {
    let deadline = Deadline::after(server.request_timeout);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let outcome = match http::read_request(&mut stream, server.max_body, deadline) {
        Ok(request) => route(server, &mut stream, &request),
        Err(ReadError::Closed) => return,
        Err(e) => Err(ApiError::with_status(e.status(), e.message())),
    };
    if let Err(e) = outcome {
        let allow = e.allow.map(|m| ("Allow", m));
        let _ = http::write_json(&mut stream, e.status, &e.body(), allow.as_slice());
    }
    http::close(stream);
}

/// Dispatch by path and method. Successful replies are written here; an error is returned
/// for the caller to write (only before any reply bytes went out).
fn route(server: &Server, stream: &mut TcpStream, r: &Request) -> Result<(), ApiError> {
    let id = &server.engine.info.id;
    let get = r.method == "GET";
    let post = r.method == "POST";
    match r.path.as_str() {
        "/health" | "/v1/models" if !get => Err(method_not_allowed("GET")),
        // Connections open now, this one included.
        "/health" => ok(
            stream,
            &json!({
                "status": "ok",
                "jobs": server.engine.pending(),
                "connections": server.open.load(Ordering::SeqCst),
            }),
        ),
        "/v1/models" => ok(
            stream,
            &json!({"object": "list", "data": [model_card(server)]}),
        ),
        "/v1/chat/completions" | "/v1/completions" if !post => Err(method_not_allowed("POST")),
        "/v1/chat/completions" => complete(server, stream, Endpoint::Chat, &r.body),
        "/v1/completions" => complete(server, stream, Endpoint::Text, &r.body),
        p => match p.strip_prefix("/v1/models/") {
            Some(_) if !get => Err(method_not_allowed("GET")),
            Some(m) if m == id => ok(stream, &model_card(server)),
            Some(m) => Err(ApiError::with_status(
                404,
                format!("The model '{m}' does not exist; this server has '{id}'"),
            )),
            None => Err(ApiError::with_status(404, format!("no such path: {p}"))),
        },
    }
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    let mut e = ApiError::with_status(405, format!("this path takes only {allow}"));
    e.allow = Some(allow);
    e
}

fn ok(stream: &mut TcpStream, body: &Value) -> Result<(), ApiError> {
    // A client that left before its reply needs no error.
    let _ = http::write_json(stream, 200, body, &[]);
    Ok(())
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

/// Run a completion request and write its reply, whole or streamed.
fn complete(
    server: &Server,
    stream: &mut TcpStream,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<(), ApiError> {
    let request = openai::parse(endpoint, body)?;
    let serial = server.serial.fetch_add(1, Ordering::SeqCst);
    let meta = ReplyMeta::new(endpoint, &server.engine.info.id, serial);
    let started = Instant::now();
    let mut job = RunningJob::submit(&server.engine, &request, stream)?;
    // Wait in the queue; a prompt the engine refuses is still the client's error.
    let prompt_tokens = match job.next() {
        None => {
            log_gone(endpoint, "while queued", started);
            return Ok(());
        }
        Some(Event::Started { prompt_tokens }) => prompt_tokens,
        Some(Event::Failed(e)) => return Err(ApiError::invalid(e, Some(prompt_param(endpoint)))),
        Some(Event::Done(s)) => return finish_early(stream, &meta, &request, s),
        Some(Event::Piece(_)) => return Err(ApiError::with_status(500, "engine protocol error")),
    };
    let outcome = if request.stream {
        stream_reply(&mut job, &meta, request.include_usage)
    } else {
        whole_reply(&mut job, &meta)
    };
    match outcome {
        Outcome::Done(s) => log(endpoint, &s, started),
        Outcome::Gone => log_gone(
            endpoint,
            &format!("with {prompt_tokens} prompt tokens"),
            started,
        ),
        Outcome::Failed(e) => {
            eprintln!("{}: failed: {e}", path_of(endpoint));
            // Only a whole reply can still answer with an error status.
            if !request.stream {
                return Err(ApiError::with_status(500, e));
            }
        }
    }
    Ok(())
}

/// How a started job ended for its connection.
enum Outcome {
    Done(Summary),
    /// The client left; the job was cancelled.
    Gone,
    Failed(String),
}

fn log_gone(endpoint: Endpoint, when: &str, started: Instant) {
    eprintln!(
        "{}: cancelled (client gone) {when} after {:.2} s",
        path_of(endpoint),
        started.elapsed().as_secs_f64()
    );
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

fn log(endpoint: Endpoint, s: &Summary, started: Instant) {
    let cancelled = if s.finish == Finish::Cancelled {
        " (cancelled)"
    } else {
        ""
    };
    eprintln!(
        "{}: {} prompt tokens ({} reused) + {} completion tokens, finish {}{cancelled}, \
         first token {:.3} s, {:.1} tokens/s, total {:.2} s",
        path_of(endpoint),
        s.prompt_tokens,
        s.reused_tokens,
        s.completion_tokens,
        s.finish.reason(),
        s.first_token_seconds,
        s.tokens_per_second,
        started.elapsed().as_secs_f64()
    );
}

/// A job ended before it started: cancelled by us (the client is gone, write nothing).
fn finish_early(
    stream: &mut TcpStream,
    meta: &ReplyMeta,
    request: &CompletionRequest,
    s: Summary,
) -> Result<(), ApiError> {
    if s.finish == Finish::Cancelled || request.stream {
        return Ok(());
    }
    ok(stream, &meta.reply(&s))
}

/// A queued job seen from its connection: events in, cancellation out.
struct RunningJob<'s> {
    events: mpsc::Receiver<Event>,
    cancel: Arc<AtomicBool>,
    stream: &'s mut TcpStream,
}

impl<'s> RunningJob<'s> {
    fn submit(
        engine: &Engine,
        r: &CompletionRequest,
        stream: &'s mut TcpStream,
    ) -> Result<RunningJob<'s>, ApiError> {
        let (tx, events) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        engine
            .submit(Job {
                prompt: r.prompt.clone(),
                request: r.request.clone(),
                streamed: r.stream,
                cancel: cancel.clone(),
                events: tx,
            })
            .map_err(|e| ApiError::with_status(503, e))?;
        Ok(RunningJob {
            events,
            cancel,
            stream,
        })
    }

    /// The next event, or None once the client has gone (the job is then cancelled).
    fn next(&mut self) -> Option<Event> {
        loop {
            match self.events.recv_timeout(POLL) {
                Ok(event) => return Some(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if http::peer_closed(self.stream) {
                        self.stop();
                        return None;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Some(Event::Failed("the engine stopped".into()))
                }
            }
        }
    }

    fn stop(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Send one event; a failed write means the client left, which cancels the job.
    fn send(&mut self, data: &str) -> bool {
        let sent = http::write_event(self.stream, data).is_ok();
        if !sent {
            self.stop();
        }
        sent
    }
}

/// Collect the reply and write it whole.
fn whole_reply(job: &mut RunningJob, meta: &ReplyMeta) -> Outcome {
    loop {
        match job.next() {
            None => return Outcome::Gone,
            Some(Event::Started { .. } | Event::Piece(_)) => {}
            Some(Event::Done(s)) if s.finish == Finish::Cancelled => return Outcome::Gone,
            Some(Event::Done(s)) => {
                let _ = ok(job.stream, &meta.reply(&s));
                return Outcome::Done(s);
            }
            Some(Event::Failed(e)) => return Outcome::Failed(e),
        }
    }
}

/// Stream the reply as server-sent events.
fn stream_reply(job: &mut RunningJob, meta: &ReplyMeta, include_usage: bool) -> Outcome {
    if http::start_events(job.stream).is_err() {
        job.stop();
        return Outcome::Gone;
    }
    if meta.endpoint == Endpoint::Chat
        && !job.send(&meta.chunk(true, "", None, include_usage).to_string())
    {
        return Outcome::Gone;
    }
    loop {
        let Some(event) = job.next() else {
            return Outcome::Gone;
        };
        match event {
            Event::Started { .. } => {}
            Event::Piece(text) => {
                if !job.send(&meta.chunk(false, &text, None, include_usage).to_string()) {
                    return Outcome::Gone;
                }
            }
            Event::Done(s) if s.finish == Finish::Cancelled => return Outcome::Gone,
            Event::Done(s) => {
                let reason = Some(s.finish.reason());
                job.send(&meta.chunk(false, "", reason, include_usage).to_string());
                if include_usage {
                    job.send(&meta.usage_chunk(&s).to_string());
                }
                job.send("[DONE]");
                return Outcome::Done(s);
            }
            Event::Failed(e) => {
                // The 200 is already out: the error goes in the stream, as OpenAI's do.
                job.send(&ApiError::with_status(500, e.clone()).body().to_string());
                return Outcome::Failed(e);
            }
        }
    }
}

//! `kestrel serve`: an OpenAI-compatible HTTP server on one model, on axum and hyper over a
//! small tokio runtime. Requests queue jobs on the engine, whose single worker thread runs
//! them in arrival order; a client that disconnects cancels its job, whether it is running or
//! still waiting in the queue.

mod api;
mod conn;
mod metrics;
mod reply;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::ServeArgs;
use crate::engine::{Engine, EngineConfig};
use crate::open_gpu;
use api::{Cors, Server};

/// How long open replies may run on after SIGINT/SIGTERM.
const GRACE: Duration = Duration::from_secs(10);
/// Tokio's worker threads: they only move bytes (the engine has its own thread).
const WORKERS: usize = 2;
/// Connections the kernel holds until they are accepted.
const BACKLOG: u32 = 1024;

pub fn run(a: &ServeArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("kestrel-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the server's runtime: {e}"))?;
    let (host, port) = (a.host.as_str(), a.port);
    // Bind first so a taken port fails before the model loads.
    let listener = runtime
        .block_on(listen(host, port))
        .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let gpu = open_gpu(&a.device)?;
    a.precision.apply(&gpu)?;
    let config = EngineConfig {
        path: a.model.clone(),
        ctx: a.ctx,
        attention: a.attention.options(),
        offline: a.fetch.offline,
        speculation: a.speculate.speculation(),
        max_batch: a.max_batch,
        kv_pool: a.kv_pool,
    };
    let engine = Engine::start(gpu, config, |m| eprintln!("{m}"))?;
    let i = &engine.info;
    if let Some(s) = &i.speculation {
        eprintln!("speculative decoding: {s}");
    }
    if let Some(pool) = i.kv_pool {
        eprintln!(
            "continuous batching: up to {} requests at once, a KV pool of {pool} tokens ({:.1} MiB)",
            i.max_batch,
            i.state_bytes as f64 / (1 << 20) as f64
        );
    }
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
    let cors = match a.cors_origin.as_slice() {
        [] => None,
        o if o.iter().any(|o| o == "*") => Some(Cors::Any),
        o => Some(Cors::Origins(o.to_vec())),
    };
    let server = Arc::new(Server {
        engine,
        max_body: a.max_body,
        max_queue: a.max_queue,
        max_connections: a.max_connections,
        request_timeout: Duration::from_secs_f64(a.request_timeout),
        max_reply: a.max_reply_seconds.map(Duration::from_secs_f64),
        cors,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        open: AtomicUsize::new(0),
        serial: AtomicU64::new(0),
        metrics: metrics::Metrics::new(),
    });
    let router = api::router(server.clone());
    runtime.block_on(conn::serve(listener, server, router, GRACE))?;
    // Replies still running after the grace period are not waited for.
    runtime.shutdown_background();
    Ok(())
}

/// A listening socket whose backlog holds a burst of connections (std's holds 128).
async fn listen(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the host has no address")))
}

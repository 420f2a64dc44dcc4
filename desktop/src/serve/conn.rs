//! Connections: accepted on tokio, served by hyper's HTTP/1.1 (keep-alive, chunked bodies)
//! with the axum router, each under --max-connections (more are answered 503 at once) and a
//! request deadline (--request-timeout: a request not read whole by then gets a 408; an idle
//! kept-alive connection is closed quietly, and so is one whose client stopped reading its
//! reply for as long, which cancels the job), and all of them drained on SIGINT/SIGTERM.

use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower_service::Service;

use super::api::{too_slow, ReadDeadline, Server};
use kestrel::serve::openai::ApiError;

/// The largest request head (request line and headers); a larger one gets a 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Accept and serve until SIGINT or SIGTERM, then stop accepting and give open replies up to
/// `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    router: Router,
    grace: Duration,
) -> Result<(), String> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true)
        // The request deadline is ours (below), answered with a 408.
        .header_read_timeout(None);
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("listening on http://{addr}");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => accept(&server, &graceful, &http, &router, stream),
                Err(e) => {
                    // Out of file descriptors, say: let connections close before the next.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            signal = &mut stop => {
                eprintln!("{signal}: no new connections; letting open replies finish (up to {} s)",
                    grace.as_secs_f64());
                break;
            }
        }
    }
    drop(listener);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => eprintln!("all connections closed; exiting"),
        Err(_) => eprintln!(
            "grace period over with {} connections open; exiting",
            server.open.load(Ordering::SeqCst)
        ),
    }
    Ok(())
}

/// Which signal ended the server. The handlers are installed when this is called (before
/// "listening" is printed), not when the future is first polled.
fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let caught = |kind| signal(kind).map_err(|e| format!("cannot catch signals: {e}"));
        let (mut int, mut term) = (
            caught(SignalKind::interrupt())?,
            caught(SignalKind::terminate())?,
        );
        Ok(async move {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

fn accept(
    server: &Arc<Server>,
    graceful: &GracefulShutdown,
    http: &hyper::server::conn::http1::Builder,
    router: &Router,
    stream: TcpStream,
) {
    if server.open.fetch_add(1, Ordering::SeqCst) >= server.max_connections {
        server.open.fetch_sub(1, Ordering::SeqCst);
        server.metrics.request("other", 503);
        let e = ApiError::with_status(503, "too many connections; try again later");
        tokio::spawn(refuse(stream, e));
        return;
    }
    let open = Open(server.clone());
    let _ = stream.set_nodelay(true);
    // A second handle on the socket, to answer a request that missed its deadline while
    // hyper holds the first (hyper closes such connections without a reply).
    let (stream, side) = match split_handle(stream) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("cannot use a connection: {e}");
            return;
        }
    };
    let clock = Arc::new(Mutex::new(Clock {
        busy: 0,
        idle_since: Instant::now(),
        served: false,
        stalled_since: None,
    }));
    let timeout = server.request_timeout;
    let service = {
        let (clock, router) = (clock.clone(), router.clone());
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let busy = Busy::start(&clock);
            let deadline = busy.deadline(timeout);
            request.extensions_mut().insert(ReadDeadline(deadline));
            let mut router = router.clone();
            async move {
                // The router is always ready (axum's Router::poll_ready).
                let reply = router.call(request).await?;
                Ok::<_, std::convert::Infallible>(reply.map(|body| Guarded { body, busy }))
            }
        })
    };
    let io = Watched {
        io: TokioIo::new(stream),
        clock: clock.clone(),
    };
    let connection = graceful.watch(http.serve_connection(io, service));
    let server = server.clone();
    tokio::spawn(async move {
        let _open = open;
        let mut connection = Box::pin(connection);
        loop {
            let wake = Clock::wake_at(&clock, timeout);
            tokio::select! {
                _ = &mut connection => return,
                _ = tokio::time::sleep_until(wake) => match Clock::expired(&clock, timeout) {
                    Expired::No => {}
                    // A kept-alive connection with no new request, or a client that stopped
                    // reading its reply: close it (the reply's job is cancelled).
                    Expired::Idle | Expired::Stalled => return,
                    Expired::Request => break,
                },
            }
        }
        // The first request was not read whole in time: answer 408 on the second handle,
        // then close (hyper's handle first).
        server.metrics.request("other", 408);
        let mut side = side;
        let _ = side.write_all(&raw_reply(&too_slow(timeout)));
        drop(connection);
        if let Ok(side) = TcpStream::from_std(side) {
            linger_close(side).await;
        }
    });
}

/// The socket for hyper and a second (std, non-blocking) handle on it.
fn split_handle(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let side = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, side))
}

/// Counts an open connection until dropped.
struct Open(Arc<Server>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's request deadline: it runs while no request is being answered.
struct Clock {
    /// Requests being answered (their replies not yet all written).
    busy: usize,
    idle_since: Instant,
    /// A request was answered on this connection (it is kept alive).
    served: bool,
    /// Since when a write has been waiting for the client to read.
    stalled_since: Option<Instant>,
}

enum Expired {
    No,
    Idle,
    Request,
    Stalled,
}

impl Clock {
    fn lock(clock: &Mutex<Clock>) -> std::sync::MutexGuard<'_, Clock> {
        clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When to look again: the deadline, or (while busy) a full timeout from now, which is
    /// never after the deadline of the next request.
    fn wake_at(clock: &Mutex<Clock>, timeout: Duration) -> Instant {
        let c = Clock::lock(clock);
        if c.busy > 0 {
            let later = Instant::now() + timeout;
            c.stalled_since.map_or(later, |t| later.min(t + timeout))
        } else {
            c.idle_since + timeout
        }
    }

    fn expired(clock: &Mutex<Clock>, timeout: Duration) -> Expired {
        let c = Clock::lock(clock);
        let now = Instant::now();
        if c.stalled_since.is_some_and(|t| now >= t + timeout) {
            Expired::Stalled
        } else if c.busy > 0 || now < c.idle_since + timeout {
            Expired::No
        } else if c.served {
            Expired::Idle
        } else {
            Expired::Request
        }
    }
}

/// A request being answered, from its head until its reply's body is dropped (all written,
/// or the connection gone).
struct Busy(Arc<Mutex<Clock>>);

impl Busy {
    fn start(clock: &Arc<Mutex<Clock>>) -> Busy {
        Clock::lock(clock).busy += 1;
        Busy(clock.clone())
    }

    /// The request must be read whole by then: its connection's idle time counts.
    fn deadline(&self, timeout: Duration) -> Instant {
        Clock::lock(&self.0).idle_since + timeout
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut c = Clock::lock(&self.0);
        c.busy -= 1;
        if c.busy == 0 {
            c.idle_since = Instant::now();
            c.served = true;
        }
    }
}

/// A reply body that holds its request's [`Busy`] until hyper drops it.
struct Guarded {
    body: Body,
    #[allow(dead_code)] // held for its Drop
    busy: Busy,
}

impl HttpBody for Guarded {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket for hyper, noting when writes stall (a client that stopped
/// reading).
struct Watched {
    io: TokioIo<TcpStream>,
    clock: Arc<Mutex<Clock>>,
}

impl Watched {
    /// A write that waits starts the stall clock (unless it runs); one that goes through
    /// stops it.
    fn note<T>(&self, p: Poll<T>) -> Poll<T> {
        let mut c = Clock::lock(&self.clock);
        match p {
            Poll::Pending => {
                c.stalled_since.get_or_insert_with(Instant::now);
            }
            Poll::Ready(_) => c.stalled_since = None,
        }
        p
    }
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(p)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A socket's flush is always ready: it says nothing of the client reading.
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A whole HTTP/1.1 reply, written by hand where hyper does not hold the connection.
fn raw_reply(e: &ApiError) -> Vec<u8> {
    let body = e.body().to_string();
    let reason = StatusCode::from_u16(e.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        e.status,
        body.len()
    )
    .into_bytes()
}

/// Refuse a connection over the limit with `e`.
async fn refuse(mut stream: TcpStream, e: ApiError) {
    // Take what the client already sent (without waiting), so closing with unread bytes does
    // not reset the connection before it reads the reply.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    if stream.write_all(&raw_reply(&e)).await.is_ok() {
        linger_close(stream).await;
    }
}

/// Close after a reply. Unread request bytes would make the kernel reset the connection and
/// could destroy the reply before the client reads it, so drain them for a moment first.
async fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    while drained < 4 << 20 {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(busy: usize, served: bool, idle_for: u64, stalled_for: Option<u64>) -> Mutex<Clock> {
        let ago = |s: u64| Instant::now() - Duration::from_secs(s);
        Mutex::new(Clock {
            busy,
            idle_since: ago(idle_for),
            served,
            stalled_since: stalled_for.map(ago),
        })
    }

    /// (The end-to-end tests cannot stall a write: the fixture's longest replies fit in the
    /// loopback socket's buffers.)
    #[test]
    fn deadlines_end_slow_requests_idle_connections_and_stalled_replies() {
        let t = Duration::from_secs(5);
        let expired = |c: &Mutex<Clock>| match Clock::expired(c, t) {
            Expired::No => "no",
            Expired::Idle => "idle",
            Expired::Request => "request",
            Expired::Stalled => "stalled",
        };
        // Nothing sent within the deadline: a 408.
        assert_eq!(expired(&clock(0, false, 1, None)), "no");
        assert_eq!(expired(&clock(0, false, 6, None)), "request");
        // Kept alive and idle past it: closed quietly.
        assert_eq!(expired(&clock(0, true, 6, None)), "idle");
        // A reply being written never expires, unless its writes stall that long.
        assert_eq!(expired(&clock(1, true, 60, None)), "no");
        assert_eq!(expired(&clock(1, true, 60, Some(1))), "no");
        assert_eq!(expired(&clock(1, true, 60, Some(6))), "stalled");
        // The connection wakes by the stall's deadline, not a full timeout later.
        let c = clock(1, true, 60, Some(4));
        assert!(Clock::wake_at(&c, t) <= Instant::now() + Duration::from_secs(1));
    }
}

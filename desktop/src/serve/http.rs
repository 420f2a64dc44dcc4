//! Just enough HTTP/1.1 for the server: one request per connection (every reply says
//! `Connection: close`), bodies sized by Content-Length, replies either whole or as a
//! server-sent event stream that ends when the connection closes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// The most bytes a request line plus headers may take.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What reading a request needs from a connection: bytes in (and out, for `100 Continue`)
/// and a read timeout, shortened before every read so the whole request meets its deadline.
pub trait Connection: Read + Write {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl Connection for TcpStream {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        TcpStream::set_read_timeout(self, Some(timeout))
    }
}

pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request was read. All but `Closed` are answered with an error status.
#[derive(Debug, PartialEq)]
pub enum ReadError {
    /// The peer went away (or timed out) before sending a request: nothing to answer.
    Closed,
    Malformed(String),
    HeaderTooLarge,
    BodyTooLarge {
        limit: usize,
    },
    LengthRequired,
    /// The request was not complete by its deadline (a slow or stalled client).
    Timeout {
        seconds: f64,
    },
}

impl ReadError {
    pub fn status(&self) -> u16 {
        match self {
            ReadError::Closed | ReadError::Malformed(_) => 400,
            ReadError::HeaderTooLarge => 431,
            ReadError::BodyTooLarge { .. } => 413,
            ReadError::LengthRequired => 411,
            ReadError::Timeout { .. } => 408,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ReadError::Closed => "the connection closed".into(),
            ReadError::Malformed(m) => m.clone(),
            ReadError::HeaderTooLarge => {
                format!("the request header is over {MAX_HEADER_BYTES} bytes")
            }
            ReadError::BodyTooLarge { limit } => {
                format!("the request body is over the limit of {limit} bytes (--max-body)")
            }
            ReadError::LengthRequired => {
                "the request needs a Content-Length (chunked bodies are not supported)".into()
            }
            ReadError::Timeout { seconds } => {
                format!("the request was not complete within {seconds} s (--request-timeout)")
            }
        }
    }
}

/// Read one request, all of it before `deadline`; the body is read only when its
/// Content-Length is within `max_body`.
pub fn read_request(
    stream: &mut impl Connection,
    max_body: usize,
    deadline: Deadline,
) -> Result<Request, ReadError> {
    let (mut buf, head_end) = read_head(stream, deadline)?;
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Malformed("the request header is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let (method, target) = parse_request_line(lines.next().unwrap_or(""))?;
    let headers = lines.map(parse_header).collect::<Result<Vec<_>, _>>()?;
    let mut request = Request {
        method,
        path: target.split('?').next().unwrap_or("").to_string(),
        headers,
        body: Vec::new(),
    };
    let length = body_length(&request)?;
    if length > max_body {
        return Err(ReadError::BodyTooLarge { limit: max_body });
    }
    if length > 0 {
        if request
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| ReadError::Closed)?;
        }
        let mut body = buf.split_off(head_end + 4);
        body.truncate(length);
        // Reads stop at `length`, so the body never grows past the limit checked above.
        let mut chunk = [0u8; 4096];
        while body.len() < length {
            let want = (length - body.len()).min(chunk.len());
            match read_some(stream, &mut chunk[..want], deadline)? {
                0 => {
                    return Err(ReadError::Malformed(
                        "the request body is shorter than its Content-Length".into(),
                    ))
                }
                n => body.extend_from_slice(&chunk[..n]),
            }
        }
        request.body = body;
    }
    Ok(request)
}

/// Read up to the blank line after the headers; returns the bytes read and where it starts.
/// The request line is checked as soon as it arrives, so garbage is refused at once.
fn read_head(
    stream: &mut impl Connection,
    deadline: Deadline,
) -> Result<(Vec<u8>, usize), ReadError> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let mut line_checked = false;
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            if end > MAX_HEADER_BYTES {
                return Err(ReadError::HeaderTooLarge);
            }
            return Ok((buf, end));
        }
        if !line_checked {
            if let Some(end) = find(&buf, b"\n") {
                let line = String::from_utf8_lossy(&buf[..end]);
                parse_request_line(line.trim_end_matches('\r'))?;
                line_checked = true;
            }
        }
        if buf.len() > MAX_HEADER_BYTES {
            return Err(ReadError::HeaderTooLarge);
        }
        let n = read_some(stream, &mut chunk, deadline)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Malformed("the connection closed inside the request header".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// When a request must be complete: its start plus the allowed time.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: Instant,
    pub seconds: f64,
}

impl Deadline {
    pub fn after(allowed: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + allowed,
            seconds: allowed.as_secs_f64(),
        }
    }
}

/// One read that returns by the deadline: 0 at end of stream, `Timeout` once it has passed.
fn read_some(
    stream: &mut impl Connection,
    buf: &mut [u8],
    deadline: Deadline,
) -> Result<usize, ReadError> {
    let timeout = ReadError::Timeout {
        seconds: deadline.seconds,
    };
    loop {
        let left = deadline.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout);
        }
        stream
            .set_read_timeout(left)
            .map_err(|_| ReadError::Closed)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout (WouldBlock or TimedOut, by platform): the loop checks the clock.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Err(ReadError::Closed),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `METHOD /target HTTP/1.x` → (method, target).
fn parse_request_line(line: &str) -> Result<(String, String), ReadError> {
    let bad = || ReadError::Malformed(format!("malformed request line '{}'", clip(line, 80)));
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let token = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !token || !target.starts_with('/') || !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(bad());
    }
    Ok((method.to_string(), target.to_string()))
}

fn parse_header(line: &str) -> Result<(String, String), ReadError> {
    match line.split_once(':') {
        Some((name, value)) if !name.is_empty() && !name.contains(char::is_whitespace) => {
            Ok((name.to_string(), value.trim().to_string()))
        }
        _ => Err(ReadError::Malformed(format!(
            "malformed header line '{}'",
            clip(line, 80)
        ))),
    }
}

fn body_length(request: &Request) -> Result<usize, ReadError> {
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::LengthRequired);
    }
    match request.header("content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| ReadError::Malformed(format!("bad Content-Length '{}'", clip(v, 40)))),
        None if request.method == "POST" => Err(ReadError::LengthRequired),
        None => Ok(0),
    }
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A whole reply with a JSON body.
pub fn write_json(
    stream: &mut TcpStream,
    status: u16,
    body: &serde_json::Value,
    extra_headers: &[(&str, &str)],
) -> io::Result<()> {
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// The head of a server-sent event stream; its body ends when the connection closes.
pub fn start_events(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          Connection: close\r\n\r\n",
    )?;
    stream.flush()
}

/// One `data:` event.
pub fn write_event(stream: &mut TcpStream, data: &str) -> io::Result<()> {
    stream.write_all(format!("data: {data}\n\n").as_bytes())?;
    stream.flush()
}

/// True when the peer has closed its end (or the socket failed). Never blocks.
pub fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    };
    closed || stream.set_nonblocking(false).is_err()
}

/// Close after a reply. Unread request bytes (a refused oversized body) would make the
/// kernel reset the connection and could destroy the reply before the client reads it,
/// so drain them for a moment first.
pub fn close(mut stream: TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    while drained < 4 << 20 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_checked() {
        assert_eq!(
            parse_request_line("GET /health HTTP/1.1"),
            Ok(("GET".to_string(), "/health".to_string()))
        );
        for bad in [
            "",
            "GARBAGE",
            "GET /x",
            "get /x HTTP/1.1",
            "GET x HTTP/1.1",
            "GET /x HTTP/2",
            "GET /x HTTP/1.1 extra",
        ] {
            assert!(parse_request_line(bad).is_err(), "{bad}");
        }
    }

    /// A client that sends `bytes` and then neither sends more nor closes (reads time out).
    struct Stalled {
        bytes: io::Cursor<Vec<u8>>,
    }

    impl Read for Stalled {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.bytes.read(buf)? {
                0 => {
                    std::thread::sleep(Duration::from_millis(5));
                    Err(io::ErrorKind::WouldBlock.into())
                }
                n => Ok(n),
            }
        }
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Connection for Stalled {
        fn set_read_timeout(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    fn read(bytes: &[u8], allowed: Duration) -> Result<Request, ReadError> {
        let mut c = Stalled {
            bytes: io::Cursor::new(bytes.to_vec()),
        };
        read_request(&mut c, 100, Deadline::after(allowed))
    }

    #[test]
    fn the_deadline_ends_stalled_heads_and_bodies() {
        let long = Duration::from_secs(60);
        let r = read(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", long).expect("whole");
        assert_eq!(r.body, b"abc");
        let short = Duration::from_millis(50);
        for partial in [
            &b""[..],
            b"GET /health HTTP/1.1\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nab",
        ] {
            let t = Instant::now();
            let e = read(partial, short).err();
            assert_eq!(e.as_ref().map(ReadError::status), Some(408), "{partial:?}");
            assert!(t.elapsed() < Duration::from_secs(5));
        }
    }

    #[test]
    fn headers_are_split_and_trimmed() {
        assert_eq!(
            parse_header("Content-Length:  12 "),
            Ok(("Content-Length".to_string(), "12".to_string()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}

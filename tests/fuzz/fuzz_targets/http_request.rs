//! The server's HTTP/1.1 request reader on arbitrary bytes, as a client would send them:
//! it must return a request or a typed error (with a 4xx status), never panic, and never
//! hold a body past the size limit or its Content-Length.
#![no_main]

use std::io::{self, Cursor, Read, Write};
use std::time::Duration;

use kestrel::serve::http::{read_request, Connection, Deadline, ReadError};
use libfuzzer_sys::fuzz_target;

/// The client's bytes in, the server's interim replies (100 Continue) out.
struct Client {
    sent: Cursor<Vec<u8>>,
    replies: Vec<u8>,
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sent.read(buf)
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.replies.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Connection for Client {
    fn set_read_timeout(&mut self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

const MAX_BODY: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut client = Client {
        sent: Cursor::new(data.to_vec()),
        replies: Vec::new(),
    };
    match read_request(&mut client, MAX_BODY, Deadline::after(Duration::from_secs(3600))) {
        Ok(r) => {
            assert!(r.body.len() <= MAX_BODY);
            assert!(r.path.starts_with('/'));
            let length = r.header("content-length").and_then(|v| v.parse::<usize>().ok());
            assert_eq!(r.body.len(), length.unwrap_or(0));
        }
        Err(e) => {
            assert!((400..500).contains(&e.status()), "{e:?}");
            assert!(!e.message().is_empty());
            // Nothing arrives late from a buffer: the deadline is an hour away.
            assert!(!matches!(e, ReadError::Timeout { .. }));
        }
    }
});

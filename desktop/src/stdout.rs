//! Standard output that ends the program quietly once its reader has gone (`kestrel info |
//! head -1`). Rust ignores SIGPIPE, so a write to a closed pipe fails with `BrokenPipe`,
//! on which `println!` would panic. Only stdout is handled here: restoring SIGPIPE for the
//! whole process would also end `serve` when a client disconnects.

use std::fmt;
use std::io::{ErrorKind, Write};

/// How a program that a closed pipe ended exits (128 + SIGPIPE), as shells report it.
const CLOSED_PIPE_STATUS: i32 = 141;

/// Write `args` to stdout, flushed when `flush` (text without a newline that should show
/// now). A closed pipe ends the program with status 141 and nothing on stderr; any other
/// failure with one error line.
pub fn write(args: fmt::Arguments, flush: bool) {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| match flush {
        true => out.flush(),
        false => Ok(()),
    });
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(CLOSED_PIPE_STATUS),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// `print!` that flushes, and ends the program quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*), true)
    };
}

/// `println!` that ends the program quietly on a closed pipe.
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"), false)
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)), false)
    };
}

pub(crate) use {out, outln};

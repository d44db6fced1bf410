//! The request a tailsrv client sends: one line, then the server only talks.
//!
//! The protocol is deliberately what a person can type into `nc`: an ASCII integer and a
//! newline. `N` streams from byte N (waiting until the file is that long), `-N` streams the
//! last N bytes, `-0` streams from the current end. Everything after the newline is ignored,
//! and there is no in-band control: to seek, a client reconnects.
//!
//! In directory mode the line names a file instead: `list`, or `stream PATH [from byte N|-N]`
//! (see [`parse_dir`]).
//!
//! Reading the line is bounded in size and in time, so a client that sends garbage, or
//! nothing, costs a few bytes and is told why it is being dropped.

use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

use async_io::{Async, Timer};

/// Longest header line we accept, newline included.
pub const MAX_HEADER_LEN: usize = 64;

/// Longest path a directory-mode request may name, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;

/// Longest directory-mode request line: `stream `, a path, ` from byte -N`, newline.
pub const MAX_DIR_HEADER_LEN: usize = MAX_PATH_LEN + 64;

/// Where a client wants its stream to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `N`: from this byte offset (the file may not be that long yet).
    Byte(u64),
    /// `-N`: this many bytes before the end of the file; `-0` is the current end.
    FromEnd(u64),
}

impl Start {
    /// The byte offset this start resolves to in a file that is `len` bytes long now.
    pub fn resolve(self, len: u64) -> u64 {
        match self {
            Start::Byte(n) => n,
            Start::FromEnd(n) => len.saturating_sub(n),
        }
    }
}

/// Why a header was refused. The `Display` text is what the client is sent after `error: `.
#[derive(Debug)]
pub enum HeaderError {
    /// The line is not an integer (the offending text is kept, shortened, for the answer).
    NotAnInteger(String),
    /// An integer, but not one that fits a file offset.
    OutOfRange(String),
    /// No newline within this many bytes.
    TooLong(usize),
    /// Directory mode: not `list` or `stream PATH [from byte N]`.
    UnknownCommand(String),
    /// The client did not finish its line in time.
    Timeout(Duration),
    /// The client hung up before finishing its line.
    Closed,
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NotAnInteger(s) => {
                write!(f, "header is not an integer byte offset (N or -N): {s:?}")
            }
            HeaderError::OutOfRange(s) => write!(f, "offset out of range: {s:?}"),
            HeaderError::TooLong(max) => {
                write!(f, "header longer than {max} bytes without a newline")
            }
            HeaderError::UnknownCommand(s) => write!(
                f,
                "unknown request {s:?}: this server serves a directory; send `list` or \
                 `stream PATH [from byte N|-N]`"
            ),
            HeaderError::Timeout(d) => write!(f, "no complete header within {}s", d.as_secs_f64()),
            HeaderError::Closed => write!(f, "connection closed before the header was complete"),
            HeaderError::Io(e) => write!(f, "reading header: {e}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Parses one header line (without its `\n`; a trailing `\r` and surrounding blanks are allowed).
pub fn parse(line: &[u8]) -> Result<Start, HeaderError> {
    let text = trim_line(line);
    let shown = || String::from_utf8_lossy(text).into_owned();
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HeaderError::NotAnInteger(shown()));
    }
    // All ASCII digits, so this is valid UTF-8 and the only possible error is overflow.
    let n: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HeaderError::OutOfRange(shown()))?;
    Ok(if negative {
        Start::FromEnd(n)
    } else {
        Start::Byte(n)
    })
}

/// A directory-mode request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirRequest {
    /// `list`: the servable paths, one per line.
    List,
    /// `stream PATH [from byte N|-N]`: follow one file; without `from byte`, from its end.
    Stream { path: Vec<u8>, start: Start },
}

/// Parses a directory-mode request line. The path is returned as sent (it may contain
/// spaces); whether it may be served is for [`crate::tree`] to decide.
pub fn parse_dir(line: &[u8]) -> Result<DirRequest, HeaderError> {
    let text = line.strip_suffix(b"\r").unwrap_or(line);
    let unknown = || HeaderError::UnknownCommand(String::from_utf8_lossy(text).into_owned());
    if text.trim_ascii() == b"list" {
        return Ok(DirRequest::List);
    }
    let rest = text.strip_prefix(b"stream ").ok_or_else(unknown)?;
    const FROM: &[u8] = b" from byte ";
    let (path, start) = match memchr::memmem::rfind(rest, FROM) {
        Some(i) => (&rest[..i], parse(&rest[i + FROM.len()..])?),
        None => (rest, Start::FromEnd(0)),
    };
    if path.is_empty() {
        return Err(unknown());
    }
    Ok(DirRequest::Stream {
        path: path.to_vec(),
        start,
    })
}

/// Strips a trailing `\r` and blanks around a line.
pub fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.trim_ascii()
}

/// Reads bytes until the first `\n`, at most `max` bytes, within `timeout`.
///
/// Returns the line without its newline. Bytes that arrived after the newline in the same
/// read are dropped: the protocol says they are ignored. An empty read means the peer hung up.
pub async fn read_line(
    sock: &Async<TcpStream>,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, HeaderError> {
    let read = async {
        let mut buf = vec![0u8; max];
        let mut filled = 0;
        loop {
            let n = sock
                .read_with(|s| (&*s).read(&mut buf[filled..]))
                .await
                .map_err(HeaderError::Io)?;
            if n == 0 {
                return Err(HeaderError::Closed);
            }
            if let Some(i) = memchr::memchr(b'\n', &buf[filled..filled + n]) {
                buf.truncate(filled + i);
                return Ok(buf);
            }
            filled += n;
            if filled == max {
                return Err(HeaderError::TooLong(max));
            }
        }
    };
    let deadline = async {
        Timer::after(timeout).await;
        Err(HeaderError::Timeout(timeout))
    };
    futures_lite::future::or(read, deadline).await
}

/// Reads and parses a tailsrv header.
pub async fn read_header(sock: &Async<TcpStream>, timeout: Duration) -> Result<Start, HeaderError> {
    let line = read_line(sock, MAX_HEADER_LEN, timeout).await?;
    parse(&line)
}

/// Reads and parses a directory-mode request.
pub async fn read_dir_request(
    sock: &Async<TcpStream>,
    timeout: Duration,
) -> Result<DirRequest, HeaderError> {
    let line = read_line(sock, MAX_DIR_HEADER_LEN, timeout).await?;
    parse_dir(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse(b"0").unwrap(), Start::Byte(0));
        assert_eq!(parse(b"1000\r").unwrap(), Start::Byte(1000));
        assert_eq!(parse(b" 42 ").unwrap(), Start::Byte(42));
        assert_eq!(parse(b"-0").unwrap(), Start::FromEnd(0));
        assert_eq!(parse(b"-17").unwrap(), Start::FromEnd(17));
        assert_eq!(
            parse(b"18446744073709551615").unwrap(),
            Start::Byte(u64::MAX)
        );
    }

    #[test]
    fn refusals() {
        for bad in [
            &b""[..],
            b"-",
            b"+5",
            b"12a",
            b"1 2",
            b"--1",
            b"abc",
            b"\xff",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::NotAnInteger(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(b"18446744073709551616"),
            Err(HeaderError::OutOfRange(_))
        ));
    }

    #[test]
    fn dir_requests() {
        assert_eq!(parse_dir(b"list").unwrap(), DirRequest::List);
        assert_eq!(parse_dir(b"list\r").unwrap(), DirRequest::List);
        let stream = |p: &[u8], start| DirRequest::Stream {
            path: p.to_vec(),
            start,
        };
        assert_eq!(
            parse_dir(b"stream a/b.log").unwrap(),
            stream(b"a/b.log", Start::FromEnd(0))
        );
        assert_eq!(
            parse_dir(b"stream nginx/access.log from byte -200").unwrap(),
            stream(b"nginx/access.log", Start::FromEnd(200))
        );
        assert_eq!(
            parse_dir(b"stream with space.log from byte 7\r").unwrap(),
            stream(b"with space.log", Start::Byte(7))
        );
        assert!(matches!(
            parse_dir(b"0"),
            Err(HeaderError::UnknownCommand(_))
        ));
        assert!(matches!(
            parse_dir(b"stream "),
            Err(HeaderError::UnknownCommand(_))
        ));
        assert!(matches!(
            parse_dir(b"lis"),
            Err(HeaderError::UnknownCommand(_))
        ));
        assert!(matches!(
            parse_dir(b"stream x from byte y"),
            Err(HeaderError::NotAnInteger(_))
        ));
    }

    #[test]
    fn resolve() {
        assert_eq!(Start::Byte(5).resolve(3), 5);
        assert_eq!(Start::FromEnd(5).resolve(3), 0);
        assert_eq!(Start::FromEnd(2).resolve(10), 8);
        assert_eq!(Start::FromEnd(0).resolve(10), 10);
    }
}

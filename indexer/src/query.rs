//! The query protocol: text lines a person can type into `nc`, many per connection.
//!
//! Single-file mode:
//!
//! ```text
//! offset-of N     -> byte offset where message N (0-based) starts; N = count gives
//!                    where the next message will start
//! count           -> number of complete messages
//! message-at B    -> number of the message containing byte B
//! ```
//!
//! Directory mode names the file first: `offset-of PATH N`, `count PATH`,
//! `message-at PATH B`, PATH relative to the indexed directory as tailsrv's `stream PATH`
//! takes it. Paths may contain spaces, so the grammar does not split on blanks: the command
//! ends at the first space, the number is what follows the last space, and the path is
//! everything between (for `count`, everything after the command). So a path can be
//! anything tailsrv serves; only a `count` path that ends in a blank cannot be told from a
//! typo, and is taken literally.
//!
//! Every request gets exactly one answer line, a decimal number or `error: <reason>`, and
//! the connection stays usable after an error. Clients may pipeline: each `read()` takes
//! whatever requests have arrived, all of them are answered into one buffer, and that buffer
//! goes out in one write, so a client that sends thousands of queries at once costs a few
//! system calls, not thousands. A request line longer than [`MAX_LINE`] bytes
//! ([`MAX_DIR_LINE`] in directory mode) is answered with an error and the connection is
//! closed: there is no sensible way to resynchronise.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use futures_lite::AsyncWriteExt;
use shared::header::{trim_line, MAX_DIR_HEADER_LEN};
use shared::net;

use crate::directory::Directory;
use crate::index::{Answer, Index, Scratch};

/// Longest request line accepted, without its newline.
pub const MAX_LINE: usize = 256;

/// Longest request line accepted in directory mode: a command, a path, a number.
pub const MAX_DIR_LINE: usize = MAX_DIR_HEADER_LEN;

/// How long a client that sent an over-long line gets to read its error before we close.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

const USAGE: &str = "commands: offset-of N, count, message-at B";

const DIR_USAGE: &str =
    "this indexer indexes a directory; commands: offset-of PATH N, count PATH, message-at PATH B";

/// What queries are answered from.
#[derive(Clone)]
pub enum Indexed {
    /// Single-file mode: one index; requests name no file.
    File(Arc<Index>),
    /// Directory mode: each request names its file first.
    Dir(Arc<Directory>),
}

impl Indexed {
    fn max_line(&self) -> usize {
        match self {
            Indexed::File(_) => MAX_LINE,
            Indexed::Dir(_) => MAX_DIR_LINE,
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    OffsetOf(u64),
    Count,
    MessageAt(u64),
}

impl Request {
    fn ask(self, index: &Index, scratch: &mut Scratch) -> Answer {
        match self {
            Request::OffsetOf(n) => index.offset_of(n, scratch),
            Request::Count => index.count(),
            Request::MessageAt(b) => index.message_at(b, scratch),
        }
    }
}

/// What a connection keeps between requests.
#[derive(Default)]
struct Conn {
    /// The index of the last path asked about in the current batch: a client that
    /// pipelines many queries about one file has the path checked once per batch, not per
    /// line. Forgotten after each batch, so a file replaced meanwhile is looked up again.
    recent: Option<(Vec<u8>, Arc<Index>)>,
    scratch: Scratch,
}

/// Answers one line (without its newline).
async fn answer(indexed: &Indexed, conn: &mut Conn, line: &[u8]) -> Answer {
    match indexed {
        Indexed::File(index) => parse(line)?.ask(index, &mut conn.scratch),
        Indexed::Dir(dir) => {
            let (path, request) = parse_dir(line)?;
            let index = match &conn.recent {
                Some((p, ix)) if p == path => ix.clone(),
                _ => {
                    let ix = dir.index_of(path).await?;
                    conn.recent = Some((path.to_vec(), ix.clone()));
                    ix
                }
            };
            request.ask(&index, &mut conn.scratch)
        }
    }
}

/// Parses a single-file mode request.
pub fn parse(line: &[u8]) -> Result<Request, String> {
    let text = trim_line(line);
    let mut words = text
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let command = words.next().unwrap_or_default();
    let arg = words.next();
    let extra = words.next();
    let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let number = |what: &str| -> Result<u64, String> {
        match (arg, extra) {
            (None, _) => Err(format!("{} needs a {what} ({USAGE})", shown(command))),
            (Some(_), Some(x)) => Err(format!("unexpected {:?} after the {what}", shown(x))),
            (Some(a), None) => parse_number(a)
                .ok_or_else(|| format!("bad number {:?}: expected a decimal {what}", shown(a))),
        }
    };
    match command {
        b"offset-of" => Ok(Request::OffsetOf(number("message number")?)),
        b"message-at" => Ok(Request::MessageAt(number("byte offset")?)),
        b"count" => match arg {
            None => Ok(Request::Count),
            Some(a) => Err(format!("count takes no argument, got {:?}", shown(a))),
        },
        b"" => Err(format!("empty request ({USAGE})")),
        other => Err(format!("unknown command {:?} ({USAGE})", shown(other))),
    }
}

/// Parses a directory-mode request: the path (as sent) and the request (see the module docs).
pub fn parse_dir(line: &[u8]) -> Result<(&[u8], Request), String> {
    let text = line.strip_suffix(b"\r").unwrap_or(line);
    let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if text.trim_ascii().is_empty() {
        return Err(format!("empty request ({DIR_USAGE})"));
    }
    let (command, rest) = match memchr::memchr(b' ', text) {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &b""[..]),
    };
    let with_number = |what: &str| -> Result<(&[u8], u64), String> {
        let usage = || format!("{} needs a path and a {what} ({DIR_USAGE})", shown(command));
        let i = memchr::memrchr(b' ', rest).ok_or_else(usage)?;
        let (path, n) = (&rest[..i], &rest[i + 1..]);
        if path.is_empty() {
            return Err(usage());
        }
        let n = parse_number(n)
            .ok_or_else(|| format!("bad number {:?}: expected a decimal {what}", shown(n)))?;
        Ok((path, n))
    };
    match command {
        b"offset-of" => with_number("message number").map(|(p, n)| (p, Request::OffsetOf(n))),
        b"message-at" => with_number("byte offset").map(|(p, b)| (p, Request::MessageAt(b))),
        b"count" if rest.is_empty() => Err(format!("count needs a path ({DIR_USAGE})")),
        b"count" => Ok((rest, Request::Count)),
        other => Err(format!("unknown command {:?} ({DIR_USAGE})", shown(other))),
    }
}

/// A decimal u64: digits only, no sign, no overflow.
fn parse_number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn push_answer(out: &mut Vec<u8>, a: Answer) {
    match a {
        Ok(n) => {
            // Formatted in place: no allocation per answer.
            let _ = writeln!(out, "{n}");
        }
        Err(e) => {
            out.extend_from_slice(b"error: ");
            out.extend_from_slice(e.as_bytes());
            out.push(b'\n');
        }
    }
}

/// Serves one connection until the client closes it.
pub async fn serve(stream: TcpStream, peer: SocketAddr, indexed: Indexed) {
    let Some(sock) = net::register(stream, peer) else {
        return;
    };
    log::debug!(client:% = peer; "client connected");
    let why = match converse(&sock, &indexed).await {
        Ok(()) => "client closed".to_string(),
        Err(e) => e.to_string(),
    };
    log::debug!(client:% = peer; "client done: {why}");
}

/// Reads requests, answers each batch with one write.
async fn converse(sock: &Async<TcpStream>, indexed: &Indexed) -> io::Result<()> {
    let max_line = indexed.max_line();
    let mut buf = vec![0u8; 64 << 10];
    // Bytes of a request line whose newline has not arrived yet.
    let mut partial: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut conn = Conn::default();
    loop {
        let n = sock.read_with(|s| (&*s).read(&mut buf)).await?;
        conn.recent = None;
        if n == 0 {
            // A last request without its newline (`printf count | nc`) still gets its answer.
            if !trim_line(&partial).is_empty() {
                push_answer(&mut out, answer(indexed, &mut conn, &partial).await);
                write_all(sock, &out).await?;
            }
            return Ok(());
        }
        let mut data = &buf[..n];
        let mut too_long = false;
        while let Some(i) = memchr::memchr(b'\n', data) {
            let line: &[u8] = if partial.is_empty() {
                &data[..i]
            } else {
                partial.extend_from_slice(&data[..i]);
                &partial
            };
            if line.len() > max_line {
                too_long = true;
                break;
            }
            push_answer(&mut out, answer(indexed, &mut conn, line).await);
            partial.clear();
            data = &data[i + 1..];
        }
        if !too_long {
            partial.extend_from_slice(data);
            too_long = partial.len() > max_line;
        }
        if too_long {
            push_answer(
                &mut out,
                Err(format!(
                    "request line longer than {max_line} bytes; closing"
                )),
            );
            net::finish(sock, &out, REFUSAL_LINGER).await;
            return Err(io::Error::other("request line too long"));
        }
        write_all(sock, &out).await?;
        out.clear();
    }
}

/// Writes all of `data` (the answers to one batch of requests, in one write when it fits).
async fn write_all(sock: &Async<TcpStream>, data: &[u8]) -> io::Result<()> {
    let mut writer = sock;
    writer.write_all(data).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_number(b"18446744073709551616"), None);
        assert_eq!(parse_number(b"-1"), None);
        assert_eq!(parse_number(b"+1"), None);
        assert_eq!(parse_number(b"1e3"), None);
        assert_eq!(parse_number(b""), None);
    }

    #[test]
    fn directory_grammar() {
        fn ok(line: &[u8]) -> (&[u8], Request) {
            parse_dir(line).unwrap()
        }
        assert_eq!(ok(b"count a.log"), (&b"a.log"[..], Request::Count));
        assert_eq!(ok(b"count a.log\r"), (&b"a.log"[..], Request::Count));
        assert_eq!(
            ok(b"count with space "),
            (&b"with space "[..], Request::Count)
        );
        assert_eq!(
            ok(b"offset-of dir/with space.log 12"),
            (&b"dir/with space.log"[..], Request::OffsetOf(12))
        );
        assert_eq!(
            ok(b"message-at a 5 7"),
            (&b"a 5"[..], Request::MessageAt(7))
        );
        for bad in [
            &b""[..],
            b"   ",
            b"count",
            b"count ",
            b"offset-of 5",
            b"offset-of a.log",
            b"offset-of  5",
            b"offset-of a.log x",
            b"offset-of a.log -1",
            b"message-at a.log ",
            b"stream a.log",
        ] {
            assert!(
                parse_dir(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_dir(b"count").unwrap_err().contains("needs a path"));
    }
}

//! The query protocol: text lines a person can type into `nc`, many per connection.
//!
//! ```text
//! offset-of N     -> byte offset where message N (0-based) starts; N = count gives
//!                    where the next message will start
//! count           -> number of complete messages
//! message-at B    -> number of the message containing byte B
//! ```
//!
//! Every request gets exactly one answer line, a decimal number or `error: <reason>`, and
//! the connection stays usable after an error. Clients may pipeline: each `read()` takes
//! whatever requests have arrived, all of them are answered into one buffer, and that buffer
//! goes out in one write, so a client that sends thousands of queries at once costs a few
//! system calls, not thousands. A request line longer than [`MAX_LINE`] bytes is answered
//! with an error and the connection is closed: there is no sensible way to resynchronise.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use futures_lite::AsyncWriteExt;
use shared::header::trim_line;
use shared::net;

use crate::index::{Answer, Index};

/// Longest request line accepted, without its newline.
pub const MAX_LINE: usize = 256;

/// How long a client that sent an over-long line gets to read its error before we close.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

const USAGE: &str = "commands: offset-of N, count, message-at B";

/// Answers one line (without its newline).
pub fn answer(index: &Index, line: &[u8]) -> Answer {
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
        b"offset-of" => index.offset_of(number("message number")?),
        b"message-at" => index.message_at(number("byte offset")?),
        b"count" => match arg {
            None => index.count(),
            Some(a) => Err(format!("count takes no argument, got {:?}", shown(a))),
        },
        b"" => Err(format!("empty request ({USAGE})")),
        other => Err(format!("unknown command {:?} ({USAGE})", shown(other))),
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
            out.extend_from_slice(n.to_string().as_bytes());
            out.push(b'\n');
        }
        Err(e) => {
            out.extend_from_slice(b"error: ");
            out.extend_from_slice(e.as_bytes());
            out.push(b'\n');
        }
    }
}

/// Serves one connection until the client closes it.
pub async fn serve(stream: TcpStream, peer: SocketAddr, index: Arc<Index>) {
    net::tune(&stream);
    let sock = match Async::new(stream) {
        Ok(s) => s,
        Err(e) => {
            log::warn!(client:% = peer; "cannot register socket: {e}");
            return;
        }
    };
    log::debug!(client:% = peer; "client connected");
    let why = match converse(&sock, &index).await {
        Ok(()) => "client closed".to_string(),
        Err(e) => e.to_string(),
    };
    log::debug!(client:% = peer; "client done: {why}");
}

/// Reads requests, answers each batch with one write.
async fn converse(sock: &Async<TcpStream>, index: &Index) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    // Bytes of a request line whose newline has not arrived yet.
    let mut partial: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = sock.read_with(|s| (&*s).read(&mut buf)).await?;
        if n == 0 {
            // A last request without its newline (`printf count | nc`) still gets its answer.
            if !trim_line(&partial).is_empty() {
                push_answer(&mut out, answer(index, &partial));
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
            if line.len() > MAX_LINE {
                too_long = true;
                break;
            }
            push_answer(&mut out, answer(index, line));
            partial.clear();
            data = &data[i + 1..];
        }
        if !too_long {
            partial.extend_from_slice(data);
            too_long = partial.len() > MAX_LINE;
        }
        if too_long {
            push_answer(
                &mut out,
                Err(format!(
                    "request line longer than {MAX_LINE} bytes; closing"
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
}

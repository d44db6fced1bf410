//! Asking a tailsrv-indexer where messages start.
//!
//! The indexer speaks text lines: a request (`offset-of N`, `count`, `message-at B`; in
//! directory mode the file's path comes first: `offset-of PATH N`, `count PATH`), an
//! answer that is a decimal number or `error: <reason>`. One short-lived connection per
//! lookup keeps this trivially correct; lookups happen once per consumer start, not per
//! message. Every error names the indexer and the request, and an `error:` answer is passed
//! on word for word: it is the indexer that knows why (N beyond the count, a malformed
//! message in the file...).

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long one lookup (connect, ask, answer) may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Longest answer line we accept.
const MAX_ANSWER: u64 = 1024;

/// Why a lookup failed.
#[derive(Debug)]
pub enum Error {
    /// A message start was asked for but no indexer was given.
    NoIndexer,
    /// The indexer could not be reached or the connection failed.
    Io { indexer: String, error: io::Error },
    /// The indexer answered `error: <reason>`.
    Refused {
        indexer: String,
        request: String,
        reason: String,
    },
    /// The answer was neither a number nor an error line.
    BadAnswer {
        indexer: String,
        request: String,
        answer: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoIndexer => {
                f.write_str("a message number needs an indexer (--indexer HOST:PORT)")
            }
            Error::Io { indexer, error } => write!(f, "indexer {indexer}: {error}"),
            Error::Refused {
                indexer,
                request,
                reason,
            } => write!(f, "indexer {indexer} refused {request:?}: {reason}"),
            Error::BadAnswer {
                indexer,
                request,
                answer,
            } => write!(
                f,
                "indexer {indexer} gave an unexpected answer to {request:?}: {answer:?}"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Sends `requests` on one connection (pipelined) and returns the numeric answers in order.
pub fn ask(indexer: &str, requests: &[String]) -> Result<Vec<u64>, Error> {
    let io_err = |error: io::Error| Error::Io {
        indexer: indexer.to_owned(),
        error,
    };
    let stream = connect(indexer).map_err(io_err)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    let mut batch = String::new();
    for r in requests {
        batch.push_str(r);
        batch.push('\n');
    }
    (&stream).write_all(batch.as_bytes()).map_err(io_err)?;
    let mut reader = BufReader::new(&stream);
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        let mut line = Vec::new();
        (&mut reader)
            .take(MAX_ANSWER)
            .read_until(b'\n', &mut line)
            .map_err(io_err)?;
        if line.last() != Some(&b'\n') {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("no complete answer to {request:?}"),
            )));
        }
        let text = String::from_utf8_lossy(&line).trim().to_owned();
        if let Some(reason) = text.strip_prefix("error:") {
            return Err(Error::Refused {
                indexer: indexer.to_owned(),
                request: request.clone(),
                reason: reason.trim().to_owned(),
            });
        }
        match text.parse() {
            Ok(n) => answers.push(n),
            Err(_) => {
                return Err(Error::BadAnswer {
                    indexer: indexer.to_owned(),
                    request: request.clone(),
                    answer: text,
                })
            }
        }
    }
    Ok(answers)
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn one(indexer: &str, request: String) -> Result<u64, Error> {
    Ok(ask(indexer, &[request])?[0])
}

/// A request line: `command [PATH] [arg]`, the path only for a directory-mode indexer.
fn request(command: &str, path: Option<&str>, arg: Option<u64>) -> String {
    let mut r = command.to_owned();
    for word in [path.map(str::to_owned), arg.map(|a| a.to_string())]
        .into_iter()
        .flatten()
    {
        r.push(' ');
        r.push_str(&word);
    }
    r
}

/// The byte offset where message `n` starts (`n` = count: where the next one will start).
/// `path`: the file, for an indexer of a directory.
pub fn offset_of(indexer: &str, path: Option<&str>, n: u64) -> Result<u64, Error> {
    one(indexer, request("offset-of", path, Some(n)))
}

/// The number of the message containing byte `b`.
pub fn message_at(indexer: &str, path: Option<&str>, b: u64) -> Result<u64, Error> {
    one(indexer, request("message-at", path, Some(b)))
}

/// The number of complete messages indexed so far.
pub fn count(indexer: &str, path: Option<&str>) -> Result<u64, Error> {
    one(indexer, request("count", path, None))
}

/// The end of the last complete message: where a consumer "from the end" starts.
///
/// Two lookups, because the count may grow in between; `offset-of` an older count is still a
/// message boundary, just an earlier one.
pub fn end(indexer: &str, path: Option<&str>) -> Result<u64, Error> {
    offset_of(indexer, path, count(indexer, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(request("count", None, None), "count");
        assert_eq!(request("count", Some("a b/c"), None), "count a b/c");
        assert_eq!(request("offset-of", None, Some(7)), "offset-of 7");
        assert_eq!(
            request("offset-of", Some("a b"), Some(7)),
            "offset-of a b 7"
        );
    }
}

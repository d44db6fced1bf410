//! Asking a tailsrv-indexer where messages start.
//!
//! The indexer speaks text lines (grammar in `proto::query`): a query (`offset-of N`,
//! `count`, `message-at B`; in directory mode the file's path comes first), an answer that
//! is a decimal number or a refusal. One short-lived connection per lookup keeps this
//! trivially correct; lookups happen once per consumer start, not per message. Every error
//! names the indexer and the query, and a refusal is passed on as it came: it is the indexer
//! that knows why (N beyond the count, a malformed message in the file...).

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use proto::query::{parse_answer, Query, Question};
use proto::Refusal;

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
    Io {
        /// The indexer's address.
        indexer: String,
        /// What failed.
        error: io::Error,
    },
    /// The indexer refused the query.
    Refused {
        /// The indexer's address.
        indexer: String,
        /// The query, as sent.
        request: String,
        /// Its answer.
        refusal: Refusal,
    },
    /// The answer was neither a number nor a refusal.
    BadAnswer {
        /// The indexer's address.
        indexer: String,
        /// The query, as sent.
        request: String,
        /// What came back.
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
                refusal,
            } => write!(f, "indexer {indexer} refused {request:?}: {refusal}"),
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

/// Sends `queries` on one connection (pipelined) and returns the numeric answers in order.
pub fn ask(indexer: &str, queries: &[Query<'_>]) -> Result<Vec<u64>, Error> {
    let io_err = |error: io::Error| Error::Io {
        indexer: indexer.to_owned(),
        error,
    };
    let stream = connect(indexer).map_err(io_err)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    let mut batch = Vec::new();
    for q in queries {
        q.render_into(&mut batch);
    }
    (&stream).write_all(&batch).map_err(io_err)?;
    let mut reader = BufReader::new(&stream);
    let mut answers = Vec::with_capacity(queries.len());
    for query in queries {
        let request = || String::from_utf8_lossy(query.render().trim_ascii_end()).into_owned();
        let mut line = Vec::new();
        (&mut reader)
            .take(MAX_ANSWER)
            .read_until(b'\n', &mut line)
            .map_err(io_err)?;
        if line.last() != Some(&b'\n') {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("no complete answer to {:?}", request()),
            )));
        }
        match parse_answer(&line) {
            Some(Ok(n)) => answers.push(n),
            Some(Err(refusal)) => {
                return Err(Error::Refused {
                    indexer: indexer.to_owned(),
                    request: request(),
                    refusal,
                })
            }
            None => {
                return Err(Error::BadAnswer {
                    indexer: indexer.to_owned(),
                    request: request(),
                    answer: String::from_utf8_lossy(&line).trim().to_owned(),
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

fn one(indexer: &str, path: Option<&str>, question: Question) -> Result<u64, Error> {
    let query = Query {
        path: path.map(str::as_bytes),
        question,
    };
    Ok(ask(indexer, &[query])?[0])
}

/// The byte offset where message `n` starts (`n` = count: where the next one will start).
/// `path`: the file, for an indexer of a directory.
pub fn offset_of(indexer: &str, path: Option<&str>, n: u64) -> Result<u64, Error> {
    one(indexer, path, Question::OffsetOf(n))
}

/// The number of the message containing byte `b`.
pub fn message_at(indexer: &str, path: Option<&str>, b: u64) -> Result<u64, Error> {
    one(indexer, path, Question::MessageAt(b))
}

/// The number of complete messages indexed so far.
pub fn count(indexer: &str, path: Option<&str>) -> Result<u64, Error> {
    one(indexer, path, Question::Count)
}

/// The end of the last complete message: where a consumer "from the end" starts.
///
/// Two lookups, because the count may grow in between; `offset-of` an older count is still a
/// message boundary, just an earlier one.
pub fn end(indexer: &str, path: Option<&str>) -> Result<u64, Error> {
    offset_of(indexer, path, count(indexer, path)?)
}

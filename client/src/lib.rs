//! The client library of tailsrv: resumable consumers of a stream, the careful reconnect
//! loop every user would otherwise write, written once. Blocking std I/O (a consumer follows
//! one stream); no server code, no inotify, no CLI parser in its dependency tree.
//!
//! - [`follow`]: the connection: connect (keepalive on), ask for a start and its
//!   confirmation, read, and on any failure reconnect with capped exponential backoff at the
//!   exact byte reached, failing over along a list of servers.
//! - [`messages`]: whole messages only, cut with `proto::framing::Splitter`.
//! - [`state`]: the position saved to a small state file, atomically and durably.
//! - [`indexer`]: asking a tailsrv-indexer where message N starts.
//! - [`writer`]: appending messages through a tailsrv-collator: batches, pipelining,
//!   retries without duplicates, every position reported or the message handed back.
//! - [`cat`]: `tscat`, the stream to an output with checkpoints; [`mirror`]: `tsmirror`,
//!   the stream appended to a replica file.
//!
//! Exactness rests on one fact: tailsrv sends the file's bytes from the offset it confirmed
//! (`ok N LEN`), in order, and nothing else. So the absolute position of the next byte is that
//! offset plus the bytes received, and reconnecting with that number neither skips nor
//! repeats a byte. A relative start (`-N`, `-0`) is resolved by the first server that
//! confirms it; [`resolve`] can also place it on a message boundary with an indexer.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod cat;
pub mod follow;
pub mod indexer;
pub mod messages;
pub mod mirror;
pub mod state;
pub mod writer;

use proto::Start;

/// Where a consumer wants to begin, as the user said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// From this byte offset.
    Byte(u64),
    /// The last N bytes of the file.
    Last(u64),
    /// From the current end of the file.
    End,
    /// From message N (0-based), located by an indexer.
    Message(u64),
    /// The last N lines (`tail -n`): the server scans back for newlines, no indexer needed.
    LastLines(u64),
}

impl StartAt {
    /// Whether the server, not the consumer, decides where this start lands.
    pub fn is_relative(self) -> bool {
        matches!(
            self,
            StartAt::Last(_) | StartAt::End | StartAt::LastLines(_)
        )
    }
}

/// Turns a start into the header to send and, when it can be known, the absolute offset.
/// `path` names the file for servers and indexers in directory mode.
///
/// - `Byte(n)` is absolute.
/// - `Message(n)` asks the indexer `offset-of n`.
/// - `End` with an indexer: `offset-of COUNT`, the end of the last complete message.
/// - `Last(n)` with an indexer: the start of the message holding byte `end - n`, so at least
///   `n` bytes and a message boundary.
/// - `Last`/`End` without an indexer stay relative (`-n`, `-0`): the server resolves them
///   and says where ([`follow`]).
pub fn resolve(
    start: StartAt,
    indexer: Option<&str>,
    path: Option<&str>,
) -> Result<Start, indexer::Error> {
    match (start, indexer) {
        (StartAt::Byte(n), _) => Ok(Start::Byte(n)),
        (StartAt::LastLines(n), _) => Ok(Start::LastLines(n)),
        (StartAt::Message(n), Some(ix)) => indexer::offset_of(ix, path, n).map(Start::Byte),
        (StartAt::Message(_), None) => Err(indexer::Error::NoIndexer),
        (StartAt::End, Some(ix)) => indexer::end(ix, path).map(Start::Byte),
        (StartAt::Last(n), Some(ix)) => {
            let end = indexer::end(ix, path)?;
            if n >= end {
                return Ok(Start::Byte(0));
            }
            let m = indexer::message_at(ix, path, end - n)?;
            indexer::offset_of(ix, path, m).map(Start::Byte)
        }
        (StartAt::End, None) => Ok(Start::FromEnd(0)),
        (StartAt::Last(n), None) => Ok(Start::FromEnd(n)),
    }
}

/// Parses a comma-separated list of `HOST:PORT` servers (blanks around names allowed).
pub fn parse_servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

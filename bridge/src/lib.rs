//! `tsbridge`: an exactly-once bridge between a tailsrv log and a NATS JetStream stream, both
//! ways. It is the "move" of vs_kafka.md made safe: the same log flowing into a replicated,
//! clustered engine (and back out into a file that tailsrv serves).
//!
//! - [`to_js`]: follows a tailsrv stream with the client library (`client::follow`), cuts it
//!   into messages with `proto::framing::Splitter` (through `client::messages`), and publishes
//!   each message with a deterministic id (`LOG:OFFSET`) and its byte offsets in headers. It
//!   resumes from what the stream itself holds (its last message's `Tailsrv-Next` header), so
//!   there is no local state to lose.
//! - [`from_js`]: a durable pull consumer that appends the stream's messages to a file in a
//!   chosen framing and acks after the write (after fdatasync with `--sync data`). The file
//!   is its own checkpoint: message k of the file is stream sequence `origin + k`.
//!
//! Why it is exact, in one paragraph each way: *into* JetStream, every publish carries
//! `Nats-Expected-Last-Sequence` (the sequence its predecessor gets) and `Nats-Msg-Id`: a
//! message can only be stored right after its predecessor, so the stream never has a gap even
//! with many publishes in flight, and a republished message is recognised as a duplicate. So
//! after any crash, the stream's last message says exactly where the log continues. *Out of*
//! JetStream, the file holds exactly the messages written, in order, and sequences are dense
//! (one stream per log), so its message count says which sequence comes next; a torn tail is
//! cut on start.
//!
//! async-nats runs on tokio. tsbridge is a process of its own, so it runs a tokio runtime; the
//! blocking tailsrv client runs on a thread of its own and hands messages over a bounded
//! channel. The servers (tailsrv, indexer, collator) stay on async-std and never link tokio.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod from_js;
pub mod nats;
mod progress;
pub mod to_js;

use std::fmt;

/// Why the bridge stopped with a failure; each kind has its exit status.
#[derive(Debug)]
pub enum Error {
    /// The NATS cluster (or the tailsrv servers) could not be reached within the retry bound,
    /// or the tailsrv stream was lost for good. Exit 1.
    Unreachable(String),
    /// The command line is wrong. Exit 2.
    Usage(String),
    /// The output file cannot be opened, locked, read, written or synced. Exit 3.
    File(String),
    /// The stream is missing, does not take the subject, holds what the bridge cannot resume
    /// from, or has a gap. Exit 4.
    Stream(String),
    /// A message cannot be carried: malformed in the log, over the server's max_payload,
    /// or not representable in the output framing. Exit 5.
    Message(String),
    /// The server refused the credentials. Exit 6.
    Auth(String),
    /// Retention deleted where the stream says the log continues (tailsrv answered `gone`)
    /// and `--on-gone` is `fail`. Exit 8, as tscat and tsmirror.
    Gone(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Unreachable(_) => 1,
            Error::Usage(_) => 2,
            Error::File(_) => 3,
            Error::Stream(_) => 4,
            Error::Message(_) => 5,
            Error::Auth(_) => 6,
            Error::Gone(_) => client::cat::GONE_EXIT,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable(s)
            | Error::Usage(s)
            | Error::File(s)
            | Error::Stream(s)
            | Error::Message(s)
            | Error::Auth(s)
            | Error::Gone(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Error {}

/// Header with the byte offset where the message starts in the log.
pub const HEADER_OFFSET: &str = "Tailsrv-Offset";
/// Header with the byte offset where the next message starts (where a resume continues).
pub const HEADER_NEXT: &str = "Tailsrv-Next";

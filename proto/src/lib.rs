//! Every wire grammar of tailsrv's processes, each with one parser and one renderer, and the
//! message framings they share.
//!
//! - [`request`]: what a client sends tailsrv (`N`, `-N`, `list`, `stream PATH from byte N`,
//!   the optional ` ok` confirmation) and the server's `ok N LEN` answer.
//! - [`query`]: the indexer's queries (`offset-of`, `count`, `message-at`) and answers.
//! - [`collate`]: the collator's requests (`msg`, `batch`, `lines`, `end`, idempotence and
//!   directory fields) and its `ok`/`end` answers.
//! - [`refusal`]: `error: CODE: reason`, the one refusal line every server sends, with stable
//!   codes that programs match instead of prose.
//! - [`framing`]: where one message ends and the next begins (newline, NUL, u32be, varint):
//!   encoding, the checks of message and batch bodies, the splitter and a bounded decoder.
//! - [`watermark`]: the `FILE.synced` sidecar the collator writes and tailsrv reads.
//!
//! This crate opens nothing and has no runtime: servers read lines off their sockets and hand
//! them here; clients render here and write (the framing decoder reads a `BufRead` it is
//! handed). So a grammar changes in exactly one place, and a
//! client library can depend on it without pulling in a server.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod collate;
pub mod framing;
pub mod query;
pub mod refusal;
pub mod request;
pub mod watermark;

pub use framing::Framing;
pub use refusal::{Code, Refusal};
pub use request::{Request, Start};

/// Which kind of server a line is addressed to: one that serves (or indexes) a single file,
/// or the files of a directory. The grammars differ: directory requests name the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One file; requests name no path.
    File,
    /// A directory; every request names its file.
    Dir,
}

/// Strips a trailing `\r` and blanks around a line.
pub fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.trim_ascii()
}

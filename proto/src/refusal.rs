//! Refusals: the one kind of line every server sends instead of what was asked for.
//!
//! On the wire a refusal is one line, `error: CODE: reason`. The `error: ` prefix is what a
//! person at `nc` recognises; CODE is a stable lowercase token a program matches on; the
//! reason is prose for people and may be reworded at any time. Programs decide with
//! [`Code::is_transient`] whether asking again later can help, never by reading the prose.
//!
//! A line whose code this version does not know still parses (as [`Code::Other`], the
//! unknown token kept at the start of the reason), so an older client talking to a newer
//! server sees a refusal, not data, and does not retry what it cannot judge.

use std::fmt;

/// The prefix of every refusal line.
pub const PREFIX: &[u8] = b"error: ";

/// Why a request was refused, as a stable machine-readable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// `bad-request`: the request is malformed (not a number, unknown command, bad argument).
    BadRequest,
    /// `too-long`: the request line is longer than the server accepts.
    TooLong,
    /// `timeout`: the request line was not complete in time.
    Timeout,
    /// `busy`: the server is at its client limit.
    Busy,
    /// `watch-limit`: the server follows as many files as the kernel's inotify limit allows.
    WatchLimit,
    /// `wrong-mode`: a directory request to a single-file server, or the other way round.
    WrongMode,
    /// `not-served`: the directory rule refuses this path (outside the root, ignored, not a
    /// regular file...).
    NotServed,
    /// `not-found`: the file (or its directory) does not exist.
    NotFound,
    /// `unreadable`: the server may not read the file (permissions).
    Unreadable,
    /// `not-yet`: the message or byte asked about is not in the log yet.
    NotYet,
    /// `loading`: the index is still loading, or its log does not exist yet.
    Loading,
    /// `rebuilding`: the log changed under the index, which is being rebuilt.
    Rebuilding,
    /// `bad-log`: the log holds a malformed message; indexing stopped there.
    BadLog,
    /// `io`: the server failed to read or write its own files.
    Io,
    /// `too-big`: a message or a request body is over the server's limit.
    TooBig,
    /// `bad-body`: a body does not match its header (count, sizes, an empty message, a
    /// delimiter inside a single message).
    BadBody,
    /// `sequence-gap`: an idempotent producer skipped sequence numbers; the reason names the
    /// one expected.
    SequenceGap,
    /// `disk-full`: the disk is full (nothing of the request was kept).
    DiskFull,
    /// `gone`: what was asked for is below the start of a segmented log (retention deleted
    /// it); the reason names where the log starts now.
    Gone,
    /// A code this version does not know (sent by a newer server).
    Other,
}

impl Code {
    /// Every code this version knows, in documentation order.
    pub const ALL: [Code; 19] = [
        Code::BadRequest,
        Code::TooLong,
        Code::Timeout,
        Code::Busy,
        Code::WatchLimit,
        Code::WrongMode,
        Code::NotServed,
        Code::NotFound,
        Code::Unreadable,
        Code::NotYet,
        Code::Loading,
        Code::Rebuilding,
        Code::BadLog,
        Code::Io,
        Code::TooBig,
        Code::BadBody,
        Code::SequenceGap,
        Code::DiskFull,
        Code::Gone,
    ];

    /// The token on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad-request",
            Code::TooLong => "too-long",
            Code::Timeout => "timeout",
            Code::Busy => "busy",
            Code::WatchLimit => "watch-limit",
            Code::WrongMode => "wrong-mode",
            Code::NotServed => "not-served",
            Code::NotFound => "not-found",
            Code::Unreadable => "unreadable",
            Code::NotYet => "not-yet",
            Code::Loading => "loading",
            Code::Rebuilding => "rebuilding",
            Code::BadLog => "bad-log",
            Code::Io => "io",
            Code::TooBig => "too-big",
            Code::BadBody => "bad-body",
            Code::SequenceGap => "sequence-gap",
            Code::DiskFull => "disk-full",
            Code::Gone => "gone",
            Code::Other => "other",
        }
    }

    /// The code a token names ([`Code::Other`] for a well-formed token this version does not
    /// know); `None` when `token` is not a code at all (empty, or not `[a-z0-9-]`).
    pub fn from_token(token: &[u8]) -> Option<Code> {
        if token.is_empty()
            || !token
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        {
            return None;
        }
        Some(
            Code::ALL
                .into_iter()
                .find(|c| c.as_str().as_bytes() == token)
                .unwrap_or(Code::Other),
        )
    }

    /// Whether the same request may succeed later without anything changing on the
    /// client's side: the server is busy, at a kernel limit, still preparing an answer, or
    /// out of disk space (which an operator may free).
    /// Everything else would be refused again and should not be retried.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Code::Timeout
                | Code::Busy
                | Code::WatchLimit
                | Code::Loading
                | Code::Rebuilding
                | Code::DiskFull
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: a code and a reason for people. `Display` is `code: reason`, the wire line
/// without its `error: ` prefix and newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of refusal this is.
    pub code: Code,
    /// Why, in words; one line.
    pub reason: String,
}

impl Refusal {
    /// A refusal; line breaks in `reason` become spaces (a refusal is one line).
    pub fn new(code: Code, reason: impl Into<String>) -> Refusal {
        let mut reason = reason.into();
        if reason.contains(['\n', '\r']) {
            reason = reason.replace(['\n', '\r'], " ");
        }
        Refusal { code, reason }
    }

    /// Appends the wire line, `error: CODE: reason\n`, to `out`.
    pub fn render_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(self.code.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(self.reason.as_bytes());
        out.push(b'\n');
    }

    /// The wire line, `error: CODE: reason\n`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREFIX.len() + self.reason.len() + 16);
        self.render_into(&mut out);
        out
    }

    /// Parses one line (with or without its `\n` / `\r\n`). `None` if it is not a refusal.
    pub fn parse(line: &[u8]) -> Option<Refusal> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let rest = line.strip_prefix(PREFIX)?;
        let i = memchr::memmem::find(rest, b": ")?;
        let code = Code::from_token(&rest[..i])?;
        // An unknown code stays in the reason, so people still see what the server said.
        let reason = match code {
            Code::Other => rest,
            _ => &rest[i + 2..],
        };
        let reason = String::from_utf8_lossy(reason).into_owned();
        Some(Refusal { code, reason })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_form() {
        let r = Refusal::new(Code::Busy, "too many clients");
        assert_eq!(r.render(), b"error: busy: too many clients\n");
        assert_eq!(r.to_string(), "busy: too many clients");
        assert_eq!(
            Refusal::parse(b"error: busy: too many clients\r\n"),
            Some(r)
        );
        assert_eq!(
            Refusal::parse(b"error: from-the-future: x"),
            Some(Refusal::new(Code::Other, "from-the-future: x"))
        );
        assert_eq!(Refusal::parse(b"error: no code here"), None);
        assert_eq!(Refusal::parse(b"hello"), None);
        assert_eq!(Refusal::new(Code::Io, "a\nb").reason, "a b");
    }

    #[test]
    fn codes_are_distinct_tokens() {
        for c in Code::ALL {
            assert_eq!(Code::from_token(c.as_str().as_bytes()), Some(c));
        }
        let mut tokens: Vec<_> = Code::ALL.iter().map(|c| c.as_str()).collect();
        tokens.sort();
        tokens.dedup();
        assert_eq!(tokens.len(), Code::ALL.len());
    }

    proptest! {
        #[test]
        fn round_trip(i in 0..Code::ALL.len(), reason in "[^\r\n]{0,80}") {
            let r = Refusal::new(Code::ALL[i], reason);
            prop_assert_eq!(Refusal::parse(&r.render()), Some(r));
        }

        #[test]
        fn parse_never_panics(line in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Some(r) = Refusal::parse(&line) {
                prop_assert!(line.starts_with(PREFIX));
                let _ = r.render();
            }
        }
    }
}

//! Message framing: where one message ends and the next begins in a byte stream, written
//! once for every program that reads or writes messages.
//!
//! tailsrv only knows bytes; the indexer, the collator and message-aware clients need message
//! boundaries. Four framings cover what writers actually produce:
//!
//! - `newline`: a message ends with `\n` (log lines, JSON lines);
//! - `nul`: a message ends with a zero byte;
//! - `u32be`: a 4-byte big-endian length, then that many bytes (Kafka-style size prefix);
//! - `varint`: an unsigned LEB128 length, then that many bytes (protobuf's
//!   `writeDelimitedTo` / `parseDelimitedFrom`).
//!
//! The codec, one of each:
//!
//! - [`Framing::encode`] and [`Framing::overhead`]: a payload framed (the collator's `msg`
//!   bodies, the client writer's batches, tsbridge's output file).
//! - [`check_message`] and [`check_batch`]: what a writer may put in a log (not empty, within
//!   the limit, no delimiter inside; a batch exactly its messages), as the collator's refusals.
//! - [`Splitter`]: where each message ends, fed in pieces cut anywhere (the indexer, the
//!   restart checks, tscat, batch checks).
//! - [`Decoder`]: the messages of a reader one at a time, each within a maximum size, so a
//!   corrupt length prefix is an error, never an allocation (tswrite's stdin).
//!
//! Everything here works on bytes it is given (the decoder on a `BufRead` it is handed); it
//! opens nothing.

use std::fmt;
use std::str::FromStr;

mod check;
mod decoder;
mod splitter;

pub use check::{check_batch, check_message};
pub use decoder::{DecodeError, Decoder, Message};
pub use splitter::{FramingError, Splitter};

/// How messages are delimited in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// A message ends with `\n`.
    Newline,
    /// A message ends with a zero byte.
    Nul,
    /// A 4-byte big-endian length, then that many bytes.
    U32Be,
    /// An unsigned LEB128 length (protobuf delimited), then that many bytes.
    Varint,
}

impl Framing {
    /// Every framing.
    pub const ALL: [Framing; 4] = [
        Framing::Newline,
        Framing::Nul,
        Framing::U32Be,
        Framing::Varint,
    ];

    /// The name used on command lines and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Framing::Newline => "newline",
            Framing::Nul => "nul",
            Framing::U32Be => "u32be",
            Framing::Varint => "varint",
        }
    }

    /// The framing's code in files (the indexer's index header). Fixed forever: a new
    /// framing takes a new code, and no code is ever reused.
    pub fn code(self) -> u8 {
        match self {
            Framing::Newline => 0,
            Framing::Nul => 1,
            Framing::U32Be => 2,
            Framing::Varint => 3,
        }
    }

    /// The framing stored as `code` ([`Framing::code`]).
    pub fn from_code(code: u8) -> Option<Framing> {
        Framing::ALL.into_iter().find(|f| f.code() == code)
    }

    /// The names [`Framing::from_str`](std::str::FromStr) accepts, for command-line help.
    pub const NAMES: [&'static str; 4] = ["newline", "nul", "u32be", "varint"];

    /// The delimiter byte, for the delimiter framings.
    pub fn delimiter(self) -> Option<u8> {
        match self {
            Framing::Newline => Some(b'\n'),
            Framing::Nul => Some(0),
            Framing::U32Be | Framing::Varint => None,
        }
    }

    /// Whether `payload` holds this framing's delimiter, so that it cannot be one message
    /// (never, for the prefix framings).
    pub fn delimiter_in(self, payload: &[u8]) -> bool {
        self.delimiter()
            .is_some_and(|d| memchr::memchr(d, payload).is_some())
    }

    /// Appends one message with `payload` to `out` in this framing. The payload must not
    /// contain a delimiter framing's delimiter, and should be within the reader's limit: see
    /// [`check_message`].
    pub fn encode(self, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Framing::Newline | Framing::Nul => {
                out.extend_from_slice(payload);
                out.push(self.delimiter().unwrap_or(b'\n'));
            }
            Framing::U32Be => {
                out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                out.extend_from_slice(payload);
            }
            Framing::Varint => {
                let mut n = payload.len() as u64;
                loop {
                    let low = (n & 0x7f) as u8;
                    n >>= 7;
                    if n == 0 {
                        out.push(low);
                        break;
                    }
                    out.push(low | 0x80);
                }
                out.extend_from_slice(payload);
            }
        }
    }

    /// Bytes [`encode`](Self::encode) adds to a payload of `len` bytes.
    pub fn overhead(self, len: u64) -> u64 {
        match self {
            Framing::Newline | Framing::Nul => 1,
            Framing::U32Be => 4,
            Framing::Varint => (64 - len.max(1).leading_zeros() as u64).div_ceil(7),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Framing::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!("unknown framing {s:?} (expected newline, nul, u32be or varint)")
            })
    }
}

/// Default limit on one message's length: anything longer is taken as a corrupt prefix.
pub const DEFAULT_MAX_MESSAGE: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Framing::ALL {
            assert_eq!(f.to_string().parse::<Framing>(), Ok(f));
            assert_eq!(Framing::from_code(f.code()), Some(f));
            assert!(Framing::NAMES.contains(&f.name()));
        }
        // The codes are the index files' format: they never change.
        let codes: Vec<u8> = Framing::ALL.iter().map(|f| f.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3]);
        assert!("u32-be".parse::<Framing>().is_err());
    }

    #[test]
    fn encoded_lengths_are_the_overhead() {
        for framing in Framing::ALL {
            for len in [0usize, 1, 127, 128, 16_383, 16_384, 70_000] {
                let mut out = Vec::new();
                framing.encode(&vec![7; len], &mut out);
                assert_eq!(
                    out.len() as u64,
                    len as u64 + framing.overhead(len as u64),
                    "{framing} {len}"
                );
            }
        }
        let mut out = Vec::new();
        Framing::Varint.encode(&[1; 300], &mut out);
        assert_eq!(out[..2], [0xac, 0x02]);
        out.clear();
        Framing::U32Be.encode(b"ab", &mut out);
        assert_eq!(out, [0, 0, 0, 2, b'a', b'b']);
    }
}

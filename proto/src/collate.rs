//! The collator's protocol: producers append whole messages and are told where they landed.
//!
//! Text header lines, pipelined: a producer may send many requests without waiting, and the
//! answers come back one line each, in request order. Usable from `nc`:
//!
//! ```text
//! request = command [" id " PRODUCER " seq " SEQ] [" to " PATH] "\n"
//! command = "msg " LEN             then LEN raw bytes: one message (the collator frames it)
//!         | "batch " COUNT " " LEN then LEN bytes: COUNT messages already framed
//!         | "lines"                the rest of the connection: one message per `\n` line
//!         | "end"                  where the next message will go
//!
//! answer  = "ok " OFFSET " " MSGNO " " COUNT "\n"     appended: first message's byte offset,
//!                                                     its message number, how many
//!         | "end " OFFSET " " MSGNO " " FRAMING "\n"  the next byte offset and message number
//!         | "error: " CODE ": " REASON "\n"           see [`crate::refusal`]
//! ```
//!
//! - `id P seq S` makes a request idempotent: a retry with the same producer and sequence is
//!   answered with the original position and writes nothing. P is 1 to 64 characters of
//!   `[A-Za-z0-9._:-]`; S a decimal u64. Only `msg` and `batch` carry them.
//! - `to PATH` names the file in directory mode (and only there); the path is the rest of the
//!   line, so it may contain spaces.
//! - In `lines` mode every `\n`-terminated line (without its `\n`) is a message, blank lines
//!   are skipped, and one `ok` answers each group of lines written together; the producer's
//!   FIN ends the input (an unterminated last line is a message too).
//!
//! Blanks around a line and a trailing `\r` are ignored, as everywhere in tailsrv.

use std::fmt;

use crate::framing::Framing;
use crate::refusal::{Code, Refusal};
use crate::request::{parse_u64, MAX_PATH_LEN};
use crate::{trim_line, Mode};

/// Longest request header accepted, newline included: the fixed fields and a path.
pub const MAX_HEADER: usize = MAX_PATH_LEN + 200;

/// Longest producer id.
pub const MAX_PRODUCER_LEN: usize = 64;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `msg LEN`: one message of LEN bytes follows, unframed.
    Msg {
        /// Body length.
        len: u64,
    },
    /// `batch COUNT LEN`: LEN bytes of COUNT framed messages follow.
    Batch {
        /// Messages in the body.
        count: u64,
        /// Body length.
        len: u64,
    },
    /// `lines`: the rest of the connection is messages, one per line.
    Lines,
    /// `end`: the next byte offset and message number.
    End,
}

/// An idempotent request's producer and sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// Who sends (`[A-Za-z0-9._:-]`, 1 to 64 characters).
    pub id: String,
    /// This request's number in the producer's sequence.
    pub seq: u64,
}

/// One request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked.
    pub command: Command,
    /// `id P seq S`, if given (only with `msg` and `batch`).
    pub producer: Option<Producer>,
    /// `to PATH` (directory mode only), as sent; never contains `\n`.
    pub path: Option<Vec<u8>>,
}

fn bad(reason: impl Into<String>) -> Refusal {
    Refusal::new(Code::BadRequest, reason)
}

const USAGE: &str = "send `msg LEN`, `batch COUNT LEN`, `lines` or `end` \
                     (optionally ` id P seq S`, and ` to PATH` in directory mode)";

/// Whether `id` is a valid producer id.
pub fn valid_producer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PRODUCER_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Splits the next blank-separated word off `s`.
fn word(s: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

fn number(what: &str, w: &[u8]) -> Result<u64, Refusal> {
    parse_u64(w).ok_or_else(|| {
        bad(format!(
            "{what} is not a non-negative integer: {:?}",
            String::from_utf8_lossy(w)
        ))
    })
}

impl Request {
    /// Parses one header line (without its `\n`) for a collator in `mode`.
    pub fn parse(mode: Mode, line: &[u8]) -> Result<Request, Refusal> {
        let text = trim_line(line);
        let shown = || String::from_utf8_lossy(text).into_owned();
        let (cmd, mut rest) = word(text);
        let command = match cmd {
            b"msg" => {
                let (len, r) = word(rest);
                rest = r;
                Command::Msg {
                    len: number("LEN", len)?,
                }
            }
            b"batch" => {
                let (count, r) = word(rest);
                let (len, r) = word(r);
                rest = r;
                Command::Batch {
                    count: number("COUNT", count)?,
                    len: number("LEN", len)?,
                }
            }
            b"lines" => Command::Lines,
            b"end" => Command::End,
            _ => return Err(bad(format!("unknown request {:?}: {USAGE}", shown()))),
        };
        let mut producer = None;
        if let Some(r) = rest.strip_prefix(b"id ") {
            if !matches!(command, Command::Msg { .. } | Command::Batch { .. }) {
                return Err(bad("only `msg` and `batch` take `id P seq S`"));
            }
            let (id, r) = word(r);
            let id = std::str::from_utf8(id)
                .ok()
                .filter(|id| valid_producer_id(id))
                .ok_or_else(|| {
                    bad(format!(
                        "producer id must be 1 to {MAX_PRODUCER_LEN} characters of \
                         [A-Za-z0-9._:-]: {:?}",
                        String::from_utf8_lossy(id)
                    ))
                })?;
            let r = r
                .strip_prefix(b"seq ")
                .ok_or_else(|| bad("`id P` must be followed by `seq S`"))?;
            let (seq, r) = word(r);
            producer = Some(Producer {
                id: id.to_owned(),
                seq: number("SEQ", seq)?,
            });
            rest = r;
        }
        let mut path = None;
        if let Some(p) = rest.strip_prefix(b"to ") {
            if p.is_empty() {
                return Err(bad("`to` needs a path"));
            }
            path = Some(p.to_vec());
            rest = &[];
        }
        if !rest.is_empty() {
            return Err(bad(format!(
                "unexpected {:?} in {:?}: {USAGE}",
                String::from_utf8_lossy(rest),
                shown()
            )));
        }
        match (mode, &path) {
            (Mode::File, Some(_)) => Err(Refusal::new(
                Code::WrongMode,
                "this collator writes a single file; leave out `to PATH`",
            )),
            (Mode::Dir, None) => Err(Refusal::new(
                Code::WrongMode,
                "this collator writes a directory; name the file with ` to PATH`",
            )),
            _ => Ok(Request {
                command,
                producer,
                path,
            }),
        }
    }

    /// The header line, `\n` included.
    pub fn render(&self) -> Vec<u8> {
        let mut out = match self.command {
            Command::Msg { len } => format!("msg {len}"),
            Command::Batch { count, len } => format!("batch {count} {len}"),
            Command::Lines => "lines".to_owned(),
            Command::End => "end".to_owned(),
        }
        .into_bytes();
        if let Some(p) = &self.producer {
            out.extend_from_slice(format!(" id {} seq {}", p.id, p.seq).as_bytes());
        }
        if let Some(path) = &self.path {
            out.extend_from_slice(b" to ");
            out.extend_from_slice(path);
        }
        out.push(b'\n');
        out
    }
}

/// Where appended messages landed: `ok OFFSET MSGNO COUNT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Byte offset of the first message.
    pub offset: u64,
    /// Message number of the first message (0-based, the indexer's numbering).
    pub msgno: u64,
    /// How many messages.
    pub count: u64,
}

/// The answer to `end`: where the next message goes, and the file's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Next byte offset.
    pub offset: u64,
    /// Next message number.
    pub msgno: u64,
    /// How the collator frames messages in this file.
    pub framing: Framing,
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `ok OFFSET MSGNO COUNT`.
    Ok(Ack),
    /// `end OFFSET MSGNO FRAMING`.
    End(End),
    /// `error: CODE: reason`.
    Refused(Refusal),
}

impl Answer {
    /// The wire line, `\n` included.
    pub fn render(&self) -> Vec<u8> {
        match self {
            Answer::Ok(a) => format!("ok {} {} {}\n", a.offset, a.msgno, a.count).into_bytes(),
            Answer::End(e) => format!("end {} {} {}\n", e.offset, e.msgno, e.framing).into_bytes(),
            Answer::Refused(r) => r.render(),
        }
    }

    /// Parses one answer line (with or without its newline); `None` if it is none of the
    /// three forms.
    pub fn parse(line: &[u8]) -> Option<Answer> {
        if let Some(r) = Refusal::parse(line) {
            return Some(Answer::Refused(r));
        }
        let text = trim_line(line.strip_suffix(b"\n").unwrap_or(line));
        let (head, rest) = word(text);
        let (a, rest) = word(rest);
        let (b, c) = word(rest);
        match head {
            b"ok" => Some(Answer::Ok(Ack {
                offset: parse_u64(a)?,
                msgno: parse_u64(b)?,
                count: parse_u64(c)?,
            })),
            b"end" => Some(Answer::End(End {
                offset: parse_u64(a)?,
                msgno: parse_u64(b)?,
                framing: std::str::from_utf8(c).ok()?.parse().ok()?,
            })),
            _ => None,
        }
    }
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ok {} {} {}", self.offset, self.msgno, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(line: &[u8]) -> Result<Request, Refusal> {
        Request::parse(Mode::File, line)
    }

    #[test]
    fn forms() {
        assert_eq!(
            file(b"msg 5"),
            Ok(Request {
                command: Command::Msg { len: 5 },
                producer: None,
                path: None
            })
        );
        assert_eq!(
            file(b" batch 3 100 id p-1 seq 7\r").unwrap(),
            Request {
                command: Command::Batch { count: 3, len: 100 },
                producer: Some(Producer {
                    id: "p-1".into(),
                    seq: 7
                }),
                path: None
            }
        );
        assert_eq!(file(b"lines").unwrap().command, Command::Lines);
        assert_eq!(file(b"end").unwrap().command, Command::End);
        let dir = Request::parse(Mode::Dir, b"msg 3 to a b/c.log").unwrap();
        assert_eq!(dir.path.as_deref(), Some(&b"a b/c.log"[..]));
        for bad in [
            &b""[..],
            b"msg",
            b"msg -1",
            b"msg 1 2",
            b"batch 1",
            b"lines id p seq 1",
            b"msg 1 id p",
            b"msg 1 id p seq x",
            b"msg 1 id bad/id seq 1",
            b"msg 18446744073709551616",
            b"hello",
        ] {
            assert_eq!(file(bad).unwrap_err().code, Code::BadRequest, "{bad:?}");
        }
        assert_eq!(file(b"msg 1 to x").unwrap_err().code, Code::WrongMode);
        assert_eq!(
            Request::parse(Mode::Dir, b"msg 1").unwrap_err().code,
            Code::WrongMode
        );
    }

    #[test]
    fn answers() {
        let ok = Answer::Ok(Ack {
            offset: 10,
            msgno: 2,
            count: 3,
        });
        assert_eq!(ok.render(), b"ok 10 2 3\n");
        assert_eq!(Answer::parse(b"ok 10 2 3\n"), Some(ok));
        let end = Answer::End(End {
            offset: 1,
            msgno: 0,
            framing: Framing::Varint,
        });
        assert_eq!(end.render(), b"end 1 0 varint\n");
        assert_eq!(Answer::parse(b"end 1 0 varint"), Some(end));
        assert!(matches!(
            Answer::parse(b"error: too-big: x\n"),
            Some(Answer::Refused(r)) if r.code == Code::TooBig
        ));
        assert_eq!(Answer::parse(b"ok 1 2"), None);
        assert_eq!(Answer::parse(b"nope"), None);
    }

    fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            any::<u64>().prop_map(|len| Command::Msg { len }),
            (any::<u64>(), any::<u64>()).prop_map(|(count, len)| Command::Batch { count, len }),
            Just(Command::Lines),
            Just(Command::End),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            command in any_command(),
            id in proptest::option::of(("[A-Za-z0-9._:-]{1,64}", any::<u64>())),
            path in proptest::option::of("[^\n\r]{0,30}[^\n\r\t\x0b\x0c ]"),
        ) {
            let producer = match command {
                Command::Msg { .. } | Command::Batch { .. } => {
                    id.map(|(id, seq)| Producer { id, seq })
                }
                _ => None,
            };
            let mode = if path.is_some() { Mode::Dir } else { Mode::File };
            let r = Request { command, producer, path: path.map(String::into_bytes) };
            let line = r.render();
            prop_assert_eq!(Request::parse(mode, &line[..line.len() - 1]), Ok(r));
        }

        #[test]
        fn answers_round_trip(offset: u64, msgno: u64, count: u64, f in 0..4usize) {
            let a = Answer::Ok(Ack { offset, msgno, count });
            prop_assert_eq!(Answer::parse(&a.render()), Some(a));
            let e = Answer::End(End { offset, msgno, framing: Framing::ALL[f] });
            prop_assert_eq!(Answer::parse(&e.render()), Some(e));
        }

        #[test]
        fn parsers_never_panic(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::parse(Mode::File, &line);
            let _ = Request::parse(Mode::Dir, &line);
            let _ = Answer::parse(&line);
        }
    }
}

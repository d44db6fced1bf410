//! tailsrv's request: one line from the client, then the server only talks.
//!
//! The grammar is what a person can type into `nc`:
//!
//! ```text
//! single-file mode:  N | -N | last N lines        [ ok]
//! directory mode:    list [sizes]
//!                    stream PATH [from byte N|-N] [ ok]
//!                    stream PATH last N lines [ ok]
//! ```
//!
//! `last N lines` (`tail -n`) starts at the N-th line from the end: the server scans back from
//! the file's end with `pread` (an unfinished last line counts as one), at most
//! [`MAX_LINES_SCAN`] bytes; when fewer lines fit in that, the stream starts where the scan
//! stopped.
//!
//! `N` streams from byte N (waiting until the file is that long), `-N` the last N bytes, `-0`
//! from the current end. In directory mode `stream PATH` without `from byte` starts at the
//! end. Paths may contain spaces: the start is what follows the *last* ` from byte `.
//!
//! A trailing ` ok` asks the server to confirm before any data: it answers `ok N LEN\n` with
//! the absolute offset N it resolved the start to and the file's length LEN at that moment
//! (and, for a segmented log whose old segments were deleted, the log start: `ok N LEN
//! START`; see [`Confirmation`])
//! (so a client knows where "the end, as of now" is: `tscat --exit-at-end`, tsmirror's
//! progress), or a [`Refusal`] line. Without it the stream
//! starts at once, as it always has; with it, file data can never be mistaken for a refusal,
//! and a relative start (`-N`) becomes resumable because the client learns where it began.
//! (In directory mode the ` ok` needs an explicit `from byte`: `stream PATH ok`, and a path
//! ending in what looks like a start that did not parse (`from N`, `byte N`, `from byte`),
//! is refused with `bad-request` rather than read as a file name.)

use std::fmt;

use crate::refusal::{Code, Refusal};
use crate::{trim_line, Mode};

/// Longest single-file request line accepted, newline included.
pub const MAX_LINE: usize = 64;

/// Longest path a directory-mode request may name, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;

/// Longest directory-mode request line: `stream `, a path, ` from byte -N ok`, newline.
pub const MAX_DIR_LINE: usize = MAX_PATH_LEN + 64;

/// Longest stretch from a file's end that `last N lines` scans back over.
pub const MAX_LINES_SCAN: u64 = 16 << 20;

/// Where a client wants its stream to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `N`: from this byte offset (the file may not be that long yet).
    Byte(u64),
    /// `-N`: this many bytes before the end of the file; `-0` is the current end.
    FromEnd(u64),
    /// `last N lines`: the start of the N-th line from the end (newline-terminated lines).
    LastLines(u64),
}

impl Start {
    /// The byte offset this start resolves to in a file that is `len` bytes long now.
    ///
    /// `LastLines` needs the file's bytes: use [`Start::resolve_in`]; here it is the end.
    pub fn resolve(self, len: u64) -> u64 {
        match self {
            Start::Byte(n) => n,
            Start::FromEnd(n) => len.saturating_sub(n),
            Start::LastLines(_) => len,
        }
    }

    /// The byte offset this start resolves to in a file `len` bytes long whose bytes
    /// `read_at` reads (`pread`: fills the buffer from the offset, returns how many bytes it
    /// read). For `LastLines` it scans back at most [`MAX_LINES_SCAN`] bytes.
    pub fn resolve_in(
        self,
        len: u64,
        mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<usize>,
    ) -> std::io::Result<u64> {
        let Start::LastLines(n) = self else {
            return Ok(self.resolve(len));
        };
        if n == 0 || len == 0 {
            return Ok(len);
        }
        let floor = len.saturating_sub(MAX_LINES_SCAN);
        let mut buf = vec![0u8; 64 * 1024];
        let mut end = len;
        let mut wanted = n;
        let mut first = true;
        while end > floor {
            let start = end.saturating_sub(buf.len() as u64).max(floor);
            let chunk = &mut buf[..(end - start) as usize];
            let mut got = 0;
            while got < chunk.len() {
                let r = read_at(&mut chunk[got..], start + got as u64)?;
                if r == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                got += r;
            }
            let mut hay = &chunk[..];
            if first {
                first = false;
                // A final newline ends the last line: it does not start another.
                if hay.last() == Some(&b'\n') {
                    hay = &hay[..hay.len() - 1];
                }
            }
            for i in memchr::memrchr_iter(b'\n', hay) {
                wanted -= 1;
                if wanted == 0 {
                    return Ok(start + i as u64 + 1);
                }
            }
            end = start;
        }
        Ok(floor)
    }

    /// Parses `N`, `-N` or `last N lines` (blanks around it and a trailing `\r` allowed).
    pub fn parse(text: &[u8]) -> Result<Start, Refusal> {
        let text = trim_line(text);
        let shown = || String::from_utf8_lossy(text).into_owned();
        if let Some(rest) = text.strip_prefix(b"last ") {
            let digits = rest.strip_suffix(b" lines").unwrap_or_default();
            let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| parse_u64(digits))
                .flatten()
                .ok_or_else(|| {
                    Refusal::new(
                        Code::BadRequest,
                        format!("not `last N lines`: {:?}", shown()),
                    )
                })?;
            return Ok(Start::LastLines(n));
        }
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Refusal::new(
                Code::BadRequest,
                format!("not an integer byte offset (N or -N): {:?}", shown()),
            ));
        }
        let n = parse_u64(digits).ok_or_else(|| {
            Refusal::new(
                Code::BadRequest,
                format!("offset out of range: {:?}", shown()),
            )
        })?;
        Ok(if negative {
            Start::FromEnd(n)
        } else {
            Start::Byte(n)
        })
    }
}

/// `N` or `-N`.
impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::Byte(n) => write!(f, "{n}"),
            Start::FromEnd(n) => write!(f, "-{n}"),
            Start::LastLines(n) => write!(f, "last {n} lines"),
        }
    }
}

/// A request to tailsrv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Stream a file (single-file mode: the file; directory mode: `path`).
    Stream(StreamRequest),
    /// Directory mode's `list`: the servable paths, one per line; `list sizes`: each line
    /// `SIZE PATH` (the file's length in bytes when listed, then the path as in `list`).
    List {
        /// Whether each path comes with its size.
        sizes: bool,
    },
}

/// Which bytes to stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// The file, relative to the served directory; `None` in single-file mode. As sent: whether
    /// it may be served is the server's directory rule to decide. Never contains `\n`.
    pub path: Option<Vec<u8>>,
    /// Where to start.
    pub start: Start,
    /// Whether the client asked for an `ok N` line before the data.
    pub confirm: bool,
}

impl Request {
    /// Parses one request line (without its `\n`) for a server in `mode`.
    pub fn parse(mode: Mode, line: &[u8]) -> Result<Request, Refusal> {
        let text = trim_line(line);
        let is_dir_request =
            text == b"list" || text == b"list sizes" || text.starts_with(b"stream ");
        match mode {
            Mode::File if is_dir_request => Err(Refusal::new(
                Code::WrongMode,
                "this server serves a single file; send N or -N (a byte offset)",
            )),
            Mode::File => {
                let (start, confirm) = split_confirm(text);
                Ok(Request::Stream(StreamRequest {
                    path: None,
                    start: Start::parse(start)?,
                    confirm,
                }))
            }
            Mode::Dir if text == b"list" => Ok(Request::List { sizes: false }),
            Mode::Dir if text == b"list sizes" => Ok(Request::List { sizes: true }),
            Mode::Dir => parse_stream(line).map(Request::Stream),
        }
    }

    /// The request line, `\n` included.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::List { sizes: false } => out.extend_from_slice(b"list"),
            Request::List { sizes: true } => out.extend_from_slice(b"list sizes"),
            Request::Stream(s) => {
                if let Some(path) = &s.path {
                    out.extend_from_slice(b"stream ");
                    out.extend_from_slice(path);
                    if !matches!(s.start, Start::LastLines(_)) {
                        out.extend_from_slice(b" from byte");
                    }
                    out.push(b' ');
                }
                out.extend_from_slice(s.start.to_string().as_bytes());
                if s.confirm {
                    out.extend_from_slice(b" ok");
                }
            }
        }
        out.push(b'\n');
        out
    }
}

/// Splits a trailing ` ok` off `text`.
fn split_confirm(text: &[u8]) -> (&[u8], bool) {
    match text.strip_suffix(b" ok") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// `stream PATH [from byte N|-N] [ok]`; the path is taken as sent (it may hold spaces).
fn parse_stream(line: &[u8]) -> Result<StreamRequest, Refusal> {
    let text = line.strip_suffix(b"\r").unwrap_or(line);
    let shown = String::from_utf8_lossy(text);
    let unknown = || {
        let offset = split_confirm(trim_line(text)).0;
        let wrong = !offset.is_empty() && offset.iter().all(|b| b"-0123456789".contains(b));
        if wrong {
            return Refusal::new(
                Code::WrongMode,
                "this server serves a directory; send `list` or `stream PATH [from byte N|-N]`",
            );
        }
        Refusal::new(
            Code::BadRequest,
            format!("unknown request {shown:?}: send `list` or `stream PATH [from byte N|-N]`"),
        )
    };
    let rest = text.strip_prefix(b"stream ").ok_or_else(unknown)?;
    const FROM: &[u8] = b" from byte ";
    let (path, start, confirm) = match memchr::memmem::rfind(rest, FROM) {
        Some(i) => {
            let (start, confirm) = split_confirm(trim_line(&rest[i + FROM.len()..]));
            (&rest[..i], Start::parse(start)?, confirm)
        }
        None if last_lines_at(rest).is_some() => {
            let i = last_lines_at(rest).expect("checked");
            let (start, confirm) = split_confirm(trim_line(&rest[i + 1..]));
            (&rest[..i], Start::parse(start)?, confirm)
        }
        None => {
            // What looks like a start that did not parse is refused, never read as part of
            // the file name (`stream app.log ok` would else wait forever for "app.log ok").
            let words: Vec<&[u8]> = rest.rsplitn(3, |&b| b == b' ').collect();
            let looks_like_start = match words.as_slice() {
                [last, ..] if *last == b"ok" && words.len() > 1 => true,
                [last, word, _] | [last, word] => {
                    matches!(*word, b"from" | b"byte") && Start::parse(last).is_ok()
                        || (*last == b"byte" && *word == b"from")
                }
                _ => false,
            };
            if looks_like_start {
                return Err(Refusal::new(
                    Code::BadRequest,
                    format!(
                        "cannot parse the start in {shown:?}: send `stream PATH from byte N|-N [ok]` \
                         (` ok` needs an explicit `from byte`)"
                    ),
                ));
            }
            (rest, Start::FromEnd(0), false)
        }
    };
    if path.is_empty() {
        return Err(unknown());
    }
    Ok(StreamRequest {
        path: Some(path.to_vec()),
        start,
        confirm,
    })
}

/// Where ` last N lines [ok]` starts at the end of a directory request's rest, if it does.
fn last_lines_at(rest: &[u8]) -> Option<usize> {
    let i = memchr::memmem::rfind(rest, b" last ")?;
    let tail = split_confirm(trim_line(&rest[i + 1..])).0;
    matches!(Start::parse(tail), Ok(Start::LastLines(_))).then_some(i)
}

/// The server's confirmation of a request with ` ok`: `ok N LEN [START]\n`, N the absolute
/// offset the stream starts at and LEN the file's length when the start was resolved (N may
/// exceed it: the server then waits for the file to grow). START is the first byte the log
/// still holds: always 0 for a single file, and for a segmented log the base of its oldest
/// segment once retention has deleted older ones; it is sent only when it is not 0, so the
/// line is `ok N LEN` wherever nothing was ever deleted. The data follows it directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    /// The absolute byte offset of the first byte that follows.
    pub offset: u64,
    /// The file's length when the start was resolved.
    pub len: u64,
    /// The first byte the log still holds (0 unless retention deleted older bytes).
    pub start: u64,
}

impl Confirmation {
    /// The wire line, `ok N LEN\n`, or `ok N LEN START\n` when START is not 0.
    pub fn render(&self) -> Vec<u8> {
        match self.start {
            0 => format!("ok {} {}\n", self.offset, self.len),
            s => format!("ok {} {} {s}\n", self.offset, self.len),
        }
        .into_bytes()
    }

    /// Parses an `ok N LEN [START]` line (with or without its newline).
    pub fn parse(line: &[u8]) -> Option<Confirmation> {
        let rest = trim_line(line.strip_suffix(b"\n").unwrap_or(line)).strip_prefix(b"ok ")?;
        let mut fields = rest.split(|&b| b == b' ');
        let offset = parse_u64(fields.next()?)?;
        let len = parse_u64(fields.next()?)?;
        let start = match fields.next() {
            Some(s) => parse_u64(s)?,
            None => 0,
        };
        if fields.next().is_some() {
            return None;
        }
        Some(Confirmation { offset, len, start })
    }
}

/// A decimal u64: ASCII digits only, no sign, no overflow.
pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn last_lines_round_trip_and_resolve() {
        for (mode, line) in [
            (Mode::File, &b"last 3 lines ok"[..]),
            (Mode::File, b"last 0 lines"),
            (Mode::Dir, b"stream a b.log last 2 lines ok"),
            (Mode::Dir, b"stream x last 7 lines"),
        ] {
            let r = Request::parse(mode, line).unwrap();
            assert_eq!(r.render(), [line, b"\n"].concat(), "{line:?}");
        }
        assert_eq!(
            Request::parse(Mode::File, b"last -1 lines")
                .unwrap_err()
                .code,
            Code::BadRequest
        );
        fn at(file: &[u8], n: u64) -> u64 {
            let read = |buf: &mut [u8], at: u64| {
                let at = at as usize;
                buf.copy_from_slice(&file[at..at + buf.len()]);
                Ok(buf.len())
            };
            Start::LastLines(n)
                .resolve_in(file.len() as u64, read)
                .unwrap()
        }
        let f = b"a\nbb\nccc\ndddd";
        let got: Vec<u64> = [0, 1, 2, 3, 4, 9].iter().map(|&n| at(f, n)).collect();
        assert_eq!(got, [13, 9, 5, 2, 0, 0]);
        assert_eq!((at(b"a\nbb\n", 1), at(b"a\nbb\n", 2)), (2, 0));
    }

    #[test]
    fn a_start_that_does_not_parse_is_never_a_file_name() {
        for line in [
            &b"stream app.log ok"[..],
            b"stream app.log from 100",
            b"stream app.log byte -5",
            b"stream app.log from byte",
        ] {
            let err = Request::parse(Mode::Dir, line).unwrap_err();
            assert_eq!(err.code, Code::BadRequest, "{line:?}");
        }
        // Names that merely contain the words are still names.
        for (line, path) in [
            (&b"stream ok"[..], &b"ok"[..]),
            (b"stream from 1/app.log", b"from 1/app.log"),
            (b"stream a ok from byte -0 ok", b"a ok"),
        ] {
            match Request::parse(Mode::Dir, line).unwrap() {
                Request::Stream(s) => assert_eq!(s.path.as_deref(), Some(path)),
                r => panic!("{r:?}"),
            }
        }
    }
    use super::*;
    use proptest::prelude::*;

    fn file(line: &[u8]) -> Result<Request, Refusal> {
        Request::parse(Mode::File, line)
    }
    fn dir(line: &[u8]) -> Result<Request, Refusal> {
        Request::parse(Mode::Dir, line)
    }
    fn stream(path: Option<&[u8]>, start: Start, confirm: bool) -> Request {
        Request::Stream(StreamRequest {
            path: path.map(<[u8]>::to_vec),
            start,
            confirm,
        })
    }

    #[test]
    fn single_file_forms() {
        assert_eq!(file(b"0"), Ok(stream(None, Start::Byte(0), false)));
        assert_eq!(file(b"1000\r"), Ok(stream(None, Start::Byte(1000), false)));
        assert_eq!(file(b" 42 "), Ok(stream(None, Start::Byte(42), false)));
        assert_eq!(file(b"-0"), Ok(stream(None, Start::FromEnd(0), false)));
        assert_eq!(file(b"-17 ok"), Ok(stream(None, Start::FromEnd(17), true)));
        assert_eq!(
            file(b"18446744073709551615"),
            Ok(stream(None, Start::Byte(u64::MAX), false))
        );
        for bad in [
            &b""[..],
            b"-",
            b"+5",
            b"12a",
            b"1 2",
            b"--1",
            b"abc",
            b"\xff",
            b"ok",
        ] {
            assert_eq!(file(bad).unwrap_err().code, Code::BadRequest, "{bad:?}");
        }
        assert_eq!(
            file(b"18446744073709551616").unwrap_err().code,
            Code::BadRequest
        );
        assert_eq!(file(b"list").unwrap_err().code, Code::WrongMode);
        assert_eq!(
            file(b"stream a from byte 0").unwrap_err().code,
            Code::WrongMode
        );
    }

    #[test]
    fn directory_forms() {
        assert_eq!(dir(b"list"), Ok(Request::List { sizes: false }));
        assert_eq!(dir(b"list\r"), Ok(Request::List { sizes: false }));
        assert_eq!(dir(b"list sizes"), Ok(Request::List { sizes: true }));
        assert_eq!(Request::List { sizes: true }.render(), b"list sizes\n");
        assert_eq!(
            dir(b"stream a/b.log"),
            Ok(stream(Some(b"a/b.log"), Start::FromEnd(0), false))
        );
        assert_eq!(
            dir(b"stream nginx/access.log from byte -200"),
            Ok(stream(
                Some(b"nginx/access.log"),
                Start::FromEnd(200),
                false
            ))
        );
        assert_eq!(
            dir(b"stream with space.log from byte 7 ok\r"),
            Ok(stream(Some(b"with space.log"), Start::Byte(7), true))
        );
        // Without `from byte`, a trailing " ok" is refused (it was read as part of the path,
        // a wait for a file that does not exist); such a file is `stream a ok from byte -0`.
        assert_eq!(dir(b"stream a ok").unwrap_err().code, Code::BadRequest);
        assert_eq!(
            dir(b"stream a ok from byte -0"),
            Ok(stream(Some(b"a ok"), Start::FromEnd(0), false))
        );
        assert_eq!(dir(b"0").unwrap_err().code, Code::WrongMode);
        assert_eq!(dir(b"-10 ok").unwrap_err().code, Code::WrongMode);
        assert_eq!(dir(b"stream ").unwrap_err().code, Code::BadRequest);
        assert_eq!(dir(b"lis").unwrap_err().code, Code::BadRequest);
        assert_eq!(
            dir(b"stream x from byte y").unwrap_err().code,
            Code::BadRequest
        );
    }

    #[test]
    fn resolve() {
        assert_eq!(Start::Byte(5).resolve(3), 5);
        assert_eq!(Start::FromEnd(5).resolve(3), 0);
        assert_eq!(Start::FromEnd(2).resolve(10), 8);
        assert_eq!(Start::FromEnd(0).resolve(10), 10);
    }

    #[test]
    fn confirmation() {
        let c = Confirmation {
            offset: 1234,
            len: 99,
            start: 0,
        };
        assert_eq!(c.render(), b"ok 1234 99\n");
        assert_eq!(Confirmation::parse(b"ok 1234 99\n"), Some(c));
        assert_eq!(Confirmation::parse(b"ok 1234 99\r\n"), Some(c));
        // A segmented log whose retention deleted bytes 0..1000 says where it starts.
        let segmented = Confirmation { start: 1000, ..c };
        assert_eq!(segmented.render(), b"ok 1234 99 1000\n");
        assert_eq!(Confirmation::parse(b"ok 1234 99 1000\n"), Some(segmented));
        for bad in [
            &b"ok 1234\n"[..],
            b"ok -1 2\n",
            b"ok 1  2\n",
            b"ok 1 2 3 4\n",
            b"ok 1 2 x\n",
            b"ok 1 x\n",
            b"ok  1 2\n",
        ] {
            assert_eq!(Confirmation::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Confirmation::parse(b"error: busy: x\n"), None);
    }

    fn any_start() -> impl Strategy<Value = Start> {
        prop_oneof![
            any::<u64>().prop_map(Start::Byte),
            any::<u64>().prop_map(Start::FromEnd)
        ]
    }

    proptest! {
        #[test]
        fn file_round_trip(start in any_start(), confirm: bool) {
            let r = stream(None, start, confirm);
            let line = r.render();
            prop_assert_eq!(line.len() <= MAX_LINE, true);
            prop_assert_eq!(file(&line[..line.len() - 1]), Ok(r));
        }

        #[test]
        fn dir_round_trip(path in "[^\n\r]{1,40}", start in any_start(), confirm: bool) {
            // Blanks at the ends of a path are taken as sent, except before a trailing \r.
            let r = stream(Some(path.as_bytes()), start, confirm);
            let line = r.render();
            prop_assert_eq!(dir(&line[..line.len() - 1]), Ok(r));
        }

        #[test]
        fn canonical_lines_render_back(n: u64, neg: bool, confirm: bool) {
            let line = format!("{}{n}{}", if neg { "-" } else { "" }, if confirm { " ok" } else { "" });
            let parsed = file(line.as_bytes()).unwrap();
            prop_assert_eq!(parsed.render(), format!("{line}\n").into_bytes());
        }

        #[test]
        fn confirmation_round_trip(offset: u64, len: u64, start: u64) {
            let c = Confirmation { offset, len, start };
            prop_assert_eq!(Confirmation::parse(&c.render()), Some(c));
        }

        #[test]
        fn parsers_never_panic(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = file(&line);
            let _ = dir(&line);
            let _ = Confirmation::parse(&line);
        }
    }
}

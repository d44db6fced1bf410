//! The indexer's queries and answers: text lines a person can type into `nc`, many per
//! connection, one answer line per query, in order.
//!
//! ```text
//! single-file mode            directory mode             answer
//! offset-of N                 offset-of PATH N           byte offset where message N starts
//! count                       count PATH                 number of complete messages
//! message-at B                message-at PATH B          number of the message holding byte B
//! start                       start PATH                 OFFSET MSGNO where the log starts
//! end                         end PATH                   OFFSET MSGNO where the next message goes
//! ```
//!
//! `offset-of COUNT` is where the next message will start. An answer is a decimal number (two
//! for `start` and `end`: a [`Place`], byte offset first) or a [`Refusal`] line; the
//! connection stays usable after a refusal.
//!
//! `start` is Kafka's log start offset: a segmented log loses its oldest segments to
//! retention, and asking below its start is refused with `gone`. A plain file starts at
//! `0 0`. `end` is the end of the complete messages and their count, read together, so
//! the two numbers always belong to each other.
//!
//! Paths may contain spaces, so the directory grammar does not split on blanks: the command
//! ends at the first space, the number is what follows the last space, and the path is
//! everything between (for `count`, everything after the command). So a path can be anything
//! tailsrv serves; only a `count` path that ends in a blank cannot be told from a typo, and is
//! taken literally.

use std::io::Write;

use crate::refusal::{Code, Refusal};
use crate::request::{parse_u64, MAX_DIR_LINE};
use crate::{trim_line, Mode};

/// Longest single-file query line accepted, without its newline.
pub const MAX_LINE: usize = 256;

/// Longest directory-mode query line accepted: a command, a path, a number.
pub const MAX_DIR_QUERY: usize = MAX_DIR_LINE;

const USAGE: &str = "commands: offset-of N, count, message-at B, start, end";
const DIR_USAGE: &str = "this indexer indexes a directory; commands: offset-of PATH N, \
     count PATH, message-at PATH B, start PATH, end PATH";

/// What is asked about one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// `offset-of N`: where message N (0-based) starts.
    OffsetOf(u64),
    /// `count`: how many complete messages there are.
    Count,
    /// `message-at B`: the number of the message that holds byte B.
    MessageAt(u64),
    /// `start`: where the log starts (its oldest byte and message kept), a [`Place`].
    Start,
    /// `end`: where the next message will start and its number (the count), a [`Place`].
    End,
}

impl Question {
    /// The command word, and the argument if the question takes one.
    fn words(self) -> (&'static str, Option<u64>) {
        match self {
            Question::OffsetOf(n) => ("offset-of", Some(n)),
            Question::Count => ("count", None),
            Question::MessageAt(b) => ("message-at", Some(b)),
            Question::Start => ("start", None),
            Question::End => ("end", None),
        }
    }

    /// The question a command word names that takes no argument.
    fn bare(command: &[u8]) -> Option<Question> {
        [Question::Count, Question::Start, Question::End]
            .into_iter()
            .find(|q| q.words().0.as_bytes() == command)
    }
}

/// One query line, borrowing its path from the line it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    /// The file asked about, as sent; `None` in single-file mode.
    pub path: Option<&'a [u8]>,
    /// What is asked.
    pub question: Question,
}

impl<'a> Query<'a> {
    /// Parses one query line (without its `\n`) for an indexer in `mode`.
    pub fn parse(mode: Mode, line: &'a [u8]) -> Result<Query<'a>, Refusal> {
        match mode {
            Mode::File => parse_file(line).map(|question| Query {
                path: None,
                question,
            }),
            Mode::Dir => parse_dir(line).map(|(path, question)| Query {
                path: Some(path),
                question,
            }),
        }
    }

    /// Appends the query line, `\n` included, to `out`.
    pub fn render_into(&self, out: &mut Vec<u8>) {
        let (command, arg) = self.question.words();
        out.extend_from_slice(command.as_bytes());
        if let Some(path) = self.path {
            out.push(b' ');
            out.extend_from_slice(path);
        }
        if let Some(n) = arg {
            let _ = write!(out, " {n}");
        }
        out.push(b'\n');
    }

    /// The query line, `\n` included.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.render_into(&mut out);
        out
    }
}

fn bad(reason: String) -> Refusal {
    Refusal::new(Code::BadRequest, reason)
}

fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse_file(line: &[u8]) -> Result<Question, Refusal> {
    let text = trim_line(line);
    let mut words = text
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let command = words.next().unwrap_or_default();
    let arg = words.next();
    let extra = words.next();
    let number = |what: &str| -> Result<u64, Refusal> {
        match (arg, extra) {
            (None, _) => Err(bad(format!("{} needs a {what} ({USAGE})", shown(command)))),
            (Some(_), Some(x)) => Err(bad(format!("unexpected {:?} after the {what}", shown(x)))),
            (Some(a), None) => parse_u64(a).ok_or_else(|| {
                bad(format!(
                    "bad number {:?}: expected a decimal {what}",
                    shown(a)
                ))
            }),
        }
    };
    match command {
        b"offset-of" => Ok(Question::OffsetOf(number("message number")?)),
        b"message-at" => Ok(Question::MessageAt(number("byte offset")?)),
        b"" => Err(bad(format!("empty request ({USAGE})"))),
        c if Question::bare(c).is_some() => match arg {
            None => Ok(Question::bare(c).expect("just matched")),
            Some(a) => Err(bad(format!(
                "{} takes no argument, got {:?}",
                shown(c),
                shown(a)
            ))),
        },
        other => Err(bad(format!("unknown command {:?} ({USAGE})", shown(other)))),
    }
}

fn parse_dir(line: &[u8]) -> Result<(&[u8], Question), Refusal> {
    let text = line.strip_suffix(b"\r").unwrap_or(line);
    if text.trim_ascii().is_empty() {
        return Err(bad(format!("empty request ({DIR_USAGE})")));
    }
    let (command, rest) = match memchr::memchr(b' ', text) {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &b""[..]),
    };
    let with_number = |what: &str| -> Result<(&[u8], u64), Refusal> {
        let usage = || {
            bad(format!(
                "{} needs a path and a {what} ({DIR_USAGE})",
                shown(command)
            ))
        };
        let i = memchr::memrchr(b' ', rest).ok_or_else(usage)?;
        let (path, n) = (&rest[..i], &rest[i + 1..]);
        if path.is_empty() {
            return Err(usage());
        }
        let n = parse_u64(n).ok_or_else(|| {
            bad(format!(
                "bad number {:?}: expected a decimal {what}",
                shown(n)
            ))
        })?;
        Ok((path, n))
    };
    match command {
        b"offset-of" => with_number("message number").map(|(p, n)| (p, Question::OffsetOf(n))),
        b"message-at" => with_number("byte offset").map(|(p, b)| (p, Question::MessageAt(b))),
        c if Question::bare(c).is_some() => match rest.is_empty() {
            true => Err(bad(format!("{} needs a path ({DIR_USAGE})", shown(c)))),
            false => Ok((rest, Question::bare(c).expect("just matched"))),
        },
        other => Err(bad(format!(
            "unknown command {:?} ({DIR_USAGE})",
            shown(other)
        ))),
    }
}

/// One answer: a number, or why not.
pub type Answer = Result<u64, Refusal>;

/// The answer to `start` or `end`: a byte offset and a message number, one place in the log.
/// On the wire: `OFFSET MSGNO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The byte offset.
    pub offset: u64,
    /// The number of the message that starts there.
    pub message: u64,
}

/// The answer to `start` or `end`.
pub type PlaceAnswer = Result<Place, Refusal>;

/// Appends a `start` or `end` answer line to `out`: `OFFSET MSGNO`, or a refusal.
pub fn render_place(answer: &PlaceAnswer, out: &mut Vec<u8>) {
    match answer {
        Ok(p) => {
            let _ = writeln!(out, "{} {}", p.offset, p.message);
        }
        Err(refusal) => refusal.render_into(out),
    }
}

/// Parses a `start` or `end` answer line (with or without its newline). `None`: neither two
/// numbers nor a refusal.
pub fn parse_place(line: &[u8]) -> Option<PlaceAnswer> {
    if let Some(refusal) = Refusal::parse(line) {
        return Some(Err(refusal));
    }
    let text = trim_line(line.strip_suffix(b"\n").unwrap_or(line));
    let i = memchr::memchr(b' ', text)?;
    Some(Ok(Place {
        offset: parse_u64(&text[..i])?,
        message: parse_u64(&text[i + 1..])?,
    }))
}

/// Appends an answer line to `out` (no allocation for numbers).
pub fn render_answer(answer: &Answer, out: &mut Vec<u8>) {
    match answer {
        Ok(n) => {
            let _ = writeln!(out, "{n}");
        }
        Err(refusal) => refusal.render_into(out),
    }
}

/// Parses an answer line (with or without its newline). `None`: neither a number nor a
/// refusal.
pub fn parse_answer(line: &[u8]) -> Option<Answer> {
    if let Some(refusal) = Refusal::parse(line) {
        return Some(Err(refusal));
    }
    parse_u64(trim_line(line.strip_suffix(b"\n").unwrap_or(line))).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(path: Option<&[u8]>, question: Question) -> Query<'_> {
        Query { path, question }
    }

    #[test]
    fn single_file_grammar() {
        let ok = |l: &[u8]| Query::parse(Mode::File, l).map(|q| q.question);
        assert_eq!(ok(b"count"), Ok(Question::Count));
        assert_eq!(ok(b" offset-of  7 \r"), Ok(Question::OffsetOf(7)));
        assert_eq!(ok(b"message-at 0"), Ok(Question::MessageAt(0)));
        assert_eq!(ok(b"start"), Ok(Question::Start));
        assert_eq!(ok(b" end\r"), Ok(Question::End));
        for bad in [
            &b""[..],
            b"count 1",
            b"start 0",
            b"end x",
            b"starts",
            b"offset-of",
            b"offset-of x",
            b"offset-of -1",
            b"offset-of 1 2",
            b"offset-of 99999999999999999999",
            b"frobnicate 3",
        ] {
            assert_eq!(
                Query::parse(Mode::File, bad).unwrap_err().code,
                Code::BadRequest,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn directory_grammar() {
        let ok = |l| Query::parse(Mode::Dir, l).unwrap();
        assert_eq!(ok(b"count a.log"), q(Some(b"a.log"), Question::Count));
        assert_eq!(ok(b"count a.log\r"), q(Some(b"a.log"), Question::Count));
        assert_eq!(
            ok(b"count with space "),
            q(Some(b"with space "), Question::Count)
        );
        assert_eq!(
            ok(b"offset-of dir/with space.log 12"),
            q(Some(b"dir/with space.log"), Question::OffsetOf(12))
        );
        assert_eq!(
            ok(b"message-at a 5 7"),
            q(Some(b"a 5"), Question::MessageAt(7))
        );
        assert_eq!(ok(b"start seg log"), q(Some(b"seg log"), Question::Start));
        assert_eq!(ok(b"end a.log"), q(Some(b"a.log"), Question::End));
        for bad in [
            &b""[..],
            b"   ",
            b"count",
            b"count ",
            b"start",
            b"end ",
            b"offset-of 5",
            b"offset-of a.log",
            b"offset-of  5",
            b"offset-of a.log x",
            b"offset-of a.log -1",
            b"message-at a.log ",
            b"stream a.log",
        ] {
            assert!(Query::parse(Mode::Dir, bad).is_err(), "{:?}", shown(bad));
        }
    }

    #[test]
    fn answers() {
        let mut out = Vec::new();
        render_answer(&Ok(42), &mut out);
        render_answer(&Err(Refusal::new(Code::NotYet, "message 9")), &mut out);
        assert_eq!(out, b"42\nerror: not-yet: message 9\n");
        assert_eq!(parse_answer(b"42\n"), Some(Ok(42)));
        assert_eq!(
            parse_answer(b"error: not-yet: message 9\n"),
            Some(Err(Refusal::new(Code::NotYet, "message 9")))
        );
        assert_eq!(parse_answer(b"forty-two\n"), None);
        let mut out = Vec::new();
        let place = Place {
            offset: 65536,
            message: 1489,
        };
        render_place(&Ok(place), &mut out);
        assert_eq!(out, b"65536 1489\n");
        assert_eq!(parse_place(&out), Some(Ok(place)));
        assert_eq!(parse_place(b"65536\n"), None);
        assert_eq!(parse_place(b"1 2 3\n"), None);
        assert_eq!(
            parse_place(b"error: gone: x\n"),
            Some(Err(Refusal::new(Code::Gone, "x")))
        );
    }

    fn question() -> impl Strategy<Value = Question> {
        prop_oneof![
            any::<u64>().prop_map(Question::OffsetOf),
            Just(Question::Count),
            any::<u64>().prop_map(Question::MessageAt),
            Just(Question::Start),
            Just(Question::End),
        ]
    }

    proptest! {
        #[test]
        fn file_round_trip(question in question()) {
            let query = q(None, question);
            let line = query.render();
            prop_assert!(line.len() <= MAX_LINE);
            prop_assert_eq!(Query::parse(Mode::File, &line[..line.len() - 1]), Ok(query));
        }

        #[test]
        fn dir_round_trip(path in "[^\n\r ][^\n\r]{0,40}", question in question()) {
            let query = q(Some(path.as_bytes()), question);
            let line = query.render();
            prop_assert_eq!(Query::parse(Mode::Dir, &line[..line.len() - 1]), Ok(query));
        }

        #[test]
        fn answer_round_trip(n: u64, code in 0..Code::ALL.len(), reason in "[^\r\n]{0,60}") {
            for a in [Ok(n), Err(Refusal::new(Code::ALL[code], reason.clone()))] {
                let mut line = Vec::new();
                render_answer(&a, &mut line);
                prop_assert_eq!(parse_answer(&line), Some(a));
            }
        }

        #[test]
        fn parsers_never_panic(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Query::parse(Mode::File, &line);
            let _ = Query::parse(Mode::Dir, &line);
            let _ = parse_answer(&line);
            let _ = parse_place(&line);
        }

        #[test]
        fn place_round_trip(offset: u64, message: u64) {
            let a = Ok(Place { offset, message });
            let mut line = Vec::new();
            render_place(&a, &mut line);
            prop_assert_eq!(parse_place(&line), Some(a));
        }
    }
}

//! The tests' own view of the four framings and of the indexer's protocol.
//!
//! The encoder and the naive scanner are written from the framing definitions and share no
//! code with `proto::framing`, so the indexer and the consumers are checked against offsets
//! they did not compute. The naive scan looks at every byte: slow, obviously right.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use crate::{eventually, Proc, PATIENCE};

/// Every framing, by its command-line name.
pub const FRAMINGS: [&str; 4] = ["newline", "nul", "u32be", "varint"];

/// The delimiter of a delimited framing.
pub fn delimiter(framing: &str) -> Option<u8> {
    match framing {
        "newline" => Some(b'\n'),
        "nul" => Some(0),
        "u32be" | "varint" => None,
        _ => panic!("unknown framing {framing:?}"),
    }
}

/// Appends one message carrying `payload` (a delimiter inside the payload becomes `x`).
pub fn encode(framing: &str, payload: &[u8], out: &mut Vec<u8>) {
    match delimiter(framing) {
        Some(d) => {
            out.extend(payload.iter().map(|&b| if b == d { b'x' } else { b }));
            out.push(d);
        }
        None if framing == "u32be" => {
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
        None => {
            // Unsigned LEB128, as protobuf's writeDelimitedTo writes it.
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

/// The start of every complete message in `data`, and where the next message starts.
pub fn naive_starts(framing: &str, data: &[u8]) -> (Vec<u64>, u64) {
    let mut starts = Vec::new();
    let mut pos = 0usize;
    if let Some(d) = delimiter(framing) {
        for (i, &b) in data.iter().enumerate() {
            if b == d {
                starts.push(pos as u64);
                pos = i + 1;
            }
        }
        return (starts, pos as u64);
    }
    loop {
        let (len, prefix) = if framing == "u32be" {
            let Some(b) = data.get(pos..pos + 4) else {
                break;
            };
            (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize, 4)
        } else {
            let mut len = 0usize;
            let mut i = 0;
            let mut complete = false;
            while let Some(&b) = data.get(pos + i) {
                assert!(i < 9, "the tests only write short varints");
                len |= ((b & 0x7f) as usize) << (7 * i);
                i += 1;
                if b & 0x80 == 0 {
                    complete = true;
                    break;
                }
            }
            if !complete {
                break;
            }
            (len, i)
        };
        if pos + prefix + len > data.len() {
            break;
        }
        starts.push(pos as u64);
        pos += prefix + len;
    }
    (starts, pos as u64)
}

/// A connection to a tailsrv-indexer: one request line, one answer line.
pub struct QueryClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl QueryClient {
    pub fn new(p: &Proc) -> QueryClient {
        let s = p.connect();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        QueryClient {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// One answer line, without its newline.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader
            .read_line(&mut l)
            .unwrap_or_else(|e| panic!("reading an answer: {e}"));
        assert!(l.ends_with('\n'), "answer not terminated: {l:?}");
        l.trim_end().to_owned()
    }

    pub fn ask(&mut self, q: &str) -> String {
        self.writer.write_all(format!("{q}\n").as_bytes()).unwrap();
        self.line()
    }

    /// Sends every query in one write (pipelined) and reads as many answers.
    pub fn ask_all(&mut self, qs: &[String]) -> Vec<String> {
        let batch: String = qs.iter().map(|q| format!("{q}\n")).collect();
        let mut writer = self.writer.try_clone().unwrap();
        let sender = std::thread::spawn(move || writer.write_all(batch.as_bytes()).unwrap());
        let answers = qs.iter().map(|_| self.line()).collect();
        sender.join().unwrap();
        answers
    }

    /// The answer to `q` as a number, or None for an error answer.
    pub fn parsed(&mut self, q: &str) -> Option<u64> {
        self.ask(q).parse().ok()
    }

    /// The answer to `q`, which must be a number.
    pub fn number(&mut self, q: &str) -> u64 {
        let a = self.ask(q);
        a.parse()
            .unwrap_or_else(|_| panic!("{q:?} answered {a:?}, not a number"))
    }

    /// Asks the count query `q` until it reaches `n` (the indexer catches up asynchronously),
    /// then checks that it did not overshoot: a half-written message must never count.
    pub fn wait_count(&mut self, q: &str, n: u64) {
        let last = self.wait_answer(q, |a| a.parse::<u64>().is_ok_and(|c| c >= n));
        assert_eq!(last, n.to_string(), "{q:?} overshot");
    }

    /// Asks until the answer satisfies `ok` (for changes the indexer learns of by inotify).
    pub fn wait_answer(&mut self, q: &str, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let reached = eventually(PATIENCE, || {
            last = self.ask(q);
            ok(&last)
        });
        assert!(reached, "{q:?}: last answer {last:?}");
        last
    }
}

//! The tests' one client for the line protocols: a request out, an answer line back. The
//! indexer (`count`, `offset-of N`) and the collator (`msg LEN\nBODY`, `batch ...`, `end`) both
//! speak it; every read is bounded by [`PATIENCE`].

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use crate::{eventually, Proc, PATIENCE};

/// A connection to a server that answers each request with one line.
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    /// Connects to the server `p`.
    pub fn new(p: &Proc) -> LineClient {
        LineClient::connect(p.addr())
    }

    /// Connects to `addr` (from a thread that has no `Proc`).
    pub fn connect(addr: SocketAddr) -> LineClient {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        LineClient {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// Sends raw bytes (requests, bodies, several of them at once).
    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Shuts down the sending side (a FIN after the last request).
    pub fn shutdown_write(&self) {
        self.writer.shutdown(Shutdown::Write).unwrap();
    }

    /// The next answer line without its newline; None at the end of the stream or on an
    /// error.
    pub fn next_line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l.trim_end().to_owned()),
        }
    }

    /// One answer line, without its newline (it must be complete).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader
            .read_line(&mut l)
            .unwrap_or_else(|e| panic!("reading an answer: {e}"));
        assert!(l.ends_with('\n'), "answer not terminated: {l:?}");
        l.trim_end().to_owned()
    }

    /// Sends the raw request `req` and returns the answer line.
    pub fn request(&mut self, req: &[u8]) -> String {
        self.send(req);
        self.line()
    }

    /// Sends `req` and returns the answer line, or what ended the connection instead:
    /// `(closed)`, `(send failed: E)`, `(read failed: E)` (for a server that may die).
    pub fn try_request(&mut self, req: &[u8]) -> String {
        if let Err(e) = self.writer.write_all(req) {
            return format!("(send failed: {e})");
        }
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => "(closed)".into(),
            Ok(_) => l.trim_end().to_owned(),
            Err(e) => format!("(read failed: {e})"),
        }
    }

    /// Sends the query line `q` (the newline is added here) and returns the answer.
    pub fn ask(&mut self, q: &str) -> String {
        self.request(format!("{q}\n").as_bytes())
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

//! One query connection's life. The grammar (`offset-of N`, `count`, `message-at B`, `start`,
//! `end`, and the directory forms that name the file first) is `proto::query`'s; this module reads lines,
//! asks the index, and writes answers.
//!
//! Every request gets exactly one answer line, a decimal number or `error: CODE: reason`,
//! and the connection stays usable after an error. Clients may pipeline: each `read()` takes
//! whatever requests have arrived, all of them are answered into one buffer, and that buffer
//! goes out in one write, so a client that sends thousands of queries at once costs a few
//! system calls, not thousands. After each batch the task yields, so connections are
//! answered in turn, batch by batch, however fast one client refills its pipeline. A request line longer than the grammar's limit is answered
//! with an error and the connection is closed: there is no sensible way to resynchronise.
//!
//! A client may shut down its sending side after its last request (`nc -N`, `ncat` and
//! `socat` do when their input ends): a FIN only ends the reading. Every request that arrived
//! before it is answered in order (a last one without its newline too), the answers are
//! written, and only then is the connection closed; the close is clean, since nothing is
//! left unread. This holds when the FIN arrives with a batch of requests, or while an answer
//! is still being computed (a directory-mode index built on its first query).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use async_io::Async;
use futures_lite::AsyncWriteExt;
use proto::query::{
    render_answer, render_place, Answer, PlaceAnswer, Query, Question, MAX_DIR_QUERY, MAX_LINE,
};
use proto::{trim_line, Code, Mode, Refusal};
use shared::net;

use crate::directory::Directory;
use crate::index::{Index, Scratch};
use crate::segmented::Segmented;

/// What queries are answered from.
#[derive(Clone)]
pub(crate) enum Indexed {
    /// Single-file mode: one index; requests name no file.
    File(Arc<Index>),
    /// Directory mode: each request names its file first.
    Dir(Arc<Directory>),
    /// A segmented log: requests name no file, and are routed to a segment.
    Segmented(Arc<Segmented>),
}

impl Indexed {
    fn mode(&self) -> Mode {
        match self {
            Indexed::File(_) | Indexed::Segmented(_) => Mode::File,
            Indexed::Dir(_) => Mode::Dir,
        }
    }

    fn max_line(&self) -> usize {
        match self.mode() {
            Mode::File => MAX_LINE,
            Mode::Dir => MAX_DIR_QUERY,
        }
    }
}

/// One answer line: a number, or a place (`start`, `end`).
pub(crate) enum Reply {
    /// `offset-of`, `count`, `message-at`.
    Number(Answer),
    /// `start`, `end`.
    Place(PlaceAnswer),
}

impl Reply {
    fn render(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Number(a) => render_answer(a, out),
            Reply::Place(a) => render_place(a, out),
        }
    }
}

/// Answers `question` from one file's index.
pub(crate) fn ask(question: Question, index: &Index, scratch: &mut Scratch) -> Reply {
    match question {
        Question::OffsetOf(n) => Reply::Number(index.offset_of(n, scratch)),
        Question::Count => Reply::Number(index.count()),
        Question::MessageAt(b) => Reply::Number(index.message_at(b, scratch)),
        Question::Start => Reply::Place(index.start()),
        Question::End => Reply::Place(index.end()),
    }
}

/// What a connection keeps between requests.
#[derive(Default)]
struct Conn {
    /// The index of the last path asked about in the current batch: a client that
    /// pipelines many queries about one file has the path checked once per batch, not per
    /// line. Forgotten after each batch, so a file replaced meanwhile is looked up again.
    recent: Option<(Vec<u8>, Arc<Index>)>,
    scratch: Scratch,
}

/// Answers one line (without its newline).
async fn answer(indexed: &Indexed, conn: &mut Conn, line: &[u8]) -> Reply {
    let query = match Query::parse(indexed.mode(), line) {
        Ok(q) => q,
        Err(r) => return Reply::Number(Err(r)),
    };
    let index = match (indexed, query.path) {
        (Indexed::File(index), _) => index.clone(),
        (Indexed::Segmented(log), _) => return log.ask(query.question, &mut conn.scratch),
        (Indexed::Dir(dir), Some(path)) => match &conn.recent {
            Some((p, ix)) if p == path => ix.clone(),
            _ => {
                let ix = match dir.index_of(path).await {
                    Ok(ix) => ix,
                    Err(r) => return Reply::Number(Err(r)),
                };
                conn.recent = Some((path.to_vec(), ix.clone()));
                ix
            }
        },
        (Indexed::Dir(_), None) => unreachable!("directory queries always name a path"),
    };
    ask(query.question, &index, &mut conn.scratch)
}

/// Serves one connection until the client has shut down its sending side (and has been
/// answered) or the connection fails.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, indexed: Indexed) {
    let Some(sock) = net::register(stream, peer) else {
        return;
    };
    log::debug!(client:% = peer; "client connected");
    let why = match converse(&sock, &indexed).await {
        Ok(()) => "client closed".to_string(),
        Err(e) => e.to_string(),
    };
    log::debug!(client:% = peer; "client done: {why}");
}

/// Reads requests, answers each batch with one write.
async fn converse(sock: &Async<TcpStream>, indexed: &Indexed) -> io::Result<()> {
    let max_line = indexed.max_line();
    let mut buf = vec![0u8; 64 << 10];
    // Bytes of a request line whose newline has not arrived yet.
    let mut partial: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut conn = Conn::default();
    loop {
        let n = sock.read_with(|s| (&*s).read(&mut buf)).await?;
        conn.recent = None;
        if n == 0 {
            // A last request without its newline (`printf count | nc`) still gets its answer.
            if !trim_line(&partial).is_empty() {
                answer(indexed, &mut conn, &partial).await.render(&mut out);
                write_all(sock, &out).await?;
            }
            return Ok(());
        }
        let mut data = &buf[..n];
        let mut too_long = false;
        while let Some(i) = memchr::memchr(b'\n', data) {
            let line: &[u8] = if partial.is_empty() {
                &data[..i]
            } else {
                partial.extend_from_slice(&data[..i]);
                &partial
            };
            if line.len() > max_line {
                too_long = true;
                break;
            }
            answer(indexed, &mut conn, line).await.render(&mut out);
            partial.clear();
            data = &data[i + 1..];
        }
        if !too_long {
            partial.extend_from_slice(data);
            too_long = partial.len() > max_line;
        }
        if too_long {
            let refusal = Refusal::new(
                Code::TooLong,
                format!("request line longer than {max_line} bytes; closing"),
            );
            render_answer(&Err(refusal), &mut out);
            net::finish(sock, &out, net::LINGER).await;
            return Err(io::Error::other("request line too long"));
        }
        write_all(sock, &out).await?;
        out.clear();
        // Let the other connections' tasks run before reading again. A client that keeps its
        // pipeline full always has more requests waiting, so the next read never waits, and
        // without this one task could answer batch after batch while the connections queued
        // behind it on this thread wait (the bench's p50 300 µs / p99 36 ms without the
        // stride cache). Yielding puts this task at the back of the queue.
        futures_lite::future::yield_now().await;
    }
}

/// Writes all of `data` (the answers to one batch of requests, in one write when it fits).
async fn write_all(sock: &Async<TcpStream>, data: &[u8]) -> io::Result<()> {
    let mut writer = sock;
    writer.write_all(data).await
}

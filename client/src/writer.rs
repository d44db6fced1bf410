//! Writing to a tailsrv-collator: [`Writer`] batches messages, pipelines the batches,
//! retries without duplicates, and tells the caller where every message landed — or hands
//! it back. It never drops a message silently.
//!
//! - **Batching:** messages are framed (in the framing the collator announces with `end`)
//!   into one `batch` request until it holds `batch_bytes`, or its first message is `linger`
//!   old when the next arrives, or the caller [`flush`](Writer::flush)es.
//! - **Pipelining:** up to `max_in_flight` requests are sent before the first answer is
//!   read; answers come back in request order.
//! - **Retries:** with a producer id every request carries `id P seq S`. After a lost
//!   connection the writer reconnects (failing over along the server list, with capped
//!   backoff, for up to `retry_for`) and resends everything unanswered with the *same*
//!   sequence numbers; the collator answers what it already wrote with the original position
//!   and writes the rest. Without an id a lost connection leaves the fate of the requests in
//!   flight unknown, and they are handed back ([`Error::Unknown`]) rather than guessed at.
//! - **Refusals:** a transient one (`busy`, `disk-full`...) is retried; any other hands the
//!   batch back ([`Event::Failed`]). The requests pipelined behind a refused one are refused
//!   by the collator as a `sequence-gap` and are renumbered and resent.
//!
//! Every message gets exactly one event, in the order written: [`Event::Acked`] with its
//! byte offset and message number, or [`Event::Failed`] with its bytes.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use proto::collate::{check_message, frame_into, Ack, Answer, Command, Producer, Request};
use proto::framing::Framing;
use proto::{Code, Refusal};

/// How a [`Writer`] writes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Collators to try, in order (`HOST:PORT`); the next one is tried when one fails.
    pub servers: Vec<String>,
    /// The file, for a collator in directory mode.
    pub path: Option<String>,
    /// Producer id for idempotent retries (`[A-Za-z0-9._:-]`, 1 to 64 characters).
    pub producer: Option<String>,
    /// A batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    /// ...or once its first message is this old when another is written.
    pub linger: Duration,
    /// Requests sent before waiting for an answer (at most the collator's dedupe window).
    pub max_in_flight: usize,
    /// How long to keep trying to reconnect before handing everything back.
    pub retry_for: Duration,
    /// Longest message accepted (the collator's `--max-message`), checked before sending.
    pub max_message: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            servers: Vec::new(),
            path: None,
            producer: None,
            batch_bytes: 64 << 10,
            linger: Duration::from_millis(5),
            max_in_flight: 64,
            retry_for: Duration::from_secs(30),
            max_message: 1 << 20,
        }
    }
}

/// Why messages were handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The collator refused them (nothing was written).
    Refused(Refusal),
    /// The connection was lost without a producer id: they may or may not have been written.
    Unknown(String),
    /// No collator could be reached within `retry_for` (nothing more was written).
    Unreachable(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(r) => write!(f, "refused: {r}"),
            Error::Unknown(why) => write!(f, "fate unknown (may or may not be written): {why}"),
            Error::Unreachable(why) => write!(f, "no collator reachable: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// What happened to a batch of messages. `first` is the number of its first message among
/// those given to [`Writer::write`] (0-based), so events can be matched to messages.
#[derive(Debug)]
pub enum Event<'a> {
    /// Written: message `first + i` starts at byte `offsets[i]` and is message number
    /// `ack.msgno + i`.
    Acked {
        /// The first message's number among those written to this writer.
        first: u64,
        /// The collator's answer.
        ack: Ack,
        /// Each message's byte offset.
        offsets: &'a [u64],
    },
    /// Handed back, with why.
    Failed {
        /// The first message's number among those written to this writer.
        first: u64,
        /// The messages, as given to `write`.
        messages: Vec<Vec<u8>>,
        /// Why.
        error: &'a Error,
    },
}

struct Batch {
    first: u64,
    seq: Option<u64>,
    body: Vec<u8>,
    /// Each message's payload range in `body`.
    payloads: Vec<(usize, usize)>,
    /// Each message's offset from the batch's start.
    starts: Vec<u64>,
    tries: u32,
}

impl Batch {
    fn new(first: u64) -> Batch {
        Batch {
            first,
            seq: None,
            body: Vec::new(),
            payloads: Vec::new(),
            starts: Vec::new(),
            tries: 0,
        }
    }

    fn messages(&self) -> Vec<Vec<u8>> {
        self.payloads
            .iter()
            .map(|&(a, b)| self.body[a..b].to_vec())
            .collect()
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// Writes messages to a collator (see the module docs). `handler` gets every [`Event`].
pub struct Writer<H: FnMut(Event<'_>)> {
    config: Config,
    handler: H,
    framing: Option<Framing>,
    conn: Option<Conn>,
    server: usize,
    current: Batch,
    started: Option<Instant>,
    in_flight: VecDeque<Batch>,
    /// Batches answered with a refusal to be resent, and the sequence to renumber from.
    requeue: VecDeque<Batch>,
    rewind_to: Option<u64>,
    next_seq: u64,
    next_index: u64,
}

impl<H: FnMut(Event<'_>)> fmt::Debug for Writer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("servers", &self.config.servers)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

/// Answers the caller cannot act on, as I/O errors of the connection.
fn protocol_error(line: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected answer {:?}", String::from_utf8_lossy(line)),
    )
}

impl<H: FnMut(Event<'_>)> Writer<H> {
    /// A writer; it connects on first use. The sequence starts at a number taken from the
    /// clock, so a restarted producer with the same id does not collide with its old requests.
    pub fn new(config: Config, handler: H) -> Writer<H> {
        let next_seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Writer {
            config,
            handler,
            framing: None,
            conn: None,
            server: 0,
            current: Batch::new(0),
            started: None,
            in_flight: VecDeque::new(),
            requeue: VecDeque::new(),
            rewind_to: None,
            next_seq,
            next_index: 0,
        }
    }

    /// The framing of the collator's file (connecting if needed).
    pub fn framing(&mut self) -> Result<Framing, Error> {
        if let Some(f) = self.framing {
            return Ok(f);
        }
        self.reconnect()?;
        self.framing
            .ok_or_else(|| Error::Unreachable("no framing announced".into()))
    }

    /// Adds one message. A message that can never be written (empty, too long, a delimiter
    /// inside) is refused here, before anything is sent. `Err(Unreachable)` when no collator
    /// could be reached (everything pending was handed back to the handler).
    pub fn write(&mut self, message: &[u8]) -> Result<(), Error> {
        let framing = self.framing()?;
        check_message(framing, message, self.config.max_message).map_err(Error::Refused)?;
        if self.current.payloads.is_empty() {
            self.current.first = self.next_index;
            self.started = Some(Instant::now());
        }
        let start = self.current.body.len();
        frame_into(framing, message, &mut self.current.body);
        let end = self.current.body.len();
        let payload_start = match framing {
            Framing::Newline | Framing::Nul => start,
            _ => end - message.len(),
        };
        self.current
            .payloads
            .push((payload_start, payload_start + message.len()));
        self.current.starts.push(start as u64);
        self.next_index += 1;
        let lingered = self
            .started
            .is_some_and(|t| t.elapsed() >= self.config.linger);
        if self.current.body.len() >= self.config.batch_bytes || lingered {
            self.send_current()?;
        }
        Ok(())
    }

    /// Sends what is batched and waits for every answer.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.send_current()?;
        while !self.in_flight.is_empty() || !self.requeue.is_empty() {
            if self.in_flight.is_empty() {
                self.resend_requeued()?;
            } else {
                self.read_answer()?;
            }
        }
        Ok(())
    }

    fn send_current(&mut self) -> Result<(), Error> {
        if self.current.payloads.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.current, Batch::new(self.next_index));
        self.started = None;
        self.send(batch)?;
        while self.in_flight.len() >= self.config.max_in_flight.max(1) {
            self.read_answer()?;
        }
        Ok(())
    }

    /// Numbers (if new) and sends a batch; a failed send reconnects and resends.
    fn send(&mut self, mut batch: Batch) -> Result<(), Error> {
        if self.config.producer.is_some() && batch.seq.is_none() {
            batch.seq = Some(self.next_seq);
            self.next_seq += 1;
        }
        let wire = self.render(&batch);
        self.in_flight.push_back(batch);
        let sent = match &mut self.conn {
            Some(c) => c.writer.write_all(&wire),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        if let Err(e) = sent {
            self.connection_lost(e)?;
        }
        Ok(())
    }

    fn render(&self, batch: &Batch) -> Vec<u8> {
        let request = Request {
            command: Command::Batch {
                count: batch.payloads.len() as u64,
                len: batch.body.len() as u64,
            },
            producer: match (&self.config.producer, batch.seq) {
                (Some(id), Some(seq)) => Some(Producer {
                    id: id.clone(),
                    seq,
                }),
                _ => None,
            },
            path: self.config.path.as_ref().map(|p| p.as_bytes().to_vec()),
        };
        let mut wire = request.render();
        wire.extend_from_slice(&batch.body);
        wire
    }

    /// Reads one answer and acts on it.
    fn read_answer(&mut self) -> Result<(), Error> {
        let mut line = Vec::new();
        let read = match &mut self.conn {
            Some(c) => c.reader.read_until(b'\n', &mut line).and_then(|n| {
                if n == 0 || !line.ends_with(b"\n") {
                    Err(io::ErrorKind::UnexpectedEof.into())
                } else {
                    Ok(())
                }
            }),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        if let Err(e) = read {
            return self.connection_lost(e);
        }
        let answer = match Answer::parse(&line) {
            Some(a @ (Answer::Ok(_) | Answer::Refused(_))) => a,
            _ => return self.connection_lost(protocol_error(&line)),
        };
        let Some(batch) = self.in_flight.pop_front() else {
            return self.connection_lost(protocol_error(&line));
        };
        match answer {
            Answer::Ok(ack) => {
                let offsets: Vec<u64> = batch.starts.iter().map(|s| ack.offset + s).collect();
                (self.handler)(Event::Acked {
                    first: batch.first,
                    ack,
                    offsets: &offsets,
                });
            }
            Answer::Refused(r) if r.code == Code::SequenceGap && self.rewind_to.is_some() => {
                self.requeue.push_back(batch);
            }
            Answer::Refused(r) => {
                let transient = r.code.is_transient() && batch.tries < 20;
                if batch.seq.is_some() && self.rewind_to.is_none() {
                    self.rewind_to = batch.seq;
                }
                if transient {
                    let mut batch = batch;
                    batch.tries += 1;
                    std::thread::sleep(Duration::from_millis(10 << batch.tries.min(6)));
                    self.requeue.push_back(batch);
                } else {
                    self.fail(batch, &Error::Refused(r));
                }
            }
            Answer::End(_) => unreachable!("filtered above"),
        }
        if self.in_flight.is_empty() && !self.requeue.is_empty() {
            self.resend_requeued()?;
        }
        Ok(())
    }

    /// Resends the requeued batches, renumbered from where the collator's sequence stopped.
    fn resend_requeued(&mut self) -> Result<(), Error> {
        if let Some(seq) = self.rewind_to.take() {
            self.next_seq = seq;
            for b in &mut self.requeue {
                b.seq = None;
            }
        }
        while let Some(b) = self.requeue.pop_front() {
            self.send(b)?;
        }
        Ok(())
    }

    fn fail(&mut self, batch: Batch, error: &Error) {
        (self.handler)(Event::Failed {
            first: batch.first,
            messages: batch.messages(),
            error,
        });
    }

    /// The connection failed: without an id, hand back what was in flight; with one, reconnect
    /// and resend it all with the same sequence numbers.
    fn connection_lost(&mut self, e: io::Error) -> Result<(), Error> {
        log::debug!("collator connection lost: {e}");
        self.conn = None;
        let mut pending: VecDeque<Batch> = std::mem::take(&mut self.requeue);
        pending.extend(self.in_flight.drain(..));
        if self.config.producer.is_none() {
            let error = Error::Unknown(e.to_string());
            for b in pending {
                self.fail(b, &error);
            }
            return self.reconnect();
        }
        if let Err(err) = self.reconnect() {
            for b in pending {
                self.fail(b, &err);
            }
            let current = std::mem::replace(&mut self.current, Batch::new(self.next_index));
            if !current.payloads.is_empty() {
                self.fail(current, &err);
            }
            self.rewind_to = None;
            return Err(err);
        }
        if let Some(seq) = self.rewind_to.take() {
            self.next_seq = seq;
            for b in &mut pending {
                b.seq = None;
            }
        }
        for b in pending {
            self.send(b)?;
        }
        Ok(())
    }

    /// Connects to the next server that answers `end`, with capped backoff, for up to
    /// `retry_for`.
    fn reconnect(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.retry_for;
        let mut delay = Duration::from_millis(10);
        let mut last = String::from("no servers given");
        loop {
            for _ in 0..self.config.servers.len() {
                let server = self.config.servers[self.server % self.config.servers.len()].clone();
                match self.connect(&server) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        last = format!("{server}: {e}");
                        self.server += 1;
                    }
                }
            }
            if Instant::now() + delay > deadline || self.config.servers.is_empty() {
                return Err(Error::Unreachable(last));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    fn connect(&mut self, server: &str) -> io::Result<()> {
        let s = TcpStream::connect(server)?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        };
        let request = Request {
            command: Command::End,
            producer: None,
            path: self.config.path.as_ref().map(|p| p.as_bytes().to_vec()),
        };
        c.writer.write_all(&request.render())?;
        let mut line = Vec::new();
        c.reader.read_until(b'\n', &mut line)?;
        match Answer::parse(&line) {
            Some(Answer::End(end)) => {
                if self.framing.is_some_and(|f| f != end.framing) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "this collator frames with {}, the previous one did not",
                            end.framing
                        ),
                    ));
                }
                self.framing = Some(end.framing);
                self.conn = Some(c);
                Ok(())
            }
            Some(Answer::Refused(r)) => Err(io::Error::other(r.to_string())),
            _ => Err(protocol_error(&line)),
        }
    }
}

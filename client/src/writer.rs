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
//! - **A collator that lost its unsynced tail** (a power loss under `--sync interval=MS`,
//!   `write` or `none`: an `ok` there is not durable) comes back shorter than what it acked.
//!   The writer sees it three ways: the `end` answered on reconnecting is below the end of a
//!   batch it had acked, a later ack lands below one, or a retry is refused with
//!   `sequence-gap ... expected N` (the collator remembers this producer's requests up to
//!   N-1 only). The acked batches the collator lost are written again first, from the
//!   last [`Config::keep_acked`] bytes of acked batches the writer keeps for this
//!   ([`Event::Rewritten`] gives their new positions), then the batches in hand (unanswered,
//!   or refused and requeued), renumbered from N: no gap remains, none is written twice, the
//!   order is kept. Acked batches lost beyond what is kept, or seen only when a later ack
//!   lands before them (writing them again would break the order), are reported:
//!   [`Event::Lost`] with their message numbers, never silently. What the writer cannot see:
//!   a collator that lost every record of this producer *and* was written past the lost
//!   bytes by others before the writer reconnected, or a loss of more than the collator's
//!   window (256 requests) minus `max_in_flight`. (Offsets are compared
//!   across reconnects, so the server list must name one collator's file: addresses of it,
//!   or a standby that takes that file over.)
//! - **Resuming a session** ([`Config::resume_seq`], used by `tswrite --state`): a new
//!   process continues a producer session at a sequence number saved after an ack, so the
//!   requests a killed predecessor left unanswered are retried, not written again. Their
//!   batching is not known, so the first requests carry one message each and are sent one
//!   at a time: a retry is answered with the original's position and count, COUNT > 1 means
//!   the next COUNT-1 messages written to this writer were in the original too and are
//!   acknowledged at once (their offsets computed from the framing) without being sent. The
//!   first answer at or past the `end` the collator gave on connecting is a fresh write and
//!   ends the probing. This is exact only if the messages are the ones the predecessor sent
//!   (the same input): the collator does not compare a retry's bytes with the original's.
//!
//! Every message gets exactly one [`Event::Acked`] (its byte offset and message number) or
//! [`Event::Failed`] (its bytes), in the order written; an acked message may later also be
//! reported [`Event::Rewritten`] or [`Event::Lost`].

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use proto::collate::{Ack, Answer, Command, Producer, Request};
use proto::framing::check_message;
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
    /// Continue a producer session (with `producer`) at this sequence number instead of
    /// starting a new one from the clock; the first requests probe the collator one message
    /// at a time (see the module docs).
    pub resume_seq: Option<u64>,
    /// Bytes of acknowledged batches kept to write them again if the collator loses them
    /// (a power loss under `--sync interval=MS`, `write` or `none`); beyond it a loss is
    /// reported ([`Event::Lost`]). In `--sync data` mode nothing acknowledged is lost.
    pub keep_acked: usize,
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
            resume_seq: None,
            keep_acked: 16 << 20,
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
    /// Acknowledged, then lost by the collator (a power loss before its sync): not resent.
    Lost(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(r) => write!(f, "refused: {r}"),
            Error::Unknown(why) => write!(f, "fate unknown (may or may not be written): {why}"),
            Error::Unreachable(why) => write!(f, "no collator reachable: {why}"),
            Error::Lost(why) => write!(f, "acknowledged, then lost by the collator: {why}"),
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
        /// `Some(S)` when this event completes the request with sequence number S (every
        /// message of it has now been reported): a checkpoint may resume at S + 1.
        seq: Option<u64>,
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
    /// Messages acknowledged before and then lost by the collator were written again: message
    /// `first + i` is now at byte `offsets[i]`, number `ack.msgno + i` (the earlier positions
    /// are void).
    Rewritten {
        /// The first message's number among those written to this writer.
        first: u64,
        /// The collator's answer.
        ack: Ack,
        /// Each message's byte offset.
        offsets: &'a [u64],
    },
    /// Messages `first..first + count`, acknowledged before, are not in the collator's file
    /// any more (it lost its unsynced tail); the writer no longer has them. `count` is 0 when
    /// the lost requests were acknowledged to an earlier process (a resumed session): the
    /// error then names their sequence numbers.
    Lost {
        /// The first lost message's number among those written to this writer.
        first: u64,
        /// How many.
        count: u64,
        /// Which requests, and why.
        error: &'a Error,
    },
}

/// An acknowledged batch, remembered to recognise its loss (and, within
/// [`Config::keep_acked`], with its bytes, to write it again).
struct AckedBatch {
    seq: Option<u64>,
    first: u64,
    count: u64,
    /// The byte offset after its last message.
    end: u64,
    batch: Option<Batch>,
}

/// Acked batches remembered (more than the collator's window plus what is in flight).
const ACKED_KEPT: usize = 1024;

struct Batch {
    first: u64,
    seq: Option<u64>,
    body: Vec<u8>,
    /// Each message's payload range in `body`.
    payloads: Vec<(usize, usize)>,
    /// Each message's offset from the batch's start.
    starts: Vec<u64>,
    tries: u32,
    /// Acknowledged before, lost by the collator, being written again.
    rewritten: bool,
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
            rewritten: false,
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
    /// The last acked batches, oldest first.
    acked: VecDeque<AckedBatch>,
    /// Resuming a session: requests go one message at a time until one is written fresh.
    probing: bool,
    /// The collator's `end` offset at the last connect.
    connect_end: u64,
    /// Messages of a retried original still to be acknowledged without sending:
    /// (how many, next offset, next message number, the original's sequence number).
    skip: Option<(u64, u64, u64, u64)>,
    /// Whether the loss of requests from before a resumed session's start was reported.
    reported_before_start: bool,
    /// Bytes of the bodies kept in `acked`.
    kept_bytes: usize,
    /// Lost batches to write again, oldest first, ahead of everything else.
    lost_resend: VecDeque<Batch>,
}

impl<H: FnMut(Event<'_>)> fmt::Debug for Writer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("servers", &self.config.servers)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

/// A sequence number from the clock (microseconds since the epoch): a new session's start.
pub fn clock_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `N` of a `sequence-gap` refusal's `expected N` (the collator's wording; `None` for
/// the too-old form, which has none).
fn expected(reason: &str) -> Option<u64> {
    let rest = &reason[reason.rfind("expected ")? + "expected ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Answers the caller cannot act on, as I/O errors of the connection.
fn protocol_error(line: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected answer {:?}", String::from_utf8_lossy(line)),
    )
}

impl<H: FnMut(Event<'_>)> Writer<H> {
    /// A writer; it connects on first use. The sequence starts at `resume_seq`, or else at a
    /// number taken from the clock ([`clock_seq`]), so a restarted producer with the same id
    /// does not collide with its old requests.
    pub fn new(config: Config, handler: H) -> Writer<H> {
        let next_seq = config.resume_seq.unwrap_or_else(clock_seq);
        let probing = config.resume_seq.is_some() && config.producer.is_some();
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
            acked: VecDeque::new(),
            probing,
            connect_end: 0,
            skip: None,
            reported_before_start: false,
            kept_bytes: 0,
            lost_resend: VecDeque::new(),
        }
    }

    /// Messages of a request the previous process wrote that are still to be written to this
    /// writer (and will be acknowledged without being sent); non-zero at the end of the input
    /// means the input is not the one the previous process had.
    pub fn owed_to_retry(&self) -> u64 {
        self.skip.map_or(0, |s| s.0)
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
    /// inside) is refused here, before anything is sent (it takes its number all the same).
    /// `Err(Unreachable)` when no collator could be reached (everything pending was handed
    /// back to the handler).
    pub fn write(&mut self, message: &[u8]) -> Result<(), Error> {
        let framing = self.framing()?;
        if let Err(r) = check_message(framing, message, self.config.max_message) {
            // It takes its number, so the numbers stay those of the caller's messages.
            self.next_index += 1;
            return Err(Error::Refused(r));
        }
        if let Some((left, offset, msgno, seq)) = self.skip {
            // Part of an original the collator already holds: acknowledged without sending.
            let first = self.next_index;
            self.next_index += 1;
            let mut framed = Vec::new();
            framing.encode(message, &mut framed);
            let len = framed.len() as u64;
            self.skip = (left > 1).then_some((left - 1, offset + len, msgno + 1, seq));
            (self.handler)(Event::Acked {
                first,
                ack: Ack {
                    offset,
                    msgno,
                    count: 1,
                },
                offsets: &[offset],
                seq: (left == 1).then_some(seq),
            });
            return Ok(());
        }
        if self.current.payloads.is_empty() {
            self.current.first = self.next_index;
            self.started = Some(Instant::now());
        }
        let start = self.current.body.len();
        framing.encode(message, &mut self.current.body);
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
        if self.probing {
            self.flush()?;
        } else if self.current.body.len() >= self.config.batch_bytes || lingered {
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
            Answer::Ok(ack) => self.acked(batch, ack),
            Answer::Refused(r) if r.code == Code::SequenceGap && expected(&r.reason).is_some() => {
                // The collator holds this producer's requests up to N-1: what it lacks of
                // ours (acked before) is lost; this batch and those behind it are resent
                // from N.
                let n = expected(&r.reason).unwrap_or_default();
                self.lost_from_seq(n);
                self.rewind_to = Some(n);
                while let Some(b) = self.lost_resend.pop_back() {
                    self.requeue.push_front(b);
                }
                self.requeue.push_back(batch);
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

    /// An `ok` for `batch`: checks it against what was acked before and reports it.
    fn acked(&mut self, batch: Batch, mut ack: Ack) {
        let n = batch.payloads.len() as u64;
        let mut seq = batch.seq;
        if self.probing && batch.seq.is_some() {
            if ack.offset >= self.connect_end {
                self.probing = false;
            } else if ack.count > n {
                // A retry of a larger original: its other messages come next from the caller.
                let s = batch.seq.unwrap_or_default();
                self.skip = Some((
                    ack.count - n,
                    ack.offset + batch.body.len() as u64,
                    ack.msgno + n,
                    s,
                ));
                seq = None;
            }
            ack.count = n;
        }
        // Our batches land in sequence order; one landing below an earlier one's end means
        // the collator lost that one.
        // (Written again after them, they would be out of order: reported instead.)
        self.lost_past(ack.offset, "a later request landed before its end", false);
        let end = ack.offset + batch.body.len() as u64;
        let offsets: Vec<u64> = batch.starts.iter().map(|s| ack.offset + s).collect();
        let first = batch.first;
        if batch.rewritten {
            (self.handler)(Event::Rewritten {
                first,
                ack,
                offsets: &offsets,
            });
        } else {
            (self.handler)(Event::Acked {
                first,
                ack,
                offsets: &offsets,
                seq,
            });
        }
        if seq.is_some() {
            let keep = batch.body.len() <= self.config.keep_acked;
            if keep {
                self.kept_bytes += batch.body.len();
            }
            self.acked.push_back(AckedBatch {
                seq: batch.seq,
                first,
                count: n,
                end,
                batch: keep.then_some(batch),
            });
            if self.acked.len() > ACKED_KEPT {
                if let Some(old) = self.acked.pop_front() {
                    self.forget(old);
                }
            }
            // Over the budget: the oldest bodies go (their loss can still be reported).
            let mut i = 0;
            while self.kept_bytes > self.config.keep_acked && i < self.acked.len() {
                if let Some(b) = self.acked[i].batch.take() {
                    self.kept_bytes -= b.body.len();
                }
                i += 1;
            }
        }
    }

    /// Drops a remembered batch's bytes from the account.
    fn forget(&mut self, old: AckedBatch) -> Option<Batch> {
        let b = old.batch?;
        self.kept_bytes -= b.body.len();
        Some(b)
    }

    /// A lost acked batch: queued to be written again if its bytes are kept, else reported.
    fn lost(&mut self, b: AckedBatch, resend: bool, error: &Error) {
        let (first, count) = (b.first, b.count);
        match self.forget(b) {
            Some(mut batch) if resend => {
                log::debug!("writing again: {error}");
                batch.rewritten = true;
                batch.tries = 0;
                self.lost_resend.push_back(batch);
            }
            _ => {
                log::debug!("{error}");
                (self.handler)(Event::Lost {
                    first,
                    count,
                    error,
                });
            }
        }
    }

    /// The acked batches that end past `len` (the collator's file is shorter) are lost:
    /// written again (if `resend` and kept) or reported.
    fn lost_past(&mut self, len: u64, how: &str, resend: bool) {
        let mut lost = Vec::new();
        while self.acked.back().is_some_and(|b| b.end > len) {
            lost.extend(self.acked.pop_back());
        }
        lost.reverse();
        for b in lost {
            let error = Error::Lost(format!(
                "messages {}..{} were acknowledged ending at byte {}, the collator's file now \
                 ends at {len} ({how}): a power loss took its unsynced tail",
                b.first,
                b.first + b.count,
                b.end
            ));
            self.lost(b, resend, &error);
        }
    }

    /// The acked batches with a sequence number `n` or later (the collator expects `n` next)
    /// are lost: written again (if kept) or reported.
    fn lost_from_seq(&mut self, n: u64) {
        let mut lost = Vec::new();
        while self
            .acked
            .back()
            .is_some_and(|b| b.seq.is_some_and(|s| s >= n))
        {
            lost.extend(self.acked.pop_back());
        }
        lost.reverse();
        // Below the session's resumed start: requests acknowledged to an earlier process.
        if let Some(start) = self.config.resume_seq.filter(|&r| n < r) {
            if !self.reported_before_start {
                self.reported_before_start = true;
                let error = Error::Lost(format!(
                    "requests {n}..{start} of producer {} were acknowledged to an earlier run, \
                     and the collator no longer has them (a power loss took its unsynced tail)",
                    self.config.producer.as_deref().unwrap_or("")
                ));
                (self.handler)(Event::Lost {
                    first: 0,
                    count: 0,
                    error: &error,
                });
            }
        }
        for b in lost {
            let error = Error::Lost(format!(
                "messages {}..{} (request {}) were acknowledged, and the collator now expects \
                 request {n}: a power loss took its unsynced tail",
                b.first,
                b.first + b.count,
                b.seq.unwrap_or_default()
            ));
            self.lost(b, true, &error);
        }
    }

    fn fail(&mut self, batch: Batch, error: &Error) {
        (self.handler)(Event::Failed {
            first: batch.first,
            messages: batch.messages(),
            error,
        });
    }

    /// The connection failed: without an id, hand back what was in flight; with one, reconnect
    /// and resend it all with the same sequence numbers (after any acked batches the
    /// reconnect showed lost).
    fn connection_lost(&mut self, e: io::Error) -> Result<(), Error> {
        log::debug!("collator connection lost: {e}");
        self.conn = None;
        let mut pending: VecDeque<Batch> = std::mem::take(&mut self.requeue);
        pending.extend(self.in_flight.drain(..));
        let pending = pending;
        if self.config.producer.is_none() {
            let error = Error::Unknown(e.to_string());
            for b in pending {
                self.fail(b, &error);
            }
            return self.reconnect();
        }
        let reconnected = self.reconnect();
        // Acked batches the collator lost (seen on reconnecting) go first: they are older.
        let mut all = std::mem::take(&mut self.lost_resend);
        all.extend(pending);
        let mut pending = all;
        if let Err(err) = reconnected {
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
                self.connect_end = end.offset;
                self.lost_past(end.offset, "on reconnecting", true);
                Ok(())
            }
            Some(Answer::Refused(r)) => Err(io::Error::other(r.to_string())),
            _ => Err(protocol_error(&line)),
        }
    }
}

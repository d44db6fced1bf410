//! `tsbridge to-jetstream`: a tailsrv log into a JetStream stream, every message exactly once.
//!
//! Each message is published to the subject with:
//! - `Nats-Msg-Id: LOG:OFFSET` (LOG is `--log-id`, OFFSET the message's first byte): the same
//!   message always has the same id, so a republish within the stream's duplicate window is
//!   acknowledged as a duplicate and not stored again;
//! - `Nats-Expected-Last-Sequence`: the stream sequence its predecessor gets. The stream holds
//!   this log only, so sequences are predictable, and a message is stored only right after its
//!   predecessor. With many publishes in flight, a lost one (a leader change drops it) makes
//!   every later one fail instead of leaving a gap;
//! - `Tailsrv-Offset` and `Tailsrv-Next`: where the message starts and where the next one
//!   starts (the log is named by the id; every header byte is stored three times with R=3).
//!
//! So the stream is always a gap-free, duplicate-free prefix of the log's messages, and its
//! last message says where the log continues. On start, and after any failure (a lost ack, a
//! timeout, a leader change, a restart of the bridge), the bridge reads that message and
//! follows the log from its `Tailsrv-Next`: no local state file, nothing lost, nothing twice.
//!
//! The tailsrv side is `client::follow::Follower` (reconnects at the exact byte, fails over)
//! on a thread of its own, cut into messages by `client::messages::Messages` (that is,
//! `proto::framing::Splitter`), handed over a bounded channel in batches.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, context::PublishError};
use bytes::Bytes;
use client::follow::{self, Event, Follower};
use client::messages::Messages;
use proto::framing::Framing;
use proto::Start;
use tokio::sync::mpsc;

use crate::nats::{self, Backoff, Create};
use crate::progress::Progress;
use crate::{Error, HEADER_NEXT, HEADER_OFFSET};

/// JetStream's dedupe header.
const MSG_ID: &str = "Nats-Msg-Id";

/// What to bridge and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster.
    pub nats: nats::Options,
    /// How to follow the log (servers, `--path`, retries).
    pub follow: follow::Config,
    /// How the log is cut into messages.
    pub framing: Framing,
    /// Longest message accepted from the log (a longer length prefix is corruption).
    pub max_message: u64,
    /// The stream's name.
    pub stream: String,
    /// The subject every message is published to.
    pub subject: String,
    /// The log's identity in message ids (`--log-id`). `None`: the identity the stream's
    /// last message carries, or, for an empty stream, [`Options::default_log_id`].
    pub log_id: Option<String>,
    /// The identity a new stream's messages get when `log_id` is `None` (the `--path` in
    /// directory mode, else the subject: both name the log, not an address that reaches it).
    pub default_log_id: String,
    /// Create the stream when it does not exist.
    pub create: Option<Create>,
    /// Publishes whose ack is awaited at once, at most.
    pub window: usize,
    /// Where to start when the stream holds nothing of this log (default: byte 0).
    pub from_byte: Option<u64>,
    /// Stop once everything the log held at start is acknowledged.
    pub exit_at_end: bool,
    /// Show a status line.
    pub progress: bool,
}

/// One message cut from the log.
#[derive(Debug)]
struct Msg {
    start: u64,
    end: u64,
    payload: Bytes,
}

/// What the follower thread hands over.
#[derive(Debug)]
enum Feed {
    Batch(Vec<Msg>),
    /// Everything the log held when following began has been handed over.
    CaughtUp,
    Failed(Error),
}

/// Where the stream says the log continues.
#[derive(Debug, Clone)]
struct Resume {
    /// The stream's last sequence (the predecessor of the next publish).
    last_seq: u64,
    /// Byte offset of the next message.
    next: u64,
    /// The log's identity in this session's message ids.
    log_id: String,
}

/// How a session ended.
enum Ended {
    /// Stopped by a signal, or at the end with `--exit-at-end`.
    Done,
    /// A failure worth retrying after a pause (the reason).
    Retry(String),
}

/// Runs until stopped (or the end with `--exit-at-end`); `stop` is raised by signals.
pub async fn run(opts: Options, stop: Arc<AtomicBool>) -> Result<(), Error> {
    let Some(client) = nats::connect(&opts.nats, "tsbridge to-jetstream", &stop).await? else {
        return Ok(());
    };
    // Room for the window plus the permits of a failed session's abandoned acks (async-nats
    // holds those until their ack or its ack timeout); when full, publishing waits.
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(opts.window.saturating_mul(4))
        .backpressure_on_inflight(true)
        .build(client.clone());
    let mut backoff = Backoff::new(opts.nats.give_up_after);
    let mut progress = Progress::new(opts.progress);
    let mut count = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let outcome = session(
            &opts,
            &client,
            &js,
            &stop,
            &mut backoff,
            &mut progress,
            &mut count,
        )
        .await;
        progress.finish();
        match outcome? {
            Ended::Done => {
                log::info!("stopped after {count} messages");
                return Ok(());
            }
            Ended::Retry(why) => {
                log::warn!("{why}; resuming from the stream");
                if let Err(waited) = backoff.wait(&stop).await {
                    return Err(Error::Unreachable(format!(
                        "no progress for {:.0} s, giving up: {why}",
                        waited.as_secs_f64()
                    )));
                }
            }
        }
    }
}

/// A publish whose ack is awaited, with where its message ends.
type Pending = (
    Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>,
    u64,
    u64,
);

/// One run from a resume point until a failure: open the stream, read where to resume,
/// follow the log from there and publish with a window of acks in flight.
async fn session(
    opts: &Options,
    client: &async_nats::Client,
    js: &jetstream::Context,
    stop: &AtomicBool,
    backoff: &mut Backoff,
    progress: &mut Progress,
    count: &mut u64,
) -> Result<Ended, Error> {
    let mut stream =
        match nats::open_stream(js, &opts.stream, Some(&opts.subject), opts.create.as_ref()).await?
        {
            Ok(s) => s,
            Err(why) => return Ok(Ended::Retry(why)),
        };
    let resume = match resume_point(&mut stream, opts).await? {
        Ok(r) => r,
        Err(why) => return Ok(Ended::Retry(why)),
    };
    log::info!(
        "stream {:?} holds the log up to byte {} (sequence {}): following from there",
        opts.stream,
        resume.next,
        resume.last_seq
    );
    backoff.progress();

    // The follower thread: the blocking client, stopped by its own flag when the session ends.
    let session_stop = Arc::new(AtomicBool::new(false));
    let known_len = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<Feed>(16);
    let follower = {
        let cfg = opts.follow.clone();
        let (framing, max, exit_at_end) = (opts.framing, opts.max_message, opts.exit_at_end);
        let (session_stop, known_len) = (session_stop.clone(), known_len.clone());
        std::thread::Builder::new()
            .name("follow".into())
            .spawn(move || {
                follow_log(
                    cfg,
                    resume.next,
                    framing,
                    max,
                    exit_at_end,
                    &tx,
                    session_stop,
                    &known_len,
                )
            })
            .map_err(|e| Error::Unreachable(format!("cannot start the follower thread: {e}")))?
    };
    let mut thread = FollowerThread {
        handle: Some(follower),
        stop: session_stop.clone(),
        rx,
    };

    let subject = async_nats::Subject::from(opts.subject.as_str());
    let max_payload = client.server_info().max_payload;
    let mut queued: VecDeque<Msg> = VecDeque::new();
    let mut inflight: VecDeque<Pending> = VecDeque::new();
    let mut expected_last = resume.last_seq;
    let mut acked_next = resume.next;
    let mut feed_done = false;
    let mut caught_up = false;
    let mut fatal: Option<Error> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        // Fill the window.
        while inflight.len() < opts.window {
            let Some(m) = queued.pop_front() else { break };
            let id = format!("{}:{}", resume.log_id, m.start);
            let publish = PublishMessage::build()
                .payload(m.payload)
                .message_id(&id)
                .expected_last_sequence(expected_last)
                .header(HEADER_OFFSET, m.start.to_string().as_str())
                .header(HEADER_NEXT, m.end.to_string().as_str());
            expected_last += 1;
            match js.send_publish(subject.clone(), publish).await {
                Ok(ack) => inflight.push_back((Box::pin(ack.into_future()), m.start, m.end)),
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    // Everything before it is still carried: stop reading, drain the acks.
                    fatal = Some(Error::Message(format!(
                        "the message at byte {} of the log is {} bytes, over the server's max_payload of {max_payload} (with headers): raise max_payload in nats-server's configuration",
                        m.start,
                        m.end - m.start
                    )));
                    queued.clear();
                    session_stop.store(true, Ordering::Relaxed);
                    feed_done = true;
                    break;
                }
                Err(e) => return Ok(Ended::Retry(format!("publish failed: {e}"))),
            }
        }
        if inflight.is_empty() && queued.is_empty() && (feed_done || caught_up) {
            return match fatal {
                Some(e) => Err(e),
                None => Ok(Ended::Done),
            };
        }
        let want_feed = queued.is_empty() && !feed_done && !caught_up;
        tokio::select! {
            biased;
            ack = async { (&mut inflight.front_mut().expect("checked").0).await }, if !inflight.is_empty() => {
                let (_, start, end) = inflight.pop_front().expect("checked");
                match ack {
                    Ok(ack) => {
                        if ack.stream != opts.stream {
                            return Err(Error::Stream(format!(
                                "subject {:?} is taken by stream {:?}, not {:?}",
                                opts.subject, ack.stream, opts.stream
                            )));
                        }
                        acked_next = end;
                        *count += 1;
                        backoff.progress();
                    }
                    Err(e) => {
                        let why = match e.kind() {
                            PublishErrorKind::WrongLastSequence => format!(
                                "the stream did not take the message at byte {start} in order (a message before it was lost in flight)"
                            ),
                            // "No responders": also what a stream says while its leader
                            // is being elected. The next session checks it still exists.
                            PublishErrorKind::StreamNotFound => format!(
                                "no stream answered for the message at byte {start} (leader election, or stream {:?} deleted)",
                                opts.stream
                            ),
                            _ => format!("no ack for the message at byte {start}: {e}"),
                        };
                        return Ok(Ended::Retry(why));
                    }
                }
            }
            feed = thread.rx.recv(), if want_feed => match feed {
                Some(Feed::Batch(batch)) => queued.extend(batch),
                Some(Feed::CaughtUp) => caught_up = true,
                Some(Feed::Failed(e)) => {
                    // What came before the failure is still carried.
                    fatal = Some(e);
                    feed_done = true;
                }
                None => feed_done = true,
            },
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) {
                    // Stop reading the log; what is in flight is still acknowledged.
                    session_stop.store(true, Ordering::Relaxed);
                    queued.clear();
                    feed_done = true;
                }
            }
        }
        let len = known_len.load(Ordering::Relaxed);
        progress.tick(
            *count,
            &format!("{} bytes behind", len.saturating_sub(acked_next)),
        );
    }
}

/// The follower thread and its channel; stopped and joined when the session ends, however
/// it ends (the channel is closed first, so a thread waiting for room in it wakes up).
struct FollowerThread {
    handle: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    rx: mpsc::Receiver<Feed>,
}

impl Drop for FollowerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx.close();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Reads where the log continues from the stream's last message, and checks that the stream
/// holds this log only.
async fn resume_point(stream: &mut Stream, opts: &Options) -> nats::Attempt<Resume> {
    let info = match stream.get_info().await {
        Ok(i) => i,
        Err(e) => return Ok(Err(format!("reading stream {:?}: {e}", opts.stream))),
    };
    let state = info.state;
    if state.messages == 0 {
        if state.last_sequence > 0 && opts.from_byte.is_none() {
            return Err(Error::Stream(format!(
                "stream {:?} is empty but has held messages up to sequence {} (purged or expired): where the log left off is unknown; pass --from-byte N to continue at byte N",
                opts.stream, state.last_sequence
            )));
        }
        return Ok(Ok(Resume {
            last_seq: state.last_sequence,
            next: opts.from_byte.unwrap_or(0),
            log_id: opts
                .log_id
                .clone()
                .unwrap_or_else(|| opts.default_log_id.clone()),
        }));
    }
    let last = match stream.get_last_raw_message_by_subject(&opts.subject).await {
        Ok(m) => m,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Err(Error::Stream(format!(
                "stream {:?} holds {} messages but none on {:?}: tsbridge needs a stream of its own for each log",
                opts.stream, state.messages, opts.subject
            )))
        }
        Err(e) => return Ok(Err(format!("reading the last message on {:?}: {e}", opts.subject))),
    };
    // The stream has one subject (checked when it was opened), so this is its last message.
    // (A publish of a bridge killed a moment ago may still land after it: it carries the
    // same id and expected sequence as the one this session sends, so one is a duplicate.)
    let header = |name: &str| last.headers.get(name).map(|v| v.as_str().to_owned());
    // Its id is LOG:OFFSET: the log it came from.
    let id = header(MSG_ID).unwrap_or_default();
    let log_id = match id.rsplit_once(':') {
        Some((log, _)) if opts.log_id.as_deref().is_none_or(|l| l == log) => log.to_owned(),
        Some((log, _)) => {
            return Err(Error::Stream(format!(
                "the last message on {:?} came from log {log:?}, not {:?} (--log-id): one subject and stream per log",
                opts.subject,
                opts.log_id.as_deref().unwrap_or_default()
            )))
        }
        None => {
            return Err(Error::Stream(format!(
                "the last message on {:?} (sequence {}) has no {MSG_ID} of the form LOG:OFFSET: it was not published by tsbridge, so where the log continues is unknown",
                opts.subject, last.sequence
            )))
        }
    };
    let Some(next) = header(HEADER_NEXT).and_then(|v| v.parse::<u64>().ok()) else {
        return Err(Error::Stream(format!(
            "the last message on {:?} (sequence {}) has no valid {HEADER_NEXT} header",
            opts.subject, last.sequence
        )));
    };
    if let Some(b) = opts.from_byte {
        if b != next {
            log::warn!(
                "--from-byte {b} ignored: the stream already holds the log up to byte {next}"
            );
        }
    }
    Ok(Ok(Resume {
        last_seq: last.sequence,
        next,
        log_id,
    }))
}

/// The payload of a complete message `framed` (its framing removed).
fn payload_range(framing: Framing, framed: &[u8]) -> (usize, usize) {
    match framing {
        Framing::Newline | Framing::Nul => (0, framed.len().saturating_sub(1)),
        Framing::U32Be => (4.min(framed.len()), framed.len()),
        Framing::Varint => {
            // The splitter accepted this prefix: it ends at the first byte without the high bit.
            let prefix = framed
                .iter()
                .position(|b| b & 0x80 == 0)
                .map_or(framed.len(), |i| i + 1);
            (prefix, framed.len())
        }
    }
}

/// The follower thread: reads the log from `start`, hands over complete messages in batches.
#[allow(clippy::too_many_arguments)]
fn follow_log(
    cfg: follow::Config,
    start: u64,
    framing: Framing,
    max_message: u64,
    exit_at_end: bool,
    tx: &mpsc::Sender<Feed>,
    stop: Arc<AtomicBool>,
    known_len: &AtomicU64,
) {
    let mut follower = Follower::new(cfg, Start::Byte(start), stop);
    let mut messages = Messages::new(Some(framing), max_message, start);
    let mut buf = vec![0u8; 256 << 10];
    let mut told_end = false;
    loop {
        match follower.read(&mut buf) {
            Ok(Event::Data(n)) => {
                let batch = messages.push(&buf[..n]);
                if !batch.bytes.is_empty() {
                    let chunk = Bytes::copy_from_slice(batch.bytes);
                    let mut out = Vec::with_capacity(batch.ends.len());
                    let mut prev = batch.start;
                    for &end in batch.ends {
                        let (a, b) = ((prev - batch.start) as usize, (end - batch.start) as usize);
                        let (ps, pe) = payload_range(framing, &chunk[a..b]);
                        out.push(Msg {
                            start: prev,
                            end,
                            payload: chunk.slice(a + ps..a + pe),
                        });
                        prev = end;
                    }
                    let end = batch.end();
                    messages.release(end);
                    if tx.blocking_send(Feed::Batch(out)).is_err() {
                        return;
                    }
                }
                if let Some(e) = messages.error() {
                    let e = Error::Message(format!(
                        "the log cannot be cut into {framing} messages: {e}"
                    ));
                    let _ = tx.blocking_send(Feed::Failed(e));
                    return;
                }
            }
            Ok(Event::Skipped { to, .. }) => {
                // `--on-gone earliest` (the follower logged the bytes): the stream continues
                // with the log's first message; a partly read one is gone with the rest.
                messages = Messages::new(Some(framing), max_message, to);
            }
            Ok(Event::Idle) => {}
            Ok(Event::Stopped) => return,
            Err(e @ follow::Error::Gone { .. }) => {
                let _ = tx.blocking_send(Feed::Failed(Error::Gone(format!("tailsrv: {e}"))));
                return;
            }
            Err(e) => {
                let _ = tx.blocking_send(Feed::Failed(Error::Unreachable(format!("tailsrv: {e}"))));
                return;
            }
        }
        let pos = follower.position().unwrap_or(start);
        let len = follower.confirmed_len().unwrap_or(0).max(pos);
        known_len.fetch_max(len, Ordering::Relaxed);
        if exit_at_end && !told_end {
            if let Some(initial) = follower.initial_len() {
                if pos >= initial {
                    told_end = true;
                    if tx.blocking_send(Feed::CaughtUp).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(payload_range(Framing::Newline, b"ab\n"), (0, 2));
        assert_eq!(payload_range(Framing::Nul, b"\0"), (0, 0));
        assert_eq!(payload_range(Framing::U32Be, &[0, 0, 0, 1, 7]), (4, 5));
        let mut v = vec![0x80 | 0x2c, 0x02];
        v.extend(std::iter::repeat_n(1u8, 300));
        assert_eq!(payload_range(Framing::Varint, &v), (2, 302));
    }
}

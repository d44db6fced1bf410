//! `tsbridge from-jetstream`: a JetStream stream appended to a local file, every message
//! exactly once, so that tailsrv and the indexer can serve it like any other log.
//!
//! The file is its own checkpoint. It holds exactly the stream's messages, in order, each in
//! the chosen framing, starting at stream sequence `origin` (`--origin-seq`, default 1): file
//! message k is stream sequence `origin + k`. That needs dense sequences, which a stream that
//! holds one log has (one stream per log, as `to-jetstream` requires); a gap (a deleted
//! message, or another subject's messages) stops the bridge with an error rather than guess.
//! A gap is first checked by recreating the consumer from the expected sequence (after a
//! stream leader change a pull consumer can deliver past messages it still owes); only the
//! same gap seen again stops the bridge.
//!
//! On start the file's torn tail (a write cut short by a crash, or the zeros a power loss can
//! leave) is cut the way the collator cuts its own ([`logfile::cut_torn_tail`]), and its
//! messages are counted: N. The durable pull consumer is
//! then recreated to deliver from sequence `origin + N` (or from its old ack floor, if that is
//! lower: the messages between were written but their acks were lost; they are acked now and
//! not written again). Messages are appended in batches, fdatasync'ed with `--sync data`, and
//! acked only after that. So a crash between the write and the ack neither repeats nor loses a
//! message, and with `--sync data` an acked message is on disk (what an interest or work-queue
//! stream may then delete).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use futures_lite::StreamExt;
use proto::framing::{Framing, DEFAULT_MAX_MESSAGE};

use crate::nats::{self, Backoff};
use crate::progress::Progress;
use crate::Error;

/// What to copy where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster.
    pub nats: nats::Options,
    /// The stream to copy.
    pub stream: String,
    /// The durable consumer's name (it belongs to the bridge: recreated on every start).
    pub durable: String,
    /// The output file.
    pub file: PathBuf,
    /// The framing each message gets in the file.
    pub framing: Framing,
    /// fdatasync before acking.
    pub sync_data: bool,
    /// The stream sequence of the file's first message.
    pub origin: u64,
    /// Messages written (and acked) together at most.
    pub batch: usize,
    /// Stop once the stream's messages as of the start are in the file.
    pub exit_at_end: bool,
    /// Show a status line.
    pub progress: bool,
}

/// The output file: locked, scanned, appended to.
#[derive(Debug)]
struct Output {
    file: File,
    path: PathBuf,
    /// Complete messages in the file.
    count: u64,
}

/// Bytes framed before they are written: a flush goes out once it holds this much.
const FLUSH_BYTES: usize = 1 << 20;

/// The most a crash can leave torn at the end of the file: one flush (a little over
/// [`FLUSH_BYTES`]: the message that crossed it may be as long as the splitter's limit).
const MAX_CUT: u64 = FLUSH_BYTES as u64 + DEFAULT_MAX_MESSAGE + 16;

impl Output {
    /// Opens (creating) and locks the file, cuts a torn tail and counts its messages. The
    /// cut is the collator's ([`logfile::cut_torn_tail`]): a partial message, and trailing
    /// empty messages, which is what a zero-filled tail reads as (real ones are cut too, and
    /// fetched again); a tail longer than one flush is refused.
    fn open(path: &Path, framing: Framing) -> Result<Output, Error> {
        let shown = path.display();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::File(format!("cannot open {shown}: {e}")))?;
        logfile::lock_exclusive(&file, path, "tsbridge").map_err(|e| Error::File(e.to_string()))?;
        let r = logfile::cut_torn_tail(&file, framing, DEFAULT_MAX_MESSAGE, &[], MAX_CUT, None)
            .map_err(|e| Error::File(format!("{shown}: {e}")))?;
        if r.cut > 0 {
            log::warn!("{shown}: the messages cut are fetched again from the stream");
            file.sync_data()
                .map_err(|e| Error::File(format!("cannot cut the torn tail of {shown}: {e}")))?;
        }
        Ok(Output {
            file,
            path: path.to_owned(),
            count: r.count,
        })
    }

    fn append(&mut self, bytes: &[u8], sync: bool) -> Result<(), Error> {
        self.file
            .write_all(bytes)
            .and_then(|_| if sync { self.file.sync_data() } else { Ok(()) })
            .map_err(|e| Error::File(format!("cannot append to {}: {e}", self.path.display())))
    }
}

enum Ended {
    Done,
    Retry(String),
    /// The consumer delivered `seq` where `expected` was next: a deleted message, another
    /// subject's messages, or a consumer that skipped ahead across a leader change.
    Gap {
        expected: u64,
        seq: u64,
    },
}

/// Runs until stopped (or the end with `--exit-at-end`); `stop` is raised by signals.
pub async fn run(opts: Options, stop: &AtomicBool) -> Result<(), Error> {
    let mut out = Output::open(&opts.file, opts.framing)?;
    log::info!(
        "{} holds {} messages: continuing at stream sequence {}",
        opts.file.display(),
        out.count,
        opts.origin + out.count
    );
    let Some(client) = nats::connect(&opts.nats, "tsbridge from-jetstream", stop).await? else {
        return Ok(());
    };
    let js = jetstream::new(client);
    let mut backoff = Backoff::new(opts.nats.give_up_after);
    let mut progress = Progress::new(opts.progress);
    let first = out.count;
    // The gap the consumer was last recreated for: a second one at the same place is real.
    let mut gap_retried = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let outcome = session(&opts, &js, &mut out, stop, &mut backoff, &mut progress).await;
        progress.finish();
        match outcome? {
            Ended::Done => {
                log::info!(
                    "stopped: {} messages written, {} in the file",
                    out.count - first,
                    out.count
                );
                return Ok(());
            }
            Ended::Gap { expected, seq } if gap_retried != Some(expected) => {
                // After a stream leader change a pull consumer can deliver past messages it
                // still owes (they would come back only after the ack wait). A consumer
                // recreated from `expected` tells that apart from a real gap: it delivers
                // `expected`, or the same gap again.
                gap_retried = Some(expected);
                log::warn!(
                    "stream {:?} delivered sequence {seq} where {expected} was expected; \
                     recreating the consumer from {expected} to tell a skip from a gap",
                    opts.stream
                );
            }
            Ended::Gap { expected, seq } => {
                return Err(Error::Stream(format!(
                    "stream {:?} delivered sequence {seq} where {expected} was expected: a message was deleted, or the stream holds other subjects; the file would get a gap",
                    opts.stream
                )));
            }
            Ended::Retry(why) => {
                log::warn!("{why}; resuming from the file");
                if let Err(waited) = backoff.wait(stop).await {
                    return Err(Error::Unreachable(format!(
                        "no progress for {:.0} s, giving up: {why}",
                        waited.as_secs_f64()
                    )));
                }
            }
        }
    }
}

/// Messages framed but not yet written, and the messages to ack once they are.
struct Pending {
    bytes: Vec<u8>,
    count: u64,
    acks: Vec<Message>,
}

impl Pending {
    /// Writes (and syncs), then acks. Acks are advisory: the file is the checkpoint.
    async fn flush(&mut self, out: &mut Output, sync: bool) -> Result<(), Error> {
        if self.count > 0 {
            out.append(&self.bytes, sync)?;
            out.count += self.count;
            self.bytes.clear();
            self.count = 0;
        }
        for m in self.acks.drain(..) {
            if let Err(e) = m.ack().await {
                log::debug!("ack failed (the file is the checkpoint): {e}");
            }
        }
        Ok(())
    }
}

async fn session(
    opts: &Options,
    js: &jetstream::Context,
    out: &mut Output,
    stop: &AtomicBool,
    backoff: &mut Backoff,
    progress: &mut Progress,
) -> Result<Ended, Error> {
    let stream = match nats::open_stream(js, &opts.stream, None, None).await? {
        Ok(s) => s,
        Err(why) => return Ok(Ended::Retry(why)),
    };
    let state = match stream.get_info().await {
        Ok(i) => i.state,
        Err(e) => {
            return Ok(Ended::Retry(format!(
                "reading stream {:?}: {e}",
                opts.stream
            )))
        }
    };
    let mut expected = opts.origin + out.count;
    if expected < state.first_sequence {
        return Err(Error::Stream(format!(
            "{} needs stream sequence {expected} next, but stream {:?} starts at {} now: the messages between are gone",
            out.path.display(),
            opts.stream,
            state.first_sequence
        )));
    }
    if expected > state.last_sequence + 1 {
        return Err(Error::Stream(format!(
            "{} holds {} messages from sequence {}, more than stream {:?} has ever had (last sequence {}): another stream, or a recreated one?",
            out.path.display(),
            out.count,
            opts.origin,
            opts.stream,
            state.last_sequence
        )));
    }
    let target = state.last_sequence;
    if opts.exit_at_end && expected > target {
        return Ok(Ended::Done);
    }
    // Recreate the durable at the file's position (or its ack floor, if lower).
    let floor = match stream.consumer_info(&opts.durable).await {
        Ok(info) => Some(info.ack_floor.stream_sequence),
        Err(e) if e.to_string().contains("not found") => None,
        Err(e) => {
            return Ok(Ended::Retry(format!(
                "reading consumer {:?}: {e}",
                opts.durable
            )))
        }
    };
    if floor.is_some() {
        if let Err(e) = stream.delete_consumer(&opts.durable).await {
            return Ok(Ended::Retry(format!(
                "resetting consumer {:?}: {e}",
                opts.durable
            )));
        }
    }
    let start = match floor {
        Some(f) if f + 1 < expected && f + 1 >= state.first_sequence => f + 1,
        _ => expected,
    };
    let config = pull::Config {
        durable_name: Some(opts.durable.clone()),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ack_policy: AckPolicy::Explicit,
        max_ack_pending: (opts.batch * 4) as i64,
        ..Default::default()
    };
    let consumer = match stream.create_consumer(config).await {
        Ok(c) => c,
        Err(e) => {
            return Ok(Ended::Retry(format!(
                "creating consumer {:?}: {e}",
                opts.durable
            )))
        }
    };
    let mut messages = match consumer
        .stream()
        .max_messages_per_batch(opts.batch)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
    {
        Ok(m) => m,
        Err(e) => {
            return Ok(Ended::Retry(format!(
                "pulling from {:?}: {e}",
                opts.durable
            )))
        }
    };
    log::info!(
        "consumer {:?} delivers stream {:?} from sequence {start}",
        opts.durable,
        opts.stream
    );
    backoff.progress();
    let mut pending = Pending {
        bytes: Vec::new(),
        count: 0,
        acks: Vec::new(),
    };
    let mut lag = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            next = messages.next() => {
                let m = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        pending.flush(out, opts.sync_data).await?;
                        return Ok(Ended::Retry(format!("pulling from {:?}: {e}", opts.durable)));
                    }
                    None => {
                        pending.flush(out, opts.sync_data).await?;
                        return Ok(Ended::Retry("the consumer's message stream ended".into()));
                    }
                };
                let (seq, left) = match m.info() {
                    Ok(i) => (i.stream_sequence, i.pending),
                    Err(e) => return Ok(Ended::Retry(format!("a message without JetStream metadata: {e}"))),
                };
                lag = left;
                if seq < expected {
                    // Written before a crash, its ack lost: ack it now, write nothing.
                    pending.acks.push(m);
                } else if seq > expected {
                    pending.flush(out, opts.sync_data).await?;
                    return Ok(Ended::Gap { expected, seq });
                } else {
                    if opts.framing.delimiter_in(&m.payload) {
                        pending.flush(out, opts.sync_data).await?;
                        return Err(Error::Message(format!(
                            "stream sequence {seq} contains the {} delimiter: choose a length-prefixed --framing (u32be, varint)",
                            opts.framing
                        )));
                    }
                    opts.framing.encode(&m.payload, &mut pending.bytes);
                    pending.count += 1;
                    pending.acks.push(m);
                    expected += 1;
                }
                let done = opts.exit_at_end && expected > target;
                if left == 0 || done || pending.acks.len() >= opts.batch || pending.bytes.len() >= FLUSH_BYTES {
                    pending.flush(out, opts.sync_data).await?;
                    backoff.progress();
                    if done {
                        return Ok(Ended::Done);
                    }
                }
            }
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) {
                    pending.flush(out, opts.sync_data).await?;
                    return Ok(Ended::Done);
                }
            }
        }
        progress.tick(out.count, &format!("{lag} messages behind"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a power loss on XFS leaves: zeros after the last message that reached the disk.
    /// Cut back to the messages in every framing, never counted as empty messages.
    #[test]
    fn a_zero_filled_tail_is_cut() {
        for framing in Framing::ALL {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("out");
            let mut data = Vec::new();
            for m in [&b"one"[..], b"two", b"three"] {
                framing.encode(m, &mut data);
            }
            let good = data.len() as u64;
            data.resize(data.len() + 8192, 0);
            std::fs::write(&path, &data).unwrap();
            let out = Output::open(&path, framing).unwrap();
            assert_eq!(out.count, 3, "{framing}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "{framing}");
            drop(out);
            // Intact now: opened again, nothing changes.
            assert_eq!(Output::open(&path, framing).unwrap().count, 3);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        }
    }

    #[test]
    fn a_file_of_another_framing_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        // Text read as u32be: "hell" claims 1.7 GB at byte 0, and the file (sparse after
        // its first line) is longer than a crash could leave.
        std::fs::write(&path, "hello world\n").unwrap();
        let len = MAX_CUT + 1;
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
        let e = Output::open(&path, Framing::U32Be).unwrap_err();
        assert!(e.to_string().contains("Not cutting it"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }
}

//! `tscat`: follow a stream and write it out, whole messages only, checkpointing the
//! position so a restart continues where the output's reader stopped.
//!
//! **What a checkpoint may cover.** A saved position must never pass a byte the reader has
//! not taken, or the next run would skip it. Bytes accepted by `write` are not bytes the
//! reader took when the output is a pipe: up to the pipe's capacity (64 KiB by default) sits
//! in the kernel until the reader gets to it, and is lost if the reader goes away. So
//! [`Output`] asks the kernel how much of what was written is still in the pipe
//! (`ioctl(FIONREAD)` on the write end, which Linux supports for pipes), and the position
//! saved is the last message boundary at or before *written − still in the pipe*. For a
//! regular file or a terminal what was written is what was taken.
//!
//! Order of events per batch: write the complete messages, then (sometimes) save. A clean
//! stop saves the exact boundary the reader took: on a stop signal after giving the reader up
//! to [`DRAIN_GRACE`] to empty the pipe, at a limit (`--exit-at-end`, `--count`, `--bytes`)
//! after it emptied the pipe (or closed it), and when the reader closes the output (EPIPE)
//! at once, without what was still in the pipe: the reader never took it.
//!
//! Checkpoint policy, which bounds what a `kill -9` repeats: a save after a batch once
//! [`CHECKPOINT_BYTES`] were written since the last save or [`CHECKPOINT_INTERVAL`] has
//! passed, and whenever the stream pauses for a read tick. What the reader takes after tscat
//! dies is thus below `CHECKPOINT_BYTES` plus one batch (one read of [`READ_SIZE`], plus the
//! held start of a message larger than that) plus what the pipe held at the last save (at
//! most its capacity). Each save costs two fsyncs, so saving per batch on a fast stream would
//! cap throughput.
//!
//! **Where a run stops.** Without limits it follows forever. `exit_at_end` stops at the
//! file's length as the first server reported it when it confirmed the stream (`ok N LEN`):
//! "the end as it was when tscat started", which does not move while tscat runs, so a
//! steadily written file still ends the run. `max_bytes` stops after that many bytes from
//! where the run started, `max_messages` after that many messages. With a framing only the
//! messages that end within the limit are written; the rest (a message that straddles it)
//! is left for the next run.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::FileType;

use crate::follow::{self, Event, Follower, Retry};
use crate::messages::Messages;
use crate::state::{self, StateFile};
use crate::{indexer, resolve, StartAt};
use proto::framing::{Framing, FramingError};
use proto::Start;

/// The exit status of a consumer whose position retention deleted (`--on-gone fail`): the
/// same for tscat, tsmirror and tsbridge to-jetstream.
pub const GONE_EXIT: u8 = 8;

/// Bytes written since the last save that trigger a checkpoint.
pub const CHECKPOINT_BYTES: u64 = 256 << 10;
/// Longest time output stays unsaved while the stream keeps flowing.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes read from the socket at a time.
pub const READ_SIZE: usize = 64 << 10;
/// How long a stop signal waits for the reader to take what is still in the output pipe.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// What `tscat` was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST:PORT` of each tailsrv, in order of preference.
    pub servers: Vec<String>,
    /// The file to follow on servers (and the indexer) in directory mode.
    pub path: Option<String>,
    /// Where to start when there is no saved position.
    pub start: StartAt,
    /// `HOST:PORT` of a tailsrv-indexer, for message starts.
    pub indexer: Option<String>,
    /// Write whole messages of this framing only (`None`: bytes as they come).
    pub framing: Option<Framing>,
    /// Longest message a length prefix may announce.
    pub max_message: u64,
    /// The state file that keeps the position across runs.
    pub state: Option<PathBuf>,
    /// When to give up on the servers.
    pub retry: Retry,
    /// Stop at the file's length when the first server confirmed the stream.
    pub exit_at_end: bool,
    /// Stop after this many bytes from where the run starts.
    pub max_bytes: Option<u64>,
    /// Stop after this many messages (needs a framing).
    pub max_messages: Option<u64>,
    /// What to do when retention deleted the saved position (`--on-gone`).
    pub on_gone: follow::OnGone,
}

/// Why `tscat` stopped with an error. [`Error::exit_code`] is the documented exit status.
#[derive(Debug)]
pub enum Error {
    /// A combination of options that cannot work.
    Usage(String),
    /// The state file could not be read or written.
    State(state::Error),
    /// The indexer could not place the start.
    Indexer(indexer::Error),
    /// The stream could not be followed.
    Follow(follow::Error),
    /// The stream holds a malformed message.
    Framing(FramingError),
    /// Writing the output failed (other than the reader closing it, which is a clean stop).
    Output(io::Error),
}

impl Error {
    /// 1 server(s) unreachable or stream lost, 2 usage, 3 state file, 4 indexer,
    /// 5 malformed message, 6 output error, 7 every server refused the request for good,
    /// 8 retention deleted the position ([`follow::Error::Gone`], `--on-gone fail`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Follow(follow::Error::Refused { .. }) => 7,
            Error::Follow(follow::Error::Gone { .. }) => GONE_EXIT,
            Error::Follow(_) => 1,
            Error::Usage(_) => 2,
            Error::State(_) => 3,
            Error::Indexer(_) => 4,
            Error::Framing(_) => 5,
            Error::Output(_) => 6,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(s) => f.write_str(s),
            Error::State(e) => e.fmt(f),
            Error::Indexer(e) => e.fmt(f),
            Error::Follow(e) => e.fmt(f),
            Error::Framing(e) => write!(f, "malformed stream: {e}"),
            Error::Output(e) => write!(f, "writing output: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// How a run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The stop flag was raised (a signal).
    Asked,
    /// The output was closed by its reader.
    OutputClosed,
    /// A limit was reached: the end, `max_bytes` or `max_messages`.
    Done,
}

/// The output: an unbuffered file descriptor (each `write` reaches the reader, or the pipe
/// to it) that can tell how much of what was written the reader has not taken yet.
#[derive(Debug)]
pub struct Output {
    file: File,
    pipe: bool,
}

impl Output {
    /// Wraps `file` (stdout, usually); a pipe is recognised by `fstat`.
    pub fn new(file: File) -> Output {
        let pipe = rustix::fs::fstat(&file)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo)
            .unwrap_or(false);
        Output { file, pipe }
    }

    /// Whether the output is a pipe (then written is not yet taken).
    pub fn is_pipe(&self) -> bool {
        self.pipe
    }

    /// Bytes written that the reader has not taken yet: what sits in the pipe (0 for
    /// anything else, where a write that returned is with the reader).
    pub fn unread(&self) -> u64 {
        if !self.pipe {
            return 0;
        }
        match rustix::io::ioctl_fionread(&self.file) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("FIONREAD on the output pipe failed: {e}");
                0
            }
        }
    }

    /// Whether the reader has closed the pipe (poll reports an error on the write end).
    fn reader_gone(&self) -> bool {
        let mut fds = [PollFd::new(&self.file, PollFlags::OUT)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).is_ok() && fds[0].revents().contains(PollFlags::ERR)
    }

    /// Waits until the reader has taken everything written, closed the pipe, `stop` is
    /// raised, or `limit` (if any) passed.
    fn drain(&self, limit: Option<Duration>, stop: &AtomicBool) {
        let start = Instant::now();
        let mut logged = false;
        while self.unread() > 0 && !self.reader_gone() && !stop.load(Ordering::Relaxed) {
            if limit.is_some_and(|l| start.elapsed() >= l) {
                return;
            }
            if !logged && start.elapsed() >= Duration::from_secs(1) {
                log::info!(unread = self.unread(); "waiting for the reader to take what is in the pipe");
                logged = true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Output {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Follows the stream into `out` until `stop` is raised, the output closes, a limit is
/// reached, or an error.
pub fn run(cfg: &Config, out: &mut Output, stop: Arc<AtomicBool>) -> Result<Stopped, Error> {
    if cfg.max_messages.is_some() && cfg.framing.is_none() {
        return Err(Error::Usage(
            "--count needs --framing (tscat must know where messages end)".into(),
        ));
    }
    let mut state = match &cfg.state {
        Some(path) => Some(StateFile::open(path).map_err(Error::State)?),
        None => None,
    };
    let saved = state.as_ref().and_then(StateFile::saved);
    let start = match saved {
        Some(offset) => {
            log::info!(offset = offset; "resuming from the state file");
            Start::Byte(offset)
        }
        None => {
            // `-n N` lands on a line start, a message boundary for newline framing.
            let lines_ok = matches!(cfg.start, crate::StartAt::LastLines(_))
                && matches!(cfg.framing, None | Some(proto::framing::Framing::Newline));
            if cfg.start.is_relative()
                && cfg.indexer.is_none()
                && cfg.framing.is_some()
                && !lines_ok
            {
                return Err(Error::Usage(
                    "--framing with --last/--from-end needs --indexer to find a message \
                     boundary (tailsrv counts bytes, not messages)"
                        .into(),
                ));
            }
            resolve(cfg.start, cfg.indexer.as_deref(), cfg.path.as_deref())
                .map_err(Error::Indexer)?
        }
    };
    let mut follow_cfg = follow::Config::new(cfg.servers.clone(), cfg.retry);
    follow_cfg.path = cfg.path.clone();
    follow_cfg.on_gone = cfg.on_gone;
    let mut follower = Follower::new(follow_cfg, start, stop.clone());
    // A relative start becomes absolute once a server has confirmed it; nothing is handed
    // out before that, so the origin is known by the first batch.
    let origin = follower.position().unwrap_or(0);
    let mut messages = Messages::new(cfg.framing, cfg.max_message, origin);
    let mut placed = follower.position().is_some();
    // Boundaries are only needed to step back from what the pipe still holds.
    let track = state.is_some() && cfg.framing.is_some() && out.is_pipe();
    let mut checkpoint = Checkpoint {
        state: state.as_mut(),
        saved: origin,
        written: origin,
        sent: origin,
        written_at_save: origin,
        ends: VecDeque::new(),
        track,
        at: Instant::now(),
    };
    let mut limits = Limits {
        exit_at_end: cfg.exit_at_end,
        max_bytes: cfg.max_bytes,
        bytes_until: None,
        messages_left: cfg.max_messages,
    };
    if placed {
        limits.bytes_until = cfg.max_bytes.map(|n| origin.saturating_add(n));
    }
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        if limits.messages_left == Some(0) {
            return finish(&mut checkpoint, out, &stop);
        }
        let event = match follower.read(&mut buf) {
            Ok(e) => e,
            Err(e) => {
                if placed {
                    checkpoint.save(out)?;
                }
                return Err(Error::Follow(e));
            }
        };
        match event {
            Event::Stopped => {
                if placed {
                    if checkpoint.state.is_some() {
                        // The stop flag is already up: give the reader its grace regardless.
                        out.drain(Some(DRAIN_GRACE), &AtomicBool::new(false));
                    }
                    checkpoint.save(out)?;
                }
                return Ok(Stopped::Asked);
            }
            Event::Idle if !placed => {
                // A relative start confirmed with no data yet (`--from-end`, `--last 0` on a
                // quiet file): the origin is known now, so the limits apply from here (else
                // `--exit-at-end` would wait for a byte that need never come).
                if let Some(origin) = follower.position() {
                    messages = Messages::new(cfg.framing, cfg.max_message, origin);
                    checkpoint.place(origin);
                    limits.bytes_until = limits.max_bytes.map(|b| origin.saturating_add(b));
                    placed = true;
                    if limits.cap(&follower).is_some_and(|cap| origin >= cap) {
                        return finish(&mut checkpoint, out, &stop);
                    }
                }
            }
            Event::Skipped { from, to } => {
                // `--on-gone earliest`: the follower logged the bytes; the messages are the
                // indexer's to tell. A partly held message is gone with them.
                if let (Some(ix), Some(_)) = (&cfg.indexer, cfg.framing) {
                    match indexer::message_at(ix, cfg.path.as_deref(), to) {
                        Ok(first) => log::warn!(
                            from = from, to = to, first_message = first;
                            "--on-gone earliest: the messages before message {first} (the first \
                             the log still holds) that start at or after byte {from} were skipped"
                        ),
                        Err(e) => log::warn!(
                            "--on-gone earliest: which messages were skipped is unknown: {e}"
                        ),
                    }
                }
                messages = Messages::new(cfg.framing, cfg.max_message, to);
                checkpoint.place(to);
                checkpoint.ends.clear();
                // Saved at once: the bytes before `to` cannot be read again anyway.
                if let Some(state) = &mut checkpoint.state {
                    state.save(to).map_err(Error::State)?;
                }
            }
            Event::Idle => {
                let at = follower.position().expect("placed");
                if limits.cap(&follower).is_some_and(|cap| at >= cap) {
                    return finish(&mut checkpoint, out, &stop);
                }
                checkpoint.save(out)?;
            }
            Event::Data(n) => {
                let at = follower.position().expect("confirmed before data");
                if !placed {
                    let origin = at - n as u64;
                    messages = Messages::new(cfg.framing, cfg.max_message, origin);
                    checkpoint.place(origin);
                    limits.bytes_until = limits.max_bytes.map(|b| origin.saturating_add(b));
                    placed = true;
                }
                let cap = limits.cap(&follower);
                let batch = messages.push(&buf[..n]);
                // How far this batch may go: to the last boundary within the byte cap, and
                // no further than the last message allowed.
                let mut allowed = match cap {
                    Some(cap) if cap < batch.end() => {
                        batch.boundary_within(cap.saturating_sub(batch.start) as usize)
                    }
                    _ => batch.end(),
                };
                if let Some(left) = limits.messages_left {
                    if let Some(&e) = usize::try_from(left)
                        .ok()
                        .and_then(|l| batch.ends.get(l.checked_sub(1)?))
                    {
                        allowed = allowed.min(e);
                    }
                }
                let len = (allowed - batch.start) as usize;
                let (written, result) = write_counting(out, &batch.bytes[..len]);
                let boundary = batch.boundary_within(written);
                let done_ends = batch.ends.partition_point(|&e| e <= boundary);
                if let Some(left) = &mut limits.messages_left {
                    *left = left.saturating_sub(done_ends as u64);
                }
                if checkpoint.track {
                    checkpoint.ends.extend(&batch.ends[..done_ends]);
                }
                checkpoint.written = boundary;
                checkpoint.sent = batch.start + written as u64;
                messages.release(boundary);
                match result {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        // What is still in the pipe was never taken by the reader.
                        checkpoint.save(out)?;
                        log::info!(offset = checkpoint.saved; "output closed, stopping");
                        return Ok(Stopped::OutputClosed);
                    }
                    Err(e) => {
                        checkpoint.save(out)?;
                        return Err(Error::Output(e));
                    }
                }
                if let Some(e) = messages.error() {
                    checkpoint.save(out)?;
                    return Err(Error::Framing(e.clone()));
                }
                // Everything up to the cap has arrived: no further message can end within it.
                if cap.is_some_and(|cap| at >= cap) || limits.messages_left == Some(0) {
                    return finish(&mut checkpoint, out, &stop);
                }
                checkpoint.maybe_save(out)?;
            }
        }
    }
}

/// A limit was reached: wait for the reader to take everything (or leave), then save.
fn finish(cp: &mut Checkpoint<'_>, out: &Output, stop: &AtomicBool) -> Result<Stopped, Error> {
    if cp.state.is_some() {
        out.drain(None, stop);
    }
    cp.save(out)?;
    log::info!(offset = cp.written; "reached the limit, stopping");
    Ok(Stopped::Done)
}

/// Where the run stops (`--exit-at-end`, `--bytes`, `--count`).
struct Limits {
    exit_at_end: bool,
    max_bytes: Option<u64>,
    /// `max_bytes` as an absolute offset, once the origin is known.
    bytes_until: Option<u64>,
    messages_left: Option<u64>,
}

impl Limits {
    /// The absolute offset no byte at or past which is written, when known.
    fn cap(&self, follower: &Follower) -> Option<u64> {
        let end = if self.exit_at_end {
            follower.initial_len()
        } else {
            None
        };
        match (end, self.bytes_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The state file, if any, what was written and what was saved in it last.
struct Checkpoint<'a> {
    state: Option<&'a mut StateFile>,
    /// The position saved last (a boundary the reader took).
    saved: u64,
    /// The boundary the output accepted up to.
    written: u64,
    /// Where the bytes the output accepted end (past `written` when a write stopped inside
    /// a message).
    sent: u64,
    /// `written` at the last save.
    written_at_save: u64,
    /// Message ends in `(saved, written]`, oldest first (only when `track`).
    ends: VecDeque<u64>,
    /// Whether `ends` is kept: framed output to a pipe with a state file.
    track: bool,
    at: Instant,
}

impl Checkpoint<'_> {
    /// The stream's start became known (a relative start, confirmed): everything counts
    /// from `origin`.
    fn place(&mut self, origin: u64) {
        self.saved = origin;
        self.written = origin;
        self.sent = origin;
        self.written_at_save = origin;
    }

    /// The last boundary the reader has certainly taken: what was sent minus what the pipe
    /// still holds, stepped back to a message boundary.
    fn taken(&mut self, out: &Output) -> u64 {
        let reached = self.sent.saturating_sub(out.unread()).max(self.saved);
        if reached >= self.written {
            self.ends.clear();
            return self.written;
        }
        if !self.track {
            // No framing: every byte is a boundary.
            return reached;
        }
        let mut at = self.saved;
        while let Some(&e) = self.ends.front() {
            if e > reached {
                break;
            }
            at = e;
            self.ends.pop_front();
        }
        at
    }

    fn save(&mut self, out: &Output) -> Result<(), Error> {
        let offset = self.taken(out);
        if let Some(state) = &mut self.state {
            if offset != self.saved || state.saved().is_none() {
                state.save(offset).map_err(Error::State)?;
                log::debug!(offset = offset; "checkpoint");
            }
        }
        self.saved = offset;
        self.written_at_save = self.written;
        self.at = Instant::now();
        Ok(())
    }

    fn maybe_save(&mut self, out: &Output) -> Result<(), Error> {
        if self.written - self.written_at_save >= CHECKPOINT_BYTES
            || self.at.elapsed() >= CHECKPOINT_INTERVAL
        {
            self.save(out)?;
        }
        Ok(())
    }
}

/// Writes all of `bytes`, returning how many were accepted even when it fails part way.
fn write_counting(out: &mut impl Write, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

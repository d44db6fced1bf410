//! `tscat`: follow a stream and write it out, whole messages only, checkpointing the
//! position so a restart continues where the output stopped.
//!
//! Order of events per batch: write the complete messages, then (sometimes) save the
//! boundary reached. A position is therefore saved only after its bytes were accepted by the
//! output, so a crash can repeat output but never skip it. A clean stop (stop flag, or the
//! output closed) saves the exact boundary written, so it repeats nothing either.
//!
//! Checkpoint policy, which bounds what a `kill -9` repeats: a save after a batch once
//! [`CHECKPOINT_BYTES`] are unsaved or [`CHECKPOINT_INTERVAL`] has passed, and whenever the
//! stream pauses for a read tick. Unsaved output is thus below `CHECKPOINT_BYTES` plus one
//! batch (one read of [`READ_SIZE`], plus the held start of a message larger than that).
//! Each save costs two fsyncs, so saving per batch on a fast stream would cap throughput.

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::follow::{self, Event, Follower, Retry};
use crate::messages::Messages;
use crate::state::{self, StateFile};
use crate::{indexer, resolve, StartAt};
use proto::framing::{Framing, FramingError};
use proto::Start;

/// Unsaved output that triggers a checkpoint.
pub const CHECKPOINT_BYTES: u64 = 256 << 10;
/// Longest time output stays unsaved while the stream keeps flowing.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes read from the socket at a time.
pub const READ_SIZE: usize = 64 << 10;

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
    /// 5 malformed message, 6 output error, 7 every server refused the request for good.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Follow(follow::Error::Refused { .. }) => 7,
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
}

/// Follows the stream into `out` until `stop` is raised, the output closes, or an error.
///
/// `out` should be unbuffered (each `write` reaching the reader), so that a saved position
/// never covers bytes still sitting in a buffer.
pub fn run(cfg: &Config, out: &mut impl Write, stop: Arc<AtomicBool>) -> Result<Stopped, Error> {
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
            if cfg.start.is_relative() && cfg.indexer.is_none() && cfg.framing.is_some() {
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
    let mut follower = Follower::new(follow_cfg, start, stop);
    // A relative start becomes absolute once a server has confirmed it; nothing is handed
    // out before that, so the origin is known by the first batch.
    let origin = follower.position().unwrap_or(0);
    let mut messages = Messages::new(cfg.framing, cfg.max_message, origin);
    let mut placed = follower.position().is_some();
    let mut checkpoint = Checkpoint {
        state: state.as_mut(),
        saved: origin,
        at: Instant::now(),
    };
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let event = match follower.read(&mut buf) {
            Ok(e) => e,
            Err(e) => {
                if placed {
                    checkpoint.save(messages.boundary())?;
                }
                return Err(Error::Follow(e));
            }
        };
        match event {
            Event::Stopped => {
                if placed {
                    checkpoint.save(messages.boundary())?;
                }
                return Ok(Stopped::Asked);
            }
            Event::Idle if !placed => {}
            Event::Idle => checkpoint.save(messages.boundary())?,
            Event::Data(n) => {
                if !placed {
                    let origin = follower.position().expect("confirmed before data") - n as u64;
                    messages = Messages::new(cfg.framing, cfg.max_message, origin);
                    checkpoint.saved = origin;
                    placed = true;
                }
                let batch = messages.push(&buf[..n]);
                let (written, result) = write_counting(out, batch.bytes);
                let boundary = batch.boundary_within(written);
                messages.release(boundary);
                match result {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        checkpoint.save(boundary)?;
                        log::info!(offset = boundary; "output closed, stopping");
                        return Ok(Stopped::OutputClosed);
                    }
                    Err(e) => {
                        checkpoint.save(boundary)?;
                        return Err(Error::Output(e));
                    }
                }
                if let Some(e) = messages.error() {
                    checkpoint.save(boundary)?;
                    return Err(Error::Framing(e.clone()));
                }
                checkpoint.maybe_save(boundary)?;
            }
        }
    }
}

/// The state file, if any, and what was saved in it last.
struct Checkpoint<'a> {
    state: Option<&'a mut StateFile>,
    saved: u64,
    at: Instant,
}

impl Checkpoint<'_> {
    fn save(&mut self, offset: u64) -> Result<(), Error> {
        if let Some(state) = &mut self.state {
            if offset != self.saved || state.saved().is_none() {
                state.save(offset).map_err(Error::State)?;
                log::debug!(offset = offset; "checkpoint");
            }
        }
        self.saved = offset;
        self.at = Instant::now();
        Ok(())
    }

    fn maybe_save(&mut self, offset: u64) -> Result<(), Error> {
        if offset - self.saved >= CHECKPOINT_BYTES || self.at.elapsed() >= CHECKPOINT_INTERVAL {
            self.save(offset)?;
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

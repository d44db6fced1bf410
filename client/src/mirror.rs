//! `tsmirror`: keep a local file a byte-identical copy of a remote tailsrv's file.
//!
//! The position IS the local file's length: the mirror asks for the stream from there and
//! appends what arrives. Nothing else records progress, so there is nothing to get out of
//! step: after a crash, whatever reached the file is where the next run resumes. An
//! exclusive `flock` on the file keeps two mirrors from appending the same bytes twice.
//!
//! **Durability.** The file is appended with plain writes and `fdatasync`ed in batches
//! ([`Options::sync_bytes`], [`Options::sync_interval`]) and on a clean stop. After a process
//! crash the page cache still holds every write. After a machine crash the file may be shorter
//! than what was received, which the length rule handles the same way, or, on file systems
//! that do not order data before size updates, its size may cover blocks that were never
//! written and read back as zeros. Those can only lie in what was not yet synced: the last
//! `sync_bytes` plus one read ([`READ_SIZE`]). So on start [`logfile::cut_zero_tail`] cuts the
//! file at the first byte of (a) the run of zero bytes that ends it, and (b) within that last
//! window, the first 4 KiB-aligned block that is all zeros, whichever comes first. Cutting real zeros
//! is harmless: the mirror fetches them again from the server. tailsrv on the replica never
//! serves the zeros of a crash this way, provided tsmirror ran (and cut) before it.
//!
//! **Creating the file.** A missing replica is created only once a server has accepted the
//! request (`ok N LEN`), so a refused or unreachable mirror leaves no empty file behind.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::follow::{self, Event, Follower, Retry};
use proto::Start;

/// Why the mirror stopped with an error. [`Error::exit_code`] is the documented exit status.
#[derive(Debug)]
pub enum Error {
    /// Opening, locking or appending to the local file failed.
    #[allow(missing_docs)] // The file, what was done to it, and how that failed.
    File {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
    /// Another process holds the file's lock.
    #[allow(missing_docs)]
    Locked { path: PathBuf },
    /// Only with a finite retry policy.
    Follow(follow::Error),
}

impl Error {
    /// 1 local file error, 3 file locked by another mirror, 4 servers unreachable or every
    /// server refused for good, 8 retention deleted the replica's length on the servers
    /// ([`follow::Error::Gone`]; a replica is a byte-identical prefix, so it never skips).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::File { .. } => 1,
            Error::Locked { .. } => 3,
            Error::Follow(follow::Error::Gone { .. }) => crate::cat::GONE_EXIT,
            Error::Follow(_) => 4,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::File { path, what, error } => write!(f, "{what} {}: {error}", path.display()),
            Error::Locked { path } => write!(
                f,
                "{} is locked by another process (another tsmirror?)",
                path.display()
            ),
            Error::Follow(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

/// Bytes read from the socket at a time.
pub const READ_SIZE: usize = 256 << 10;

/// How the mirror syncs and reports.
#[derive(Debug, Clone)]
pub struct Options {
    /// `fdatasync` once this many bytes were appended since the last sync (0: every write).
    pub sync_bytes: u64,
    /// `fdatasync` once appended bytes have waited this long.
    pub sync_interval: Duration,
    /// Report progress on stderr (a terminal) while catching up a large backlog.
    pub progress: bool,
    /// The file to mirror from servers in directory mode (relative to the served
    /// directory, as `list` shows it); `None` for single-file servers.
    pub path: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync_bytes: 4 << 20,
            sync_interval: Duration::from_secs(1),
            progress: false,
            path: None,
        }
    }
}

/// Opens and locks an existing replica file (`create`: or creates it).
pub fn open_locked(path: &Path, create: bool) -> Result<File, Error> {
    let file_err = |what, error| Error::File {
        path: path.to_owned(),
        what,
        error,
    };
    let file = OpenOptions::new()
        .create(create)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| file_err("opening", e))?;
    match logfile::lock_exclusive(&file, path, "mirror") {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(Error::Locked {
            path: path.to_owned(),
        }),
        Err(e) => Err(file_err("locking", e)),
    }
}

/// Mirrors `servers`' file into `path` until `stop` is raised (or, with a finite `retry`,
/// no server is reachable).
pub fn run(
    servers: Vec<String>,
    path: &Path,
    retry: Retry,
    opts: Options,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    let file_err = |what, error| Error::File {
        path: path.to_owned(),
        what,
        error,
    };
    let mut file = match open_locked(path, false) {
        Ok(f) => Some(f),
        Err(Error::File { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
            // Created later, but whether it can be is known now.
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            rustix::fs::access(
                dir,
                rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            )
            .map_err(|e| file_err("cannot create", e.into()))?;
            None
        }
        Err(e) => return Err(e),
    };
    let len = match &file {
        Some(f) => {
            let before = f
                .metadata()
                .map_err(|e| file_err("reading the length of", e))?
                .len();
            let window = opts.sync_bytes.saturating_add(READ_SIZE as u64);
            let len = logfile::cut_zero_tail(f, window)
                .map_err(|e| file_err("checking the tail of", e))?;
            if len < before {
                log::warn!(
                    path:% = path.display(), from = before, to = len;
                    "cut {} zero bytes at the end (left by a crash, or real zeros: fetched again)",
                    before - len
                );
            }
            len
        }
        None => 0,
    };
    log::info!(path:% = path.display(), offset = len; "mirroring from the replica's length");
    let mut follow_cfg = follow::Config::new(servers, retry);
    follow_cfg.path = opts.path.clone();
    let mut follower = Follower::new(follow_cfg, Start::Byte(len), stop);
    let mut buf = vec![0u8; READ_SIZE];
    let mut sync = Sync {
        unsynced: 0,
        since: Instant::now(),
        opts: opts.clone(),
    };
    let mut progress = Progress::new(opts.progress);
    loop {
        let event = follower.read(&mut buf).map_err(Error::Follow)?;
        if file.is_none() && follower.confirmed_len().is_some() {
            // A server accepted: now the replica may exist.
            let f = open_locked(path, true)?;
            let len = f
                .metadata()
                .map_err(|e| file_err("reading the length of", e))?
                .len();
            if len != 0 {
                return Err(file_err(
                    "creating",
                    io::Error::other(format!("it appeared meanwhile with {len} bytes")),
                ));
            }
            log::info!(path:% = path.display(); "created the replica");
            file = Some(f);
        }
        match event {
            Event::Data(n) => {
                let f = file.as_mut().expect("created on confirmation");
                f.write_all(&buf[..n])
                    .map_err(|e| file_err("appending to", e))?;
                if sync.unsynced == 0 {
                    sync.since = Instant::now();
                }
                sync.unsynced += n as u64;
                if sync.due() {
                    sync.run(f).map_err(|e| file_err("syncing", e))?;
                }
            }
            Event::Skipped { .. } => unreachable!("a mirror follows with OnGone::Fail"),
            Event::Idle => {
                if let Some(f) = &file {
                    if sync.unsynced > 0 && sync.since.elapsed() >= opts.sync_interval {
                        sync.run(f).map_err(|e| file_err("syncing", e))?;
                    }
                }
            }
            Event::Stopped => {
                if let Some(f) = &file {
                    sync.run(f).map_err(|e| file_err("syncing", e))?;
                }
                progress.end();
                log::info!(path:% = path.display(), offset = follower.position(); "stopping");
                return Ok(());
            }
        }
        if let (Some(at), Some(target)) = (follower.position(), follower.confirmed_len()) {
            progress.update(at, target);
        }
    }
}

/// Batched `fdatasync`.
struct Sync {
    unsynced: u64,
    /// When the oldest unsynced byte was appended.
    since: Instant,
    opts: Options,
}

impl Sync {
    fn due(&self) -> bool {
        self.unsynced >= self.opts.sync_bytes || self.since.elapsed() >= self.opts.sync_interval
    }

    fn run(&mut self, f: &File) -> io::Result<()> {
        if self.unsynced > 0 {
            f.sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }
}

/// A one-line progress report on stderr while a large backlog is caught up.
struct Progress {
    enabled: bool,
    /// Shown since (offset, time), and last drawn.
    shown: Option<(u64, Instant)>,
    drawn: Instant,
}

/// A backlog below this is caught up too quickly to be worth a progress line.
const PROGRESS_BACKLOG: u64 = 64 << 20;

impl Progress {
    fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            shown: None,
            drawn: Instant::now(),
        }
    }

    fn update(&mut self, at: u64, target: u64) {
        if !self.enabled {
            return;
        }
        let Some((from, t0)) = self.shown else {
            if target.saturating_sub(at) >= PROGRESS_BACKLOG {
                self.shown = Some((at, Instant::now()));
                self.draw(at, target, 0.0);
            }
            return;
        };
        if at >= target {
            self.end();
            return;
        }
        if self.drawn.elapsed() < Duration::from_secs(1) {
            return;
        }
        let secs = t0.elapsed().as_secs_f64().max(1e-3);
        self.draw(at, target, (at - from) as f64 / secs);
    }

    /// Draws the line: where the replica is, the target, the rate (bytes/s) and what is left.
    fn draw(&mut self, at: u64, target: u64, rate: f64) {
        self.drawn = Instant::now();
        let mib = |b: f64| b / f64::from(1 << 20);
        let left = target.saturating_sub(at);
        let eta = if rate > 0.0 {
            format!("~{:.0} s", left as f64 / rate)
        } else {
            "time unknown".to_owned()
        };
        eprint!(
            "\rcatching up: {:.1} of {:.1} MiB, {:.1} MiB/s, {:.1} MiB left ({eta})   ",
            mib(at as f64),
            mib(target as f64),
            mib(rate),
            mib(left as f64)
        );
    }

    fn end(&mut self) {
        if self.shown.take().is_some() {
            eprintln!("\rcaught up{:60}", "");
        }
    }
}

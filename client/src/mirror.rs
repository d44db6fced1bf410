//! `tsmirror`: keep a local file a byte-identical copy of a remote tailsrv's file.
//!
//! The position IS the local file's length: the mirror asks for the stream from there and
//! appends what arrives. Nothing else records progress, so there is nothing to get out of
//! step: after a crash, whatever reached the file is where the next run resumes. An
//! exclusive `flock` on the file keeps two mirrors from appending the same bytes twice.
//!
//! The file is appended with plain writes (no fsync per batch). After a process crash the
//! page cache still holds every write; after a machine crash the file may be shorter than
//! what was received, which the length rule handles the same way.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rustix::fs::{flock, FlockOperation};

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
    /// server refused for good.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::File { .. } => 1,
            Error::Locked { .. } => 3,
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

/// Opens and locks the replica file, creating it if needed.
pub fn open_locked(path: &Path) -> Result<File, Error> {
    let file_err = |what, error| Error::File {
        path: path.to_owned(),
        what,
        error,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| file_err("opening", e))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Locked {
            path: path.to_owned(),
        }),
        Err(e) => Err(file_err("locking", e.into())),
    }
}

/// Mirrors `servers`' file into `path` until `stop` is raised (or, with a finite `retry`,
/// no server is reachable).
pub fn run(
    servers: Vec<String>,
    path: &Path,
    retry: Retry,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    let mut file = open_locked(path)?;
    let file_err = |what, error| Error::File {
        path: path.to_owned(),
        what,
        error,
    };
    let len = file
        .metadata()
        .map_err(|e| file_err("reading the length of", e))?
        .len();
    log::info!(path:% = path.display(), offset = len; "mirroring from the replica's length");
    let mut follower = Follower::new(follow::Config::new(servers, retry), Start::Byte(len), stop);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match follower.read(&mut buf).map_err(Error::Follow)? {
            Event::Data(n) => file
                .write_all(&buf[..n])
                .map_err(|e| file_err("appending to", e))?,
            Event::Idle => {}
            Event::Stopped => {
                log::info!(path:% = path.display(), offset = follower.position(); "stopping");
                return Ok(());
            }
        }
    }
}

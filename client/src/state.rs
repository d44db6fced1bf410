//! The consumer's position, saved in a small state file so a restart resumes exactly.
//!
//! The file is two text lines a person can read and fix:
//!
//! ```text
//! tailsrv-consumer-state 1
//! offset 123456
//! ```
//!
//! Saving writes a temporary file beside it, fsyncs it, renames it over the old one and
//! fsyncs the directory: after a crash (of the process or the machine) the file holds either
//! the old position or the new one, never a torn mix. Loading accepts exactly that format;
//! anything else is a clear error naming the file, because guessing a position would skip or
//! repeat data silently.
//!
//! Two consumers writing one state file would each overwrite the other's progress, so the
//! state is held under an exclusive `flock` on a `FILE.lock` beside it (a lock on the state
//! file itself would not survive the rename).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// First line of every state file: format name and version.
pub const MAGIC: &str = "tailsrv-consumer-state 1";

/// Largest state file we read (a valid one is under 60 bytes).
const MAX_LEN: u64 = 4096;

/// Why the state file cannot be used.
#[derive(Debug)]
pub enum Error {
    /// The file exists but is not a valid state file.
    #[allow(missing_docs)]
    Corrupt { path: PathBuf, reason: String },
    /// Another process holds the state file's lock.
    #[allow(missing_docs)]
    Locked { path: PathBuf },
    /// Reading, writing or locking failed.
    #[allow(missing_docs)] // The file, what was done to it, and how that failed.
    Io {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Corrupt { path, reason } => write!(
                f,
                "state file {} is corrupt: {reason} (expected {MAGIC:?} then \"offset N\"; fix or remove it)",
                path.display()
            ),
            Error::Locked { path } => write!(
                f,
                "state file {} is in use by another consumer",
                path.display()
            ),
            Error::Io { path, what, error } => {
                write!(f, "{what} state file {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {}

/// An open, locked state file.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    tmp: PathBuf,
    /// Held for the flock; released when dropped.
    _lock: File,
    saved: Option<u64>,
}

impl StateFile {
    /// Locks the state file at `path` and loads the saved position, if any.
    pub fn open(path: &Path) -> Result<StateFile, Error> {
        let io_err = |what, error| Error::Io {
            path: path.to_owned(),
            what,
            error,
        };
        let lock_path = sibling(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("creating the lock of", e))?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::Locked {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(io_err("locking", e.into())),
        }
        let saved = load(path)?;
        Ok(StateFile {
            path: path.to_owned(),
            tmp: sibling(path, ".tmp"),
            _lock: lock,
            saved,
        })
    }

    /// The position saved last (by this or an earlier run), if any.
    pub fn saved(&self) -> Option<u64> {
        self.saved
    }

    /// Saves `offset` atomically and durably. A no-op when it is already the saved value.
    pub fn save(&mut self, offset: u64) -> Result<(), Error> {
        if self.saved == Some(offset) {
            return Ok(());
        }
        let io_err = |what, error| Error::Io {
            path: self.path.clone(),
            what,
            error,
        };
        let mut tmp = File::create(&self.tmp).map_err(|e| io_err("creating a temporary", e))?;
        tmp.write_all(format!("{MAGIC}\noffset {offset}\n").as_bytes())
            .and_then(|()| tmp.sync_all())
            .map_err(|e| io_err("writing a temporary", e))?;
        drop(tmp);
        fs::rename(&self.tmp, &self.path).map_err(|e| io_err("replacing", e))?;
        // The rename is only durable once the directory entry is.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("syncing the directory of", e))?;
        self.saved = Some(offset);
        Ok(())
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Reads and validates a state file; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<u64>, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(Error::Io {
                path: path.to_owned(),
                what: "opening",
                error,
            })
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Error::Io {
            path: path.to_owned(),
            what: "reading",
            error,
        })?;
    parse(&bytes).map(Some).map_err(|reason| Error::Corrupt {
        path: path.to_owned(),
        reason,
    })
}

/// Parses the exact format; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() as u64 > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err(if text.is_empty() {
            "empty".to_owned()
        } else {
            "does not end with a newline (truncated?)".to_owned()
        });
    };
    let mut lines = body.split('\n');
    let magic = lines.next().unwrap_or_default();
    if magic != MAGIC {
        return Err(format!("first line is {magic:?}"));
    }
    let Some(line) = lines.next() else {
        return Err("no offset line".to_owned());
    };
    if let Some(extra) = lines.next() {
        return Err(format!("unexpected line {extra:?}"));
    }
    let digits = line
        .strip_prefix("offset ")
        .ok_or_else(|| format!("second line is {line:?}"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("offset {digits:?} is not a number"));
    }
    digits
        .parse()
        .map_err(|_| format!("offset {digits:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        assert_eq!(parse(b"tailsrv-consumer-state 1\noffset 0\n"), Ok(0));
        assert_eq!(
            parse(b"tailsrv-consumer-state 1\noffset 18446744073709551615\n"),
            Ok(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"tailsrv-consumer-state 1\noffset 5",
            b"tailsrv-consumer-state 2\noffset 5\n",
            b"tailsrv-consumer-state 1\n",
            b"tailsrv-consumer-state 1\noffset \n",
            b"tailsrv-consumer-state 1\noffset -5\n",
            b"tailsrv-consumer-state 1\noffset 5\nmore\n",
            b"tailsrv-consumer-state 1\noffset 99999999999999999999\n",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn save_load_lock() {
        let dir = std::env::temp_dir().join(format!("tailsrv-state-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        let _ = fs::remove_file(&path);
        let mut s = StateFile::open(&path).unwrap();
        assert_eq!(s.saved(), None);
        s.save(42).unwrap();
        assert!(matches!(StateFile::open(&path), Err(Error::Locked { .. })));
        drop(s);
        let s = StateFile::open(&path).unwrap();
        assert_eq!(s.saved(), Some(42));
        drop(s);
        fs::write(&path, b"garbage").unwrap();
        assert!(matches!(StateFile::open(&path), Err(Error::Corrupt { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}

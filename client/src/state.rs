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
//!
//! A producer (`tswrite --state`) saves its session the same way, in [`ProducerStateFile`]:
//!
//! ```text
//! tailsrv-producer-state 1
//! id loader-1
//! seq 1733140000000123
//! messages 5000
//! bytes 48890
//! input-hash 8c3e0f6b2d9a1e44
//! check 5b1f0c9a7d2e8b31
//! ```
//!
//! `seq` is the next sequence number of the producer session, `messages` and `bytes` how much
//! of the input every request before it covers, `input-hash` an FNV-1a 64 hash of those
//! bytes (to recognise the same input), and `check` the FNV-1a 64 hash of every line before
//! it, so a damaged file is refused rather than believed.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

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
                "state file {} is corrupt: {reason} (fix or remove it)",
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
    /// Held for the flock; released when dropped.
    _lock: File,
    saved: Option<u64>,
}

impl StateFile {
    /// Locks the state file at `path` and loads the saved position, if any.
    pub fn open(path: &Path) -> Result<StateFile, Error> {
        let lock = lock(path)?;
        let saved = load(path)?;
        Ok(StateFile {
            path: path.to_owned(),
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
        replace(&self.path, format!("{MAGIC}\noffset {offset}\n").as_bytes())?;
        self.saved = Some(offset);
        Ok(())
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the exclusive lock of the state file at `path` (on `FILE.lock`).
fn lock(path: &Path) -> Result<File, Error> {
    let io_err = |what, error| Error::Io {
        path: path.to_owned(),
        what,
        error,
    };
    let lock_path = logfile::sibling(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err("creating the lock of", e))?;
    match logfile::lock_exclusive(&lock, path, "consumer") {
        Ok(()) => Ok(lock),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Error::Locked {
            path: path.to_owned(),
        }),
        Err(e) => Err(io_err("locking", e)),
    }
}

/// Replaces `path` with `bytes` atomically and durably ([`logfile::replace`]).
fn replace(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    logfile::replace(path, bytes)
        .map(drop)
        .map_err(|error| Error::Io {
            path: path.to_owned(),
            what: "saving",
            error,
        })
}

/// Reads and validates a state file; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<u64>, Error> {
    let Some(bytes) = read_small(path)? else {
        return Ok(None);
    };
    parse(&bytes).map(Some).map_err(|reason| Error::Corrupt {
        path: path.to_owned(),
        reason: format!("{reason}; expected {MAGIC:?} then \"offset N\""),
    })
}

/// Reads a whole small file; `None` when there is none.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, Error> {
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
    Ok(Some(bytes))
}

/// First line of a producer's state file: format name and version.
pub const PRODUCER_MAGIC: &str = "tailsrv-producer-state 1";

/// FNV-1a 64 of `bytes`, continuing from `hash` (start with [`FNV_START`]).
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}

/// FNV-1a 64's offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A producer session and how much of its input is acknowledged (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    /// The producer id.
    pub id: String,
    /// The next sequence number: every request before it is acknowledged.
    pub seq: u64,
    /// Input messages those requests cover (refused ones included).
    pub messages: u64,
    /// Input bytes those messages take.
    pub bytes: u64,
    /// FNV-1a 64 of those bytes.
    pub input_hash: u64,
}

impl ProducerState {
    /// The file's text.
    pub fn render(&self) -> String {
        let body = format!(
            "{PRODUCER_MAGIC}\nid {}\nseq {}\nmessages {}\nbytes {}\ninput-hash {:016x}\n",
            self.id, self.seq, self.messages, self.bytes, self.input_hash
        );
        let check = fnv1a(FNV_START, body.as_bytes());
        format!("{body}check {check:016x}\n")
    }

    /// Parses the exact format; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<ProducerState, String> {
        if bytes.len() as u64 > MAX_LEN {
            return Err(format!("longer than {MAX_LEN} bytes"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
        if text.is_empty() {
            return Err("empty".to_owned());
        }
        if !text.ends_with('\n') {
            return Err("does not end with a newline (truncated?)".to_owned());
        }
        let lines: Vec<&str> = text[..text.len() - 1].split('\n').collect();
        if lines[0] != PRODUCER_MAGIC {
            return Err(format!(
                "first line is {:?}, expected {PRODUCER_MAGIC:?}",
                lines[0]
            ));
        }
        if lines.len() != 7 {
            return Err(format!("{} lines, expected 7", lines.len()));
        }
        let field = |i: usize, name: &str| -> Result<&str, String> {
            lines[i]
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or_else(|| format!("line {} is {:?}, expected `{name} ...`", i + 1, lines[i]))
        };
        let number = |i: usize, name: &str| -> Result<u64, String> {
            let v = field(i, name)?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{name} {v:?} is not a number"));
            }
            v.parse()
                .map_err(|_| format!("{name} {v:?} is out of range"))
        };
        let hex = |i: usize, name: &str| -> Result<u64, String> {
            let v = field(i, name)?;
            if v.len() != 16 {
                return Err(format!("{name} {v:?} is not 16 hex digits"));
            }
            u64::from_str_radix(v, 16).map_err(|_| format!("{name} {v:?} is not 16 hex digits"))
        };
        let check = hex(6, "check")?;
        let body_len = text.len() - lines[6].len() - 1;
        if fnv1a(FNV_START, &bytes[..body_len]) != check {
            return Err("its checksum does not match its content (damaged?)".to_owned());
        }
        let id = field(1, "id")?.to_owned();
        if !proto::collate::valid_producer_id(&id) {
            return Err(format!("producer id {id:?} is not valid"));
        }
        Ok(ProducerState {
            id,
            seq: number(2, "seq")?,
            messages: number(3, "messages")?,
            bytes: number(4, "bytes")?,
            input_hash: hex(5, "input-hash")?,
        })
    }
}

/// An open, locked producer state file.
#[derive(Debug)]
pub struct ProducerStateFile {
    path: PathBuf,
    _lock: File,
    saved: Option<ProducerState>,
}

impl ProducerStateFile {
    /// Locks the state file at `path` and loads the saved session, if any.
    pub fn open(path: &Path) -> Result<ProducerStateFile, Error> {
        let lock = lock(path)?;
        let saved = match read_small(path)? {
            None => None,
            Some(bytes) => Some(
                ProducerState::parse(&bytes).map_err(|reason| Error::Corrupt {
                    path: path.to_owned(),
                    reason,
                })?,
            ),
        };
        Ok(ProducerStateFile {
            path: path.to_owned(),
            _lock: lock,
            saved,
        })
    }

    /// The session saved last, if any.
    pub fn saved(&self) -> Option<&ProducerState> {
        self.saved.as_ref()
    }

    /// Saves `state` atomically and durably; a no-op when it is the saved one.
    pub fn save(&mut self, state: &ProducerState) -> Result<(), Error> {
        if self.saved.as_ref() == Some(state) {
            return Ok(());
        }
        replace(&self.path, state.render().as_bytes())?;
        self.saved = Some(state.clone());
        Ok(())
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
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
    use std::fs;

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
    fn producer_state_round_trip_and_damage() {
        let st = ProducerState {
            id: "p-1".into(),
            seq: 17,
            messages: 5,
            bytes: 40,
            input_hash: 0xdead_beef,
        };
        let text = st.render();
        assert_eq!(ProducerState::parse(text.as_bytes()), Ok(st.clone()));
        // Any one byte changed, or the file cut anywhere, is refused.
        let b = text.as_bytes();
        for i in 0..b.len() {
            let mut bad = b.to_vec();
            bad[i] ^= 0x01;
            assert!(ProducerState::parse(&bad).is_err(), "flip at {i}");
            assert!(ProducerState::parse(&b[..i]).is_err(), "cut at {i}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut f = ProducerStateFile::open(&path).unwrap();
        assert!(f.saved().is_none());
        f.save(&st).unwrap();
        assert!(matches!(
            ProducerStateFile::open(&path),
            Err(Error::Locked { .. })
        ));
        drop(f);
        assert_eq!(ProducerStateFile::open(&path).unwrap().saved(), Some(&st));
        fs::write(&path, b"tailsrv-producer-state 1\nid x\n").unwrap();
        assert!(matches!(
            ProducerStateFile::open(&path),
            Err(Error::Corrupt { .. })
        ));
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

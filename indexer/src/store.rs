//! The index file on disk: small, append-only, checksummed, so it survives `kill -9` and
//! tells us exactly what it knows after a restart.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! header, 64 bytes:
//!   0  magic        b"tsrvidx\0"
//!   8  version      u32 (1)
//!  12  framing      u8  (0 newline, 1 nul, 2 u32be, 3 varint)
//!  13  reserved     3 bytes, zero
//!  16  stride       u32 K
//!  20  reserved     4 bytes, zero
//!  24  max message  u64
//!  32  dev          u64 of the indexed file
//!  40  inode        u64 of the indexed file
//!  48  reserved     8 bytes, zero
//!  56  crc32        of bytes 0..56
//!  60  reserved     4 bytes, zero
//! entry j (j = 1, 2, ...), 12 bytes at 64 + 12 (j - 1):
//!   offset u64 where message j*K starts, crc32 u32 of (header crc, j, offset)
//! ```
//!
//! Why this shape: one entry every K messages (K = 64 by default) costs 12/64 = 0.19 bytes
//! per message, and any message is at most K-1 messages of scanning away from an entry.
//! Entries are only ever appended, so a crash can at worst leave a torn last entry. Each
//! entry carries its own checksum, salted with its number and the header's checksum, so a
//! torn, zero-filled, shifted or foreign entry fails verification; loading keeps the longest
//! valid, strictly increasing prefix and truncates the rest. The header is written once, to a
//! temporary file that is renamed into place, so it is never torn: a file with our magic and a
//! bad header checksum is corrupt (rebuilt), a file without our magic is somebody else's
//! (refused, never overwritten).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use proto::framing::Framing;

use crate::index::Params;

pub(crate) const MAGIC: [u8; 8] = *b"tsrvidx\0";
const VERSION: u32 = 1;
/// Bytes before the first entry.
pub const HEADER_LEN: u64 = 64;
/// Bytes per entry.
pub const ENTRY_LEN: u64 = 12;

/// What an index is an index of: the parameters and the log's identity. Any difference
/// means the index cannot be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// How the log is split and indexed.
    pub params: Params,
    /// Device of the indexed file.
    pub dev: u64,
    /// Inode of the indexed file.
    pub ino: u64,
}

impl Identity {
    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12] = self.params.framing.code();
        h[16..20].copy_from_slice(&self.params.stride.to_le_bytes());
        h[24..32].copy_from_slice(&self.params.max_message.to_le_bytes());
        h[32..40].copy_from_slice(&self.dev.to_le_bytes());
        h[40..48].copy_from_slice(&self.ino.to_le_bytes());
        let crc = crc32fast::hash(&h[..56]);
        h[56..60].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Why an existing index file is not reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    Corrupt,
    Version(u32),
    Framing(String),
    Stride(u32),
    MaxMessage(u64),
    Replaced,
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::Corrupt => f.write_str("its header is corrupt (checksum mismatch)"),
            Stale::Version(v) => {
                write!(f, "it has format version {v}, this build writes {VERSION}")
            }
            Stale::Framing(x) => write!(f, "it was written for framing {x}"),
            Stale::Stride(k) => write!(f, "it was written with stride {k}"),
            Stale::MaxMessage(m) => write!(f, "it was written with max message {m}"),
            Stale::Replaced => f.write_str("the log file was replaced (different device or inode)"),
        }
    }
}

/// What was found at the index path.
pub enum Opened {
    /// A valid index of this file: its entries (offsets of messages K, 2K, ...), after
    /// dropping a torn or corrupt tail.
    Resumed(Store, Vec<u64>),
    /// No index yet (a new, empty one was created).
    Created(Store),
    /// An index that cannot be reused, and why (a new, empty one was created in its place).
    Rebuilt(Store, Stale),
}

/// An open index file that entries are appended to.
pub struct Store {
    file: File,
    path: PathBuf,
    header_crc: u32,
    /// Entries on disk.
    persisted: u64,
}

impl Store {
    /// Opens the index at `path` for a file with `params`, creating or replacing it as needed.
    ///
    /// Fails (without touching it) if the file there is not a tailsrv-indexer index.
    pub fn open(path: &Path, params: Identity) -> io::Result<Opened> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Opened::Created(Store::create(path, params)?))
            }
            Err(e) => return Err(ctx(path, "reading index", e)),
        };
        if bytes.is_empty() {
            return Ok(Opened::Created(Store::create(path, params)?));
        }
        if !bytes.starts_with(&MAGIC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} exists but is not a tailsrv-indexer index (no magic number); refusing to \
                     overwrite it: remove it or choose another --index",
                    path.display()
                ),
            ));
        }
        if let Some(why) = stale(&bytes, &params) {
            return Ok(Opened::Rebuilt(Store::create(path, params)?, why));
        }
        let header_crc = u32_at(&bytes, 56);
        let body = &bytes[HEADER_LEN as usize..];
        let mut entries = Vec::with_capacity(body.len() / ENTRY_LEN as usize);
        let mut prev = 0u64;
        for (i, raw) in body.chunks_exact(ENTRY_LEN as usize).enumerate() {
            let offset = u64_at(raw, 0);
            let j = i as u64 + 1;
            if u32_at(raw, 8) != entry_crc(header_crc, j, offset) || offset <= prev {
                break;
            }
            entries.push(offset);
            prev = offset;
        }
        let valid = HEADER_LEN + entries.len() as u64 * ENTRY_LEN;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ctx(path, "opening index", e))?;
        if valid < bytes.len() as u64 {
            log::warn!(
                index:% = path.display(), entries = entries.len(), dropped_bytes = bytes.len() as u64 - valid;
                "index has a torn or corrupt tail; truncating it to the last valid entry"
            );
            file.set_len(valid)
                .map_err(|e| ctx(path, "truncating index", e))?;
        }
        let store = Store {
            file,
            path: path.to_owned(),
            header_crc,
            persisted: entries.len() as u64,
        };
        Ok(Opened::Resumed(store, entries))
    }

    /// Writes a fresh index (header only) to a temporary file and renames it over `path`, so
    /// that whatever was at `path` is replaced atomically.
    pub fn create(path: &Path, params: Identity) -> io::Result<Store> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let header = params.encode();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| ctx(&tmp, "creating index", e))?;
        file.write_all_at(&header, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| ctx(&tmp, "writing index header", e))?;
        fs::rename(&tmp, path).map_err(|e| ctx(path, "renaming new index into place", e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Best effort: makes the rename itself durable across a power cut.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(Store {
            file,
            path: path.to_owned(),
            header_crc: u32_at(&header, 56),
            persisted: 0,
        })
    }

    /// Entries on disk.
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Appends entries for messages `(persisted+1)*K, ...` in one write.
    pub fn append(&mut self, offsets: &[u64]) -> io::Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(offsets.len() * ENTRY_LEN as usize);
        for (i, &offset) in offsets.iter().enumerate() {
            let j = self.persisted + i as u64 + 1;
            buf.extend_from_slice(&offset.to_le_bytes());
            buf.extend_from_slice(&entry_crc(self.header_crc, j, offset).to_le_bytes());
        }
        let at = HEADER_LEN + self.persisted * ENTRY_LEN;
        self.file
            .write_all_at(&buf, at)
            .map_err(|e| ctx(&self.path, "appending to index", e))?;
        self.persisted += offsets.len() as u64;
        Ok(())
    }
}

/// Why the header in `bytes` (which starts with our magic) does not fit `params`, if it doesn't.
fn stale(bytes: &[u8], id: &Identity) -> Option<Stale> {
    if bytes.len() < HEADER_LEN as usize || crc32fast::hash(&bytes[..56]) != u32_at(bytes, 56) {
        return Some(Stale::Corrupt);
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Some(Stale::Version(version));
    }
    if bytes[12] != id.params.framing.code() {
        let name = Framing::from_code(bytes[12])
            .map_or_else(|| format!("#{}", bytes[12]), |f| f.to_string());
        return Some(Stale::Framing(name));
    }
    let stride = u32_at(bytes, 16);
    if stride != id.params.stride {
        return Some(Stale::Stride(stride));
    }
    let max = u64_at(bytes, 24);
    if max != id.params.max_message {
        return Some(Stale::MaxMessage(max));
    }
    if u64_at(bytes, 32) != id.dev || u64_at(bytes, 40) != id.ino {
        return Some(Stale::Replaced);
    }
    None
}

fn entry_crc(header_crc: u32, j: u64, offset: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header_crc.to_le_bytes());
    h.update(&j.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.finalize()
}

fn ctx(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Identity {
        Identity {
            params: Params {
                framing: Framing::Varint,
                stride: 4,
                max_message: 1000,
            },
            dev: 7,
            ino: 9,
        }
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let dir = std::env::temp_dir().join(format!("indexer-store-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.idx");
        let _ = fs::remove_file(&path);
        let Opened::Created(mut s) = Store::open(&path, params()).unwrap() else {
            panic!("expected a new index")
        };
        s.append(&[10, 20]).unwrap();
        s.append(&[35]).unwrap();
        drop(s);
        let Opened::Resumed(_, e) = Store::open(&path, params()).unwrap() else {
            panic!("expected to resume")
        };
        assert_eq!(e, [10, 20, 35]);
        // Tear the last entry: only the first two survive, and the file is repaired.
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let Opened::Resumed(mut s, e) = Store::open(&path, params()).unwrap() else {
            panic!("expected to resume")
        };
        assert_eq!(e, [10, 20]);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            HEADER_LEN + 2 * ENTRY_LEN
        );
        s.append(&[40]).unwrap();
        let Opened::Resumed(_, e) = Store::open(&path, params()).unwrap() else {
            panic!("expected to resume")
        };
        assert_eq!(e, [10, 20, 40]);
        // Other parameters: rebuilt.
        let mut p = params();
        p.ino = 10;
        assert!(matches!(
            Store::open(&path, p).unwrap(),
            Opened::Rebuilt(_, Stale::Replaced)
        ));
        // Not ours: refused and left alone.
        fs::write(&path, b"hello world").unwrap();
        assert!(Store::open(&path, params()).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"hello world");
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! The index file on disk: small, append-only, checksummed, so it survives `kill -9` and
//! tells us exactly what it knows after a restart.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! header, 64 bytes:
//!   0  magic        b"tsrvidx\0"
//!   8  version      u32 (2)
//!  12  framing      u8  (0 newline, 1 nul, 2 u32be, 3 varint)
//!  13  reserved     3 bytes, zero
//!  16  stride       u32 K
//!  20  head length  u32 bytes of the log's start fingerprinted (at most 64)
//!  24  max message  u64
//!  32  inode        u64 of the indexed file
//!  40  head crc     u32 crc32 of the log's first `head length` bytes
//!  44  reserved     12 bytes, zero
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
//! (refused, never overwritten) unless it is clearly ours with a damaged magic (a bit or two
//! off, and either its header checksum matches with the magic put right, or it is named
//! `*.idx` and is 64 + 12k bytes long): that is corrupt too, and rebuilt.
//!
//! The log is identified by its inode and a checksum of its first 64 bytes, not by its
//! device number, which some file systems (btrfs, NFS, overlayfs) change across reboots and
//! which would force a needless rebuild. A log that was shorter than 64 bytes when the
//! index was created has the header written again (before any entry) once the first entry
//! is, so the fingerprint covers as much as the log held then. Version 1 (which had the
//! device number) is rebuilt.
//!
//! Durability: entries are written as they are found (a `kill -9` loses none the kernel has)
//! and made durable in batches ([`Store::sync_due`]): every [`SYNC_ENTRIES`] entries or
//! [`SYNC_AFTER`] after the first unsynced one, the log is `fdatasync`ed first, then the
//! index. After a machine crash, every entry up to the last sync is on disk and points into
//! log bytes that were on disk; entries written after it may or may not have survived, and
//! any that point past the log's end are dropped on start (the scanner re-splits the last
//! stride kept, among others, before trusting it).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proto::framing::Framing;

use crate::index::Params;

pub(crate) const MAGIC: [u8; 8] = *b"tsrvidx\0";
const VERSION: u32 = 2;
/// Bytes before the first entry.
pub const HEADER_LEN: u64 = 64;
/// Bytes per entry.
pub const ENTRY_LEN: u64 = 12;
/// Bytes of the log's start that identify it (with its inode).
const HEAD: usize = 64;
/// Unsynced entries that trigger a sync.
pub const SYNC_ENTRIES: u64 = 16_384;
/// Longest an entry stays unsynced.
pub const SYNC_AFTER: Duration = Duration::from_secs(1);

/// What an index is an index of: the parameters and the log's inode. Any difference means
/// the index cannot be reused (so does a change of the log's first bytes, read from the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// How the log is split and indexed.
    pub params: Params,
    /// Inode of the indexed file.
    pub ino: u64,
}

/// The log's first bytes, as the header records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    len: u32,
    crc: u32,
}

impl Head {
    /// The first [`HEAD`] bytes of `log`, or as many as it holds (it may be shrinking
    /// under us: whatever one read finds).
    fn of(log: &File) -> io::Result<Head> {
        let mut buf = [0u8; HEAD];
        let mut done = 0;
        while done < HEAD {
            match log.read_at(&mut buf[done..], done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Head {
            len: done as u32,
            crc: crc32fast::hash(&buf[..done]),
        })
    }

    /// The first `len` bytes of `log`; None if it is shorter now.
    fn first(log: &File, len: usize) -> io::Result<Option<Head>> {
        let mut buf = [0u8; HEAD];
        let mut done = 0;
        while done < len {
            match log.read_at(&mut buf[done..len], done as u64) {
                Ok(0) => return Ok(None),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(Head {
            len: len as u32,
            crc: crc32fast::hash(&buf[..len]),
        }))
    }
}

fn encode(id: &Identity, head: Head) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12] = id.params.framing.code();
    h[16..20].copy_from_slice(&id.params.stride.to_le_bytes());
    h[20..24].copy_from_slice(&head.len.to_le_bytes());
    h[24..32].copy_from_slice(&id.params.max_message.to_le_bytes());
    h[32..40].copy_from_slice(&id.ino.to_le_bytes());
    h[40..44].copy_from_slice(&head.crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..56]);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h
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
    /// Our file, with `bits` bits of its magic number wrong.
    Magic(u32),
    Version(u32),
    Framing(String),
    Stride(u32),
    MaxMessage(u64),
    Replaced,
    Head,
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::Corrupt => f.write_str("its header is corrupt (checksum mismatch)"),
            Stale::Magic(bits) => write!(
                f,
                "its header is corrupt ({bits} bit(s) of its magic number are wrong; it is an \
                 index by its name, size or header checksum)"
            ),
            Stale::Version(v) => {
                write!(f, "it has format version {v}, this build writes {VERSION}")
            }
            Stale::Framing(x) => write!(f, "it was written for framing {x}"),
            Stale::Stride(k) => write!(f, "it was written with stride {k}"),
            Stale::MaxMessage(m) => write!(f, "it was written with max message {m}"),
            Stale::Replaced => f.write_str("the log file was replaced (different inode)"),
            Stale::Head => f.write_str(
                "it does not match the log: the log's first bytes are not the ones indexed (the \
                 log was replaced or rewritten)",
            ),
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
    id: Identity,
    head: Head,
    header_crc: u32,
    /// Entries on disk (written; not necessarily synced).
    persisted: u64,
    /// Entries written since the last sync, and when the first of them was.
    unsynced: u64,
    since: Option<Instant>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("persisted", &self.persisted)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the index at `path` for `log` with `id`, creating or replacing it as needed.
    ///
    /// Fails (without touching it) if the file there is not a tailsrv-indexer index.
    pub fn open(path: &Path, id: Identity, log: &File) -> io::Result<Opened> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Opened::Created(Store::create(path, id, log)?))
            }
            Err(e) => return Err(ctx(path, "reading index", e)),
        };
        if bytes.is_empty() {
            return Ok(Opened::Created(Store::create(path, id, log)?));
        }
        if !bytes.starts_with(&MAGIC) {
            if let Some(bits) = damaged_magic(path, &bytes, bytes.len() as u64) {
                return Ok(Opened::Rebuilt(
                    Store::create(path, id, log)?,
                    Stale::Magic(bits),
                ));
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} exists but is not a tailsrv-indexer index (no magic number); refusing to \
                     overwrite it: remove it or choose another --index",
                    path.display()
                ),
            ));
        }
        let stale = stale(&bytes, &id, log).map_err(|e| ctx(path, "reading the log for", e))?;
        if let Some(why) = stale {
            return Ok(Opened::Rebuilt(Store::create(path, id, log)?, why));
        }
        let header_crc = u32_at(&bytes, 56);
        let head = Head {
            len: u32_at(&bytes, 20),
            crc: u32_at(&bytes, 40),
        };
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
            id,
            head,
            header_crc,
            persisted: entries.len() as u64,
            unsynced: 0,
            since: None,
        };
        Ok(Opened::Resumed(store, entries))
    }

    /// Writes a fresh index (header only) to a temporary file and renames it over `path`, so
    /// that whatever was at `path` is replaced atomically.
    pub fn create(path: &Path, id: Identity, log: &File) -> io::Result<Store> {
        let head = Head::of(log).map_err(|e| ctx(path, "reading the log's first bytes for", e))?;
        let (file, header_crc) = write_header(path, &id, head)?;
        Ok(Store {
            file,
            path: path.to_owned(),
            id,
            head,
            header_crc,
            persisted: 0,
            unsynced: 0,
            since: None,
        })
    }

    /// [`Store::create`] for a scanner that rebuilds: `ticket` from [`Fence::next`]. Runs
    /// under the fence, so index files are created one at a time and in ticket order; a
    /// create whose ticket is no longer the newest does nothing (None): a rebuild that
    /// came after it will replace the file.
    pub fn create_fenced(
        path: &Path,
        id: Identity,
        log: &File,
        fence: &Fence,
        ticket: u64,
    ) -> io::Result<Option<Store>> {
        let (newest, creating) = &*fence.0;
        let one_at_a_time = creating.lock().unwrap_or_else(|p| p.into_inner());
        if newest.load(Ordering::SeqCst) != ticket {
            return Ok(None);
        }
        let store = Store::create(path, id, log)?;
        drop(one_at_a_time);
        Ok(Some(store))
    }

    /// Entries on disk.
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Drops the entries after the first `keep` (they point past the log's end).
    pub fn keep(&mut self, keep: u64) -> io::Result<()> {
        if keep < self.persisted {
            self.file
                .set_len(HEADER_LEN + keep * ENTRY_LEN)
                .map_err(|e| ctx(&self.path, "truncating index", e))?;
            self.persisted = keep;
        }
        Ok(())
    }

    /// Appends entries for messages `(persisted+1)*K, ...` in one write. The first entries
    /// of an index created while the log was shorter than its fingerprint rewrite the header
    /// first (see the module docs).
    pub fn append(&mut self, offsets: &[u64], log: &File) -> io::Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        if self.persisted == 0 && (self.head.len as usize) < HEAD {
            let head = Head::of(log)
                .map_err(|e| ctx(&self.path, "reading the log's first bytes for", e))?;
            if head.len > self.head.len {
                let (file, header_crc) = write_header(&self.path, &self.id, head)?;
                (self.file, self.header_crc, self.head) = (file, header_crc, head);
            }
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
        self.unsynced += offsets.len() as u64;
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// When the entries written since the last sync must be synced ([`Store::sync`]): now
    /// after [`SYNC_ENTRIES`] of them, else [`SYNC_AFTER`] after the first. None if all are.
    pub fn sync_due(&self) -> Option<Instant> {
        let since = self.since?;
        if self.unsynced >= SYNC_ENTRIES {
            return Some(since);
        }
        Some(since + SYNC_AFTER)
    }

    /// Makes the entries written so far durable: `fdatasync` of the log (so no entry on
    /// disk points past the log's bytes on disk), then of the index. On the blocking pool.
    pub async fn sync(&mut self, log: &File) -> io::Result<()> {
        if self.since.is_none() {
            return Ok(());
        }
        let log = log.try_clone()?;
        let index = self.file.try_clone()?;
        let path = self.path.clone();
        shared::rt::spawn_blocking(move || sync_both(&log, &index, &path)).await?;
        self.unsynced = 0;
        self.since = None;
        Ok(())
    }

    /// [`Store::sync`] on this thread, for work already on the blocking pool.
    pub fn sync_blocking(&mut self, log: &File) -> io::Result<()> {
        if self.since.is_some() {
            sync_both(log, &self.file, &self.path)?;
        }
        self.unsynced = 0;
        self.since = None;
        Ok(())
    }
}

/// `fdatasync` of the log, then of the index at `path`: no entry on disk points past the
/// log's bytes on disk.
fn sync_both(log: &File, index: &File, path: &Path) -> io::Result<()> {
    log.sync_data()
        .map_err(|e| io::Error::new(e.kind(), format!("fdatasync of the log: {e}")))?;
    index.sync_data().map_err(|e| ctx(path, "fdatasync", e))
}

/// Orders the index files a scanner creates while it rebuilds (see
/// [`Store::create_fenced`]): the newest ticket handed out, and a lock held while a file is
/// made. Handing out a ticket never waits for a file being made (that takes an fsync or
/// two), so the scanner never blocks the thread it runs on.
#[derive(Debug, Clone, Default)]
pub struct Fence(std::sync::Arc<(AtomicU64, std::sync::Mutex<()>)>);

impl Fence {
    /// A ticket newer than every one handed out before.
    pub fn next(&self) -> u64 {
        self.0 .0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Writes a header-only index for `id` and `head` to `path` ([`logfile::replace`]: whole or
/// not at all, the directory synced); the open file and its header checksum.
fn write_header(path: &Path, id: &Identity, head: Head) -> io::Result<(File, u32)> {
    let header = encode(id, head);
    let file = logfile::replace(path, &header)?;
    Ok((file, u32_at(&header, 56)))
}

/// Whether a file at `path`, `len` bytes long and starting with `head` (at least its first
/// 64 bytes, when it has them), is an index of ours, maybe with a damaged magic: such a file
/// may be replaced; anything else at an index path is somebody else's and never overwritten.
pub(crate) fn is_ours(path: &Path, head: &[u8], len: u64) -> bool {
    head.starts_with(&MAGIC) || damaged_magic(path, head, len).is_some()
}

/// If `bytes` (the file's start; it is `len` bytes long, and does not start with our magic)
/// are clearly an index of ours with a damaged magic: how many bits of the magic are wrong.
fn damaged_magic(path: &Path, bytes: &[u8], len: u64) -> Option<u32> {
    if bytes.len() < HEADER_LEN as usize {
        return None;
    }
    let bits: u32 = bytes[..8]
        .iter()
        .zip(MAGIC)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    let mut fixed = [0u8; 56];
    fixed.copy_from_slice(&bytes[..56]);
    fixed[..8].copy_from_slice(&MAGIC);
    let crc_fits = crc32fast::hash(&fixed) == u32_at(bytes, 56);
    let named = path.extension().is_some_and(|e| e == "idx");
    let sized = (len - HEADER_LEN).is_multiple_of(ENTRY_LEN);
    (bits <= 2 && (crc_fits || (named && sized))).then_some(bits)
}

/// Why the header in `bytes` (which starts with our magic) does not fit `id` and `log`, if
/// it doesn't.
fn stale(bytes: &[u8], id: &Identity, log: &File) -> io::Result<Option<Stale>> {
    if bytes.len() < HEADER_LEN as usize || crc32fast::hash(&bytes[..56]) != u32_at(bytes, 56) {
        return Ok(Some(Stale::Corrupt));
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Ok(Some(Stale::Version(version)));
    }
    if bytes[12] != id.params.framing.code() {
        let name = Framing::from_code(bytes[12])
            .map_or_else(|| format!("#{}", bytes[12]), |f| f.to_string());
        return Ok(Some(Stale::Framing(name)));
    }
    let stride = u32_at(bytes, 16);
    if stride != id.params.stride {
        return Ok(Some(Stale::Stride(stride)));
    }
    let max = u64_at(bytes, 24);
    if max != id.params.max_message {
        return Ok(Some(Stale::MaxMessage(max)));
    }
    if u64_at(bytes, 32) != id.ino {
        return Ok(Some(Stale::Replaced));
    }
    let recorded = Head {
        len: u32_at(bytes, 20),
        crc: u32_at(bytes, 40),
    };
    if recorded.len as usize > HEAD {
        return Ok(Some(Stale::Corrupt));
    }
    if Head::first(log, recorded.len as usize)? != Some(recorded) {
        return Ok(Some(Stale::Head));
    }
    Ok(None)
}

/// The inode of `log`, for [`Identity`].
pub fn inode(log: &File) -> io::Result<u64> {
    Ok(log.metadata()?.ino())
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

    fn id() -> Identity {
        Identity {
            params: Params {
                framing: Framing::Varint,
                stride: 4,
                max_message: 1000,
            },
            ino: 9,
        }
    }

    fn scratch(name: &str) -> (PathBuf, PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("indexer-store-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("log");
        fs::write(&log_path, vec![7u8; 100]).unwrap();
        let log = File::open(&log_path).unwrap();
        let path = dir.join("x.idx");
        let _ = fs::remove_file(&path);
        (dir, path, log)
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let (dir, path, log) = scratch("torn");
        let Opened::Created(mut s) = Store::open(&path, id(), &log).unwrap() else {
            panic!("expected a new index")
        };
        s.append(&[10, 20], &log).unwrap();
        s.append(&[35], &log).unwrap();
        assert!(s.sync_due().is_some());
        futures_lite::future::block_on(s.sync(&log)).unwrap();
        assert!(s.sync_due().is_none());
        drop(s);
        let Opened::Resumed(_, e) = Store::open(&path, id(), &log).unwrap() else {
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
        let Opened::Resumed(mut s, e) = Store::open(&path, id(), &log).unwrap() else {
            panic!("expected to resume")
        };
        assert_eq!(e, [10, 20]);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            HEADER_LEN + 2 * ENTRY_LEN
        );
        s.append(&[40], &log).unwrap();
        let Opened::Resumed(_, e) = Store::open(&path, id(), &log).unwrap() else {
            panic!("expected to resume")
        };
        assert_eq!(e, [10, 20, 40]);
        // Another inode: rebuilt.
        let mut other = id();
        other.ino = 10;
        assert!(matches!(
            Store::open(&path, other, &log).unwrap(),
            Opened::Rebuilt(_, Stale::Replaced)
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_is_known_by_its_first_bytes() {
        let (dir, path, log) = scratch("head");
        let Opened::Created(mut s) = Store::open(&path, id(), &log).unwrap() else {
            panic!("expected a new index")
        };
        s.append(&[10], &log).unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path, id(), &log).unwrap(),
            Opened::Resumed(..)
        ));
        // Same inode, other first bytes: rebuilt.
        OpenOptions::new()
            .write(true)
            .open(dir.join("log"))
            .and_then(|f| f.write_all_at(b"x", 63))
            .unwrap();
        assert!(matches!(
            Store::open(&path, id(), &log).unwrap(),
            Opened::Rebuilt(_, Stale::Head)
        ));
        // Created while the log was short: the header is written again with the first entry.
        fs::write(dir.join("log"), b"ab").unwrap();
        fs::remove_file(&path).unwrap();
        let Opened::Created(mut s) = Store::open(&path, id(), &log).unwrap() else {
            panic!("expected a new index")
        };
        assert_eq!(s.head.len, 2);
        fs::write(dir.join("log"), vec![b'c'; 80]).unwrap();
        s.append(&[5, 9], &log).unwrap();
        assert_eq!(s.head.len as usize, HEAD);
        drop(s);
        let Opened::Resumed(_, e) = Store::open(&path, id(), &log).unwrap() else {
            panic!("expected to resume")
        };
        assert_eq!(e, [5, 9]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_versions_and_damaged_magic_are_rebuilt_foreign_files_refused() {
        let (dir, path, log) = scratch("magic");
        // A version 1 header (valid checksum): rebuilt, not refused.
        let mut v1 = [0u8; HEADER_LEN as usize];
        v1[..8].copy_from_slice(&MAGIC);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&v1[..56]);
        v1[56..60].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, v1).unwrap();
        assert!(matches!(
            Store::open(&path, id(), &log).unwrap(),
            Opened::Rebuilt(_, Stale::Version(1))
        ));
        // One bit of the magic flipped, in a file named and sized like an index: rebuilt.
        let Opened::Created(mut s) = Store::open(&dir.join("y.idx"), id(), &log).unwrap() else {
            panic!("expected a new index")
        };
        s.append(&[10, 20], &log).unwrap();
        drop(s);
        let mut bytes = fs::read(dir.join("y.idx")).unwrap();
        bytes[3] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Store::open(&path, id(), &log).unwrap(),
            Opened::Rebuilt(_, Stale::Magic(1))
        ));
        // The same damage under another name: ours by its header checksum.
        let other = dir.join("index-file");
        fs::write(&other, &bytes).unwrap();
        assert!(matches!(
            Store::open(&other, id(), &log).unwrap(),
            Opened::Rebuilt(_, Stale::Magic(1))
        ));
        // Damaged header and magic, not named like an index: refused and left alone.
        bytes[30] ^= 1;
        fs::write(&other, &bytes).unwrap();
        assert!(Store::open(&other, id(), &log).is_err());
        assert_eq!(fs::read(&other).unwrap(), bytes);
        // Not ours at all: refused and left alone.
        fs::write(&path, b"hello world").unwrap();
        assert!(Store::open(&path, id(), &log).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"hello world");
        fs::remove_dir_all(&dir).unwrap();
    }
}

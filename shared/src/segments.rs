//! A segmented log (`logfile::segments`) followed as one log: the segment table every reader
//! of that log shares.
//!
//! Why a table of its own: a segmented log's bytes come from several files, and thousands of
//! followers may read it at once. Opening a segment per follower would cost followers ×
//! segments descriptors, and listing the directory per follower a `readdir` each. So one
//! [`SegmentedLog`] per log directory keeps:
//!
//! - the list of segments as [`logfile::segments::Log::open`] found and checked it (names,
//!   and every sealed segment exactly as long as the names say), listed again only when the
//!   directory's entries change: the watcher counts them ([`DirWatch`]), the next reader that
//!   needs the table lists it once for everyone (never per follower per event);
//! - the active segment (the last one) as a [`FileWatch`], followed exactly as a single file
//!   is (growth, epochs for truncation, short reads);
//! - each sealed segment's open file, shared as an `Arc<File>` by every reader of that
//!   segment and held by the table only weakly: it is closed when its last reader moves on,
//!   so descriptors are bounded by the segments being read, not by followers × segments.
//!   A segment that retention deletes leaves the table at the next listing; readers that
//!   have it open finish it (an unlinked file stays readable).
//!
//! The layout (names, marker, what a sealed length is) is `logfile::segments`' alone: this
//! module never parses a name, it renders paths with [`SegmentName::file_name`].

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use logfile::segments::{Log, SegmentName};

use crate::watch::{DirWatch, FileWatch, Follower};

/// One segmented log, shared by all its readers (clones are cheap).
#[derive(Clone)]
pub struct SegmentedLog {
    inner: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    follower: Follower,
    entries: DirWatch,
    table: Mutex<Table>,
}

/// The segments as last listed.
struct Table {
    /// [`DirWatch::changes`] when the directory was last listed.
    listed: u64,
    /// Oldest first; never empty once listed.
    segments: Vec<Slot>,
    /// The last segment, followed.
    active: FileWatch,
    /// Why the last listing failed (the directory is not a consistent log now).
    error: Option<(io::ErrorKind, String)>,
}

struct Slot {
    name: SegmentName,
    /// The segment's open file while some reader holds it (sealed segments only).
    file: Weak<File>,
}

/// Where the bytes at some offset come from.
#[derive(Debug, Clone)]
pub enum Piece {
    /// The active segment, starting at global offset `base`: it grows, followed like a
    /// single file (its length, epoch and wake-ups are the watch's).
    Active {
        /// Global offset of the segment's first byte.
        base: u64,
        /// The segment's watch.
        watch: FileWatch,
    },
    /// A sealed segment: global bytes `base..end`, never to change.
    Sealed {
        /// Global offset of the segment's first byte.
        base: u64,
        /// Global offset just past its last byte (the next segment's base).
        end: u64,
        /// The open segment, shared with every other reader of it.
        file: Arc<File>,
    },
}

impl Piece {
    /// Global offset of the piece's first byte.
    pub fn base(&self) -> u64 {
        match self {
            Piece::Active { base, .. } | Piece::Sealed { base, .. } => *base,
        }
    }
}

/// Where a log starts and ends now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The first byte the log still holds (the oldest segment's base).
    pub start: u64,
    /// Just past its last byte (the active segment's base plus its published length).
    pub end: u64,
}

impl fmt::Debug for SegmentedLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentedLog")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// The segmented logs being followed, by real path, so that every reader of one log shares
/// one [`SegmentedLog`] (directory mode serves any number of them). A log nobody reads any
/// more is dropped with its last reader.
#[derive(Debug)]
pub struct Logs {
    follower: Follower,
    open: Mutex<HashMap<PathBuf, Weak<Shared>>>,
}

impl Logs {
    /// No log followed yet.
    pub fn new(follower: Follower) -> Logs {
        Logs {
            follower,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The follower the logs are followed with (for plain files too).
    pub fn follower(&self) -> &Follower {
        &self.follower
    }

    /// The log at `dir` (a real path), shared with its other readers, or followed now.
    pub fn get(&self, dir: &Path) -> io::Result<SegmentedLog> {
        let mut open = self.open.lock().unwrap();
        if let Some(inner) = open.get(dir).and_then(Weak::upgrade) {
            return Ok(SegmentedLog { inner });
        }
        let log = SegmentedLog::open(&self.follower, dir)?;
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(dir.to_owned(), Arc::downgrade(&log.inner));
        Ok(log)
    }
}

/// The error a failed listing left, as an `io::Error` again.
fn stored(e: &(io::ErrorKind, String)) -> io::Error {
    io::Error::new(e.0, e.1.clone())
}

impl SegmentedLog {
    /// Follows the segmented log in `dir`: watches its entries (before listing, so no roll
    /// in between is missed), lists and checks it, and follows its active segment. Fails if
    /// the directory is not a consistent segmented log now.
    pub fn open(follower: &Follower, dir: &Path) -> io::Result<SegmentedLog> {
        let entries = follower.watch_entries(dir)?;
        let listed = entries.changes();
        let dir = &std::fs::canonicalize(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let log = Log::open(dir)?;
        let active = follow_active(follower, &log)?;
        let table = Table {
            listed,
            segments: slots(&log, &[]),
            active,
            error: None,
        };
        Ok(SegmentedLog {
            inner: Arc::new(Shared {
                dir: dir.to_owned(),
                follower: follower.clone(),
                entries,
                table: Mutex::new(table),
            }),
        })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How many times the directory's entries changed (see [`DirWatch::changes`]): read it
    /// before asking the table something, then [`SegmentedLog::wait_changed`] for a roll.
    pub fn changes(&self) -> u64 {
        self.inner.entries.changes()
    }

    /// Waits until the directory's entries change from `seen` (a roll, a deletion).
    pub async fn wait_changed(&self, seen: u64) {
        self.inner.entries.wait_changed(seen).await
    }

    /// The table, listed again first if the directory changed since it was last listed.
    fn table(&self) -> io::Result<std::sync::MutexGuard<'_, Table>> {
        let mut table = self.inner.table.lock().unwrap();
        let now = self.inner.entries.changes();
        if now != table.listed {
            self.relist(&mut table, now);
        }
        match &table.error {
            Some(e) => Err(stored(e)),
            None => Ok(table),
        }
    }

    /// Lists the directory into `table`, keeping the open files of segments still there.
    fn relist(&self, table: &mut Table, now: u64) {
        table.listed = now;
        let log = match Log::open(&self.inner.dir) {
            Ok(log) => log,
            Err(e) => {
                if table.error.as_ref().map(|(_, m)| m) != Some(&e.to_string()) {
                    log::warn!(dir:% = self.inner.dir.display(); "segmented log: {e}");
                }
                table.error = Some((e.kind(), e.to_string()));
                return;
            }
        };
        if log.active().path != table.active.path() {
            match follow_active(&self.inner.follower, &log) {
                Ok(watch) => {
                    log::debug!(path:% = log.active().path.display(); "segmented log rolled");
                    table.active = watch;
                }
                Err(e) => {
                    table.error = Some((e.kind(), e.to_string()));
                    return;
                }
            }
        }
        if table.error.take().is_some() {
            log::info!(dir:% = self.inner.dir.display(); "segmented log is consistent again");
        }
        table.segments = slots(&log, &table.segments);
    }

    /// Where the log starts and ends now.
    pub fn bounds(&self) -> io::Result<Bounds> {
        let table = self.table()?;
        let active = table.segments.last().expect("never empty").name.base;
        Ok(Bounds {
            start: table.segments[0].name.base,
            end: active + table.active.len(),
        })
    }

    /// The piece that holds global byte `offset` (for an offset at or past the active
    /// segment's base, the active segment, even past its end); `None` when `offset` is below
    /// the log start (deleted by retention). A sealed segment is opened here unless some
    /// reader has it open already, and checked to be as long as the names say.
    pub fn piece(&self, offset: u64) -> io::Result<Option<Piece>> {
        let mut table = self.table()?;
        let i = table.segments.partition_point(|s| s.name.base <= offset);
        let Some(i) = i.checked_sub(1) else {
            return Ok(None);
        };
        let base = table.segments[i].name.base;
        let Some(next) = table.segments.get(i + 1).map(|s| s.name.base) else {
            return Ok(Some(Piece::Active {
                base,
                watch: table.active.clone(),
            }));
        };
        if let Some(file) = table.segments[i].file.upgrade() {
            return Ok(Some(Piece::Sealed {
                base,
                end: next,
                file,
            }));
        }
        let path = self.inner.dir.join(table.segments[i].name.file_name());
        let file = match open_sealed(&path, next - base) {
            Ok(file) => Arc::new(file),
            // Deleted by retention since the listing: that offset is gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let old = std::mem::replace(&mut table.segments[i].file, Arc::downgrade(&file));
        drop(table);
        drop(old);
        Ok(Some(Piece::Sealed {
            base,
            end: next,
            file,
        }))
    }

    /// Where the segment starting at `base` ends, once it is sealed (the next segment's
    /// base); `None` while it is the active one.
    pub fn sealed_end(&self, base: u64) -> io::Result<Option<u64>> {
        let table = self.table()?;
        let i = table.segments.partition_point(|s| s.name.base <= base);
        Ok(table.segments.get(i).map(|s| s.name.base))
    }

    /// Reads global bytes at `offset` into `buf` from the one segment that holds `offset`
    /// (so possibly fewer bytes than asked, at a segment's end); 0 at the end of the log,
    /// `NotFound` below its start.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        match self.piece(offset)? {
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("byte {offset} is before the log start"),
            )),
            Some(Piece::Sealed { base, end, file }) => {
                let n = buf.len().min((end - offset) as usize);
                file.read_at(&mut buf[..n], offset - base)
            }
            Some(Piece::Active { base, watch }) => {
                let len = watch.len();
                let (Some(file), true) = (watch.file(), offset - base < len) else {
                    return Ok(0);
                };
                let n = buf.len().min((len - (offset - base)) as usize);
                file.read_at(&mut buf[..n], offset - base)
            }
        }
    }
}

/// The table's slots for `log`, keeping the open files of `old` slots still listed.
fn slots(log: &Log, old: &[Slot]) -> Vec<Slot> {
    let mut kept: HashMap<SegmentName, &Weak<File>> =
        old.iter().map(|s| (s.name, &s.file)).collect();
    log.segments()
        .iter()
        .map(|s| Slot {
            name: s.name,
            file: kept.remove(&s.name).cloned().unwrap_or_default(),
        })
        .collect()
}

/// Follows `log`'s active segment, and checks that what was opened is that very file of
/// the log's directory, not a symlink's target elsewhere (directory mode must never serve a
/// file from outside its root).
fn follow_active(follower: &Follower, log: &Log) -> io::Result<FileWatch> {
    use std::os::fd::AsRawFd;
    let path = &log.active().path;
    let watch = follower.follow(path)?;
    let Some(file) = watch.file() else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the active segment {} is gone", path.display()),
        ));
    };
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    if &real != path || !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the active segment {} is not a regular file of the log's directory",
                path.display()
            ),
        ));
    }
    Ok(watch)
}

/// Opens a sealed segment: a regular file (not through a symlink) exactly `len` bytes long.
fn open_sealed(path: &Path, len: u64) -> io::Result<File> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let file = File::options()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|e| ctx("opening", e))?;
    let meta = file.metadata().map_err(|e| ctx("stat of", e))?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "sealed segment {} is {} bytes long, but the names say {len}: a sealed segment \
                 must never change",
                path.display(),
                meta.len()
            ),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::{OnGone, Watcher};
    use logfile::segments::{roll, Marker};
    use std::io::Write;
    use std::time::Duration;

    /// A log whose first segment holds `first`, then one segment starting at byte `next`
    /// (with `next` unlike `first.len()`, an inconsistent one), and a watcher for it.
    fn log_with(first: &[u8], next: Option<u64>) -> (tempfile::TempDir, PathBuf, Watcher) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let created = Log::create(&dir, &Marker::default()).unwrap();
        std::fs::write(&created.active().path, first).unwrap();
        if let Some(base) = next {
            roll(&dir, at(base)).unwrap();
        }
        (tmp, dir, Watcher::new().unwrap())
    }

    /// The segment name at byte `base` (message numbers do not matter here).
    fn at(base: u64) -> SegmentName {
        SegmentName {
            base,
            first_message: base,
        }
    }

    fn read_all(log: &SegmentedLog, from: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = log.read_at(&mut buf, from + out.len() as u64).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Rolls and deletions reach the table through the one watcher; sealed files are shared
    /// while read and closed after; an offset below the start is `None`.
    #[test]
    fn the_table_follows_rolls_and_deletions() {
        let (_tmp, dir, watcher) = log_with(b"ab\n", None);
        let follower = watcher.follower();
        let log = SegmentedLog::open(&follower, &dir).unwrap();
        let stop = crate::rt::spawn(watcher.run(OnGone::Linger));
        let bounds = || log.bounds().unwrap();
        assert_eq!(bounds(), Bounds { start: 0, end: 3 });
        assert!(matches!(
            log.piece(0).unwrap(),
            Some(Piece::Active { base: 0, .. })
        ));
        assert_eq!(log.sealed_end(0).unwrap(), None);

        let seen = log.changes();
        roll(&dir, at(3)).unwrap().write_all(b"cd\n").unwrap();
        crate::rt::block_on(async {
            let waited = log.wait_changed(seen);
            let timeout = async {
                async_io::Timer::after(Duration::from_secs(10)).await;
                panic!("no change seen");
            };
            futures_lite::future::or(waited, timeout).await
        });
        assert_eq!(log.sealed_end(0).unwrap(), Some(3));
        let end = crate::rt::block_on(async {
            let watch = match log.piece(3).unwrap() {
                Some(Piece::Active { watch, .. }) => watch,
                p => panic!("{p:?}"),
            };
            watch.wait_until(|w| w.len() == 3).await;
            log.bounds().unwrap().end
        });
        assert_eq!(end, 6);
        assert_eq!(read_all(&log, 0), b"ab\ncd\n");
        assert_eq!(read_all(&log, 4), b"d\n");
        let (a, b) = match (log.piece(1).unwrap(), log.piece(2).unwrap()) {
            (
                Some(Piece::Sealed {
                    file: a, end: 3, ..
                }),
                Some(Piece::Sealed { file: b, .. }),
            ) => (a, b),
            p => panic!("{p:?}"),
        };
        assert!(Arc::ptr_eq(&a, &b), "one open file per segment, shared");
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "closed once nobody reads it");

        // Retention deletes the first segment: offsets below 3 are gone.
        let seen = log.changes();
        let held = log.piece(0).unwrap().unwrap();
        std::fs::remove_file(dir.join(SegmentName::FIRST.file_name())).unwrap();
        crate::rt::block_on(log.wait_changed(seen));
        assert!(log.piece(2).unwrap().is_none());
        assert_eq!(bounds(), Bounds { start: 3, end: 6 });
        // A reader that held it still reads it.
        match held {
            Piece::Sealed { file, .. } => {
                let mut buf = [0u8; 3];
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, 0).unwrap();
                assert_eq!(&buf, b"ab\n");
            }
            p => panic!("{p:?}"),
        }
        drop(stop);
    }

    /// A sealed segment that is not as long as the names say is refused, never read.
    #[test]
    fn a_sealed_segment_of_the_wrong_length_is_an_error() {
        let (_tmp, dir, watcher) = log_with(b"abc\n", Some(4));
        let log = SegmentedLog::open(&watcher.follower(), &dir).unwrap();
        // Shortened after the listing: opening it says so.
        std::fs::write(dir.join(SegmentName::FIRST.file_name()), b"ab").unwrap();
        let e = log.piece(0).unwrap_err();
        assert!(
            e.to_string()
                .contains("is 2 bytes long, but the names say 4"),
            "{e}"
        );
        // And a listing that sees it refuses the whole log.
        assert!(SegmentedLog::open(&watcher.follower(), &dir).is_err());
    }
}

//! The file watcher: one inotify instance that follows any number of files and tells every
//! interested task when one of them changes.
//!
//! Why this shape: thousands of clients wait on the same file. Polling it would cost CPU per
//! client per tick, so instead a single [`Watcher`] thread reads inotify events, re-`fstat`s
//! each file that had events once per batch, publishes its new length in an atomic, and wakes
//! every task waiting on that file once through an [`event_listener::Event`]. A quiet file
//! costs nothing: the thread sleeps in `poll(2)`.
//!
//! The tasks it wakes are polled on that same thread before it reads the next batch (up to
//! a bound; `crate::rt::run_woken_here` has the rules), so a follower's `sendfile` follows
//! the kernel's "the file grew" with no hand-off to another thread. BENCHMARKS.md (issue #13)
//! has the breakdown of that path.
//!
//! One inotify instance serves every file (the kernel allows only 128 instances per user by
//! default), with one watch per followed file, shared by all of its followers through
//! [`FileWatch`] clones and removed when the last clone is dropped.
//!
//! The lifecycle handled here is the one every binary needs:
//! - absent: watch the parent directory for the name to appear (no polling), then switch to
//!   watching the file itself;
//! - unreadable (it exists but `open` fails, e.g. permission denied): logged once, published
//!   through [`FileWatch::unreadable`], and opening is retried whenever the directory reports
//!   the name again (`IN_ATTRIB` after a `chmod`/`chown`, `IN_CREATE`, `IN_MOVED_TO`);
//! - growth: `IN_MODIFY` → new length, waiters woken;
//! - truncation or rewrite: [`FileWatch::epoch`] is bumped so readers can tell that bytes they
//!   already have may no longer be the file's (see "What counts as a truncation" below);
//! - moved (`IN_MOVE_SELF`) or deleted (link count 0, seen through `IN_ATTRIB`: we hold the
//!   file open, so `IN_DELETE_SELF` would never come) → [`FileWatch::gone`].
//!
//! - a directory's entries ([`Follower::watch_entries`], a [`DirWatch`]): names created,
//!   deleted or moved, counted and announced through the same instance and thread (a
//!   segmented log's rolls and retention, `crate::segments`), so one watcher serves both.
//!
//! A file is opened once and that inode is followed for good: after a rename or unlink the
//! open descriptor still reads the same bytes, which is what `--linger-after-file-is-gone`
//! serves. Following the same path again after it is gone starts over with whatever is at
//! the path then.
//!
//! # What counts as a truncation
//!
//! Comparing lengths alone misses a file truncated and regrown past its old length between
//! two looks (`ftruncate(fd, 0)` then a big `write`, microseconds apart: both events arrive
//! in one batch and `fstat` only sees the longer file). So besides the length the watcher
//! keeps a fingerprint: the [`FINGERPRINT`] bytes just before the last length it published.
//! On every batch of events for a file (`IN_MODIFY` comes for writes and truncations alike,
//! `IN_ATTRIB` for the rest) it `fstat`s the file once and re-reads those bytes with one
//! `pread` (which also reads the new fingerprint when the growth is under 4 KiB; a bigger
//! growth costs a second `pread`). The epoch is bumped, before the new length is published,
//! when the file is shorter than the last length, or when any fingerprint byte differs.
//! This is per file per batch, never per follower.
//!
//! What this guarantees, with L the last length published and F = [`FINGERPRINT`]: a change
//! that leaves the file shorter than L when the watcher looks, or that changes any of the
//! bytes `L-F..L`, bumps the epoch before any reader is told of a length past L. Since
//! readers only read below the published length, every byte a reader got is one the file
//! held at that offset at the time of the read.
//!
//! What it does not guarantee:
//! - a rewrite that leaves bytes `L-F..L` as they were (it changes only earlier bytes, or
//!   writes the same bytes there) is not seen: nothing before `L-F` is re-read;
//! - a truncation or rewrite that lands after the watcher's `pread` and before a reader's
//!   own read (a follower's `sendfile`, a scanner's `pread`), microseconds apart, reaches
//!   that reader: it reads the new bytes at offsets past its position. Each byte is still
//!   one the file held at that offset while the reader read it, but the reader's stream
//!   joins old and new content. The change's own `IN_MODIFY` is still queued: when the
//!   watcher takes it in, the change is measured against the length it published last, and
//!   if it shortened the file or changed the bytes before that length (as a truncation to
//!   zero and regrowth does) the epoch is bumped then and the reader stops.
//!
//! # Short reads
//!
//! Some file systems (LazyFS, FUSE and network ones) return fewer bytes than asked, or none,
//! for a range `fstat` already counts, typically one just appended. Every read here loops
//! until its buffer is full; one that returns nothing first is "not yet", never a
//! truncation: the watcher publishes nothing new for that file (no length past what it
//! could read, so readers are never told of bytes they cannot read) and looks again after
//! 2 ms, doubling up to a second, until the bytes read (logged once each way). It is a
//! truncation only when `fstat` shows the file shorter than the length published, or the
//! old fingerprint bytes read and differ; if the new end cannot be read then, an empty file
//! is published (with the epoch bumped) until it can. A failed `pread` (`EIO`) is retried
//! the same way and logged with its offset. A file whose first look on open comes up short
//! (from a client's task) wakes the watcher's thread to look again.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use event_listener::Event;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use proto::{Code, Refusal};
use rustix::event::{EventfdFlags, PollFd, PollFlags};

use crate::rt;

/// Why a followed file is no longer at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Renamed away (`IN_MOVE_SELF`).
    Moved,
    /// Unlinked (its link count went to 0).
    Deleted,
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Gone::Moved => "moved",
            Gone::Deleted => "deleted",
        })
    }
}

/// What [`Watcher::run`] does once a followed file is gone from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnGone {
    /// Return, so a single-file server can shut down.
    Stop,
    /// Keep following the (renamed or unlinked) inode; `run` only returns on error.
    Linger,
}

/// A cheap, clonable view of one followed file, shared by every task that reads it.
#[derive(Clone)]
pub struct FileWatch {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    name: OsString,
    file: OnceLock<File>,
    len: AtomicU64,
    epoch: AtomicU64,
    gone: AtomicU8,
    changed: Event,
    /// The inotify watch on the file, or on its directory while it is absent.
    wd: Mutex<Option<(WatchDescriptor, Target)>>,
    registry: Arc<Registry>,
    /// Whether leaving the path has been logged.
    announced: AtomicBool,
    /// The last length published and the bytes just before it (only the watcher's refresh
    /// takes this lock, once per batch).
    fingerprint: Mutex<Fingerprint>,
    /// Why the file exists but could not be opened, while that lasts.
    unreadable: Mutex<Option<(io::ErrorKind, String)>>,
    /// Whether the last refresh could not read every byte `fstat` counts (logged once).
    behind: AtomicBool,
}

/// Bytes re-read before the last length seen, on every batch of events for a file (see the
/// module docs). 32 bytes of a log rarely repeat at the same offset after a rewrite, and the
/// read stays well inside one page.
pub const FINGERPRINT: usize = 32;

/// First and longest wait before looking again at a file whose last read came up short.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(2);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Growth up to which the old and new fingerprints are read with one `pread`.
const ONE_READ: usize = 4096;

/// The length last published and the [`FINGERPRINT`] bytes before it (fewer when the file is
/// shorter, none when they could not be read when the file was opened).
#[derive(Default)]
struct Fingerprint {
    len: u64,
    bytes: [u8; FINGERPRINT],
    /// How many of `bytes` are in use: `min(len, FINGERPRINT)`, or 0 (see above).
    n: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    File,
    /// The directory of a file that is absent: only events for its name count.
    Dir,
    /// A directory whose entries are watched ([`DirWatch`]): every named event counts.
    Entries,
}

const PRESENT: u8 = 0;
const MOVED: u8 = 1;
const DELETED: u8 = 2;

impl FileWatch {
    /// The path this file was followed by.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The open file, once it exists. Always the same inode for the life of this watch.
    pub fn file(&self) -> Option<&File> {
        self.inner.file.get()
    }

    /// Length of the file as of the last event (0 while it does not exist).
    pub fn len(&self) -> u64 {
        self.inner.len.load(Ordering::Acquire)
    }

    /// Whether the file is empty or absent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bumped every time the file is seen to shrink, or the bytes before the last length
    /// seen to change (see the module docs). A reader that remembers the epoch it started in
    /// can tell that bytes it already read may have been replaced. It is bumped before the
    /// new length is published: read [`FileWatch::len`] first, then the epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// While the file exists but cannot be opened: what a client waiting for it is told
    /// (`error: unreadable: permission denied`, ...). Opening is retried on the directory's
    /// events for the name, so this clears once a `chmod` makes the file readable.
    pub fn unreadable(&self) -> Option<Refusal> {
        let guard = self.inner.unreadable.lock().unwrap();
        guard
            .as_ref()
            .map(|(kind, _)| follow_refusal(&io::Error::from(*kind)))
    }

    /// Whether the file has left its path (its inode may still be served).
    pub fn gone(&self) -> Option<Gone> {
        match self.inner.gone.load(Ordering::Acquire) {
            MOVED => Some(Gone::Moved),
            DELETED => Some(Gone::Deleted),
            _ => None,
        }
    }

    /// Waits until `ready(self)` holds. Checked before and after registering interest, so a
    /// change between the check and the wait is never missed.
    pub async fn wait_until(&self, mut ready: impl FnMut(&FileWatch) -> bool) {
        loop {
            if ready(self) {
                return;
            }
            let listener = self.inner.changed.listen();
            if ready(self) {
                return;
            }
            listener.await;
        }
    }

    /// Waits until the file is present and `len() > offset`, or its epoch is no longer `epoch`.
    pub async fn wait_for_growth(&self, offset: u64, epoch: u64) {
        self.wait_until(|w| (w.file().is_some() && w.len() > offset) || w.epoch() != epoch)
            .await
    }

    fn notify(&self) {
        self.inner.changed.notify(usize::MAX);
    }

    fn set_gone(&self, gone: Gone) -> bool {
        let code = match gone {
            Gone::Moved => MOVED,
            Gone::Deleted => DELETED,
        };
        self.inner
            .gone
            .compare_exchange(PRESENT, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A watched directory's entries ([`Follower::watch_entries`]): a count of the names created,
/// deleted or moved in or out of it, and a wake-up for every task waiting on that count.
/// It says that something changed, not what: the owner lists the directory again.
#[derive(Clone, Debug)]
pub struct DirWatch(FileWatch);

impl DirWatch {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// How many entry events the watcher has seen (an inotify queue overflow counts as
    /// one). Read it before listing the directory: a later change makes it differ.
    pub fn changes(&self) -> u64 {
        self.0.epoch()
    }

    /// Waits until [`DirWatch::changes`] is no longer `seen`.
    pub async fn wait_changed(&self, seen: u64) {
        self.0.wait_until(|w| w.epoch() != seen).await
    }
}

/// Shared between the [`Watcher`] and every [`Follower`] and [`FileWatch`]: which wd serves
/// which files. Rule: never drop an `Arc<Inner>` while holding `table` (its `Drop` takes it).
struct Registry {
    watches: Mutex<Watches>,
    table: Mutex<Table>,
    /// Files whose last refresh came up short: the watcher looks at them again after a
    /// short delay even if no event comes.
    pending: Mutex<Vec<Weak<Inner>>>,
    /// Written when a file is added to `pending` from another thread than the watcher's
    /// (a client's `follow` whose first look came up short), so that it is not left waiting
    /// for an event.
    kick: OwnedFd,
}

thread_local! {
    /// Whether this is the watcher's thread.
    static ON_WATCHER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[derive(Default)]
struct Table {
    /// wd → the files it serves (one inode can be followed by several paths, and one
    /// directory watch serves every absent file in that directory).
    by_wd: HashMap<WatchDescriptor, Vec<Weak<Inner>>>,
    /// path → its live watch, so followers of one path share one watch.
    by_path: HashMap<PathBuf, Weak<Inner>>,
}

/// Drives the followed files' [`FileWatch`]es: owns the inotify descriptor. Exactly one task
/// runs it ([`Watcher::run`]); any task follows files through a [`Follower`].
pub struct Watcher {
    inotify: Inotify,
    /// Written to stop the watcher's thread. Made with the inotify descriptor, not when
    /// [`Watcher::run`] starts: by then a storm of clients may have taken every descriptor.
    stop: Arc<OwnedFd>,
    follower: Follower,
}

/// A handle to follow files with, from any task.
#[derive(Clone)]
pub struct Follower {
    registry: Arc<Registry>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl fmt::Debug for Follower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follower").finish_non_exhaustive()
    }
}

impl fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWatch")
            .field("path", &self.inner.path)
            .field("len", &self.len())
            .field("epoch", &self.epoch())
            .field("gone", &self.gone())
            .finish()
    }
}

/// What a client is told when [`Follower::follow`] failed with `e`: the watch limit is worth
/// retrying later, anything else is named by its kind (the path is in the server's log).
pub fn follow_refusal(e: &io::Error) -> Refusal {
    // ENOSPC from inotify_add_watch is the kernel's watch limit, not a full disk (the
    // watcher wraps the error with context, which keeps its kind but not its errno).
    match e.kind() {
        io::ErrorKind::StorageFull => Refusal::new(
            Code::WatchLimit,
            "cannot follow: the server follows too many files (inotify watch limit)",
        ),
        io::ErrorKind::NotFound => Refusal::new(Code::NotFound, "no such file or directory"),
        io::ErrorKind::PermissionDenied => Refusal::new(Code::Unreadable, "permission denied"),
        kind => Refusal::new(Code::Io, format!("cannot follow: {kind}")),
    }
}

impl Watcher {
    /// Creates the inotify instance.
    pub fn new() -> io::Result<Watcher> {
        let inotify =
            Inotify::init().map_err(|e| io::Error::new(e.kind(), format!("inotify_init: {e}")))?;
        let watches = inotify.watches();
        let eventfd = || {
            rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("eventfd: {e}")))
        };
        let stop = eventfd()?;
        let kick = eventfd()?;
        Ok(Watcher {
            inotify,
            stop: Arc::new(stop),
            follower: Follower {
                registry: Arc::new(Registry {
                    watches: Mutex::new(watches),
                    table: Mutex::new(Table::default()),
                    pending: Mutex::new(Vec::new()),
                    kick,
                }),
            },
        })
    }

    /// A handle for following files.
    pub fn follower(&self) -> Follower {
        self.follower.clone()
    }

    /// Reads inotify events and updates the followed files, until a file is gone (with
    /// [`OnGone::Stop`]; returns why) or reading inotify fails.
    ///
    /// The reading happens on a thread of its own (`watcher`), which sleeps in `poll(2)`
    /// until inotify has events: the kernel wakes that thread directly, and the tasks waiting
    /// for a file that grew are polled right there ([`rt::run_woken_here`]), so a growth
    /// event reaches a follower's `sendfile` with no thread hand-off in between. Dropping
    /// this future stops the thread.
    pub async fn run(self, on_gone: OnGone) -> io::Result<Gone> {
        let stop = self.stop.clone();
        let (tx, rx) = async_channel::bounded(1);
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || {
                let result = self.watch(on_gone, &thread_stop);
                let _ = tx.try_send(result);
            })
            .map_err(|e| io::Error::new(e.kind(), format!("starting the watcher thread: {e}")))?;
        /// Tells the thread to stop when `run` ends or is dropped.
        struct StopOnDrop(Arc<OwnedFd>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
            }
        }
        let _stop = StopOnDrop(stop);
        rx.recv()
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the watcher thread ended")))
    }

    /// The watcher thread's loop (see [`Watcher::run`]); returns when `stop` is readable.
    fn watch(mut self, on_gone: OnGone, stop: &OwnedFd) -> io::Result<Gone> {
        ON_WATCHER.with(|on| on.set(true));
        let mut buf = vec![0u8; 64 * 1024];
        // How long to wait for events before looking again at files whose bytes could not
        // all be read: doubles while they stay short, from 2 ms up to a second.
        let mut delay = RETRY_FIRST;
        loop {
            let any_pending = !self.follower.registry.pending.lock().unwrap().is_empty();
            let timeout = any_pending.then_some(delay);
            let Some(mut touched) = self.next_batch(&mut buf, stop, timeout)? else {
                return Err(io::Error::other("the watcher was stopped"));
            };
            if any_pending {
                let pending = std::mem::take(&mut *self.follower.registry.pending.lock().unwrap());
                // Upgraded outside the registry's locks (an upgraded Arc may be the last one).
                for inner in pending.iter().filter_map(Weak::upgrade) {
                    if !touched.iter().any(|(f, _)| Arc::ptr_eq(&f.inner, &inner)) {
                        touched.push((FileWatch { inner }, false));
                    }
                }
            }
            let mut short = false;
            for (file, appeared) in &touched {
                if *appeared && file.file().is_none() {
                    self.follower.retry_open(file);
                }
                short |= self.follower.refresh(file);
            }
            delay = if short {
                (delay * 2).min(RETRY_MAX)
            } else {
                RETRY_FIRST
            };
            rt::trace::mark(rt::trace::Point::Published);
            // Every follower of these files is polled here, before the next batch is read.
            rt::run_woken_here(|| {
                for (file, _) in &touched {
                    file.notify();
                }
                rt::trace::mark(rt::trace::Point::Notified);
            });
            for (file, _) in &touched {
                if let Some(gone) = file.gone() {
                    if on_gone == OnGone::Stop {
                        return Ok(gone);
                    }
                }
            }
        }
    }

    /// Waits for inotify to be readable; returns the files that had events, each with whether
    /// its name appeared in its directory, or None once `stop` is readable.
    /// With a `timeout`, returns an empty batch once it passes with no events.
    fn next_batch(
        &mut self,
        buf: &mut [u8],
        stop: &OwnedFd,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<Option<Vec<(FileWatch, bool)>>> {
        let timeout = timeout.map(|t| rustix::event::Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
        loop {
            match self.inotify.read_events(buf) {
                Ok(events) => {
                    let events: Vec<(WatchDescriptor, EventMask, Option<OsString>)> = events
                        .map(|e| (e.wd, e.mask, e.name.map(|n| n.to_owned())))
                        .collect();
                    rt::trace::mark(rt::trace::Point::Read);
                    return Ok(Some(self.follower.dispatch(events)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let kick = &self.follower.registry.kick;
                    let mut fds = [
                        PollFd::new(&self.inotify, PollFlags::IN),
                        PollFd::new(stop, PollFlags::IN),
                        PollFd::new(kick, PollFlags::IN),
                    ];
                    match rustix::event::poll(&mut fds, timeout.as_ref()) {
                        Ok(0) if timeout.is_some() => return Ok(Some(Vec::new())),
                        Ok(_) => {}
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => {
                            return Err(io::Error::new(
                                io::Error::from(e).kind(),
                                format!("waiting for inotify events: {e}"),
                            ))
                        }
                    }
                    rt::trace::mark(rt::trace::Point::Readable);
                    if !fds[1].revents().is_empty() {
                        return Ok(None);
                    }
                    if !fds[2].revents().is_empty() {
                        let _ = rustix::io::read(kick, &mut [0u8; 8]);
                        return Ok(Some(Vec::new()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reading inotify events: {e}"),
                    ))
                }
            }
        }
    }
}

impl Follower {
    /// Follows `path`: opens it if it exists, otherwise watches its directory for it.
    ///
    /// Followers of one path share one watch, which is removed when the last [`FileWatch`]
    /// clone is dropped. Fails with context if the parent directory does not exist, the path
    /// is not a regular file, or the kernel's watch limit (`fs.inotify.max_user_watches`) is
    /// reached.
    pub fn follow(&self, path: &Path) -> io::Result<FileWatch> {
        let name = path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} does not name a file", path.display()),
                )
            })?
            .to_owned();
        // Declared before the lock guard so that it is dropped after it (see `Registry`).
        let existing;
        let file = {
            let mut table = self.registry.table.lock().unwrap();
            existing = table.by_path.get(path).and_then(Weak::upgrade);
            if let Some(inner) = &existing {
                if inner.gone.load(Ordering::Acquire) == PRESENT {
                    return Ok(FileWatch {
                        inner: inner.clone(),
                    });
                }
            }
            let file = FileWatch {
                inner: Arc::new(Inner::new(path, name, &self.registry)),
            };
            table
                .by_path
                .insert(path.to_owned(), Arc::downgrade(&file.inner));
            file
        };
        // Watch the directory before trying to open, so a file created in between is not missed.
        if !self.try_open(&file)? {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            // IN_ATTRIB: a file that exists but cannot be opened is retried after a chmod.
            let mask =
                WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ATTRIB | WatchMask::ONLYDIR;
            self.add_watch(&file, dir, mask, Target::Dir)?;
            if !self.try_open(&file)? {
                log::info!(path:% = path.display(); "file does not exist yet, waiting for it");
            }
        }
        Ok(file)
    }

    /// Watches the entries of directory `dir`: its [`DirWatch`] counts every name created,
    /// deleted or moved in or out of it, through this same inotify instance and thread (a
    /// segmented log's segments appear and disappear this way). The watch is removed when
    /// the last clone is dropped.
    pub fn watch_entries(&self, dir: &Path) -> io::Result<DirWatch> {
        let watch = FileWatch {
            inner: Arc::new(Inner::new(dir, OsString::new(), &self.registry)),
        };
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::ONLYDIR;
        self.add_watch(&watch, dir, mask, Target::Entries)?;
        Ok(DirWatch(watch))
    }

    /// Maps a batch of inotify events to the files they concern.
    fn dispatch(
        &self,
        events: Vec<(WatchDescriptor, EventMask, Option<OsString>)>,
    ) -> Vec<(FileWatch, bool)> {
        // Upgrade under the lock, decide after it: an upgraded Arc may be the last one.
        let mut candidates: Vec<(Arc<Inner>, EventMask, Option<OsString>, bool)> = Vec::new();
        {
            let table = self.registry.table.lock().unwrap();
            for (wd, mask, name) in events {
                if mask.contains(EventMask::Q_OVERFLOW) {
                    // Events were dropped: assume anything may have happened to anyone.
                    for inner in table.by_wd.values().flatten().filter_map(Weak::upgrade) {
                        candidates.push((inner, mask, None, true));
                    }
                } else if let Some(entries) = table.by_wd.get(&wd) {
                    for inner in entries.iter().filter_map(Weak::upgrade) {
                        candidates.push((inner, mask, name.clone(), false));
                    }
                }
            }
        }
        let mut touched: Vec<(FileWatch, bool)> = Vec::new();
        for (inner, mask, name, overflow) in candidates {
            let target = inner.wd.lock().unwrap().as_ref().map(|(_, t)| *t);
            let appeared = match target {
                Some(Target::Entries) => {
                    let names = EventMask::CREATE
                        | EventMask::MOVED_TO
                        | EventMask::DELETE
                        | EventMask::MOVED_FROM;
                    // The wd may carry other watchers' events (IN_ATTRIB): only names count.
                    if !overflow && !mask.intersects(names) {
                        continue;
                    }
                    // The count is bumped here, before the batch's refreshes and wake-ups.
                    inner.epoch.fetch_add(1, Ordering::AcqRel);
                    false
                }
                _ if overflow => true,
                Some(Target::Dir) if name.as_deref() == Some(inner.name.as_os_str()) => true,
                Some(Target::Dir) => continue,
                _ => false,
            };
            let file = FileWatch { inner };
            if mask.contains(EventMask::MOVE_SELF) && target == Some(Target::File) {
                file.set_gone(Gone::Moved);
            }
            match touched
                .iter_mut()
                .find(|(f, _)| Arc::ptr_eq(&f.inner, &file.inner))
            {
                Some(entry) => entry.1 |= appeared,
                None => touched.push((file, appeared)),
            }
        }
        touched
    }

    /// Adds a watch for `file` on `target` and records it as the file's one watch, releasing
    /// the one it had before.
    fn add_watch(
        &self,
        file: &FileWatch,
        target: impl AsRef<Path>,
        mask: WatchMask,
        kind: Target,
    ) -> io::Result<()> {
        let what = match kind {
            Target::File => "watching",
            Target::Dir => "watching the directory of",
            Target::Entries => "watching the entries of",
        };
        // IN_MASK_ADD: another path may already watch this inode with a different mask.
        let wd = self
            .registry
            .watches
            .lock()
            .unwrap()
            .add(target, mask | WatchMask::MASK_ADD)
            .map_err(|e| {
                let hint = if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
                    " (inotify watch limit reached: raise fs.inotify.max_user_watches)"
                } else {
                    ""
                };
                io::Error::new(
                    e.kind(),
                    format!("{what} {}: {e}{hint}", file.path().display()),
                )
            })?;
        let mut table = self.registry.table.lock().unwrap();
        table
            .by_wd
            .entry(wd.clone())
            .or_default()
            .push(Arc::downgrade(&file.inner));
        let old = file.inner.wd.lock().unwrap().replace((wd, kind));
        if let Some((old_wd, _)) = old {
            self.registry
                .release(&mut table, &old_wd, Arc::as_ptr(&file.inner));
        }
        Ok(())
    }

    /// [`Follower::try_open`] from the watcher, after the directory reported the name:
    /// records (and logs once) why a file that exists cannot be opened, and clears it once
    /// it opens or is gone.
    fn retry_open(&self, file: &FileWatch) {
        let result = self.try_open(file);
        let mut unreadable = file.inner.unreadable.lock().unwrap();
        match result {
            Ok(_) => {
                if unreadable.take().is_some() {
                    log::info!(path:% = file.path().display(); "the file can be opened now");
                }
            }
            Err(e) => {
                let now = (e.kind(), e.to_string());
                if unreadable.as_ref() != Some(&now) {
                    log::warn!(path:% = file.path().display(); "{e}; retrying when its attributes change");
                    *unreadable = Some(now);
                }
                drop(unreadable);
                // Clients waiting past their header timeout are answered now.
                file.notify();
            }
        }
    }

    /// Opens the file if it exists and switches from watching the directory to watching it.
    /// Returns whether the file is open now.
    fn try_open(&self, file: &FileWatch) -> io::Result<bool> {
        let path = file.path();
        // O_NONBLOCK: opening a FIFO must not block the watcher until a writer comes (it is
        // refused below); cleared again for the regular file that is kept.
        let opened = match File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("opening {}: {e}", path.display()),
                ))
            }
        };
        let len = match opened.metadata() {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a regular file", path.display()),
                ))
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("stat {}: {e}", path.display()),
                ))
            }
        };
        rustix::fs::fcntl_getfl(&opened)
            .and_then(|fl| rustix::fs::fcntl_setfl(&opened, fl - rustix::fs::OFlags::NONBLOCK))
            .map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("fcntl {}: {e}", path.display()),
                )
            })?;
        // Watch the inode we opened, not whatever the path names by now: /proc/self/fd/N is a
        // link to exactly that inode.
        let by_fd = format!("/proc/self/fd/{}", opened.as_raw_fd());
        let mask =
            WatchMask::MODIFY | WatchMask::ATTRIB | WatchMask::MOVE_SELF | WatchMask::DELETE_SELF;
        self.add_watch(file, by_fd, mask, Target::File)?;
        // The length before the file: a follower that sees the file open must never resolve
        // `-N` against a length not yet published (it would start at byte 0).
        // Until its bytes read, the fingerprint knows the length and no bytes, so a file that
        // shrinks below it meanwhile is still a truncation.
        *file.inner.fingerprint.lock().unwrap() = Fingerprint {
            len,
            ..Fingerprint::default()
        };
        file.inner.len.store(len, Ordering::Release);
        let _ = file.inner.file.set(opened);
        log::info!(path:% = path.display(); "following file");
        self.refresh(file);
        file.notify();
        Ok(true)
    }

    /// Re-reads length, fingerprint and link count of the open file and publishes what
    /// changed (see the module docs). Returns whether the file must be looked at again
    /// without waiting for its next event: some bytes `fstat` counts could not be read yet
    /// (a short read; see "Short reads" in the module docs).
    fn refresh(&self, file: &FileWatch) -> bool {
        let Some(f) = file.file() else {
            return false;
        };
        let inner = &file.inner;
        let mut fp = inner.fingerprint.lock().unwrap();
        let old_len = fp.len;
        let look = match examine(f, &fp) {
            Ok(look) => look,
            Err(e) => {
                log::warn!(path:% = inner.path.display(); "fstat failed: {e}; looking again");
                drop(fp);
                self.look_again(inner);
                return true;
            }
        };
        if look.again {
            if !inner.behind.swap(true, Ordering::AcqRel) {
                match &look.error {
                    Some(e) => {
                        log::warn!(path:% = inner.path.display(); "{e}; looking again")
                    }
                    None => log::info!(
                        path:% = inner.path.display(), published = old_len;
                        "short read: bytes the file reports are not readable yet; looking again"
                    ),
                }
            }
        } else if inner.behind.swap(false, Ordering::AcqRel) {
            log::info!(path:% = inner.path.display(); "the file reads in full again");
        }
        if let Some(new_fp) = look.fp {
            if let Some(why) = look.why {
                // Bump the epoch before the length, so a reader that sees the new length also
                // sees that the bytes before it may have changed.
                inner.epoch.fetch_add(1, Ordering::AcqRel);
                log::warn!(
                    path:% = inner.path.display(), from = old_len, to = new_fp.len;
                    "file was truncated{why}"
                );
            }
            inner.len.store(new_fp.len, Ordering::Release);
            *fp = new_fp;
        }
        drop(fp);
        if look.nlink == 0 {
            file.set_gone(Gone::Deleted);
        }
        if let Some(gone) = file.gone() {
            if !inner.announced.swap(true, Ordering::AcqRel) {
                log::info!(path:% = inner.path.display(); "file was {gone}");
            }
        }
        if look.again {
            self.look_again(inner);
        }
        look.again
    }

    /// Has the watcher refresh `inner` again after a pause, event or not.
    fn look_again(&self, inner: &Arc<Inner>) {
        let mut pending = self.registry.pending.lock().unwrap();
        if !pending.iter().any(|w| w.as_ptr() == Arc::as_ptr(inner)) {
            pending.push(Arc::downgrade(inner));
        }
        drop(pending);
        if !ON_WATCHER.with(|on| on.get()) {
            let _ = rustix::io::write(&self.registry.kick, &1u64.to_ne_bytes());
        }
    }
}

/// What the fingerprint logic reads a file through: `fstat` and `pread`. A seam, so that the
/// unit tests can drive it with the short reads of LazyFS and some network and FUSE file
/// systems.
trait Source {
    /// The file's length and link count.
    fn stat(&self) -> io::Result<(u64, u64)>;
    /// One `pread`: may return fewer bytes than asked, or none, before the end `stat` gave.
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize>;
}

impl Source for File {
    fn stat(&self) -> io::Result<(u64, u64)> {
        let m = self.metadata()?;
        Ok((m.len(), m.nlink()))
    }
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, at)
    }
}

/// What one refresh found.
struct Look {
    /// What to publish (None: keep what was published).
    fp: Option<Fingerprint>,
    /// Set when the file was truncated or rewritten: how, for the log line after "file was
    /// truncated".
    why: Option<&'static str>,
    /// Some bytes could not be read: look again soon.
    again: bool,
    /// The last read error, with its offset, if reading failed rather than came up short.
    error: Option<io::Error>,
    nlink: u64,
}

/// Compares the file with the fingerprint `old` (see the module docs). A read that comes up
/// short may mean the file shrank between `fstat` and `pread` (then the next `fstat` says
/// so), or that bytes `fstat` counts are not readable yet: then nothing new is published
/// and `again` is set, unless the file is seen to be shorter or its old bytes changed, which
/// is a truncation whatever its new end holds (published as an empty file until it reads).
/// Errors are `fstat`'s only; a failed `pread` is in `error`.
fn examine(f: &impl Source, old: &Fingerprint) -> io::Result<Look> {
    let mut changed = None;
    let mut error = None;
    let mut nlink = 1;
    for _ in 0..4 {
        let (len, n) = f.stat()?;
        nlink = n;
        match check(f, old, len) {
            Ok(Checked::Read(fp, why)) => {
                return Ok(Look {
                    fp: Some(fp),
                    why,
                    again: false,
                    error: None,
                    nlink,
                })
            }
            Ok(Checked::Changed(why)) => changed = Some(why),
            Ok(Checked::Short) => {}
            Err(e) => error = Some(e),
        }
    }
    Ok(Look {
        fp: changed.map(|_| Fingerprint::default()),
        why: changed,
        again: true,
        error,
        nlink,
    })
}

/// How the file compared with the last fingerprint.
enum Checked {
    /// Read in full: the new fingerprint, and whether (and how) it was truncated or rewritten.
    Read(Fingerprint, Option<&'static str>),
    /// Truncated or rewritten, but its new end could not be read (a short read).
    Changed(&'static str),
    /// A read came up short and nothing was learnt.
    Short,
}

const REWRITTEN: &str = " or rewritten (the bytes before its old end changed)";

/// Compares the file, `len` bytes long by `fstat`, with the fingerprint `old`.
fn check(f: &impl Source, old: &Fingerprint, len: u64) -> io::Result<Checked> {
    if len < old.len {
        return Ok(match fingerprint(f, len)? {
            Some(fp) => Checked::Read(fp, Some("")),
            None => Checked::Changed(""),
        });
    }
    // `old.n <= old.len <= len`; `old.n` is `min(old.len, FINGERPRINT)`, or 0 when the bytes
    // are unknown (a file opened while its end read short).
    let old_start = old.len - old.n as u64;
    let span = len - old_start;
    let mut then = [0u8; FINGERPRINT];
    let new = if span <= ONE_READ as u64 && span >= len.min(FINGERPRINT as u64) {
        // One pread covers the old fingerprint and the new one.
        let mut buf = [0u8; ONE_READ];
        let buf = &mut buf[..span as usize];
        let n = len.min(FINGERPRINT as u64) as usize;
        if read_full(f, buf, old_start)? {
            then[..old.n].copy_from_slice(&buf[..old.n]);
            let mut new = Fingerprint {
                len,
                n,
                ..Fingerprint::default()
            };
            new.bytes[..n].copy_from_slice(&buf[buf.len() - n..]);
            Some(new)
        } else if read_full(f, &mut then[..old.n], old_start)? {
            None
        } else {
            return Ok(Checked::Short);
        }
    } else {
        if !read_full(f, &mut then[..old.n], old_start)? {
            return Ok(Checked::Short);
        }
        fingerprint(f, len)?
    };
    let why = (then[..old.n] != old.bytes[..old.n]).then_some(REWRITTEN);
    Ok(match (new, why) {
        (Some(new), why) => Checked::Read(new, why),
        (None, Some(why)) => Checked::Changed(why),
        (None, None) => Checked::Short,
    })
}

/// The fingerprint of a file `len` bytes long; None if the read comes up short.
fn fingerprint(f: &impl Source, len: u64) -> io::Result<Option<Fingerprint>> {
    let n = len.min(FINGERPRINT as u64) as usize;
    let mut fp = Fingerprint {
        len,
        n,
        ..Fingerprint::default()
    };
    Ok(read_full(f, &mut fp.bytes[..n], len - n as u64)?.then_some(fp))
}

/// `pread` until `buf` is full, however short each read is; false if a read returns nothing
/// first (the file ends there, or its bytes are not readable yet). Errors say where.
fn read_full(f: &impl Source, buf: &mut [u8], at: u64) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        let pos = at + done as u64;
        match f.read_at(&mut buf[done..], pos) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {} bytes at offset {pos}: {e}", buf.len() - done),
                ))
            }
        }
    }
    Ok(true)
}

impl Registry {
    /// Drops `inner`'s claim on `wd` (and dead claims), removing the watch when none remain.
    fn release(&self, table: &mut Table, wd: &WatchDescriptor, inner: *const Inner) {
        let Some(entries) = table.by_wd.get_mut(wd) else {
            return;
        };
        entries.retain(|w| w.strong_count() > 0 && w.as_ptr() != inner);
        if entries.is_empty() {
            table.by_wd.remove(wd);
            // Best effort: the kernel already dropped the watch if its inode was deleted.
            let _ = self.watches.lock().unwrap().remove(wd.clone());
        }
    }
}

impl Inner {
    /// A file (or directory) not yet open nor watched.
    fn new(path: &Path, name: OsString, registry: &Arc<Registry>) -> Inner {
        Inner {
            path: path.to_owned(),
            name,
            file: OnceLock::new(),
            len: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            gone: AtomicU8::new(PRESENT),
            changed: Event::new(),
            wd: Mutex::new(None),
            registry: registry.clone(),
            announced: AtomicBool::new(false),
            fingerprint: Mutex::new(Fingerprint::default()),
            unreadable: Mutex::new(None),
            behind: AtomicBool::new(false),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let registry = self.registry.clone();
        let mut table = registry.table.lock().unwrap();
        if let Some((wd, _)) = self.wd.get_mut().unwrap().take() {
            registry.release(&mut table, &wd, self as *const Inner);
        }
        table.by_path.retain(|_, w| w.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// A file in memory whose reads come up short the way LazyFS's (and some network and FUSE
    /// file systems') do: `fstat` already reports the appended length, but `pread` returns
    /// nothing at or past `readable`, and at most `chunk` bytes per call below it.
    struct ShortReads {
        data: RefCell<Vec<u8>>,
        readable: Cell<u64>,
        chunk: usize,
    }

    impl ShortReads {
        fn new(data: &[u8], chunk: usize) -> ShortReads {
            ShortReads {
                data: RefCell::new(data.to_vec()),
                readable: Cell::new(data.len() as u64),
                chunk,
            }
        }
        /// Appends bytes that `fstat` counts but `pread` does not return yet.
        fn append_unreadable(&self, more: &[u8]) {
            self.data.borrow_mut().extend_from_slice(more);
        }
        fn settle(&self) {
            self.readable.set(self.data.borrow().len() as u64);
        }
        fn rewrite(&self, data: &[u8]) {
            *self.data.borrow_mut() = data.to_vec();
            self.settle();
        }
    }

    impl Source for ShortReads {
        fn stat(&self) -> io::Result<(u64, u64)> {
            Ok((self.data.borrow().len() as u64, 1))
        }
        fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
            let data = self.data.borrow();
            let end = (self.readable.get() as usize).min(data.len());
            let at = at as usize;
            if at >= end {
                return Ok(0);
            }
            let n = buf.len().min(end - at).min(self.chunk);
            buf[..n].copy_from_slice(&data[at..at + n]);
            Ok(n)
        }
    }

    fn log_bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Runs one refresh against `src` from `fp` and returns whether it reported a truncation.
    fn step(src: &ShortReads, fp: &mut Fingerprint) -> bool {
        let look = examine(src, fp).unwrap();
        if let Some(new) = look.fp {
            *fp = new;
        }
        look.why.is_some()
    }

    /// Issue #25 item 1: short reads of a just-appended range made the watcher report a
    /// truncation and store a fingerprint with no bytes, and the next refresh panicked.
    #[test]
    fn short_reads_are_not_truncations_and_never_panic() {
        for (grow, chunk) in [(100, 1), (100, 7), (10_000, 1000), (10_000, 4096)] {
            let first = log_bytes(100, 1);
            let src = ShortReads::new(&first, chunk);
            let mut fp = Fingerprint::default();
            assert!(!step(&src, &mut fp), "first look");
            assert_eq!(fp.len, 100);
            let mut whole = first.clone();
            let more = log_bytes(grow, 2);
            whole.extend_from_slice(&more);
            src.append_unreadable(&more);
            assert!(
                !step(&src, &mut fp),
                "short reads of new bytes are not a truncation"
            );
            assert!(
                fp.len <= 100,
                "a length whose bytes could not be read was published"
            );
            src.settle();
            assert!(
                !step(&src, &mut fp),
                "once readable: growth, not truncation"
            );
            assert_eq!(fp.len, whole.len() as u64);
            // A real rewrite is still seen, through the same short reads.
            let mut rewritten = whole.clone();
            let l = rewritten.len();
            rewritten[l - 1] ^= 0xff;
            rewritten.extend_from_slice(b"more");
            src.rewrite(&rewritten);
            assert!(step(&src, &mut fp), "a rewrite is still detected");
            // And a truncation whose new bytes cannot be read is still a truncation.
            src.rewrite(&[]);
            src.append_unreadable(&log_bytes(50, 3));
            assert!(step(&src, &mut fp), "a truncation is still detected");
            assert!(fp.len <= 50);
            src.settle();
            assert!(!step(&src, &mut fp));
            assert_eq!(fp.len, 50);
        }
    }

    /// A file opened while its end reads short keeps a fingerprint of its length and no
    /// bytes: growth by less than a fingerprint must not index past the read, and a
    /// shrink below it is still a truncation.
    #[test]
    fn a_fingerprint_with_no_bytes_is_safe() {
        let src = ShortReads::new(&log_bytes(100, 1), 3);
        let mut fp = Fingerprint {
            len: 100,
            ..Fingerprint::default()
        };
        src.append_unreadable(&log_bytes(10, 2));
        assert!(!step(&src, &mut fp));
        assert_eq!(fp.len, 100, "nothing new is published before it reads");
        src.settle();
        let mut unknown = Fingerprint {
            len: 100,
            ..Fingerprint::default()
        };
        assert!(!step(&src, &mut unknown));
        assert_eq!((unknown.len, unknown.n), (110, FINGERPRINT));
        let mut unknown = Fingerprint {
            len: 100,
            ..Fingerprint::default()
        };
        src.rewrite(&log_bytes(60, 4));
        assert!(step(&src, &mut unknown), "shorter than the length known");
    }

    #[test]
    fn a_watched_directory_counts_names_appearing_and_leaving() {
        // A scratch directory of this test's own (shared has no tempfile), removed at the end.
        let path = std::env::temp_dir().join(format!("shared-watch-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        struct Dir(PathBuf);
        impl Dir {
            fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = Dir(path);
        let watcher = Watcher::new().unwrap();
        let follower = watcher.follower();
        let listing = follower.watch_entries(dir.path()).unwrap();
        // A file followed in the same directory shares its inotify watch: its growth is no
        // change of the listing.
        let present = dir.path().join("present");
        std::fs::write(&present, b"x").unwrap();
        let followed = follower.follow(&present).unwrap();
        let absent = follower.follow(&dir.path().join("later")).unwrap();
        assert!(follower.watch_entries(&present).is_err(), "not a directory");
        crate::rt::block_on(async {
            let run = async {
                watcher.run(OnGone::Linger).await.unwrap();
            };
            let checks = async {
                async fn within(what: &str, f: impl std::future::Future<Output = ()>) {
                    let deadline = std::time::Duration::from_secs(5);
                    let timeout = async {
                        async_io::Timer::after(deadline).await;
                        panic!("{what}: no change seen within {deadline:?}");
                    };
                    futures_lite::future::or(f, timeout).await
                }
                let seen = listing.changes();
                std::fs::write(dir.path().join("a"), b"").unwrap();
                within("create", listing.wait_changed(seen)).await;
                // Growth of a followed file is seen by its follower, not counted as a change.
                let seen = listing.changes();
                crate::rt::spawn_blocking({
                    let p = present.clone();
                    move || {
                        use std::io::Write;
                        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                        f.write_all(b"more").unwrap();
                    }
                })
                .await;
                within("growth", followed.wait_until(|w| w.len() == 5)).await;
                assert_eq!(listing.changes(), seen);
                std::fs::rename(dir.path().join("a"), dir.path().join("later")).unwrap();
                within("rename", listing.wait_changed(seen)).await;
                within("the absent file", absent.wait_until(|w| w.file().is_some())).await;
                let seen = listing.changes();
                std::fs::remove_file(dir.path().join("later")).unwrap();
                within("delete", listing.wait_changed(seen)).await;
            };
            futures_lite::future::or(run, checks).await;
        });
    }
}

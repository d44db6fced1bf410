//! The file watcher: one inotify instance that follows one file and tells every interested
//! task when it changes.
//!
//! Why this shape: thousands of clients wait on the same file. Polling it would cost CPU per
//! client per tick, so instead a single [`Watcher`] task reads inotify events, re-`fstat`s the
//! file once per batch of events, publishes the new length in an atomic, and wakes every
//! waiting task once through an [`event_listener::Event`]. A quiet file costs nothing.
//!
//! The lifecycle handled here is the one both tailsrv and the indexer need:
//! - absent at start: watch the parent directory for the name to appear (no polling), then
//!   switch to watching the file itself;
//! - growth: `IN_MODIFY` → new length, waiters woken;
//! - truncation: the length went down → [`FileWatch::epoch`] is bumped so followers can tell
//!   that the bytes they already have may no longer be the file's;
//! - moved (`IN_MOVE_SELF`) or deleted (link count 0, seen through `IN_ATTRIB`, because we
//!   hold the file open so `IN_DELETE_SELF` would never come) → [`Gone`].
//!
//! The file is opened once and that inode is followed for good: after a rename or unlink the
//! open descriptor still reads the same bytes, which is what `--linger-after-file-is-gone`
//! serves.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use async_io::Async;
use event_listener::Event;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

/// Why the followed file is no longer at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Moved,
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

/// What the watcher does once the file is gone from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnGone {
    /// [`Watcher::run`] returns, so the caller can shut down.
    Stop,
    /// Keep following the (renamed or unlinked) inode; `run` only returns on error.
    Linger,
}

/// A cheap, clonable view of the followed file, shared by every task that reads it.
#[derive(Clone)]
pub struct FileWatch {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    file: OnceLock<File>,
    len: AtomicU64,
    epoch: AtomicU64,
    gone: AtomicU8,
    changed: Event,
}

const PRESENT: u8 = 0;
const MOVED: u8 = 1;
const DELETED: u8 = 2;

impl FileWatch {
    /// The path as given on the command line.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The open file, once it exists. Always the same inode for the life of the process.
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

    /// Bumped every time the file is seen to shrink. A reader that remembers the epoch it
    /// started in can tell that bytes it already read may have been replaced.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Whether the file has left its path (we may still be serving its inode).
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
}

/// The task that reads inotify events and updates a [`FileWatch`].
pub struct Watcher {
    inotify: Async<Inotify>,
    shared: FileWatch,
    name: OsString,
    file_wd: Option<WatchDescriptor>,
    dir_wd: Option<WatchDescriptor>,
}

/// Starts following `path`: opens it if it exists, otherwise watches its directory for it.
///
/// Fails if inotify cannot be set up (e.g. the kernel's watch limit) or the parent directory
/// does not exist. Drive the returned [`Watcher`] with [`Watcher::run`].
pub fn watch(path: &Path) -> io::Result<(FileWatch, Watcher)> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} does not name a file", path.display()),
            )
        })?
        .to_owned();
    let inotify = Inotify::init().map_err(|e| ctx("inotify_init for", e))?;
    let inotify = Async::new(inotify).map_err(|e| ctx("registering inotify for", e))?;
    let shared = FileWatch {
        inner: Arc::new(Inner {
            path: path.to_owned(),
            file: OnceLock::new(),
            len: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            gone: AtomicU8::new(PRESENT),
            changed: Event::new(),
        }),
    };
    let mut watcher = Watcher {
        inotify,
        shared: shared.clone(),
        name,
        file_wd: None,
        dir_wd: None,
    };
    // Watch the directory before trying to open, so a file created in between is not missed.
    if !watcher.try_open()? {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let wd = watcher
            .inotify
            .get_ref()
            .watches()
            .add(
                dir,
                WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR,
            )
            .map_err(|e| ctx("watching the directory of", e))?;
        watcher.dir_wd = Some(wd);
        if !watcher.try_open()? {
            log::info!(path:% = path.display(); "file does not exist yet, waiting for it");
        }
    }
    Ok((shared, watcher))
}

/// What one batch of inotify events told us.
#[derive(Default)]
struct Batch {
    changed: bool,
    moved: bool,
    appeared: bool,
}

impl Watcher {
    /// Reads inotify events until the file is gone (with [`OnGone::Stop`]) or an error occurs.
    pub async fn run(mut self, on_gone: OnGone) -> io::Result<Gone> {
        let mut buf = [0u8; 4096];
        let mut announced = false;
        loop {
            let batch = self.next_batch(&mut buf).await?;
            if batch.appeared && self.shared.file().is_none() {
                self.try_open()?;
            }
            if batch.moved && self.shared.gone().is_none() {
                self.shared.inner.gone.store(MOVED, Ordering::Release);
            }
            if batch.changed || batch.moved {
                self.refresh();
            }
            self.shared.notify();
            if let Some(gone) = self.shared.gone() {
                if on_gone == OnGone::Stop {
                    return Ok(gone);
                }
                if !announced {
                    announced = true;
                    log::info!(
                        path:% = self.shared.path().display();
                        "file was {gone}; still following its inode"
                    );
                }
            }
        }
    }

    /// Waits for inotify to be readable and folds everything it has into one [`Batch`].
    async fn next_batch(&mut self, buf: &mut [u8]) -> io::Result<Batch> {
        loop {
            // SAFETY: reading events does not close or replace the inotify descriptor, which is
            // all `Async::get_mut` asks us not to do.
            let inotify = unsafe { self.inotify.get_mut() };
            match inotify.read_events(buf) {
                Ok(events) => {
                    let mut batch = Batch::default();
                    for ev in events {
                        if ev.mask.contains(EventMask::Q_OVERFLOW) {
                            // Events were dropped: assume anything may have happened.
                            batch.changed = true;
                            batch.appeared = true;
                        } else if Some(&ev.wd) == self.file_wd.as_ref() {
                            batch.changed = true;
                            batch.moved |= ev.mask.contains(EventMask::MOVE_SELF);
                        } else if Some(&ev.wd) == self.dir_wd.as_ref()
                            && ev.name == Some(self.name.as_os_str())
                        {
                            batch.appeared = true;
                        }
                    }
                    return Ok(batch);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.inotify.readable().await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "reading inotify events for {}: {e}",
                            self.shared.path().display()
                        ),
                    ))
                }
            }
        }
    }

    /// Opens the file if it exists and switches from watching the directory to watching it.
    /// Returns whether the file is open now.
    fn try_open(&mut self) -> io::Result<bool> {
        let path = self.shared.path().to_owned();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("opening {}: {e}", path.display()),
                ))
            }
        };
        match file.metadata() {
            Ok(m) if m.is_file() => {}
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
        }
        // Watch the inode we opened, not whatever the path names by now: /proc/self/fd/N is a
        // link to exactly that inode.
        let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
        let mask =
            WatchMask::MODIFY | WatchMask::ATTRIB | WatchMask::MOVE_SELF | WatchMask::DELETE_SELF;
        let mut watches = self.inotify.get_ref().watches();
        let wd = watches
            .add(&by_fd, mask)
            .map_err(|e| io::Error::new(e.kind(), format!("watching {}: {e}", path.display())))?;
        self.file_wd = Some(wd);
        if let Some(dir_wd) = self.dir_wd.take() {
            // Best effort: a leftover directory watch only costs spurious wake-ups.
            let _ = watches.remove(dir_wd);
        }
        let _ = self.shared.inner.file.set(file);
        log::info!(path:% = path.display(); "following file");
        self.refresh();
        self.shared.notify();
        Ok(true)
    }

    /// Re-reads length and link count of the open file and publishes what changed.
    fn refresh(&self) {
        let Some(file) = self.shared.file() else {
            return;
        };
        let inner = &self.shared.inner;
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                log::warn!(path:% = inner.path.display(); "fstat failed: {e}");
                return;
            }
        };
        let new_len = meta.len();
        let old_len = inner.len.load(Ordering::Acquire);
        if new_len < old_len {
            // Bump the epoch before the length, so a reader that sees the smaller length also
            // sees that the file was truncated.
            inner.epoch.fetch_add(1, Ordering::AcqRel);
            log::warn!(
                path:% = inner.path.display(), from = old_len, to = new_len;
                "file was truncated"
            );
        }
        inner.len.store(new_len, Ordering::Release);
        if meta.nlink() == 0 && self.shared.gone().is_none() {
            inner.gone.store(DELETED, Ordering::Release);
        }
    }
}

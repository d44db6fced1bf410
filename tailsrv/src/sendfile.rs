//! Moving file bytes to a socket without copying them through userspace.
//!
//! `sendfile(2)` on a non-blocking socket sends what fits in the socket buffer and returns;
//! when nothing fits it fails with `EAGAIN`, and async-io's `write_with` parks the task until
//! the reactor reports the socket writable again. So a slow reader holds nothing but its own
//! task, and a fast one is fed straight from the page cache.
//!
//! Before every `sendfile` call (each is one socket buffer's worth, however large the
//! backlog) the watcher's epoch is checked, one atomic load: a client
//! in the middle of a long backlog stops the moment the watcher sees a truncation or
//! rewrite, instead of sending the new file's bytes after the old ones (issue #25 item 8).
//!
//! A `sendfile` that sends nothing before `end` is a truncation only if `fstat` shows the
//! file ending at or before the position; otherwise it is a short read (FUSE and network
//! file systems return them for just-appended ranges) and is tried again after a pause, up to
//! [`SHORT_PATIENCE`], then reported as [`Sent::Unreadable`].
//!
//! The same loop reads a segmented log's sealed segments ([`Source`] for `Arc<File>`): they
//! never change, so they have no epoch to check, and a `sendfile` that finds one shorter than
//! its end is reported as [`Sent::Truncated`] for the caller to name.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use shared::rt::trace::{mark, Point};
use shared::watch::FileWatch;

/// Every this many bytes sent (at each multiple of it in the file), yield to the executor so
/// one fast reader of a big backlog cannot starve the others sharing its thread.
const YIELD_EVERY: u64 = 8 << 20;

/// Largest count passed to one `sendfile` call (the kernel caps it near 2 GiB anyway).
const MAX_CHUNK: u64 = 1 << 30;

/// What the `write_with` closure returns when `stale()` said so (told apart from the
/// socket's errors, which carry an errno).
const STALE: io::ErrorKind = io::ErrorKind::Other;

/// How long `sendfile` may keep sending nothing from a range `fstat` counts before the
/// client is told the file cannot be read.
const SHORT_PATIENCE: Duration = Duration::from_secs(5);

/// How [`send_range`] ended, when the socket did not fail.
#[derive(Debug)]
pub enum Sent {
    /// Everything up to `end` was sent.
    All,
    /// The file is shorter than the position (truncated under us), or `stale` said so: the
    /// bytes from here on may not be the ones the client's stream started with.
    Truncated,
    /// Reading the file failed or kept coming up short; says where.
    Unreadable(io::Error),
}

/// What a [`Cursor`] reads: a followed file, whose bytes are the cursor's only while its
/// epoch is the one the cursor was placed in, or a sealed segment, which never changes.
pub trait Source {
    /// The file to read, if its bytes are still those of a cursor placed in `epoch`.
    fn current(&self, epoch: u64) -> Option<&File>;
    /// The open file, for the `fstat` after a `sendfile` that sent nothing.
    fn open_file(&self) -> Option<&File>;
}

impl Source for FileWatch {
    fn current(&self, epoch: u64) -> Option<&File> {
        self.file().filter(|_| self.epoch() == epoch)
    }
    fn open_file(&self) -> Option<&File> {
        self.file()
    }
}

impl Source for Arc<File> {
    fn current(&self, _: u64) -> Option<&File> {
        Some(self)
    }
    fn open_file(&self) -> Option<&File> {
        Some(self)
    }
}

/// Where a client is in its file: what [`send_range`] reads and advances.
pub struct Cursor<W = FileWatch> {
    pub watch: W,
    /// The next byte to send.
    pub offset: u64,
    /// The watcher's epoch when the client was placed: a change ends the stream.
    pub epoch: u64,
}

/// Sends the watched file's bytes `cur.offset..end` to `sock`, advancing `cur.offset` as
/// bytes go out, and checking before each `sendfile` that the watcher's epoch is still
/// `cur.epoch`.
///
/// Nothing past the real end of the file is ever sent. Errors are the socket's (`EPIPE`,
/// `ECONNRESET`, ...) and mean the client is gone.
pub async fn send_range<W: Source>(
    sock: &Async<TcpStream>,
    cur: &mut Cursor<W>,
    end: u64,
) -> io::Result<Sent> {
    // The file is looked up in each call rather than kept across the awaits: every idle
    // follower pays for what its future keeps (`the_serve_future_stays_small`).
    // One pointer in the closure, not one per field it reads.
    while cur.offset < end {
        let c = &*cur;
        let sent = sock
            .write_with(move |s| {
                // Checked here, not only before `write_with`: a follower parked on a full
                // socket resumes in this closure, possibly long after a truncation.
                let Some(file) = c.watch.current(c.epoch) else {
                    return Err(io::Error::from(STALE));
                };
                let mut offset = c.offset;
                let count = (end - offset).min(MAX_CHUNK) as usize;
                mark(Point::SendStart);
                let sent = rustix::fs::sendfile(s, file, Some(&mut offset), count);
                mark(Point::SendEnd);
                sent.map_err(io::Error::from)
            })
            .await;
        let sent = match sent {
            Ok(n) => n,
            // Ours (an OS error always carries its errno).
            Err(e) if e.raw_os_error().is_none() && e.kind() == STALE => {
                return Ok(Sent::Truncated)
            }
            // EIO and the like are the file's, not the client's.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                let e = io::Error::new(e.kind(), format!("sendfile at offset {}: {e}", cur.offset));
                return Ok(Sent::Unreadable(e));
            }
            Err(e) => return Err(e),
        };
        if sent == 0 {
            // Boxed: the followers that never see a short read do not carry its state.
            match Box::pin(after_nothing_sent(&cur.watch, cur.offset)).await {
                Some(end) => return Ok(end),
                None => continue,
            }
        }
        let before = cur.offset;
        cur.offset += sent as u64;
        if before / YIELD_EVERY != cur.offset / YIELD_EVERY {
            futures_lite::future::yield_now().await;
        }
    }
    Ok(Sent::All)
}

/// After a `sendfile` at `pos` that sent nothing: `Truncated` if the file ends at or before
/// `pos`; otherwise it is a short read, and this waits (2 ms, doubling up to 200 ms) until
/// a byte at `pos` reads (None: try `sendfile` again), or [`SHORT_PATIENCE`] passes.
async fn after_nothing_sent(watch: &impl Source, pos: u64) -> Option<Sent> {
    use std::os::unix::fs::FileExt;
    let file = watch.open_file()?;
    let mut waited = Duration::ZERO;
    let mut pause = Duration::from_millis(2);
    loop {
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                let e = io::Error::new(e.kind(), format!("fstat at offset {pos}: {e}"));
                return Some(Sent::Unreadable(e));
            }
        };
        if len <= pos {
            return Some(Sent::Truncated);
        }
        if waited >= SHORT_PATIENCE {
            return Some(Sent::Unreadable(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "sendfile at offset {pos} sent nothing for {SHORT_PATIENCE:?} though the file is {len} bytes long"
                ),
            )));
        }
        async_io::Timer::after(pause).await;
        waited += pause;
        pause = (pause * 2).min(Duration::from_millis(200));
        match file.read_at(&mut [0u8], pos) {
            Ok(1) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let e = io::Error::new(e.kind(), format!("reading at offset {pos}: {e}"));
                return Some(Sent::Unreadable(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A watched file of `len` bytes and a connected socket pair; the watcher is not run, so
    /// the epoch stays where the test puts the cursor's.
    fn setup(len: usize) -> (tempdir::Dir, FileWatch, Async<TcpStream>, TcpStream) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("log");
        std::fs::write(&path, vec![b'x'; len]).unwrap();
        let watcher = shared::watch::Watcher::new().unwrap();
        let watch = watcher.follower().follow(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (dir, watch, Async::new(server).unwrap(), client)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("tailsrv-sendfile-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// Issue #25 item 8 at the unit level: with the epoch moved on, not one byte is sent,
    /// even for a backlog that was already being sent.
    #[test]
    fn a_stale_epoch_sends_nothing() {
        let (_dir, watch, sock, mut client) = setup(1 << 20);
        let epoch = watch.epoch();
        let mut cur = Cursor {
            watch,
            offset: 0,
            epoch: epoch + 1,
        };
        let sent = futures_lite::future::block_on(send_range(&sock, &mut cur, 1 << 20)).unwrap();
        assert!(matches!(sent, Sent::Truncated), "{sent:?}");
        assert_eq!(cur.offset, 0);
        drop(sock);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert!(
            got.is_empty(),
            "{} bytes sent after the epoch changed",
            got.len()
        );
        // With the epoch as placed, the same range is sent whole.
        let (_dir, watch, sock, mut client) = setup(1 << 20);
        let epoch = watch.epoch();
        let mut cur = Cursor {
            watch,
            offset: 0,
            epoch,
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got.len()
        });
        let sent = futures_lite::future::block_on(send_range(&sock, &mut cur, 1 << 20)).unwrap();
        assert!(matches!(sent, Sent::All), "{sent:?}");
        drop(sock);
        assert_eq!(reader.join().unwrap(), 1 << 20);
    }

    /// A file that ends before the range: a truncation, told by `fstat`, not a short read
    /// waited out.
    #[test]
    fn a_file_shorter_than_the_range_is_a_truncation() {
        let (_dir, watch, sock, _client) = setup(1000);
        let epoch = watch.epoch();
        let mut cur = Cursor {
            watch,
            offset: 0,
            epoch,
        };
        let started = std::time::Instant::now();
        let sent = futures_lite::future::block_on(send_range(&sock, &mut cur, 5000)).unwrap();
        assert!(matches!(sent, Sent::Truncated), "{sent:?}");
        assert_eq!(cur.offset, 1000);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

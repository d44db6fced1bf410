//! The life of one client, one function per step:
//!
//! 1. [`serve`] / [`start`]: register the socket, read the request (bounded in size and time)
//!    and parse it with `proto`. Single-file mode: an offset. Directory mode
//!    ([`start_path`]): `list`, or which file to stream from where, checked against
//!    [`Tree`]'s rule before anything is sent.
//! 2. [`start_stream`] / [`place`]: wait for the file to exist and resolve the start offset
//!    against it; answer `ok N LEN` first if the client asked for a confirmation. A client still
//!    waiting after the header timeout for a file that exists but cannot be opened is told
//!    why (`error: unreadable: permission denied`) rather than left hanging; the watcher
//!    keeps retrying the open, so clients that come after a `chmod` are served.
//! 3. [`follow`]: loop: wait until the file is longer than what was sent, `sendfile` the
//!    difference. The client is closed when the watcher's epoch changes (the file was
//!    truncated, or the bytes before its old end rewritten: `shared::watch` says exactly
//!    what is detected), checked before every `sendfile`, so also in the middle of a long
//!    backlog ([`crate::sendfile`]).
//! 4. Meanwhile [`crate::hangup::gone`] watches the socket, so a client whose connection is
//!    reset while the file is quiet is released at once rather than at the next write. A
//!    client that shuts down its sending side (a FIN) has not left: it keeps receiving.
//!
//! A segmented log (`Served::Log`, or a log inside a served directory) is placed and followed
//! by [`crate::segmented`] instead of steps 2 and 3, with the same request, refusals and end.
//!
//! A client costs one task and one socket; no buffer holds file data.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use futures_lite::{future, AsyncWriteExt};
use proto::request::{Confirmation, StreamRequest, MAX_DIR_LINE, MAX_LINE};
use proto::{Code, Mode, Refusal, Request, Start};
use shared::net::{self, LineError};
use shared::segments::{Logs, SegmentedLog};
use shared::tree::{Kind, Resolved, Tree};
use shared::watch::{self, FileWatch};

use crate::hangup::gone;
use crate::segmented::{self, LogStreaming};
use crate::sendfile::{send_range, Cursor, Sent};
use crate::synced::Synced;

/// What the server serves: one file, one segmented log (with the single-file grammar), or
/// the files and segmented logs of a directory.
#[derive(Clone, Debug)]
pub(crate) enum Served {
    File(FileWatch),
    Log(SegmentedLog),
    /// The segmented logs' table doubles as the directory's follower of plain files.
    Dir {
        tree: Arc<Tree>,
        logs: Arc<Logs>,
    },
}

impl Served {
    fn mode(&self) -> Mode {
        match self {
            Served::File(_) | Served::Log(_) => Mode::File,
            Served::Dir { .. } => Mode::Dir,
        }
    }
}

/// Why a client's stream ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The connection was reset or failed (a FIN alone is not a hang-up).
    HungUp,
    /// The file shrank under the client: the bytes it has may no longer be the file's.
    Truncated,
    /// Directory mode: the file was moved or deleted, and everything it held was sent.
    Gone,
    /// Writing to the client failed.
    Socket(io::Error),
    /// Reading the file failed, or kept coming up short (or a segmented log's segments no
    /// longer match their names).
    Unreadable(io::Error),
    /// A segmented log: retention deleted the segment the client was to read next; the log
    /// starts at this byte now.
    Behind(u64),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::HungUp => f.write_str("client is gone (connection reset or failed)"),
            End::Truncated => f.write_str("file was truncated"),
            End::Gone => f.write_str("file was moved or deleted"),
            End::Socket(e) => write!(f, "write failed: {e}"),
            End::Unreadable(e) => write!(f, "reading the file failed: {e}"),
            End::Behind(start) => write!(
                f,
                "the next segment was deleted by retention before the client reached it \
                 (the log starts at byte {start} now)"
            ),
        }
    }
}

/// Serves one accepted connection until it ends.
///
/// A follower's task holds this future for as long as it follows, and every idle follower
/// pays its size in memory. So it is split in two: [`start`] (read and parse the request,
/// answer refusals and listings, wait for the file, confirm) runs boxed and is freed before
/// streaming begins, and what streaming needs ([`Streaming`]) is a few words. The request
/// buffer, the header timer, refusal lines and listings are never part of the state a
/// follower keeps (the test `the_serve_future_stays_small` holds this).
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    served: Served,
    header_timeout: Duration,
    synced: Option<Arc<Synced>>,
) {
    let Some(sock) = net::register(stream, peer) else {
        return;
    };
    // A segmented log's follower comes out on the side, boxed, and is followed in a boxed
    // future, socket and all: none of it is part of a file follower's state.
    let mut log = None;
    let Some(mut streaming) =
        Box::pin(start(&sock, peer, served, header_timeout, synced, &mut log)).await
    else {
        if let Some(log) = log {
            Box::pin(segmented::serve(sock, peer, log)).await;
        }
        return;
    };
    log::debug!(client:% = peer, path = streaming.shown(), offset = streaming.cur.offset; "client connected");
    let end = follow(&sock, &mut streaming).await;
    report(peer, streaming.shown(), streaming.cur.offset, &end);
}

/// Logs how a client's stream ended: a warning if the server could not read what it serves.
pub(crate) fn report(peer: SocketAddr, path: &str, offset: u64, end: &End) {
    if let End::Unreadable(_) = end {
        log::warn!(client:% = peer, path = path, offset = offset; "client closed: {end}");
    } else {
        log::debug!(client:% = peer, path = path, offset = offset; "client done: {end}");
    }
}

/// Everything a follower keeps while it streams.
pub(crate) struct Streaming {
    /// The file, the next byte to send, and the epoch the client was placed in.
    cur: Cursor,
    /// Directory mode: end once the file is gone and sent whole.
    until_gone: bool,
    synced: Option<Arc<Synced>>,
    /// Directory mode: the path as the client sent it, for the log.
    path: Option<Box<str>>,
}

impl Streaming {
    fn shown(&self) -> &str {
        self.path.as_deref().unwrap_or("")
    }
}

/// The request, up to the first byte streamed: read and parse it, answer what is not a
/// stream (refusals, listings), place the client in the file. `None` when the client was
/// answered, refused or left.
async fn start(
    sock: &Async<TcpStream>,
    peer: SocketAddr,
    served: Served,
    header_timeout: Duration,
    synced: Option<Arc<Synced>>,
    log_out: &mut Option<Box<LogStreaming>>,
) -> Option<Streaming> {
    let mode = served.mode();
    let max = match mode {
        Mode::File => MAX_LINE,
        Mode::Dir => MAX_DIR_LINE,
    };
    let request = match net::read_line(sock, max, header_timeout).await {
        Ok(line) => Request::parse(mode, &line),
        Err(LineError::Gone) => return None,
        Err(LineError::Refused(r)) => Err(r),
    };
    match (request, served) {
        (Err(refusal), _) => {
            log::debug!(client:% = peer; "refused: {refusal}");
            net::refuse(sock, &refusal).await;
            None
        }
        (Ok(Request::List { sizes }), Served::Dir { tree, .. }) => {
            if let Err(e) = send_listing(sock, &tree, sizes).await {
                log::debug!(client:% = peer; "listing failed: {e}");
            }
            None
        }
        (Ok(Request::Stream(req)), Served::File(file)) => {
            start_stream(sock, peer, file, req, None, header_timeout, synced).await
        }
        (Ok(Request::Stream(req)), Served::Log(log)) => {
            *log_out = segmented::start(sock, peer, log, req, None).await;
            None
        }
        (Ok(Request::Stream(req)), Served::Dir { tree, logs }) => {
            start_path(sock, peer, &tree, &logs, req, header_timeout, log_out).await
        }
        // The parser only returns `List` in directory mode.
        (Ok(Request::List { .. }), Served::File(_) | Served::Log(_)) => None,
    }
}

/// Directory mode's `stream PATH ...`: the path is checked against [`Tree`]'s rule before
/// anything is sent, and once more against the file actually opened. A segmented log in the
/// directory is one path, streamed as one log.
async fn start_path(
    sock: &Async<TcpStream>,
    peer: SocketAddr,
    tree: &Tree,
    logs: &Logs,
    req: StreamRequest,
    patience: Duration,
    log_out: &mut Option<Box<LogStreaming>>,
) -> Option<Streaming> {
    let requested = req.path.clone().unwrap_or_default();
    let shown = String::from_utf8_lossy(&requested).into_owned();
    let real = match tree.resolve_entry(&requested) {
        Ok(Resolved::File(real)) => real,
        Ok(Resolved::Log(real)) => {
            let log = match logs.get(&real) {
                Ok(log) => log,
                Err(e) => {
                    refuse_unfollowable(sock, peer, &shown, &e, segmented::refusal(&e)).await;
                    return None;
                }
            };
            *log_out = segmented::start(sock, peer, log, req, Some(&shown)).await;
            return None;
        }
        Err(refusal) => {
            log::debug!(client:% = peer, path = shown; "refused: {refusal}");
            net::refuse(sock, &refusal.to_refusal(&requested)).await;
            return None;
        }
    };
    let file = match logs.follower().follow(&real) {
        Ok(f) => f,
        Err(e) => {
            refuse_unfollowable(sock, peer, &shown, &e, watch::follow_refusal(&e)).await;
            return None;
        }
    };
    start_stream(sock, peer, file, req, Some((tree, &shown)), patience, None).await
}

/// Directory mode: tells the client why `shown` (the path as it sent it) cannot be followed.
/// Which of our paths failed, `e`, is for the server's log; the client learns `why`.
async fn refuse_unfollowable(
    sock: &Async<TcpStream>,
    peer: SocketAddr,
    shown: &str,
    e: &io::Error,
    why: Refusal,
) {
    log::warn!(client:% = peer, path = shown; "cannot follow: {e}");
    let refusal = Refusal::new(why.code, format!("{shown:?}: {}", why.reason));
    net::refuse(sock, &refusal).await;
}

/// Places the client in the file and confirms if asked. In directory mode (`dir`: the tree
/// and the path as sent) the opened file is checked against the tree's rule, and the stream
/// ends once a file that is gone has been sent whole. `patience` is how long to wait for a
/// file that exists but cannot be opened.
async fn start_stream(
    sock: &Async<TcpStream>,
    peer: SocketAddr,
    file: FileWatch,
    req: StreamRequest,
    dir: Option<(&Tree, &str)>,
    patience: Duration,
    synced: Option<Arc<Synced>>,
) -> Option<Streaming> {
    let shown = dir.map_or("", |(_, shown)| shown);
    // The file may not exist yet; once it does, check what was really opened.
    let at = match place(sock, &file, req.start, patience, synced.as_deref()).await {
        Placed::At(at) => at,
        Placed::HungUp => return None,
        Placed::Unreadable(why) => {
            let refusal = match dir {
                Some(_) => Refusal::new(why.code, format!("{shown:?}: {}", why.reason)),
                None => why,
            };
            log::debug!(client:% = peer, path = shown; "refused: {refusal}");
            net::refuse(sock, &refusal).await;
            return None;
        }
    };
    if let Some((tree, _)) = dir {
        if let Err(refusal) = tree.check_opened(at.file) {
            log::warn!(client:% = peer, path = shown; "refused after open: {refusal}");
            net::refuse(sock, &refusal.to_refusal(shown.as_bytes())).await;
            return None;
        }
    }
    if req.confirm {
        let mut writer = sock;
        let line = Confirmation {
            offset: at.offset,
            len: at.len,
            start: 0,
        }
        .render();
        if writer.write_all(&line).await.is_err() {
            return None;
        }
    }
    let (offset, epoch) = (at.offset, at.epoch);
    Some(Streaming {
        cur: Cursor {
            watch: file,
            offset,
            epoch,
        },
        until_gone: dir.is_some(),
        synced,
        path: dir.map(|(_, shown)| shown.into()),
    })
}

/// Where a client starts: an offset in the file as it was when the request was resolved.
struct Placement<'a> {
    file: &'a File,
    offset: u64,
    /// The file's length the offset was resolved against (what `ok N LEN` reports).
    len: u64,
    epoch: u64,
}

/// How waiting for the file ended.
enum Placed<'a> {
    At(Placement<'a>),
    HungUp,
    /// The file exists but could not be opened for longer than the client's patience.
    Unreadable(Refusal),
}

/// Waits until the file exists (or the client leaves), then resolves `start` against it.
/// A file that exists but cannot be opened is waited for `patience` (the header timeout),
/// then the client is told why.
async fn place<'a>(
    sock: &Async<TcpStream>,
    watch: &'a FileWatch,
    start: Start,
    patience: Duration,
    synced: Option<&Synced>,
) -> Placed<'a> {
    let exists = async {
        let opened = async {
            watch.wait_until(|w| w.file().is_some()).await;
            true
        };
        let waited = async {
            async_io::Timer::after(patience).await;
            false
        };
        if future::or(opened, waited).await {
            return Some(Ok(()));
        }
        // From now on an unreadable file is an answer (an absent one is still waited for).
        watch
            .wait_until(|w| w.file().is_some() || w.unreadable().is_some())
            .await;
        Some(match (watch.file(), watch.unreadable()) {
            (None, Some(why)) => Err(why),
            _ => Ok(()),
        })
    };
    let left = async {
        gone(sock).await;
        None
    };
    match future::or(exists, left).await {
        Some(Ok(())) => {}
        Some(Err(why)) => return Placed::Unreadable(why),
        None => return Placed::HungUp,
    }
    // Epoch before length: if a truncation lands in between, the first wait notices it.
    let epoch = watch.epoch();
    match watch.file() {
        Some(file) => {
            // What may be served: the file's length, or up to the synced length when asked.
            // The watcher's length lags an append by as long as its inotify event waits to
            // be read; a client that asks after an append finished must be placed against
            // it (`-N`, ` ok` and `--exit-at-end` read LEN as "what is there now"), so the
            // file's own length counts where it is longer (one fstat a new client). Shorter
            // is a truncation the watcher has not seen yet: its epoch closes the client.
            let now = file.metadata().map_or(0, |m| m.len());
            let len = synced.map_or(watch.len().max(now), |s| s.cap(watch));
            Placed::At(Placement {
                file,
                // `last N lines` reads back from the end (bounded: proto's MAX_LINES_SCAN); a
                // failed read starts at the end, as `-0` would.
                offset: start
                    .resolve_in(len, |buf, at| {
                        std::os::unix::fs::FileExt::read_at(file, buf, at)
                    })
                    .unwrap_or(len),
                len,
                epoch,
            })
        }
        None => Placed::HungUp,
    }
}

/// Streams the file from where the client was placed until it leaves (or, with
/// `until_gone`, until the file is gone and fully sent), advancing `at.offset`.
///
/// The hang-up watch runs beside the loop for the client's whole life rather than around
/// each wait: its readability interest then stays armed in epoll, so waking a follower for
/// new data costs one `sendfile` and no re-registration.
async fn follow(sock: &Async<TcpStream>, at: &mut Streaming) -> End {
    future::or(stream(sock, at), hung_up(sock)).await
}

/// Completes once the client is gone (see [`crate::hangup`]): what every follower's sending
/// loop runs beside.
pub(crate) async fn hung_up(sock: &Async<TcpStream>) -> End {
    gone(sock).await;
    End::HungUp
}

/// The sending half of [`follow`]: wait for the file to grow past the offset, send, repeat.
async fn stream(sock: &Async<TcpStream>, at: &mut Streaming) -> End {
    let Streaming {
        cur,
        until_gone,
        synced,
        ..
    } = at;
    let (epoch, until_gone) = (cur.epoch, *until_gone);
    let synced = synced.as_deref();
    // Placed clients have the file open (it stays open for the life of the watch).
    if cur.watch.file().is_none() {
        return End::Gone;
    }
    loop {
        let (watch, offset) = (&cur.watch, cur.offset);
        let ready = |w: &FileWatch| w.epoch() != epoch || (until_gone && w.gone().is_some());
        match synced {
            None => watch.wait_until(|w| w.len() > offset || ready(w)).await,
            // Boxed: only `--serve-up-to-synced` waits on two files, and every other
            // follower would carry the size of that wait.
            Some(s) => {
                while s.cap(watch) <= offset && !ready(watch) {
                    Box::pin(s.wait(watch, ready)).await;
                }
            }
        }
        // Gone before the length, so the last bytes are still sent; the length before the
        // epoch (the watcher bumps the epoch before it publishes a length), so a length
        // published after a truncation or rewrite is never sent from.
        let gone = until_gone && watch.gone().is_some();
        let limit = synced.map_or(watch.len(), |s| s.cap(watch));
        if watch.epoch() != epoch {
            return End::Truncated;
        }
        // The epoch is checked again before every `sendfile` of a long backlog.
        match send_range(sock, cur, limit).await {
            Ok(Sent::All) if gone => return End::Gone,
            Ok(Sent::All) => {}
            Ok(Sent::Truncated) => return End::Truncated,
            Ok(Sent::Unreadable(e)) => return End::Unreadable(e),
            Err(e) => return End::Socket(e),
        }
    }
}

/// Directory mode's `list`: the servable paths, one per line, then the connection closes;
/// with `sizes` (`list sizes`) each line is `SIZE PATH`, the size from a `stat` as the walk
/// passes the file (a file that vanished in between is left out). A segmented log is one
/// line, its size the log's global end (what `from byte -0` starts at).
///
/// The walk is blocking file-system work, so it runs on the blocking pool and hands the
/// listing over in chunks; a client that reads slowly holds the walk back instead of making
/// us buffer a 100,000-file listing.
async fn send_listing(sock: &Async<TcpStream>, tree: &Arc<Tree>, sizes: bool) -> io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let (tx, rx) = async_channel::bounded::<Vec<u8>>(4);
    let tree = tree.clone();
    let walk = shared::rt::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(CHUNK);
        let hung_up = || io::Error::from(io::ErrorKind::BrokenPipe);
        tree.list(|path, kind| {
            if sizes {
                let full = tree.root().join(path);
                let size = match kind {
                    Kind::File => std::fs::metadata(full).map(|m| m.len()),
                    Kind::Log => logfile::segments::Log::open(&full).map(|log| log.end()),
                };
                let Ok(size) = size else {
                    return Ok(());
                };
                buf.extend_from_slice(format!("{size} ").as_bytes());
            }
            buf.extend_from_slice(path.as_bytes());
            buf.push(b'\n');
            if buf.len() >= CHUNK {
                let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK));
                future::block_on(tx.send(full)).map_err(|_| hung_up())?;
            }
            Ok(())
        })?;
        future::block_on(tx.send(buf)).map_err(|_| hung_up())
    });
    let mut writer = sock;
    while let Ok(chunk) = rx.recv().await {
        writer.write_all(&chunk).await?;
    }
    walk.await?;
    net::finish(sock, b"", net::LINGER).await;
    Ok(())
}

/// Turns away a connection the accept loop will not serve (over `--max-clients`).
pub(crate) async fn refuse_busy(stream: TcpStream) {
    if let Ok(sock) = Async::new(stream) {
        net::refuse(&sock, &Refusal::new(Code::Busy, "too many clients")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every follower's task holds `serve`'s future for as long as it follows, so its size is
    /// paid per idle follower (bench `--sections idle`). It was 1,120 bytes at 394db39 and grew
    /// to 1,448 with the protocol refactor, when the request, refusal and placement futures
    /// were all part of it. Then they ran boxed before streaming starts (736 bytes, debug and
    /// release alike), and 696 once the sendfile loop kept one pointer to the client's
    /// `Cursor` rather than a reference per field (issue #25, which added the epoch check per
    /// `sendfile`). The bound is the size before that change, so whatever widens the follow
    /// loop's state past it fails here. Segmented logs (#19) made it 720 (the served enum
    /// and the slot a log's follower is handed out in; the log's own loop is boxed).
    #[test]
    fn the_serve_future_stays_small() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = stream.local_addr().unwrap();
        let dir = tempfile_dir();
        let watcher = shared::watch::Watcher::new().unwrap();
        let file = watcher.follower().follow(&dir.join("log")).unwrap();
        let future = serve(
            stream,
            peer,
            Served::File(file),
            Duration::from_secs(1),
            None,
        );
        let size = std::mem::size_of_val(&future);
        eprintln!("serve future: {size} bytes");
        assert!(
            size <= SERVE_BOUND,
            "the serve future is {size} bytes (bound {SERVE_BOUND})"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    const SERVE_BOUND: usize = 736;

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tailsrv-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! The life of one client, one function per step:
//!
//! 1. [`serve`]: register the socket, read the header (bounded in size and time).
//! 2. [`follow`]: wait for the file to exist, resolve the start offset, then loop: wait until
//!    the file is longer than what was sent, `sendfile` the difference.
//! 3. Meanwhile [`hangup`] watches the socket, so a client that leaves while the file is quiet
//!    is released at once rather than at the next write.
//!
//! A client costs one task and one socket; no buffer holds file data.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::future;
use shared::header::{self, HeaderError, Start};
use shared::net;
use shared::sendfile::send_range;
use shared::watch::FileWatch;

/// How long a refused client gets to read its error line before we close.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Why a client's stream ended.
#[derive(Debug)]
enum End {
    /// The client closed its side or reset the connection.
    HungUp,
    /// The file shrank under the client: the bytes it has may no longer be the file's.
    Truncated,
    /// Writing to the client failed.
    Socket(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::HungUp => f.write_str("client hung up"),
            End::Truncated => f.write_str("file was truncated"),
            End::Socket(e) => write!(f, "write failed: {e}"),
        }
    }
}

/// Serves one accepted connection until it ends.
pub async fn serve(stream: TcpStream, peer: SocketAddr, file: FileWatch, header_timeout: Duration) {
    net::tune(&stream);
    let sock = match Async::new(stream) {
        Ok(s) => s,
        Err(e) => {
            log::warn!(client:% = peer; "cannot register socket: {e}");
            return;
        }
    };
    let start = match header::read_header(&sock, header_timeout).await {
        Ok(start) => start,
        Err(HeaderError::Closed) => return,
        Err(e) => {
            log::debug!(client:% = peer; "refused: {e}");
            refuse(&sock, &e.to_string()).await;
            return;
        }
    };
    log::debug!(client:% = peer, start:? = start; "client connected");
    let offset = AtomicU64::new(0);
    let end = follow(&sock, &file, start, &offset).await;
    log::debug!(client:% = peer, offset = offset.load(Relaxed); "client done: {end}");
}

/// Streams the file from `start` until the client leaves; `pos` tracks the offset reached.
///
/// The hang-up watch runs beside the loop for the client's whole life rather than around
/// each wait: its readability interest then stays armed in epoll, so waking a follower for
/// new data costs one `sendfile` and no re-registration.
async fn follow(sock: &Async<TcpStream>, watch: &FileWatch, start: Start, pos: &AtomicU64) -> End {
    future::or(stream(sock, watch, start, pos), hangup(sock)).await
}

/// The sending half of [`follow`]: wait for the file to grow past `pos`, send, repeat.
async fn stream(sock: &Async<TcpStream>, watch: &FileWatch, start: Start, pos: &AtomicU64) -> End {
    // The start offset is relative to the file the client will get, so wait for it to exist.
    watch.wait_until(|w| w.file().is_some()).await;
    let Some(file) = watch.file() else {
        unreachable!("wait_until returned before the file was open")
    };
    // Epoch before length: if a truncation lands in between we notice it on the first wait.
    let epoch = watch.epoch();
    let mut offset = start.resolve(watch.len());
    loop {
        pos.store(offset, Relaxed);
        watch.wait_for_growth(offset, epoch).await;
        if watch.epoch() != epoch {
            return End::Truncated;
        }
        let sent = send_range(sock, file, &mut offset, watch.len()).await;
        pos.store(offset, Relaxed);
        match sent {
            Ok(true) => {}
            Ok(false) => return End::Truncated,
            Err(e) => return End::Socket(e),
        }
    }
}

/// Completes when the client hangs up.
///
/// The protocol has nothing for the client to say after its header, so readability means the
/// client is gone (EOF or reset) or is sending bytes we ignore. A half-close (FIN) counts as
/// leaving: from our side it cannot be told apart from a close until we next write, and a
/// follower of a quiet file may not be written to for hours.
async fn hangup(sock: &Async<TcpStream>) -> End {
    let mut scratch = [0u8; 64];
    loop {
        if sock.readable().await.is_err() {
            return End::HungUp;
        }
        match (&*sock.get_ref()).read(&mut scratch) {
            Ok(0) => return End::HungUp,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return End::HungUp,
        }
    }
}

/// Sends `error: <reason>` and closes gracefully.
///
/// Graceful matters: closing a socket with unread input makes the kernel send a reset, which
/// can destroy the error line before the client reads it. So we send the line and a FIN, then
/// drain the client's input until it closes (or a short linger runs out).
async fn refuse(sock: &Async<TcpStream>, reason: &str) {
    let line = format!("error: {reason}\n");
    let send = async {
        let mut sent = 0;
        while sent < line.len() {
            sent += sock
                .write_with(|s| (&*s).write(&line.as_bytes()[sent..]))
                .await?;
        }
        sock.get_ref().shutdown(Shutdown::Write)?;
        let mut scratch = [0u8; 512];
        while sock.read_with(|s| (&*s).read(&mut scratch)).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = future::or(send, async {
        Timer::after(REFUSAL_LINGER).await;
        Ok(())
    })
    .await;
}

/// [`refuse`] for a connection the accept loop turns away before it becomes a client.
pub async fn refuse_raw(stream: TcpStream, reason: &str) {
    if let Ok(sock) = Async::new(stream) {
        refuse(&sock, reason).await;
    }
}

//! The life of one client, one function per step:
//!
//! 1. [`serve`]: register the socket, read the header (bounded in size and time).
//! 2. [`follow`]: wait for the file to exist, resolve the start offset, then loop: wait until
//!    the file is longer than what was sent, `sendfile` the difference.
//! 3. While waiting, [`until_hangup`] also watches the socket, so a client that leaves while
//!    the file is quiet is released at once rather than at the next write.
//!
//! A client costs one task and one socket; no buffer holds file data.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
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
    let (end, offset) = follow(&sock, &file, start).await;
    log::debug!(client:% = peer, offset = offset; "client done: {end}");
}

/// Streams the file from `start` until the client leaves. Returns why, and the offset reached.
async fn follow(sock: &Async<TcpStream>, watch: &FileWatch, start: Start) -> (End, u64) {
    // The start offset is relative to the file the client will get, so wait for it to exist.
    if let Err(end) = until_hangup(sock, watch.wait_until(|w| w.file().is_some())).await {
        return (end, 0);
    }
    let Some(file) = watch.file() else {
        unreachable!("wait_until returned before the file was open")
    };
    // Epoch before length: if a truncation lands in between we notice it on the first wait.
    let epoch = watch.epoch();
    let mut pos = start.resolve(watch.len());
    loop {
        if let Err(end) = until_hangup(sock, watch.wait_for_growth(pos, epoch)).await {
            return (end, pos);
        }
        if watch.epoch() != epoch {
            return (End::Truncated, pos);
        }
        match send_range(sock, file, &mut pos, watch.len()).await {
            Ok(true) => {}
            Ok(false) => return (End::Truncated, pos),
            Err(e) => return (End::Socket(e), pos),
        }
    }
}

/// Runs `wait` unless the client hangs up first.
///
/// The protocol has nothing for the client to say after its header, so readability means the
/// client is gone (EOF or reset) or is sending bytes we ignore. Note that a half-close (FIN)
/// counts as leaving: it is indistinguishable from a close until we next write.
async fn until_hangup<T>(sock: &Async<TcpStream>, wait: impl Future<Output = T>) -> Result<T, End> {
    let hangup = async {
        let mut scratch = [0u8; 64];
        loop {
            match sock.read_with(|s| (&*s).read(&mut scratch)).await {
                Ok(0) => return End::HungUp,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return End::HungUp,
            }
        }
    };
    future::or(async { Ok(wait.await) }, async { Err(hangup.await) }).await
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

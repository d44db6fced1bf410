//! Moving file bytes to a socket without copying them through userspace.
//!
//! `sendfile(2)` on a non-blocking socket sends what fits in the socket buffer and returns;
//! when nothing fits it fails with `EAGAIN`, and async-io's `write_with` parks the task until
//! the reactor reports the socket writable again. So a slow reader holds nothing but its own
//! task, and a fast one is fed straight from the page cache.

use std::fs::File;
use std::io;
use std::net::TcpStream;

use async_io::Async;
use shared::rt::trace::{mark, Point};

/// After this many bytes sent without the socket ever filling up, yield to the executor so
/// one fast reader of a big backlog cannot starve the others sharing its thread.
const YIELD_EVERY: u64 = 8 << 20;

/// Largest count passed to one `sendfile` call (the kernel caps it near 2 GiB anyway).
const MAX_CHUNK: u64 = 1 << 30;

/// Sends `file[*pos..end]` to `sock`, advancing `*pos` as bytes go out.
///
/// Returns early with `Ok(false)` if the file turned out to be shorter than `end` (it was
/// truncated under us): nothing past the real end of the file is ever sent. Errors are the
/// socket's (`EPIPE`, `ECONNRESET`, ...) and mean the client is gone.
pub async fn send_range(
    sock: &Async<TcpStream>,
    file: &File,
    pos: &mut u64,
    end: u64,
) -> io::Result<bool> {
    let mut since_yield = 0u64;
    while *pos < end {
        let count = (end - *pos).min(MAX_CHUNK) as usize;
        let mut offset = *pos;
        let sent = sock
            .write_with(|s| {
                mark(Point::SendStart);
                let sent = rustix::fs::sendfile(s, file, Some(&mut offset), count);
                mark(Point::SendEnd);
                sent.map_err(io::Error::from)
            })
            .await?;
        if sent == 0 {
            return Ok(false);
        }
        *pos += sent as u64;
        since_yield += sent as u64;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            futures_lite::future::yield_now().await;
        }
    }
    Ok(true)
}

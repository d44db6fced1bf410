//! Sockets: listeners that survive accept storms, and per-connection options.
//!
//! std's `TcpListener::bind` listens with a backlog of 128. When thousands of clients connect
//! at once the kernel's queue overflows and the extra SYNs are dropped, which clients only
//! notice after a 1 s retransmit timeout (upstream tailsrv takes seconds to accept 1,000
//! clients for that reason). We ask for a large backlog; the kernel caps it at
//! `net.core.somaxconn` (4096 by default on current kernels).
//!
//! Also here: reading a request line bounded in size and time ([`read_line`]), so a client
//! that sends garbage, or nothing, costs a few bytes and is told why it is dropped; and the
//! graceful close that makes sure a refusal is read ([`finish`], [`refuse`]).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use async_io::{Async, Timer};
use proto::{Code, Refusal};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Requested listen backlog; the kernel silently caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 65_535;

/// Binds a non-blocking listener with a large backlog and logs `listening on ADDR` with the
/// real address (scripts and tests read that line to learn a `-p 0` port).
pub fn listen(addr: SocketAddr) -> io::Result<Async<TcpListener>> {
    let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what} {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| ctx("creating socket for", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| ctx("SO_REUSEADDR on", e))?;
    if addr.is_ipv6() {
        // `::` should take IPv4 clients too, whatever the system default says.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(|e| ctx("binding", e))?;
    socket.listen(BACKLOG).map_err(|e| ctx("listening on", e))?;
    let listener: TcpListener = socket.into();
    let listener = Async::new(listener).map_err(|e| ctx("registering", e))?;
    let local = listener.get_ref().local_addr()?;
    log::info!(target: cli::ANNOUNCE, addr:% = local; "listening on {local}");
    Ok(listener)
}

/// Options for an accepted connection: no Nagle delay for small appends, and TCP keepalive
/// so a peer that vanished without a FIN (power loss, cable pulled) is noticed eventually
/// even while the file is quiet.
pub fn tune(stream: &TcpStream) {
    let sock = SockRef::from(stream);
    let _ = sock.set_tcp_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = sock.set_tcp_keepalive(&keepalive);
}

/// Whether an accept error means we ran out of file descriptors (and should back off).
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
            || code == rustix::io::Errno::NOBUFS.raw_os_error()
            || code == rustix::io::Errno::NOMEM.raw_os_error()
    )
}

/// Sends `last` (an error line, the end of a listing), then closes gracefully.
///
/// Graceful matters: closing a socket with unread input makes the kernel send a reset, which
/// can destroy what we sent before the client reads it. So we send, then a FIN, then drain the
/// client's input until it closes or `linger` runs out.
pub async fn finish(sock: &Async<TcpStream>, last: &[u8], linger: Duration) {
    use futures_lite::AsyncWriteExt;
    let send = async {
        let mut writer = sock;
        writer.write_all(last).await?;
        sock.get_ref().shutdown(std::net::Shutdown::Write)?;
        // The buffer lives only inside the closure: this future is part of every client's
        // task, and a buffer held across the await would cost every follower 4 KiB.
        while sock.read_with(|s| (&*s).read(&mut [0u8; 4096])).await? > 0 {}
        io::Result::Ok(())
    };
    let timeout = async {
        async_io::Timer::after(linger).await;
        Ok(())
    };
    let _ = futures_lite::future::or(send, timeout).await;
}

/// How long a client that was refused (or sent a listing) gets to read it before we close.
pub const LINGER: Duration = Duration::from_secs(2);

/// Sends `refusal` as its `error: CODE: reason` line and closes gracefully ([`finish`]).
pub async fn refuse(sock: &Async<TcpStream>, refusal: &Refusal) {
    finish(sock, &refusal.render(), LINGER).await
}

/// Why no request line could be read.
#[derive(Debug)]
pub enum LineError {
    /// The client hung up or the socket failed: there is no one to answer.
    Gone,
    /// Too long or too slow: the client should be told this, then closed.
    Refused(Refusal),
}

/// Reads bytes until the first `\n`, at most `max` bytes, within `timeout`.
///
/// Returns the line without its newline. Bytes that arrived after the newline in the same
/// read are dropped: the protocol says they are ignored. A FIN after some bytes ends the
/// line as a newline would (`printf 0 | nc -N host port` is a complete request: the client
/// can send nothing more, and leaving it unanswered would be a silent trap); a FIN before
/// any byte is a hang-up.
pub async fn read_line(
    sock: &Async<TcpStream>,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, LineError> {
    let read = async {
        let mut buf = vec![0u8; max];
        let mut filled = 0;
        loop {
            let n = match sock.read_with(|s| (&*s).read(&mut buf[filled..])).await {
                Ok(0) if filled > 0 => {
                    buf.truncate(filled);
                    return Ok(buf);
                }
                Ok(0) | Err(_) => return Err(LineError::Gone),
                Ok(n) => n,
            };
            if let Some(i) = memchr::memchr(b'\n', &buf[filled..filled + n]) {
                buf.truncate(filled + i);
                return Ok(buf);
            }
            filled += n;
            if filled == max {
                return Err(LineError::Refused(Refusal::new(
                    Code::TooLong,
                    format!("request longer than {max} bytes without a newline"),
                )));
            }
        }
    };
    let deadline = async {
        Timer::after(timeout).await;
        Err(LineError::Refused(Refusal::new(
            Code::Timeout,
            format!("no complete request line within {}s", timeout.as_secs_f64()),
        )))
    };
    futures_lite::future::or(read, deadline).await
}

/// Accepts connections forever, handing each to `on_accept`.
///
/// Accepts the plain std socket: registering it with the reactor happens in the client's own
/// task, so a failure there is that client's problem, not the accept loop's. When file
/// descriptors run out the pending connections wait in the listen backlog; we log once, back
/// off (10 ms doubling to 1 s) and accept them as descriptors free up.
pub async fn accept_forever(
    listener: &Async<TcpListener>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) -> io::Result<()> {
    let mut backoff: Option<Duration> = None;
    loop {
        match listener.read_with(|l| l.accept()).await {
            Ok((stream, peer)) => {
                if backoff.take().is_some() {
                    log::info!("file descriptors available again, accepting");
                }
                on_accept(stream, peer);
            }
            Err(e) if is_fd_exhaustion(&e) => {
                let delay = backoff.map_or(Duration::from_millis(10), |d| {
                    (d * 2).min(Duration::from_secs(1))
                });
                if backoff.is_none() {
                    log::warn!("cannot accept: {e}; backing off until descriptors free up");
                }
                backoff = Some(delay);
                async_io::Timer::after(delay).await;
            }
            // ECONNABORTED and friends: that one connection failed, not the listener.
            Err(e) => log::debug!("accept failed: {e}"),
        }
    }
}

/// A client's first step: tune the accepted socket and register it with the reactor. `None`
/// (logged) if registration fails, which ends only that client.
pub fn register(stream: TcpStream, peer: SocketAddr) -> Option<Async<TcpStream>> {
    tune(&stream);
    match Async::new(stream) {
        Ok(sock) => Some(sock),
        Err(e) => {
            log::warn!(client:% = peer; "cannot register socket: {e}");
            None
        }
    }
}

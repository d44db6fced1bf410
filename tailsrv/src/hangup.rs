//! Noticing that a client is gone for good, at no cost while it is not.
//!
//! After its request a client has nothing more to say. Some keep their sending side open
//! (netcat-openbsd's `nc`), others shut it down (nmap's `ncat`, `socat`, `nc -N`, a program
//! that calls `shutdown(SHUT_WR)`) and go on reading. A FIN therefore only means "nothing more
//! to send": a client is *gone* when the connection is reset (an RST, which a closed socket
//! answers our next bytes with), when keepalive gives up on it (see `shared::net::tune`), or
//! when a write fails (that last one the streaming loop sees by itself).
//!
//! [`gone`] watches for the first two in two phases:
//!
//! 1. Until the client's FIN, wait for readability on the reactor and read (and drop) what the
//!    client sends. An error or reset ends the watch: the client is gone. This readability
//!    interest stays armed for as long as the client keeps its sending side open, so waking a
//!    follower for new data costs one `sendfile` and no re-registration.
//! 2. After the FIN the socket is readable forever (end of input) and writable whenever its
//!    buffer has room, so neither of the reactor's two interests can be waited on without
//!    waking in a loop. What we want is epoll's `EPOLLERR`/`EPOLLHUP` alone, which epoll
//!    reports for every registered descriptor even with an empty interest set, but which
//!    async-io offers no way to ask for. So a half-closed client's socket is added to one epoll
//!    instance of our own, [`Reaper`], with an empty interest set: it stays silent until the
//!    connection is reset or fails. That epoll descriptor is itself registered with the reactor
//!    (an epoll descriptor is readable when it has events), and one task drains it and wakes
//!    the clients concerned.
//!
//! Cost: one epoll descriptor and one task per server; per half-closed client a map entry and
//! two `epoll_ctl` calls in its life; no timer, and nothing at all while the file is quiet.
//! What it cannot do is tell a client that half-closed from one that closed cleanly (FIN, no
//! unread data): TCP shows both the same until we next send, which a closed socket answers
//! with an RST. While the file is quiet such a client is released by keepalive.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use async_io::Async;
use rustix::event::epoll;

/// Completes when the client is gone: its connection was reset or failed, or it ended before
/// its sending side did. A FIN alone does not complete it (see the module docs).
pub(crate) async fn gone(sock: &Async<TcpStream>) {
    // Phase 1: read and drop whatever the client sends until its FIN. The buffer is a
    // temporary of one statement, never held across an await, so this future (part of every
    // follower's task) holds none.
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        match sock.get_ref().read(&mut [0u8; 256]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
    // Phase 2: half-closed. Wait for a reset, without waiting on readability.
    match Reaper::get() {
        Some(reaper) => match reaper.watch(sock.get_ref().as_fd()) {
            Some(watch) => watch.await,
            // Could not watch it: it is released at the next write, or when the server stops.
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// One epoll instance for the sockets of every half-closed client, with an empty interest
/// set: it reports only errors and hang-ups (see the module docs).
struct Reaper {
    epoll: Async<OwnedFd>,
    watched: Mutex<Watched>,
}

/// The half-closed clients being watched, by the key their socket was registered with.
#[derive(Default)]
struct Watched {
    next_key: u64,
    slots: HashMap<u64, Slot>,
}

/// One watched client: whether its connection failed, and who to wake when it does.
#[derive(Default)]
struct Slot {
    gone: bool,
    waker: Option<Waker>,
}

/// The server's reaper, created on first use; a failed creation is retried the next time.
static REAPER: Mutex<Option<&'static Reaper>> = Mutex::new(None);

impl Reaper {
    /// The server's reaper; `None` (logged) if it cannot be created now.
    fn get() -> Option<&'static Reaper> {
        let mut slot = REAPER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reaper) = *slot {
            return Some(reaper);
        }
        let created = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(io::Error::from)
            .and_then(|fd| {
                let epoll = Async::new(fd)?;
                Ok(Reaper {
                    epoll,
                    watched: Mutex::default(),
                })
            });
        match created {
            Ok(reaper) => {
                // One per process, for the life of the process.
                let reaper: &'static Reaper = Box::leak(Box::new(reaper));
                drop(shared::rt::spawn(reaper.drive()));
                *slot = Some(reaper);
                Some(reaper)
            }
            Err(e) => {
                log::warn!(
                    "cannot watch half-closed clients for resets: {e}; \
                     they are released at the next write"
                );
                None
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching `fd` (a half-closed client's socket); `None` (logged) if epoll refuses.
    fn watch<'a>(&'static self, fd: BorrowedFd<'a>) -> Option<Watch<'a>> {
        let key = {
            let mut watched = self.lock();
            let key = watched.next_key;
            watched.next_key += 1;
            watched.slots.insert(key, Slot::default());
            key
        };
        // No interest flags: epoll still reports EPOLLERR and EPOLLHUP, and only those.
        // One-shot, so a dead socket is reported once even before its task deregisters it.
        let data = epoll::EventData::new_u64(key);
        if let Err(e) = epoll::add(self.epoll.get_ref(), fd, data, epoll::EventFlags::ONESHOT) {
            log::warn!("cannot watch a half-closed client for resets: {e}");
            self.lock().slots.remove(&key);
            return None;
        }
        Some(Watch {
            reaper: self,
            key,
            fd,
        })
    }

    /// Forever: wait until some watched socket failed, then [`Reaper::drain`].
    async fn drive(&'static self) {
        loop {
            let ready = self.epoll.readable().await.and_then(|()| self.drain());
            if let Err(e) = ready {
                log::error!("stopped watching half-closed clients for resets: {e}");
                return;
            }
        }
    }

    /// Takes the failed sockets epoll reports, marks them gone and wakes their tasks.
    fn drain(&self) -> io::Result<()> {
        const BATCH: usize = 64;
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            let mut events = [MaybeUninit::<epoll::Event>::uninit(); BATCH];
            let (ready, _) = match epoll::wait(self.epoll.get_ref(), &mut events, Some(&now)) {
                Ok(ready) => ready,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut watched = self.lock();
            for event in ready.iter() {
                if let Some(slot) = watched.slots.get_mut(&event.data.u64()) {
                    slot.gone = true;
                    if let Some(waker) = slot.waker.take() {
                        waker.wake();
                    }
                }
            }
            if ready.len() < BATCH {
                return Ok(());
            }
        }
    }
}

/// A half-closed client's socket in the [`Reaper`]: completes when the connection failed.
/// Dropping it takes the socket out of the epoll set (before the socket itself is closed,
/// since it borrows it).
struct Watch<'a> {
    reaper: &'static Reaper,
    key: u64,
    fd: BorrowedFd<'a>,
}

impl Future for Watch<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut watched = self.reaper.lock();
        let Some(slot) = watched.slots.get_mut(&self.key) else {
            return Poll::Ready(());
        };
        if slot.gone {
            return Poll::Ready(());
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let _ = epoll::delete(self.reaper.epoll.get_ref(), self.fd);
        self.reaper.lock().slots.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every follower's task holds this future for its whole life, so a buffer held across
    /// an await in it costs every follower that much memory (as `shared::net::finish`'s once
    /// did): its size is a reactor registration's, not a buffer's.
    #[test]
    fn the_watch_holds_no_buffer_across_awaits() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let sock = Async::new(stream).unwrap();
        let size = std::mem::size_of_val(&gone(&sock));
        assert!(size <= 128, "the hang-up future is {size} bytes");
    }
}

//! Many client connections driven by a few epoll threads: the bench's load generator.
//!
//! A thread per client would make the bench, not the server, the bottleneck at 10,000
//! connections on two cores, and would hide the connect storm behind thread start-up. So each
//! fleet thread opens its share of sockets with non-blocking connects (all at once), sends the
//! header line when a socket turns writable, then hands readable sockets to a [`Handler`]
//! until it says it is done, which closes that socket at once (so the server stops sending to
//! it). Level-triggered registration: no re-arming syscall per event.
//!
//! Reading is the handler's business; [`discard`] is the cheap way for bulk readers: `recv`
//! with `MSG_TRUNC`, which on TCP drops the bytes in the kernel without copying them, into
//! a buffer that is never touched.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};
use socket2::{Domain, Protocol, Socket, Type};

use crate::run::Result;

/// Fleet threads are named this plus their index, so their CPU can be told from the rest.
pub const THREAD_PREFIX: &str = "fleet-";

/// What a handler wants after a read.
pub enum Step {
    More,
    /// Close this connection: the client has what it came for.
    Done,
}

/// One fleet thread's reading logic, owning that thread's results.
pub trait Handler: Send + 'static {
    /// Connection `id` is about to call `connect`.
    fn connecting(&mut self, _id: usize) {}
    /// Connection `id` sent its header.
    fn connected(&mut self, _id: usize) {}
    /// Connection `id` is readable. An error (or EOF reported as one) ends the connection
    /// and is counted as a failure.
    fn readable(&mut self, id: usize, sock: &TcpStream) -> io::Result<Step>;
}

/// The fleet's threads, running.
pub struct Fleet<H> {
    threads: Vec<JoinHandle<Part<H>>>,
    stop: Arc<AtomicBool>,
}

/// What one fleet thread hands back.
pub struct Part<H> {
    pub handler: H,
    /// Connections that were neither done nor failed when the thread stopped.
    pub unfinished: usize,
    pub failures: usize,
    /// The first failure's text, for the report.
    pub first_failure: Option<String>,
    /// How long this thread took to start all its connects: the client's own floor.
    pub connecting: Duration,
}

impl<H: Handler> Fleet<H> {
    /// Starts `threads` threads that together open `n` connections to `addr`, each sending
    /// `header` first. Thread `t` gets its handler from `make(t)`. Every thread gives up at
    /// `deadline`.
    pub fn launch(
        addr: SocketAddr,
        n: usize,
        header: &[u8],
        threads: usize,
        deadline: Instant,
        make: impl Fn(usize) -> H,
    ) -> Fleet<H> {
        let threads = threads.clamp(1, n.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|t| {
                // Connection ids are global; thread t owns [lo, hi).
                let lo = n * t / threads;
                let hi = n * (t + 1) / threads;
                let handler = make(t);
                let header = header.to_vec();
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("{THREAD_PREFIX}{t}"))
                    .spawn(move || drive(addr, lo..hi, &header, deadline, &stop, handler))
                    .expect("spawning a fleet thread")
            })
            .collect();
        Fleet {
            threads: handles,
            stop,
        }
    }

    /// Asks every thread to close its connections and return.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for every thread (they end when all their connections are done, at the deadline,
    /// or after [`Fleet::stop`]).
    pub fn join(self) -> Vec<Part<H>> {
        self.threads
            .into_iter()
            .map(|t| t.join().expect("fleet thread panicked"))
            .collect()
    }
}

/// Sums the parts' counters into one error when anything failed or was left unfinished.
pub fn check<H>(parts: &[Part<H>], what: &str) -> Result<()> {
    let unfinished: usize = parts.iter().map(|p| p.unfinished).sum();
    let failures: usize = parts.iter().map(|p| p.failures).sum();
    if unfinished + failures == 0 {
        return Ok(());
    }
    let first = parts
        .iter()
        .find_map(|p| p.first_failure.clone())
        .unwrap_or_default();
    Err(format!(
        "{what}: {failures} connections failed, {unfinished} unfinished at the deadline {first}"
    ))
}

enum Conn {
    Connecting(TcpStream),
    Open(TcpStream),
    Closed,
}

/// Connects started between two looks at the poller while a thread opens its connections:
/// often enough that a client served early is timed when it is served, not when the last
/// connect has been started.
const CONNECTS_PER_POLL: usize = 64;

/// One fleet thread's state.
struct Driver<'a, H> {
    addr: SocketAddr,
    base: usize,
    header: &'a [u8],
    poller: Poller,
    conns: Vec<Conn>,
    open: usize,
    failures: usize,
    first_failure: Option<String>,
    handler: H,
}

fn drive<H: Handler>(
    addr: SocketAddr,
    ids: std::ops::Range<usize>,
    header: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
    handler: H,
) -> Part<H> {
    let poller = match Poller::new() {
        Ok(p) => p,
        Err(e) => {
            return Part {
                handler,
                unfinished: ids.len(),
                failures: 0,
                first_failure: Some(format!("epoll: {e}")),
                connecting: Duration::ZERO,
            }
        }
    };
    let mut d = Driver {
        addr,
        base: ids.start,
        header,
        poller,
        conns: Vec::with_capacity(ids.len()),
        open: 0,
        failures: 0,
        first_failure: None,
        handler,
    };
    let mut events = Events::with_capacity(NonZeroUsize::new(4096).unwrap());
    let started = Instant::now();
    // All connects at once, as a storm of clients looks to the server; glancing at the
    // poller now and then so early answers are read when they come.
    for key in 0..ids.len() {
        d.connect(key);
        if key % CONNECTS_PER_POLL == CONNECTS_PER_POLL - 1 {
            if let Err(e) = d.poll(&mut events, Duration::ZERO) {
                d.fail(format!("epoll wait: {e}"));
            }
        }
    }
    let connecting = started.elapsed();
    while d.open > 0 && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Err(e) = d.poll(&mut events, (deadline - now).min(Duration::from_millis(50))) {
            d.fail(format!("epoll wait: {e}"));
            break;
        }
    }
    for c in &d.conns {
        if let Conn::Connecting(s) | Conn::Open(s) = c {
            let _ = d.poller.delete(s);
        }
    }
    let unfinished = if stop.load(Ordering::Relaxed) {
        0
    } else {
        d.open
    };
    Part {
        handler: d.handler,
        unfinished,
        failures: d.failures,
        first_failure: d.first_failure,
        connecting,
    }
}

impl<H: Handler> Driver<'_, H> {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(what);
    }

    /// Starts connection `key` (the next one).
    fn connect(&mut self, key: usize) {
        self.handler.connecting(self.base + key);
        let sock = match start_connect(self.addr) {
            Ok(sock) => sock,
            Err(e) => {
                self.fail(format!("connect {}: {e}", self.addr));
                self.conns.push(Conn::Closed);
                return;
            }
        };
        // SAFETY: the socket stays registered only while it lives in `conns`; it is deleted
        // from the poller before it is dropped.
        match unsafe { self.poller.add(&sock, Event::writable(key)) } {
            Ok(()) => {
                self.conns.push(Conn::Connecting(sock));
                self.open += 1;
            }
            Err(e) => {
                self.fail(format!("epoll add: {e}"));
                self.conns.push(Conn::Closed);
            }
        }
    }

    /// Waits up to `wait` for events and handles them.
    fn poll(&mut self, events: &mut Events, wait: Duration) -> io::Result<()> {
        events.clear();
        self.poller.wait(events, Some(wait))?;
        for ev in events.iter() {
            if self.event(ev.key) {
                if let Conn::Connecting(s) | Conn::Open(s) =
                    std::mem::replace(&mut self.conns[ev.key], Conn::Closed)
                {
                    let _ = self.poller.delete(&s);
                }
                self.open -= 1;
            }
        }
        Ok(())
    }

    /// Handles an event on connection `key`; true when it is to be closed.
    fn event(&mut self, key: usize) -> bool {
        let id = self.base + key;
        match std::mem::replace(&mut self.conns[key], Conn::Closed) {
            Conn::Closed => false,
            Conn::Connecting(sock) => {
                if let Err(e) = finish_connect(&sock, self.header) {
                    self.conns[key] = Conn::Connecting(sock);
                    self.fail(format!("connecting to {}: {e}", self.addr));
                    return true;
                }
                self.handler.connected(id);
                let level =
                    self.poller
                        .modify_with_mode(&sock, Event::readable(key), PollMode::Level);
                self.conns[key] = Conn::Open(sock);
                if let Err(e) = level {
                    self.fail(format!("epoll modify: {e}"));
                    return true;
                }
                false
            }
            Conn::Open(sock) => {
                let step = self.handler.readable(id, &sock);
                self.conns[key] = Conn::Open(sock);
                match step {
                    Ok(Step::More) => false,
                    Ok(Step::Done) => true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => {
                        self.fail(format!("client {id}: {e}"));
                        true
                    }
                }
            }
        }
    }
}

/// Starts a non-blocking connect; it completes when the socket turns writable.
fn start_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    let _ = sock.set_tcp_nodelay(true);
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    Ok(sock.into())
}

/// The connect finished (writable): learn whether it worked, then send the header line.
fn finish_connect(sock: &TcpStream, header: &[u8]) -> io::Result<()> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    // A header is a few bytes into an empty send buffer: it goes out whole or not at all.
    let sent = rustix::net::send(sock, header, rustix::net::SendFlags::NOSIGNAL)?;
    if sent != header.len() {
        return Err(io::Error::other("header only partly sent"));
    }
    Ok(())
}

/// A scratch area for [`discard`]: address space only, the kernel never writes to it.
pub struct Sink(Vec<u8>);

impl Sink {
    /// Big enough that one `recv` drains a whole socket buffer.
    pub fn new() -> Sink {
        Sink(Vec::with_capacity(64 << 20))
    }
}

/// Drops up to a socket buffer's worth of received bytes without copying them; returns how
/// many (`Ok(0)` is EOF).
pub fn discard(sock: &TcpStream, sink: &mut Sink) -> io::Result<usize> {
    let buf: &mut [MaybeUninit<u8>] = sink.0.spare_capacity_mut();
    let (_, n) = rustix::net::recv(sock, buf, rustix::net::RecvFlags::TRUNC)?;
    Ok(n)
}

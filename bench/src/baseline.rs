//! The baselines that run inside the bench: the simplest servers that could possibly work.
//!
//! - [`SendfileServer`]: std's `TcpListener` (backlog 128), a thread per client, blocking
//!   `sendfile` from the requested offset to the end of the file, then close. This is the
//!   throughput ceiling for one connection and the classic design tailsrv must beat on
//!   connection storms and idle cost.
//! - [`Responder`]: a thread per connection that answers every request line with a number,
//!   buffering the answers of one read into one write (as pipelining wants). The floor any
//!   query server's per-request overhead is compared with.
//! - [`Broadcaster`]: the latency floor. One thread that, right after each append, loops
//!   blocking `sendfile` over every accepted socket. Nothing can deliver an append to N
//!   loopback followers with less work per follower, so its latency is this machine's floor
//!   for broadcasting, measured beside tailsrv with the same writer and readers.
//! - [`ThreadFloor`]: the other latency floor, the classic design (tailsrv 0.8): one thread
//!   per follower parked on a condition variable, woken by a thread that blocks in `read` on
//!   inotify; each follower's thread then `sendfile`s what is new. One hand-off per append
//!   (inotify thread → follower thread), a thread and its stack per follower.
//!
//! All are stopped by [`Drop`]: the accept loop is woken by a connection to itself, client
//! sockets are shut down so their threads' blocking calls return, and every thread is joined.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::run::Result;

/// Small stacks: these threads only sit in one syscall.
const STACK: usize = 64 << 10;

/// What a client thread does with its connection.
type Serve = Arc<dyn Fn(&mut TcpStream) -> io::Result<()> + Send + Sync>;

/// Every client thread and a handle on its socket, to shut it down and join it.
type Registry = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// Shuts every registered client's socket down, then joins its thread.
fn release(clients: &Registry) {
    let clients = std::mem::take(&mut *clients.lock().unwrap());
    for (sock, _) in &clients {
        let _ = sock.shutdown(Shutdown::Both);
    }
    for (_, t) in clients {
        let _ = t.join();
    }
}

/// A blocking, thread-per-connection server on 127.0.0.1.
struct ThreadServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    clients: Registry,
}

impl ThreadServer {
    fn start(serve: Serve) -> Result<ThreadServer> {
        // std's listener: backlog 128, as a naive server gets.
        let listener =
            TcpListener::bind((tests::LOOPBACK, 0)).map_err(|e| format!("binding: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Registry = Arc::default();
        let accept = {
            let (stop, clients) = (stop.clone(), clients.clone());
            std::thread::spawn(move || {
                let mut since_reap = 0u32;
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut sock) = conn else { continue };
                    let Ok(handle) = sock.try_clone() else {
                        continue;
                    };
                    let serve = serve.clone();
                    let spawned = std::thread::Builder::new()
                        .stack_size(STACK)
                        .spawn(move || {
                            let _ = sock.set_nodelay(true);
                            let _ = serve(&mut sock);
                            // The registry's clone keeps the fd open: end the connection here.
                            let _ = sock.shutdown(Shutdown::Both);
                        });
                    let Ok(t) = spawned else { continue };
                    let mut clients = clients.lock().unwrap();
                    clients.push((handle, t));
                    since_reap += 1;
                    if since_reap == 256 {
                        since_reap = 0;
                        // Close the registry's fds of clients that are gone.
                        clients.retain(|(_, t)| !t.is_finished());
                    }
                }
            })
        };
        Ok(ThreadServer {
            addr,
            stop,
            accept: Some(accept),
            clients,
        })
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        release(&self.clients);
    }
}

/// The blocking sendfile baseline: `N\n` or `-N\n`, then the file from there to its end.
pub struct SendfileServer(ThreadServer);

impl SendfileServer {
    pub fn start(path: &Path) -> Result<SendfileServer> {
        let file =
            Arc::new(File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?);
        let serve: Serve = Arc::new(move |sock: &mut TcpStream| {
            let line = read_line(sock)?;
            let len = file.metadata()?.len();
            let mut offset = match line.strip_prefix('-') {
                Some(n) => len.saturating_sub(n.parse().map_err(io::Error::other)?),
                None => line.parse().map_err(io::Error::other)?,
            };
            while offset < len {
                let count = (len - offset) as usize;
                let n = rustix::fs::sendfile(&*sock, &*file, Some(&mut offset), count)?;
                if n == 0 {
                    break;
                }
            }
            Ok(())
        });
        ThreadServer::start(serve).map(SendfileServer)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

/// The trivial query baseline: every request line gets its last word back as the answer.
pub struct Responder(ThreadServer);

impl Responder {
    pub fn start() -> Result<Responder> {
        let serve: Serve = Arc::new(|sock: &mut TcpStream| {
            let mut buf = vec![0u8; 64 << 10];
            let mut have = 0;
            let mut out = Vec::with_capacity(64 << 10);
            loop {
                let n = sock.read(&mut buf[have..])?;
                if n == 0 {
                    return Ok(());
                }
                have += n;
                let mut start = 0;
                while let Some(nl) = buf[start..have].iter().position(|&b| b == b'\n') {
                    let line = &buf[start..start + nl];
                    let word = line.rsplit(|&b| b == b' ').next().unwrap_or(b"0");
                    out.extend_from_slice(word);
                    out.push(b'\n');
                    start += nl + 1;
                }
                buf.copy_within(start..have, 0);
                have -= start;
                if have == buf.len() {
                    return Err(io::Error::other("request line too long"));
                }
                sock.write_all(&out)?;
                out.clear();
            }
        });
        ThreadServer::start(serve).map(Responder)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

/// Name of the broadcaster's sending thread, for counting its CPU in /proc/self/task.
pub const FLOOR_THREAD: &str = "floor-send";

/// Followers accepted by the [`Broadcaster`], each with the offset it has been sent up to.
type Followers = Arc<Mutex<Vec<(TcpStream, u64)>>>;

/// The latency floor: after each append, one thread `sendfile`s the new bytes to every
/// follower in turn. Blocking sockets, `TCP_NODELAY` like tailsrv; no readiness, no executor,
/// no hang-up detection: a follower is dropped only when a send to it fails. The header line
/// is not even read: a follower starts at the end of the file as it is when accepted, which
/// is what `-0` asks for.
pub struct Broadcaster {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wake: Option<SyncSender<()>>,
    accept: Option<JoinHandle<()>>,
    send: Option<JoinHandle<()>>,
    followers: Followers,
}

/// A 127.0.0.1 listener on a free port with a backlog as large as tailsrv's, so attaching
/// thousands of followers at once costs a floor no SYN retransmits either.
fn floor_listener() -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    sock.listen(65_535)?;
    Ok(TcpListener::from(sock))
}

/// Accepts connections on its own thread until `stop` (checked after each accept), handing
/// each to `each` with TCP_NODELAY set.
fn accept_each(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    mut each: impl FnMut(TcpStream) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(sock) = conn else { continue };
            let _ = sock.set_nodelay(true);
            each(sock);
        }
    })
}

impl Broadcaster {
    pub fn start(path: &Path) -> Result<Broadcaster> {
        let file =
            Arc::new(File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?);
        let listener = floor_listener().map_err(|e| format!("floor listener: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let followers: Followers = Arc::default();
        let accept = {
            let (followers, file) = (followers.clone(), file.clone());
            accept_each(listener, stop.clone(), move |sock| {
                if let Ok(meta) = file.metadata() {
                    followers.lock().unwrap().push((sock, meta.len()));
                }
            })
        };
        // One pending wake is enough: the sender reads the file's length after waking, so
        // appends made while it was busy go out in the same round.
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let send = {
            let followers = followers.clone();
            std::thread::Builder::new()
                .name(FLOOR_THREAD.into())
                .spawn(move || {
                    while woken.recv().is_ok() {
                        let Ok(meta) = file.metadata() else { break };
                        let len = meta.len();
                        let mut followers = followers.lock().unwrap();
                        followers.retain_mut(|(sock, offset)| {
                            while *offset < len {
                                let count = (len - *offset) as usize;
                                match rustix::fs::sendfile(&*sock, &*file, Some(offset), count) {
                                    Ok(0) | Err(_) => return false,
                                    Ok(_) => {}
                                }
                            }
                            true
                        });
                    }
                })
                .map_err(|e| format!("spawning the floor's sender: {e}"))?
        };
        Ok(Broadcaster {
            addr,
            stop,
            wake: Some(wake),
            accept: Some(accept),
            send: Some(send),
            followers,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Called by the writer right after each append.
    pub fn wake(&self) {
        if let Some(w) = &self.wake {
            // Full means a wake is already pending: that round sends this append too.
            let _ = w.try_send(());
        }
    }
}

impl Drop for Broadcaster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Closing the channel ends the sender's loop.
        self.wake = None;
        if let Some(t) = self.send.take() {
            let _ = t.join();
        }
        self.followers.lock().unwrap().clear();
    }
}

/// Name prefix of the [`ThreadFloor`]'s threads, for counting their CPU.
pub const THREAD_FLOOR_THREAD: &str = "tpc-floor";

/// What the inotify thread of a [`ThreadFloor`] shares with the follower threads: how many
/// batches of events it has seen, and whether to stop.
#[derive(Default)]
struct Generation {
    seen: u64,
    stop: bool,
}

type Shared = Arc<(Mutex<Generation>, std::sync::Condvar)>;

/// The thread-per-follower floor (see the module docs). Followers start at the end of the
/// file as it is when accepted, like the [`Broadcaster`]'s; a follower's thread ends when a
/// send fails.
pub struct ThreadFloor {
    addr: SocketAddr,
    path: std::path::PathBuf,
    shared: Shared,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    watch: Option<JoinHandle<()>>,
    clients: Registry,
}

impl ThreadFloor {
    pub fn start(path: &Path) -> Result<ThreadFloor> {
        use rustix::fs::inotify;
        let file =
            Arc::new(File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?);
        let listener = floor_listener().map_err(|e| format!("thread floor listener: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC)
            .map_err(|e| format!("inotify_init: {e}"))?;
        inotify::add_watch(
            &ino,
            path,
            inotify::WatchFlags::MODIFY | inotify::WatchFlags::CLOSE_WRITE,
        )
        .map_err(|e| format!("inotify_add_watch: {e}"))?;
        let shared: Shared = Arc::default();
        let watch = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("{THREAD_FLOOR_THREAD}-ino"))
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match rustix::io::read(&ino, &mut buf) {
                            Ok(_) => {}
                            Err(rustix::io::Errno::INTR) => continue,
                            Err(_) => return,
                        }
                        let (lock, cv) = &*shared;
                        let mut g = lock.lock().unwrap();
                        g.seen += 1;
                        cv.notify_all();
                        if g.stop {
                            return;
                        }
                    }
                })
                .map_err(|e| format!("spawning the inotify thread: {e}"))?
        };
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Registry = Arc::default();
        let accept = {
            let (clients, shared) = (clients.clone(), shared.clone());
            accept_each(listener, stop.clone(), move |sock| {
                let Ok(handle) = sock.try_clone() else {
                    return;
                };
                let Ok(meta) = file.metadata() else { return };
                let (file, shared) = (file.clone(), shared.clone());
                let mut offset = meta.len();
                let spawned = std::thread::Builder::new()
                    .name(format!("{THREAD_FLOOR_THREAD}-f"))
                    .stack_size(STACK)
                    .spawn(move || {
                        let mut seen = 0;
                        loop {
                            {
                                let (lock, cv) = &*shared;
                                let mut g = lock.lock().unwrap();
                                while g.seen == seen && !g.stop {
                                    g = cv.wait(g).unwrap();
                                }
                                if g.stop {
                                    return;
                                }
                                seen = g.seen;
                            }
                            let Ok(meta) = file.metadata() else { return };
                            let len = meta.len();
                            while offset < len {
                                let count = (len - offset) as usize;
                                match rustix::fs::sendfile(&sock, &*file, Some(&mut offset), count)
                                {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {}
                                }
                            }
                        }
                    });
                if let Ok(t) = spawned {
                    clients.lock().unwrap().push((handle, t));
                }
            })
        };
        Ok(ThreadFloor {
            addr,
            path: path.to_owned(),
            shared,
            stop,
            accept: Some(accept),
            watch: Some(watch),
            clients,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ThreadFloor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        {
            let (lock, cv) = &*self.shared;
            lock.lock().unwrap().stop = true;
            cv.notify_all();
        }
        // Wake the inotify thread's read: opening for writing and closing is IN_CLOSE_WRITE.
        drop(std::fs::OpenOptions::new().append(true).open(&self.path));
        if let Some(t) = self.watch.take() {
            let _ = t.join();
        }
        release(&self.clients);
    }
}

/// Reads one header line (at most 64 bytes), byte by byte: the client sends nothing after it.
fn read_line(sock: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8];
    while line.len() < 64 {
        if sock.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            return String::from_utf8(line).map_err(io::Error::other);
        }
        line.push(byte[0]);
    }
    Err(io::Error::other("header too long"))
}

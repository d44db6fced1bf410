//! The harness for the end-to-end tests (`tests/tests/e2e/`) and the bench: start the real
//! binaries, learn their port from the `listening on ADDR` log line, talk to them over real
//! sockets on [`LOOPBACK`], stop them by pid.
//!
//! What is here, once: the starters of every binary ([`tailsrv`], [`indexer`], [`collator`],
//! [`tscat`], [`tsmirror`], [`tswrite`], [`tsbridge`]) and the one child wrapper under them
//! ([`Spawn`], [`Proc`]); the clients ([`Proc::request`] for tailsrv, [`LineClient`] for the
//! indexer and the collator); the loopback address; the PRNG ([`Rng`]); the tests' own framing
//! code ([`framed`]); LazyFS ([`lazyfs`]) and NATS ([`nats`]) for the tests that need them.
//!
//! The binaries are the ones cargo built next to the test executable (`target/<profile>/`);
//! the README's test command builds them first (`cargo build --workspace`).

mod child;
pub mod framed;
pub mod lazyfs;
mod line;
pub mod lines;
pub mod nats;
mod rng;
mod starters;

pub use child::{Log, Proc, Spawn};
pub use line::LineClient;
pub use rng::{random_bytes, seed, Rng};
pub use starters::{collator, indexer, tailsrv, tsbridge, tscat, tsmirror, tswrite};

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The one address the tests bind and dial: the IPv4 loopback (never another interface).
pub const LOOPBACK: &str = "127.0.0.1";

/// `LOOPBACK:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A free loopback port (bound, then released for a server to take; or, left alone, a port
/// nothing listens on).
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// [`free_port`] that reports failure instead of panicking (the bench's way).
pub fn try_free_port() -> Result<u16, String> {
    TcpListener::bind((LOOPBACK, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Owned strings from string slices (argument lists built up by a test).
pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Generous bound for anything a busy 2-core CI machine should do "at once".
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Path of a workspace binary built by cargo for the same profile as the running program:
/// next to it (the bench, `target/release/bench`) or one directory up (a test executable,
/// `target/<profile>/deps/TEST`).
pub fn bin_path(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let dir = exe.parent().ok_or("this executable has no directory")?;
    for candidate in [Some(dir), dir.parent()].into_iter().flatten() {
        let path = candidate.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(format!(
        "{name} is not built next to {}: run `cargo build --workspace` first (the README's \
         test command does; the bench needs `cargo build --release --workspace`)",
        exe.display()
    ))
}

/// [`bin_path`], for tests: a binary that is not built fails the test with that message.
pub fn bin(name: &str) -> PathBuf {
    bin_path(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Raises this process's open-file limit to its hard limit (tests with many clients). Every
/// test of the binary shares the limit; it is only ever raised, never lowered (a server that
/// must run short of descriptors gets its own limit: [`Spawn::fd_limit`]).
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A scratch directory removed at the end of the test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tailsrv-test-")
        .tempdir()
        .expect("tempdir")
}

/// Reads exactly `n` bytes from `s`, failing the test after [`PATIENCE`].
pub fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// Leaves for real: closes `s` with a reset (SO_LINGER 0), as a killed process with unread
/// input does. A plain close (a FIN) looks like a half-close to a server until it next sends.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// [`read_to_end`] as text (a server's error answer: one line, then EOF).
pub fn read_text(s: &mut TcpStream) -> String {
    String::from_utf8(read_to_end(s)).expect("UTF-8 text")
}

/// Reads until the peer closes (or [`PATIENCE`] runs out, which fails the test).
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("reading to end: {e}"));
    buf
}

/// Waits until `cond` holds, polling every few milliseconds; false after `timeout`.
/// For outside state that has no event to wait on (a process's fd count, a file's length).
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Appends `data` to the file at `path` (opened, written, closed: as a logging writer would).
pub fn append(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.write_all(data).unwrap();
}

/// The last synced length a collator published in `FILE.synced` (0 before the first), read
/// with the tests' own decoder of its 8-byte big-endian records, not the collator's code.
pub fn synced(file: &Path) -> u64 {
    let mut p = file.as_os_str().to_owned();
    p.push(".synced");
    let b = std::fs::read(p).unwrap_or_default();
    let n = b.len() / 8;
    if n == 0 {
        return 0;
    }
    u64::from_be_bytes(b[(n - 1) * 8..n * 8].try_into().unwrap())
}

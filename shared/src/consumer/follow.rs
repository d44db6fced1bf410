//! One logical stream over many TCP connections: connect, follow, and on any failure
//! reconnect at the exact byte reached, failing over along a list of servers.
//!
//! Why this is exact: tailsrv sends the file's bytes from the requested offset, in order, and
//! nothing else, so `start + bytes received` is the offset of the next byte, and asking the
//! next server (or the same one, restarted) for that offset continues the stream seamlessly.
//! A server that is behind (a replica still catching up) simply holds the connection until
//! its file reaches the offset: the consumer waits rather than skips.
//!
//! The details that make it robust:
//! - Failures rotate to the next server at once; a full round of failures sleeps with capped
//!   exponential backoff, so a restarting server is retried quickly and a dead cluster is
//!   not hammered. The backoff resets once a connection delivers data.
//! - TCP keepalive notices a server that vanished without a FIN (power loss, partition)
//!   even while the file is quiet, which is when nothing else would.
//! - Reads time out every `tick` so the caller can notice signals and checkpoint while idle.
//! - The only thing tailsrv sends that is not file data is a refusal (`error: too many
//!   clients`) as the very first bytes of a connection, followed by a close. The first bytes
//!   of each connection are held while they could be such a line; they are released as data
//!   as soon as they cannot be (or after a short grace, for a file that happens to contain a
//!   half-written "error: " at that very offset).
//! - A refusal says either "not now" (too many clients, the server's watch limit: retried
//!   like any failure) or "no" (a path that is not served, a request for the other mode:
//!   asking again cannot help). Once every server has said no, following fails with
//!   [`Error::Refused`] instead of retrying until the give-up time.
//! - With a [`Config::path`] the request is directory mode's `stream PATH from byte N`;
//!   everything else is the same.
//! - The client never shuts down its write side: tailsrv takes a FIN as a hang-up.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};

use crate::header::Start;

/// The prefix of tailsrv's refusal line.
const ERROR_PREFIX: &[u8] = b"error: ";
/// Longest refusal line we wait for; tailsrv's are far shorter.
const MAX_ERROR_LINE: usize = 256;
/// How long the first bytes of a connection are held while they look like a refusal.
const PROBE_GRACE: Duration = Duration::from_secs(2);

/// When to give up on reaching a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Retry {
    /// Try each server once; a lost connection is an error.
    Never,
    /// Keep trying until no server has worked for this long.
    GiveUpAfter(Duration),
    /// Keep trying forever.
    Forever,
}

/// How to follow.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST:PORT` of each server, in order of preference.
    pub servers: Vec<String>,
    /// The file to follow, for servers in directory mode (`None`: single-file mode).
    pub path: Option<String>,
    pub retry: Retry,
    /// First and longest pause after a full round of failed attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Longest a [`Follower::read`] blocks before returning [`Event::Idle`].
    pub tick: Duration,
    pub connect_timeout: Duration,
    /// Keepalive: idle time before the first probe, between probes, probes before giving up.
    pub keepalive_time: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_retries: u32,
}

impl Config {
    /// Defaults that suit a consumer: quick first retry, 5 s cap, dead peers noticed in ~25 s.
    pub fn new(servers: Vec<String>, retry: Retry) -> Config {
        Config {
            servers,
            path: None,
            retry,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            tick: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            keepalive_time: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_retries: 3,
        }
    }
}

/// What a read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// This many bytes were placed at the start of the buffer.
    Data(usize),
    /// Nothing arrived within a tick (the stream is quiet, or a reconnect is under way).
    Idle,
    /// The stop flag was raised.
    Stopped,
}

/// Why following failed for good.
#[derive(Debug)]
pub enum Error {
    /// No server could be reached (or each refused) within the retry policy.
    Unreachable {
        /// The last failure seen for each server, `server: reason`.
        failures: Vec<String>,
        gave_up_after: Option<Duration>,
    },
    /// The connection was lost with retries off.
    Lost {
        server: String,
        offset: u64,
        reason: String,
    },
    /// Every server refused the request for good (the path is not served, or the server is
    /// in the other mode); each `server: reason`.
    Refused { refusals: Vec<String> },
    /// The connection was lost and the start was relative (`-N`, `-0`), resolved by the
    /// server without telling us where: resuming would guess, so we stop.
    PositionUnknown {
        server: String,
        received: u64,
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable {
                failures,
                gave_up_after,
            } => {
                match gave_up_after {
                    Some(d) => write!(
                        f,
                        "no server reachable, gave up after {:.1}s",
                        d.as_secs_f64()
                    )?,
                    None => f.write_str("no server reachable (retries off)")?,
                }
                write!(f, ": {}", failures.join("; "))
            }
            Error::Refused { refusals } => {
                write!(f, "refused by the server: {}", refusals.join("; "))
            }
            Error::Lost {
                server,
                offset,
                reason,
            } => write!(
                f,
                "connection to {server} lost at offset {offset} ({reason}), retries off"
            ),
            Error::PositionUnknown {
                server,
                received,
                reason,
            } => write!(
                f,
                "connection to {server} lost ({reason}) after {received} bytes of a stream that \
                 started at a relative position (last N bytes / end), which tailsrv does not \
                 report: it cannot be resumed exactly. Start at a byte or message (or give an \
                 indexer) for a resumable stream"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// An open connection to one server.
struct Conn {
    stream: TcpStream,
    server: usize,
    /// The connection's first bytes while they may still be a refusal line.
    probe: Option<(Vec<u8>, Instant)>,
}

/// A stream that survives server restarts and failures. See the module docs.
pub struct Follower {
    cfg: Config,
    /// What to ask the next connection for. Rebased to the absolute position on reconnect.
    next: Start,
    /// Bytes handed out since `next` was set.
    received: u64,
    conn: Option<Conn>,
    /// Index of the server to use (sticky until it fails).
    current: usize,
    /// Failed attempts since the last success, and the pause after the next full round.
    failed: usize,
    /// Failed attempts in the current round over the server list.
    round: usize,
    backoff: Duration,
    last_good: Instant,
    failures: Vec<Option<String>>,
    /// Servers that refused for good since the last data, with their reason.
    refusals: Vec<Option<String>>,
    /// Bytes received but not yet handed out (a released probe).
    pending: Vec<u8>,
    stop: Arc<AtomicBool>,
}

impl Follower {
    /// A follower that starts at `start` and stops when `stop` is raised.
    ///
    /// Panics if `cfg.servers` is empty (the caller's argument check).
    pub fn new(cfg: Config, start: Start, stop: Arc<AtomicBool>) -> Follower {
        assert!(
            !cfg.servers.is_empty(),
            "a follower needs at least one server"
        );
        Follower {
            failures: vec![None; cfg.servers.len()],
            refusals: vec![None; cfg.servers.len()],
            backoff: cfg.backoff_min,
            cfg,
            next: start,
            received: 0,
            conn: None,
            current: 0,
            failed: 0,
            round: 0,
            last_good: Instant::now(),
            pending: Vec::new(),
            stop,
        }
    }

    /// Absolute offset of the next byte [`Follower::read`] will return, when known (it is not
    /// for a relative start: the server resolved it and did not say where).
    pub fn position(&self) -> Option<u64> {
        match self.next {
            Start::Byte(b) => Some(b + self.received),
            Start::FromEnd(_) => None,
        }
    }

    /// The position for log lines.
    fn at(&self) -> String {
        match self.next {
            Start::Byte(b) => (b + self.received).to_string(),
            Start::FromEnd(n) => format!("-{n}+{}", self.received),
        }
    }

    /// The server currently (or last) in use.
    pub fn server(&self) -> &str {
        &self.cfg.servers[self.current]
    }

    /// Reads the next bytes of the stream into `buf`, reconnecting as needed.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Event, Error> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(Event::Stopped);
            }
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                return Ok(self.delivered(n));
            }
            if self.conn.is_none() {
                match self.connect()? {
                    Some(conn) => self.conn = Some(conn),
                    None => return Ok(Event::Stopped),
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            let mut probe_buf = [0u8; MAX_ERROR_LINE];
            let target: &mut [u8] = if conn.probe.is_some() {
                &mut probe_buf
            } else {
                buf
            };
            match (&conn.stream).read(target) {
                Ok(0) => {
                    if let Some((bytes, _)) = conn.probe.take() {
                        if is_refusal(&bytes) {
                            let line = String::from_utf8_lossy(&bytes).trim().to_owned();
                            let reason = line.strip_prefix("error:").unwrap_or(&line).trim();
                            if !is_transient(reason) {
                                let server = conn.server;
                                self.refused_for_good(server, reason)?;
                            }
                            self.lost(format!("refused: {line}"), true)?;
                            continue;
                        }
                        // Real data that happened to look like a refusal's start. EOF is
                        // sticky, so the next read sees it again after these bytes.
                        self.pending = bytes;
                        continue;
                    }
                    self.lost("server closed the connection".to_owned(), false)?;
                }
                Ok(n) => {
                    let Some((bytes, _)) = &mut conn.probe else {
                        return Ok(self.delivered(n));
                    };
                    bytes.extend_from_slice(&probe_buf[..n]);
                    if !may_be_refusal(bytes) {
                        self.pending = conn.probe.take().expect("probing").0;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    match &conn.probe {
                        Some((bytes, since)) if since.elapsed() >= PROBE_GRACE => {
                            self.pending = bytes.clone();
                            conn.probe = None;
                            continue;
                        }
                        Some(_) => {}
                        // A quiet but healthy connection counts as working.
                        None => self.last_good = Instant::now(),
                    }
                    return Ok(Event::Idle);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.lost(e.to_string(), false)?,
            }
        }
    }

    /// Accounts for `n` bytes handed out.
    fn delivered(&mut self, n: usize) -> Event {
        self.received += n as u64;
        self.last_good = Instant::now();
        self.failed = 0;
        self.round = 0;
        self.backoff = self.cfg.backoff_min;
        if self.refusals.iter().any(Option::is_some) {
            self.refusals.fill(None);
        }
        Event::Data(n)
    }

    /// Records a refusal that asking again cannot change; fails once every server refused.
    fn refused_for_good(&mut self, server: usize, reason: &str) -> Result<(), Error> {
        self.refusals[server] = Some(reason.to_owned());
        if self.refusals.iter().any(Option::is_none) {
            return Ok(());
        }
        let refusals = self
            .cfg
            .servers
            .iter()
            .zip(&self.refusals)
            .filter_map(|(s, r)| r.as_ref().map(|r| format!("{s}: {r}")))
            .collect();
        self.conn = None;
        Err(Error::Refused { refusals })
    }

    /// Drops the connection after a failure; errors when the stream cannot be resumed.
    fn lost(&mut self, reason: String, refused: bool) -> Result<(), Error> {
        let conn = self.conn.take().expect("lost a connection we had");
        let server = self.cfg.servers[conn.server].clone();
        self.failures[conn.server] = Some(reason.clone());
        match self.next {
            // A refusal came before the server resolved anything: asking again is safe.
            Start::FromEnd(_) if !refused => {
                return Err(Error::PositionUnknown {
                    server,
                    received: self.received,
                    reason,
                })
            }
            Start::FromEnd(_) => {}
            Start::Byte(b) => {
                self.next = Start::Byte(b + self.received);
                self.received = 0;
            }
        }
        if self.cfg.retry == Retry::Never && !refused {
            return Err(Error::Lost {
                server,
                offset: self.position().unwrap_or_default(),
                reason,
            });
        }
        let at = self.at();
        log::warn!(server = server.as_str(), offset = at.as_str(); "{reason}; reconnecting");
        self.current = (self.current + 1) % self.cfg.servers.len();
        self.failed += 1;
        self.round += 1;
        Ok(())
    }

    /// Connects to the current server, rotating and backing off until one answers. `None`
    /// when the stop flag was raised meanwhile.
    fn connect(&mut self) -> Result<Option<Conn>, Error> {
        let n = self.cfg.servers.len();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let give_up = match self.cfg.retry {
                Retry::Never => self.failed >= n,
                Retry::GiveUpAfter(d) => self.failed > 0 && self.last_good.elapsed() >= d,
                Retry::Forever => false,
            };
            if give_up {
                return Err(Error::Unreachable {
                    failures: self
                        .cfg
                        .servers
                        .iter()
                        .zip(&self.failures)
                        .filter_map(|(s, f)| f.as_ref().map(|f| format!("{s}: {f}")))
                        .collect(),
                    gave_up_after: match self.cfg.retry {
                        Retry::GiveUpAfter(d) => Some(d),
                        _ => None,
                    },
                });
            }
            // After a full round of failures, pause before the next.
            if self.round >= n {
                self.round = 0;
                if !self.sleep(self.backoff) {
                    return Ok(None);
                }
                self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
            }
            let i = self.current;
            let server = &self.cfg.servers[i];
            match self.open(server) {
                Ok(stream) => {
                    // A recovery is as worth seeing as the failure that preceded it.
                    let level = if self.failed > 0 {
                        log::Level::Warn
                    } else {
                        log::Level::Info
                    };
                    let at = self.at();
                    log::log!(level, server = server.as_str(), offset = at.as_str(); "{}", if self.failed > 0 { "reconnected" } else { "connected" });
                    return Ok(Some(Conn {
                        stream,
                        server: i,
                        probe: Some((Vec::new(), Instant::now())),
                    }));
                }
                Err(e) => {
                    log::warn!(server = server.as_str(); "cannot connect: {e}");
                    self.failures[i] = Some(e.to_string());
                    self.current = (i + 1) % n;
                    self.failed += 1;
                    self.round += 1;
                }
            }
        }
    }

    /// One connection attempt: connect, set options, send the header.
    fn open(&self, server: &str) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        let mut stream = None;
        for addr in server.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.cfg.connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or(last)?;
        let keepalive = TcpKeepalive::new()
            .with_time(self.cfg.keepalive_time)
            .with_interval(self.cfg.keepalive_interval)
            .with_retries(self.cfg.keepalive_retries);
        SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        stream.set_read_timeout(Some(self.cfg.tick))?;
        stream.set_write_timeout(Some(self.cfg.connect_timeout))?;
        let start = match self.next {
            Start::Byte(b) => (b + self.received).to_string(),
            Start::FromEnd(n) => format!("-{n}"),
        };
        let header = match &self.cfg.path {
            Some(path) => format!("stream {path} from byte {start}\n"),
            None => format!("{start}\n"),
        };
        (&stream).write_all(header.as_bytes())?;
        Ok(stream)
    }

    /// Sleeps `d` in ticks, watching the stop flag. False when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return true;
            };
            std::thread::sleep(left.min(self.cfg.tick));
        }
    }
}

/// Whether `bytes` (a connection's first bytes) could still become a refusal line.
fn may_be_refusal(bytes: &[u8]) -> bool {
    if bytes.len() < ERROR_PREFIX.len() {
        return ERROR_PREFIX.starts_with(bytes);
    }
    if !bytes.starts_with(ERROR_PREFIX) {
        return false;
    }
    match memchr::memchr(b'\n', bytes) {
        // A complete line: a refusal only if nothing follows it.
        Some(i) => i + 1 == bytes.len(),
        None => bytes.len() < MAX_ERROR_LINE,
    }
}

/// Whether a refusal (the text after `error: `) means "not now" rather than "no": the
/// server is at its client limit or its inotify watch limit. Anything else (a path that is
/// not served, a request the server does not understand because it is in the other mode)
/// would be refused again.
fn is_transient(reason: &str) -> bool {
    reason == "too many clients"
        || reason.ends_with("(inotify watch limit)")
        || reason.starts_with("no complete header within")
}

/// Whether `bytes`, followed by the server's close, is a refusal.
fn is_refusal(bytes: &[u8]) -> bool {
    bytes.starts_with(ERROR_PREFIX) && memchr::memchr(b'\n', bytes) == Some(bytes.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_probe() {
        assert!(may_be_refusal(b""));
        assert!(may_be_refusal(b"err"));
        assert!(may_be_refusal(b"error: too many"));
        assert!(may_be_refusal(b"error: too many clients\n"));
        assert!(!may_be_refusal(b"error: too many clients\nx"));
        assert!(!may_be_refusal(b"errx"));
        assert!(!may_be_refusal(b"hello"));
        assert!(!may_be_refusal(&[b'e'; 300]));
        assert!(is_refusal(b"error: too many clients\n"));
        assert!(!is_refusal(b"error: too many"));
        assert!(!is_refusal(b"error: a\nb"));
        assert!(is_transient("too many clients"));
        assert!(is_transient(
            "\"a.log\": cannot follow: the server is following too many files (inotify watch limit)"
        ));
        assert!(!is_transient("\"x\": path is excluded by an .ignore file"));
        assert!(!is_transient(
            "header is not an integer byte offset (N or -N): \"stream x\""
        ));
    }
}

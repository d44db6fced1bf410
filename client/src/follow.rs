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
//! - Every request asks for a confirmation (` ok`, see `proto::request`): the server answers
//!   `ok N LEN` with the absolute offset it starts at and the file's length then, or a
//!   refusal line, before any data. So file
//!   content can never be mistaken for a refusal, and a relative start (`-N`, `-0`) becomes
//!   an absolute position as soon as the first server confirms it: it is resumable too.
//! - A refusal's code says either "not now" ([`proto::Code::is_transient`]: busy, the
//!   server's watch limit: retried like any failure) or "no" (a path that is not served, a
//!   request for the other mode: asking again cannot help). Once every server has said no,
//!   following fails with [`Error::Refused`] instead of retrying until the give-up time.
//! - With a [`Config::path`] the request is directory mode's `stream PATH from byte N`;
//!   everything else is the same.
//! - A segmented log whose retention deleted the position answers `gone`. The log start is
//!   then asked the structured way, `-0 ok` (its `ok N LEN START`), never read out of the
//!   refusal's prose. Once every server said no and at least one said `gone`,
//!   [`Config::on_gone`] decides: [`OnGone::Fail`] ends following with [`Error::Gone`]
//!   (position and log start); [`OnGone::Earliest`] logs the bytes skipped, continues from
//!   the log start and hands out [`Event::Skipped`] first, so the caller can restart its
//!   framing there.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::request::{Confirmation, StreamRequest};
use proto::{Code, Refusal, Request, Start};
use socket2::{SockRef, TcpKeepalive};

/// Longest confirmation or refusal line we wait for; tailsrv's are far shorter.
const MAX_ANSWER_LINE: usize = 8192;

/// Checks that `addr` is a `HOST:PORT` this machine can resolve now, so a typo is a usage
/// error at once rather than 300 s of retries. `what` names the address in the message.
///
/// Resolution failures later (a name that stops resolving while following) are retried like
/// any other failure.
pub fn check_address(what: &str, addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "{what} {addr:?} is not HOST:PORT (the port is missing)"
        ));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!(
            "{what} {addr:?} is not HOST:PORT (the host is missing)"
        ));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "{what} {addr:?} is not HOST:PORT ({port:?} is not a port number)"
        ));
    }
    match addr.to_socket_addrs() {
        Ok(addrs) if addrs.len() > 0 => Ok(()),
        Ok(_) => Err(format!("{what} {addr:?} resolves to no address")),
        Err(e) => Err(format!("{what} {addr:?} cannot be resolved: {e}")),
    }
}

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
    /// When to give up.
    pub retry: Retry,
    /// First pause after a full round of failed attempts.
    pub backoff_min: Duration,
    /// Longest pause after a full round of failed attempts.
    pub backoff_max: Duration,
    /// Longest a [`Follower::read`] blocks before returning [`Event::Idle`].
    pub tick: Duration,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// Keepalive: idle time before the first probe.
    pub keepalive_time: Duration,
    /// Keepalive: time between probes.
    pub keepalive_interval: Duration,
    /// Keepalive: unanswered probes before the connection is declared dead.
    pub keepalive_retries: u32,
    /// What to do when retention deleted the position (the servers answer `gone`).
    pub on_gone: OnGone,
}

/// What a consumer does when its position was deleted by retention (`--on-gone`; Kafka's
/// `auto.offset.reset` `none` and `earliest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnGone {
    /// Stop with [`Error::Gone`], naming the position and the log start.
    #[default]
    Fail,
    /// Continue from the log start, logging the bytes skipped ([`Event::Skipped`]).
    Earliest,
}

impl OnGone {
    /// The names `--on-gone` takes, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["fail", "earliest"];
}

impl std::str::FromStr for OnGone {
    type Err = String;

    fn from_str(s: &str) -> Result<OnGone, String> {
        match s {
            "fail" => Ok(OnGone::Fail),
            "earliest" => Ok(OnGone::Earliest),
            _ => Err(format!("{s:?} is not one of: fail, earliest")),
        }
    }
}

impl fmt::Display for OnGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAMES[*self as usize])
    }
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
            on_gone: OnGone::Fail,
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
    /// Retention deleted bytes `from..to` before they were read and [`OnGone::Earliest`]
    /// skipped them: the next byte handed out is `to`, the log start (already logged).
    Skipped {
        /// The position that was deleted.
        from: u64,
        /// The log start, where the stream continues.
        to: u64,
    },
}

/// Why following failed for good.
#[derive(Debug)]
pub enum Error {
    /// No server could be reached (or each refused) within the retry policy.
    Unreachable {
        /// The last failure seen for each server, `server: reason`.
        failures: Vec<String>,
        /// How long was tried (`None`: retries were off).
        gave_up_after: Option<Duration>,
    },
    /// The connection was lost with retries off.
    Lost {
        /// The server that was lost.
        server: String,
        /// The offset of the next byte that would have been read.
        offset: u64,
        /// What failed.
        reason: String,
    },
    /// Retention deleted the position on every server that has the log (they answered
    /// `gone`), and [`OnGone::Fail`] was asked for (or the log start could not be learnt).
    Gone {
        /// The server that told us where the log starts (the last to answer `gone`).
        server: String,
        /// The position asked for: the first byte not read yet (the checkpoint).
        offset: u64,
        /// Where the log starts now (its `ok N LEN START`), when a server said.
        start: Option<u64>,
    },
    /// Every server refused the request for good (the path is not served, or the server is
    /// in the other mode).
    Refused {
        /// Each server and its refusal.
        refusals: Vec<(String, Refusal)>,
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
                f.write_str("refused by the server: ")?;
                for (i, (server, refusal)) in refusals.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}{server}: {refusal}")?;
                }
                Ok(())
            }
            Error::Gone {
                server,
                offset,
                start: Some(start),
            } => write!(
                f,
                "the checkpoint, byte {offset} (the position to resume from), was deleted by retention: {server} \
                 starts the log at byte {start} (--on-gone earliest continues from there, \
                 skipping bytes {offset}..{start})"
            ),
            Error::Gone {
                server,
                offset,
                start: None,
            } => write!(
                f,
                "the checkpoint, byte {offset} (the position to resume from), was deleted by retention \
                 ({server} answered gone; where the log starts now could not be learnt)"
            ),
            Error::Lost {
                server,
                offset,
                reason,
            } => write!(
                f,
                "connection to {server} lost at offset {offset} ({reason}), retries off"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// An open connection to one server.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    server: usize,
    /// The server's answer line while it is incomplete (`None` once confirmed).
    answer: Option<Vec<u8>>,
}

/// A stream that survives server restarts and failures. See the module docs.
#[derive(Debug)]
pub struct Follower {
    cfg: Config,
    /// What to ask the next connection for. Relative until a server confirmed where it
    /// starts; rebased to the absolute position on reconnect.
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
    /// Servers that refused for good since the last data, with their refusal.
    refusals: Vec<Option<Refusal>>,
    /// For each server that answered `gone`: where it said the log starts (`None` inside:
    /// it could not say).
    log_starts: Vec<Option<Option<u64>>>,
    /// A skip to hand out before any data (`OnGone::Earliest`).
    skipped: Option<(u64, u64)>,
    /// Bytes received but not yet handed out (a released probe).
    pending: Vec<u8>,
    /// The file's length as the first confirming server reported it (`ok N LEN`).
    first_len: Option<u64>,
    /// The same, from the latest confirmation.
    last_len: Option<u64>,
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
            log_starts: vec![None; cfg.servers.len()],
            skipped: None,
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
            first_len: None,
            last_len: None,
            stop,
        }
    }

    /// The file's length when the first server confirmed the stream: "the end" as it was when
    /// following began. `None` until a server has confirmed.
    pub fn initial_len(&self) -> Option<u64> {
        self.first_len
    }

    /// The file's length as the latest confirming server reported it (at its connection).
    pub fn confirmed_len(&self) -> Option<u64> {
        self.last_len
    }

    /// Absolute offset of the next byte [`Follower::read`] will return, when known (for a
    /// relative start, once a server has confirmed where it starts).
    pub fn position(&self) -> Option<u64> {
        match self.next {
            Start::Byte(b) => Some(b + self.received),
            Start::FromEnd(_) | Start::LastLines(_) => None,
        }
    }

    /// The position for log lines.
    fn at(&self) -> String {
        match self.next {
            Start::Byte(b) => (b + self.received).to_string(),
            Start::FromEnd(n) => format!("-{n}+{}", self.received),
            Start::LastLines(n) => format!("last {n} lines+{}", self.received),
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
            if let Some((from, to)) = self.skipped.take() {
                return Ok(Event::Skipped { from, to });
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
            let mut line_buf = [0u8; 512];
            let target: &mut [u8] = if conn.answer.is_some() {
                &mut line_buf
            } else {
                buf
            };
            match (&conn.stream).read(target) {
                Ok(0) => self.lost("server closed the connection".to_owned(), false)?,
                Ok(n) => {
                    let Some(answer) = &mut conn.answer else {
                        return Ok(self.delivered(n));
                    };
                    answer.extend_from_slice(&line_buf[..n]);
                    self.answered()?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if conn.answer.is_none() {
                        // A quiet but healthy connection counts as working.
                        self.last_good = Instant::now();
                    }
                    return Ok(Event::Idle);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.lost(e.to_string(), false)?,
            }
        }
    }

    /// Handles the server's answer line once it is complete: `ok N LEN` places the stream, a
    /// refusal drops the connection (for good if its code says asking again cannot help).
    fn answered(&mut self) -> Result<(), Error> {
        let conn = self.conn.as_mut().expect("answer on a connection");
        let answer = conn.answer.as_mut().expect("waiting for the answer");
        let Some(i) = memchr::memchr(b'\n', answer) else {
            if answer.len() > MAX_ANSWER_LINE {
                return self.lost("the server's answer line is too long".to_owned(), false);
            }
            return Ok(());
        };
        let rest = answer.split_off(i + 1);
        let line = std::mem::take(answer);
        if let Some(c) = Confirmation::parse(&line) {
            conn.answer = None;
            self.first_len.get_or_insert(c.len);
            self.last_len = Some(c.len);
            match self.next {
                Start::FromEnd(_) | Start::LastLines(_) => {
                    self.next = Start::Byte(c.offset);
                    self.received = 0;
                }
                Start::Byte(b) if b + self.received != c.offset => {
                    let why = format!(
                        "the server started at byte {} instead of {}",
                        c.offset,
                        b + self.received
                    );
                    return self.lost(why, false);
                }
                Start::Byte(_) => {}
            }
            // Data that came with the answer.
            self.pending = rest;
            return Ok(());
        }
        if let Some(refusal) = Refusal::parse(&line) {
            let server = conn.server;
            let reason = format!("refused: {refusal}");
            if refusal.code == Code::Gone {
                self.log_starts[server] = Some(self.log_start(server));
            }
            if !refusal.code.is_transient() {
                self.refused_for_good(server, refusal)?;
            }
            self.lost(reason, true)?;
            if self.skipped.is_some() {
                // Moving to the log start is progress, not a failed attempt (`Retry::Never`
                // would give up, and a backoff would wait for nothing).
                self.failed = 0;
                self.round = 0;
            }
            return Ok(());
        }
        let shown = String::from_utf8_lossy(&line).trim().to_owned();
        self.lost(
            format!("unexpected answer from the server: {shown:?}"),
            false,
        )
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
            self.log_starts.fill(None);
        }
        Event::Data(n)
    }

    /// Records a refusal that asking again cannot change; fails once every server refused.
    fn refused_for_good(&mut self, server: usize, refusal: Refusal) -> Result<(), Error> {
        self.refusals[server] = Some(refusal);
        if self.refusals.iter().any(Option::is_none) {
            return Ok(());
        }
        if let Some(said) = self.log_starts.iter().rposition(Option::is_some) {
            return self.gone(said);
        }
        let refusals = self
            .cfg
            .servers
            .iter()
            .zip(&self.refusals)
            .filter_map(|(s, r)| r.clone().map(|r| (s.clone(), r)))
            .collect();
        self.conn = None;
        Err(Error::Refused { refusals })
    }

    /// Every server refused and `said` (one of them) answered `gone`: fail, or with
    /// [`OnGone::Earliest`] move to the earliest log start any server named.
    fn gone(&mut self, said: usize) -> Result<(), Error> {
        let offset = self.position().unwrap_or_default();
        let start = self.log_starts.iter().flatten().flatten().min().copied();
        match start {
            Some(start) if self.cfg.on_gone == OnGone::Earliest && start > offset => {
                log::warn!(
                    from = offset, to = start, skipped = start - offset;
                    "--on-gone earliest: bytes {offset}..{start} were deleted by retention before \
                     they were read; continuing from the log start, byte {start}"
                );
                self.refusals.fill(None);
                self.log_starts.fill(None);
                self.next = Start::Byte(start);
                self.received = 0;
                self.skipped = Some((offset, start));
                Ok(())
            }
            _ => {
                self.conn = None;
                Err(Error::Gone {
                    server: self.cfg.servers[said].clone(),
                    offset,
                    start,
                })
            }
        }
    }

    /// Where `server`'s log starts, asked the structured way: `-0 ok`, whose answer is
    /// `ok N LEN START` (`ok N LEN`: 0). `None` (logged) if the server does not say.
    fn log_start(&self, server: usize) -> Option<u64> {
        let name = &self.cfg.servers[server];
        let ask = || -> io::Result<Option<u64>> {
            let stream = self.open(name, Start::FromEnd(0))?;
            stream.set_read_timeout(Some(self.cfg.connect_timeout))?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while line.last() != Some(&b'\n') && line.len() < MAX_ANSWER_LINE {
                if (&stream).read(&mut byte)? == 0 {
                    break;
                }
                line.push(byte[0]);
            }
            Ok(Confirmation::parse(&line).map(|c| c.start))
        };
        match ask() {
            Ok(Some(start)) => Some(start),
            Ok(None) => {
                log::warn!(server = name.as_str(); "asking where the log starts (-0 ok): no ok line");
                None
            }
            Err(e) => {
                log::warn!(server = name.as_str(); "asking where the log starts (-0 ok): {e}");
                None
            }
        }
    }

    /// Drops the connection after a failure; errors when the stream cannot be resumed.
    fn lost(&mut self, reason: String, refused: bool) -> Result<(), Error> {
        let conn = self.conn.take().expect("lost a connection we had");
        let server = self.cfg.servers[conn.server].clone();
        self.failures[conn.server] = Some(reason.clone());
        // Still relative means no server confirmed a start, so nothing was handed out and
        // asking again with the same relative start is exact.
        if let Start::Byte(b) = self.next {
            self.next = Start::Byte(b + self.received);
            self.received = 0;
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
            let start = match self.next {
                Start::Byte(b) => Start::Byte(b + self.received),
                relative => relative,
            };
            match self.open(server, start) {
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
                        answer: Some(Vec::new()),
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

    /// One connection attempt: connect, set options, send the request for `start`.
    fn open(&self, server: &str, start: Start) -> io::Result<TcpStream> {
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
        let request = Request::Stream(StreamRequest {
            path: self.cfg.path.as_ref().map(|p| p.as_bytes().to_vec()),
            start,
            confirm: true,
        });
        (&stream).write_all(&request.render())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A fake segmented-log server on 127.0.0.1 whose log starts at byte 100 and ends at 110:
    /// below 100 it answers `gone`, `-0 ok` answers `ok 110 110 100`, `100 ok` the data.
    /// It serves `conns` connections and returns the requests.
    fn server(conns: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for conn in listener.incoming().take(conns) {
                let mut conn = conn.unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                let answer: &[u8] = match line.trim_end() {
                    "-0 ok" => b"ok 110 110 100\n",
                    "100 ok" => b"ok 100 110 100\n0123456789",
                    _ => b"error: gone: byte 50 was deleted by retention: prose that may change\n",
                };
                conn.write_all(answer).unwrap();
                requests.push(line.trim_end().to_owned());
            }
            requests
        });
        (addr, handle)
    }

    fn follower(addr: String, on_gone: OnGone) -> Follower {
        let mut cfg = Config::new(vec![addr], Retry::Never);
        cfg.on_gone = on_gone;
        cfg.backoff_min = Duration::from_millis(1);
        Follower::new(cfg, Start::Byte(50), Arc::new(AtomicBool::new(false)))
    }

    #[test]
    fn gone_fails_with_the_log_start_from_the_ok_line() {
        let (addr, server) = server(2);
        let mut f = follower(addr, OnGone::Fail);
        let mut buf = [0u8; 64];
        match f.read(&mut buf) {
            Err(Error::Gone { offset, start, .. }) => assert_eq!((offset, start), (50, Some(100))),
            other => panic!("{other:?}"),
        }
        assert_eq!(server.join().unwrap(), ["50 ok", "-0 ok"]);
    }

    #[test]
    fn gone_earliest_skips_to_the_log_start() {
        let (addr, server) = server(3);
        let mut f = follower(addr, OnGone::Earliest);
        let mut buf = [0u8; 64];
        let first = f.read(&mut buf).unwrap();
        assert_eq!(first, Event::Skipped { from: 50, to: 100 });
        let mut got = Vec::new();
        while got.len() < 10 {
            match f.read(&mut buf).unwrap() {
                Event::Data(n) => got.extend_from_slice(&buf[..n]),
                Event::Idle => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, b"0123456789");
        assert_eq!(f.position(), Some(110));
        assert_eq!(f.confirmed_len(), Some(110));
        assert_eq!(server.join().unwrap(), ["50 ok", "-0 ok", "100 ok"]);
    }

    #[test]
    fn on_gone_names() {
        for name in OnGone::NAMES {
            assert_eq!(name.parse::<OnGone>().unwrap().to_string(), name);
        }
        assert!("none".parse::<OnGone>().is_err());
    }
}

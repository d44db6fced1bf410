//! The indexer sidecar (section `indexer`): cold build speed vs `wc -l`, index size per
//! message, and `offset-of` throughput and p99 vs a trivial responder and redis.
//!
//! Contract used (docs/indexer.md, docs/protocols.md): `tailsrv-indexer -p 0 --bind 127.0.0.1 --index PATH
//! FILE`; request lines `count` and `offset-of N`, one answer line each, pipelining allowed.
//! Every `offset-of` answer is checked against the line starts the data writer recorded, so
//! a fast wrong answer counts as wrong, not as fast.
//!
//! Query load: one thread, one epoll loop over all connections; each connection keeps
//! `depth` requests in flight, topping up in one write when half have been answered. A
//! request's latency runs from when it was queued to when its answer line was parsed.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};

use crate::baseline::Responder;
use crate::data::{DataFile, Rng};
use crate::procs::{sibling, Server};
use crate::report::{nanos, quantile, Chart, Row, Table};
use crate::run::{secs, Plan, Result};

pub const INDEXER: &str = "tailsrv-indexer";

/// The longest a cold build may take before it counts as failed.
const BUILD_LIMIT: Duration = Duration::from_secs(300);

/// Connection counts for the query runs, each with `--depth` requests in flight; then 50
/// connections with one request in flight each (closed loop: a connection asks again only
/// once answered), where an unfair server shows in the p99 (deep pipelines hide it).
const CONNS: [usize; 2] = [1, 50];

/// The closed-loop run's connection count.
const CLOSED_LOOP_CONNS: usize = 50;

pub fn indexer(plan: &Plan, data: &DataFile, table: &mut Table) -> Result<()> {
    if sibling(INDEXER).is_err() {
        table.push(Row::new("indexer", "all figures").value("n/a: indexer not built"));
        return Ok(());
    }
    let index = plan.dir.join("data.log.idx");
    let lines = data.lines();

    // Cold builds and `wc -l`, taking turns; the best of each.
    let (mut build, mut wc) = (f64::MAX, f64::MAX);
    let mut server = None;
    for _ in 0..plan.reps {
        wc = wc.min(wc_l(data)?);
        // Stop the previous run's indexer before the next cold start.
        drop(server.take());
        let start = Instant::now();
        let s = match start_indexer(data, &index, &[]) {
            Ok(s) => s,
            Err(e) => {
                table.push(Row::new("indexer", "all figures").value(format!("n/a: {e}")));
                return Ok(());
            }
        };
        build = build.min(start.elapsed().as_secs_f64());
        server = Some(s);
    }
    let server = server.expect("at least one repetition");
    let mib = data.len as f64 / 1048576.0;
    table.push(
        Row::new(
            "indexer",
            &format!("cold build, {mib:.0} MiB, {lines} lines"),
        )
        .value(format!("{build:.2} s ({:.0} MiB/s)", mib / build))
        .baseline(format!("{wc:.2} s wc -l"))
        .ratio(wc / build)
        .target("≥ 1.00× wc -l", build <= wc),
    );

    // The same lookups without the stride cache: what a lookup costs when it has to read
    // the log (a stride's first lookup, or a log much bigger than the cache).
    let uncached_index = plan.dir.join("data.log.nocache.idx");
    let uncached = start_indexer(data, &uncached_index, &["--cache-mib", "0"])?;
    let responder = Responder::start()?;
    let redis = Redis::start();
    if let Err(e) = &redis {
        table.note(format!("redis baseline skipped: {e}"));
    }
    let runs = CONNS
        .iter()
        .map(|&c| (c, plan.depth))
        .chain([(CLOSED_LOOP_CONNS, 1)]);
    let mut groups = Vec::new();
    for (conns, depth) in runs {
        let run = |addr, check| query_load(addr, conns, depth, secs(plan.query_secs), data, check);
        // Servers take turns, `reps` rounds; the best round of each.
        let (mut ours, mut ours_uncached, mut trivial, mut theirs) = (None, None, None, None);
        for _ in 0..plan.reps {
            best(&mut ours, run(server.addr, true)?);
            best(&mut ours_uncached, run(uncached.addr, true)?);
            best(&mut trivial, run(responder.addr(), false)?);
            if let Ok(r) = &redis {
                best(&mut theirs, run(r.addr, false)?);
            }
        }
        let (ours, ours_uncached) = (ours.expect("reps ≥ 1"), ours_uncached.expect("reps ≥ 1"));
        let trivial = trivial.expect("reps ≥ 1");
        for (who, stats) in [("", &ours), (" --cache-mib 0", &ours_uncached)] {
            if stats.wrong > 0 {
                table.note(format!(
                    "indexer{who}: {} wrong offset-of answers of {} (first: {})",
                    stats.wrong,
                    stats.answers,
                    stats.first_wrong.as_deref().unwrap_or("")
                ));
            }
        }
        let figure = format!("offset-of, {conns} conn × {depth} in flight: req/s, p99");
        let mut bars = vec![
            ("tailsrv-indexer".to_string(), ours.rate() / 1000.0),
            ("--cache-mib 0".to_string(), ours_uncached.rate() / 1000.0),
            ("trivial responder".to_string(), trivial.rate() / 1000.0),
        ];
        if let Some(t) = &theirs {
            bars.push(("redis".to_string(), t.rate() / 1000.0));
        }
        groups.push((format!("{conns} conn × {depth}"), bars));
        table.push(
            Row::new("indexer", &figure)
                .value(ours.show())
                .baseline(format!("{} trivial responder", trivial.show()))
                .ratio(ours.rate() / trivial.rate()),
        );
        if let Some(theirs) = theirs {
            let ratio = ours.rate() / theirs.rate();
            let row = Row::new("indexer", &figure)
                .value(ours.show())
                .baseline(format!("{} redis", theirs.show()));
            table.push(if depth == 1 {
                let tail = ours.p99 as f64 / theirs.p99 as f64;
                row.ratio(tail).target(
                    format!("p99 ≤ 1.0× redis (rate {ratio:.2}×)"),
                    tail <= 1.0 && ours.wrong == 0,
                )
            } else {
                row.ratio(ratio)
                    .target("≥ 1.20× redis", ratio >= 1.2 && ours.wrong == 0)
            });
            let figure = format!("{figure}, no stride cache");
            table.push(
                Row::new("indexer", &figure)
                    .value(ours_uncached.show())
                    .baseline(format!("{} redis", theirs.show()))
                    .ratio(ours_uncached.rate() / theirs.rate()),
            );
        }
    }
    table.chart(Chart::Bars {
        name: "indexer".into(),
        title: "offset-of answers per second (thousands), best round of each".into(),
        unit: "k answers/s".into(),
        groups,
    });
    drop(uncached);
    let _ = std::fs::remove_file(&uncached_index);

    // Measured last: the indexer has had the whole run to write its index out.
    let size = std::fs::metadata(&index)
        .map_err(|e| format!("reading {}: {e}", index.display()))?
        .len();
    let per = size as f64 / lines as f64;
    table.push(
        Row::new("indexer", "index size per message")
            .value(format!("{per:.3} B ({size} B)"))
            .target("≤ 0.25 B", per <= 0.25),
    );
    Ok(())
}

/// Starts an indexer of the data file with its index at `index` (removed first, so the
/// build is cold) and waits until it has counted every line.
fn start_indexer(data: &DataFile, index: &std::path::Path, extra: &[&str]) -> Result<Server> {
    let _ = std::fs::remove_file(index);
    let server = spawn_indexer(&data.path, index, extra)?;
    wait_count(server.addr, data.lines())?;
    Ok(server)
}

/// Starts `tailsrv-indexer` on 127.0.0.1 (port 0) for `log`, its index at `index`.
pub fn spawn_indexer(
    log: &std::path::Path,
    index: &std::path::Path,
    extra: &[&str],
) -> Result<Server> {
    Server::start(tests::indexer(log).arg("--index").arg(index).args(extra))
}

/// Keeps the round with the higher request rate.
fn best(kept: &mut Option<QueryStats>, round: QueryStats) {
    if kept.as_ref().is_none_or(|k| round.rate() > k.rate()) {
        *kept = Some(round);
    }
}

/// `wc -l` on the data file: its wall time, after checking its count.
fn wc_l(data: &DataFile) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new("wc")
        .arg("-l")
        .arg(&data.path)
        .output()
        .map_err(|e| format!("running wc -l: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let count: u64 = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("wc -l printed {text:?}"))?;
    if count != data.lines() {
        return Err(format!(
            "wc -l counted {count} lines, the writer wrote {}",
            data.lines()
        ));
    }
    Ok(secs)
}

/// Asks `count` until the indexer has indexed `lines` lines.
fn wait_count(addr: SocketAddr, lines: u64) -> Result<()> {
    let ctx = |e: io::Error| format!("asking {addr} for count: {e}");
    let sock = TcpStream::connect(addr).map_err(ctx)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(ctx)?;
    let mut reader = BufReader::new(sock.try_clone().map_err(ctx)?);
    let mut writer = sock;
    let limit = Instant::now() + BUILD_LIMIT;
    let mut answer = String::new();
    loop {
        writer.write_all(b"count\n").map_err(ctx)?;
        answer.clear();
        reader.read_line(&mut answer).map_err(ctx)?;
        match answer.trim().parse::<u64>() {
            Ok(n) if n == lines => return Ok(()),
            Ok(n) if n > lines => return Err(format!("indexer counts {n} lines of {lines}")),
            // Still counting, or an error it may recover from (the file not opened yet).
            Ok(_) | Err(_) => {}
        }
        if Instant::now() > limit {
            return Err(format!(
                "indexer did not count {lines} lines within {BUILD_LIMIT:?}; last answer {answer:?}"
            ));
        }
        // No event to wait on from outside: ask again shortly.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A redis-server on a free 127.0.0.1 port, stopped by pid when dropped.
struct Redis {
    addr: SocketAddr,
    _server: Server,
}

impl Redis {
    fn start() -> Result<Redis> {
        let port = tests::try_free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", tests::LOOPBACK])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => "redis-server not installed".to_owned(),
                _ => format!("starting redis-server: {e}"),
            })?;
        let addr = tests::loopback(port);
        let server = Server::adopt(child, addr);
        let ready = tests::eventually(tests::PATIENCE, || ping(addr).is_ok());
        if !ready {
            return Err(format!("redis-server did not answer PING on {addr}"));
        }
        Ok(Redis {
            addr,
            _server: server,
        })
    }
}

fn ping(addr: SocketAddr) -> io::Result<()> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    sock.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line)?;
    if line.starts_with("+PONG") {
        Ok(())
    } else {
        Err(io::Error::other(line))
    }
}

struct QueryStats {
    answers: u64,
    secs: f64,
    p50: u64,
    p99: u64,
    wrong: u64,
    first_wrong: Option<String>,
}

impl QueryStats {
    fn rate(&self) -> f64 {
        self.answers as f64 / self.secs
    }

    fn show(&self) -> String {
        format!(
            "{:.0} k/s, p50 {} p99 {}",
            self.rate() / 1000.0,
            nanos(self.p50),
            nanos(self.p99)
        )
    }
}

struct QConn {
    sock: TcpStream,
    inflight: VecDeque<(Instant, u64)>,
    out: Vec<u8>,
    carry: Vec<u8>,
    want_write: bool,
}

/// `conns` connections keep `depth` random `offset-of` requests in flight each for `dur`.
/// With `check`, every answer must be the line start the data writer recorded.
fn query_load(
    addr: SocketAddr,
    conns: usize,
    depth: usize,
    dur: Duration,
    data: &DataFile,
    check: bool,
) -> Result<QueryStats> {
    let ctx = |e: io::Error| format!("query load on {addr}: {e}");
    let poller = Poller::new().map_err(ctx)?;
    let mut qs = Vec::with_capacity(conns);
    for key in 0..conns {
        let sock = TcpStream::connect(addr).map_err(ctx)?;
        sock.set_nodelay(true).map_err(ctx)?;
        sock.set_nonblocking(true).map_err(ctx)?;
        // SAFETY: deleted from the poller before the socket is dropped (end of this function).
        unsafe { poller.add_with_mode(&sock, Event::readable(key), PollMode::Level) }
            .map_err(ctx)?;
        qs.push(QConn {
            sock,
            inflight: VecDeque::with_capacity(depth),
            out: Vec::new(),
            carry: Vec::new(),
            want_write: false,
        });
    }
    let mut rng = Rng(0xC0FFEE ^ conns as u64);
    let lines = data.lines();
    let mut latencies = Vec::new();
    let mut stats = QueryStats {
        answers: 0,
        secs: 0.0,
        p50: 0,
        p99: 0,
        wrong: 0,
        first_wrong: None,
    };
    // (request, answer) pairs, checked after the run; the first answer that was no number.
    let mut answered: Vec<(u64, u64)> = Vec::new();
    let mut unparsed: Option<String> = None;
    let mut buf = vec![0u8; 256 << 10];
    let mut events = Events::with_capacity(NonZeroUsize::new(256).unwrap());
    let start = Instant::now();
    let end = start + dur;
    let result = (|| {
        for (key, q) in qs.iter_mut().enumerate() {
            top_up(q, depth, &mut rng, lines);
            flush(q, &poller, key)?;
        }
        while Instant::now() < end {
            events.clear();
            poller.wait(&mut events, Some(Duration::from_millis(50)))?;
            for ev in events.iter() {
                let key = ev.key;
                let q = &mut qs[key];
                if ev.readable {
                    let n = match (&q.sock).read(&mut buf) {
                        Ok(0) => return Err(io::Error::other("server closed the connection")),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(e),
                    };
                    let now = Instant::now();
                    q.carry.extend_from_slice(&buf[..n]);
                    let mut used = 0;
                    while let Some(nl) = memchr::memchr(b'\n', &q.carry[used..]) {
                        let line = &q.carry[used..used + nl];
                        used += nl + 1;
                        let Some((sent, n)) = q.inflight.pop_front() else {
                            return Err(io::Error::other("an answer nobody asked for"));
                        };
                        latencies.push(now.duration_since(sent).as_nanos() as u64);
                        stats.answers += 1;
                        if check {
                            // Kept, and checked once the clock has stopped: the client
                            // does the same work per answer for every server it measures.
                            let got = parse_answer(line);
                            if got.is_none() && unparsed.is_none() {
                                unparsed = Some(format!(
                                    "offset-of {n} answered {:?}",
                                    String::from_utf8_lossy(line)
                                ));
                            }
                            answered.push((n, got.unwrap_or(u64::MAX)));
                        }
                    }
                    q.carry.drain(..used);
                    if q.inflight.len() <= depth / 2 {
                        top_up(q, depth, &mut rng, lines);
                    }
                }
                flush(q, &poller, key)?;
            }
        }
        Ok(())
    })();
    stats.secs = start.elapsed().as_secs_f64();
    for q in &qs {
        let _ = poller.delete(&q.sock);
    }
    result.map_err(ctx)?;
    for &(n, got) in &answered {
        let want = data.line_starts[n as usize];
        if got != want {
            stats.wrong += 1;
            stats.first_wrong.get_or_insert_with(|| {
                unparsed
                    .clone()
                    .unwrap_or_else(|| format!("offset-of {n} answered {got}, expected {want}"))
            });
        }
    }
    latencies.sort_unstable();
    stats.p50 = quantile(&latencies, 0.5);
    stats.p99 = quantile(&latencies, 0.99);
    Ok(stats)
}

/// A decimal answer line, or None.
fn parse_answer(line: &[u8]) -> Option<u64> {
    let digits = line.strip_suffix(b"\r").unwrap_or(line);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Queues requests until `depth` are in flight.
fn top_up(q: &mut QConn, depth: usize, rng: &mut Rng, lines: u64) {
    let now = Instant::now();
    while q.inflight.len() < depth {
        let n = rng.below(lines);
        writeln!(q.out, "offset-of {n}").expect("writing to a Vec");
        q.inflight.push_back((now, n));
    }
}

/// Writes what is queued; asks for writability only while something is left.
fn flush(q: &mut QConn, poller: &Poller, key: usize) -> io::Result<()> {
    while !q.out.is_empty() {
        match rustix::net::send(&q.sock, &q.out, rustix::net::SendFlags::NOSIGNAL) {
            Ok(n) => {
                q.out.drain(..n);
            }
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let want = !q.out.is_empty();
    if want != q.want_write {
        q.want_write = want;
        let interest = if want {
            Event::all(key)
        } else {
            Event::readable(key)
        };
        poller.modify_with_mode(&q.sock, interest, PollMode::Level)?;
    }
    Ok(())
}
